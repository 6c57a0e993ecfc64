"""Prometheus metrics with Triton's names, served at /metrics on their own port.

Counters are read from each loaded version's :class:`ModelStats` when Prometheus scrapes (no
second bookkeeping). What ModelStats does not keep, the failure reasons and the latency
histograms, comes from a ModelStats observer. With a response cache, its per-model counters
(for the versions using it) and its server-wide gauges are read the same way. Everything is registered on a registry the owner
injects; nothing is global, so any number of servers can live in one process (tests do).

Triton's counter names have no ``_total`` suffix, and prometheus_client's text writer appends
one to every family typed "counter"; to keep the names existing dashboards query, those
families are exposed untyped (PromQL's rate() and increase() work on them all the same).
"""

from __future__ import annotations

import bisect
import itertools
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..backends.python_metrics import CustomMetrics, samples
from .cache import ResponseCache
from .manager import ModelManager
from .stats import FIRST_RESPONSE_BUCKETS_MS, ExecutionTimes, ModelStats

FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
# Seconds; from 100 µs (a small CPU model) to a minute (a large generative one).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

# name -> (help, the ModelStats figure); durations are Triton's cumulative microseconds.
_COUNTERS: dict[str, tuple[str, Callable[[ModelStats], int]]] = {
    "nv_inference_request_success": (
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    "nv_inference_count": ("Number of inferences performed (a batch of n counts n)", lambda s: s.inference_count),
    "nv_inference_exec_count": (
        "Number of model executions performed (a batch counts once)",
        lambda s: s.execution_count,
    ),
    "nv_inference_request_duration_us": (
        "Cumulative inference request duration in microseconds",
        lambda s: s.success.ns // 1000,
    ),
    "nv_inference_queue_duration_us": (
        "Cumulative inference queuing duration in microseconds",
        lambda s: s.queue.ns // 1000,
    ),
    "nv_inference_compute_input_duration_us": (
        "Cumulative compute input duration in microseconds",
        lambda s: s.compute_input.ns // 1000,
    ),
    "nv_inference_compute_infer_duration_us": (
        "Cumulative compute inference duration in microseconds",
        lambda s: s.compute_infer.ns // 1000,
    ),
    "nv_inference_compute_output_duration_us": (
        "Cumulative compute output duration in microseconds",
        lambda s: s.compute_output.ns // 1000,
    ),
}
# Triton's per-model response cache counters, for versions that use the cache (as Triton
# registers them only for models with the cache enabled); durations in cumulative µs.
_CACHE_COUNTERS: dict[str, tuple[str, Callable[[ModelStats], int]]] = {
    "nv_cache_num_hits_per_model": ("Number of cache hits per model", lambda s: s.cache_hit.count),
    "nv_cache_num_misses_per_model": ("Number of cache misses per model", lambda s: s.cache_miss.count),
    "nv_cache_hit_duration_per_model": (
        "Total cache hit duration per model, in microseconds",
        lambda s: s.cache_hit.ns // 1000,
    ),
    "nv_cache_miss_duration_per_model": (
        "Total cache miss (insert+lookup) duration per model, in microseconds",
        lambda s: s.cache_miss.ns // 1000,
    ),
}
# The server-wide figures Triton's local cache publishes, all gauges as there (no labels).
_CACHE_GAUGES: dict[str, tuple[str, Callable[[ResponseCache], float]]] = {
    "nv_cache_util": ("Cache utilization [0.0 - 1.0]", lambda c: c.utilization),
    "nv_cache_num_entries": ("Number of responses stored in response cache", len),
    "nv_cache_num_lookups": ("Number of cache lookups in response cache", lambda c: c.lookups),
    "nv_cache_num_hits": ("Number of cache hits in response cache", lambda c: c.hits),
    "nv_cache_num_misses": ("Number of cache misses in response cache", lambda c: c.misses),
    "nv_cache_num_evictions": ("Number of cache evictions in response cache", lambda c: c.evictions),
    "nv_cache_lookup_duration": (
        "Total cache lookup duration (hit and miss), in microseconds",
        lambda c: c.lookup_ns // 1000,
    ),
    "nv_cache_insertion_duration": (
        "Total cache insertion duration, in microseconds",
        lambda c: c.insert_ns // 1000,
    ),
}
# name -> help; observed per successful request, in seconds.
_HISTOGRAMS = {
    "inferd_request_duration_seconds": "Duration of successful inference requests inside the server",
    "inferd_queue_duration_seconds": "Time successful inference requests waited in the queue",
    "inferd_compute_infer_duration_seconds": "Model execution time of successful inference requests",
}


class Histogram:
    """Bucket counts (not cumulative) and the sum of the observed values."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # buckets are "<= le"
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for le, n in zip([*map(str, self.bounds), "+Inf"], self.counts):
            running += n
            out.append((le, running))
        return out


@dataclass(slots=True)
class _VersionSeries:
    failures: dict[str, int]
    histograms: dict[str, Histogram] = field(default_factory=dict)


class RequestObserver:
    """The ModelStats observer: failure reasons and latency histograms per model version.

    Keyed weakly by the ModelStats object, so a version's series go away with the version."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self._series: weakref.WeakKeyDictionary[ModelStats, _VersionSeries] = weakref.WeakKeyDictionary()

    def series(self, stats: ModelStats) -> _VersionSeries:
        s = self._series.get(stats)
        if s is None:
            s = _VersionSeries(
                dict.fromkeys(FAILURE_REASONS, 0), {name: Histogram(self.buckets) for name in _HISTOGRAMS}
            )
            self._series[stats] = s
        return s

    def __call__(
        self, stats: ModelStats, ok: bool, reason: str, request_ns: int, queue_ns: int, times: ExecutionTimes | None
    ) -> None:
        s = self.series(stats)
        if not ok:
            key = reason if reason in s.failures else "OTHER"
            s.failures[key] += 1
            return
        h = s.histograms
        h["inferd_request_duration_seconds"].observe(request_ns / 1e9)
        h["inferd_queue_duration_seconds"].observe(queue_ns / 1e9)
        if times is not None:
            h["inferd_compute_infer_duration_seconds"].observe(times.compute_infer_ns / 1e9)


class ModelCollector(Collector):
    """Triton's per-model metrics, read at scrape time from the loaded versions."""

    def __init__(self, manager: ModelManager, observer: RequestObserver) -> None:
        self.manager = manager
        self.observer = observer

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        counters = {name: Metric(name, doc, "unknown") for name, (doc, _) in _COUNTERS.items()}
        failure = Metric(
            "nv_inference_request_failure", "Number of failed inference requests, all batch sizes", "unknown"
        )
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution",
            labels=labels,
        )
        load = GaugeMetricFamily("nv_model_load_duration_secs", "Model load time in seconds", labels=labels)
        histograms = {name: HistogramMetricFamily(name, doc, labels=labels) for name, doc in _HISTOGRAMS.items()}
        cached = {name: Metric(name, doc, "unknown") for name, (doc, _) in _CACHE_COUNTERS.items()}
        first = HistogramMetricFamily(
            "nv_inference_first_response_histogram_ms",
            "Duration from request to first response in milliseconds",
            labels=labels,
        )
        for name, record in list(self.manager.models.items()):
            for model in self.manager.loaded_versions(name):
                stats, version = model.stats, str(model.version)
                if model.decoupled:  # Triton's time to first response, for decoupled models
                    bounds = [f"{b:g}" for b in FIRST_RESPONSE_BUCKETS_MS] + ["+Inf"]
                    counts = list(itertools.accumulate(stats.first_response_counts))
                    first.add_metric([name, version], list(zip(bounds, counts)), stats.first_response_sum_ms)
                ids = {"model": name, "version": version}
                for metric_name, (_, read) in _COUNTERS.items():
                    counters[metric_name].add_sample(metric_name, ids, read(stats))
                if model.cache is not None:
                    for metric_name, (_, read) in _CACHE_COUNTERS.items():
                        cached[metric_name].add_sample(metric_name, ids, read(stats))
                series = self.observer.series(stats)
                for reason, count in series.failures.items():
                    failure.add_sample(failure.name, {**ids, "reason": reason}, count)
                pending.add_metric([name, version], stats.pending)
                load.add_metric([name, version], record.load_seconds)
                for metric_name, h in series.histograms.items():
                    histograms[metric_name].add_metric([name, version], h.buckets(), h.total)
        yield from counters.values()
        yield failure
        yield pending
        yield load
        yield from histograms.values()
        if first.samples:
            yield first
        yield from (family for family in cached.values() if family.samples)
        cache = self.manager.response_cache
        if cache is not None:
            for metric_name, (doc, figure) in _CACHE_GAUGES.items():
                yield GaugeMetricFamily(metric_name, doc, value=figure(cache))


class CustomMetricsCollector(Collector):
    """Python models' own metrics (``pb_utils.MetricFamily``), read at scrape time. Counters
    are exposed untyped, as the server's own, so their names stay as the model gave them."""

    def __init__(self, metrics: CustomMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for family, series in samples(self.metrics):
            kind = {"COUNTER": "unknown", "GAUGE": "gauge", "HISTOGRAM": "histogram"}[family.kind]
            out = Metric(family.name, family.description, kind)
            for m in series:
                if family.kind != "HISTOGRAM":
                    out.add_sample(family.name, m.labels, m.value())
                    continue
                buckets, count, total = m.histogram()
                for le, n in buckets:
                    out.add_sample(family.name + "_bucket", {**m.labels, "le": f"{le:g}".replace("inf", "+Inf")}, n)
                out.add_sample(family.name + "_count", m.labels, count)
                out.add_sample(family.name + "_sum", m.labels, total)
            yield out


def register_metrics(registry: CollectorRegistry, manager: ModelManager, observer: RequestObserver) -> None:
    """Register the model metrics, Python models' custom metrics and the process CPU/memory
    metrics on ``registry``."""
    registry.register(ModelCollector(manager, observer))
    registry.register(CustomMetricsCollector(manager.custom_metrics))
    ProcessCollector(registry=registry)


def build_metrics_app(registry: CollectorRegistry) -> Starlette:
    """The /metrics endpoint in Prometheus' text format."""

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])
