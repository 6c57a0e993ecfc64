"""The dynamic batcher: merges queued requests into batches, following Triton's documented rules.

* Each instance has a task that forms a batch whenever it is free, so batches grow naturally
  while instances are busy; ``max_queue_delay_microseconds`` (measured from the oldest queued
  request) lets a free instance wait for more, on a timer precise to tens of microseconds that
  costs no CPU while it runs (precise_timer.py).
* A batch is sent at once when it reaches ``max_batch_size`` or a ``preferred_batch_size``;
  otherwise when the oldest request has waited the maximum delay.
* Only requests with the same non-batch shapes, dtypes, inputs and outputs merge; a ragged
  input's shape may differ (ragged.py).
* A batch handed to an instance whose thread runs well below the loop's priority stays open to
  newly admitted requests that fit until its execution starts (open_batch.py); not with
  ``preferred_batch_size``, whose sizes are kept.
* A request that is the server's only one, finding the batcher idle (nothing queued or running,
  no delay, no ordering to keep), is the batch its instance's task would form at once: where
  it runs on the event loop (placement.py) it runs there in the request's own step, as the
  direct scheduler runs it, without the hop to that task.
* Priority levels (1 = highest) each have a bounded queue and a queue policy; expired requests
  are rejected by a timer the moment they expire (or, with ``timeout_action: DELAY``, moved
  behind the requests that have not expired). Cancelled requests leave the queue at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np

from ...protocol.errors import InferdError, InvalidArgument, Unavailable
from ...protocol.model_spec import DynamicBatching, QueuePolicy
from ..stats import ExecutionTimes, ModelStats
from .base import Scheduler
from .direct import DEFAULT_MAX_QUEUE
from .open_batch import OPEN_BATCH_MIN_NICE, OpenBatch
from .precise_timer import PreciseTimer
from .work import Work
from .worker import InstanceWorker, Result

log = logging.getLogger(__name__)

# A queue delay's timer is armed this much early: waking the loop from idle takes about as
# long, so the batch leaves near the delay's end instead of that much after it (the delay is a
# maximum; perf/timer_precision.py measures it).
TIMER_LEAD_NS = 50_000


class _Level:
    def __init__(self, policy: QueuePolicy) -> None:
        self.max_size = policy.max_queue_size or DEFAULT_MAX_QUEUE
        # Triton's 0 is unbounded; inferd keeps a server-wide cap and says so when it is hit.
        self.cap_note = "" if policy.max_queue_size else " (the server's cap: the config sets no max_queue_size)"
        self.timeout_ns = policy.default_timeout_microseconds * 1000
        self.delay_on_timeout = policy.timeout_action == "DELAY"
        self.allow_override = policy.allow_timeout_override
        self.ready: deque[Work] = deque()
        self.delayed: deque[Work] = deque()

    def __len__(self) -> int:
        return len(self.ready) + len(self.delayed)


class DynamicBatcher(Scheduler):
    def __init__(
        self,
        workers: Sequence[InstanceWorker],
        stats: ModelStats,
        label: str,
        max_batch_size: int,
        config: DynamicBatching,
    ) -> None:
        super().__init__(workers, stats, label)
        self.max_batch_size = max_batch_size
        self.preferred = sorted(set(config.preferred_batch_size))
        self.max_delay_ns = config.max_queue_delay_microseconds * 1000
        self.preserve_ordering = config.preserve_ordering
        n_levels = max(config.priority_levels, 1)
        self.default_level = config.default_priority_level or n_levels
        self.levels: dict[int, _Level] = {}
        for level in range(1, n_levels + 1):
            self.levels[level] = _Level(config.queue_policy(level))
        self._order = [self.levels[i] for i in sorted(self.levels)]
        self._queued = 0
        self._open: list[OpenBatch] = []  # handed to instances, not yet started; newest last
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._timer = PreciseTimer(self._loop, self._wakeup.set)
        self._last_done: asyncio.Future[None] | None = None
        # Ragged inputs do not keep requests of different shapes apart (ragged.py).
        self._ragged = self.workers[0].ragged if self.workers else None
        self._tasks = [self._loop.create_task(self._serve(w)) for w in self.workers]

    # --- accepting work -----------------------------------------------------------------
    async def _run(self, work: Work) -> dict[str, np.ndarray]:
        loop = self._loop  # asyncio.get_running_loop() costs a getpid() system call per request
        level_no = work.priority or self.default_level
        level = self.levels.get(level_no)
        if level is None:
            raise InvalidArgument(f"{self.label}: priority {work.priority} is not a configured level")
        if len(level) >= level.max_size:
            raise Unavailable(
                f"{self.label}: exceeds maximum queue size ({level.max_size}){level.cap_note} at priority {level_no}"
            )
        if level.timeout_ns and (work.deadline_ns is None or not level.allow_override):
            if work.set_deadline(work.enqueue_ns + level.timeout_ns, client=False):
                work.timeout_action_delay = level.delay_on_timeout
        work.future = loop.create_future()
        work.level = level_no
        if self._ragged is not None:
            work.key = self._ragged.batch_key(work)
        if self._idle() and self._run_now(work):
            return await work.future  # settled already (or, expired at its start, on the next step)
        # Only with nothing queued: an older request must not be passed by a newer one. Only the
        # newest open batch: with preserve_ordering, responses leave in the order batches left.
        if not (self._queued == 0 and self._open and self._open[-1].join(work)):
            work.queued = True
            level.ready.append(work)
            self._queued += 1
            if work.deadline_ns is not None:
                delay = (work.deadline_ns - time.monotonic_ns()) / 1e9
                work.timer = loop.call_later(max(delay, 0.0), self._expire, work)
            self._wakeup.set()
        try:
            return await work.future
        except asyncio.CancelledError:
            self._remove(work)  # a cancelled client's request never runs
            raise

    def _idle(self) -> bool:
        """Whether the one instance's task would take a request arriving now as a batch of its
        own, at once: nothing queued, no batch open or running, no delay to wait out for more,
        and no order to keep with a batch still being answered."""
        return (
            self._queued == 0
            and not self._open
            and not self.max_delay_ns
            and not self.preserve_ordering
            and len(self.workers) == 1
        )

    def _run_now(self, work: Work) -> bool:
        """While idle, and ``work`` is the server's only request (load.py): ``work`` alone,
        executed here when it runs on the event loop (placement.py), as the instance's task
        would have run it but without the hop to that task; its future is settled on return.
        False, with nothing run, otherwise. Not under load: requests that arrive together must
        still meet in the queue, where the instance's task batches them."""
        batch = OpenBatch([work], work.batch_size, work.batch_size, self._expired_at_start)
        try:
            ran = self.workers[0].run_inline(batch, alone_only=True)
        except Exception as e:
            self._settle(batch, None, self._failure(e))
            return True
        if ran is None:
            return False
        self._settle(batch, ran, None)
        return True

    def _remove(self, work: Work) -> None:
        if not work.queued:
            for batch in self._open:
                if batch.withdraw(work):
                    break
            return
        level = self.levels[work.level]
        (level.delayed if work.delayed else level.ready).remove(work)
        self._dequeued(work)

    def _dequeued(self, work: Work) -> None:
        work.queued = False
        self._queued -= 1
        if work.timer is not None:
            work.timer.cancel()
            work.timer = None

    def _expire(self, work: Work) -> None:
        work.timer = None
        if not work.queued:
            return
        level = self.levels[work.level]
        if work.timeout_action_delay and not work.delayed:
            level.ready.remove(work)
            work.delayed = True
            level.delayed.append(work)
            return
        self._remove(work)
        self._reject_expired([work])

    # --- forming batches ----------------------------------------------------------------
    def _candidates(self) -> Iterator[Work]:
        for level in self._order:
            yield from level.ready
        for level in self._order:
            yield from level.delayed

    def _plan(self) -> tuple[list[Work], bool, int]:
        """Pick the next batch from the queue head: (requests, send now?, oldest enqueue_ns)."""
        chosen: list[Work] = []
        rows = 0
        key = None
        best_preferred = 0
        oldest = 0
        for w in self._candidates():
            if key is None:
                key = w.batch_key()
                oldest = w.enqueue_ns
            elif w.batch_key() != key:
                continue
            if rows + w.batch_size > self.max_batch_size:
                if chosen:
                    return chosen, True, oldest
                continue
            chosen.append(w)
            rows += w.batch_size
            oldest = min(oldest, w.enqueue_ns)
            if rows == self.max_batch_size:
                return chosen, True, oldest
            if rows in self.preferred:
                best_preferred = len(chosen)
        if best_preferred:
            return chosen[:best_preferred], True, oldest
        return chosen, self.max_delay_ns == 0, oldest

    async def _next_batch(self) -> list[Work]:
        while True:
            if self._queued == 0:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, now_ok, oldest = self._plan()
            wait_ns = oldest + self.max_delay_ns - time.monotonic_ns()
            if now_ok or wait_ns <= TIMER_LEAD_NS or self._closed:
                for w in batch:
                    level = self.levels[w.level]
                    (level.delayed if w.delayed else level.ready).remove(w)
                    self._dequeued(w)
                return batch
            self._wakeup.clear()
            self._timer.arm(oldest + self.max_delay_ns - TIMER_LEAD_NS)
            await self._wakeup.wait()

    def _reject_expired(self, expired: list[Work]) -> None:
        for w in expired:
            if w.future is not None and not w.future.done():
                w.future.set_exception(w.expired_error(self.label, "in the queue"))

    def _expired_at_start(self, expired: list[Work]) -> None:
        """OpenBatch's callback, usually on the instance thread: answer on the loop at once."""
        self._loop.call_soon_threadsafe(self._reject_expired, expired)

    async def _serve(self, worker: InstanceWorker) -> None:
        loop = asyncio.get_running_loop()
        while True:
            live = [w for w in await self._next_batch() if w.future is not None and not w.future.done()]
            if not live:
                continue
            rows = sum(w.batch_size for w in live)
            joinable = not self.preferred and worker.nice_steps >= OPEN_BATCH_MIN_NICE
            batch = OpenBatch(live, rows, self.max_batch_size if joinable else rows, self._expired_at_start)
            self._open.append(batch)
            prev, done = self._last_done, loop.create_future()
            self._last_done = done
            try:
                ran = worker.run(batch)
                results, times = ran if isinstance(ran, tuple) else await ran
            except asyncio.CancelledError:
                self._reject_members(batch.close(), Unavailable(f"{self.label} was unloaded"))
                raise
            except Exception as e:
                outcome: BaseException | None = self._failure(e)
            else:
                outcome = None
            finally:
                self._open.remove(batch)
            batch.close()  # the members that ran (closed already unless run() failed early)
            if self.preserve_ordering and prev is not None:
                await asyncio.shield(prev)
            self._settle(batch, (results, times) if outcome is None else None, outcome)
            done.set_result(None)

    def _failure(self, error: Exception) -> Exception:
        """A failed execution's outcome for its members (call it in the ``except`` block): an
        InferdError as it is; anything else too, logged with its traceback, since a server
        fault must still answer every request."""
        if not isinstance(error, InferdError):
            log.exception("%s: batch failed", self.label)
        return error

    def _settle(
        self, batch: OpenBatch, ran: tuple[list[Result], ExecutionTimes] | None, outcome: BaseException | None
    ) -> None:
        """Answer the members of an executed batch: all with ``outcome``, the failure of the
        whole execution, or else each with its result from ``ran``."""
        live = batch.close()  # closed already: the members that ran
        if outcome is not None:
            self._reject_members(live, outcome)
            return
        assert ran is not None
        results, times = ran
        if live:  # else every member had expired by the start
            self.stats.record_execution(times)
        started = batch.started_ns
        for w, r in zip(live, results):
            if w.future is None or w.future.done():
                continue
            if isinstance(r, InferdError):
                w.future.set_exception(r)
            else:
                self.record_success(w, times, started)
                w.future.set_result(r)

    @staticmethod
    def _reject_members(members: list[Work], error: BaseException) -> None:
        for w in members:
            if w.future is not None and not w.future.done():
                w.future.set_exception(error)

    async def _stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._timer.close()
        queued = list(itertools.chain.from_iterable(lv.ready + lv.delayed for lv in self._order))
        for w in queued:
            self._remove(w)
        self._reject_members(queued, Unavailable(f"{self.label} was unloaded"))
