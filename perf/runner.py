"""One run of the tool, from options to results: connect, read the model's signature, build the
inputs, start the generator (in-process or child processes) and sweep."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .inputs import DataOptions, ModelInfo, build_requests
from .loadgen import OUTAGE_NS, LoadGenerator
from .procs import ProcessLoad
from .profiler import Profiler, ProfileSettings, Progress, ServerGone
from .stats import StepResult
from .transport import RequestFailed, Transport, make_transport

DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}


@dataclass
class RunOptions:
    model: str
    version: str = ""
    protocol: str = "grpc"
    url: str | None = None
    mode: str = "concurrency"  # concurrency | rate
    values: list[float] = field(default_factory=lambda: [1.0])
    distribution: str = "constant"
    data: DataOptions = field(default_factory=DataOptions)
    measurement_ms: int = 5000
    stability: float = 0.10
    max_trials: int = 10
    percentile: int | None = None
    latency_threshold_ms: float | None = None
    streaming: bool = False
    processes: int = 1
    event_loop: str = "auto"
    csv_path: Path | None = None
    plot_path: Path | None = None
    verbose: bool = False


@dataclass
class RunOutput:
    model: ModelInfo
    results: list[StepResult]
    server_stats: bool
    notes: list[str] = field(default_factory=list)
    # Set when the server stopped answering: ``results`` then holds the steps completed before.
    error: str | None = None


def gone_message(url: str, mode: str, e: ServerGone) -> str:
    kind = "concurrency" if mode == "concurrency" else "request rate"
    done = len(e.results)
    kept = f"{done} completed load level{'s' if done != 1 else ''} reported" if done else "no load level completed"
    return (
        f"the server at {url} stopped answering during {kind} {e.value:g}: every request failed for "
        f"{OUTAGE_NS / 1e9:g} s (last error: {e.last_error}); {kept}"
    )


async def run(opts: RunOptions, progress: Progress | None = None) -> RunOutput:
    """Raises RequestFailed (server unreachable, unknown model) and InputError (bad options).
    A server that stops answering during the sweep ends it with ``RunOutput.error`` set."""
    url = opts.url or DEFAULT_URLS.get(opts.protocol, "")
    transport = make_transport(opts.protocol, url, opts.streaming)
    notes: list[str] = []
    try:
        try:
            extensions = await transport.server_extensions()
        except RequestFailed as e:
            raise RequestFailed(f"server at {url}: {e}") from None
        model = await transport.model_info(opts.model, opts.version)
        requests = build_requests(model, opts.data)
        transport.prepare(model, requests)
        # Like perf_analyzer: the breakdown needs the "statistics" extension.
        server_stats = "statistics" in extensions
        if server_stats:
            try:
                await transport.statistics(opts.model, opts.version)
            except RequestFailed as e:
                server_stats = False
                notes.append(f"no server-side breakdown: {e}")
        else:
            notes.append("the server does not list the 'statistics' extension: no server-side breakdown")
        settings = ProfileSettings(
            model=opts.model,
            version=opts.version,
            mode=opts.mode,
            distribution=opts.distribution,
            batch_size=opts.data.batch_size,
            measurement_ms=opts.measurement_ms,
            stability=opts.stability,
            max_trials=opts.max_trials,
            percentile=opts.percentile,
            latency_threshold_ms=opts.latency_threshold_ms,
            server_stats=server_stats,
            seed=opts.data.seed,
        )
        try:
            results = await _sweep(opts, url, transport, model, requests, settings, progress)
        except ServerGone as e:
            return RunOutput(model, e.results, server_stats, notes, gone_message(url, opts.mode, e))
        return RunOutput(model, results, server_stats, notes)
    finally:
        await transport.close()


async def _sweep(
    opts: RunOptions,
    url: str,
    transport: Transport,
    model: ModelInfo,
    requests: list[dict[str, np.ndarray]],
    settings: ProfileSettings,
    progress: Progress | None,
) -> list[StepResult]:
    if opts.processes == 1:
        return await Profiler(transport, LoadGenerator(transport), settings, progress).sweep(opts.values)
    gen = ProcessLoad(opts.processes, opts.protocol, url, opts.streaming, model, requests, opts.event_loop)
    await gen.open()
    try:
        return await Profiler(transport, gen, settings, progress).sweep(opts.values)
    finally:
        await gen.close()


def run_sync(opts: RunOptions, progress: Progress | None = None) -> RunOutput:
    """:func:`run` on a fresh event loop (uvloop when installed and allowed)."""
    from .procs import install_event_loop

    install_event_loop(opts.event_loop)
    return asyncio.run(run(opts, progress))
