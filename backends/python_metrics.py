"""Custom metrics of Python models: Triton's ``pb_utils.MetricFamily`` and ``Metric``.

A model creates a family (``MetricFamily(name, description, kind)`` with kind COUNTER, GAUGE or
HISTOGRAM) and metrics in it (``family.Metric(labels={...}, buckets=[...])``), then
``increment``, ``set``, ``observe`` and reads ``value`` as Triton's Python backend offers.
Families live in the :class:`CustomMetrics` registry of the server that loaded the model (one per
server, injected at load, never global); the server's metrics endpoint reads it at scrape time.

As in Triton, the model owns the objects: a metric is reported while its ``Metric`` object is
alive, and a family while its ``MetricFamily`` object is, so an unloaded model's metrics go
with it. Creating a family whose name exists returns the same family when its description and
kind match (Triton's behaviour across instances) and fails otherwise; a metric created again
with the same labels is the same metric.
"""

from __future__ import annotations

import bisect
import re
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

# Server metrics' prefixes: a model's family may not take a name the server exposes itself.
RESERVED_PREFIXES = ("nv_", "inferd_", "process_", "python_")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class MetricError(Exception):
    """A misuse of the metrics API (the Python API turns it into a TritonError)."""


class CustomMetrics:
    """The families the Python models of one server created, read at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: weakref.WeakValueDictionary[str, MetricFamily] = weakref.WeakValueDictionary()

    def family(self, name: str, description: str, kind: str) -> MetricFamily:
        if not isinstance(name, str) or not _NAME.match(name):
            raise MetricError(f"Error when creating MetricFamily: '{name}' is not a valid metric name")
        if name.startswith(RESERVED_PREFIXES):
            raise MetricError(
                f"Error when creating MetricFamily: '{name}' starts with a prefix the server's own metrics "
                f"use ({', '.join(RESERVED_PREFIXES)})"
            )
        if kind not in MetricFamily.KINDS:
            raise MetricError("Error when creating MetricFamily: Unknown metric kind")
        with self._lock:
            existing = self._families.get(name)
            if existing is not None:
                if existing.kind != kind or existing.description != description:
                    raise MetricError(
                        f"Error when creating MetricFamily: a family named '{name}' exists with another "
                        "description or kind"
                    )
                return existing
            family = MetricFamily._make(self, name, description, kind)
            self._families[name] = family
            return family

    def families(self) -> list[MetricFamily]:
        with self._lock:
            return sorted(self._families.values(), key=lambda f: f.name)


class Metric:
    """One labelled series of a family: ``increment``, ``set``, ``observe``, ``value``."""

    def __init__(self, family: MetricFamily, labels: tuple[tuple[str, str], ...], buckets: list[float] | None) -> None:
        self.family = family
        self.labels = dict(labels)
        self.buckets = buckets
        self._lock = threading.Lock()
        self._value = 0.0
        self._counts = [0] * (len(buckets) + 1) if buckets is not None else []
        self._sum = 0.0

    def increment(self, value: float) -> None:
        kind = self.family.kind
        if kind == MetricFamily.HISTOGRAM:
            raise _triton_error(
                MetricError(
                    "Failed to increment metric value: TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Increment"
                )
            )
        if kind == MetricFamily.COUNTER and value < 0:
            raise _triton_error(
                MetricError(
                    "Failed to increment metric value: TRITONSERVER_METRIC_KIND_COUNTER can only be "
                    "incremented monotonically by non-negative values."
                )
            )
        with self._lock:
            self._value += value

    def set(self, value: float) -> None:
        kind = self.family.kind
        if kind != MetricFamily.GAUGE:
            raise _triton_error(
                MetricError(f"Failed to set metric value: TRITONSERVER_METRIC_KIND_{kind} does not support Set")
            )
        with self._lock:
            self._value = float(value)

    def observe(self, value: float) -> None:
        kind = self.family.kind
        if kind != MetricFamily.HISTOGRAM or self.buckets is None:
            raise _triton_error(
                MetricError(f"Failed to observe metric value: TRITONSERVER_METRIC_KIND_{kind} does not support Observe")
            )
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1  # buckets are "<= le"
            self._sum += value

    def value(self) -> float:
        if self.family.kind == MetricFamily.HISTOGRAM:
            raise _triton_error(
                MetricError("Failed to get metric value: TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Value")
            )
        with self._lock:
            return self._value

    def histogram(self) -> tuple[list[tuple[float, int]], int, float]:
        """Cumulative (upper bound, count) pairs (the last bound is +inf), the count and the sum."""
        assert self.buckets is not None
        with self._lock:
            counts, total = list(self._counts), self._sum
        out: list[tuple[float, int]] = []
        running = 0
        for le, n in zip([*self.buckets, float("inf")], counts):
            running += n
            out.append((le, running))
        return out, running, total


_Series = Metric  # the class, where MetricFamily's method of that name hides it


class MetricFamily:
    """``pb_utils.MetricFamily(name, description, kind)``."""

    COUNTER = "COUNTER"
    GAUGE = "GAUGE"
    HISTOGRAM = "HISTOGRAM"
    KINDS = (COUNTER, GAUGE, HISTOGRAM)

    name: str
    description: str
    kind: str

    def __new__(cls, name: str, description: str, kind: str) -> MetricFamily:
        from .python_api import _current_metrics  # the server that runs the calling model

        try:
            return _current_metrics().family(name, description, kind)
        except MetricError as e:
            raise _triton_error(e) from None

    def __init__(self, name: str, description: str, kind: str) -> None:
        pass  # made by _make (also when __new__ returns an existing family)

    @classmethod
    def _make(cls, registry: CustomMetrics, name: str, description: str, kind: str) -> MetricFamily:
        family = object.__new__(cls)
        family.name, family.description, family.kind = name, description, kind
        family._registry = registry
        family._lock = threading.Lock()
        family._metrics = weakref.WeakValueDictionary()
        return family

    _registry: CustomMetrics
    _lock: threading.Lock
    _metrics: weakref.WeakValueDictionary[tuple[tuple[str, str], ...], _Series]

    def Metric(self, labels: Mapping[str, str] | None = None, buckets: Sequence[float] | None = None) -> _Series:  # noqa: N802 (Triton's name)
        """A metric of this family with ``labels``; a HISTOGRAM needs ``buckets``, the others take none."""
        try:
            if labels is not None and not isinstance(labels, Mapping):
                raise MetricError("Failed to create metric. Labels must be a dictionary.")
            key = tuple(sorted((str(k), str(v)) for k, v in (labels or {}).items()))
            for k, _ in key:
                if not _LABEL.match(k) or k == "le":
                    raise MetricError(f"Failed to create metric. '{k}' is not a valid label name.")
            if buckets is not None:
                if not isinstance(buckets, (list, tuple)):
                    raise MetricError("Failed to create metric. Buckets must be a list.")
                if self.kind != self.HISTOGRAM:
                    raise MetricError("Failed to create metric. Unexpected buckets found.")
            elif self.kind == self.HISTOGRAM:
                raise MetricError("Failed to create metric. Missing required buckets.")
        except MetricError as e:
            raise _triton_error(e) from None
        with self._lock:
            existing = self._metrics.get(key)
            if existing is not None:
                return existing
            metric = _Series(self, key, sorted(float(b) for b in buckets) if buckets is not None else None)
            self._metrics[key] = metric
            return metric

    def metrics(self) -> list[_Series]:
        with self._lock:
            return list(self._metrics.values())


def samples(registry: CustomMetrics) -> Iterator[tuple[MetricFamily, list[Metric]]]:
    """Every family with its live metrics, for the server's collector."""
    for family in registry.families():
        yield family, family.metrics()


def _triton_error(e: MetricError) -> Any:
    from .python_api import TritonError

    return TritonError(str(e))
