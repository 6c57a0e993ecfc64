"""``--metrics-config <setting>=<value>``: which of Triton's latency metric families are
published, with Triton's setting names; every other setting is refused by name."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Triton's default quantiles (quantile, allowed error) for the latency summaries.
DEFAULT_QUANTILES: tuple[tuple[float, float], ...] = (
    (0.5, 0.05),
    (0.9, 0.01),
    (0.95, 0.001),
    (0.99, 0.001),
    (0.999, 0.001),
)
SETTINGS = ("counter_latencies", "histogram_latencies", "summary_latencies", "summary_quantiles")


class MetricsConfigError(ValueError):
    """A --metrics-config value inferd cannot honour; the message names it."""


@dataclass(frozen=True)
class MetricsOptions:
    # nv_inference_*_duration_us counters (Triton: on unless counter_latencies=false)
    counter_latencies: bool = True
    # nv_inference_first_response_histogram_ms for decoupled models. Triton publishes it only with
    # histogram_latencies=true; inferd has always published it, so it stays on unless set false.
    histogram_latencies: bool = True
    # nv_inference_*_summary_us over a sliding window (Triton: off unless summary_latencies=true)
    summary_latencies: bool = False
    summary_quantiles: tuple[tuple[float, float], ...] = DEFAULT_QUANTILES
    # nv_cpu_utilization, nv_cpu_memory_total_bytes, nv_cpu_memory_used_bytes (--allow-cpu-metrics)
    cpu: bool = True
    # How often the per-interval metrics (CPU) are sampled (--metrics-interval-ms).
    interval_ms: float = 2000.0


def parse(text: str) -> tuple[str, str]:
    """One flag value as (setting, value)."""
    setting, equals, value = text.partition("=")
    if not equals or not setting or not value or "," in setting:
        raise MetricsConfigError(
            f"--metrics-config takes <setting>=<value> (e.g. summary_latencies=true), got '{text}'"
        )
    return setting, value


def options(values: Iterable[tuple[str, str]], cpu: bool = True, interval_ms: float = 2000.0) -> MetricsOptions:
    """Check every (setting, value); the last value of a repeated setting wins."""
    out = {"counter_latencies": True, "histogram_latencies": True, "summary_latencies": False}
    quantiles = DEFAULT_QUANTILES
    for setting, value in values:
        if setting not in SETTINGS:
            raise MetricsConfigError(
                f"--metrics-config setting '{setting}' is not implemented by inferd (its settings: {', '.join(SETTINGS)})"
            )
        if setting == "summary_quantiles":
            quantiles = parse_quantiles(value)
        else:
            out[setting] = _bool(setting, value)
    if interval_ms <= 0:
        raise MetricsConfigError(f"--metrics-interval-ms must be more than 0, not {interval_ms:g}")
    return MetricsOptions(
        out["counter_latencies"], out["histogram_latencies"], out["summary_latencies"], quantiles, cpu, interval_ms
    )


def parse_quantiles(text: str) -> tuple[tuple[float, float], ...]:
    """Triton's ``<quantile>:<error>,...``, each quantile in [0, 1] and its error in [0, 1)."""
    pairs: list[tuple[float, float]] = []
    for item in text.split(","):
        q, colon, e = item.strip().partition(":")
        try:
            quantile, error = float(q), float(e)
        except ValueError:
            quantile = error = -1.0
        if not colon or not 0 <= quantile <= 1 or not 0 <= error < 1:
            raise MetricsConfigError(
                f"--metrics-config summary_quantiles takes <quantile>:<error>,... with quantiles in [0, 1] "
                f"(e.g. 0.5:0.05,0.99:0.001), got '{item}'"
            )
        pairs.append((quantile, error))
    return tuple(sorted(dict(pairs).items()))


def _bool(setting: str, value: str) -> bool:
    # Triton compares with "true" / "false"; inferd refuses anything else rather than guess.
    if value.lower() in ("true", "1", "on"):
        return True
    if value.lower() in ("false", "0", "off"):
        return False
    raise MetricsConfigError(f"--metrics-config {setting} must be true or false, not '{value}'")
