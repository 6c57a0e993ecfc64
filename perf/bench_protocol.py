"""Issue 2's protocol-overhead benchmark: inferd against the bare grpc.aio baseline
(``baseline_server``) on the bundled add_sub model, batch-1 requests, fixed-duration windows.

    python -m inferd.perf.bench_protocol [--duration 5] [--concurrency 1 16] [--rounds 3]

Both servers run as subprocesses on free loopback ports. With two or more CPUs the servers are
pinned to CPU 0 and this process (the load generator) to CPU 1, so that client and server do
not steal each other's core; each round measures both servers back to back and the table
shows the median over rounds. Goal for inferd: >= 90% of the baseline's throughput and a p99
no more than 1.2x the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
    return Point(len(ok) / ((end - start) / 1e9), s.percentiles_ns.get(50, 0), s.percentiles_ns.get(99, 0),
                 len(records) - len(ok))


def _median(points: list[Point]) -> Point:
    return Point(
        statistics.median(p.throughput for p in points),
        int(statistics.median(p.p50_ns for p in points)),
        int(statistics.median(p.p99_ns for p in points)),
        sum(p.errors for p in points),
    )


def render(results: dict[tuple[str, int], Point], concurrencies: list[int]) -> str:
    lines = [
        "| concurrency | server | infer/s | p50 (us) | p99 (us) |",
        "|---:|---|---:|---:|---:|",
    ]
    for c in concurrencies:
        for name in ("baseline", "inferd"):
            p = results[(name, c)]
            err = f" ({p.errors} errors)" if p.errors else ""
            lines.append(f"| {c} | {name}{err} | {p.throughput:.0f} | {p.p50_ns // 1000} | {p.p99_ns // 1000} |")
        b, i = results[("baseline", c)], results[("inferd", c)]
        tp = i.throughput / b.throughput if b.throughput else 0.0
        p99 = i.p99_ns / b.p99_ns if b.p99_ns else 0.0
        verdict = "meets" if tp >= 0.9 and p99 <= 1.2 else "misses"
        lines.append(f"| {c} | **inferd/baseline** | **{100 * tp:.0f}%** | {i.p50_ns / max(b.p50_ns, 1):.2f}x "
                     f"| **{p99:.2f}x** ({verdict} the goal) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inferd.perf.bench_protocol", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--rounds", type=int, default=3, help="measure each point this many times; report medians")
    p.add_argument("--processes", type=int, default=2,
                   help="load generator processes (default 2: one Python process tops out near the baseline)")
    p.add_argument("--no-pin", action="store_true", help="do not pin servers and generator to separate CPUs")
    p.add_argument("--model-repository", type=Path, default=None, help="inferd's repository (default: bundled)")
    a = p.parse_args(argv)

    server_cpus, ncpu = split_cpus(a.no_pin)
    pin = server_cpus is not None
    print(f"# {ncpu} CPUs; " + ("servers on CPU 0, load generator on CPUs 1.." if pin else "no pinning")
          + f"; {a.processes} generator process(es)", file=sys.stderr)

    servers: dict[str, ServerProcess] = {}
    try:
        servers["baseline"] = start("baseline", baseline_argv(), server_cpus)
        servers["inferd"] = start("inferd", inferd_argv(a.model_repository, ["add_sub"]), server_cpus,
                                  ready_line="gRPC (KServe v2) listening on", wait_for="model(s) requested")
        raw: dict[tuple[str, int], list[Point]] = {}
        for rnd in range(a.rounds):
            for c in a.concurrency:
                for name in ("baseline", "inferd"):
                    point = asyncio.run(measure(servers[name].url, c, a.duration, a.warmup, a.processes))
                    raw.setdefault((name, c), []).append(point)
                    print(f"# round {rnd + 1}/{a.rounds} concurrency {c} {name}: {point.throughput:.0f} infer/s, "
                          f"p50 {point.p50_ns // 1000} us, p99 {point.p99_ns // 1000} us", file=sys.stderr)
    finally:
        for s in servers.values():
            s.stop()
    print(render({k: _median(v) for k, v in raw.items()}, a.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
