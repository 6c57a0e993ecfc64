"""Issue 2's protocol-overhead benchmark: inferd against the bare grpc.aio baseline
(``baseline_server``) on the bundled add_sub model, batch-1 requests, fixed-duration windows.

    python -m inferd.perf.bench_protocol [--duration 5] [--concurrency 1 16] [--rounds 3]

The servers run as subprocesses on free loopback ports. With two or more CPUs they are pinned
to CPU 0 and this process (the load generator) to CPU 1, so that client and server do not steal
each other's core; each round measures every server back to back and the table shows the
median over rounds. Goal for inferd: >= 90% of the baseline's throughput and a p99 no more than
1.2x the baseline's. Two more servers separate inferd's own cost from its tuning (grpc I/O
threads under SCHED_BATCH, uvloop): the baseline with the same tuning (like for like), and
inferd without it.

``--load perf_analyzer`` drives the points with NVIDIA's perf_analyzer (``--async``, the window
split in three) instead of inferd's Python generator; its C++ client costs a tenth of the CPU
per request. Because this machine's speed drifts within a run, the table also gives the median
of each round's own ratio (inferd and baseline measured back to back), beside the ratio of
medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..server import event_loop
from . import perf_analyzer
from .inputs import DataOptions, build_requests
from .loadgen import LoadGenerator
from .procs import ProcessLoad
from .servers import ServerProcess, baseline_argv, inferd_argv, split_cpus, start
from .stats import LatencySummary
from .transport import make_transport


@dataclass
class Point:
    throughput: float
    p50_ns: int
    p99_ns: int
    errors: int


async def measure(url: str, concurrency: int, duration_s: float, warmup_s: float, processes: int = 1) -> Point:
    """Hold ``concurrency`` batch-1 add_sub requests in flight; one fixed window after a warm-up."""
    transport = make_transport("grpc", url)
    procs: ProcessLoad | None = None
    try:
        model = await transport.model_info("add_sub", "")
        requests = build_requests(model, DataOptions(batch_size=1, input_data="random"))
        transport.prepare(model, requests)
        gen: LoadGenerator | ProcessLoad = LoadGenerator(transport)
        if processes > 1:
            gen = procs = ProcessLoad(processes, "grpc", url, False, model, requests)
            await procs.open()
        await gen.start_concurrency(concurrency)
        await asyncio.sleep(warmup_s)
        start = time.monotonic_ns()
        await gen.collect(start)
        await asyncio.sleep(duration_s)
        end = time.monotonic_ns()
        records, _ = await gen.collect(end)
        await gen.stop()
    finally:
        if procs is not None:
            await procs.close()
        await transport.close()
    ok = [r.latency_ns for r in records if r.ok]
    s = LatencySummary.of(ok)
    return Point(
        len(ok) / ((end - start) / 1e9),
        s.percentiles_ns.get(50, 0),
        s.percentiles_ns.get(99, 0),
        len(records) - len(ok),
    )


def measure_pa(binary: str, url: str, concurrency: int, duration_s: float) -> Point:
    pt = perf_analyzer.measure(binary, url, "add_sub", 1, concurrency, duration_s)
    return Point(pt.rows_per_s, int(pt.p50_us * 1000), int(pt.p99_us * 1000), 0)


def _median(points: list[Point]) -> Point:
    return Point(
        statistics.median(p.throughput for p in points),
        int(statistics.median(p.p50_ns for p in points)),
        int(statistics.median(p.p99_ns for p in points)),
        sum(p.errors for p in points),
    )


# name -> (how it is started, what it shows)
SERVERS = {
    "baseline": "the bare grpc.aio servicer on asyncio's loop (the goal's reference)",
    "inferd": "inferd as shipped (grpc I/O threads SCHED_BATCH, uvloop when installed)",
    "baseline-tuned": "the bare servicer with inferd's I/O thread policy and event loop (like for like)",
    "baseline-ort": "baseline-tuned computing through onnxruntime: what a real backend's call costs",
    "inferd-untuned": "inferd with --grpc-io-sched other --event-loop asyncio",
}
# (numerator, denominator, whether this ratio is the goal's)
RATIOS = [
    ("inferd", "baseline", True),
    ("inferd", "baseline-tuned", False),
    ("inferd", "baseline-ort", False),
    ("inferd-untuned", "baseline", False),
]


def render(raw: dict[tuple[str, int], list[Point]], concurrencies: list[int], names: list[str]) -> str:
    results = {k: _median(v) for k, v in raw.items()}
    lines = [
        "| concurrency | server | infer/s | p50 (us) | p99 (us) |",
        "|---:|---|---:|---:|---:|",
    ]
    for c in concurrencies:
        for name in names:
            p = results[(name, c)]
            err = f" ({p.errors} errors)" if p.errors else ""
            lines.append(f"| {c} | {name}{err} | {p.throughput:.0f} | {p.p50_ns // 1000} | {p.p99_ns // 1000} |")
        for num, den, goal in RATIOS:
            if num not in names or den not in names:
                continue
            b, i = results[(den, c)], results[(num, c)]
            tp = i.throughput / b.throughput if b.throughput else 0.0
            p99 = i.p99_ns / b.p99_ns if b.p99_ns else 0.0
            label = f"{num}/{den}"
            note = ""
            if goal:
                label = f"**{label}**"
                note = " (meets the goal)" if tp >= 0.9 and p99 <= 1.2 else " (misses the goal)"
            lines.append(f"| {c} | {label} | {100 * tp:.0f}% | {i.p50_ns / max(b.p50_ns, 1):.2f}x | {p99:.2f}x{note} |")
            if goal and len(raw[(num, c)]) > 1:
                pairs = list(zip(raw[(num, c)], raw[(den, c)]))
                per_tp = statistics.median(x.throughput / y.throughput for x, y in pairs if y.throughput)
                per_p99 = statistics.median(x.p99_ns / y.p99_ns for x, y in pairs if y.p99_ns)
                lines.append(
                    f"| {c} | {num}/{den}, median of per-round ratios | {100 * per_tp:.0f}% | | {per_p99:.2f}x |"
                )
    return "\n".join(lines)


def _argv(name: str, repository: Path | None) -> tuple[list[str], dict[str, Any]]:
    if name.startswith("baseline"):
        tuned = ["--io-sched", "batch", "--event-loop", event_loop.resolve("auto")]
        extra = tuned if name in ("baseline-tuned", "baseline-ort") else []
        if name == "baseline-ort":
            extra = [*extra, "--compute", "onnxruntime"]
        return baseline_argv() + extra, {}
    untuned = ["--grpc-io-sched", "other", "--event-loop", "asyncio"]
    argv = inferd_argv(repository, ["add_sub"]) + (untuned if name == "inferd-untuned" else [])
    return argv, {"ready_line": "gRPC (KServe v2) listening on", "wait_for": "model(s) requested"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inferd.perf.bench_protocol", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--rounds", type=int, default=3, help="measure each point this many times; report medians")
    p.add_argument(
        "--processes",
        type=int,
        default=2,
        help="load generator processes (default 2: one Python process tops out near the baseline)",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin servers and generator to separate CPUs")
    p.add_argument(
        "--load",
        choices=["inferd", "perf_analyzer"],
        default="inferd",
        help="load generator: inferd's Python one (default) or NVIDIA's perf_analyzer",
    )
    p.add_argument("--model-repository", type=Path, default=None, help="inferd's repository (default: bundled)")
    p.add_argument(
        "--servers",
        nargs="+",
        choices=list(SERVERS),
        default=list(SERVERS),
        help="which servers to measure (default all: " + "; ".join(f"{k}: {v}" for k, v in SERVERS.items()) + ")",
    )
    a = p.parse_args(argv)

    pa = perf_analyzer.for_load(a.load)
    server_cpus, ncpu = split_cpus(a.no_pin)
    pin = server_cpus is not None
    print(
        f"# {ncpu} CPUs; "
        + ("servers on CPU 0, load generator on CPUs 1.." if pin else "no pinning")
        + (f"; {a.processes} generator process(es)" if pa is None else "; perf_analyzer load"),
        file=sys.stderr,
    )

    servers: dict[str, ServerProcess] = {}
    try:
        for name in a.servers:
            argv, wait = _argv(name, a.model_repository)
            servers[name] = start(name, argv, server_cpus, **wait)
        raw: dict[tuple[str, int], list[Point]] = {}
        for rnd in range(a.rounds):
            for c in a.concurrency:
                for name in a.servers:
                    if pa is not None:
                        point = measure_pa(pa, servers[name].url, c, a.duration)
                    else:
                        point = asyncio.run(measure(servers[name].url, c, a.duration, a.warmup, a.processes))
                    raw.setdefault((name, c), []).append(point)
                    print(
                        f"# round {rnd + 1}/{a.rounds} concurrency {c} {name}: {point.throughput:.0f} infer/s, "
                        f"p50 {point.p50_ns // 1000} us, p99 {point.p99_ns // 1000} us",
                        file=sys.stderr,
                    )
    finally:
        for s in servers.values():
            s.stop()
    print(f"load: {perf_analyzer.LOAD_LABEL if pa else f'inferd Python generator x {a.processes}'}\n")
    print(render(raw, a.concurrency, a.servers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
