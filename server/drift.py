"""Drift statistics: how a version's traffic compares with a reference.

Per model version and per numeric tensor (inputs and outputs), a ``DriftMonitor`` keeps the
count, mean and standard deviation of the values seen, and a fixed-memory histogram over bins
cut at the reference's quantiles. The reference is the first ``reference`` requests after the
load, or a file shipped in the model folder (``.npz``, one array per tensor name). The current
distribution decays with a half-life of one reference's worth of values, so the figures follow
recent traffic; it is compared with the reference by the population stability index (PSI) and
the Kolmogorov-Smirnov distance (the largest gap between the two CDFs, read at the bin edges).

Cost: at most ``MAX_OBSERVED_PER_S`` requests a second are observed (the rest are counted as
seen and skipped: a distribution is estimated as well from a sample, and the figures say how
large it is); an observed request appends a strided sample of each tensor (at most
``SAMPLE_ELEMENTS`` values) to a list, and the numbers are crunched in batches of
``FLUSH_EVERY`` requests, scheduled after the request that fills a batch has answered, and
when the figures are read. What arrives while ``MAX_PENDING`` requests wait is dropped and
counted. About 12 µs per observed request on this project's CPUs, so at most ~0.6% of one
CPU (perf/reports/2026-12-07-rollouts.md).

Configured per model by the config parameter ``drift``: ``on`` (reference = the first 1000
requests), ``reference=<N>`` or ``reference=<file>.npz``, and optionally ``,max_per_s=<N>``
(requests observed per second, default 500; 0 observes every request).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..protocol.errors import ModelLoadError

CONFIG_KEY = "drift"
DEFAULT_REFERENCE = 1000  # requests
BINS = 20
SAMPLE_ELEMENTS = 256  # per tensor and request
FLUSH_EVERY = 256  # requests
MAX_PENDING = 8192  # requests waiting to be counted
MAX_OBSERVED_PER_S = 500
EPSILON = 1e-4  # an empty bin's share in PSI


@dataclass(frozen=True, slots=True)
class DriftSpec:
    reference_requests: int = DEFAULT_REFERENCE
    reference_file: str = ""  # in the model folder; replaces the first requests as reference
    max_per_s: int = MAX_OBSERVED_PER_S  # 0: every request


def drift_spec(parameters: Mapping[str, str], where: str) -> DriftSpec | None:
    """The ``drift`` config parameter, or None when it is absent or off."""
    raw = parameters.get(CONFIG_KEY, "").strip()
    if not raw or raw.lower() in ("off", "false", "0"):
        return None
    spec = DriftSpec()
    for item in raw.split(","):
        key, _, value = (part.strip() for part in item.partition("="))
        if key.lower() in ("on", "true", "1") and not value:
            continue
        if key == "max_per_s" and value.isdigit():
            spec = replace(spec, max_per_s=int(value))
        elif key == "reference" and value.isdigit() and int(value) > 0:
            spec = replace(spec, reference_requests=int(value))
        elif (
            key == "reference"
            and value.endswith(".npz")
            and "/" not in value
            and "\\" not in value
            and not value.startswith(".")
        ):
            spec = replace(spec, reference_file=value)
        else:
            raise ModelLoadError(
                f"{where}: parameter 'drift' is '{raw}'; use on, reference=<N> or reference=<file>.npz, "
                "optionally with ,max_per_s=<N>"
            )
    return spec


def read_reference(model_dir: Path, spec: DriftSpec, where: str) -> dict[str, np.ndarray]:
    """The reference file's arrays by tensor name (empty without a file)."""
    if not spec.reference_file:
        return {}
    path = model_dir / spec.reference_file
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: _numeric(data[name]) for name in data.files if _numeric(data[name]).size}
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{where}: drift reference {path}: {e}") from None


def _numeric(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind not in "iuf":
        return np.empty(0)
    flat = np.asarray(a, dtype=np.float64).ravel()
    return flat[np.isfinite(flat)]


class TensorDrift:
    """One tensor's running moments, reference and current histograms."""

    __slots__ = ("kind", "count", "mean", "m2", "edges", "reference", "current", "half_life", "_ref_values")

    def __init__(self, kind: str, half_life: float) -> None:
        self.kind = kind  # "input" or "output"
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.edges: np.ndarray | None = None  # inner bin edges, once the reference is complete
        self.reference: np.ndarray | None = None  # bin shares of the reference
        self.current = np.zeros(0)
        self.half_life = half_life
        self._ref_values: list[np.ndarray] = []

    def set_reference(self, values: np.ndarray) -> None:
        self._ref_values = []
        if not values.size:
            return
        edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1]))
        self.edges = edges
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        self.reference = counts / counts.sum()
        self.current = np.zeros(len(edges) + 1)
        self.half_life = max(self.half_life, float(values.size))

    def add(self, values: np.ndarray, reference_complete: bool) -> None:
        n = values.size
        if not n:
            return
        # Chan et al.'s merge of the batch's moments into the running ones.
        mean = float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        if self.edges is None:
            self._ref_values.append(values)
            if reference_complete:
                self.set_reference(np.concatenate(self._ref_values))
            return
        counts = np.bincount(np.searchsorted(self.edges, values, side="right"), minlength=len(self.edges) + 1)
        self.current = self.current * 0.5 ** (n / self.half_life) + counts

    def figures(self) -> dict[str, Any]:
        std = math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0
        out: dict[str, Any] = {"kind": self.kind, "count": self.count, "mean": self.mean, "std": std}
        psi = ks = None
        out["reference_shares"] = out["current_shares"] = None
        if self.reference is not None:
            out["reference_shares"] = [round(float(x), 4) for x in self.reference]
        if self.reference is not None and self.current.sum() > 0:
            cur = self.current / self.current.sum()
            out["current_shares"] = [round(float(x), 4) for x in cur]
            ref = np.maximum(self.reference, EPSILON)
            c = np.maximum(cur, EPSILON)
            psi = float(((c - ref) * np.log(c / ref)).sum())
            ks = float(np.abs(np.cumsum(cur) - np.cumsum(self.reference)).max())
        out["psi"], out["ks"] = psi, ks
        return out


class DriftMonitor:
    """One model version's drift statistics, fed by the request path (``observe``)."""

    def __init__(self, spec: DriftSpec, reference: Mapping[str, np.ndarray] | None = None) -> None:
        self.spec = spec
        self.tensors: dict[str, TensorDrift] = {}
        self.requests = 0  # observed and counted
        self.seen = 0  # every request, observed or not
        self.dropped = 0
        self._second = 0.0  # when the current second of observation budget ends
        self._budget = 0
        self._pending: list[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]] = []
        self._scheduled = False
        self._reference = dict(reference or {})
        self.reference_complete = bool(self._reference)

    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """Called after a request answered: keep a small sample; counted later, in batches."""
        self.seen += 1
        if not self._budget and self.spec.max_per_s:
            now = time.monotonic()
            if now < self._second:
                return  # this second's sample is taken
            self._second, self._budget = now + 1.0, self.spec.max_per_s
        self._budget -= 1
        pending = self._pending
        if len(pending) >= MAX_PENDING:
            self.dropped += 1
            return
        pending.append((_sample(inputs), _sample(outputs)))
        if len(pending) >= FLUSH_EVERY and not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # called off a loop (tests): count now
                self.flush()
                return
            self._scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Count what is pending (called after a batch filled, and before figures are read)."""
        self._scheduled = False
        pending, self._pending = self._pending, []
        if not pending:
            return
        before = self.requests
        self.requests += len(pending)
        complete = self.reference_complete or self.requests >= self.spec.reference_requests
        if not self.reference_complete and complete:
            # The reference ends inside this batch: what comes before its last request is reference.
            cut = self.spec.reference_requests - before
            self._count(pending[:cut], True)
            self.reference_complete = True
            pending = pending[cut:]
        self._count(pending, self.reference_complete)

    def _count(self, items: list[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]], complete: bool) -> None:
        for kind, position in (("input", 0), ("output", 1)):
            names: dict[str, list[np.ndarray]] = {}
            for item in items:
                for name, values in item[position].items():
                    names.setdefault(name, []).append(values)
            for name, arrays in names.items():
                t = self.tensors.get(name)
                if t is None:
                    t = self.tensors[name] = TensorDrift(kind, float(self.spec.reference_requests))
                    if name in self._reference:
                        t.set_reference(self._reference[name])
                values = np.concatenate(arrays).astype(np.float64, copy=False)
                t.add(values[np.isfinite(values)], complete)

    def figures(self) -> dict[str, Any]:
        self.flush()
        return {
            "requests": self.requests,
            "seen": self.seen,
            "dropped": self.dropped,
            "reference": self.spec.reference_file or f"first {self.spec.reference_requests} requests",
            "reference_complete": self.reference_complete,
            "tensors": {name: t.figures() for name, t in sorted(self.tensors.items())},
        }


def _sample(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A strided sample of each numeric tensor, copied (inputs may be views of client memory)."""
    out = {}
    for name, a in tensors.items():
        if a.dtype.kind not in "iuf" or not a.size:
            continue
        flat = a.reshape(-1)
        step = -(-flat.size // SAMPLE_ELEMENTS)
        out[name] = flat[::step].copy() if step > 1 else flat.copy()
    return out
