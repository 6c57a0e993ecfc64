"""The arithmetic of a measurement, with perf_analyzer's definitions so both tools' figures
mean the same thing:

* a window's latencies are those of the requests that *ended* inside it;
* percentile p of n sorted latencies is element ``int(p/100 * (n-1) + 0.5)``;
* a step is stable when, over the last 3 windows, max/min of throughput and of the
  stabilizing latency (average, or ``--percentile``) are each within ``1 + stability``;
* the reported figures merge those 3 windows; server figures are deltas of the statistics
  API taken around each window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields

STABILITY_WINDOWS = 3
REPORTED_PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """perf_analyzer's percentile: nearest rank on sorted values, rounding half up."""
    if not sorted_values:
        raise ValueError("no values")
    return sorted_values[int(p / 100.0 * (len(sorted_values) - 1) + 0.5)]


@dataclass
class LatencySummary:
    count: int
    avg_ns: int
    std_ns: int
    percentiles_ns: dict[int, int]

    @classmethod
    def of(cls, latencies_ns: Iterable[int], extra_percentile: int | None = None) -> LatencySummary:
        values = sorted(latencies_ns)
        if not values:
            return cls(0, 0, 0, {})
        n = len(values)
        avg = sum(values) // n
        var = max(sum(v * v for v in values) / n - avg * avg, 0.0)
        wanted = sorted(set(REPORTED_PERCENTILES) | ({extra_percentile} if extra_percentile else set()))
        return cls(n, avg, int(math.sqrt(var)), {p: percentile(values, p) for p in wanted})


@dataclass
class ServerCounters:
    """Cumulative counters of one model version, as the statistics API reports them."""

    inference_count: int = 0
    execution_count: int = 0
    success_count: int = 0
    success_ns: int = 0
    queue_count: int = 0
    queue_ns: int = 0
    compute_input_count: int = 0
    compute_input_ns: int = 0
    compute_infer_count: int = 0
    compute_infer_ns: int = 0
    compute_output_count: int = 0
    compute_output_ns: int = 0
    cache_hit_count: int = 0
    cache_hit_ns: int = 0
    cache_miss_count: int = 0
    cache_miss_ns: int = 0

    def __sub__(self, other: ServerCounters) -> ServerCounters:
        return ServerCounters(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def __add__(self, other: ServerCounters) -> ServerCounters:
        return ServerCounters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @staticmethod
    def _avg(ns: int, count: int) -> int:
        return ns // count if count > 0 else 0

    @property
    def avg_queue_ns(self) -> int:
        return self._avg(self.queue_ns, self.queue_count)

    @property
    def avg_compute_input_ns(self) -> int:
        return self._avg(self.compute_input_ns, self.compute_input_count)

    @property
    def avg_compute_infer_ns(self) -> int:
        return self._avg(self.compute_infer_ns, self.compute_infer_count)

    @property
    def avg_compute_output_ns(self) -> int:
        return self._avg(self.compute_output_ns, self.compute_output_count)

    @property
    def avg_cache_hit_ns(self) -> int:
        return self._avg(self.cache_hit_ns, self.cache_hit_count)

    @property
    def avg_cache_miss_ns(self) -> int:
        return self._avg(self.cache_miss_ns, self.cache_miss_count)

    @property
    def avg_request_ns(self) -> int:
        return self._avg(self.success_ns, self.success_count)

    @property
    def avg_compute_ns(self) -> int:
        total = self.compute_input_ns + self.compute_infer_ns + self.compute_output_ns
        return self._avg(total, self.compute_input_count)

    @property
    def accounted_ns(self) -> int:
        """Queue + compute (+ cache), per request: what the server can attribute."""
        return self.avg_queue_ns + self.avg_compute_ns + self.avg_cache_hit_ns + self.avg_cache_miss_ns

    @property
    def avg_overhead_ns(self) -> int:
        """Server time not in queue or compute (protocol, validation, scheduling), capped at 0."""
        return max(self.avg_request_ns - self.accounted_ns, 0)


@dataclass
class Window:
    """One measurement window's raw material."""

    duration_ns: int
    latencies_ns: list[int]
    send_ns: int = 0  # summed over the window's requests
    recv_ns: int = 0
    errors: int = 0
    late_sends: int = 0  # rate mode: requests sent more than LATE_NS behind schedule
    max_lag_ns: int = 0
    cpu_fraction: float = 0.0  # load generator CPU time / wall time (1.0 = one core)
    server: ServerCounters | None = None

    def throughput(self, batch_size: int) -> float:
        return len(self.latencies_ns) * batch_size / (self.duration_ns / 1e9) if self.duration_ns else 0.0

    def stabilizing_latency_ns(self, extra_percentile: int | None) -> int:
        s = LatencySummary.of(self.latencies_ns, extra_percentile)
        if s.count == 0:
            return 0
        return s.percentiles_ns[extra_percentile] if extra_percentile else s.avg_ns


def is_stable(
    throughputs: Sequence[float],
    latencies: Sequence[float],
    stability: float,
    windows: int = STABILITY_WINDOWS,
) -> bool:
    """perf_analyzer's rule on the last ``windows`` measurements; ``stability`` is a fraction
    (0.1 for ``-s 10``). A window without any completed request is never stable."""
    if len(throughputs) < windows or len(latencies) < windows:
        return False
    t, lat = list(throughputs)[-windows:], list(latencies)[-windows:]
    if min(t) <= 0 or min(lat) <= 0:
        return False
    return max(t) / min(t) <= 1 + stability and max(lat) / min(lat) <= 1 + stability


@dataclass
class StepResult:
    """The merged figures of one sweep step (concurrency level or request rate)."""

    mode: str  # "concurrency" | "rate"
    value: float
    batch_size: int
    duration_ns: int
    latency: LatencySummary
    throughput: float
    avg_send_ns: int
    avg_recv_ns: int
    stable: bool
    windows_measured: int
    errors: int = 0
    late_sends: int = 0
    max_lag_ns: int = 0
    cpu_fraction: float = 0.0
    server: ServerCounters | None = None
    requests_sent: int = 0  # over the whole step, warm-up windows included
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.value:g}"

    @property
    def network_ns(self) -> int:
        """perf_analyzer's "Network+Server Send/Recv": client wait minus server queue+compute."""
        wait = self.latency.avg_ns - self.avg_send_ns - self.avg_recv_ns
        accounted = self.server.accounted_ns if self.server else 0
        return max(wait - accounted, 0)


def merge(
    windows: Sequence[Window],
    mode: str,
    value: float,
    batch_size: int,
    extra_percentile: int | None,
    stable: bool,
    windows_measured: int,
) -> StepResult:
    """Merge the last windows of a step into one result, as perf_analyzer reports it."""
    latencies = [x for w in windows for x in w.latencies_ns]
    count = len(latencies)
    duration = sum(w.duration_ns for w in windows)
    server: ServerCounters | None = None
    if all(w.server is not None for w in windows) and windows:
        server = ServerCounters()
        for w in windows:
            assert w.server is not None
            server = server + w.server
    return StepResult(
        mode=mode,
        value=value,
        batch_size=batch_size,
        duration_ns=duration,
        latency=LatencySummary.of(latencies, extra_percentile),
        throughput=count * batch_size / (duration / 1e9) if duration else 0.0,
        avg_send_ns=sum(w.send_ns for w in windows) // count if count else 0,
        avg_recv_ns=sum(w.recv_ns for w in windows) // count if count else 0,
        stable=stable,
        windows_measured=windows_measured,
        errors=sum(w.errors for w in windows),
        late_sends=sum(w.late_sends for w in windows),
        max_lag_ns=max((w.max_lag_ns for w in windows), default=0),
        cpu_fraction=max((w.cpu_fraction for w in windows), default=0.0),
        server=server,
    )
