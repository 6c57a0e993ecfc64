"""Protocol overhead: inferd against the bare grpc.aio servicer (``baseline_server.py``) on the
bundled add_sub model, batch-1 requests.

Goal for inferd: >= 90% of the bare servicer's throughput and a p99 no more than 1.2x its
p99. Two more servers separate inferd's own cost from its tuning (grpc I/O threads under
SCHED_BATCH, uvloop): the bare servicer with the same tuning (like for like), and inferd
without it; a third pays the bare servicer for the same onnxruntime call inferd makes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..server import event_loop  # stdlib only (uvloop if asked for)
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
from .servers import ServerProcess, baseline_argv, split_cpus, start, start_inferd

SERVERS = {
    "baseline": "the bare grpc.aio servicer on asyncio's loop (the goal's reference)",
    "inferd": "inferd as shipped (grpc I/O threads SCHED_BATCH, uvloop when installed)",
    "baseline-tuned": "the bare servicer with inferd's I/O thread policy and event loop (like for like)",
    "baseline-ort": "baseline-tuned computing through onnxruntime: what a real backend's call costs",
    "inferd-untuned": "inferd with --grpc-io-sched other --event-loop asyncio",
}
UNTUNED = ["--grpc-io-sched", "other", "--event-loop", "asyncio"]


def _start_baseline(name: str, cpus: list[int] | None) -> ServerProcess:
    tuned = ["--io-sched", "batch", "--event-loop", event_loop.resolve("auto")]
    extra = tuned if name in ("baseline-tuned", "baseline-ort") else []
    if name == "baseline-ort":
        extra = [*extra, "--compute", "onnxruntime"]
    return start(name, baseline_argv() + extra, cpus)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_load_arguments(p, duration=5.0, rounds=3, load="inferd")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument(
        "--processes",
        type=int,
        default=2,
        help="Python load generator processes (default 2: one Python process tops out near the bare servicer)",
    )
    p.add_argument("--model-repository", type=Path, default=None, help="inferd's repository (default: bundled)")
    p.add_argument(
        "--servers",
        nargs="+",
        choices=list(SERVERS),
        default=list(SERVERS),
        help="which servers to measure (default all: " + "; ".join(f"{k}: {v}" for k, v in SERVERS.items()) + ")",
    )
    add_baseline_argument(p)


def goal_lines(raw: dict[tuple[str, str], list[Served]], points: list[str]) -> list[str]:
    lines = []
    for point in points:
        x, y = raw[(point, "inferd")], raw[(point, "baseline")]
        tp = ratio(median(s.rows_per_s for s in x), median(s.rows_per_s for s in y))
        p99 = ratio(median(s.p99_us for s in x), median(s.p99_us for s in y))
        verdict = "meets" if tp >= 0.9 and p99 <= 1.2 else "misses"
        lines.append(f"{point}: inferd/baseline {100 * tp:.0f}% of throughput, p99 {p99:.2f}x: {verdict} the goal")
    return lines


def run(a: argparse.Namespace) -> int:
    load = load_from_args(a, a.processes)
    server_cpus, ncpu = split_cpus(a.no_pin)
    print(
        f"# {ncpu} CPUs; "
        + ("servers on CPU 0, load generator on CPUs 1.." if server_cpus else "no pinning")
        + f"; load: {load.label}",
        file=sys.stderr,
    )
    points = [f"{c} x 1" for c in a.concurrency]
    servers: dict[str, ServerProcess] = {}
    with baseline_ref.builds(a.baseline_ref) as builds:
        names = list(a.servers) + [b.name for b in builds[1:]]
        try:
            for name in a.servers:
                if name.startswith("baseline"):
                    servers[name] = _start_baseline(name, server_cpus)
                else:
                    extra = UNTUNED if name == "inferd-untuned" else []
                    servers[name] = start_inferd(name, {}, server_cpus, a.model_repository, ["add_sub"], extra)
            for b in builds[1:]:
                servers[b.name] = start_inferd(b.name, b.env, server_cpus, a.model_repository, ["add_sub"])

            def one(key: tuple[str, str]) -> Served:
                point, name = key
                stats = not name.startswith("baseline")  # the bare servicer has no statistics API
                return measure(load, servers[name].url, "add_sub", 1, int(point.split()[0]), stats)

            keys = [(p, n) for p in points for n in names]
            raw = interleaved(a.rounds, keys, one, lambda k: f"{k[0]} {k[1]}")
        finally:
            for s in servers.values():
                s.stop()
    pairs = [("inferd", "baseline"), ("inferd", "baseline-tuned"), ("inferd", "baseline-ort")]
    pairs += [("inferd-untuned", "baseline")] + [("inferd", b.name) for b in builds[1:]]
    pairs = [(n, d) for n, d in pairs if n in names and d in names]
    print(f"load: {load.label}\n")
    print(comparison(raw, points, names, pairs))
    if "inferd" in names and "baseline" in names:
        print("\n" + "\n".join(goal_lines(raw, points)))
    return exit_status(raw)


BENCH = Bench(
    "protocol",
    "inferd against a bare grpc.aio servicer on add_sub: what inferd's own layers cost per request",
    add_arguments,
    run,
    __doc__ or "",
)

if __name__ == "__main__":
    sys.exit(module_main(BENCH))
