"""Traffic policies: which loaded version answers a request that names no version.

A policy is weights over loaded versions (canary, A/B), optionally sticky by a request
parameter (a hash of its value picks the version, so one user sees one version), optionally a
shadow version that gets a copy of a share of the traffic (shadow.py) and an automatic canary
(canary.py). It comes from the model's config, ``parameters { key: "traffic" value: {
string_value: "1:90,2:10,sticky=user" } }``, or from ``POST /v2/models/<m>/traffic`` as JSON
(``policy_from_json``); either way it is mapped here, once, into a frozen ``TrafficPolicy`` and
checked against the versions that serve (``check``) before it replaces the one in force.

``Router`` is what the request path runs: one ``bisect`` over cumulative weights.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..protocol.errors import InvalidArgument
from ..protocol.types import InferRequest

CONFIG_KEY = "traffic"  # the config parameter holding a policy
BAKE_KEY = "traffic_bake_secs"  # the config parameter holding the bake period
DEFAULT_BAKE_S = 300.0
COMPARISONS = ("allclose", "argmax")


@dataclass(frozen=True, slots=True)
class ShadowSpec:
    """A copy of ``share`` of the traffic goes to ``version`` of ``model`` ("" = this model);
    answers agree when every output is within ``tolerance`` (allclose) or has the same
    argmax over its last axis (argmax, for classifiers)."""

    version: int
    share: float = 1.0
    model: str = ""
    compare: str = "allclose"
    tolerance: float = 1e-5

    def target(self, model: str) -> str:
        return f"{self.model or model}:{self.version}"


@dataclass(frozen=True, slots=True)
class CanarySpec:
    """Ramp ``version`` by ``step`` weight points (of 100) every ``interval_s`` while, over at
    least ``min_requests`` of its requests, its error rate exceeds the stable versions' by no
    more than ``max_error_increase`` and its p99 latency is within ``max_p99_ratio`` times
    theirs (plus 1 ms); roll back to the stable versions as soon as it is not (canary.py)."""

    version: int
    step: int = 10
    interval_s: float = 30.0
    min_requests: int = 100
    max_error_increase: float = 0.01
    max_p99_ratio: float = 1.5


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    weights: tuple[tuple[int, int], ...]  # (version, weight), by version; at least one weight > 0
    sticky: str = ""  # the request parameter whose value keeps a caller on one version
    shadow: ShadowSpec | None = None
    canary: CanarySpec | None = None

    def weight_of(self, version: int) -> int:
        return dict(self.weights).get(version, 0)

    def routed_versions(self) -> list[int]:
        return [v for v, w in self.weights if w > 0]

    def pointed_at(self) -> set[int]:
        """This model's versions the policy needs loaded."""
        found = set(self.routed_versions())
        if self.shadow is not None and not self.shadow.model:
            found.add(self.shadow.version)
        if self.canary is not None:
            found.add(self.canary.version)
        return found

    def primary(self) -> int:
        """The version metadata and config requests without a version see: the heaviest
        (the newest of equals)."""
        return max(self.routed_versions(), key=lambda v: (self.weight_of(v), v))

    def without_canary(self) -> TrafficPolicy:
        return replace(self, canary=None)

    def describe(self) -> str:
        """The config parameter's syntax: ``1:90,2:10[,sticky=user]``."""
        items = [f"{v}:{w}" for v, w in self.weights]
        if self.sticky:
            items.append(f"sticky={self.sticky}")
        if self.shadow is not None:
            s = self.shadow
            items.append(f"shadow={s.model + '/' if s.model else ''}{s.version}@{s.share:g}")
        return ",".join(items)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"weights": {str(v): w for v, w in self.weights}}
        if self.sticky:
            doc["sticky"] = self.sticky
        if self.shadow is not None:
            s = self.shadow
            doc["shadow"] = {
                "version": str(s.version),
                "share": s.share,
                "compare": s.compare,
                "tolerance": s.tolerance,
            }
            if s.model:
                doc["shadow"]["model"] = s.model
        if self.canary is not None:
            c = self.canary
            doc["canary"] = {
                "version": str(c.version),
                "step": c.step,
                "interval_s": c.interval_s,
                "min_requests": c.min_requests,
                "max_error_increase": c.max_error_increase,
                "max_p99_ratio": c.max_p99_ratio,
            }
        return doc


def single(version: int) -> TrafficPolicy:
    """All traffic to ``version``."""
    return TrafficPolicy(((version, 100),))


# --- mapping: config string and JSON -----------------------------------------------------------
def policy_from_config(text: str, where: str) -> TrafficPolicy:
    """``"1:90,2:10[,sticky=<param>][,shadow=<version>@<share>]"``, the config parameter."""
    weights: dict[int, int] = {}
    sticky, shadow = "", None
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.startswith("sticky="):
            sticky = item.removeprefix("sticky=").strip()
            if not sticky:
                raise InvalidArgument(f"{where}: 'sticky=' needs a request parameter name")
        elif item.startswith("shadow="):
            version, _, share = item.removeprefix("shadow=").partition("@")
            shadow = ShadowSpec(_version(version, where), _share(share or "1", where))
        else:
            version, sep, weight = item.partition(":")
            if not sep:
                raise InvalidArgument(
                    f"{where}: '{item}' is not <version>:<weight>, sticky=<param> or shadow=<v>@<share>"
                )
            v = _version(version, where)
            if v in weights:
                raise InvalidArgument(f"{where}: version {v} is given twice")
            weights[v] = _weight(weight, where)
    return _checked(TrafficPolicy(tuple(sorted(weights.items())), sticky, shadow), where)


def policy_from_json(doc: Any, where: str = "traffic policy") -> TrafficPolicy:
    """``{"weights": {"1": 90, "2": 10}, "sticky": "user", "shadow": {...}, "canary": {...}}``."""
    if not isinstance(doc, Mapping):
        raise InvalidArgument(f"{where}: the body must be a JSON object")
    _only(doc, ("weights", "sticky", "shadow", "canary"), where)
    raw = doc.get("weights")
    if not isinstance(raw, Mapping) or not raw:
        raise InvalidArgument(f"{where}: 'weights' is required, an object of version -> weight")
    weights = {_version(k, where): _weight(w, where) for k, w in raw.items()}
    if len(weights) != len(raw):
        raise InvalidArgument(f"{where}: a version is given twice in 'weights'")
    sticky = doc.get("sticky", "")
    if not isinstance(sticky, str):
        raise InvalidArgument(f"{where}: 'sticky' must be a request parameter name")
    shadow = None
    if doc.get("shadow") is not None:
        shadow = _shadow_from_json(doc["shadow"], f"{where}: shadow")
    canary = None
    if doc.get("canary") is not None:
        canary = _canary_from_json(doc["canary"], f"{where}: canary")
    return _checked(TrafficPolicy(tuple(sorted(weights.items())), sticky.strip(), shadow, canary), where)


def _shadow_from_json(doc: Any, where: str) -> ShadowSpec:
    if not isinstance(doc, Mapping):
        raise InvalidArgument(f"{where} must be an object with 'version' and optionally 'share', 'model'")
    _only(doc, ("version", "share", "model", "compare", "tolerance"), where)
    model = doc.get("model", "")
    if not isinstance(model, str):
        raise InvalidArgument(f"{where}: 'model' must be a model name")
    compare = doc.get("compare", "allclose")
    if compare not in COMPARISONS:
        raise InvalidArgument(f"{where}: 'compare' must be one of {', '.join(COMPARISONS)}")
    tolerance = _number(doc.get("tolerance", 1e-5), f"{where}: 'tolerance'", 0.0)
    return ShadowSpec(
        _version(doc.get("version"), where), _share(doc.get("share", 1.0), where), model, compare, tolerance
    )


def _canary_from_json(doc: Any, where: str) -> CanarySpec:
    if not isinstance(doc, Mapping):
        raise InvalidArgument(f"{where} must be an object with 'version' and the bounds")
    fields = ("version", "step", "interval_s", "min_requests", "max_error_increase", "max_p99_ratio")
    _only(doc, fields, where)
    d = CanarySpec(0)
    step = _number(doc.get("step", d.step), f"{where}: 'step'", 1.0)
    min_requests = _number(doc.get("min_requests", d.min_requests), f"{where}: 'min_requests'", 1.0)
    if step != int(step) or step > 100 or min_requests != int(min_requests):
        raise InvalidArgument(f"{where}: 'step' must be an integer in 1..100 and 'min_requests' an integer")
    return CanarySpec(
        _version(doc.get("version"), where),
        int(step),
        _number(doc.get("interval_s", d.interval_s), f"{where}: 'interval_s'", 0.01),
        int(min_requests),
        _number(doc.get("max_error_increase", d.max_error_increase), f"{where}: 'max_error_increase'", 0.0),
        _number(doc.get("max_p99_ratio", d.max_p99_ratio), f"{where}: 'max_p99_ratio'", 1.0),
    )


def _checked(policy: TrafficPolicy, where: str) -> TrafficPolicy:
    if not policy.weights:
        raise InvalidArgument(f"{where}: no version:weight pair")
    if not policy.routed_versions():
        raise InvalidArgument(f"{where}: every weight is zero; at least one version must take traffic")
    if policy.canary is not None:
        c = policy.canary
        if c.version not in dict(policy.weights):
            raise InvalidArgument(f"{where}: the canary version {c.version} needs a weight (its starting share)")
        if not [v for v in policy.routed_versions() if v != c.version]:
            raise InvalidArgument(f"{where}: a canary needs a stable version with a weight beside it")
    if policy.shadow is not None and not policy.shadow.model and policy.shadow.version in policy.routed_versions():
        raise InvalidArgument(f"{where}: the shadow version {policy.shadow.version} also takes traffic")
    return policy


def _only(doc: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise InvalidArgument(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(allowed)}")


def _version(value: Any, where: str) -> int:
    text = str(value).strip() if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise InvalidArgument(f"{where}: version '{value}' is not an integer > 0")
    return int(text)


def _weight(value: Any, where: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{where}: weight '{value}' is not an integer")
    if value < 0:
        raise InvalidArgument(f"{where}: weight {value} is negative")
    if value > 1_000_000:
        raise InvalidArgument(f"{where}: weight {value} is over 1000000")
    return value


def _share(value: Any, where: str) -> float:
    share = _number(value, f"{where}: share", 0.0)
    if not 0.0 < share <= 1.0:
        raise InvalidArgument(f"{where}: share {share} is not in (0, 1]")
    return share


def _number(value: Any, what: str, low: float) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < low:
        raise InvalidArgument(f"{what} must be a number >= {low:g}, not {value!r}")
    return number


def bake_seconds(parameters: Mapping[str, str], where: str) -> float:
    """The config's bake period (``traffic_bake_secs``), else the default."""
    raw = parameters.get(BAKE_KEY, "").strip()
    return _number(raw, f"{where}: parameter '{BAKE_KEY}'", 0.0) if raw else DEFAULT_BAKE_S


# --- checking against the model ------------------------------------------------------------------
def check(policy: TrafficPolicy, model: str, serving: Collection[int], where: str) -> None:
    """Refuse a policy that routes to, shadows or ramps a version that does not serve."""
    for v in sorted(policy.pointed_at()):
        if v not in serving:
            have = ", ".join(map(str, sorted(serving))) or "none"
            raise InvalidArgument(
                f"{where}: model '{model}' version {v} is not loaded and ready (serving versions: {have})"
            )


# --- the request path --------------------------------------------------------------------------
class Router:
    """Picks a version for each request by the policy's weights; with ``sticky``, by a hash of
    the request parameter of that name (requests without it are spread by weight). Counts the
    requests each version got, for the live shares."""

    __slots__ = ("policy", "versions", "_cumulative", "_total", "_sticky", "routed")

    def __init__(self, policy: TrafficPolicy) -> None:
        self.policy = policy
        active = [(v, w) for v, w in policy.weights if w > 0]
        self.versions = [v for v, _ in active]
        self._cumulative: list[int] = []
        running = 0
        for _, w in active:
            running += w
            self._cumulative.append(running)
        self._total = running
        self._sticky = policy.sticky
        self.routed = [0] * len(active)

    def pick(self, request: InferRequest | None) -> int:
        if request is None:
            return self.policy.primary()
        sticky = self._sticky
        if sticky and (key := request.parameters.get(sticky)) is not None:
            digest = hashlib.blake2b(str(key).encode(), digest_size=8).digest()
            point: float = int.from_bytes(digest, "little") % self._total
        else:
            point = random.random() * self._total
        i = bisect.bisect_right(self._cumulative, point)
        self.routed[i] += 1
        return self.versions[i]

    def shares(self) -> dict[int, float]:
        """The share of requests each version got since this policy took effect."""
        total = sum(self.routed)
        return {v: (n / total if total else 0.0) for v, n in zip(self.versions, self.routed)}
