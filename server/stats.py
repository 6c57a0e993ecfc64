"""Per-model-version statistics with Triton's semantics.

Request-level durations (queue, compute input/infer/output) are added per request; a request
that ran inside a batch is charged the whole batch's compute time, as Triton does. Batch-level
figures (``batch_stats``, ``execution_count``) are added once per execution.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..protocol.errors import ModelLoadError
from ..protocol.model_spec import ModelMetrics


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ResponseStats:
    """Triton's per-response statistics of decoupled models (``response_stats``, keyed by the
    response's index in its request): the time to produce it (``compute_infer``; inferd does
    not time the output copy apart, so ``compute_output`` stays zero), whether it was a
    response (``success``), an error response (``fail``) or the final flag alone
    (``empty_response``), and requests cancelled before it (``cancel``)."""

    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    empty_response: Duration = field(default_factory=Duration)
    cancel: Duration = field(default_factory=Duration)


# Triton's time from a decoupled model's request to its first response, and its default
# buckets in milliseconds.
FIRST_RESPONSE_HISTOGRAM = "nv_inference_first_response_histogram_ms"
FIRST_RESPONSE_BUCKETS_MS = (100.0, 500.0, 2000.0, 5000.0)
# inferd's latency histograms, in seconds (metrics.py observes them for successful requests).
LATENCY_HISTOGRAMS = (
    "inferd_request_duration_seconds",
    "inferd_queue_duration_seconds",
    "inferd_compute_infer_duration_seconds",
)
# The families a model may give bucket boundaries of its own (model_metrics.metric_control).
CUSTOMIZABLE_HISTOGRAMS = (FIRST_RESPONSE_HISTOGRAM, *LATENCY_HISTOGRAMS)
_CONTROL = "model_metrics.metric_control"


def histogram_buckets(metrics: ModelMetrics, source: str) -> tuple[dict[str, tuple[float, ...]], tuple[str, ...]]:
    """A model's ``model_metrics.metric_control``: the bucket boundaries it sets per histogram
    family, and a warning for each family that is not customizable (Triton logs those and
    loads the model). A control without ``histogram_options`` leaves only the ``+Inf`` bucket,
    as in Triton; the last control of a family wins. Boundaries that are not finite and
    strictly ascending are refused (Prometheus' histograms need them so)."""
    buckets: dict[str, tuple[float, ...]] = {}
    warnings: list[str] = []
    for control in metrics.metric_control:
        family = control.metric_identifier.family
        if family not in CUSTOMIZABLE_HISTOGRAMS:
            warnings.append(
                f"{_CONTROL}: metric family '{family}' is not a customizable histogram "
                f"(these are {', '.join(CUSTOMIZABLE_HISTOGRAMS)}); its options have no effect"
            )
            continue
        bounds = control.histogram_options.buckets if control.histogram_options is not None else ()
        if not all(math.isfinite(b) for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ModelLoadError(
                f"{source}: {_CONTROL}: the buckets of '{family}' must be finite numbers in strictly "
                f"ascending order, got {list(bounds)}"
            )
        buckets[family] = bounds
    return buckets, tuple(warnings)


@dataclass(slots=True)
class ExecutionTimes:
    """What one execution of a (possibly merged) batch cost, in nanoseconds."""

    batch_size: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int


# Observers see every finished request: (stats, ok, reason, request_ns, queue_ns, times | None).
Observer = Callable[["ModelStats", bool, str, int, int, "ExecutionTimes | None"], None]


class ModelStats:
    def __init__(
        self,
        name: str,
        version: str,
        observers: list[Observer] | None = None,
        histogram_buckets: Mapping[str, tuple[float, ...]] | None = None,
    ) -> None:
        """``histogram_buckets``: the model's own bucket boundaries per histogram family
        (histogram_buckets(), from its config); the others keep their defaults."""
        self.name = name
        self.version = version
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        # Response cache (server/cache.py): hits with their lookup time, misses with their
        # lookup + insertion time; both zero for models without the cache, as in Triton.
        self.cache_hit = Duration()
        self.cache_miss = Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batch_stats: dict[int, BatchStats] = {}
        self.pending = 0  # requests accepted and not yet answered
        self.histogram_buckets: Mapping[str, tuple[float, ...]] = dict(histogram_buckets or {})
        # Decoupled models only: per-response statistics, and the time from each request's
        # arrival to its first response (bucket counts over first_response_bounds, the last
        # one +Inf, and their sum in ms).
        self.response_stats: dict[int, ResponseStats] = {}
        self.first_response_bounds = self.histogram_buckets.get(FIRST_RESPONSE_HISTOGRAM, FIRST_RESPONSE_BUCKETS_MS)
        self.first_response_counts = [0] * (len(self.first_response_bounds) + 1)
        self.first_response_sum_ms = 0.0
        self._observers = observers if observers is not None else []

    # Every request's path: the counters are added in place (no Duration.add calls).
    def record_execution(self, times: ExecutionTimes, inferences: int | None = None) -> None:
        """One execution; ``inferences`` counts the rows that were requests when some were not
        (a sequence batch's slots without a request count in batch_stats, as in Triton, but
        are no inference)."""
        self.execution_count += 1
        self.inference_count += times.batch_size if inferences is None else inferences
        self.last_inference_ms = time.time_ns() // 1_000_000
        b = self.batch_stats.get(times.batch_size)
        if b is None:
            b = self.batch_stats[times.batch_size] = BatchStats()
        d = b.compute_input
        d.count += 1
        d.ns += times.compute_input_ns
        d = b.compute_infer
        d.count += 1
        d.ns += times.compute_infer_ns
        d = b.compute_output
        d.count += 1
        d.ns += times.compute_output_ns

    def record_success(self, request_ns: int, queue_ns: int, times: ExecutionTimes) -> None:
        d = self.success
        d.count += 1
        d.ns += request_ns
        d = self.queue
        d.count += 1
        d.ns += queue_ns
        d = self.compute_input
        d.count += 1
        d.ns += times.compute_input_ns
        d = self.compute_infer
        d.count += 1
        d.ns += times.compute_infer_ns
        d = self.compute_output
        d.count += 1
        d.ns += times.compute_output_ns
        for observe in self._observers:
            observe(self, True, "", request_ns, queue_ns, times)

    def record_cache_hit(self, request_ns: int, queue_ns: int, hit_ns: int) -> None:
        """A request answered from the response cache: a success (with its queue time, before
        the lookup) but, as in Triton, neither an inference nor an execution, and no compute."""
        self.success.add(request_ns)
        self.queue.add(queue_ns)
        self.cache_hit.add(hit_ns)
        for observe in self._observers:
            observe(self, True, "", request_ns, queue_ns, None)

    def record_cache_miss(self, miss_ns: int) -> None:
        """A request that missed, ran (already recorded as a success) and was stored: Triton
        adds the lookup and insertion time to the request's duration too."""
        self.success.ns += miss_ns
        self.cache_miss.add(miss_ns)

    def _response(self, index: int) -> ResponseStats:
        r = self.response_stats.get(index)
        if r is None:
            r = self.response_stats[index] = ResponseStats()
        return r

    def record_response(self, index: int, ns: int, ok: bool) -> None:
        """A decoupled model's response ``index`` of its request, ``ns`` after the one before
        it (after the request's arrival for the first)."""
        r = self.response_stats.get(index) or self._response(index)
        # Inlined Duration.add: this runs once per streamed token.
        d = r.compute_infer
        d.count += 1
        d.ns += ns
        r.compute_output.count += 1
        d = r.success if ok else r.fail
        d.count += 1
        d.ns += ns
        if index == 0:
            ms = ns / 1e6
            self.first_response_counts[bisect.bisect_left(self.first_response_bounds, ms)] += 1
            self.first_response_sum_ms += ms

    def record_empty_response(self, index: int, ns: int) -> None:
        """The final flag sent alone, as the request's ``index``-th item."""
        self._response(index).empty_response.add(ns)

    def record_cancelled_response(self, index: int, ns: int) -> None:
        """A request cancelled (or abandoned by its client) before its ``index``-th response."""
        self._response(index).cancel.add(ns)

    def record_failure(self, request_ns: int, reason: str = "OTHER") -> None:
        """``reason`` follows Triton's metric label: REJECTED, CANCELED, BACKEND or OTHER."""
        self.fail.add(request_ns)
        for observe in self._observers:
            observe(self, False, reason, request_ns, 0, None)
