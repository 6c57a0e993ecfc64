"""The automatic canary: ramp a version's share in steps while it stays within bounds of the
stable versions, roll back as soon as it does not.

Every ``interval_s`` (once the canary has had ``min_requests`` requests since the last step)
the canary's window is compared with the stable version's (the heaviest other version): its
error rate may exceed the stable one's by at most ``max_error_increase`` and its p99 latency
may be at most ``max_p99_ratio`` times the stable one's plus 1 ms (checked once both have had
``min_requests``, and at least 100, successful requests in the window). Within bounds, the canary's share grows by ``step`` points;
at 100 the canary is promoted. Out of bounds, traffic goes back to the stable versions. Every
step and decision is logged, counted and kept as an event (rollout.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .sketch import LogHistogram
from .traffic import CanarySpec, TrafficPolicy

log = logging.getLogger(__name__)
# A p99 over fewer successful requests is one slow request: the latency bound waits for these.
P99_MIN_SAMPLES = 100
# Sub-millisecond p99s jitter by more than any sensible ratio: the bound allows this much on top.
P99_SLACK_S = 0.001


@dataclass(slots=True)
class Window:
    """One version's requests since the canary's last step (rollout.Tap fills it)."""

    requests: int = 0
    errors: int = 0
    latency: LogHistogram = field(default_factory=LogHistogram)  # of successful requests, seconds

    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def reset(self) -> None:
        self.requests = self.errors = 0
        self.latency.clear()


def shares(baseline: TrafficPolicy, canary: int, share: int) -> tuple[tuple[int, int], ...]:
    """Weights (of 100) giving ``canary`` ``share`` points and the baseline's versions the rest,
    in the baseline's proportions (the heaviest takes the rounding)."""
    stable = [(v, w) for v, w in baseline.weights if w > 0 and v != canary]
    total = sum(w for _, w in stable)
    rest = 100 - share
    weights = {v: rest * w // total for v, w in stable}
    heaviest = max(stable, key=lambda item: (item[1], item[0]))[0]
    weights[heaviest] += rest - sum(weights.values())
    weights[canary] = share
    return tuple(sorted(weights.items()))


class CanaryController:
    """Drives one canary; ``apply(policy, why)`` puts a policy in force, ``window(version)``
    reads a version's window, ``note(text)`` records a decision."""

    def __init__(
        self,
        model: str,
        policy: TrafficPolicy,
        window: Callable[[int], Window],
        apply: Callable[[TrafficPolicy, str], None],
        note: Callable[[str], None],
    ) -> None:
        assert policy.canary is not None
        self.model = model
        self.spec: CanarySpec = policy.canary
        # Where an automatic rollback goes: the start's other versions, in their proportions.
        others = tuple((v, w) for v, w in policy.weights if v != self.spec.version)
        self.baseline = TrafficPolicy(others, policy.sticky, policy.shadow)
        self.stable = self.baseline.primary()
        total = sum(w for _, w in policy.weights)
        self.share = round(100 * policy.weight_of(self.spec.version) / total)
        self.steps = 0
        self.rollbacks = 0
        self.state = "ramping"
        self.last_decision = ""
        self._window = window
        self._apply = apply
        self._note = note
        self._task = asyncio.get_running_loop().create_task(self._run())

    def policy(self) -> TrafficPolicy:
        """The policy for the current share, the canary spec kept while it ramps."""
        return replace(self.baseline, weights=shares(self.baseline, self.spec.version, self.share), canary=self.spec)

    def start_policy(self) -> TrafficPolicy:
        for v in (self.spec.version, self.stable):
            self._window(v).reset()
        return self.policy()

    async def _run(self) -> None:
        while self.state == "ramping":
            await asyncio.sleep(self.spec.interval_s)
            try:
                self.judge()
            except Exception:  # a bug here must not leave the canary half-applied silently
                log.exception("model '%s': canary judgement failed", self.model)

    def judge(self) -> None:
        spec = self.spec
        c, s = self._window(spec.version), self._window(self.stable)
        if c.requests < spec.min_requests:
            return  # too few requests to judge yet
        bound = s.error_rate() + spec.max_error_increase
        why = ""
        if c.error_rate() > bound:
            why = (
                f"error rate {c.error_rate():.1%} over {c.requests} requests exceeds version {self.stable}'s "
                f"{s.error_rate():.1%} + {spec.max_error_increase:.1%}"
            )
        elif min(c.latency.count, s.latency.count) >= max(spec.min_requests, P99_MIN_SAMPLES):
            p99_c, p99_s = c.latency.quantile(0.99) or 0.0, s.latency.quantile(0.99) or 0.0
            if p99_s > 0 and p99_c > spec.max_p99_ratio * p99_s + P99_SLACK_S:
                why = (
                    f"p99 latency {p99_c * 1e3:.2f} ms is over {spec.max_p99_ratio:g} x version "
                    f"{self.stable}'s {p99_s * 1e3:.2f} ms"
                )
        if why:
            self.state, self.rollbacks = "rolled back", self.rollbacks + 1
            self.last_decision = f"rolled back version {spec.version} at {self.share}%: {why}"
            log.warning("model '%s': canary %s", self.model, self.last_decision)
            self._note(f"canary {self.last_decision}")
            self._apply(self.baseline, f"canary of version {spec.version} rolled back")
            return
        observed = f"errors {c.error_rate():.1%} vs {s.error_rate():.1%} over {c.requests} requests"
        self.share = min(100, self.share + spec.step)
        self.steps += 1
        c.reset()
        s.reset()
        if self.share >= 100:
            self.state = "promoted"
            self.last_decision = f"promoted version {spec.version} after {self.steps} step(s) ({observed})"
            log.info("model '%s': canary %s", self.model, self.last_decision)
            self._note(f"canary {self.last_decision}")
            promoted = TrafficPolicy(((spec.version, 100),), self.baseline.sticky, self.baseline.shadow)
            self._apply(promoted, f"canary of version {spec.version} promoted")
            return
        self.last_decision = f"step {self.steps}: version {spec.version} to {self.share}% ({observed})"
        log.info("model '%s': canary %s", self.model, self.last_decision)
        self._note(f"canary {self.last_decision}")
        self._apply(self.policy(), f"canary step {self.steps}")

    def close(self) -> None:
        if self.state == "ramping":
            self.state = "stopped"
        self._task.cancel()

    def figures(self) -> dict[str, object]:
        return {
            "version": str(self.spec.version),
            "stable": str(self.stable),
            "state": self.state,
            "share": self.share,
            "steps": self.steps,
            "rollbacks": self.rollbacks,
            "last_decision": self.last_decision,
        }
