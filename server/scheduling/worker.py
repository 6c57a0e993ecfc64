"""One worker per model instance: runs a batch where its placement decides, merges, splits.

Each worker owns a thread (instance_thread.py) so that an instance never runs two executions
at once while different instances (and different models) run in parallel; frameworks release
the GIL inside their kernels, so the threads really overlap. The thread runs below the event
loop's priority (thread_priority.py) and builds its backend itself, so framework threads inherit
that. Short executions of an instance allowed to may run on the event loop instead (placement.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeAlias

import numpy as np

from ...backends.base import Backend
from ...protocol.errors import InferdError, Internal
from ...protocol.streaming import Streamed
from ...protocol.types import ModelOutputs
from ..stats import ExecutionTimes
from . import gc_policy
from .instance_thread import InstanceThread
from .load import ServerLoad, current
from .open_batch import OpenBatch
from .placement import ExecutionPlacement
from .ragged import RaggedBatching
from .thread_priority import lower_thread_priority, thread_nice
from .work import Work

# One request's outcome: its outputs, or the error that failed it alone.
Result: TypeAlias = dict[str, np.ndarray] | InferdError
# An execution's outcome: one result per request that ran, in order, and its times.
Executed: TypeAlias = tuple[list[Result], ExecutionTimes]
# What a scheduler hands a worker: requests, or a batch still open to more (open_batch.py).
Batch: TypeAlias = Sequence[Work] | OpenBatch


def instance_executor(name: str, nice: int = 0) -> InstanceThread:
    """The instance's one thread, ``nice`` steps below the default priority."""
    return InstanceThread(name, initializer=partial(lower_thread_priority, nice))


class InstanceWorker:
    def __init__(
        self,
        backend: Backend,
        name: str,
        batching: bool,
        inline: bool = False,
        executor: InstanceThread | None = None,
        nice_steps: int = 0,
        single_cpu: bool = False,
    ) -> None:
        self.backend = backend
        self.name = name
        self.batching = batching
        self.executor = executor or instance_executor(name)
        self.placement = ExecutionPlacement(inline, single_cpu)
        self.nice_steps = nice_steps  # how far the thread runs below the loop's priority
        self.executions = 0
        # Set by the loader for a model with ragged inputs, batch inputs or batch outputs.
        self.ragged: RaggedBatching | None = None
        self._load: ServerLoad | None = None  # the server's, from the first run on its loop

    @classmethod
    def build(
        cls,
        factory: Callable[[], Backend],
        name: str,
        batching: bool,
        inline: bool | None = False,
        nice: int = 0,
        single_cpu: bool = False,
    ) -> InstanceWorker:
        """Start the instance's thread and build its backend on it (blocks until built).
        ``inline`` None leaves running on the loop to the built backend's ``inline_safe``;
        ``single_cpu``: see placement.py."""
        executor = instance_executor(name, nice)
        try:
            backend = executor.submit(factory).result()
            steps = executor.submit(thread_nice).result() - thread_nice()  # as applied, capped at 19
        except BaseException:
            executor.shutdown(wait=False)
            raise
        gc_policy.models_loaded()
        allowed = backend.inline_safe if inline is None else inline
        return cls(backend, name, batching, allowed, executor, steps, single_cpu)

    @property
    def inline(self) -> bool:
        """Whether the loader allowed executions on the event loop at all."""
        return self.placement.inline_allowed

    def run(self, batch: Batch) -> Executed | asyncio.Future[Executed]:
        """Execute ``batch``, the one way every scheduler runs work. Where it runs is the
        placement's decision (with the server's load, when the request is its only one): on the
        event loop, returning the outcome before anything else runs, or on the instance thread,
        returning a future of it. Raises (or the future does)
        InferdError when the whole batch failed; a request-list backend may also fail single
        requests (an InferdError in its slot). An open batch is closed as its execution starts;
        the results then follow its final ``items`` (none when every member had expired)."""
        done = self.run_inline(batch)
        if done is not None:
            return done
        return self.executor.run_async(self._execute, batch)

    def run_inline(self, batch: Batch, alone_only: bool = False) -> Executed | None:
        """``batch`` executed on the event loop where the placement puts it there (see ``run``);
        None, and nothing run, where it belongs on the instance thread. ``alone_only``: only
        while its request is the server's only one (load.py)."""
        items = batch.items if isinstance(batch, OpenBatch) else batch
        if not alone_only and self.placement.on_loop(items):
            return self._execute(batch, on_loop=True)
        load = self._load
        if load is None:
            load = self._load = current()
        calls = load.alone()
        if calls is not None and self.placement.on_loop_alone(items):
            try:
                return self._execute(batch, on_loop=True)
            finally:
                load.arrived_since(calls)
        return None

    def run_on_thread(self, batch: Sequence[Work]) -> asyncio.Future[Executed]:
        """Execute ``batch`` on the instance thread whatever the placement says: for work that
        must never hold the event loop however quick each execution is (warmup runs many)."""
        return self.executor.run_async(self._execute, batch)

    def _execute(self, batch: Batch, on_loop: bool = False) -> Executed:
        if isinstance(batch, OpenBatch):
            batch = batch.close()
            if not batch:
                return [], ExecutionTimes(0, 0, 0, 0)
        t0 = time.monotonic_ns()
        c0 = 0 if on_loop else time.thread_time_ns()
        done = self._execute_list(batch) if self.backend.takes_request_list else self._execute_merged(batch)
        self.executions += 1
        if on_loop:
            self.placement.ran_on_loop(time.monotonic_ns() - t0)
        else:
            self.placement.ran_on_thread(time.thread_time_ns() - c0)
        return done

    def _execute_merged(self, items: Sequence[Work]) -> tuple[list[Result], ExecutionTimes]:
        t0 = time.monotonic_ns()
        outputs = items[0].outputs
        ragged = self.ragged
        if ragged is not None:  # flat ragged inputs and computed batch inputs (ragged.py)
            inputs = ragged.merge(items)
            total = sum(w.batch_size for w in items)
        elif len(items) == 1:
            inputs = items[0].inputs  # zero-copy: the request's own arrays
            total = items[0].batch_size
        else:
            inputs = {name: np.concatenate([w.inputs[name] for w in items]) for name in items[0].inputs}
            total = sum(w.batch_size for w in items)
        t1 = time.monotonic_ns()
        produced = self._backend_execute(inputs, outputs)
        t2 = time.monotonic_ns()
        results: list[Result]
        if ragged is not None:
            results = list(ragged.split(self.name, items, produced, outputs, total))
        else:
            arrays = self._checked(produced, outputs, total)
            results = [arrays] if len(items) == 1 else self._split(items, arrays)
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
            infos = [w.info for w in items] if any(w.info is not None for w in items) else None
            produced = self.backend.execute_requests([w.inputs for w in items], items[0].outputs, infos)
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
                try:  # a request-list backend answers arrays already
                    picked = {n: r[n] for n in w.outputs}
                except KeyError:
                    if type(r) is Streamed:  # decoupled: the responses go through the request's channel
                        results.append({})
                        continue
                    missing = [n for n in w.outputs if n not in r]
                    results.append(Internal(f"{self.name}: response has no output(s) {missing}"))
                    continue
                # Response parameters a Python model set travel with its outputs.
                results.append(ModelOutputs(picked, r.parameters) if type(r) is ModelOutputs else picked)
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
        gc_policy.models_unloaded()
