"""The load generator's view of a server: a few set-up calls and one hot call, ``infer``.

Requests are encoded once, before the run (``prepare``), and reused: the generator must spend
its CPU on sending, not on building messages. ``infer`` returns the client-side send and
receive times (perf_analyzer's "Client Send" / "Client Recv") and raises :class:`RequestFailed`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .inputs import ModelInfo
from .stats import ServerCounters


class RequestFailed(Exception):
    """An inference request failed (error status or error response).

    ``unavailable`` marks failures that say nothing about the request itself: the server could
    not be reached or answered that it cannot serve (gRPC UNAVAILABLE, HTTP 502-504, refused or
    reset connections). The load generator stops the run when only these keep coming.
    """

    def __init__(self, message: str, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


class Transport(ABC):
    protocol = ""

    @abstractmethod
    async def server_extensions(self) -> list[str]:
        """The extensions ServerMetadata lists; "statistics" enables the server breakdown."""

    @abstractmethod
    async def model_info(self, name: str, version: str) -> ModelInfo:
        """The model's signature from its metadata and config (perf_analyzer reads both)."""

    @abstractmethod
    async def statistics(self, name: str, version: str) -> ServerCounters:
        """The model's cumulative counters now (the highest version when ``version`` is "")."""

    @abstractmethod
    def prepare(self, model: ModelInfo, requests: Sequence[Mapping[str, np.ndarray]]) -> None:
        """Encode the requests once; ``infer(i)`` sends request ``i % len(requests)``."""

    @abstractmethod
    async def infer(self, index: int) -> tuple[int, int]:
        """Send one request and wait for its response: (send_ns, recv_ns)."""

    async def start(self) -> None:
        """Open per-run resources (e.g. the stream for --streaming)."""

    @abstractmethod
    async def close(self) -> None: ...


def pick_version(entries: Sequence[Any], version: str, version_of: Any) -> Any:
    """perf_analyzer's choice of statistics entry: the given version, else the highest."""
    if version:
        for e in entries:
            if str(version_of(e)) == version:
                return e
        return None
    best = None
    for e in entries:
        v = str(version_of(e))
        if v.isdigit() and (best is None or int(v) > int(str(version_of(best)))):
            best = e
    return best if best is not None else (entries[0] if entries else None)


def counters_from_json(stats: Mapping[str, Any]) -> ServerCounters:
    """ServerCounters from one entry of the statistics JSON (HTTP) or a MessageToDict of it."""
    s = stats.get("inference_stats", {})

    def d(key: str) -> tuple[int, int]:
        v = s.get(key, {})
        return int(v.get("count", 0)), int(v.get("ns", 0))

    success, queue, ci, cf, co, hit, miss = (
        d(k)
        for k in ("success", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
    )
    return ServerCounters(
        int(stats.get("inference_count", 0)),
        int(stats.get("execution_count", 0)),
        *success,
        *queue,
        *ci,
        *cf,
        *co,
        *hit,
        *miss,
    )


def counters_from_pb(stats: Any) -> ServerCounters:
    """ServerCounters from a ``ModelStatistics`` protobuf message."""
    s = stats.inference_stats
    pairs = [
        (x.count, x.ns)
        for x in (s.success, s.queue, s.compute_input, s.compute_infer, s.compute_output, s.cache_hit, s.cache_miss)
    ]
    return ServerCounters(stats.inference_count, stats.execution_count, *[v for p in pairs for v in p])


def make_transport(protocol: str, url: str, streaming: bool = False, connections: int = 1) -> Transport:
    """``protocol`` is "grpc" or "http"; imports only what that protocol needs."""
    if protocol == "grpc":
        from .grpc_transport import GrpcTransport

        return GrpcTransport(url, streaming=streaming)
    if protocol == "http":
        if streaming:
            raise ValueError("--streaming needs -i grpc")
        from .http_transport import HttpTransport

        return HttpTransport(url, connections=connections)
    raise ValueError(f"unknown protocol '{protocol}' (grpc or http)")
