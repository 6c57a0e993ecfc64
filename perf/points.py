"""One measured point of a benchmark: a fixed load (N requests in flight of one model and batch)
against a running server, with the client's throughput and latency and, where the server has
the statistics API, its own queue and compute time and average executed batch.

Two load generators: NVIDIA's perf_analyzer (C++; it disturbs the server least, see
``perf_analyzer.py``) or inferd's Python one (``loadgen.py``, in one or several processes).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import perf_analyzer
from .inputs import DataOptions, ModelInfo, build_requests
from .loadgen import LoadGenerator
from .procs import ProcessLoad
from .stats import ServerCounters, percentile
from .transport import make_transport


@dataclass
class Served:
    rows_per_s: float  # requests x batch per second
    avg_batch: float = 0.0  # the server's inferences per execution (0 without statistics)
    errors: int = 0
    p50_us: float = 0.0
    p99_us: float = 0.0
    queue_us: float = 0.0  # server-side, per request
    compute_us: float = 0.0  # server-side compute input + infer + output, per request
    server_cpu_ms: float = 0.0  # the server process tree's CPU time per completed request (0 unmeasured)
    requests_per_execution: float = 0.0  # requests per model execution (0 without statistics)


@dataclass(frozen=True)
class Load:
    """How points are driven: perf_analyzer's binary, or None for inferd's Python generator."""

    perf_analyzer: str | None
    duration: float
    warmup: float = 1.0
    processes: int = 1

    @property
    def label(self) -> str:
        if self.perf_analyzer is not None:
            return perf_analyzer.LOAD_LABEL
        return "inferd's Python load generator" + (f" x {self.processes} processes" if self.processes > 1 else "")


# Samples the server's CPU seconds so far (``ServerProcess.cpu_s``), read around a measurement.
CpuClock = Callable[[], float]


def served(
    rows_per_s: float,
    errors: int,
    p50_us: float,
    p99_us: float,
    d: ServerCounters | None,
    cpu_s: float | None = None,
) -> Served:
    """A point's client figures joined with the server's statistics over it (``d``) and the
    server's CPU seconds over the same span (``cpu_s``; per request needs the statistics)."""
    if d is None:
        return Served(rows_per_s, 0.0, errors, p50_us, p99_us)
    executions, requests = d.execution_count, max(d.success_count, 1)
    return Served(
        rows_per_s,
        d.inference_count / executions if executions else 0.0,
        errors,
        p50_us,
        p99_us,
        d.queue_ns / requests / 1000,
        (d.compute_input_ns + d.compute_infer_ns + d.compute_output_ns) / requests / 1000,
        cpu_s * 1000 / requests if cpu_s is not None and d.success_count else 0.0,
        d.success_count / executions if executions else 0.0,
    )


async def python_point(
    url: str,
    model: str,
    batch: int,
    concurrency: int,
    warmup: float,
    duration: float,
    processes: int = 1,
    server_stats: bool = True,
    cpu: CpuClock | None = None,
) -> Served:
    """``concurrency`` requests in flight from inferd's generator; one window after a warm-up.
    With ``cpu`` (and the statistics), the server's CPU time per request over the window."""
    transport = make_transport("grpc", url)
    procs: ProcessLoad | None = None
    try:
        info: ModelInfo = await transport.model_info(model, "")
        requests = build_requests(info, DataOptions(batch_size=batch, input_data="random"))
        transport.prepare(info, requests)
        gen: LoadGenerator | ProcessLoad = LoadGenerator(transport)
        if processes > 1:
            gen = procs = ProcessLoad(processes, "grpc", url, False, info, requests)
            await procs.open()
        await gen.start_concurrency(concurrency)
        await asyncio.sleep(warmup)
        before = await transport.statistics(model, "") if server_stats else None
        cpu_before = cpu() if cpu is not None else 0.0
        start = time.monotonic_ns()
        await gen.collect(start)
        await asyncio.sleep(duration)
        end = time.monotonic_ns()
        records, _ = await gen.collect(end)
        cpu_after = cpu() if cpu is not None else 0.0
        after = await transport.statistics(model, "") if server_stats else None
        await gen.stop()
    finally:
        if procs is not None:
            await procs.close()
        await transport.close()
    lat = sorted(r.latency_ns for r in records if r.ok)
    return served(
        len(lat) * batch / ((end - start) / 1e9),
        len(records) - len(lat),
        percentile(lat, 50) / 1000 if lat else 0.0,
        percentile(lat, 99) / 1000 if lat else 0.0,
        after - before if after is not None and before is not None else None,
        cpu_after - cpu_before if cpu is not None else None,
    )


async def pa_point(
    binary: str,
    url: str,
    model: str,
    batch: int,
    concurrency: int,
    duration: float,
    server_stats: bool = True,
    cpu: CpuClock | None = None,
    protocol: str = "grpc",
) -> Served:
    """perf_analyzer holds the load over ``protocol`` (grpc or http: ``url`` is that front end's);
    the server's statistics over its whole run (warm-up included) and, with ``cpu``, its CPU time
    sampled right before and after perf_analyzer runs."""
    transport = make_transport(protocol, url)
    try:
        before = await transport.statistics(model, "") if server_stats else None
        cpu_before = cpu() if cpu is not None else 0.0
        pt = await asyncio.to_thread(
            perf_analyzer.measure, binary, url, model, batch, concurrency, duration, protocol=protocol
        )
        cpu_after = cpu() if cpu is not None else 0.0
        after = await transport.statistics(model, "") if server_stats else None
    finally:
        await transport.close()
    delta = after - before if after is not None and before is not None else None
    return served(pt.rows_per_s, 0, pt.p50_us, pt.p99_us, delta, cpu_after - cpu_before if cpu is not None else None)


def measure(
    load: Load,
    url: str,
    model: str,
    batch: int,
    concurrency: int,
    server_stats: bool = True,
    cpu: CpuClock | None = None,
    protocol: str = "grpc",
) -> Served:
    """One point under ``load``; ``cpu`` samples the server's CPU seconds (Served.server_cpu_ms).
    ``protocol`` http is for perf_analyzer's load only."""
    if load.perf_analyzer is not None:
        return asyncio.run(
            pa_point(load.perf_analyzer, url, model, batch, concurrency, load.duration, server_stats, cpu, protocol)
        )
    if protocol != "grpc":
        raise ValueError("inferd's Python load generator drives gRPC only here; use perf_analyzer for HTTP")
    return asyncio.run(
        python_point(url, model, batch, concurrency, load.warmup, load.duration, load.processes, server_stats, cpu)
    )


# --- closed-loop cells for benchmarks that send their own requests (HTTP, ensembles) ----------

Send = Callable[[], Awaitable[None]]


@dataclass
class Cell:
    """One kind of request at one concurrency, for one round."""

    mode: str
    concurrency: int
    requests: int
    errors: int
    rate: float  # requests per second
    p50_us: float
    p99_us: float


async def drive(send: Send, concurrency: int, seconds: float, warmup: float, mode: str) -> Cell:
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


def loopback(url: str) -> str:
    """``url`` when its host is a loopback address; benchmarks that take a URL send nowhere else."""
    host = url.rsplit(":", 1)[0].strip("[]")
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"{url}: this benchmark only sends to loopback addresses")
    return url
