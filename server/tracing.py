"""Request tracing, configured as Triton configures it (``--trace-config``, the TraceSetting RPC
and ``/v2[/models/<m>]/trace/setting``), in Triton's two modes: ``opentelemetry`` (spans,
described here; inferd's default) and ``triton`` (JSON trace files: trace_file.py), chosen by
``mode=`` or by giving a mode's own settings (``triton,file=...``, ``opentelemetry,url=...``).

A traced request is one span named after its model (kind SERVER, Triton's ``triton.*``
attributes) with children ``queue``, ``compute_input``, ``compute_infer`` and
``compute_output``, built from the timestamps the statistics already take (no clock is read
for them). An ensemble's steps are child spans named after their composing model, each with
its own children. A request whose ``traceparent`` header (HTTP) or metadata (gRPC) is valid
continues the caller's trace and, as in Triton, is traced whatever ``rate`` and ``count`` say.

Which requests: ``rate`` N traces every N-th request (0: none), ``count`` stops after that
many traces (-1: no limit), ``level`` OFF turns tracing off, TIMESTAMPS traces timings and
TENSORS adds each input's and output's name, datatype and shape as span events (never the
data). Settings are global, and per model once a model is given its own; a model's setting
that was never given (or was cleared) follows the global one.

Cost: with every level OFF (or, in the triton mode, no file), ``Tracer.active`` is False, front
ends and the core test only it, and neither OpenTelemetry nor the file writer is started. A
traced request adds a few tuples on the event loop; trace_export.py batches and exports them
over OTLP/HTTP (``opentelemetry,url=...``, ``bsp_*``) on its own thread.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from random import getrandbits
from typing import TYPE_CHECKING, Any

from ..protocol.errors import InvalidArgument, Unimplemented
from .trace_export import (
    INTERNAL,
    MISSING,
    NO_ATTRIBUTES,
    SERVER,
    OtlpHttpSink,
    SdkSink,
    Trace,
    available,
    resource_attributes,
)
from .trace_file import FileTrace, FileTracer

if TYPE_CHECKING:
    from .stats import ExecutionTimes

log = logging.getLogger("inferd")

LEVELS = ("TIMESTAMPS", "TENSORS")
DEFAULT_RATE = 1000
DEFAULT_URL = "http://localhost:4318/v1/traces"
DEFAULT_SERVICE = "inferd"
BSP_SETTINGS = ("bsp_max_queue_size", "bsp_schedule_delay", "bsp_max_export_batch_size")
MODES = ("opentelemetry", "triton")
# Triton's deprecated flags: the --trace-config setting each one gives, and its placeholder.
DEPRECATED_FLAGS = {
    "trace-file": ("triton,file", "filepath"),
    "trace-level": ("level", "OFF|TIMESTAMPS|TENSORS"),
    "trace-rate": ("rate", "rate value"),
    "trace-count": ("count", "count value"),
    "trace-log-frequency": ("triton,log-frequency", "log frequency value"),
}
NO_FILE = "trace file name is not given"


# --- --trace-config -----------------------------------------------------------------------------
@dataclass
class TraceConfig:
    """What ``--trace-config`` said: global settings, the mode, and the mode's own settings."""

    level: tuple[str, ...] = ()  # empty: OFF
    rate: int = DEFAULT_RATE
    count: int = -1
    mode: str = "opentelemetry"
    url: str = DEFAULT_URL
    resource: dict[str, str] = field(default_factory=dict)
    bsp: dict[str, int] = field(default_factory=dict)
    file: str = ""  # triton mode
    log_frequency: int = 0  # triton mode
    warnings: list[str] = field(default_factory=list)  # logged when the server starts


def _uint(setting: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 2**32 - 1:
        raise ValueError(f"--trace-config {setting} must be a whole number from 0 to {2**32 - 1}, not '{text}'")
    return int(text)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--trace-config count must be -1 or a whole number, not '{text}'") from None
    if value < -1 or value > 2**31 - 1:
        raise ValueError(f"--trace-config count must be -1 (no limit) or from 0 to {2**31 - 1}, not {value}")
    return value


def _level(levels: tuple[str, ...], text: str) -> tuple[str, ...]:
    """Triton's level values: OFF/false clears, TIMESTAMPS (or true/on/min/max) and TENSORS add."""
    word = text.strip().upper()
    if word in ("OFF", "FALSE"):
        return ()
    if word in ("TRUE", "ON", "MIN", "MAX"):
        word = "TIMESTAMPS"
    if word not in LEVELS:
        raise ValueError(f"--trace-config level must be OFF, TIMESTAMPS or TENSORS, not '{text}'")
    return levels if word in levels else (*levels, word)


def parse_trace_config(values: Iterable[str], deprecated: Mapping[str, Iterable[str]] | None = None) -> TraceConfig:
    """Every ``--trace-config`` value, in order: ``<setting>=<value>`` (global) or
    ``<mode>,<setting>=<value>`` (the mode's own), after the values of Triton's deprecated
    flags (``deprecated``: flag name -> its values), which they override as in Triton; raises
    ValueError naming what is wrong."""
    config = TraceConfig()
    modes: dict[str, str] = {}  # mode -> the first value that selected it
    values = list(values)
    given = {text.partition("=")[0] for text in values}
    for flag, (setting, placeholder) in DEPRECATED_FLAGS.items():
        flag_values = list((deprecated or {}).get(flag, ()))
        if not flag_values:
            continue
        config.warnings.append(
            f"'--{flag}' has been deprecated and will be removed in future releases. Please use "
            f"'--trace-config {setting}=<{placeholder}>' instead."
        )
        if setting in given and setting != "level":
            config.warnings.append(
                f"Overriding deprecated '--{flag}' in favor of the value in --trace-config {setting}"
            )
        for value in flag_values:
            try:
                _apply(config, f"{setting}={value}", modes, f"--{flag}={value}")
            except ValueError as e:
                raise ValueError(f"--{flag}={value}: {e}") from None
    for text in values:
        _apply(config, text, modes, f"--trace-config {text}")
    if len(modes) > 1:
        raise ValueError(
            f"{modes['triton']} and {modes['opentelemetry']} select different trace modes (triton, "
            "opentelemetry): give the settings of one mode"
        )
    config.mode = next(iter(modes), "opentelemetry")
    if config.mode == "opentelemetry" and config.level and not available():
        raise ValueError(f"--trace-config level={','.join(config.level)}: {MISSING}")
    bsp = config.bsp
    if bsp.get("bsp_max_export_batch_size", 512) > bsp.get("bsp_max_queue_size", 2048):
        raise ValueError("--trace-config: bsp_max_export_batch_size must not exceed bsp_max_queue_size")
    return config


def _apply(config: TraceConfig, text: str, modes: dict[str, str], source: str) -> None:
    """One ``[<mode>,]<setting>=<value>``; ``modes`` notes which mode it selects, if one."""
    head, equals, value = text.partition("=")
    mode, _, setting = head.rpartition(",") if "," in head else ("", "", head)
    if not equals or not setting or not value:
        raise ValueError(f"--trace-config takes <setting>=<value> or <mode>,<setting>=<value>, got '{text}'")
    if mode == "triton":
        if setting == "file":
            config.file = value
        elif setting in ("log-frequency", "log_frequency"):
            config.log_frequency = _uint("triton,log-frequency", value)
        else:
            raise ValueError(f"--trace-config: the triton mode has no setting '{setting}' (it has file, log-frequency)")
    elif mode == "opentelemetry":
        if setting == "url":
            config.url = value
        elif setting == "resource":
            key, eq, attr = value.partition("=")
            if not eq or not key:
                raise ValueError(f"--trace-config opentelemetry,resource takes <key>=<value>, got '{value}'")
            config.resource[key] = attr
        elif setting in BSP_SETTINGS:
            config.bsp[setting] = _uint(setting, value)
        else:
            raise ValueError(
                f"--trace-config: the opentelemetry mode has no setting '{setting}' (it has url, resource, "
                f"{', '.join(BSP_SETTINGS)})"
            )
    elif mode:
        raise ValueError(f"--trace-config: unknown trace mode '{mode}' (triton or opentelemetry)")
    elif setting == "mode":
        mode = value.lower()
        if mode not in MODES:
            raise ValueError(f"--trace-config mode must be triton or opentelemetry, not '{value}'")
    elif setting == "level":
        config.level = _level(config.level, value)
    elif setting == "rate":
        config.rate = _uint("rate", value)
    elif setting == "count":
        config.count = _count(value)
    elif setting in ("file", "log-frequency", "log_frequency"):
        raise ValueError(f"--trace-config {text}: '{setting}' is a setting of the triton mode: triton,{setting}=...")
    else:
        raise ValueError(f"--trace-config: unknown setting '{setting}' (global ones: level, rate, count, mode)")
    if mode:
        modes.setdefault(mode, source)


# --- settings, global and per model -------------------------------------------------------------
class _Setting:
    """One setting object: the global one, or a model's. A model's fields not in ``own``
    follow the global ones. Sampling state (requests seen, traces left) lives here, and, in
    the triton mode, which of its traces are running and collected (trace_file.FileSetting)."""

    __slots__ = ("level", "rate", "count", "log_frequency", "own", "seen", "key", "inflight", "pending")
    _keys = itertools.count()

    def __init__(self, level: tuple[str, ...], rate: int, count: int, log_frequency: int) -> None:
        self.level = level
        self.rate = rate
        self.count = count
        self.log_frequency = log_frequency
        self.own: set[str] = set()
        self.seen = 0
        self.key = next(self._keys)
        self.inflight = 0
        self.pending = 0

    def sample(self) -> bool:
        if not self.level or self.rate == 0 or self.count == 0:
            return False
        self.seen += 1
        if self.seen < self.rate:
            return False
        self.seen = 0
        if self.count > 0:
            self.count -= 1
        return True


class Tracer:
    """The server's trace settings and, once a level is on, its OpenTelemetry tracer or its
    trace file's writer."""

    def __init__(self, config: TraceConfig | None = None, exporter: Any = None) -> None:
        self.config = c = config if config is not None else TraceConfig()
        self.triton = c.mode == "triton"
        self.global_setting = _Setting(c.level, c.rate, c.count, c.log_frequency)
        self.models: dict[str, _Setting] = {}
        # The one test every request makes: False while every level is OFF.
        self.active = False
        self._exporter = exporter  # tests and embedders: spans go there instead of OTLP
        self._sink: SdkSink | OtlpHttpSink | FileTracer | None = None
        for warning in c.warnings:
            log.warning("tracing: %s", warning)
        if self.triton and c.level and not c.file:
            log.warning("tracing: no request is traced: %s (--trace-config triton,file=<path>)", NO_FILE)
        self._refresh()

    def use_exporter(self, exporter: Any) -> None:
        """Send spans to ``exporter`` (e.g. the SDK's InMemorySpanExporter) as each ends,
        instead of the OTLP exporter; for tests and embedding, before any request is traced."""
        self.shutdown()
        self._exporter = exporter
        self._sink = None
        self._refresh()

    def _refresh(self) -> None:
        c = self.config
        levels = bool(self.global_setting.level) or any(s.level for s in self.models.values())
        self.active = levels and (bool(c.file) or not self.triton)  # Triton's "trace file name is not given"
        if self.active and self._sink is None:
            if self.triton:
                self._sink = FileTracer(c.file)
                every = f", every {c.log_frequency} traces to {c.file}.<k>" if c.log_frequency else ""
                log.info("tracing: Triton trace file %s%s", c.file, every)
                return
            resource = resource_attributes(c.resource)
            if self._exporter is not None:
                self._sink = SdkSink(self._exporter, resource)
            else:
                self._sink = OtlpHttpSink(c.url, resource, c.bsp)
                log.info("tracing: OpenTelemetry spans to %s (OTLP/HTTP)", c.url)

    # --- TraceSetting ---------------------------------------------------------------------------
    def settings(self, model: str = "") -> dict[str, list[str]]:
        """Triton's trace settings answer (every value a list of strings), in Triton's order."""
        s = self.models.get(model, self.global_setting) if model else self.global_setting
        c = self.config
        answer = {"trace_level": list(s.level) or ["OFF"], "trace_rate": [str(s.rate)], "trace_count": [str(s.count)]}
        if self.triton:
            answer["log_frequency"] = [str(s.log_frequency)]
            answer["trace_file"] = [c.file]
            answer["trace_mode"] = ["triton"]
            return answer
        answer["trace_mode"] = ["opentelemetry"]
        answer["url"] = [c.url]
        if c.resource:
            answer["resource"] = [f"{k}={v}" for k, v in c.resource.items()]
        for key in BSP_SETTINGS:
            if key in c.bsp:
                answer[key] = [str(c.bsp[key])]
        return answer

    def update(self, model: str, changes: Mapping[str, list[str] | None]) -> dict[str, list[str]]:
        """Apply a TraceSetting request: ``None`` clears a setting (a model's falls back to the
        global one); settings not named stay. Raises InvalidArgument / Unimplemented."""
        parsed: dict[str, Any] = {}
        known = tuple(ATTRIBUTES) if self.triton else ("trace_level", "trace_rate", "trace_count")
        for key, values in changes.items():
            if key == "trace_file":
                raise Unimplemented("trace file location can not be updated through network protocol")
            if key == "log_frequency" and not self.triton:
                raise Unimplemented(
                    "'log_frequency' is a setting of Triton's triton trace mode (JSON trace files); this server "
                    "traces in the opentelemetry mode (--trace-config triton,file=<path> selects the triton mode)"
                )
            if key not in known:
                raise InvalidArgument(f"unknown trace setting '{key}' ({', '.join(known)})")
            parsed[key] = None if values is None else _setting_value(key, values)
        if parsed.get("trace_level"):
            if self.triton and not self.config.file:
                raise InvalidArgument(f"Attempting to set invalid trace setting: {NO_FILE}")
            if not self.triton and self._sink is None and not available():
                raise Unimplemented(MISSING)
        if model and model not in self.models:
            g = self.global_setting
            self.models[model] = _Setting(g.level, g.rate, g.count, g.log_frequency)
        target = self.models[model] if model else self.global_setting
        if isinstance(self._sink, FileTracer):  # as when Triton replaces a setting: what it collected is written
            for s in [target] if model else [target, *self.models.values()]:
                self._sink.flush(s)
        for key, value in parsed.items():
            name = ATTRIBUTES[key]
            if value is None:
                target.own.discard(name)
                setattr(target, name, getattr(self.global_setting, name) if model else self._default(name))
            else:
                target.own.add(name)
                setattr(target, name, value)
            if name != "level":
                target.seen = 0
            if not model:  # models that never set this one follow the global value
                for m in self.models.values():
                    if name not in m.own:
                        setattr(m, name, getattr(target, name))
        self._refresh()
        return self.settings(model)

    def _default(self, name: str) -> Any:
        # log_frequency falls back to --trace-config's, as in Triton; the others to the defaults.
        return self.config.log_frequency if name == "log_frequency" else _DEFAULTS[name]

    # --- requests -------------------------------------------------------------------------------
    def start(
        self,
        model: str,
        version: str,
        request_id: str,
        traceparent: str | None,
        inputs: Mapping[str, Any],
        received: tuple[str, int, int] | None = None,
    ) -> AnyTrace | None:
        """A trace for this request, or None when it is not sampled."""
        setting = self.models.get(model, self.global_setting)
        sink = self._sink
        if sink is None or not setting.level:
            return None
        if isinstance(sink, FileTracer):  # a traceparent does not force a trace in this mode
            if not setting.sample():
                return None
            levels = setting.level
            return sink.start(
                setting, model, version, request_id, inputs, "TIMESTAMPS" in levels, "TENSORS" in levels, received
            )
        parent = parse_traceparent(traceparent) if traceparent else None
        if parent is None and not setting.sample():
            return None
        trace_id, parent_id = parent if parent is not None else (getrandbits(128) or 1, 0)
        attributes: dict[str, Any] = {"triton.model_name": model, "triton.request_id": request_id}
        offset = time.time_ns() - time.monotonic_ns()
        trace = RequestTrace(
            sink,
            Trace(trace_id, parent_id, []),
            parent_id,
            model,
            SERVER,
            offset,
            attributes,
            "TENSORS" in setting.level,
            True,
        )
        if trace.tensors:
            trace.tensor_events("TENSOR_QUEUE_INPUT", inputs)
        return trace

    def shutdown(self) -> None:
        """Flush and stop the exporter or the file writer (blocks: call off the event loop)."""
        if isinstance(self._sink, FileTracer):
            for s in [self.global_setting, *self.models.values()]:
                self._sink.flush(s)
        if self._sink is not None:
            self._sink.shutdown()


_DEFAULTS = {"level": (), "rate": DEFAULT_RATE, "count": -1}
ATTRIBUTES = {"trace_level": "level", "trace_rate": "rate", "trace_count": "count", "log_frequency": "log_frequency"}


def _setting_value(key: str, values: list[str]) -> Any:
    if key == "trace_level":
        levels: tuple[str, ...] = ()
        for v in values:
            if v.upper() == "OFF":
                if len(values) > 1:
                    raise InvalidArgument("Expect only one trace level 'OFF' is specified")
                continue
            if v.upper() not in LEVELS:
                raise InvalidArgument(f"trace_level must be OFF, TIMESTAMPS or TENSORS, not '{v}'")
            levels = levels if v.upper() in levels else (*levels, v.upper())
        return levels
    if len(values) != 1:
        raise InvalidArgument(f"'{key}' takes one value, got {len(values)}")
    text = values[0]
    try:
        number = int(text)
    except ValueError:
        raise InvalidArgument(f"Unable to parse '{key}', got: {text}") from None
    low, high = (-1, 2**31 - 1) if key == "trace_count" else (0, 2**32 - 1)
    if not low <= number <= high:
        raise InvalidArgument(f"Unable to parse '{key}', value is out of range [ {low}, {high} ], got: {text}")
    return number


# --- spans --------------------------------------------------------------------------------------
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def parse_traceparent(text: str) -> tuple[int, int] | None:
    """(trace id, parent span id) of a valid W3C traceparent whose caller sampled it, else None."""
    found = _TRACEPARENT.fullmatch(text.strip())
    if found is None:
        return None
    version, trace_id, span_id, flags = found.group(1, 2, 3, 4)
    if version == "ff" or (version == "00" and found.group(5)):
        return None
    t, s = int(trace_id, 16), int(span_id, 16)
    if not t or not s or not int(flags, 16) & 1:
        return None
    return t, s


class RequestTrace:
    """One traced request, or an ensemble step inside one: its span, kept as plain values
    until the request's root span ends and hands the whole trace to the sink."""

    __slots__ = (
        "sink",
        "trace",
        "span_id",
        "parent_id",
        "name",
        "kind",
        "start",
        "offset",
        "attributes",
        "events",
        "tensors",
        "composite",
        "root",
    )

    def __init__(
        self,
        sink: Any,
        trace: Trace,
        parent_id: int,
        name: str,
        kind: int,
        offset: int,
        attributes: dict[str, Any],
        tensors: bool,
        root: bool,
    ) -> None:
        self.sink = sink
        self.trace = trace
        self.span_id = getrandbits(64) | 1
        self.parent_id = parent_id
        self.name = name
        self.kind = kind
        self.offset = offset  # wall clock - monotonic clock, ns
        self.start = time.monotonic_ns()
        self.attributes = attributes
        self.events: list[tuple[str, int, Mapping[str, Any]]] = []
        self.tensors = tensors
        self.composite = False  # an ensemble: its steps are its children, not compute spans
        self.root = root

    def compute(self, enqueue_ns: int, started_ns: int, times: ExecutionTimes) -> None:
        """Queue and compute spans from the statistics' timestamps (monotonic ns): queued at
        ``enqueue_ns``, execution began at ``started_ns``, then the three compute phases.
        Plain tuples (trace_export.Span's fields), built inline: this runs for every request."""
        o, me, add = self.offset, self.span_id, self.trace.spans.append
        start = started_ns + o
        add((getrandbits(64) | 1, me, "queue", INTERNAL, enqueue_ns + o, start, NO_ATTRIBUTES, None, ()))
        if self.composite:
            return
        t1 = start + times.compute_input_ns
        t2 = t1 + times.compute_infer_ns
        add((getrandbits(64) | 1, me, "compute_input", INTERNAL, start, t1, NO_ATTRIBUTES, None, ()))
        add((getrandbits(64) | 1, me, "compute_infer", INTERNAL, t1, t2, NO_ATTRIBUTES, None, ()))
        add(
            (
                getrandbits(64) | 1,
                me,
                "compute_output",
                INTERNAL,
                t2,
                t2 + times.compute_output_ns,
                NO_ATTRIBUTES,
                None,
                (),
            )
        )

    def step(self, model: str, version: str, index: int, inputs: Mapping[str, Any] | None = None) -> RequestTrace:
        """A child trace for an ensemble step, started now (``inputs``: the step's, for TENSORS)."""
        attributes = {"triton.model_name": model, "inferd.ensemble_step": index}
        child = RequestTrace(
            self.sink, self.trace, self.span_id, model, INTERNAL, self.offset, attributes, self.tensors, False
        )
        if self.tensors and inputs is not None:
            child.tensor_events("TENSOR_QUEUE_INPUT", inputs)
        return child

    def tensor_events(self, activity: str, tensors: Mapping[str, Any]) -> None:
        from ..protocol.codec import of_array

        now = time.time_ns()
        for name, array in tensors.items():
            try:
                datatype = of_array(array).name
            except Exception:
                datatype = str(getattr(array, "dtype", "?"))
            shape = ",".join(str(d) for d in getattr(array, "shape", ()))
            self.events.append((activity, now, {"name": name, "datatype": datatype, "shape": shape}))

    def tensor_outputs(self, outputs: Mapping[str, Any]) -> None:
        if self.tensors:
            self.tensor_events("TENSOR_BACKEND_OUTPUT", outputs)

    def end(self, version: str = "", outputs: Mapping[str, Any] | None = None, error: str | None = None) -> None:
        if version.isdigit():
            self.attributes["triton.model_version"] = int(version)
        if outputs is not None:
            self.tensor_outputs(outputs)
        o = self.offset
        self.trace.spans.append(
            (
                self.span_id,
                self.parent_id,
                self.name,
                self.kind,
                self.start + o,
                time.monotonic_ns() + o,
                self.attributes,
                error,
                self.events,
            )
        )
        if self.root:
            self.sink.submit(self.trace)

    def sent(self, start_ns: int, end_ns: int) -> None:
        """The front end sent the answer: the span ended with the core's answer already."""


# A request's trace: spans (opentelemetry mode) or a trace file's records (triton mode).
AnyTrace = RequestTrace | FileTrace
