"""Prometheus metrics with Triton's names, served at /metrics on their own port.

Counters are read from each loaded version's :class:`ModelStats` when Prometheus scrapes (no
second bookkeeping). What ModelStats does not keep, the failure reasons and the latency
histograms, comes from a ModelStats observer. With a response cache, its per-model counters
(for the versions using it) and its server-wide gauges are read the same way. Everything is registered on a registry the owner
injects; nothing is global, so any number of servers can live in one process (tests do).

Triton's counters are typed ``counter`` and have no ``_total`` suffix (``# TYPE
nv_inference_count counter`` then ``nv_inference_count{...}``), which prometheus_client's text
writer cannot produce (it appends ``_total`` to every counter's name): families built as
:class:`Counter` are written by :func:`exposition`, this module's own text writer, under the name
their samples carry, as Triton's (prometheus-cpp) writer does. Everything else is written as
prometheus_client writes it.

With ``--metrics-config summary_latencies=true`` the observer also keeps Triton's latency
summaries (``nv_inference_*_summary_us``, quantiles over a sliding 60 s window); the CPU
collector reads ``/proc`` for Triton's ``nv_cpu_*`` gauges. A model's ``metric_tags`` become
labels named ``_<key>`` on its metrics, as in Triton.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..backends.python_metrics import CustomMetrics, samples
from .cache import ResponseCache
from .manager import ModelManager
from .metrics_config import MetricsOptions
from .model import ModelVersion
from .stats import FIRST_RESPONSE_HISTOGRAM, LATENCY_HISTOGRAMS, ExecutionTimes, ModelStats

# The text format this module writes (Prometheus' 0.0.4, which Triton serves).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

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
# The latency counters (--metrics-config counter_latencies=false leaves them out, as in Triton).
_LATENCY_COUNTERS = frozenset(name for name in _COUNTERS if name.endswith("_duration_us"))
# name -> help; observed per successful request, in seconds.
_HISTOGRAMS = dict(
    zip(
        LATENCY_HISTOGRAMS,
        (
            "Duration of successful inference requests inside the server",
            "Time successful inference requests waited in the queue",
            "Model execution time of successful inference requests",
        ),
        strict=True,
    )
)
# Triton's latency summaries (--metrics-config summary_latencies=true): name -> help, in µs.
_SUMMARIES = {
    "nv_inference_request_summary_us": "Summary of inference request duration in microseconds (includes cached requests)",
    "nv_inference_queue_summary_us": "Summary of inference queuing duration in microseconds (includes cached requests)",
    "nv_inference_compute_input_summary_us": "Summary of compute input duration in microseconds (does not include cached requests)",
    "nv_inference_compute_infer_summary_us": "Summary of compute inference duration in microseconds (does not include cached requests)",
    "nv_inference_compute_output_summary_us": "Summary of compute output duration in microseconds (does not include cached requests)",
}
SUMMARY_MAX_AGE_S = 60.0  # prometheus-cpp's sliding window, which Triton's summaries use
SUMMARY_AGE_BUCKETS = 5
SUMMARY_KEEP = 4096  # observations kept per age bucket; more are sampled uniformly


class Counter(Metric):
    """A counter family written under its own name, without prometheus_client's ``_total``
    (Triton's counters, and Python models' counters as Triton's Python backend names them)."""

    def __init__(self, name: str, documentation: str) -> None:
        super().__init__(name, documentation, "counter")


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


class _Slice:
    __slots__ = ("start", "seen", "values")

    def __init__(self, start: float) -> None:
        self.start = start
        self.seen = 0
        self.values: list[float] = []


class SlidingSummary:
    """Quantiles of the observations of the last ``max_age`` seconds, kept in ``age_buckets``
    slices that expire in turn (prometheus-cpp's time window, which Triton's summaries use), and
    the count and sum of every observation. A slice keeps up to ``keep`` observations, a uniform
    sample beyond that, each standing for its share of the slice's count; the quantiles are then
    exact over what is kept (Triton's error targets are met whenever nothing had to be sampled)."""

    __slots__ = ("max_age", "width", "keep", "slices", "count", "total", "_random")

    def __init__(
        self, max_age: float = SUMMARY_MAX_AGE_S, age_buckets: int = SUMMARY_AGE_BUCKETS, keep: int = SUMMARY_KEEP
    ) -> None:
        self.max_age = max_age
        self.width = max_age / age_buckets
        self.keep = keep
        self.slices: deque[_Slice] = deque()
        self.count = 0
        self.total = 0.0
        self._random = random.Random(0)

    def observe(self, value: float, now: float) -> None:
        self.count += 1
        self.total += value
        if not self.slices or now - self.slices[-1].start >= self.width:
            self.slices.append(_Slice(now))
        current = self.slices[-1]
        current.seen += 1
        if len(current.values) < self.keep:
            current.values.append(value)
        else:
            j = self._random.randrange(current.seen)
            if j < self.keep:
                current.values[j] = value

    def quantiles(self, qs: Sequence[float], now: float) -> list[float]:
        """Each quantile of the window's observations (NaN when there were none, as in Triton)."""
        while self.slices and now - self.slices[0].start >= self.max_age:
            self.slices.popleft()
        weighted = sorted((v, s.seen / len(s.values)) for s in self.slices for v in s.values)
        if not weighted:
            return [float("nan")] * len(qs)
        whole = sum(w for _, w in weighted)
        out = []
        for q in qs:
            target, running = q * whole, 0.0
            chosen = weighted[-1][0]
            for value, weight in weighted:
                running += weight
                if running >= target:
                    chosen = value
                    break
            out.append(chosen)
        return out


@dataclass(slots=True)
class _VersionSeries:
    failures: dict[str, int]
    histograms: dict[str, Histogram] = field(default_factory=dict)
    summaries: dict[str, SlidingSummary] = field(default_factory=dict)


class RequestObserver:
    """The ModelStats observer: failure reasons, latency histograms and (with ``summaries``)
    Triton's latency summaries per model version.

    Keyed weakly by the ModelStats object, so a version's series go away with the version."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS, summaries: bool = False) -> None:
        self.buckets = tuple(buckets)
        self.summaries = summaries
        self._series: weakref.WeakKeyDictionary[ModelStats, _VersionSeries] = weakref.WeakKeyDictionary()

    def series(self, stats: ModelStats) -> _VersionSeries:
        s = self._series.get(stats)
        if s is None:
            s = _VersionSeries(
                dict.fromkeys(FAILURE_REASONS, 0),
                {name: Histogram(stats.histogram_buckets.get(name, self.buckets)) for name in _HISTOGRAMS},
                {name: SlidingSummary() for name in _SUMMARIES} if self.summaries else {},
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
        if s.summaries:
            now = time.monotonic()
            u = s.summaries
            # Whole microseconds, as Triton's counters and summaries count them.
            u["nv_inference_request_summary_us"].observe(request_ns // 1000, now)
            u["nv_inference_queue_summary_us"].observe(queue_ns // 1000, now)
            if times is not None:  # a cache hit computes nothing
                u["nv_inference_compute_input_summary_us"].observe(times.compute_input_ns // 1000, now)
                u["nv_inference_compute_infer_summary_us"].observe(times.compute_infer_ns // 1000, now)
                u["nv_inference_compute_output_summary_us"].observe(times.compute_output_ns // 1000, now)


def model_labels(model: ModelVersion) -> dict[str, str]:
    """A version's labels: model, version and, as in Triton, ``_<key>`` for each of its
    config's ``metric_tags`` (keys are checked at load: config.check_metric_tags)."""
    labels = {"model": model.name, "version": str(model.version)}
    for key, value in model.config.metric_tags.items():
        labels[f"_{key}"] = value
    return labels


def _add_histogram(
    family: Metric, labels: Mapping[str, str], buckets: Sequence[tuple[str, float]], total: float
) -> None:
    for le, n in buckets:
        family.add_sample(family.name + "_bucket", {**labels, "le": le}, n)
    family.add_sample(family.name + "_count", dict(labels), buckets[-1][1] if buckets else 0)
    family.add_sample(family.name + "_sum", dict(labels), total)


class ModelCollector(Collector):
    """Triton's per-model metrics, read at scrape time from the loaded versions."""

    def __init__(self, manager: ModelManager, observer: RequestObserver, options: MetricsOptions | None = None) -> None:
        self.manager = manager
        self.observer = observer
        self.options = options if options is not None else MetricsOptions()

    def collect(self) -> Iterator[Metric]:
        opts = self.options
        counters = {
            name: Counter(name, doc)
            for name, (doc, _) in _COUNTERS.items()
            if opts.counter_latencies or name not in _LATENCY_COUNTERS
        }
        failure = Counter("nv_inference_request_failure", "Number of failed inference requests, all batch sizes")
        pending = Metric(
            "nv_inference_pending_request_count", "Instantaneous number of pending requests awaiting execution", "gauge"
        )
        load = Metric("nv_model_load_duration_secs", "Model load time in seconds", "gauge")
        histograms = {name: Metric(name, doc, "histogram") for name, doc in _HISTOGRAMS.items()}
        summaries = {name: Metric(name, doc, "summary") for name, doc in _SUMMARIES.items()}
        cached = {name: Counter(name, doc) for name, (doc, _) in _CACHE_COUNTERS.items()}
        first = Metric(
            FIRST_RESPONSE_HISTOGRAM,
            "Duration from request to first response in milliseconds",
            "histogram",
        )
        now = time.monotonic()
        for name, record in list(self.manager.models.items()):
            for model in self.manager.loaded_versions(name):
                stats = model.stats
                ids = model_labels(model)
                if model.decoupled and opts.histogram_latencies:  # Triton's time to first response
                    bounds = [f"{b:g}" for b in stats.first_response_bounds] + ["+Inf"]
                    counts = list(itertools.accumulate(stats.first_response_counts))
                    _add_histogram(first, ids, list(zip(bounds, counts)), stats.first_response_sum_ms)
                for metric_name, family in counters.items():
                    family.add_sample(metric_name, ids, _COUNTERS[metric_name][1](stats))
                if model.cache is not None:
                    for metric_name, (_, read) in _CACHE_COUNTERS.items():
                        cached[metric_name].add_sample(metric_name, ids, read(stats))
                series = self.observer.series(stats)
                for reason, count in series.failures.items():
                    failure.add_sample(failure.name, {**ids, "reason": reason}, count)
                pending.add_sample(pending.name, ids, stats.pending)
                load.add_sample(load.name, ids, record.load_seconds)
                for metric_name, h in series.histograms.items():
                    _add_histogram(histograms[metric_name], ids, h.buckets(), h.total)
                for metric_name, summary in series.summaries.items():
                    # As in Triton: no request summary for a model using the response cache.
                    if model.cache is not None and metric_name == "nv_inference_request_summary_us":
                        continue
                    out = summaries[metric_name]
                    qs = [q for q, _ in opts.summary_quantiles]
                    for q, value in zip(qs, summary.quantiles(qs, now)):
                        out.add_sample(metric_name, {**ids, "quantile": floatToGoString(q)}, value)
                    out.add_sample(metric_name + "_count", ids, summary.count)
                    out.add_sample(metric_name + "_sum", ids, summary.total)
        yield from counters.values()
        yield failure
        yield pending
        yield load
        yield from histograms.values()
        if self.observer.summaries:
            yield from summaries.values()
        if first.samples:
            yield first
        yield from (family for family in cached.values() if family.samples)
        cache = self.manager.response_cache
        if cache is not None:
            for metric_name, (doc, figure) in _CACHE_GAUGES.items():
                yield GaugeMetricFamily(metric_name, doc, value=figure(cache))


class CustomMetricsCollector(Collector):
    """Python models' own metrics (``pb_utils.MetricFamily``), read at scrape time; counters
    keep the name the model gave them, as in Triton."""

    def __init__(self, metrics: CustomMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for family, series in samples(self.metrics):
            out: Metric
            if family.kind == "COUNTER":
                out = Counter(family.name, family.description)
            else:
                out = Metric(family.name, family.description, family.kind.lower())
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


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest is in user)
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


def _memory() -> tuple[int, int] | None:
    """(total, used) bytes of RAM: MemTotal and MemTotal - MemAvailable, as Triton reports them."""
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    if len(values) != 2:
        return None
    return values["MemTotal"], values["MemTotal"] - values["MemAvailable"]


class CpuCollector(Collector):
    """Triton's CPU metrics (Linux): utilization of all cores over the last interval
    (``--metrics-interval-ms``; a scrape within it reads the last figure) and system memory."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = _cpu_times()
        self._last_at = time.monotonic()
        self._utilization = 0.0

    def _sample(self) -> float:
        now = time.monotonic()
        if now - self._last_at >= self.interval_s:
            current = _cpu_times()
            if current is not None and self._last is not None and current[1] > self._last[1]:
                busy, total = current[0] - self._last[0], current[1] - self._last[1]
                self._utilization = min(1.0, max(0.0, busy / total))
            self._last, self._last_at = current, now
        return self._utilization

    def collect(self) -> Iterator[Metric]:
        if self._last is not None:
            yield GaugeMetricFamily("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", value=self._sample())
        memory = _memory()
        if memory is not None:
            yield GaugeMetricFamily("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", value=memory[0])
            yield GaugeMetricFamily("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", value=memory[1])


def register_metrics(
    registry: CollectorRegistry, manager: ModelManager, observer: RequestObserver, options: MetricsOptions | None = None
) -> None:
    """Register the model metrics, Python models' custom metrics, Triton's CPU metrics (unless
    ``options.cpu`` is off) and the process CPU/memory metrics on ``registry``."""
    options = options if options is not None else MetricsOptions()
    registry.register(ModelCollector(manager, observer, options))
    registry.register(CustomMetricsCollector(manager.custom_metrics))
    if options.cpu:
        registry.register(CpuCollector(options.interval_ms / 1000))
    ProcessCollector(registry=registry)


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


_TYPES = {"unknown": "untyped", "info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram"}


def exposition(registry: CollectorRegistry) -> bytes:
    """Every family of ``registry`` in Prometheus' text format (0.0.4), labels sorted as
    prometheus_client sorts them. A :class:`Counter` is written under its samples' name, as
    Triton's are; prometheus_client's own counters (``process_cpu_seconds``) with ``_total``."""
    out: list[str] = []
    for metric in registry.collect():
        name = metric.name
        kind = _TYPES.get(metric.type, metric.type)
        if metric.type == "counter" and not isinstance(metric, Counter):
            name += "_total"
        elif metric.type == "info":
            name += "_info"
        out.append(f"# HELP {name} {_escape_help(metric.documentation)}\n# TYPE {name} {kind}\n")
        for s in metric.samples:
            if s.name.endswith(("_created", "_gsum", "_gcount")) and s.name != metric.name:
                continue  # OpenMetrics-only samples
            labels = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(s.labels.items()))
            out.append(
                f"{s.name}{{{labels}}} {floatToGoString(s.value)}\n"
                if labels
                else f"{s.name} {floatToGoString(s.value)}\n"
            )
    return "".join(out).encode("utf-8")


def build_metrics_app(registry: CollectorRegistry) -> Starlette:
    """The /metrics endpoint in Prometheus' text format."""

    async def metrics(request: Request) -> Response:
        return Response(exposition(registry), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])
