"""HTTP vs gRPC on one running server: throughput and p50/p99 latency of the same model and
inputs through gRPC (raw_input_contents), HTTP with JSON tensors and HTTP with binary tensors,
at each concurrency.

    taskset -c 0 inferd serve --model-control-mode explicit --load-model add_sub \
        --http-port 18000 --grpc-port 18001 --metrics-port 18002 &
    taskset -c 1 python -m inferd.perf.bench_http_vs_grpc \
        --grpc-url 127.0.0.1:18001 --http-url 127.0.0.1:18000 --rounds 3

It starts nothing and sends requests only to the loopback URLs it is given, each cell for a
bounded time. Every request body is built once; each response is read and parsed, as a
client must. HTTP clients keep up to ``concurrency`` keep-alive connections (HTTP/1.1 has one
request per connection at a time); gRPC multiplexes them all on one channel. ``taskset`` keeps
server and load generator off each other's CPU on a small machine.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..clients.client import build_infer_request
from ..protocol import codec
from .stats import percentile

MODES = ("grpc", "http-json", "http-binary")
Send = Callable[[], Awaitable[None]]


@dataclass
class Cell:
    """One protocol at one concurrency, for one round."""

    mode: str
    concurrency: int
    requests: int
    errors: int
    rate: float  # requests per second
    p50_us: float
    p99_us: float


def median_row(cells: list[Cell]) -> str:
    """The median of each figure over the rounds (the machine is noisy), and the rounds' spread."""
    first = cells[0]
    rates = [c.rate for c in cells]
    spread = f" ({min(rates):,.0f}–{max(rates):,.0f})" if len(cells) > 1 else ""
    return (
        f"| {first.mode} | {first.concurrency} | {statistics.median(rates):,.0f}{spread} | "
        f"{statistics.median(c.p50_us for c in cells):,.0f} | {statistics.median(c.p99_us for c in cells):,.0f} | "
        f"{sum(c.requests for c in cells)} | {sum(c.errors for c in cells)} |"
    )


def _loopback(url: str) -> str:
    host = url.rsplit(":", 1)[0].strip("[]")
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"{url}: this benchmark only sends to loopback addresses")
    return url


def make_inputs(metadata: dict[str, Any], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = {}
    for t in metadata["inputs"]:
        dtype = codec.datatype(t["datatype"]).dtype
        if dtype.kind == "O":
            raise SystemExit(f"input {t['name']}: {t['datatype']} is not supported by this benchmark")
        shape = [batch if int(d) == -1 else int(d) for d in t["shape"]]
        inputs[t["name"]] = (rng.standard_normal(shape) * 10).astype(dtype)
    return inputs


def http_bodies(inputs: dict[str, np.ndarray]) -> dict[str, tuple[bytes, dict[str, str]]]:
    """The JSON-tensor and binary-tensor request bodies (and headers) for the same inputs."""
    tensors = [{"name": n, "shape": list(a.shape), "datatype": codec.of_array(a).name} for n, a in inputs.items()]
    as_json = {"inputs": [{**t, "data": a.ravel().tolist()} for t, a in zip(tensors, inputs.values())]}
    raws = [codec.to_raw(a) for a in inputs.values()]
    header = json.dumps(
        {
            "inputs": [{**t, "parameters": {"binary_data_size": len(r)}} for t, r in zip(tensors, raws)],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return {
        "http-json": (json.dumps(as_json).encode(), {"Content-Type": "application/json"}),
        "http-binary": (header + b"".join(raws), {"Inference-Header-Content-Length": str(len(header))}),
    }


async def _drive(send: Send, concurrency: int, seconds: float, warmup: float, mode: str) -> Cell:
    """``concurrency`` workers back to back; only requests that start after the warm-up and end
    before the deadline count."""
    start = time.monotonic_ns() + int(warmup * 1e9)
    end = start + int(seconds * 1e9)
    latencies: list[int] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while (t0 := time.monotonic_ns()) < end:
            try:
                await send()
            except Exception:
                if t0 >= start:
                    errors += 1
                continue
            t1 = time.monotonic_ns()
            if t0 >= start and t1 <= end:
                latencies.append(t1 - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    lat = sorted(latencies)
    p50, p99 = (percentile(lat, 50) / 1000, percentile(lat, 99) / 1000) if lat else (0.0, 0.0)
    return Cell(mode, concurrency, len(lat), errors, len(lat) / seconds, p50, p99)


async def run(args: argparse.Namespace) -> dict[tuple[int, str], list[Cell]]:
    import aiohttp
    import grpc

    from ..protocol.pb import grpc_service_pb2 as pb

    http_base = f"http://{args.http_url}" if args.http_url else None
    cells: dict[tuple[int, str], list[Cell]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as metadata_session:
        if http_base:
            async with metadata_session.get(f"{http_base}/v2/models/{args.model}") as r:
                metadata = await r.json()
        else:
            metadata = None
    channel = grpc.aio.insecure_channel(args.grpc_url) if args.grpc_url else None
    try:
        if channel is not None:
            infer = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=None,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            if metadata is None:
                meta = channel.unary_unary(
                    "/inference.GRPCInferenceService/ModelMetadata",
                    request_serializer=pb.ModelMetadataRequest.SerializeToString,
                    response_deserializer=pb.ModelMetadataResponse.FromString,
                )
                m = await meta(pb.ModelMetadataRequest(name=args.model), timeout=30)
                metadata = {
                    "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in m.inputs]
                }
        inputs = make_inputs(metadata, args.batch)
        grpc_payload = build_infer_request(args.model, inputs).SerializeToString()
        bodies = http_bodies(inputs)

        async def send_grpc() -> None:
            await infer(grpc_payload, timeout=30)

        # Rounds go over the whole grid, each in another protocol order, so that a noisy moment
        # does not always hit the same cell.
        for rnd in range(args.rounds):
            for c in args.concurrency:
                for mode in MODES[rnd % 3 :] + MODES[: rnd % 3]:
                    if mode == "grpc" and channel is not None:
                        cell = await _drive(send_grpc, c, args.seconds, args.warmup, mode)
                    elif mode != "grpc" and http_base:
                        connector = aiohttp.TCPConnector(limit=c)
                        async with aiohttp.ClientSession(
                            connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30)
                        ) as session:
                            send = _http_sender(session, http_base, args.model, *bodies[mode])
                            cell = await _drive(send, c, args.seconds, args.warmup, mode)
                    else:
                        continue
                    cells.setdefault((c, mode), []).append(cell)
                    print(
                        f"# round {rnd + 1}: {mode} x{c}: {cell.rate:,.0f}/s, p50 {cell.p50_us:,.0f} µs, "
                        f"p99 {cell.p99_us:,.0f} µs",
                        file=sys.stderr,
                    )
    finally:
        if channel is not None:
            await channel.close()
    return cells


def _http_sender(session: Any, base: str, model: str, body: bytes, headers: dict[str, str]) -> Send:
    url = f"{base}/v2/models/{model}/infer"
    # aiohttp would otherwise ask for gzip; neither side should spend time compressing.
    headers = {**headers, "Accept-Encoding": "identity"}

    async def send() -> None:
        async with session.post(url, data=body, headers=headers) as r:
            data = await r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
            length = r.headers.get("Inference-Header-Content-Length")
            json.loads(data[: int(length)] if length else data)

    return send


def render(cells: dict[tuple[int, str], list[Cell]]) -> str:
    lines = [
        "| protocol | concurrency | infer/s (median, range) | p50 (µs) | p99 (µs) | requests | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    order = sorted(cells, key=lambda k: (k[0], MODES.index(k[1])))
    return "\n".join(lines + [median_row(cells[k]) for k in order])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inferd.perf.bench_http_vs_grpc", description=__doc__.split("\n\n")[0])
    p.add_argument("--grpc-url", default="", help="host:port of the server's gRPC front end (loopback)")
    p.add_argument("--http-url", default="", help="host:port of the server's HTTP front end (loopback)")
    p.add_argument("--model", default="add_sub")
    p.add_argument("--batch", type=int, default=1, help="size of a dynamic (-1) batch dimension (default 1)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)")
    p.add_argument("--rounds", type=int, default=1, help="measure the grid this many times; report medians")
    a = p.parse_args(argv)
    if not (a.grpc_url or a.http_url):
        p.error("give --grpc-url, --http-url or both")
    for url in (a.grpc_url, a.http_url):
        if url:
            _loopback(url)
    print(render(asyncio.run(run(a))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
