"""Prometheus metrics of rollouts (rollout.py), read at scrape time like the model metrics:
traffic weights and routed requests per version, canary steps and rollbacks, shadow
comparisons per (model, primary version, shadow), drift figures per (model, version, tensor).

Counters are typed counters (exposed with ``_total``), gauges are gauges; all ``inferd_`` names.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .manager import ModelManager


class RolloutCollector(Collector):
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        mv = ["model", "version"]
        weight = GaugeMetricFamily("inferd_traffic_weight", "Share of the traffic policy's weight (0..1)", labels=mv)
        routed = CounterMetricFamily(
            "inferd_traffic_routed_requests", "Requests routed by the traffic policy in force", labels=mv
        )
        changes = CounterMetricFamily("inferd_traffic_policy_changes", "Traffic policy changes", labels=["model"])
        steps = CounterMetricFamily("inferd_canary_steps", "Automatic canary steps taken", labels=mv)
        rollbacks = CounterMetricFamily("inferd_canary_rollbacks", "Automatic canary rollbacks", labels=mv)
        pair = ["model", "version", "shadow"]
        mirrored = CounterMetricFamily("inferd_shadow_requests", "Requests copied to the shadow", labels=pair)
        dropped = CounterMetricFamily("inferd_shadow_dropped", "Copies dropped: the shadow queue was full", labels=pair)
        compared = CounterMetricFamily("inferd_shadow_compared", "Shadow answers compared", labels=pair)
        agreed = CounterMetricFamily("inferd_shadow_agreed", "Shadow answers that agreed", labels=pair)
        agreement = GaugeMetricFamily("inferd_shadow_agreement_ratio", "Agreed / compared", labels=pair)
        errors = CounterMetricFamily("inferd_shadow_errors", "Failed requests", labels=[*pair, "side"])
        difference = GaugeMetricFamily(
            "inferd_shadow_difference", "Largest absolute output difference, quantile", labels=[*pair, "quantile"]
        )
        latency = GaugeMetricFamily(
            "inferd_shadow_latency_seconds",
            "Latency of compared requests, quantile",
            labels=[*pair, "side", "quantile"],
        )
        tensor = ["model", "version", "tensor", "kind"]
        drift = {
            key: GaugeMetricFamily(f"inferd_drift_{key}", doc, labels=tensor)
            for key, doc in (
                ("psi", "Population stability index of the recent values against the reference"),
                ("ks", "Kolmogorov-Smirnov distance of the recent values from the reference"),
                ("mean", "Mean of the values seen"),
                ("std", "Standard deviation of the values seen"),
                ("count", "Values counted"),
            )
        }
        for name, rollout in self.manager.rollouts().items():
            f = rollout.figures()
            changes.add_metric([name], f["changes"])
            policy = f["policy"]
            if policy is not None:
                total = sum(policy["weights"].values()) or 1
                for v, w in policy["weights"].items():
                    weight.add_metric([name, v], w / total)
            for v, n in f["routed"].items():
                routed.add_metric([name, v], n)
            canary = f["canary"]
            if canary is not None:
                steps.add_metric([name, canary["version"]], canary["steps"])
                rollbacks.add_metric([name, canary["version"]], canary["rollbacks"])
            shadow = f["shadow"]
            if shadow is not None:
                for v, p in shadow["pairs"].items():
                    ids = [name, v, shadow["target"]]
                    mirrored.add_metric(ids, p["mirrored"])
                    dropped.add_metric(ids, p["dropped"])
                    compared.add_metric(ids, p["compared"])
                    agreed.add_metric(ids, p["agreed"])
                    if p["agreement"] is not None:
                        agreement.add_metric(ids, p["agreement"])
                    errors.add_metric([*ids, "primary"], p["primary_errors"])
                    errors.add_metric([*ids, "shadow"], p["shadow_errors"])
                    for q, value in p["difference"].items():
                        if value is not None:
                            difference.add_metric([*ids, q], value)
                    for side in ("primary", "shadow"):
                        for q, value in p[f"{side}_latency_s"].items():
                            if value is not None:
                                latency.add_metric([*ids, side, q], value)
            for v, d in f["drift"].items():
                for t_name, t in d["tensors"].items():
                    for key, family in drift.items():
                        if t[key] is not None:
                            family.add_metric([name, v, t_name, t["kind"]], t[key])
        yield from (weight, routed, changes, steps, rollbacks)
        yield from (mirrored, dropped, compared, agreed, agreement, errors, difference, latency)
        yield from drift.values()


def register_rollout_metrics(registry: CollectorRegistry, manager: ModelManager) -> None:
    registry.register(RolloutCollector(manager))
