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
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..protocol.caller import ModelCaller
from ..protocol.errors import InferdError, ModelLoadError
from ..protocol.pb import model_config_pb2 as mc
from ..protocol.streaming import ResponseChannel
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
    return EnsemblePlan(steps, producers)


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


def streamed_step(
    config: mc.ModelConfig, plan: EnsemblePlan, decoupled: Callable[[Step], bool], source: str
) -> Step | None:
    """The ensemble's decoupled step, if any: its responses are the ensemble's, so it must be
    the last step (no step reads what it makes) and make every ensemble output. Triton also
    runs the steps after a decoupled one once per response; inferd does not yet."""
    found = [s for s in plan.steps if decoupled(s)]
    if not found:
        return None
    if len(found) > 1:
        raise ModelLoadError(
            f"{source}: {found[0].label} and {found[1].label} are decoupled; an ensemble may have one decoupled step"
        )
    step = found[0]
    made = set(step.outputs.values())
    for other in plan.steps:
        if other is not step and made & set(other.inputs.values()):
            raise ModelLoadError(
                f"{source}: {other.label} reads what the decoupled {step.label} makes; steps after a decoupled "
                "step are not supported (a decoupled step must be the last)"
            )
    missing = [t.name for t in config.output if t.name not in made]
    if missing:
        raise ModelLoadError(
            f"{source}: ensemble output(s) {missing} do not come from the decoupled {step.label}; an ensemble "
            "with a decoupled step takes every output from it"
        )
    return step


class EnsembleScheduler(Scheduler):
    """Runs one ensemble request as a DAG of composing-model requests. With a decoupled step
    (``streamed``), the ensemble is decoupled: that step's responses are sent, as they come,
    to the request's response channel."""

    def __init__(
        self, plan: EnsemblePlan, caller: ModelCaller, stats: ModelStats, label: str, streamed: Step | None = None
    ) -> None:
        super().__init__([], stats, label)
        self.plan = plan
        self.caller = caller
        self.streamed = streamed

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
                            step.model_name, step.model_version, step.index
                        )
                    if step is self.streamed and work.info is not None and work.info.responses is not None:
                        call = self._stream(step, request, work.info.responses, work.outputs)
                    else:
                        call = self.caller.infer(request)
                    running[asyncio.ensure_future(call)] = step
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
        outputs = {} if self.streamed is not None else {name: tensors[name] for name in work.outputs}
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

    async def _stream(
        self, step: Step, request: InferRequest, channel: ResponseChannel, wanted: list[str]
    ) -> InferResponse:
        """Send the decoupled step's responses, outputs renamed to the ensemble's, to ``channel``."""
        final = False
        async with aclosing(self.caller.infer_stream(request)) as responses:
            async for r in responses:
                final = r.final
                if r.error is not None:
                    channel.send(None, error=r.error, final=final)
                else:
                    outputs = {step.outputs[n]: a for n, a in r.outputs.items() if step.outputs.get(n) in wanted}
                    channel.send(outputs, r.parameters, final=final)
                if channel.cancelled:
                    break  # the client left: closing the step's stream cancels it there too
        if not final:
            channel.send(None, final=True)
        return InferResponse(step.model_name, step.model_version, {})
