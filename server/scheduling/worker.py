"""One worker per model instance: merges a batch, runs the backend off the event loop, splits.

Each worker owns a single-thread executor so that an instance never runs two executions at
once while different instances (and different models) run in parallel; frameworks release the
GIL inside their kernels, so the threads really overlap.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from ...backends.base import Backend
from ..errors import InferdError, Internal
from ..stats import ExecutionTimes
from .work import Work


class InstanceWorker:
    def __init__(self, backend: Backend, name: str, batching: bool) -> None:
        self.backend = backend
        self.name = name
        self.batching = batching
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, items: Sequence[Work]) -> tuple[list[dict[str, np.ndarray]], ExecutionTimes]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.execute, items)

    def execute(self, items: Sequence[Work]) -> tuple[list[dict[str, np.ndarray]], ExecutionTimes]:
        """Runs on the instance thread. Raises InferdError for the whole batch."""
        t0 = time.monotonic_ns()
        if len(items) == 1:
            inputs = items[0].inputs  # zero-copy: the request's own arrays
            outputs = items[0].outputs
        else:
            inputs = {
                name: np.concatenate([w.inputs[name] for w in items]) for name in items[0].inputs
            }
            outputs = items[0].outputs
        total = sum(w.batch_size for w in items)
        t1 = time.monotonic_ns()
        try:
            produced = self.backend.execute(inputs, outputs)
        except InferdError:
            raise
        except Exception as e:
            raise Internal(f"{self.name}: backend execution failed: {type(e).__name__}: {e}") from e
        t2 = time.monotonic_ns()
        missing = [n for n in outputs if n not in produced]
        if missing:
            raise Internal(f"{self.name}: backend did not produce output(s) {missing}")
        results = self._split(items, produced, outputs, total)
        t3 = time.monotonic_ns()
        return results, ExecutionTimes(total, t1 - t0, t2 - t1, t3 - t2)

    def _split(
        self, items: Sequence[Work], produced: dict[str, np.ndarray], outputs: list[str], total: int
    ) -> list[dict[str, np.ndarray]]:
        arrays = {n: np.asarray(produced[n]) for n in outputs}
        if not self.batching:
            return [arrays]
        for n, a in arrays.items():
            if a.ndim == 0 or a.shape[0] != total:
                raise Internal(
                    f"{self.name}: output '{n}' has shape {list(a.shape)} but the batch has {total} rows"
                )
        if len(items) == 1:
            return [arrays]
        results = []
        start = 0
        for w in items:
            end = start + w.batch_size
            results.append({n: a[start:end] for n, a in arrays.items()})  # views, no copy
            start = end
        return results

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.backend.unload()
