"""Token streaming: the bundled generator ``charlm`` (decoupled, one response per character)
served over ``/v2/models/charlm/generate_stream`` (Server-Sent Events), against the same model
driven in-process: the same ``Generator`` step loop from ``charlm/1/model.py``, one thread per
stream as the served model runs it, in this process.

At each ``--concurrency`` (default 1, 8, 32 streams) each client loops: one request of
``--max-tokens`` characters (seeded, temperature 0.8, prompt ``--prompt``), read to its end;
tokens/s counts every character received in the measured window; time to first token (TTFT) is
from sending the request to the first event (in-process: from calling the generator to its first
piece). The round trip is the median of ``GET /v2/health/ready`` on a kept-alive connection. The
HTTP clients are ``sse_client.Connection`` (a raw asyncio HTTP/1.1 client): a client library's
own cost per streamed request would be counted as the server's.

Goals: at 8 streams, served tokens/s >= 70% of in-process; at every concurrency, the served
median TTFT <= 2 x the in-process median TTFT (the prompt's steps and one sampled step, at the
same concurrency) + one round trip.

With ``--grpc``, each concurrency also has a "served gRPC" row: the same requests on
``ModelStreamInfer`` from a raw grpc.aio client (one stream per client, one request at a time;
TTFT from writing the request to the first message). The goals are read on the HTTP rows.
With ``--triton``, a "Triton (HTTP)" row per concurrency is NVIDIA's Triton (the PyTriton wheel,
installed on first use as ``bench triton`` installs it) serving the same ``charlm`` folder through
its Python backend, pinned to CPU 0 as inferd is, and driven by the same HTTP clients.

The server (``inferd serve``, HTTP and, with ``--grpc``, gRPC; only charlm loaded) runs on CPU 0;
the clients and the in-process runs on the other CPUs (``--no-pin`` to share).

With ``--rounds N`` every row is measured N times, the rows of a concurrency back to back in
each round (each round starting one row later): a row's tokens/s is over all its rounds, its
TTFT over all its requests, and "of in-process" is the median over the rounds of the row's
rate against the better in-process row of the same round, so that the machine's drift between
rounds does not decide the goal.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import Bench, markdown, module_main
from .servers import BUNDLED_REPOSITORY, HTTP_READY_LINE, INFERD_LOADED, INFERD_READY_LINE, split_cpus, start
from .sse_client import Connection, HttpError

MODEL = "charlm"
MODEL_FILE = BUNDLED_REPOSITORY / MODEL / "1" / "model.py"
TRITON = "Triton (HTTP)"


@dataclass
class Point:
    where: str  # "served" | "served gRPC" | "in-process" | "in-process batched"
    streams: int
    tokens: int
    seconds: float
    ttft_s: list[float]
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def ttft(self, q: float = 0.5) -> float:
        if not self.ttft_s:
            return float("nan")
        ordered = sorted(self.ttft_s)
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


# --- in-process ---------------------------------------------------------------------------------
def load_generator(path: Path = MODEL_FILE) -> Any:
    """``Generator`` from the model's own file, over its ``step.onnx``."""
    import importlib.util

    from ..backends.python import provide_triton_module

    provide_triton_module()  # model.py imports triton_python_backend_utils
    spec = importlib.util.spec_from_file_location("inferd_bench_charlm", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generator = module.Generator(path.parent / "step.onnx")
    generator.module = module  # the engine (continuous batching) lives beside it
    return generator


def _drive(
    where: str, streams: int, seconds: float, warmup: float, generate: Callable[[int, Callable[[], None]], None]
) -> Point:
    """``streams`` threads, each generating request after request: ``generate(seed, piece)``
    runs one request to its end, calling ``piece()`` as each piece of text comes."""
    start = time.perf_counter()
    begin, end = start + warmup, start + warmup + seconds
    counts = [0] * streams
    ttfts: list[list[float]] = [[] for _ in range(streams)]

    def client(i: int) -> None:
        seed = i
        while time.perf_counter() < end:
            sent = time.perf_counter()
            first = True

            def piece(sent: float = sent) -> None:  # called only while this request runs
                nonlocal first
                now = time.perf_counter()
                if first and begin <= sent:
                    ttfts[i].append(now - sent)
                first = False
                if begin <= now < end:
                    counts[i] += 1

            generate(seed, piece)
            seed += streams

    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Point(where, streams, sum(counts), seconds, [x for t in ttfts for x in t])


def in_process(generator: Any, streams: int, seconds: float, warmup: float, prompt: str, max_tokens: int) -> Point:
    """The step loop alone, one thread per stream."""

    def generate(seed: int, piece: Callable[[], None]) -> None:
        for _ in generator.complete(prompt, max_tokens, 0.8, 1.0, seed):
            piece()

    return _drive("in-process", streams, seconds, warmup, generate)


class _Request:
    """What the model's engine needs of a request and its response sender, in-process."""

    FINAL = 1

    def __init__(self, on_piece: Callable[[], None]) -> None:
        self.on_piece = on_piece
        self.finished = threading.Event()

    def get_response_sender(self) -> _Request:
        return self

    def is_cancelled(self) -> bool:
        return False

    def send(self, response: Any = None, flags: int = 0) -> None:
        if response is not None:
            self.on_piece()
        if flags & self.FINAL:
            self.finished.set()


def in_process_batched(
    generator: Any, streams: int, seconds: float, warmup: float, prompt: str, max_tokens: int
) -> Point:
    """The served model's own engine (every live stream stepped together), driven in-process."""
    module = generator.module
    engine = module.Engine(generator)

    def generate(seed: int, piece: Callable[[], None]) -> None:
        request = _Request(piece)
        engine.submit(module.Stream(request, generator.complete(prompt, max_tokens, 0.8, 1.0, seed), True))
        request.finished.wait()

    try:
        return _drive("in-process batched", streams, seconds, warmup, generate)
    finally:
        engine.close()


# --- served ---------------------------------------------------------------------------------------
class _Window:
    """What a served drive counts, on the running loop's clock: pieces of text that arrive
    inside the measured window, and each request's time to its first piece (for requests sent
    inside it)."""

    def __init__(self, streams: int, warmup: float, seconds: float) -> None:
        self.loop = asyncio.get_running_loop()
        start = self.loop.time()
        self.begin, self.end = start + warmup, start + warmup + seconds
        self.counts = [0] * streams
        self.ttfts: list[float] = []
        self.errors = 0

    def open(self) -> bool:
        return self.loop.time() < self.end

    def arrived(self, stream: int, sent: float, pieces: int, first: bool) -> None:
        """``pieces`` arrived for ``stream``'s request sent at ``sent``; ``first``: its first ones."""
        now = self.loop.time()
        if first and self.begin <= sent:
            self.ttfts.append(now - sent)
        if self.begin <= now < self.end:
            self.counts[stream] += pieces

    def point(self, where: str, streams: int, seconds: float) -> Point:
        return Point(where, streams, sum(self.counts), seconds, self.ttfts, self.errors)


async def served(
    url: str, streams: int, seconds: float, warmup: float, prompt: str, max_tokens: int, where: str = "served"
) -> Point:
    w = _Window(streams, warmup, seconds)
    path = f"/v2/models/{MODEL}/generate_stream"

    async def one(i: int) -> None:
        connection = Connection.to(url)
        seed = i
        try:
            while w.open():
                body = {"text_input": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed}
                sent = w.loop.time()
                first = True
                try:
                    async for data in connection.stream(path, body):
                        # One event per character: counting event starts is enough (and cheap).
                        n = data.count(b"data: ")
                        if b'"error"' in data:
                            w.errors += 1
                        w.arrived(i, sent, n, first and n > 0)
                        if n:
                            first = False
                except HttpError:
                    w.errors += 1
                seed += streams
        finally:
            await connection.close()

    await asyncio.gather(*(one(i) for i in range(streams)))
    return w.point(where, streams, seconds)


async def served_grpc(address: str, streams: int, seconds: float, warmup: float, prompt: str, max_tokens: int) -> Point:
    import grpc

    from ..protocol.pb import grpc_service_pb2 as pb
    from ..protocol.pb import grpc_service_pb2_grpc as pb_grpc

    def request(seed: int) -> pb.ModelInferRequest:
        msg = pb.ModelInferRequest(model_name=MODEL)
        msg.inputs.add(name="text_input", datatype="BYTES", shape=[1]).contents.bytes_contents.append(prompt.encode())
        msg.inputs.add(name="max_tokens", datatype="INT32", shape=[1]).contents.int_contents.append(max_tokens)
        msg.inputs.add(name="temperature", datatype="FP32", shape=[1]).contents.fp32_contents.append(0.8)
        msg.inputs.add(name="seed", datatype="INT64", shape=[1]).contents.int64_contents.append(seed)
        return msg

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        w = _Window(streams, warmup, seconds)

        async def one(i: int) -> None:
            call = stub.ModelStreamInfer()
            seed = i
            while w.open():
                sent = w.loop.time()
                await call.write(request(seed))
                first = True
                while True:
                    message = await call.read()
                    if message is grpc.aio.EOF:
                        w.errors += 1
                        return
                    if message.error_message:
                        w.errors += 1
                    w.arrived(i, sent, 1 if message.infer_response.outputs else 0, first)
                    first = False
                    if message.infer_response.parameters["triton_final_response"].bool_param:
                        break
                seed += streams
            await call.done_writing()

        await asyncio.gather(*(one(i) for i in range(streams)))
    return w.point("served gRPC", streams, seconds)


async def round_trip(url: str, n: int = 200) -> float:
    connection = Connection.to(url)
    try:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            await connection.get("/v2/health/ready")
            times.append(time.perf_counter() - t)
    finally:
        await connection.close()
    return statistics.median(times)


def start_server(cpus: list[int] | None, grpc: bool = False) -> Any:
    argv = [
        sys.executable,
        *("-m", "inferd.server.cli", "serve"),
        *("--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"),
        *("--allow-grpc", "true" if grpc else "false", "--allow-metrics", "false"),
        *("--model-repository", str(BUNDLED_REPOSITORY), "--model-control-mode", "explicit", "--load-model", MODEL),
    ]
    return start("inferd", argv, cpus, ready_line=HTTP_READY_LINE, wait_for=INFERD_LOADED)


def start_triton(cpus: list[int] | None, venv: Path | None, repository: Path) -> Any:
    """NVIDIA's Triton (from the PyTriton wheel, installed on first use) serving the same charlm
    folder (copied into ``repository``) through its Python backend, pinned as inferd is: the
    peer for the served rows."""
    from . import triton_server

    install = triton_server.ensure(venv)
    shutil.copytree(BUNDLED_REPOSITORY / MODEL, repository / MODEL)
    return triton_server.start(install, repository, [MODEL], cpus)


def grpc_address(server: Any) -> str:
    """The gRPC port the server logged (it binds gRPC before HTTP)."""
    port = server.logged_port(INFERD_READY_LINE)
    if port is None:
        raise RuntimeError("the server logged no gRPC port")
    return f"127.0.0.1:{port}"


# --- report ---------------------------------------------------------------------------------------
def _best_in_process(points: list[Point]) -> dict[int, Point]:
    """The ceiling: the better of the two in-process drives at each concurrency."""
    best: dict[int, Point] = {}
    for p in points:
        if p.where.startswith("in-process") and (p.streams not in best or p.rate > best[p.streams].rate):
            best[p.streams] = p
    return best


def combine(rounds: list[list[Point]]) -> tuple[list[Point], dict[tuple[str, int], float]]:
    """Each row over all its rounds (tokens and seconds summed, every TTFT kept), in the first
    round's order, and each row's median share of the same round's in-process ceiling."""
    rows: dict[tuple[str, int], Point] = {}
    shares: dict[tuple[str, int], list[float]] = {}
    for points in rounds:
        best = _best_in_process(points)
        for p in points:
            key = (p.where, p.streams)
            row = rows.get(key)
            if row is None:
                rows[key] = Point(p.where, p.streams, p.tokens, p.seconds, list(p.ttft_s), p.errors)
            else:
                row.tokens += p.tokens
                row.seconds += p.seconds
                row.ttft_s.extend(p.ttft_s)
                row.errors += p.errors
            base = best[p.streams].rate
            shares.setdefault(key, []).append(p.rate / base if base else 0.0)
    return list(rows.values()), {k: statistics.median(v) for k, v in shares.items()}


def render(
    points: list[Point], rtt: float, shares: dict[tuple[str, int], float] | None = None
) -> tuple[str, list[str], bool]:
    """``shares``: each row's share of the in-process ceiling (combine's, over rounds); by
    default each row against the better in-process row of ``points``."""
    inproc = _best_in_process(points)
    if shares is None:
        shares = {
            (p.where, p.streams): p.rate / inproc[p.streams].rate if inproc[p.streams].rate else 0.0 for p in points
        }
    rows, lines, ok = [], [], True
    for p in points:
        base = inproc[p.streams]
        share = shares[(p.where, p.streams)]
        rows.append(
            [
                p.where,
                str(p.streams),
                f"{p.rate:,.0f}",
                f"{p.rate / p.streams:,.0f}",
                f"{p.ttft() * 1e3:.2f}",
                f"{p.ttft(0.9) * 1e3:.2f}",
                f"{share:.0%}" if not p.where.startswith("in-process") else "-",
                str(p.errors),
            ]
        )
        if p.where != "served":
            continue
        limit = 2 * base.ttft() + rtt
        met = p.ttft() <= limit
        ok &= met and not p.errors
        lines.append(
            f"- {p.streams} stream(s): TTFT {p.ttft() * 1e3:.2f} ms against 2 x {base.ttft() * 1e3:.2f} ms "
            f"+ {rtt * 1e3:.2f} ms = {limit * 1e3:.2f} ms: {'met' if met else 'NOT met'}"
        )
        if p.streams == 8:
            ok &= share >= 0.7
            lines.append(
                f"- 8 streams: served {share:.0%} of the in-process token rate (goal >= 70%): "
                f"{'met' if share >= 0.7 else 'NOT met'}"
            )
    header = [
        "driven",
        "streams",
        "tokens/s",
        "tokens/s per stream",
        "TTFT p50 (ms)",
        "TTFT p90 (ms)",
        "of in-process",
        "errors",
    ]
    return markdown(header, "lrrrrrrr", rows), lines, ok


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="streams (default 1 8 32)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point (default 1)")
    p.add_argument("--max-tokens", type=int, default=128, help="characters per request (default 128)")
    p.add_argument("--prompt", default="First Citizen:\n", help="the prompt (default 'First Citizen:\\n')")
    p.add_argument("--rounds", type=int, default=1, help="measure every row this many times, interleaved (default 1)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and the clients apart")
    p.add_argument("--grpc", action="store_true", help="also stream over gRPC ModelStreamInfer (a row per concurrency)")
    p.add_argument(
        "--triton",
        action="store_true",
        help="also serve charlm from NVIDIA's Triton (its Python backend, the same model.py) on CPU 0: a row per concurrency",
    )
    p.add_argument("--triton-venv", type=Path, default=None, help="Triton's environment (see bench triton)")


def run(a: argparse.Namespace) -> int:
    server_cpus, ncpu = split_cpus(a.no_pin)
    print(
        f"# {ncpu} CPUs; " + ("server on CPU 0, clients on the others" if server_cpus else "no pinning"),
        file=sys.stderr,
    )
    if a.rounds < 1:
        print("inferd perf bench generate: --rounds must be at least 1", file=sys.stderr)
        return 2
    generator = load_generator()
    rounds: list[list[Point]] = []
    scratch = Path(tempfile.mkdtemp(prefix="inferd-bench-generate-"))
    triton = start_triton(server_cpus, a.triton_venv, scratch) if a.triton else None
    server = start_server(server_cpus, a.grpc)
    try:
        url = f"http://{server.url}"
        address = grpc_address(server) if a.grpc else ""
        rtt = asyncio.run(round_trip(url))
        drives = ("in-process", "in-process batched", "served", *(("served gRPC",) if a.grpc else ()))
        drives += (TRITON,) if triton else ()
        for rnd in range(a.rounds):
            points: list[Point] = []
            rounds.append(points)
            shift = rnd % len(drives)
            for streams, where in [(n, w) for n in a.concurrency for w in (*drives[shift:], *drives[:shift])]:
                if where == "served":
                    point = asyncio.run(served(url, streams, a.duration, a.warmup, a.prompt, a.max_tokens))
                elif where == TRITON:
                    assert triton is not None
                    triton_url = f"http://127.0.0.1:{triton.http_port}"
                    point = asyncio.run(
                        served(triton_url, streams, a.duration, a.warmup, a.prompt, a.max_tokens, TRITON)
                    )
                elif where == "served gRPC":
                    point = asyncio.run(served_grpc(address, streams, a.duration, a.warmup, a.prompt, a.max_tokens))
                elif where == "in-process":
                    point = in_process(generator, streams, a.duration, a.warmup, a.prompt, a.max_tokens)
                else:
                    point = in_process_batched(generator, streams, a.duration, a.warmup, a.prompt, a.max_tokens)
                points.append(point)
                print(
                    f"# round {rnd + 1}/{a.rounds} {where} x{streams}: {point.rate:,.0f} tokens/s, "
                    f"TTFT p50 {point.ttft() * 1e3:.2f} ms",
                    file=sys.stderr,
                )
    finally:
        server.stop()
        if triton is not None:
            triton.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    points, shares = combine(rounds)
    order = {w: i for i, w in enumerate(drives)}
    points.sort(key=lambda p: (a.concurrency.index(p.streams), order[p.where]))
    table, lines, ok = render(points, rtt, shares)
    print(
        f"charlm, {a.max_tokens} characters per request, prompt of {len(a.prompt)}; {a.duration:g} s per point"
        + (f", {a.rounds} rounds (of in-process: the median of the rounds' shares)" if a.rounds > 1 else "")
        + f"; HTTP round trip {rtt * 1e3:.2f} ms.\n"
    )
    print(table)
    print()
    print("\n".join(lines))
    return 0 if ok else 1


BENCH = Bench(
    "generate",
    "token streaming over generate_stream (SSE) from the bundled charlm, against the same step loop in-process",
    add_arguments,
    run,
    __doc__ or "",
)

if __name__ == "__main__":
    sys.exit(module_main(BENCH))
