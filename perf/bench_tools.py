"""Run perf_analyzer and ``inferd perf`` with the same options against a running server and
print their CSVs side by side (throughput and p99), with the ratio of each pair.

    inferd perf bench tools -m dense -u 127.0.0.1:8001 --concurrency-range 1:16:5 \\
        [--client-cpus 1] [--repeat 3] [--extra="--max-trials 12"]

The two tools run one after the other (alternating which goes first with ``--repeat``; the
table shows per-step medians), each pinned to ``--client-cpus`` when given (pin the server
elsewhere yourself, e.g. ``taskset -c 0 inferd serve``). The last column compares the
server-side queue + compute each tool read from the statistics API: when it agrees while the
client figures differ, the difference is on the client side.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .harness import Bench, module_main
from .perf_analyzer import for_load, read_csv
from .servers import pin_prefix


def median_rows(runs: list[dict[str, dict[str, str]]]) -> dict[str, dict[str, str]]:
    """Per step and column, the median over the runs that have the step."""
    merged: dict[str, dict[str, str]] = {}
    for key in {k for run in runs for k in run}:
        rows = [run[key] for run in runs if key in run]
        merged[key] = {
            c: str(statistics.median(float(r[c]) for r in rows if r.get(c)))
            for c in rows[0]
            if any(r.get(c) for r in rows)
        }
    return merged


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", dest="model", required=True)
    p.add_argument("-u", dest="url", default="127.0.0.1:8001")
    p.add_argument("-i", dest="protocol", default="grpc", choices=["grpc", "http"])
    p.add_argument("--concurrency-range", default="1:16:5")
    p.add_argument("-p", dest="interval", default="2000")
    p.add_argument("-s", dest="stability", default="10")
    p.add_argument("--client-cpus", default=None, help="e.g. 1 or 1-3: pin both tools there (taskset)")
    p.add_argument("--out", type=Path, default=None, help="keep the CSVs in this folder")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="alternate the tools this many times and report per-step medians (noisy machines)",
    )
    p.add_argument("--extra", default="", help="more options for both tools, one string (--extra='--max-trials 12')")


def run(a: argparse.Namespace) -> int:
    extra = shlex.split(a.extra)
    pa = for_load("perf_analyzer")
    assert pa is not None  # for_load exits when it is missing
    out = a.out or Path(tempfile.mkdtemp(prefix="inferd-compare-"))
    out.mkdir(parents=True, exist_ok=True)
    cpus = [int(x) for x in a.client_cpus.replace("-", ",").split(",")] if a.client_cpus else None
    if cpus and "-" in (a.client_cpus or ""):
        cpus = list(range(cpus[0], cpus[-1] + 1))
    common = [
        "-m",
        a.model,
        "-u",
        a.url,
        "-i",
        a.protocol,
        "--concurrency-range",
        a.concurrency_range,
        "-p",
        a.interval,
        "-s",
        a.stability,
        *extra,
    ]
    results: dict[str, list[dict[str, dict[str, str]]]] = {"perf_analyzer": [], "inferd perf": []}
    for rep in range(a.repeat):
        runs = {
            "perf_analyzer": [pa, *common, "-f", str(out / f"perf_analyzer.{rep}.csv"), "--verbose-csv"],
            "inferd perf": [
                sys.executable,
                "-m",
                "inferd.perf.cli",
                *common,
                "-f",
                str(out / f"inferd_perf.{rep}.csv"),
            ],
        }
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))  # alternate who goes first
        for name in order:
            cmd = runs[name]
            print(f"# run {rep + 1}/{a.repeat} {name}: {' '.join(cmd)}", file=sys.stderr)
            proc = subprocess.run([*pin_prefix(cpus), *cmd], text=True, capture_output=True)
            if proc.returncode != 0:
                print(
                    f"# {name} exited with {proc.returncode}:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}",
                    file=sys.stderr,
                )
            csv_path = Path(cmd[cmd.index("-f") + 1])
            if csv_path.exists():
                results[name].append(read_csv(csv_path))
    pa_rows = median_rows(results["perf_analyzer"])
    our_rows = median_rows(results["inferd perf"])
    print(
        "| concurrency | perf_analyzer infer/s | inferd perf infer/s | ratio | perf_analyzer p99 (us) "
        "| inferd perf p99 (us) | ratio | server queue+compute (us) PA / ours |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in sorted(set(pa_rows) | set(our_rows), key=lambda k: float(k or 0)):
        x, y = pa_rows.get(key), our_rows.get(key)

        def f(row: dict[str, str] | None, col: str) -> float:
            return float(row[col]) if row and row.get(col) else float("nan")

        def server(row: dict[str, str] | None) -> float:
            cols = ("Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output")
            return sum(f(row, c) for c in cols)

        t1, t2 = f(x, "Inferences/Second"), f(y, "Inferences/Second")
        l1, l2 = f(x, "p99 latency"), f(y, "p99 latency")
        print(
            f"| {key} | {t1:.0f} | {t2:.0f} | {t2 / t1:.2f} | {l1:.0f} | {l2:.0f} | {l2 / l1:.2f} "
            f"| {server(x):.0f} / {server(y):.0f} |"
        )
    print(f"# CSVs in {out}", file=sys.stderr)
    return 0


BENCH = Bench(
    "tools",
    "perf_analyzer and inferd perf with the same options against a running server, side by side",
    add_arguments,
    run,
    __doc__ or "",
)

if __name__ == "__main__":
    sys.exit(module_main(BENCH))
