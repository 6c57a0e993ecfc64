"""How one instance of a sequence model runs the requests queued in its slots (sequence.py).

* **direct**: a task per instance forms one batch at a time from the front request of each slot,
  slot ``i`` in row ``i``, from slot 0 up to the last slot with a request; a slot without one (or
  whose request cannot merge with the shapes of the oldest front request) gets a request with
  READY false, as Triton fills it. With ``max_queue_delay_microseconds`` and ``minimum_slot_utilization`` both
  set, a batch waits until that share of the slots has a request or its oldest request has
  waited the delay. The next batch is formed once the previous one has run, so a sequence's
  requests run one at a time, in order.
* **oldest**: each slot (a candidate sequence) hands its front request to a dynamic batcher of
  the instance (batcher.py, with ``preferred_batch_size``, ``max_queue_delay_microseconds`` and
  ``preserve_ordering``) and its next one only after that one has run, so batches are made of
  the oldest requests of different sequences.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ...protocol.errors import InferdError, Internal, Unavailable, internal_error
from ...protocol.model_spec import DynamicBatching
from .batcher import DynamicBatcher
from .sequence import SequenceBatchScheduler, Slot, Step, Strategy
from .work import Work
from .worker import InstanceWorker


def make_strategy(owner: SequenceBatchScheduler, worker: InstanceWorker, instance: int) -> Strategy:
    config = owner.config
    if config.oldest is not None:
        return OldestStrategy(owner, worker, instance)
    return DirectStrategy(owner, worker, instance)


def _client_error(e: Exception, label: str) -> InferdError:
    """What a request's client is told of ``e``: a model's own error (an InferdError) as it is, as
    Triton passes it on; a server fault, logged once with its traceback, as "internal error"."""
    return e if isinstance(e, InferdError) else Internal(f"{label}: {internal_error(e, label)}")


def _key(work: Work) -> tuple[Any, ...]:
    """Requests share a batch only when their inputs have the same names, dtypes and row shapes."""
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(work.inputs.items()))


class DirectStrategy:
    def __init__(self, owner: SequenceBatchScheduler, worker: InstanceWorker, instance: int) -> None:
        self.owner = owner
        self.worker = worker
        direct = owner.config.direct
        self.rows = max(1, owner.max_batch_size)
        self.delay_ns = direct.max_queue_delay_microseconds * 1000 if direct else 0
        self.min_utilization = direct.minimum_slot_utilization if direct else 0.0
        self.slots = [Slot(self, instance, i) for i in range(self.rows)]
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def added(self, slot: Slot) -> None:
        self._wakeup.set()

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _serve(self) -> None:
        while True:
            members = await self._form()
            try:
                await self._execute(members)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug here must not stop the instance: answer and go on
                error = _client_error(e, self.owner.label)
                for slot, step in members:
                    if step is not None and not step.future.done():
                        self.owner.fail(step, error)
                        self.owner.done(slot, step)

    def _front(self, slot: Slot) -> Step | None:
        """The slot's next request that will run; requests that will not are answered and dropped."""
        while slot.queue:
            step = slot.queue[0]
            if not step.dead():
                return step
            slot.queue.popleft()
            self.owner.drop(slot, step)  # may release the slot and fill it from the backlog
        return None

    async def _form(self) -> list[tuple[Slot, Step | None]]:
        while True:
            first: Step | None = None
            ready = 0
            last = -1
            oldest = 0
            for slot in self.slots:
                step = self._front(slot)
                if step is None:
                    continue
                # The batch takes the shapes of the oldest front request: a slot whose shapes
                # differ from the others' runs once its request is the oldest, never starved.
                if first is None or step.work.enqueue_ns < oldest:
                    first, oldest = step, step.work.enqueue_ns
                ready += 1
                last = slot.index
            if first is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.delay_ns and self.min_utilization:
                waited = time.monotonic_ns() - oldest
                if waited <= self.delay_ns and ready / self.rows < self.min_utilization:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), (self.delay_ns - waited) / 1e9)
                    except asyncio.TimeoutError:
                        pass
                    continue
            key = _key(first.work)
            members: list[tuple[Slot, Step | None]] = []
            for slot in self.slots[: last + 1]:
                front = slot.queue[0] if slot.queue else None
                if front is not None and (front is first or _key(front.work) == key):
                    members.append((slot, slot.queue.popleft()))
                else:
                    members.append((slot, None))
            return members

    async def _execute(self, members: list[tuple[Slot, Step | None]]) -> None:
        owner = self.owner
        works = [None if step is None else owner.prepare(slot, step) for slot, step in members]
        real = next(w for w in works if w is not None)
        client = next(step for _, step in members if step is not None).work.inputs
        batch = [w if w is not None else owner.null_work(real, client) for w in works]
        started = time.monotonic_ns()
        try:
            ran = self.worker.run(batch)
            results, times = ran if isinstance(ran, tuple) else await ran
        except asyncio.CancelledError:
            for _, step in members:
                if step is not None:
                    owner.fail(step, Unavailable(f"{owner.label} was unloaded"))
            raise
        except Exception as e:  # never leave a request without an answer
            error = _client_error(e, owner.label)
            for slot, step in members:
                if step is not None:
                    owner.fail(step, error)
                    owner.done(slot, step)
            return
        # Triton counts the rows of requests as inferences, and the whole batch in its statistics.
        owner.record(times, sum(step.work.batch_size for _, step in members if step is not None))
        for (slot, step), result in zip(members, results):
            if step is None:
                continue
            if isinstance(result, InferdError):
                owner.fail(step, result)
            elif owner.answer(slot, step, result):
                owner.record_success(step.work, times, started)
            owner.done(slot, step)


class OldestStrategy:
    def __init__(self, owner: SequenceBatchScheduler, worker: InstanceWorker, instance: int) -> None:
        self.owner = owner
        oldest = owner.config.oldest
        assert oldest is not None
        count = oldest.max_candidate_sequences or max(1, owner.max_batch_size)
        self.slots = [Slot(self, instance, i) for i in range(count)]
        self._running: set[Slot] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False
        batching = DynamicBatching(
            preferred_batch_size=oldest.preferred_batch_size,
            max_queue_delay_microseconds=oldest.max_queue_delay_microseconds,
            preserve_ordering=oldest.preserve_ordering,
        )
        # Without a batch dimension each request runs alone.
        self.batcher = DynamicBatcher([worker], owner.stats, owner.label, max(1, owner.max_batch_size), batching)

    def added(self, slot: Slot) -> None:
        while slot.queue and slot not in self._running and not self._stopped:
            step = slot.queue.popleft()
            if step.dead():
                self.owner.drop(slot, step)  # may release the slot and refill it (calling added)
                continue
            self._running.add(slot)
            task = asyncio.get_running_loop().create_task(self._dispatch(slot, step))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, slot: Slot, step: Step) -> None:
        owner = self.owner
        try:
            result = await self.batcher.submit(owner.prepare(slot, step))
        except InferdError as e:
            owner.fail(step, e)
        except asyncio.CancelledError:
            owner.fail(step, Unavailable(f"{owner.label} was unloaded"))
            raise
        except Exception as e:  # a server fault: the model's own errors are InferdErrors
            owner.fail(step, _client_error(e, owner.label))
        else:
            owner.answer(slot, step, result)  # the dynamic batcher counted it already
        finally:
            self._running.discard(slot)
            owner.done(slot, step)
        self.added(slot)

    async def stop(self) -> None:
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.batcher._stop()
