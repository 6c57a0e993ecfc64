"""Shadow traffic: a copy of a share of a model's requests goes to a candidate version (of this
model, or another model with the same signature) whose answers are compared with the primary's
and never returned.

The copy is taken after the primary answered (``offer``, on the request path: a random draw
and a ``put_nowait``), into a bounded queue; what does not fit is dropped and counted. One
worker task runs the shadow requests one after another, and only on spare capacity: a copy
taken from the queue while the model has callers' requests in flight (``busy()``) waits until
a primary request finishes with none left in flight, at most ``MAX_WAIT_S`` (then it is
skipped and counted), so callers never queue behind a shadow request's compute; and after
each shadow request it rests ``1 / MAX_DUTY - 1`` times as long as that request took, so that
shadowing takes at most ``MAX_DUTY`` of the time even where "in flight" cannot tell (a model
whose short executions run inline on the event loop is never seen busy between requests).
Under saturation the shadow sees few requests; under light load, most. Comparison per (primary
version, shadow) pair: agreement rate (every output within ``tolerance``, or the same argmax
for classifiers), quantiles of the largest absolute difference, both latencies, both error
counts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..protocol.types import InferRequest
from .sketch import LogHistogram
from .traffic import ShadowSpec

log = logging.getLogger(__name__)

QUEUE_SIZE = 64
MAX_WAIT_S = 0.2  # for a moment without callers' requests in flight
MAX_DUTY = 0.05  # the share of the time the worker may spend on shadow requests
# Runs the shadow's request: (model, version, request) -> outputs; raises what the model raised.
ShadowCall = Callable[[str, int, InferRequest], Awaitable[Mapping[str, np.ndarray]]]


@dataclass
class PairStats:
    """What one primary version's answers and the shadow's have compared to so far."""

    mirrored: int = 0  # copies queued
    dropped: int = 0  # copies that found the queue full
    busy: int = 0  # copies skipped: callers' requests were in flight
    compared: int = 0
    agreed: int = 0
    primary_errors: int = 0  # requests of the primary that failed (no copy is made of them)
    shadow_errors: int = 0
    difference: LogHistogram = field(default_factory=lambda: LogHistogram(1e-9, 1e9, 10))
    primary_latency: LogHistogram = field(default_factory=LogHistogram)
    shadow_latency: LogHistogram = field(default_factory=LogHistogram)

    def figures(self) -> dict[str, Any]:
        def q(h: LogHistogram, p: float) -> float | None:
            return h.quantile(p)

        return {
            "mirrored": self.mirrored,
            "dropped": self.dropped,
            "skipped_busy": self.busy,
            "compared": self.compared,
            "agreed": self.agreed,
            "agreement": self.agreed / self.compared if self.compared else None,
            "difference": {
                "p50": q(self.difference, 0.5),
                "p90": q(self.difference, 0.9),
                "p99": q(self.difference, 0.99),
            },
            "primary_errors": self.primary_errors,
            "shadow_errors": self.shadow_errors,
            "primary_latency_s": {"p50": q(self.primary_latency, 0.5), "p99": q(self.primary_latency, 0.99)},
            "shadow_latency_s": {"p50": q(self.shadow_latency, 0.5), "p99": q(self.shadow_latency, 0.99)},
        }


class ShadowRunner:
    """The shadow of one model: its queue, worker and comparison statistics."""

    def __init__(
        self, model: str, spec: ShadowSpec, call: ShadowCall, busy: Callable[[], bool] = lambda: False
    ) -> None:
        self.model = model
        self._busy = busy
        self.spec = spec
        self.target = spec.target(model)
        self._call = call
        self.pairs: dict[int, PairStats] = {}
        self._queue: asyncio.Queue[tuple[int, InferRequest, Mapping[str, np.ndarray]]] = asyncio.Queue(QUEUE_SIZE)
        self._waiting = False  # the worker waits for spare capacity
        self._spare = asyncio.Event()
        self._workers = [asyncio.get_running_loop().create_task(self._run())]

    def pair(self, primary: int) -> PairStats:
        p = self.pairs.get(primary)
        if p is None:
            p = self.pairs[primary] = PairStats()
        return p

    def offer(self, primary: int, request: InferRequest, outputs: Mapping[str, np.ndarray], ns: int) -> None:
        """The primary answered ``request`` with ``outputs`` in ``ns``: maybe queue a copy."""
        if self._waiting and not self._busy():
            self._spare.set()
        if self.spec.share < 1.0 and random.random() >= self.spec.share:
            return
        p = self.pair(primary)
        p.primary_latency.add(ns / 1e9)
        if self._queue.full():
            p.dropped += 1
            return
        copy = InferRequest(
            self.spec.model or self.model,
            {n: a.copy() for n, a in request.inputs.items()},  # the caller may reuse its buffers
            str(self.spec.version),
            outputs=request.outputs,
        )
        self._queue.put_nowait((primary, copy, outputs))
        p.mirrored += 1

    def primary_failed(self, primary: int) -> None:
        if self.spec.share >= 1.0 or random.random() < self.spec.share:
            self.pair(primary).primary_errors += 1

    async def _run(self) -> None:
        while True:
            primary, request, expected = await self._queue.get()
            p = self.pair(primary)
            if self._busy() and not await self._wait_for_spare():
                p.busy += 1
                continue
            start = time.monotonic_ns()
            try:
                got = await self._call(request.model_name, self.spec.version, request)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                p.shadow_errors += 1
                log.debug("shadow %s failed: %s", self.target, e)
                continue
            p.shadow_latency.add((time.monotonic_ns() - start) / 1e9)
            agree, difference = compare(expected, got, self.spec)
            p.compared += 1
            p.agreed += agree
            p.difference.add(difference)
            # The rest is measured over the request and its comparison: both take the loop's time.
            await asyncio.sleep((time.monotonic_ns() - start) / 1e9 * (1 / MAX_DUTY - 1))

    async def _wait_for_spare(self) -> bool:
        self._waiting = True
        self._spare.clear()
        try:
            await asyncio.wait_for(self._spare.wait(), MAX_WAIT_S)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._waiting = False

    def close(self) -> None:
        for task in self._workers:
            task.cancel()

    def figures(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "share": self.spec.share,
            "compare": self.spec.compare,
            "tolerance": self.spec.tolerance,
            "queued": self._queue.qsize(),
            "pairs": {str(v): p.figures() for v, p in sorted(self.pairs.items())},
        }


def compare(expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], spec: ShadowSpec) -> tuple[bool, float]:
    """Whether two answers agree, and their largest absolute difference (inf when an output is
    missing or shaped differently)."""
    agree, worst = True, 0.0
    for name, a in expected.items():
        b = got.get(name)
        if b is None or b.shape != a.shape:
            return False, float("inf")
        if a.dtype.kind not in "iufb" or b.dtype.kind not in "iufb":
            same = bool(np.array_equal(a, b))
            agree &= same
            worst = max(worst, 0.0 if same else float("inf"))
            continue
        x, y = a.astype(np.float64), b.astype(np.float64)
        diff = float(np.max(np.abs(x - y))) if a.size else 0.0
        worst = max(worst, diff)
        if spec.compare == "argmax" and a.ndim:
            agree &= bool(np.array_equal(np.argmax(x, axis=-1), np.argmax(y, axis=-1)))
        else:
            agree &= bool(np.allclose(x, y, rtol=spec.tolerance, atol=spec.tolerance, equal_nan=True))
    return agree, worst
