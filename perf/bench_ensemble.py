"""An ensemble against the same pipeline chained by the client: the bundled ``dense_pipeline``
(preprocess -> dense -> postprocess) as one request, and as three gRPC round trips.

    taskset -c 0 inferd serve --http-port 18000 --grpc-port 18001 --metrics-port 18002 &
    taskset -c 1 inferd perf bench ensemble --grpc-url 127.0.0.1:18001 --rounds 3

Per concurrency and mode it prints throughput, p50/p99 latency and, from the server's
statistics, the three models' compute and queue time per request (the queue time is mostly
their dynamic batchers' ``max_queue_delay_microseconds``, paid the same in both modes). The
ensemble's overhead is its own server-side request time minus that compute and queue time:
what chaining in-process adds (per-step validation, scheduler and thread hand-offs). One round
trip is what the client chain's p50 spends beyond compute and queue, divided by its three
calls. The goal is overhead / round trip well below 1. "in-process" is the same
three steps called directly in this process at batch 1 (numpy + onnxruntime): the ceiling.
It starts nothing and sends only to the loopback URL it is given, each cell for a bounded time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..clients.client import AsyncInferenceClient
from .harness import Bench, module_main
from .points import Cell, drive, loopback

STEPS = ("preprocess", "dense", "postprocess")
ENSEMBLE = "dense_pipeline"
MODES = ("ensemble", "client-chain")


@dataclass
class Row:
    cell: Cell
    compute_us: float  # the three models' compute (input + infer + output) per request
    queue_us: float  # the three models' queue time per request (their dynamic batchers' delays)
    ensemble_us: float  # the ensemble's server-side request time per request (ensemble mode)


async def _totals(client: AsyncInferenceClient, model: str) -> tuple[int, int, int, int]:
    """(successful requests, their summed request ns, summed compute ns, summed queue ns)."""
    s = (await client.model_statistics(model)).model_stats[0].inference_stats
    compute = s.compute_input.ns + s.compute_infer.ns + s.compute_output.ns
    return s.success.count, s.success.ns, compute, s.queue.ns


async def _measured(
    client: AsyncInferenceClient,
    send: Callable[[], Awaitable[None]],
    mode: str,
    concurrency: int,
    seconds: float,
    warmup: float,
) -> Row:
    before = {m: await _totals(client, m) for m in STEPS + (ENSEMBLE,)}
    cell = await drive(send, concurrency, seconds, warmup, mode)
    after = {m: await _totals(client, m) for m in STEPS + (ENSEMBLE,)}
    # Per pipeline request: every step runs once per request in both modes.
    requests = max(after["dense"][0] - before["dense"][0], 1)
    compute_ns = sum(after[m][2] - before[m][2] for m in STEPS)
    queue_ns = sum(after[m][3] - before[m][3] for m in STEPS)
    ens_count = after[ENSEMBLE][0] - before[ENSEMBLE][0]
    ens_ns = after[ENSEMBLE][1] - before[ENSEMBLE][1]
    return Row(
        cell, compute_ns / requests / 1000, queue_ns / requests / 1000, ens_ns / ens_count / 1000 if ens_count else 0.0
    )


def in_process_ceiling(repo: Path, seconds: float) -> Cell:
    """preprocess, onnxruntime ``dense`` and postprocess called directly, one row at a time."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(repo / "dense" / "1" / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    labels = np.array([f"class_{i}".encode() for i in range(10)], dtype=object)
    raw = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    latencies = []
    end = time.monotonic_ns() + int(seconds * 1e9)
    while (t0 := time.monotonic_ns()) < end:
        normalized = (raw - raw.mean(axis=1, keepdims=True)) / (raw.std(axis=1, keepdims=True) + 1e-6)
        (probs,) = session.run(["PROBS"], {"INPUT": normalized.astype(np.float32)})
        top = np.argsort(-probs, axis=1, kind="stable")[:, :3]
        _ = labels[top], np.take_along_axis(probs, top, axis=1)
        latencies.append(time.monotonic_ns() - t0)
    lat = sorted(latencies)
    return Cell(
        "in-process",
        1,
        len(lat),
        0,
        len(lat) / seconds,
        lat[len(lat) // 2] / 1000,
        lat[int(0.99 * (len(lat) - 1))] / 1000,
    )


async def run(args: argparse.Namespace) -> dict[tuple[int, str], list[Row]]:
    rows: dict[tuple[int, str], list[Row]] = {}
    raw = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    async with AsyncInferenceClient(args.grpc_url) as client:
        for model in STEPS + (ENSEMBLE,):
            if not await client.is_model_ready(model):
                raise SystemExit(f"model '{model}' is not ready on {args.grpc_url}")

        async def ensemble() -> None:
            await client.infer(ENSEMBLE, {"RAW": raw}, timeout=30)

        async def chain() -> None:
            normalized = (await client.infer("preprocess", {"RAW": raw}, timeout=30))["NORMALIZED"]
            probs = (await client.infer("dense", {"INPUT": normalized}, timeout=30))["PROBS"]
            await client.infer("postprocess", {"PROBS": probs}, timeout=30)

        sends = {"ensemble": ensemble, "client-chain": chain}
        for rnd in range(args.rounds):
            for c in args.concurrency:
                for mode in MODES[rnd % 2 :] + MODES[: rnd % 2]:
                    row = await _measured(client, sends[mode], mode, c, args.seconds, args.warmup)
                    rows.setdefault((c, mode), []).append(row)
                    print(
                        f"# round {rnd + 1}: {mode} x{c}: {row.cell.rate:,.0f}/s, p50 {row.cell.p50_us:,.0f} µs",
                        file=sys.stderr,
                    )
    return rows


def render(rows: dict[tuple[int, str], list[Row]], ceiling: Cell | None) -> str:
    med = statistics.median
    lines = [
        "| mode | concurrency | infer/s | p50 (µs) | p99 (µs) | x in-process | step compute (µs) | step queue (µs) "
        "| ensemble overhead (µs) | one round trip (µs) | overhead / round trip | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in sorted({k[0] for k in rows}):
        chain, ens = rows.get((c, "client-chain"), []), rows.get((c, "ensemble"), [])
        trip = med((r.cell.p50_us - r.compute_us - r.queue_us) / 3 for r in chain) if chain else 0.0
        for mode, rs in (("ensemble", ens), ("client-chain", chain)):
            if not rs:
                continue
            rate = med(r.cell.rate for r in rs)
            x = f"{rate / ceiling.rate:.2f}" if ceiling else "-"
            overhead = med(r.ensemble_us - r.compute_us - r.queue_us for r in rs) if mode == "ensemble" else None
            ratio = f"{overhead / trip:.2f}" if overhead is not None and trip > 0 else "-"
            lines.append(
                f"| {mode} | {c} | {rate:,.0f} | {med(r.cell.p50_us for r in rs):,.0f} | "
                f"{med(r.cell.p99_us for r in rs):,.0f} | {x} | {med(r.compute_us for r in rs):,.0f} | "
                f"{med(r.queue_us for r in rs):,.0f} | "
                f"{'-' if overhead is None else f'{overhead:,.0f}'} | {trip:,.0f} | {ratio} | "
                f"{sum(r.cell.errors for r in rs)} |"
            )
    if ceiling:
        lines.append(
            f"| in-process | 1 | {ceiling.rate:,.0f} | {ceiling.p50_us:,.0f} | {ceiling.p99_us:,.0f} "
            "| 1.00 | - | - | - | - | - | 0 |"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grpc-url", default="127.0.0.1:8001", help="host:port of the server's gRPC front end (loopback)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the grid; the table shows medians")
    p.add_argument(
        "--repository",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "model_repository",
        help="where the in-process ceiling reads dense/1/model.onnx ('' to skip it)",
    )


def run_bench(args: argparse.Namespace) -> int:
    loopback(args.grpc_url)
    rows = asyncio.run(run(args))
    ceiling = in_process_ceiling(args.repository, args.seconds) if str(args.repository) else None
    print(render(rows, ceiling))
    return 0 if not any(r.cell.errors for rs in rows.values() for r in rs) else 1


BENCH = Bench(
    "ensemble",
    "the dense_pipeline ensemble against the same three models chained by the client (a running server)",
    add_arguments,
    run_bench,
    __doc__ or "",
)

if __name__ == "__main__":
    sys.exit(module_main(BENCH))
