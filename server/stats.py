"""Per-model-version statistics with Triton's semantics.

Request-level durations (queue, compute input/infer/output) are added per request; a request
that ran inside a batch is charged the whole batch's compute time, as Triton does. Batch-level
figures (``batch_stats``, ``execution_count``) are added once per execution.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


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
class ExecutionTimes:
    """What one execution of a (possibly merged) batch cost, in nanoseconds."""

    batch_size: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int


# Observers see every finished request: (stats, ok, reason, request_ns, queue_ns, times | None).
Observer = Callable[["ModelStats", bool, str, int, int, "ExecutionTimes | None"], None]


class ModelStats:
    def __init__(self, name: str, version: str, observers: list[Observer] | None = None) -> None:
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
        self._observers = observers if observers is not None else []

    # Every request's path: the counters are added in place (no Duration.add calls).
    def record_execution(self, times: ExecutionTimes) -> None:
        self.execution_count += 1
        self.inference_count += times.batch_size
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

    def record_failure(self, request_ns: int, reason: str = "OTHER") -> None:
        """``reason`` follows Triton's metric label: REJECTED, CANCELED, BACKEND or OTHER."""
        self.fail.add(request_ns)
        for observe in self._observers:
            observe(self, False, reason, request_ns, 0, None)
