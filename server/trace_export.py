"""Where finished traces go: OTLP/HTTP in the background, or an OpenTelemetry SDK exporter.

A traced request costs the event loop a few tuples (``Span``); everything else happens once a
batch is due, on the exporter's thread. The OpenTelemetry SDK's own span pipeline (a ``Span``
object per span, its processor, the OTLP exporter's encoder) costs about 50 µs per span in
Python, several times an element-wise inference, so the default path encodes the spans
straight into OTLP's protobuf messages (the ``opentelemetry-proto`` classes the SDK's exporter
uses) and POSTs them as the SDK's OTLP/HTTP exporter does, batched like its batch span
processor (``bsp_max_queue_size``, ``bsp_schedule_delay``, ``bsp_max_export_batch_size``).
With an SDK ``SpanExporter`` given (tests, embedders), each trace becomes SDK ``ReadableSpan``
objects handed to it as the trace ends.

Both import OpenTelemetry only when built, which happens only once a trace level is on.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import types
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

log = logging.getLogger("inferd")

SERVER, INTERNAL = 2, 1  # OTLP's SpanKind numbers
SCOPE = "inferd"
DEFAULT_QUEUE, DEFAULT_DELAY_MS, DEFAULT_BATCH = 2048, 5000, 512


# One finished span, a plain tuple (built on every traced request's path): span id, parent span
# id (0: none), name, kind, start and end (wall-clock ns), attributes, error message or None,
# events (name, wall-clock ns, attributes).
Span = tuple[
    int, int, str, int, int, int, Mapping[str, Any], "str | None", Sequence[tuple[str, int, Mapping[str, Any]]]
]
NO_ATTRIBUTES: Mapping[str, Any] = types.MappingProxyType({})


class Trace(NamedTuple):
    trace_id: int
    remote_parent: int  # the caller's span (traceparent), 0 when none
    spans: list[Span]


MISSING = "tracing needs the OpenTelemetry SDK and OTLP protobuf packages: pip install 'inferd[tracing]'"


def available() -> bool:
    """Whether the packages tracing needs are installed (without importing them)."""
    import importlib.util

    try:
        return all(importlib.util.find_spec(m) is not None for m in ("opentelemetry.sdk", "opentelemetry.proto"))
    except ModuleNotFoundError:
        return False


def resource_attributes(configured: Mapping[str, str]) -> dict[str, Any]:
    """service.name=inferd, then OTEL_RESOURCE_ATTRIBUTES, then --trace-config's resource=."""
    from opentelemetry.sdk.resources import Resource

    return dict(Resource.create({"service.name": SCOPE, **configured}).attributes)


class SdkSink:
    """Each trace, as it ends, to an OpenTelemetry SDK SpanExporter (e.g. InMemorySpanExporter)."""

    def __init__(self, exporter: Any, resource: Mapping[str, Any]) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self.exporter = exporter
        self._t = (ReadableSpan, Event, SpanContext, SpanKind, Status, StatusCode, TraceFlags)
        self._resource = Resource(dict(resource))
        self._scope = InstrumentationScope(SCOPE)

    def submit(self, trace: Trace) -> None:
        ReadableSpan, Event, SpanContext, SpanKind, Status, StatusCode, TraceFlags = self._t
        sampled = TraceFlags(TraceFlags.SAMPLED)
        spans = []
        for span_id, parent_id, name, kind, start, end, attributes, error, events in trace.spans:
            remote = parent_id != 0 and parent_id == trace.remote_parent
            parent = SpanContext(trace.trace_id, parent_id, remote, sampled) if parent_id else None
            spans.append(
                ReadableSpan(
                    name=name,
                    context=SpanContext(trace.trace_id, span_id, False, sampled),
                    parent=parent,
                    resource=self._resource,
                    attributes=dict(attributes),
                    events=[Event(n, dict(a), ns) for n, ns, a in events],
                    kind=SpanKind.SERVER if kind == SERVER else SpanKind.INTERNAL,
                    status=Status(StatusCode.ERROR, error) if error is not None else Status(StatusCode.UNSET),
                    start_time=start,
                    end_time=end,
                    instrumentation_scope=self._scope,
                )
            )
        self.exporter.export(spans)

    def shutdown(self) -> None:
        self.exporter.shutdown()


class OtlpHttpSink:
    """Batches spans and POSTs them as OTLP/HTTP protobuf to ``url`` on its own thread."""

    def __init__(self, url: str, resource: Mapping[str, Any], bsp: Mapping[str, int]) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2

        self.url = url
        self.max_queue = bsp.get("bsp_max_queue_size", int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_QUEUE)))
        delay_ms = bsp.get("bsp_schedule_delay", int(os.environ.get("OTEL_BSP_SCHEDULE_DELAY", DEFAULT_DELAY_MS)))
        self.delay_s = delay_ms / 1000
        self.batch = bsp.get(
            "bsp_max_export_batch_size", int(os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_BATCH))
        )
        self._pb = trace_service_pb2
        self._resource = [common_pb2.KeyValue(key=k, value=_any(v, common_pb2)) for k, v in resource.items()]
        self._queue: collections.deque[Trace] = collections.deque()
        self._queued = 0  # spans waiting
        self.dropped = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="inferd-trace-export", daemon=True)
        self._thread.start()

    def submit(self, trace: Trace) -> None:
        n = len(trace.spans)
        if self._queued + n > self.max_queue:
            if not self.dropped:
                log.warning("tracing: the export queue is full (%d spans); spans are dropped", self.max_queue)
            self.dropped += n
            return
        self._queue.append(trace)
        self._queued += n
        if self._queued >= self.batch:
            self._wake.set()

    def _run(self) -> None:
        # Full batches as soon as there are, the rest when the delay has passed (or at the end):
        # a POST per handful of spans would cost the server more than the spans did.
        while True:
            due = not self._wake.wait(self.delay_s)
            self._wake.clear()
            stopping = self._stopping
            self._drain(everything=due or stopping)
            if stopping:
                return

    def _drain(self, everything: bool) -> None:
        while self._queued >= self.batch or (everything and self._queue):
            traces: list[Trace] = []
            count = 0
            while self._queue and count < self.batch:
                t = self._queue.popleft()
                traces.append(t)
                count += len(t.spans)
            self._queued -= count
            self._post(self.encode(traces))

    def encode(self, traces: Sequence[Trace]) -> bytes:
        pb = self._pb
        request = pb.ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        rs.resource.attributes.extend(self._resource)
        ss = rs.scope_spans.add()
        ss.scope.name = SCOPE
        add = ss.spans.add
        for t in traces:
            trace_id = t.trace_id.to_bytes(16, "big")
            remote = t.remote_parent
            for span_id, parent_id, name, kind, start, end, attributes, error, events in t.spans:
                # Sampled; bit 8: whether the parent is remote is known; bit 9: it is.
                span = add(
                    trace_id=trace_id,
                    span_id=span_id.to_bytes(8, "big"),
                    parent_span_id=parent_id.to_bytes(8, "big") if parent_id else b"",
                    name=name,
                    kind=kind,
                    start_time_unix_nano=start,
                    end_time_unix_nano=end,
                    flags=0x301 if parent_id and parent_id == remote else 0x101,
                )
                for key, value in attributes.items():
                    _set(span.attributes.add(), key, value)
                for event_name, ns, attrs in events:
                    event = span.events.add(time_unix_nano=ns, name=event_name)
                    for key, value in attrs.items():
                        _set(event.attributes.add(), key, value)
                if error is not None:
                    span.status.code = 2  # STATUS_CODE_ERROR
                    span.status.message = error
        return request.SerializeToString()

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/x-protobuf"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                answer.read()
        except (OSError, urllib.error.URLError) as e:
            log.warning("tracing: cannot export spans to %s: %s", self.url, e)

    def shutdown(self) -> None:
        """Export what is queued and stop the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(30)


def _set(kv: Any, key: str, value: Any) -> None:
    kv.key = key
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, float):
        kv.value.double_value = value
    else:
        kv.value.string_value = str(value)


def _any(value: Any, common_pb2: Any) -> Any:
    kv = common_pb2.KeyValue()
    _set(kv, "", value)
    return kv.value
