"""Dynamic batching benchmark: a compute-bound dense model (2048-wide hidden layers) served with
and without dynamic batching, against the compute ceiling (onnxruntime in-process) and the
protocol ceiling (the server answering a trivial element-wise model).

    python -m inferd.perf.bench_batching [--rounds 3] [--duration 2]

One table: in-process throughput at batch 1/8/32/64; add_sub through the server at the
concurrencies (batch 1); then the dense model at 1, 8, 16 and 32 concurrent batch-1 clients with and
without dynamic batching, and 2 clients sending batches of 8, each with p50/p99, the server's
queue and compute per request, the average executed batch and the ratio to
min(compute ceiling at the batch the clients can form, protocol ceiling at that concurrency).
Goals: with batching at 16-32 clients >= 3x the no-batching throughput and >= 80% of that
min-ceiling; batch-8 clients >= 60% of the in-process batch-8 ceiling.

The server and the in-process ceilings run alone on CPU 0 with one framework thread, the load
generator on CPU 1 (as in bench_backends). The load is NVIDIA's perf_analyzer when installed
(``--load``): a Python client's own cost per request delays how fast a burst of responses
comes back as new requests, which the batcher sees as fewer requests to merge.
Bounded: rounds x points x (warm-up + duration).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import perf_analyzer
from .bench_backends import SHAPE, THREAD_ENV, Served, _builders, _ceilings_in_child, serve_point, served
from .servers import inferd_argv, split_cpus, start
from .transport import make_transport

BATCHES = [1, 8, 32, 64]
CONCURRENCY = [1, 8, 16, 32]
MAX_BATCH = 64


def build_repository(root: Path, max_queue_delay_us: int = 500) -> None:
    b = _builders()
    f, c = SHAPE["features"], SHAPE["classes"]
    io = (
        f'input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {f} ] }} ]\n'
        f'output [ {{ name: "PROBS" data_type: TYPE_FP32 dims: [ {c} ] }} ]\n'
    )
    threads = (
        'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
        'parameters { key: "inter_op_thread_count" value { string_value: "1" } }\n'
    )
    batching = {
        "dense_batched": f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}\n",
        "dense_plain": "",
    }
    for name, extra in batching.items():
        (root / name / "1").mkdir(parents=True)
        b._save(b.dense_model(**SHAPE), root / name / "1" / "model.onnx")
        (root / name / "config.pbtxt").write_text(
            f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {MAX_BATCH}\n{io}{extra}{threads}'
        )
    (root / "add_sub" / "1").mkdir(parents=True)
    b._save(b.add_sub_model(), root / "add_sub" / "1" / "model.onnx")
    (root / "add_sub" / "config.pbtxt").write_text(
        f'name: "add_sub"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n{threads}'
    )


async def pa_point(binary: str, url: str, model: str, batch: int, concurrency: int, duration: float) -> Served:
    """perf_analyzer holds the load; the server's statistics over its whole run (warm-up included)."""
    transport = make_transport("grpc", url)
    try:
        before = await transport.statistics(model, "")
        pt = await asyncio.to_thread(perf_analyzer.measure, binary, url, model, batch, concurrency, duration)
        after = await transport.statistics(model, "")
    finally:
        await transport.close()
    return served(pt.rows_per_s, 0, pt.p50_us, pt.p99_us, after - before)


@dataclass
class Point:
    label: str
    concurrency: int
    batch: int
    served: list[Served]


def render(ceiling: dict[int, list[float]], protocol: dict[int, list[Served]], points: list[Point]) -> str:
    med = statistics.median
    lines = [
        "| what | clients x batch | infer/s | p50 (µs) | p99 (µs) | queue (µs) | compute (µs) | avg exec batch "
        "| ceiling used | of ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in BATCHES:
        lines.append(f"| in-process onnxruntime | 1 x {b} | {med(ceiling[b]):,.0f} | | | | | {b} | | |")
    for c, runs in sorted(protocol.items()):
        lines.append(
            f"| server, add_sub (protocol ceiling) | {c} x 1 | {med(r.rows_per_s for r in runs):,.0f} "
            f"| {med(r.p50_us for r in runs):,.0f} | {med(r.p99_us for r in runs):,.0f} | | | | | |"
        )
    plain = {p.concurrency: p for p in points if p.label == "dense, no batching" and p.batch == 1}
    for p in points:
        rate = med(s.rows_per_s for s in p.served)
        formable = min(MAX_BATCH, p.concurrency * p.batch)
        compute = med(ceiling[min(BATCHES, key=lambda b: (abs(b - formable), b))])
        if p.batch == 1 and p.concurrency in protocol:
            proto = med(r.rows_per_s for r in protocol[p.concurrency])
            used, what = min(compute, proto), ("compute" if compute <= proto else "protocol")
        else:
            used, what = compute, "compute"
        extra = ""
        if p.label == "dense, dynamic batching" and p.concurrency in plain:
            extra = f" ({rate / med(s.rows_per_s for s in plain[p.concurrency].served):.1f}x no batching)"
        lines.append(
            f"| {p.label} | {p.concurrency} x {p.batch} | {rate:,.0f}{extra} | {med(s.p50_us for s in p.served):,.0f} "
            f"| {med(s.p99_us for s in p.served):,.0f} | {med(s.queue_us for s in p.served):,.0f} "
            f"| {med(s.compute_us for s in p.served):,.0f} | {med(s.avg_batch for s in p.served):.1f} "
            f"| {what} {used:,.0f} | {100 * rate / used:.0f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inferd.perf.bench_batching", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--duration",
        type=float,
        default=2.0,
        help="measured seconds per point (default 2; perf_analyzer: three windows of a third)",
    )
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    p.add_argument("--ceiling-seconds", type=float, default=1.5)
    p.add_argument("--rounds", type=int, default=3, help="medians over this many rounds")
    p.add_argument("--no-pin", action="store_true")
    p.add_argument(
        "--load",
        choices=["auto", "perf_analyzer", "inferd"],
        default="auto",
        help="load generator: perf_analyzer (auto: when installed) or inferd's own Python one",
    )
    p.add_argument(
        "--max-queue-delay-us", type=int, default=500, help="dense_batched's max_queue_delay_microseconds (default 500)"
    )
    a = p.parse_args(argv)
    pa = perf_analyzer.for_load(a.load)
    load = perf_analyzer.LOAD_LABEL if pa else "inferd's Python load generator"
    print(f"# load: {load}", file=sys.stderr)

    def measure_point(model: str, batch: int, concurrency: int) -> Served:
        if pa is not None:
            return asyncio.run(pa_point(pa, server.url, model, batch, concurrency, a.duration))
        return asyncio.run(serve_point(server.url, model, batch, concurrency, a.warmup, a.duration))

    server_cpus, _ = split_cpus(a.no_pin)
    os.environ.update(THREAD_ENV)
    ceiling: dict[int, list[float]] = {b: [] for b in BATCHES}
    protocol: dict[int, list[Served]] = {c: [] for c in CONCURRENCY}
    plan = [("dense, dynamic batching", "dense_batched", c, 1) for c in CONCURRENCY]
    plan += [("dense, no batching", "dense_plain", c, 1) for c in CONCURRENCY]
    plan += [("dense, dynamic batching", "dense_batched", 2, 8), ("dense, no batching", "dense_plain", 2, 8)]
    points = [Point(label, c, b, []) for label, _, c, b in plan]
    with tempfile.TemporaryDirectory(prefix="inferd-bench-batching-") as tmp:
        repo = Path(tmp)
        build_repository(repo, a.max_queue_delay_us)
        server = start(
            "inferd",
            inferd_argv(repo),
            server_cpus,
            ready_line="gRPC (KServe v2) listening on",
            wait_for="model(s) requested",
        )
        try:
            for rnd in range(a.rounds):
                for b, v in _ceilings_in_child(
                    "onnxruntime", repo / "dense_plain", BATCHES, a.ceiling_seconds, 1, server_cpus
                ).items():
                    ceiling[b].append(v)
                for c in CONCURRENCY:
                    protocol[c].append(measure_point("add_sub", 1, c))
                for point, (_, model, c, b) in zip(points, plan):
                    s = measure_point(model, b, c)
                    point.served.append(s)
                    print(
                        f"# round {rnd + 1}: {point.label} {c} x {b}: {s.rows_per_s:,.0f}/s, "
                        f"avg batch {s.avg_batch:.1f}",
                        file=sys.stderr,
                    )
        finally:
            server.stop()
    print(f"load: {load}\n")
    print(render(ceiling, protocol, points))
    errors = sum(s.errors for p_ in points for s in p_.served)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
