"""HTTP vs gRPC on one running server: throughput and p50/p99 latency of the same model and
inputs through gRPC (raw_input_contents), HTTP with JSON tensors and HTTP with binary tensors,
at each concurrency.

    taskset -c 0 inferd serve --model-control-mode explicit --load-model add_sub \
        --http-port 18000 --grpc-port 18001 --metrics-port 18002 &
    taskset -c 1 inferd perf bench http-vs-grpc \
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
import json
import statistics
import sys
from typing import Any

import numpy as np

from ..clients.client import build_infer_request
from ..protocol import codec
from .harness import Bench, module_main
from .points import Cell, Send, drive, loopback

MODES = ("grpc", "http-json", "http-binary")


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
                        cell = await drive(send_grpc, c, args.seconds, args.warmup, mode)
                    elif mode != "grpc" and http_base:
                        connector = aiohttp.TCPConnector(limit=c)
                        async with aiohttp.ClientSession(
                            connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30)
                        ) as session:
                            send = _http_sender(session, http_base, args.model, *bodies[mode])
                            cell = await drive(send, c, args.seconds, args.warmup, mode)
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grpc-url", default="", help="host:port of the server's gRPC front end (loopback)")
    p.add_argument("--http-url", default="", help="host:port of the server's HTTP front end (loopback)")
    p.add_argument("--model", default="add_sub")
    p.add_argument("--batch", type=int, default=1, help="size of a dynamic (-1) batch dimension (default 1)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)")
    p.add_argument("--rounds", type=int, default=1, help="measure the grid this many times; report medians")


def run_bench(a: argparse.Namespace) -> int:
    if not (a.grpc_url or a.http_url):
        raise SystemExit("give --grpc-url, --http-url or both")
    for url in (a.grpc_url, a.http_url):
        if url:
            loopback(url)
    print(render(asyncio.run(run(a))))
    return 0


BENCH = Bench(
    "http-vs-grpc",
    "one running server's gRPC, HTTP/JSON and HTTP/binary paths at each concurrency",
    add_arguments,
    run_bench,
    __doc__ or "",
)


def main(argv: list[str] | None = None) -> int:
    return module_main(BENCH, argv)


if __name__ == "__main__":
    sys.exit(main())
