"""inferd against KServe's Python ModelServer (``kserve_server.py``): the same add_sub ONNX model
through onnxruntime with one intra-op thread, the same load, both servers on the same CPU.

Points: clients sending batches of 1 and 8, at 1 and 16 concurrent clients. Each round
measures every point on every server back to back. Goal for inferd: >= 1.5x KServe's
throughput at every point, and a p99 at 1 client no higher than KServe's. With
``--baseline-ref`` an older inferd runs in the same rounds, so a change is shown against KServe
and against its own past in one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import baseline_ref
from .harness import (
    Bench,
    add_baseline_argument,
    add_load_arguments,
    comparison,
    exit_status,
    interleaved,
    load_from_args,
    median,
    module_main,
    ratio,
)
from .points import Served, measure
from .servers import ServerProcess, split_cpus, start_inferd, start_kserve

MODEL = "add_sub"


def point_name(batch: int, concurrency: int) -> str:
    return f"{concurrency} x {batch}"


def goal_lines(
    raw: dict[tuple[str, str], list[Served]], batches: list[int], concurrencies: list[int], server: str = "inferd"
) -> list[str]:
    lines = []
    for c in concurrencies:
        for b in batches:
            x, y = raw[(point_name(b, c), server)], raw[(point_name(b, c), "kserve")]
            tp = ratio(median(s.rows_per_s for s in x), median(s.rows_per_s for s in y))
            p99 = ratio(median(s.p99_us for s in x), median(s.p99_us for s in y))
            ok = tp >= 1.5 and (c != 1 or p99 <= 1.0)
            need = ">= 1.5x throughput" + (", p99 <= 1.0x" if c == 1 else "")
            lines.append(
                f"{point_name(b, c)}: {server}/kserve {tp:.2f}x throughput, p99 {p99:.2f}x "
                f"({'meets' if ok else 'misses'} the goal: {need})"
            )
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_load_arguments(p, duration=5.0, rounds=3)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="rows per request (default 1 8)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="clients (default 1 16)")
    p.add_argument("--model-repository", type=Path, default=None, help="inferd's repository (default: bundled)")
    add_baseline_argument(p)


def run(a: argparse.Namespace) -> int:
    load = load_from_args(a)
    server_cpus, ncpu = split_cpus(a.no_pin)
    print(
        f"# {ncpu} CPUs; "
        + ("servers on CPU 0, load generator on CPUs 1.." if server_cpus else "no pinning")
        + f"; load: {load.label}",
        file=sys.stderr,
    )
    points = [(b, c) for c in a.concurrency for b in a.batch]
    servers: dict[str, ServerProcess] = {}
    with baseline_ref.builds(a.baseline_ref) as builds:
        names = [builds[0].name, "kserve", *(b.name for b in builds[1:])]
        try:
            for build in builds:
                servers[build.name] = start_inferd(build.name, build.env, server_cpus, a.model_repository, [MODEL])
            servers["kserve"] = start_kserve(server_cpus)

            def one(key: tuple[tuple[int, int], str]) -> Served:
                (batch, concurrency), name = key
                # KServe has no statistics API.
                return measure(load, servers[name].url, MODEL, batch, concurrency, server_stats=name != "kserve")

            raw = interleaved(
                a.rounds,
                [(pt, n) for pt in points for n in names],
                one,
                lambda k: f"{point_name(*k[0])} {k[1]}",
            )
        finally:
            for s in servers.values():
                s.stop()
    by_name = {(point_name(*pt), n): v for (pt, n), v in raw.items()}
    pairs = [("inferd", "kserve"), *((b.name, "kserve") for b in builds[1:]), *(("inferd", b.name) for b in builds[1:])]
    print(f"load: {load.label}; clients x batch; throughput in rows (inferences) per second\n")
    print(comparison(by_name, [point_name(b, c) for b, c in points], names, pairs))
    print("\n" + "\n".join(goal_lines(by_name, a.batch, a.concurrency)))
    return exit_status(raw)


BENCH = Bench(
    "kserve",
    "inferd against KServe's Python ModelServer on the same ONNX add_sub model and load",
    add_arguments,
    run,
    __doc__ or "",
)

if __name__ == "__main__":
    sys.exit(module_main(BENCH))
