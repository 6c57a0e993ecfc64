"""Ensembles (``platform: "ensemble"``): a DAG of composing models run in-process.

Each step is an ordinary request to its composing model through the ``ModelCaller`` injected
at load (the request path the front ends use), so it goes through that model's own scheduler
(dynamic batching applies across ensemble and direct traffic), and tensors pass between steps
as the same numpy arrays, never serialised. A step starts as soon as all of its inputs exist,
so independent branches run concurrently. Each step's request carries the ensemble request's
priority, correlation id and START/END flags, as in Triton, so a step may be a sequence model.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..protocol.caller import ModelCaller
from ..protocol.errors import Cancelled, InferdError, ModelLoadError, Unimplemented
from ..protocol.pb import model_config_pb2 as mc
from ..protocol.types import InferRequest, InferResponse, Scalar
from .config import Signature, TensorSpec
from .scheduling.base import Scheduler
from .scheduling.sequence_controls import FLAG_END, FLAG_START, sequence_parameters
from .scheduling.work import Work
from .stats import ExecutionTimes, ModelStats


@dataclass(frozen=True)
class Step:
    index: int
    model_name: str
    model_version: str  # "" = the composing model's latest ready version
    inputs: dict[str, str]  # composing model input -> ensemble tensor
    outputs: dict[str, str]  # composing model output -> ensemble tensor

    @property
    def label(self) -> str:
        return f"step {self.index} ('{self.model_name}')"


@dataclass(frozen=True)
class EnsemblePlan:
    steps: list[Step]
    producers: dict[str, Step]  # ensemble tensor -> the step that makes it
    # ensemble_scheduling.max_inflight_requests: per request, the most requests each step has
    # running at once (0: no bound). Only a decoupled step's flows can reach it.
    max_inflight: int = 0

    @property
    def dependencies(self) -> list[str]:
        return sorted({s.model_name for s in self.steps})


def plan_ensemble(config: mc.ModelConfig, source: str) -> EnsemblePlan:
    """Check the DAG's structure: producers, consumers, outputs and cycles."""
    if not config.HasField("ensemble_scheduling") or not config.ensemble_scheduling.step:
        raise ModelLoadError(f"{source}: an ensemble needs 'ensemble_scheduling' with at least one step")
    steps = []
    for i, s in enumerate(config.ensemble_scheduling.step):
        if not s.model_name:
            raise ModelLoadError(f"{source}: ensemble step {i} has no 'model_name'")
        version = "" if s.model_version <= 0 else str(s.model_version)
        steps.append(Step(i, s.model_name, version, dict(s.input_map), dict(s.output_map)))
    ensemble_inputs = {t.name for t in config.input}
    producers: dict[str, Step] = {}
    for step in steps:
        for tensor in step.outputs.values():
            if tensor in ensemble_inputs:
                raise ModelLoadError(f"{source}: {step.label} writes '{tensor}', which is an ensemble input")
            if tensor in producers:
                raise ModelLoadError(
                    f"{source}: tensor '{tensor}' is produced by both {producers[tensor].label} and {step.label}"
                )
            producers[tensor] = step
    for step in steps:
        for model_input, tensor in step.inputs.items():
            if tensor not in ensemble_inputs and tensor not in producers:
                raise ModelLoadError(
                    f"{source}: {step.label} input '{model_input}' reads tensor '{tensor}', which no step "
                    "produces and which is not an ensemble input"
                )
    for t in config.output:
        if t.name not in producers:
            raise ModelLoadError(f"{source}: ensemble output '{t.name}' is not produced by any step")
    _check_acyclic(steps, producers, source)
    return EnsemblePlan(steps, producers, config.ensemble_scheduling.max_inflight_requests)


def _check_acyclic(steps: list[Step], producers: dict[str, Step], source: str) -> None:
    state: dict[int, int] = {}  # 1 = on the current path, 2 = done

    def visit(step: Step, path: list[Step]) -> None:
        if state.get(step.index) == 2:
            return
        if state.get(step.index) == 1:
            cycle = " -> ".join(s.label for s in path[path.index(step) :] + [step])
            raise ModelLoadError(f"{source}: the ensemble steps form a cycle: {cycle}")
        state[step.index] = 1
        for tensor in step.inputs.values():
            if tensor in producers:
                visit(producers[tensor], path + [step])
        state[step.index] = 2

    for step in steps:
        visit(step, [])


def check_types(
    config: mc.ModelConfig,
    plan: EnsemblePlan,
    ensemble: Signature,
    signature_of: Callable[[Step], Signature],
    source: str,
) -> None:
    """Check every producer/consumer pair against the composing models' signatures."""
    typed: dict[str, tuple[TensorSpec, str]] = {n: (s, "ensemble input") for n, s in ensemble.inputs.items()}
    sigs = {step.index: signature_of(step) for step in plan.steps}
    for step in plan.steps:
        sig = sigs[step.index]
        if ensemble.max_batch_size > 0 and sig.max_batch_size == 0:
            raise ModelLoadError(f"{source}: {step.label} does not batch (max_batch_size 0) but the ensemble does")
        for model_output, tensor in step.outputs.items():
            if model_output not in sig.outputs:
                raise ModelLoadError(
                    f"{source}: {step.label} maps output '{model_output}', which the model does not have"
                )
            typed[tensor] = (sig.outputs[model_output], f"{step.label} output '{model_output}'")
        for model_input in step.inputs:
            if model_input not in sig.inputs:
                raise ModelLoadError(
                    f"{source}: {step.label} maps input '{model_input}', which the model does not have"
                )
    pairs = [
        (step.inputs[i], sigs[step.index].inputs[i], f"{step.label} input '{i}'")
        for step in plan.steps
        for i in step.inputs
    ]
    pairs += [(t, s, f"ensemble output '{t}'") for t, s in ensemble.outputs.items()]
    for tensor, consumer, what in pairs:
        producer, made_by = typed[tensor]
        if producer.datatype is not consumer.datatype:
            raise ModelLoadError(
                f"{source}: tensor '{tensor}' is {producer.datatype.name} ({made_by}) but {what} expects {consumer.datatype.name}"
            )
        if not _dims_compatible(producer.dims, consumer.dims):
            raise ModelLoadError(
                f"{source}: tensor '{tensor}' has dims {list(producer.dims)} ({made_by}) but {what} expects {list(consumer.dims)}"
            )


def _dims_compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))


@dataclass(frozen=True)
class DecoupledLayout:
    """Where an ensemble's decoupled steps put the others, as Triton does it: every response of
    a decoupled step starts a *flow* of its own, in which the steps that read what that step
    makes run once. A step's *scope* is the decoupled step whose flows it runs in (None: once
    per request); the ensemble's outputs all come from one scope, and every completed flow of
    that scope is one response of the ensemble."""

    decoupled: frozenset[int]  # the decoupled steps' indices
    scope: dict[int, int | None]  # step index -> the decoupled step whose flows run it
    output_scope: int | None  # the flows whose completion is a response


def decoupled_layout(
    config: mc.ModelConfig, plan: EnsemblePlan, decoupled: Callable[[Step], bool], source: str
) -> DecoupledLayout | None:
    """The flows of an ensemble with decoupled steps (None without: it answers once). Refused,
    as by Triton ("receives inputs originated from different decoupled models"): a step, or the
    ensemble's outputs, reading tensors of different flows (of two decoupled steps, or of one
    and of the request itself), which could not be paired."""
    found = frozenset(s.index for s in plan.steps if decoupled(s))
    if not found:
        return None
    origin: dict[str, int | None] = {t.name: None for t in config.input}  # ensemble tensor -> its flows

    def joined(reads: list[str], reader: str) -> int | None:
        scopes: dict[int | None, str] = {}
        for tensor in reads:
            scopes.setdefault(origin[tensor], tensor)
        if len(scopes) > 1:
            (a, ta), (b, tb) = list(scopes.items())[:2]
            raise ModelLoadError(
                f"{source}: {reader} '{ta}' ({_flows(plan, a)}) and '{tb}' ({_flows(plan, b)}), which "
                "cannot be paired: what reads a decoupled step's outputs runs once per response of it, with "
                "what that response's flow makes only (Triton refuses this too: inputs originated from "
                "different decoupled models)"
            )
        return next(iter(scopes), None)

    scope: dict[int, int | None] = {}
    for step in _in_order(plan):
        scope[step.index] = joined(list(step.inputs.values()), f"{step.label} reads")
        made = step.index if step.index in found else scope[step.index]
        for tensor in step.outputs.values():
            origin[tensor] = made
    output_scope = joined([t.name for t in config.output], "the ensemble's outputs are")
    return DecoupledLayout(found, scope, output_scope)


def _flows(plan: EnsemblePlan, scope: int | None) -> str:
    if scope is None:
        return "made once per request"
    return f"made once per response of the decoupled {plan.steps[scope].label}"


def _in_order(plan: EnsemblePlan) -> list[Step]:
    """The steps, each after the steps making its inputs (the plan is acyclic)."""
    ordered: list[Step] = []
    seen: set[int] = set()

    def visit(step: Step) -> None:
        if step.index in seen:
            return
        seen.add(step.index)
        for tensor in step.inputs.values():
            if tensor in plan.producers:
                visit(plan.producers[tensor])
        ordered.append(step)

    for step in plan.steps:
        visit(step)
    return ordered


def ensemble_scheduler(
    plan: EnsemblePlan, caller: ModelCaller, stats: ModelStats, label: str, layout: DecoupledLayout | None
) -> EnsembleScheduler:
    """The scheduler of an ensemble: one answer per request, or (with decoupled steps) a stream."""
    if layout is None:
        return EnsembleScheduler(plan, caller, stats, label)
    return DecoupledEnsembleScheduler(plan, caller, stats, label, layout)


class EnsembleScheduler(Scheduler):
    """Runs one ensemble request as a DAG of composing-model requests."""

    counts_in_load = False  # its steps' requests count instead

    def __init__(self, plan: EnsemblePlan, caller: ModelCaller, stats: ModelStats, label: str) -> None:
        super().__init__([], stats, label)
        self.plan = plan
        self.caller = caller

    async def _run(self, work: Work) -> dict[str, np.ndarray]:
        started = time.monotonic_ns()
        tensors: dict[str, np.ndarray] = dict(work.inputs)
        waiting = list(self.plan.steps)
        running: dict[asyncio.Future[InferResponse], Step] = {}
        params = self._step_parameters(work)
        trace = work.trace
        step_traces: dict[int, Any] = {}  # each step's child span, while tracing this request
        if trace is not None:
            trace.composite = True
        try:
            while waiting or running:
                if waiting and work.deadline_ns is not None and time.monotonic_ns() >= work.deadline_ns:
                    raise work.expired_error(self.label, f"before {waiting[0].label}")
                for step in [s for s in waiting if all(t in tensors for t in s.inputs.values())]:
                    waiting.remove(step)
                    request = InferRequest(
                        step.model_name,
                        {i: tensors[t] for i, t in step.inputs.items()},
                        step.model_version,
                        outputs=list(step.outputs),
                        parameters=dict(params),
                        deadline_ns=work.deadline_ns,
                    )
                    if trace is not None:
                        request.trace = step_traces[step.index] = trace.step(
                            step.model_name, step.model_version, step.index, request.inputs
                        )
                    running[asyncio.ensure_future(self.caller.infer(request))] = step
                if not running:
                    raise ModelLoadError(f"{self.label}: steps {[s.label for s in waiting]} can never run")
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = running.pop(task)
                    try:
                        response = task.result()
                    except InferdError as e:
                        if trace is not None:
                            step_traces.pop(step.index).end(error=e.message)
                        raise type(e)(f"{self.label}: {step.label} failed: {e.message}", e.code) from None
                    if trace is not None:
                        step_traces.pop(step.index).end(response.model_version, response.outputs)
                    for model_output, tensor in step.outputs.items():
                        tensors[tensor] = response.outputs[model_output]
        finally:
            for task in running:
                task.cancel()  # a failed or cancelled request schedules no further steps
            for step_trace in step_traces.values():
                step_trace.end(error="cancelled: the ensemble request ended first")
        outputs = {name: tensors[name] for name in work.outputs}
        elapsed = time.monotonic_ns() - started
        times = ExecutionTimes(work.batch_size, 0, elapsed, 0)
        self.stats.record_execution(times)
        self.record_success(work, times, started)
        return outputs

    @staticmethod
    def _step_parameters(work: Work) -> dict[str, Scalar]:
        """What every step's request carries of the ensemble request, as in Triton: its priority,
        and its correlation id and START/END flags, so that a step may be a sequence model."""
        params: dict[str, Scalar] = {"priority": work.priority} if work.priority else {}
        if work.info is not None and work.info.parameters:
            corr, flags = sequence_parameters(work.info.parameters)
            if corr != 0 and corr != "":
                params["sequence_id"] = corr
            if flags & FLAG_START:
                params["sequence_start"] = True
            if flags & FLAG_END:
                params["sequence_end"] = True
        return params


class _Flow:
    """The tensors of one flow: the request's own (scope None), or one response of a decoupled
    step's and what the steps of its scope make of them. None: an output a step did not send."""

    __slots__ = ("scope", "tensors", "waiting", "parameters", "answered")

    def __init__(
        self,
        scope: int | None,
        tensors: dict[str, np.ndarray | None],
        waiting: list[Step],
        parameters: dict[str, Scalar],
    ) -> None:
        self.scope = scope
        self.tensors = tensors
        self.waiting = waiting
        self.parameters = parameters  # the decoupled response's, passed on with the flow's answer
        self.answered = False


class _Call:
    """One step's request in one flow, running: a composing-model call, or the next response of
    a decoupled step's stream (``stream`` set; ``ended``: its final flag came, only the end of
    the iteration is awaited)."""

    __slots__ = ("flow", "step", "span", "stream", "ended")

    def __init__(self, flow: _Flow, step: Step, span: Any, stream: AsyncGenerator[InferResponse, None] | None) -> None:
        self.flow = flow
        self.step = step
        self.span = span
        self.stream = stream
        self.ended = False


async def _next(stream: AsyncGenerator[InferResponse, None]) -> InferResponse:
    return await stream.__anext__()


# Closing a decoupled step's stream whose next response was taken but not yet read.
_closing: set[asyncio.Task[None]] = set()


def _close_later(stream: AsyncGenerator[InferResponse, None] | None) -> None:
    if stream is None:  # a step's one response, not a stream
        return
    closing = asyncio.ensure_future(stream.aclose())
    _closing.add(closing)
    closing.add_done_callback(_closing.discard)


class DecoupledEnsembleScheduler(EnsembleScheduler):
    """An ensemble with decoupled steps, run as Triton runs it (see ``DecoupledLayout``): the
    ensemble is decoupled, each completed flow of the output scope is sent, as it completes, to
    the request's response channel, and the final flag follows once the decoupled steps sent
    theirs and every flow they started finished (on the last response, or alone). An error, in
    any step of any flow or as a decoupled step's error response, fails the request: no further
    flows, the running ones cancelled, as a failure of a plain ensemble's step does.

    With ``max_inflight_requests`` (``plan.max_inflight``), a step already running that many
    requests for this request takes the next flow that reaches it only when one of them ends
    (in the order they came); while any flow waits so, no decoupled step's next response is
    read, and a decoupled step's model that sends from its own threads finds at most that many
    responses waiting, past which its send waits: the faster upstream model is paused, as in
    Triton, and what the request holds stays bounded."""

    def __init__(
        self, plan: EnsemblePlan, caller: ModelCaller, stats: ModelStats, label: str, layout: DecoupledLayout
    ) -> None:
        super().__init__(plan, caller, stats, label)
        self.layout = layout
        self._steps_of: dict[int | None, list[Step]] = {}
        for step in plan.steps:
            self._steps_of.setdefault(layout.scope[step.index], []).append(step)

    async def _run(self, work: Work) -> dict[str, np.ndarray]:
        channel = work.info.responses if work.info is not None else None
        if channel is None:
            raise Unimplemented(f"{self.label} is decoupled (it has decoupled steps): it answers only on a stream")
        started = time.monotonic_ns()
        params = self._step_parameters(work)
        trace = work.trace
        if trace is not None:
            trace.composite = True
        wanted = work.outputs
        layout = self.layout
        done: asyncio.Queue[asyncio.Future[Any]] = asyncio.Queue()
        running: dict[asyncio.Future[Any], _Call] = {}
        busy = 0  # step calls running or waiting for room, and decoupled streams before their final flag
        answers: list[tuple[dict[str, np.ndarray], dict[str, Scalar]]] = []
        bound = self.plan.max_inflight
        inflight = [0] * len(self.plan.steps)  # step index -> its requests running
        parked: dict[int, deque[_Flow]] = {}  # step index -> flows waiting for room at it
        paused: list[_Call] = []  # decoupled streams not read while a flow of theirs is parked

        def start(flow: _Flow) -> None:
            """Run the flow's steps whose inputs it has; note its answer once it has the outputs."""
            nonlocal busy
            tensors = flow.tensors
            for step in [s for s in flow.waiting if all(t in tensors for t in s.inputs.values())]:
                flow.waiting.remove(step)
                busy += 1
                if bound and inflight[step.index] >= bound:
                    parked.setdefault(step.index, deque()).append(flow)
                else:
                    launch(flow, step)
            if flow.scope == layout.output_scope and not flow.answered and all(t in tensors for t in wanted):
                flow.answered = True
                answers.append(({t: a for t in wanted if (a := tensors[t]) is not None}, flow.parameters))

        def launch(flow: _Flow, step: Step) -> None:
            if work.deadline_ns is not None and time.monotonic_ns() >= work.deadline_ns:
                raise work.expired_error(self.label, f"before {step.label}")
            tensors = flow.tensors
            request = InferRequest(
                step.model_name,
                {i: a for i, t in step.inputs.items() if (a := tensors[t]) is not None},
                step.model_version,
                outputs=list(step.outputs),
                parameters=dict(params),
                deadline_ns=work.deadline_ns,
                response_window=bound,
            )
            span = None
            if trace is not None:
                request.trace = span = trace.step(step.model_name, step.model_version, step.index, request.inputs)
            inflight[step.index] += 1
            if step.index in layout.decoupled:
                stream = self.caller.infer_stream(request)
                arm(_Call(flow, step, span, stream))
            else:
                call = asyncio.ensure_future(self.caller.infer(request))
                running[call] = _Call(flow, step, span, None)
                call.add_done_callback(done.put_nowait)

        def blocked(step: Step) -> bool:
            """Whether a flow made of a response of decoupled ``step`` waits for room."""
            return any(s.index in parked for s in self._steps_of.get(step.index, ()))

        def ended(step: Step) -> None:
            """One of ``step``'s requests ended: the next flow parked at it runs, and the paused
            decoupled streams none of whose flows is still parked are read again."""
            inflight[step.index] -= 1
            waiting = parked.get(step.index)
            if waiting:
                launch(waiting.popleft(), step)
                if not waiting:
                    del parked[step.index]
            if paused:
                still = []
                for call in paused:
                    if blocked(call.step):
                        still.append(call)
                    else:
                        arm(call)
                paused[:] = still

        def arm(call: _Call) -> None:
            assert call.stream is not None
            task = asyncio.ensure_future(_next(call.stream))
            running[task] = call
            task.add_done_callback(done.put_nowait)

        def failed(call: _Call, e: InferdError) -> InferdError:
            if call.span is not None:
                call.span.end(error=e.message)
                call.span = None
            return type(e)(f"{self.label}: {call.step.label} failed: {e.message}", e.code)

        def finished(call: _Call, flow: _Flow) -> None:
            """A step of ``call.flow`` made ``flow``'s tensors: run what now can."""
            nonlocal busy
            if call.span is not None:
                call.span.end(call.step.model_version, {})
                call.span = None
            busy -= 1
            ended(call.step)
            start(flow)

        sent_final = False
        try:
            start(_Flow(None, dict(work.inputs), list(self._steps_of.get(None, ())), {}))
            while running:
                batch = [await done.get()]  # what completed: handled together, in completion order
                while not done.empty():
                    batch.append(done.get_nowait())
                for task in batch:
                    call = running.pop(task)
                    step = call.step
                    if call.stream is None:  # a step's one response
                        try:
                            response = task.result()
                        except InferdError as e:
                            raise failed(call, e) from None
                        if call.span is not None:
                            call.span.end(response.model_version, response.outputs)
                            call.span = None
                        for model_output, tensor in step.outputs.items():
                            call.flow.tensors[tensor] = response.outputs.get(model_output)
                        busy -= 1
                        ended(step)
                        start(call.flow)
                        continue
                    try:
                        r = task.result()
                    except StopAsyncIteration:
                        if not call.ended:  # the final flag came alone
                            finished(call, call.flow)
                        continue
                    except InferdError as e:
                        raise failed(call, e) from None
                    if call.ended:
                        continue
                    if r.error is not None:  # as in Triton, a decoupled step's error response fails the request
                        raise failed(call, r.error)
                    flow = _Flow(
                        step.index,
                        {tensor: r.outputs.get(model_output) for model_output, tensor in step.outputs.items()},
                        list(self._steps_of.get(step.index, ())),
                        dict(r.parameters),
                    )
                    call.ended = r.final
                    if r.final:
                        finished(call, flow)
                    else:
                        start(flow)
                    # The next response, or (after the final flag) the end of the stream; not
                    # while a flow of this step's waits for room (max_inflight_requests). A
                    # step whose flows do not wait (one that is itself at the bound) goes on:
                    # its ending is what makes room.
                    if parked and blocked(step):
                        paused.append(call)
                    else:
                        arm(call)
                last = len(answers) - 1
                for i, (outputs, parameters) in enumerate(answers):
                    channel.send(outputs, parameters, final=busy == 0 and i == last)
                if busy == 0 and not sent_final:
                    if not answers:
                        channel.send(None, final=True)
                    sent_final = True
                answers.clear()
                if channel.cancelled:  # the client left: no further flows, the running ones cancelled
                    raise Cancelled(f"{self.label}: the request was cancelled")
        finally:
            for call in paused:  # taken out of ``running`` with their last response: close them
                _close_later(call.stream)
            for task, call in running.items():
                if not task.done():
                    task.cancel()  # a running step's request, or a decoupled step's stream, cancelled
                    continue
                if not task.cancelled():
                    task.exception()  # seen: a failure it ended with is the request's no more
                # A stream whose response was taken, not read: close it (cancels that step's request).
                _close_later(call.stream)
                if call.span is not None:
                    call.span.end(error="cancelled: the ensemble request ended first")
        elapsed = time.monotonic_ns() - started
        times = ExecutionTimes(work.batch_size, 0, elapsed, 0)
        self.stats.record_execution(times)
        self.record_success(work, times, started)
        return {}
