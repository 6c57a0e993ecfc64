"""What one request or connection may cost the server, and the refusals counted on /metrics.

A request's bytes are bounded by the transport's size limit, but some encodings expand once
decoded: every JSON value, BYTES element or gRPC ``contents`` value becomes a Python object or
a widened number (a 1-byte varint becomes an 8-byte int64; an empty JSON list costs 64 bytes).
``max_elements`` bounds how many of those one request may carry, so the memory it can cost is
bounded by limit x per-element cost rather than by the body size x the worst expansion. Raw
numeric tensors are not counted: they are numpy views of the received bytes. The measured
worst cases are in the README's "Limits" section (``inferd perf fuzz --memory`` measures them).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from ...protocol.errors import ResourceExhausted

# 4 Mi elements: at most ~300 MB of Python objects for the worst encoding (JSON empty lists,
# short strings), ~64 MB for gRPC int64 contents; about 3 s of CPU to decode as BYTES.
DEFAULT_MAX_ELEMENTS = 4 * 1024 * 1024
# A request's headers must be complete this long after its connection opened or its previous
# response was sent, and a body may go this long without a byte.
DEFAULT_HTTP_HEADER_TIMEOUT_S = 30.0
DEFAULT_HTTP_BODY_TIMEOUT_S = 30.0
DEFAULT_HTTP_MAX_CONNECTIONS = 1024
# Requests of one ModelStreamInfer call decoded and running at once; the stream is not read
# further (HTTP/2 flow control holds the client) until one finishes.
DEFAULT_STREAM_MAX_INFLIGHT = 256
# A connection must finish the HTTP/2 handshake within this (grpc's default is 120 s).
DEFAULT_GRPC_HANDSHAKE_TIMEOUT_S = 20.0
DEFAULT_GRPC_MAX_CONCURRENT_STREAMS = 1024


@dataclass(frozen=True)
class RequestLimits:
    """The limits the front ends enforce (flags in server/cli.py)."""

    max_elements: int = DEFAULT_MAX_ELEMENTS
    http_header_timeout_s: float = DEFAULT_HTTP_HEADER_TIMEOUT_S
    http_body_timeout_s: float = DEFAULT_HTTP_BODY_TIMEOUT_S
    http_max_connections: int = DEFAULT_HTTP_MAX_CONNECTIONS
    grpc_stream_max_inflight: int = DEFAULT_STREAM_MAX_INFLIGHT
    grpc_handshake_timeout_s: float = DEFAULT_GRPC_HANDSHAKE_TIMEOUT_S
    grpc_max_concurrent_streams: int = DEFAULT_GRPC_MAX_CONCURRENT_STREAMS


class TooManyElements(ResourceExhausted):
    """A request over ``max_elements`` (the front ends count these as refusals)."""


def too_many_elements(limit: int, what: str = "the request") -> TooManyElements:
    return TooManyElements(
        f"{what} carries more than {limit} elements that are decoded one by one (JSON values, BYTES "
        "elements, gRPC 'contents' values); send numeric tensors as raw/binary data, or raise "
        "--max-request-elements"
    )


class ElementBudget:
    """The elements one request may still decode one by one (BYTES elements, ``contents``
    values); each decoder takes its count before allocating anything for them."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = self.left = limit

    def take(self, n: int, what: str) -> None:
        self.left -= n
        if self.left < 0:
            raise too_many_elements(self.limit, what)


class Refusals:
    """Counts of what the front ends refused or cut off that never became a request (a timed
    out or surplus connection, an oversized request), exported as
    ``inferd_refused_total{protocol, reason}``. Incremented from the event loop and from
    decoding threads, hence the lock."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def count(self, protocol: str, reason: str) -> None:
        with self._lock:
            self._counts[(protocol, reason)] += 1

    def get(self, protocol: str, reason: str) -> int:
        with self._lock:
            return self._counts[(protocol, reason)]

    def collector(self) -> Collector:
        return _RefusalCollector(self)


class _RefusalCollector(Collector):
    def __init__(self, refusals: Refusals) -> None:
        self._refusals = refusals

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "inferd_refused",
            "Connections and requests the front ends refused or closed before they became requests, by reason",
            labels=["protocol", "reason"],
        )
        with self._refusals._lock:
            items = sorted(self._refusals._counts.items())
        for (protocol, reason), n in items:
            family.add_metric([protocol, reason], n)
        yield family
