"""The benchmark harness: the registry behind ``inferd perf bench``, the options every benchmark
shares, interleaved rounds, medians and the comparison table.

A benchmark is a module ``perf/bench_<name>.py`` with a module-level ``BENCH = Bench(...)``: its
name, a one-line description, a function adding its options to an argparse parser and a
function running it from the parsed options (returning the exit status). The registry finds
the modules by their file names, so adding a benchmark touches no other file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import perf_analyzer
from .points import Load, Served

K = TypeVar("K")


@dataclass(frozen=True)
class Bench:
    name: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    # Shown under --help: how to run it, what it needs, what its goal is.
    details: str = ""


def benches() -> dict[str, Bench]:
    """Every ``bench_*`` module's BENCH, by name."""
    found: dict[str, Bench] = {}
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).resolve().parent)]), key=lambda m: m.name):
        if info.name.startswith("bench_"):
            bench = importlib.import_module(f"{__package__}.{info.name}").BENCH
            found[bench.name] = bench
    return found


def parser_for(bench: Bench, prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or f"inferd perf bench {bench.name}",
        description=bench.description,
        epilog=bench.details or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_arguments(p)
    return p


def run_bench(bench: Bench, argv: Sequence[str], prog: str | None = None) -> int:
    return bench.run(parser_for(bench, prog).parse_args(list(argv)))


def module_main(bench: Bench, argv: list[str] | None = None) -> int:
    """``python -m inferd.perf.bench_<name>``: the same as ``inferd perf bench <name>``."""
    return run_bench(bench, sys.argv[1:] if argv is None else argv)


def bench_main(argv: Sequence[str]) -> int:
    """``inferd perf bench --list`` and ``inferd perf bench NAME [options]``."""
    p = argparse.ArgumentParser(
        prog="inferd perf bench",
        description="Run one of inferd's benchmarks (--list names them; NAME --help shows its options).",
    )
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("name", nargs="?", help="the benchmark to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its options")
    a = p.parse_args(list(argv))
    found = benches()
    if a.list or a.name is None:
        width = max(len(n) for n in found)
        for name, bench in found.items():
            print(f"{name:<{width}}  {bench.description}")
        return 0 if a.list else 2
    if a.name not in found:
        print(f"inferd perf bench: no benchmark '{a.name}' (--list names them)", file=sys.stderr)
        return 2
    return run_bench(found[a.name], a.args)


# --- options every benchmark that starts servers shares ---------------------------------------


def add_load_arguments(p: argparse.ArgumentParser, duration: float, rounds: int, load: str = "auto") -> None:
    p.add_argument(
        "--duration", type=float, default=duration, help=f"measured seconds per point (default {duration:g})"
    )
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point (Python load)")
    p.add_argument("--rounds", type=int, default=rounds, help=f"measure every point this many times (default {rounds})")
    p.add_argument("--no-pin", action="store_true", help="do not pin servers and load generator to separate CPUs")
    p.add_argument(
        "--load",
        choices=["auto", "perf_analyzer", "inferd"],
        default=load,
        help=f"load generator: NVIDIA's perf_analyzer, inferd's Python one, or auto (perf_analyzer when "
        f"installed) (default {load})",
    )


def add_baseline_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--baseline-ref",
        metavar="GIT_REF",
        default=None,
        help="also run inferd as of this commit (a temporary git worktree), interleaved with the current one",
    )


def load_from_args(a: argparse.Namespace, processes: int = 1) -> Load:
    return Load(perf_analyzer.for_load(a.load), a.duration, a.warmup, processes)


# --- rounds and medians --------------------------------------------------------------------


def interleaved(
    rounds: int,
    keys: Sequence[K],
    measure: Callable[[K], Served],
    label: Callable[[K], str] = str,
    before_round: Callable[[int], None] | None = None,
) -> dict[K, list[Served]]:
    """Every key measured once per round, back to back, so that the machine's drift within a run
    hits all of them alike; each round starts one key later, so no key always goes first.
    ``before_round(round)`` runs first in each round (an in-process ceiling, say)."""
    raw: dict[K, list[Served]] = {k: [] for k in keys}
    for rnd in range(rounds):
        if before_round is not None:
            before_round(rnd)
        shift = rnd % len(keys) if keys else 0
        for key in [*keys[shift:], *keys[:shift]]:
            s = measure(key)
            raw[key].append(s)
            print(
                f"# round {rnd + 1}/{rounds} {label(key)}: {s.rows_per_s:,.0f} infer/s, "
                f"p50 {s.p50_us:,.0f} µs, p99 {s.p99_us:,.0f} µs" + (f", {s.errors} errors" if s.errors else ""),
                file=sys.stderr,
            )
    return raw


def exit_status(raw: Mapping[Any, Sequence[Served]]) -> int:
    """A benchmark's exit status: 1 when any measurement had errors, else 0."""
    return 1 if any(s.errors for runs in raw.values() for s in runs) else 0


def median(values: Iterable[float]) -> float:
    vs = list(values)
    return float(statistics.median(vs)) if vs else 0.0


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def markdown(header: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table; ``align`` has one character per column: l or r."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if c == "l" else "---:" for c in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def comparison(
    raw: dict[tuple[str, str], list[Served]],
    points: Sequence[str],
    servers: Sequence[str],
    ratios: Sequence[tuple[str, str]],
) -> str:
    """Per point: each server's median throughput, p50 and p99 over the rounds, then for each
    (numerator, denominator) the ratio of those medians and, with several rounds, the median of
    each round's own ratio (both measured back to back, so it is less sensitive to drift)."""
    rows: list[list[str]] = []
    for point in points:
        for server in servers:
            runs = raw[(point, server)]
            errors = sum(s.errors for s in runs)
            rows.append(
                [
                    point,
                    server + (f" ({errors} errors)" if errors else ""),
                    f"{median(s.rows_per_s for s in runs):,.0f}",
                    f"{median(s.p50_us for s in runs):,.0f}",
                    f"{median(s.p99_us for s in runs):,.0f}",
                    "",
                ]
            )
        for num, den in ratios:
            x, y = raw[(point, num)], raw[(point, den)]
            per_round = ""
            if len(x) > 1:
                pairs = list(zip(x, y))
                per_round = (
                    f"{median(ratio(a.rows_per_s, b.rows_per_s) for a, b in pairs):.2f}x, "
                    f"p99 {median(ratio(a.p99_us, b.p99_us) for a, b in pairs):.2f}x"
                )
            rows.append(
                [
                    point,
                    f"**{num} / {den}**",
                    f"{ratio(median(s.rows_per_s for s in x), median(s.rows_per_s for s in y)):.2f}x",
                    f"{ratio(median(s.p50_us for s in x), median(s.p50_us for s in y)):.2f}x",
                    f"{ratio(median(s.p99_us for s in x), median(s.p99_us for s in y)):.2f}x",
                    per_round,
                ]
            )
    header = ["point", "server", "infer/s", "p50 (µs)", "p99 (µs)", "per-round ratio (median)"]
    return markdown(header, "llrrrr", rows)
