"""A fixed-memory histogram over log-spaced buckets, for quantiles of latencies and differences.

Used where a few percentiles are wanted from many observations without keeping them: the
automatic canary's p99 per version (canary.py), the shadow comparisons (shadow.py). Relative
error of a quantile is at most one bucket's ratio (10^(1/20), about 12%, by default)."""

from __future__ import annotations

import math


class LogHistogram:
    """Counts of values in buckets ``[low * r^(i-1), low * r^i)``, ``r = 10^(1/per_decade)``;
    values at or below ``low`` (zero included) share the first bucket and read back as 0."""

    __slots__ = ("low", "per_decade", "counts", "count", "total")

    def __init__(self, low: float = 1e-6, high: float = 1e3, per_decade: int = 20) -> None:
        self.low = low
        self.per_decade = per_decade
        self.counts = [0] * (math.ceil(math.log10(high / low) * per_decade) + 2)
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        if value > self.low:
            i = 1 + int(math.log10(value / self.low) * self.per_decade)
            if i >= len(self.counts):
                i = len(self.counts) - 1
        else:
            i = 0
        self.counts[i] += 1
        self.count += 1
        self.total += value

    def quantile(self, q: float) -> float | None:
        """The value below which a share ``q`` of the observations fall; None when empty."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i == 0:
                    return 0.0
                within = (rank - seen) / n
                return self.low * 10 ** ((i - 1 + within) / self.per_decade)
            seen += n
        return self.low * 10 ** ((len(self.counts) - 1) / self.per_decade)

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def clear(self) -> None:
        self.counts = [0] * len(self.counts)
        self.count = 0
        self.total = 0.0
