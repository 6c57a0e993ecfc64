"""One worker per model instance: merges a batch, runs the backend off the event loop, splits.

Each worker owns a single-thread executor so that an instance never runs two executions at
once while different instances (and different models) run in parallel; frameworks release the
GIL inside their kernels, so the threads really overlap. The thread runs below the event loop's
priority (thread_priority.py) and builds its backend itself, so framework threads inherit that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeAlias

import numpy as np

from ...backends.base import Backend
from ...protocol.errors import InferdError, Internal
from ..stats import ExecutionTimes
from .open_batch import OpenBatch
from .thread_priority import lower_thread_priority, thread_nice
from .work import Work

# One request's outcome: its outputs, or the error that failed it alone.
Result: TypeAlias = dict[str, np.ndarray] | InferdError
# The hop to an instance thread and back costs ~50 µs of CPU and more of wall time (two thread
# wake-ups and the GIL changing hands), more than a small model's whole execution. So an
# instance allowed to (see loader.inline_execution) runs executions on the event loop while they
# are this short and their inputs this small.
#
# How short is measured twice, because each way misleads alone: on the thread, as the thread's
# CPU time (its wall time includes waiting for the GIL, which the loop holds while busy, so a
# 5 µs model can look like 200 µs); on the loop, as wall time (a backend whose calling thread
# waits, for an intra-op pool or anything else, shows it there). Once the loop's average is over
# the limit the instance stays on its thread; that average fades by a tenth with every threaded
# execution, so one unlucky inline sample is retried after a few, and a model that really is too
# slow on the loop runs there about once in twenty executions. Wall time on the loop also counts
# the times the kernel switched the loop thread out (under load on a shared CPU, several times a
# second), so a loop sample moves the average at most to twice itself: one preempted execution
# no longer sends the instance to its thread, a model that really slowed down gets there within
# a few executions.
INLINE_MAX_NS = 100_000
INLINE_MAX_BYTES = 64 * 1024
_EWMA = 0.2
_FADE = 0.9


def _average(old: float | None, new: int, clip: bool = False) -> float:
    if old is None:
        return float(new)
    if clip and new > 2 * old:
        new = int(2 * old)
    return old + _EWMA * (new - old)


def instance_executor(name: str, nice: int = 0) -> ThreadPoolExecutor:
    """The instance's one thread, ``nice`` steps below the default priority."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=partial(lower_thread_priority, nice))


class InstanceWorker:
    def __init__(
        self,
        backend: Backend,
        name: str,
        batching: bool,
        inline: bool = False,
        executor: ThreadPoolExecutor | None = None,
        nice_steps: int = 0,
    ) -> None:
        self.backend = backend
        self.name = name
        self.batching = batching
        self.executor = executor or instance_executor(name)
        self.inline = inline  # decided by the loader from the backend and the config
        self.nice_steps = nice_steps  # how far the thread runs below the loop's priority
        self.thread_cpu_ns: float | None = None  # moving average on the thread; None = unmeasured
        self.inline_wall_ns: float | None = None  # moving average on the loop
        self.executions = 0

    @classmethod
    def build(
        cls, factory: Callable[[], Backend], name: str, batching: bool, inline: bool = False, nice: int = 0
    ) -> InstanceWorker:
        """Start the instance's thread and build its backend on it (blocks until built)."""
        executor = instance_executor(name, nice)
        try:
            backend = executor.submit(factory).result()
            steps = executor.submit(thread_nice).result() - thread_nice()  # as applied, capped at 19
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(backend, name, batching, inline, executor, steps)

    def runs_inline(self, items: Sequence[Work]) -> bool:
        if not self.inline or self.thread_cpu_ns is None or self.thread_cpu_ns > INLINE_MAX_NS:
            return False
        if self.inline_wall_ns is not None and self.inline_wall_ns > INLINE_MAX_NS:
            return False
        return sum(w.nbytes() for w in items) <= INLINE_MAX_BYTES

    def execute_one_inline(self, work: Work) -> tuple[dict[str, np.ndarray], ExecutionTimes]:
        """One request on the event loop, the direct scheduler's fast path (``runs_inline`` said
        yes): the same execution as ``execute`` without a batch to merge or split. Raises
        InferdError when it fails."""
        if self.backend.takes_request_list:
            results, times = self.execute([work], inline=True)
            if isinstance(results[0], InferdError):
                raise results[0]
            return results[0], times
        t0 = time.monotonic_ns()
        produced = self._backend_execute(work.inputs, work.outputs)
        t1 = time.monotonic_ns()
        result = self._checked(produced, work.outputs, work.batch_size)
        t2 = time.monotonic_ns()
        self.executions += 1
        self.inline_wall_ns = _average(self.inline_wall_ns, t2 - t0, clip=True)
        return result, ExecutionTimes(work.batch_size, 0, t1 - t0, t2 - t1)

    async def run(self, items: Sequence[Work] | OpenBatch) -> tuple[list[Result], ExecutionTimes]:
        if self.runs_inline(items.items if isinstance(items, OpenBatch) else items):
            return self.execute(items, inline=True)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.execute, items)

    def execute(self, items: Sequence[Work] | OpenBatch, inline: bool = False) -> tuple[list[Result], ExecutionTimes]:
        """Runs on the instance thread, or on the event loop when ``inline``. Raises InferdError
        when the whole batch failed; a request-list backend may also fail single requests (an
        InferdError in its slot). An open batch is closed here, as its execution starts; the
        results then follow its final ``items`` (none when every member had expired)."""
        if isinstance(items, OpenBatch):
            items = items.close()
            if not items:
                return [], ExecutionTimes(0, 0, 0, 0)
        t0 = time.monotonic_ns()
        c0 = 0 if inline else time.thread_time_ns()
        done = self._execute_list(items) if self.backend.takes_request_list else self._execute_merged(items)
        self.executions += 1
        if inline:
            self.inline_wall_ns = _average(self.inline_wall_ns, time.monotonic_ns() - t0, clip=True)
        elif self.executions > 1:  # the first is cold (lazy initialisation, a new thread): no measure
            self.thread_cpu_ns = _average(self.thread_cpu_ns, time.thread_time_ns() - c0)
            if self.inline_wall_ns is not None:
                self.inline_wall_ns *= _FADE
        return done

    def _execute_merged(self, items: Sequence[Work]) -> tuple[list[Result], ExecutionTimes]:
        t0 = time.monotonic_ns()
        outputs = items[0].outputs
        if len(items) == 1:
            inputs = items[0].inputs  # zero-copy: the request's own arrays
            total = items[0].batch_size
        else:
            inputs = {name: np.concatenate([w.inputs[name] for w in items]) for name in items[0].inputs}
            total = sum(w.batch_size for w in items)
        t1 = time.monotonic_ns()
        produced = self._backend_execute(inputs, outputs)
        t2 = time.monotonic_ns()
        arrays = self._checked(produced, outputs, total)
        results: list[Result] = [arrays] if len(items) == 1 else self._split(items, arrays)
        t3 = time.monotonic_ns()
        return results, ExecutionTimes(total, t1 - t0, t2 - t1, t3 - t2)

    def _backend_execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        try:
            return self.backend.execute(inputs, outputs)
        except InferdError:
            raise
        except Exception as e:
            raise Internal(f"{self.name}: backend execution failed: {type(e).__name__}: {e}") from e

    def _checked(self, produced: dict[str, np.ndarray], outputs: list[str], total: int) -> dict[str, np.ndarray]:
        """The requested outputs as arrays; with batching, each must have the batch's ``total`` rows."""
        try:
            arrays = {n: np.asarray(produced[n]) for n in outputs}
        except KeyError:
            missing = [n for n in outputs if n not in produced]
            raise Internal(f"{self.name}: backend did not produce output(s) {missing}") from None
        if self.batching:
            for n, a in arrays.items():
                if a.ndim == 0 or a.shape[0] != total:
                    raise Internal(
                        f"{self.name}: output '{n}' has shape {list(a.shape)} but the batch has {total} rows"
                    )
        return arrays

    def _execute_list(self, items: Sequence[Work]) -> tuple[list[Result], ExecutionTimes]:
        total = sum(w.batch_size for w in items)
        t1 = time.monotonic_ns()
        try:
            produced = self.backend.execute_requests([w.inputs for w in items], items[0].outputs)
        except InferdError:
            raise
        except Exception as e:
            raise Internal(f"{self.name}: backend execution failed: {type(e).__name__}: {e}") from e
        t2 = time.monotonic_ns()
        if len(produced) != len(items):
            raise Internal(f"{self.name}: backend returned {len(produced)} responses for {len(items)} requests")
        results: list[Result] = []
        for w, r in zip(items, produced):
            if isinstance(r, InferdError):
                results.append(r)
            elif isinstance(r, Exception):
                results.append(Internal(f"{self.name}: {type(r).__name__}: {r}"))
            else:
                missing = [n for n in w.outputs if n not in r]
                if missing:
                    results.append(Internal(f"{self.name}: response has no output(s) {missing}"))
                else:
                    results.append({n: np.asarray(r[n]) for n in w.outputs})
        t3 = time.monotonic_ns()
        return results, ExecutionTimes(total, 0, t2 - t1, t3 - t2)

    @staticmethod
    def _split(items: Sequence[Work], arrays: dict[str, np.ndarray]) -> list[Result]:
        results: list[Result] = []
        start = 0
        for w in items:
            end = start + w.batch_size
            results.append({n: a[start:end] for n, a in arrays.items()})  # views, no copy
            start = end
        return results

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.backend.unload()
