"""Dynamic batching: a compute-bound dense model (2048-wide hidden layers) served with and
without dynamic batching, against the compute ceiling (onnxruntime in-process) and the
protocol ceiling (the server answering the element-wise add_sub model).

One table: in-process throughput at batch 1/8/32/64; add_sub through the server at the
concurrencies (batch 1); then the dense model at 1, 8, 16 and 32 concurrent batch-1 clients
with and without dynamic batching, and 2 clients sending batches of 8, each with p50/p99, the
server's queue and compute per request, the average executed batch and the ratio to
min(compute ceiling at the batch the clients can form, protocol ceiling at that concurrency).
Goals: with batching at 16-32 clients >= 3x the no-batching throughput and >= 80% of that
min-ceiling; batch-8 clients >= 60% of the in-process batch-8 ceiling. Last, how late the
batcher's queue-delay timer ends a wait of --max-queue-delay-us on an idle loop, beside the
loop's own call_at (timer_precision.py; goal: within 100 µs).

The server and the in-process ceilings run alone on CPU 0 with one framework thread, the load
generator on CPU 1. The load is perf_analyzer when installed: a Python client's own cost per
request delays how fast a burst of responses comes back as new requests, which the batcher
sees as fewer requests to merge.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import baseline_ref, ceilings, timer_precision
from .harness import (
    Bench,
    add_baseline_argument,
    add_load_arguments,
    comparison,
    exit_status,
    interleaved,
    load_from_args,
    markdown,
    median,
    module_main,
)
from .points import Served, measure
from .servers import ServerProcess, split_cpus, start_inferd

BATCHES = [1, 8, 32, 64]
CONCURRENCY = [1, 8, 16, 32]
MAX_BATCH = 64
PROTOCOL = "server, add_sub (protocol ceiling)"
BATCHED = "dense, dynamic batching"
PLAIN = "dense, no batching"


@dataclass(frozen=True)
class Point:
    label: str
    model: str
    concurrency: int
    batch: int

    @property
    def name(self) -> str:
        return f"{self.label} {self.concurrency} x {self.batch}"


PLAN = (
    [Point(PROTOCOL, "add_sub", c, 1) for c in CONCURRENCY]
    + [Point(BATCHED, "dense_batched", c, 1) for c in CONCURRENCY]
    + [Point(PLAIN, "dense_plain", c, 1) for c in CONCURRENCY]
    + [Point(BATCHED, "dense_batched", 2, 8), Point(PLAIN, "dense_plain", 2, 8)]
)


def build_repository(root: Path, max_queue_delay_us: int = 500) -> None:
    b = ceilings.model_builders()
    batching = {
        "dense_batched": f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}\n",
        "dense_plain": "",
    }
    for name, extra in batching.items():
        (root / name / "1").mkdir(parents=True)
        b._save(b.dense_model(**ceilings.SHAPE), root / name / "1" / "model.onnx")
        (root / name / "config.pbtxt").write_text(
            f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {MAX_BATCH}\n'
            f"{ceilings.mlp_io()}{extra}{ceilings.ORT_ONE_THREAD}"
        )
    (root / "add_sub" / "1").mkdir(parents=True)
    b._save(b.add_sub_model(), root / "add_sub" / "1" / "model.onnx")
    (root / "add_sub" / "config.pbtxt").write_text(
        f'name: "add_sub"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n{ceilings.ORT_ONE_THREAD}'
    )


def render(ceiling: dict[int, list[float]], results: dict[Point, list[Served]]) -> str:
    rows = [
        ["in-process onnxruntime", f"1 x {b}", f"{median(ceiling[b]):,.0f}", *[""] * 4, f"{b}", "", ""] for b in BATCHES
    ]
    protocol = {p.concurrency: results[p] for p in results if p.label == PROTOCOL}
    plain = {p.concurrency: results[p] for p in results if p.label == PLAIN and p.batch == 1}
    for p, runs in results.items():
        rate = median(s.rows_per_s for s in runs)
        if p.label == PROTOCOL:
            rows.append(
                [p.label, f"{p.concurrency} x 1", f"{rate:,.0f}", f"{median(s.p50_us for s in runs):,.0f}"]
                + [f"{median(s.p99_us for s in runs):,.0f}", "", "", "", "", ""]
            )
            continue
        formable = min(MAX_BATCH, p.concurrency * p.batch)
        compute = median(ceiling[min(BATCHES, key=lambda b: (abs(b - formable), b))])
        if p.batch == 1 and p.concurrency in protocol:
            proto = median(r.rows_per_s for r in protocol[p.concurrency])
            used, what = min(compute, proto), ("compute" if compute <= proto else "protocol")
        else:
            used, what = compute, "compute"
        extra = ""
        if p.label == BATCHED and p.batch == 1 and p.concurrency in plain:
            extra = f" ({rate / median(s.rows_per_s for s in plain[p.concurrency]):.1f}x no batching)"
        rows.append(
            [
                p.label,
                f"{p.concurrency} x {p.batch}",
                f"{rate:,.0f}{extra}",
                f"{median(s.p50_us for s in runs):,.0f}",
                f"{median(s.p99_us for s in runs):,.0f}",
                f"{median(s.queue_us for s in runs):,.0f}",
                f"{median(s.compute_us for s in runs):,.0f}",
                f"{median(s.avg_batch for s in runs):.1f}",
                f"{what} {used:,.0f}",
                f"{100 * rate / used:.0f}%",
            ]
        )
    header = ["what", "clients x batch", "infer/s", "p50 (µs)", "p99 (µs)", "queue (µs)", "compute (µs)"]
    header += ["avg exec batch", "ceiling used", "of ceiling"]
    return markdown(header, "llrrrrrrrr", rows)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_load_arguments(p, duration=2.0, rounds=3)
    p.add_argument("--ceiling-seconds", type=float, default=1.5, help="seconds per in-process timing")
    p.add_argument(
        "--max-queue-delay-us", type=int, default=500, help="dense_batched's max_queue_delay_microseconds (default 500)"
    )
    add_baseline_argument(p)


def run(a: argparse.Namespace) -> int:
    load = load_from_args(a)
    print(f"# load: {load.label}", file=sys.stderr)
    server_cpus, _ = split_cpus(a.no_pin)
    os.environ.update(ceilings.THREAD_ENV)
    ceiling: dict[int, list[float]] = {b: [] for b in BATCHES}
    servers: dict[str, ServerProcess] = {}
    with (
        tempfile.TemporaryDirectory(prefix="inferd-bench-batching-") as tmp,
        baseline_ref.builds(a.baseline_ref) as builds,
    ):
        repo = Path(tmp)
        build_repository(repo, a.max_queue_delay_us)
        names = [b.name for b in builds]
        try:
            for b in builds:
                servers[b.name] = start_inferd(b.name, b.env, server_cpus, repo)

            def time_ceilings(rnd: int) -> None:
                timed = ceilings.in_child(
                    "onnxruntime", repo / "dense_plain", BATCHES, a.ceiling_seconds, 1, server_cpus
                )
                for b, v in timed.items():
                    ceiling[b].append(v)

            raw = interleaved(
                a.rounds,
                [(p, n) for p in PLAN for n in names],
                lambda k: measure(load, servers[k[1]].url, k[0].model, k[0].batch, k[0].concurrency),
                lambda k: f"{k[0].name} {k[1]}",
                before_round=time_ceilings,
            )
        finally:
            for s in servers.values():
                s.stop()
    print(f"load: {load.label}\n")
    print(render(ceiling, {p: raw[(p, "inferd")] for p in PLAN}))
    print("\n" + timer_precision.render(timer_precision.measure(a.max_queue_delay_us), a.max_queue_delay_us))
    if len(names) > 1:
        print(f"\ninferd against {names[1]}:\n")
        by_name = {(p.name, n): v for (p, n), v in raw.items()}
        print(comparison(by_name, [p.name for p in PLAN], names, [("inferd", names[1])]))
    return exit_status(raw)


BENCH = Bench(
    "batching",
    "a compute-bound dense model with and without dynamic batching, against its compute and protocol ceilings",
    add_arguments,
    run,
    __doc__ or "",
)

if __name__ == "__main__":
    sys.exit(module_main(BENCH))
