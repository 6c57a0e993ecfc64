"""One model's rollout: its traffic policy in force and the one before it, the bake period,
the automatic canary, the shadow and the drift monitors, and the ``Tap`` through which the
request path feeds them.

The manager keeps a ``Rollout`` only for models that have a policy or drift statistics; for
the others the request path stays as it was (one attribute test). Every change of policy is
one synchronous step (atomic for requests on the event loop), logged and kept as an event.
A policy being replaced stays the rollback target; the versions it pointed at stay protected
from reloads for the bake period (``traffic_bake_secs``, default 300 s), so that a rollback is
instant; a reload refused meanwhile is tried again when the bake period ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..protocol.errors import Code, InferdError, InvalidArgument
from ..protocol.model_spec import ModelSpec
from ..protocol.types import InferRequest
from .canary import CanaryController, Window
from .drift import DriftMonitor, DriftSpec, drift_spec, read_reference
from .shadow import ShadowRunner
from .traffic import (
    CONFIG_KEY,
    Router,
    TrafficPolicy,
    bake_seconds,
    check,
    policy_from_config,
    single,
)

log = logging.getLogger(__name__)
EVENTS = 50  # kept per model for the API and the status page
# Errors that are the caller's doing, not the version's: not counted against a canary.
CALLER_ERRORS = (Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.CANCELLED, Code.DEADLINE_EXCEEDED)


class Served(Protocol):
    """What the rollout reads of a loaded version (server.model.ModelVersion)."""

    spec: ModelSpec
    decoupled: bool
    stats: Any

    @property
    def signature(self) -> Any: ...

    async def infer(self, request: InferRequest) -> Mapping[str, np.ndarray]: ...


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    """The rollout parameters of a model's config, mapped once at load (``plan_rollout``)."""

    traffic_text: str = ""
    traffic: TrafficPolicy | None = None
    bake_s: float = 300.0
    drift: DriftSpec | None = None
    reference: Mapping[str, np.ndarray] | None = None

    @property
    def empty(self) -> bool:
        return self.traffic is None and self.drift is None


def plan_rollout(name: str, parameters: Mapping[str, str], model_dir: Path) -> RolloutConfig:
    """Read ``traffic``, ``traffic_bake_secs`` and ``drift``; raises InvalidArgument/ModelLoadError."""
    where = f"model '{name}': parameter '{CONFIG_KEY}'"
    text = parameters.get(CONFIG_KEY, "").strip()
    traffic = policy_from_config(text, where) if text else None
    spec = drift_spec(parameters, f"model '{name}'")
    reference = read_reference(model_dir, spec, f"model '{name}'") if spec is not None else None
    return RolloutConfig(text, traffic, bake_seconds(parameters, f"model '{name}'"), spec, reference)


class Tap:
    """What the request path does after a version answered, while its model has a rollout."""

    __slots__ = ("version", "window", "shadow", "drift")

    def __init__(
        self, version: int, window: Window | None, shadow: ShadowRunner | None, drift: DriftMonitor | None
    ) -> None:
        self.version = version
        self.window = window
        self.shadow = shadow
        self.drift = drift

    def done(self, request: InferRequest, outputs: Mapping[str, np.ndarray], ns: int) -> None:
        if (w := self.window) is not None:
            w.requests += 1
            w.latency.add(ns / 1e9)
        if self.shadow is not None:
            self.shadow.offer(self.version, request, outputs, ns)
        if self.drift is not None:
            self.drift.observe(request.inputs, outputs)

    def failed(self, error: BaseException) -> None:
        if isinstance(error, InferdError) and error.code in CALLER_ERRORS:
            return
        if not isinstance(error, Exception):
            return  # cancelled by the caller
        if (w := self.window) is not None:
            w.requests += 1
            w.errors += 1
        if self.shadow is not None:
            self.shadow.primary_failed(self.version)


async def tapped(tap: Tap, model: Served, request: InferRequest) -> Mapping[str, np.ndarray]:
    """Run ``request`` on ``model`` and feed the tap: the request path of tapped versions."""
    start = time.monotonic_ns()
    try:
        outputs = await model.infer(request)
    except BaseException as e:
        tap.failed(e)
        raise
    tap.done(request, outputs, time.monotonic_ns() - start)
    return outputs


class Rollout:
    """One model's rollout state. ``serving()`` lists its serving versions, ``lookup(model,
    version)`` returns a serving version (raising InferdError), ``changed()`` re-applies the
    router and taps (the manager's), ``reload()`` loads the model again."""

    def __init__(
        self,
        name: str,
        serving: Callable[[], list[int]],
        lookup: Callable[[str, int], Served],
        changed: Callable[[], None],
        reload: Callable[[], None],
    ) -> None:
        self.name = name
        self._serving = serving
        self._lookup = lookup
        self._changed = changed
        self._reload = reload
        self.config = RolloutConfig()
        self.policy: TrafficPolicy | None = None
        self.router: Router | None = None
        self.previous: TrafficPolicy | None = None
        self.bake_until = 0.0
        self.reload_refused = False
        self._bake_timer: asyncio.TimerHandle | None = None
        self.canary: CanaryController | None = None
        self.last_canary: CanaryController | None = None
        self.shadow: ShadowRunner | None = None
        self.windows: dict[int, Window] = {}
        self.drift: dict[int, DriftMonitor] = {}
        self.events: deque[tuple[float, str]] = deque(maxlen=EVENTS)
        self.changes = 0

    # --- configuration at load -------------------------------------------------------------
    def configure(self, config: RolloutConfig) -> None:
        """After a load was committed: the config's drift settings and, when the config's policy
        changed (or the one in force no longer fits the serving versions), its policy."""
        before, self.config = self.config, config
        serving = set(self._serving())
        if config.drift != before.drift:
            self.drift = {}
        if config.drift is not None:
            for v in serving:
                self.drift.setdefault(v, DriftMonitor(config.drift, config.reference))
        for v in [v for v in self.drift if v not in serving]:
            del self.drift[v]
        for v in [v for v in self.windows if v not in serving]:
            del self.windows[v]
        wanted = config.traffic if config.traffic_text != before.traffic_text else self.policy
        if wanted is not None:
            try:
                self.set_policy(wanted, "config" if wanted is config.traffic else "kept after a reload", previous=False)
            except InferdError as e:
                log.error("model '%s': traffic policy refused: %s", self.name, e.message)
                self.note(f"policy refused: {e.message}")
                if self.policy is not None and not self.policy.pointed_at() <= serving:
                    self._put(None, "its versions no longer serve")
        elif config.traffic is None and before.traffic is not None and self.policy == before.traffic:
            self._put(None, "removed from the config")
        self._changed()

    def protected(self) -> set[int]:
        """Versions a reload must keep: those the policy points at, and during the bake period
        those of the policy before it."""
        found = self.policy.pointed_at() if self.policy is not None else set()
        if self.previous is not None and time.monotonic() < self.bake_until:
            found |= self.previous.pointed_at()
        return found

    # --- policy changes ----------------------------------------------------------------------
    def set_policy(self, policy: TrafficPolicy, why: str, previous: bool = True, bake_s: float | None = None) -> None:
        """Check ``policy`` against the serving versions and put it in force; raises
        InvalidArgument (and changes nothing) when it does not fit."""
        where = f"traffic policy of model '{self.name}'"
        check(policy, self.name, self._serving(), where)
        if policy.shadow is not None:
            self._check_shadow(policy, where)
        self._put(policy, why, previous, bake_s)

    def _check_shadow(self, policy: TrafficPolicy, where: str) -> None:
        assert policy.shadow is not None
        primary = self._lookup(self.name, policy.primary())
        if primary.decoupled or primary.spec.sequence_batching is not None:
            raise InvalidArgument(f"{where}: shadowing needs a model with one answer per stateless request")
        target = self._lookup(policy.shadow.model or self.name, policy.shadow.version)
        a, b = primary.signature, target.signature
        if _tensors(a.inputs) != _tensors(b.inputs) or _tensors(a.outputs) != _tensors(b.outputs):
            raise InvalidArgument(f"{where}: the shadow {policy.shadow.target(self.name)} has another signature")

    def promote(self, version: int, bake_s: float | None) -> None:
        """All traffic to ``version``; the policy before stays the rollback target for the bake."""
        current = self.policy
        sticky = current.sticky if current is not None else ""
        shadow = current.shadow if current is not None else None
        if shadow is not None and not shadow.model and shadow.version == version:
            shadow = None
        self.set_policy(TrafficPolicy(((version, 100),), sticky, shadow), f"promote version {version}", bake_s=bake_s)

    def rollback(self) -> None:
        if self.previous is None:
            raise InvalidArgument(f"model '{self.name}' has no previous traffic policy to roll back to")
        target = self.previous
        self.set_policy(target, "rollback", previous=False)
        self.previous = None

    def _put(self, policy: TrafficPolicy | None, why: str, previous: bool = True, bake_s: float | None = None) -> None:
        """Put ``policy`` in force in one step."""
        if previous:
            before = self.effective()
            self.previous = before.without_canary() if before is not None else None
            self._bake(self.config.bake_s if bake_s is None else bake_s)
        if self.canary is not None and (policy is None or policy.canary is None):
            self.canary.close()
            self.canary = None
        self.policy = policy
        self.router = Router(policy) if policy is not None else None
        if policy is not None and policy.canary is not None and self.canary is None:
            self.canary = CanaryController(self.name, policy, self.window, self._canary_apply, self.note)
            policy = self.policy = self.canary.start_policy()
            self.router = Router(policy)
        self._set_shadow(policy)
        self.changes += 1
        text = policy.describe() if policy is not None else "none (the newest version)"
        log.info("model '%s': traffic policy %s (%s)", self.name, text, why)
        self.note(f"policy {text} ({why})")
        self._changed()

    def _canary_apply(self, policy: TrafficPolicy, why: str) -> None:
        """A canary's step, promotion or rollback; its steps keep the rollback target as it is."""
        if policy.canary is not None:
            self.policy, self.router = policy, Router(policy)
            self.changes += 1
            self.note(f"policy {policy.describe()} ({why})")
            log.info("model '%s': traffic policy %s (%s)", self.name, policy.describe(), why)
            self._changed()
            return
        canary = self.canary
        self.canary = None  # its loop has ended; kept for the figures
        self.last_canary = canary
        self._put(policy, why, previous=False)
        if canary is not None and canary.state == "promoted":
            self.previous = canary.baseline  # a rollback returns to the stable versions
            self._bake(self.config.bake_s)
        else:
            self.previous = None

    def _set_shadow(self, policy: TrafficPolicy | None) -> None:
        spec = policy.shadow if policy is not None else None
        if self.shadow is not None and (spec is None or self.shadow.spec != spec):
            self.shadow.close()
            self.shadow = None
        if spec is not None and self.shadow is None:
            self.shadow = ShadowRunner(self.name, spec, self._shadow_call, self._busy)

    def _busy(self) -> bool:
        """Whether callers' requests are in flight on the model's routed versions."""
        policy = self.policy
        if policy is None:
            return False
        for v in policy.routed_versions():
            try:
                if self._lookup(self.name, v).stats.pending:
                    return True
            except InferdError:
                continue
        return False

    async def _shadow_call(self, model: str, version: int, request: InferRequest) -> Mapping[str, np.ndarray]:
        return await self._lookup(model, version).infer(request)

    def _bake(self, seconds: float) -> None:
        if self._bake_timer is not None:
            self._bake_timer.cancel()
        self.bake_until = time.monotonic() + seconds
        self._bake_timer = asyncio.get_running_loop().call_later(seconds, self._baked)

    def _baked(self) -> None:
        self._bake_timer = None
        self.note("bake period over: the previous policy's versions may be unloaded")
        if self.reload_refused:
            self.reload_refused = False
            log.info("model '%s': bake period over; loading it again (a reload was refused during it)", self.name)
            self._reload()

    # --- the request path's view ---------------------------------------------------------------
    def effective(self) -> TrafficPolicy | None:
        """The policy in force, or where requests go without one (the newest serving version)."""
        if self.policy is not None:
            return self.policy
        serving = self._serving()
        return single(max(serving)) if serving else None

    def window(self, version: int) -> Window:
        w = self.windows.get(version)
        if w is None:
            w = self.windows[version] = Window()
        return w

    def tap(self, version: int) -> Tap | None:
        routed = self.policy is not None and version in self.policy.pointed_at()
        window = self.window(version) if routed else None
        primary = self.policy is not None and self.policy.weight_of(version) > 0
        shadow = self.shadow if primary else None
        drift = self.drift.get(version)
        if window is None and shadow is None and drift is None:
            return None
        return Tap(version, window, shadow, drift)

    def note(self, text: str) -> None:
        self.events.append((time.time(), text))

    def close(self) -> None:
        if self.canary is not None:
            self.canary.close()
        if self.shadow is not None:
            self.shadow.close()
        if self._bake_timer is not None:
            self._bake_timer.cancel()

    # --- figures -----------------------------------------------------------------------------
    def bake_remaining(self) -> float:
        return max(0.0, self.bake_until - time.monotonic()) if self.previous is not None else 0.0

    def figures(self) -> dict[str, Any]:
        policy = self.policy
        shares = self.router.shares() if self.router is not None else {}
        canary = self.canary or self.last_canary
        bake = self.bake_remaining()
        return {
            "model": self.name,
            "policy": policy.to_json() if policy is not None else None,
            "effective": policy.describe() if policy is not None else "",
            "shares": {str(v): s for v, s in shares.items()},
            "routed": {str(v): n for v, n in zip(self.router.versions, self.router.routed)} if self.router else {},
            "previous": self.previous.to_json() if self.previous is not None else None,
            "bake_remaining_s": round(bake, 3),
            "protected": [str(v) for v in sorted(self.protected())],
            "changes": self.changes,
            "canary": canary.figures() if canary is not None else None,
            "shadow": self.shadow.figures() if self.shadow is not None else None,
            "windows": {
                str(v): {"requests": w.requests, "errors": w.errors, "p99_s": w.latency.quantile(0.99)}
                for v, w in sorted(self.windows.items())
            },
            "drift": {str(v): d.figures() for v, d in sorted(self.drift.items())},
            "events": [{"time": t, "event": e} for t, e in self.events],
        }


def _tensors(specs: Mapping[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {n: (s.datatype.name, tuple(s.dims)) for n, s in specs.items()}
