"""The sequence batcher, for stateful models (``sequence_batching``), with Triton's semantics.

Every request names its sequence by a correlation id (``sequence_id``, an unsigned integer or a
string) and marks the sequence's first and last request (``sequence_start``, ``sequence_end``).
A sequence is bound to one *slot* of one instance for its life; each instance has
``max(1, max_batch_size)`` slots with the direct strategy, ``max_candidate_sequences`` with the
oldest. A START for an unknown sequence takes the free slot with the lowest index (so batches
stay dense), or waits in a bounded backlog, in arrival order, until a slot frees; a request of
a sequence the server does not know, without START, is refused. Requests of one sequence run in
order, one at a time. The slot is released after the END request has run, or once the sequence
has had nothing queued or running for ``max_sequence_idle_microseconds``.

The server adds the model's control inputs to each request (sequence_controls.py) and its
implicit state: a sequence's state inputs are fed from what its previous request's state
outputs returned (the initial state at START), kept per slot and dropped when the slot is
released. The per-instance execution strategies live in sequence_strategies.py.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from ...protocol.errors import InvalidArgument, Unavailable
from ...protocol.model_spec import ModelSpec, SequenceBatching
from ...protocol.types import ModelOutputs, RequestInfo
from ..sequence_config import initial_states
from ..stats import ExecutionTimes, ModelStats
from .base import Scheduler
from .direct import DEFAULT_MAX_QUEUE
from .sequence_controls import FLAG_END, FLAG_START, Controls, CorrId, sequence_parameters
from .work import Work
from .worker import InstanceWorker

log = logging.getLogger(__name__)

MAX_BACKLOG = DEFAULT_MAX_QUEUE  # requests of sequences waiting for a slot, all together
MAX_SLOT_QUEUE = DEFAULT_MAX_QUEUE  # requests queued behind one sequence's running one


@dataclass(slots=True, eq=False)
class Step:
    """One request of a sequence, from admission until it has run (or was dropped)."""

    work: Work
    corr: CorrId
    flags: int
    future: asyncio.Future[dict[str, np.ndarray]]

    def dead(self) -> bool:
        """Its client went away, or its deadline passed (then it is answered with that error)."""
        if self.future.done():
            return True
        deadline = self.work.deadline_ns
        return deadline is not None and time.monotonic_ns() >= deadline


class Strategy(Protocol):
    """An instance's way of running the requests queued in its slots (sequence_strategies.py)."""

    slots: list[Slot]

    def added(self, slot: Slot) -> None:
        """Requests were appended to ``slot.queue``."""

    async def stop(self) -> None:
        """Stop running; the scheduler fails whatever is still queued."""


@dataclass(slots=True, eq=False)
class Slot:
    """One batch slot of one instance, held by one sequence at a time."""

    strategy: Strategy
    instance: int
    index: int
    queue: deque[Step] = field(default_factory=deque)
    corr: CorrId | None = None  # the sequence holding the slot; None while free
    state: dict[str, np.ndarray] | None = None  # implicit state: state input name -> tensor
    pending: int = 0  # requests queued or running for the slot's sequence
    last_ns: int = 0  # when the slot last had something to do
    timer: asyncio.TimerHandle | None = None

    def order(self) -> tuple[int, int]:
        return (self.index, self.instance)


@dataclass(slots=True, eq=False)
class _Backlog:
    corr: CorrId
    steps: deque[Step]


class SequenceBatchScheduler(Scheduler):
    def __init__(
        self,
        workers: Sequence[InstanceWorker],
        stats: ModelStats,
        label: str,
        spec: ModelSpec,
        model_dir: Path | None = None,
    ) -> None:
        super().__init__(workers, stats, label)
        from .sequence_strategies import make_strategy  # they build on this module's types

        config = spec.sequence_batching
        assert config is not None
        self.config: SequenceBatching = config
        self.model = spec.name
        self.max_batch_size = spec.max_batch_size
        self.batched = spec.max_batch_size > 0
        self.controls = Controls(config, self.batched)
        self.initial = initial_states(config, self.batched, model_dir, label)
        self.state_outputs = {s.output_name: s.input_name for s in config.state}
        # Executions compute every output (and the state outputs), so that requests asking for
        # different outputs still batch; each client gets the outputs it asked for.
        names = [o.name for o in spec.output]
        self.exec_outputs = names + [n for n in self.state_outputs if n not in names]
        self.idle_ns = config.max_sequence_idle_microseconds * 1000
        self._loop = asyncio.get_running_loop()
        self._live: dict[CorrId, Slot] = {}  # sequences holding a slot
        self._waiting: dict[CorrId, _Backlog] = {}  # sequences (not yet ended) in the backlog
        self._backlogs: deque[_Backlog] = deque()
        self._backlogged = 0
        self.strategies = [make_strategy(self, w, i) for i, w in enumerate(self.workers)]
        self._free: list[tuple[tuple[int, int], Slot]] = [(s.order(), s) for st in self.strategies for s in st.slots]
        heapq.heapify(self._free)

    # --- admission ------------------------------------------------------------------------
    async def _run(self, work: Work) -> dict[str, np.ndarray]:
        params = work.info.parameters if work.info is not None else {}
        corr, flags = sequence_parameters(params)
        self.controls.check(corr, self.model)
        if self.batched and work.batch_size > 1:
            raise InvalidArgument(
                f"inference request to model '{self.model}' must specify batch-size 1 due to requirements "
                "of sequence batcher"
            )
        if corr == 0 or corr == "":
            raise InvalidArgument(
                f"inference request to model '{self.model}' must specify a non-zero or non-empty correlation ID"
            )
        step = Step(work, corr, flags, self._loop.create_future())
        self._admit(step)
        return await step.future

    def _admit(self, step: Step) -> None:
        corr, start, end = step.corr, step.flags & FLAG_START, step.flags & FLAG_END
        slot = self._live.get(corr)
        backlog = self._waiting.get(corr)
        if not start and slot is None and backlog is None:
            raise InvalidArgument(
                f"inference request for sequence {corr} to model '{self.model}' must specify the START flag "
                "on the first request of the sequence"
            )
        if start and (slot is not None or backlog is not None):
            log.warning(
                "sequence %s for model '%s' has a conflict. The previous sequence did not end before this "
                "sequence start. Previous sequence will be terminated early.",
                corr,
                self.model,
            )
        if slot is not None:
            if len(slot.queue) >= MAX_SLOT_QUEUE:
                raise Unavailable(f"{self.label}: sequence {corr} has {MAX_SLOT_QUEUE} requests queued already")
            if end:
                del self._live[corr]
            self._to_slot(slot, [step])
            return
        if backlog is None and self._free:
            _, slot = heapq.heappop(self._free)
            slot.corr = corr
            if not end:
                self._live[corr] = slot
            self._to_slot(slot, [step])
            return
        if self._backlogged >= MAX_BACKLOG:
            raise Unavailable(
                f"{self.label}: exceeds maximum queue size: {MAX_BACKLOG} requests of sequences are waiting "
                "for a free sequence slot"
            )
        if backlog is None:
            backlog = _Backlog(corr, deque())
            self._backlogs.append(backlog)
            if not end:
                self._waiting[corr] = backlog
        elif end:
            del self._waiting[corr]
        backlog.steps.append(step)
        self._backlogged += 1

    def _to_slot(self, slot: Slot, steps: list[Step]) -> None:
        slot.queue.extend(steps)
        slot.pending += len(steps)
        slot.last_ns = time.monotonic_ns()
        slot.strategy.added(slot)

    # --- what an execution gets -----------------------------------------------------------
    def prepare(self, slot: Slot, step: Step) -> Work:
        """The request as the model runs it: its inputs, the control inputs and the slot's
        state; every output requested."""
        w = step.work
        inputs = dict(w.inputs)
        inputs.update(self.controls.inputs(step.flags, step.corr))
        if self.initial:
            if slot.state is None or step.flags & FLAG_START:
                slot.state = dict(self.initial)
            inputs.update(slot.state)
        info = w.info
        return Work(
            inputs,
            self.exec_outputs,
            w.batch_size,
            w.enqueue_ns,
            None,
            deadline_ns=w.deadline_ns,
            client_deadline=w.client_deadline,
            info=RequestInfo(correlation_id=step.corr, flags=step.flags)
            if info is None
            else replace(info, correlation_id=step.corr, flags=step.flags),
        )

    def null_work(self, like: Work, client_inputs: Mapping[str, np.ndarray]) -> Work:
        """A batch slot without a request, as Triton fills one: zeros shaped like ``like``'s
        client inputs, READY (and START, END) false, CORRID 0, and ``like``'s state tensors
        (so the batch's shapes agree; its state outputs are thrown away)."""
        inputs = {n: _zeros_like(a) for n, a in client_inputs.items()}
        inputs.update(self.controls.not_ready)
        for name in self.initial:
            inputs[name] = like.inputs[name]
        return Work(inputs, self.exec_outputs, 1, like.enqueue_ns, None, info=RequestInfo())

    def answer(self, slot: Slot, step: Step, result: dict[str, np.ndarray]) -> bool:
        """Keep the state outputs of a request that ran and answer its client (if still there);
        False when it had gone."""
        if self.state_outputs and not step.flags & FLAG_END:
            slot.state = {inp: result[out] for out, inp in self.state_outputs.items()}
        if step.future.done():
            return False
        info = step.work.info
        if info is not None and info.responses is not None:  # decoupled: its responses went out already
            step.future.set_result(result)
        else:
            picked = {n: result[n] for n in step.work.outputs}
            # A Python model's response parameters stay with its outputs.
            if isinstance(result, ModelOutputs):
                picked = ModelOutputs(picked, result.parameters)
            step.future.set_result(picked)
        return True

    def fail(self, step: Step, error: BaseException) -> None:
        if not step.future.done():
            step.future.set_exception(error)

    def drop(self, slot: Slot, step: Step) -> None:
        """A queued request that will not run: its client went away, or its deadline passed."""
        if not step.future.done():
            step.future.set_exception(step.work.expired_error(self.label, "in the queue"))
        self.done(slot, step)

    def record(self, times: ExecutionTimes, inferences: int) -> None:
        self.stats.record_execution(times, inferences)

    # --- slot lifecycle -------------------------------------------------------------------
    def done(self, slot: Slot, step: Step) -> None:
        """``step`` has run (or was dropped): release the slot after END, else watch for idleness."""
        slot.pending -= 1
        slot.last_ns = time.monotonic_ns()
        if step.flags & FLAG_END:
            self._release(slot)
        elif slot.pending == 0 and slot.timer is None and slot.corr is not None:
            slot.timer = self._loop.call_later(self.idle_ns / 1e9, self._check_idle, slot)

    def _check_idle(self, slot: Slot) -> None:
        slot.timer = None
        if slot.corr is None or slot.pending:
            return  # released, or busy: done() arms the timer again once it is idle
        left = slot.last_ns + self.idle_ns - time.monotonic_ns()
        if left > 0:
            slot.timer = self._loop.call_later(left / 1e9, self._check_idle, slot)
            return
        log.debug("%s: sequence %s idle for %d us: released", self.label, slot.corr, self.idle_ns // 1000)
        if self._live.get(slot.corr) is slot:
            del self._live[slot.corr]
        self._release(slot)

    def _release(self, slot: Slot) -> None:
        """The slot's sequence ended: drop its state and give the slot to the oldest sequence
        in the backlog, or free it."""
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        slot.state = None
        while slot.queue:  # never after END or when idle; fail rather than lose them
            self.fail(slot.queue.popleft(), Unavailable(f"{self.label}: the sequence's slot was released"))
        slot.pending = 0
        while self._backlogs:
            backlog = self._backlogs.popleft()
            self._backlogged -= len(backlog.steps)
            live = [s for s in backlog.steps if not s.future.done()]
            mapped = self._waiting.get(backlog.corr) is backlog
            if mapped:
                del self._waiting[backlog.corr]
            if not live:  # every client of it went away: the sequence is forgotten
                continue
            slot.corr = backlog.corr
            if mapped:
                self._live[backlog.corr] = slot
            self._to_slot(slot, live)
            return
        slot.corr = None
        heapq.heappush(self._free, (slot.order(), slot))

    def occupancy(self) -> dict[str, int]:
        """What the scheduler holds now: sequences in slots and in the backlog, slots in use,
        and slots keeping a state (for tests and debugging)."""
        slots = [slot for st in self.strategies for slot in st.slots]
        return {
            "live": len(self._live),
            "backlog": len(self._backlogs),
            "slots_in_use": sum(1 for slot in slots if slot.corr is not None),
            "states": sum(1 for slot in slots if slot.state is not None),
        }

    # --- stopping -------------------------------------------------------------------------
    async def _stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.strategies), return_exceptions=True)
        error = Unavailable(f"{self.label} was unloaded")
        for strategy in self.strategies:
            for slot in strategy.slots:
                if slot.timer is not None:
                    slot.timer.cancel()
                    slot.timer = None
                while slot.queue:
                    self.fail(slot.queue.popleft(), error)
                slot.state = None
        for backlog in self._backlogs:
            for step in backlog.steps:
                self.fail(step, error)
        self._backlogs.clear()
        self._waiting.clear()
        self._live.clear()


def _zeros_like(a: np.ndarray) -> np.ndarray:
    if a.dtype == object:
        return np.full(a.shape, b"", dtype=object)
    return np.zeros(a.shape, a.dtype)
