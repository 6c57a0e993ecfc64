"""A loaded model version: its completed config, validated signature, scheduler and statistics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from ..protocol.errors import Cancelled, Code, InferdError, Internal, InvalidArgument, internal_error
from ..protocol.model_spec import ModelSpec
from ..protocol.pb import model_config_pb2 as mc
from ..protocol.streaming import ResponseChannel
from ..protocol.types import InferRequest, InferResponse, RequestInfo, Scalar
from .cache import VersionCache
from .config import Signature
from .reshape import Reshaper, needs_reshape
from .scheduling.base import Scheduler
from .scheduling.sequence_controls import sequence_parameters
from .scheduling.work import Work
from .stats import ModelStats
from .validation import validate


@dataclass(eq=False)
class ModelVersion:
    name: str
    version: int
    config: mc.ModelConfig  # for the ModelConfig RPC; serving reads ``spec``
    spec: ModelSpec
    signature: Signature
    platform: str
    scheduler: Scheduler
    stats: ModelStats
    # (model, version) pairs this one calls, for an ensemble; it is ready only while they are.
    dependencies: list[tuple[str, str]] = field(default_factory=list)
    # Set when the model enables response_cache and the server has a cache (cache.version_cache).
    cache: VersionCache | None = None
    # Each output's classification labels (label_filename), for the classification extension.
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    label: str = field(init=False)
    # 0..N responses per request: from the config, or (an ensemble) from its decoupled step.
    decoupled: bool = False
    # Set by the manager while the model has a rollout (rollout.Tap: traffic windows, shadow,
    # drift); None keeps the request path as it is without one.
    tap: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.label = f"model '{self.name}' version {self.version}"
        self.decoupled = self.decoupled or self.spec.model_transaction_policy.decoupled
        # Clients see ``dims``, the model ``reshape``: set only where the config reshapes.
        self._reshaper = Reshaper(self.label, self.signature) if needs_reshape(self.signature) else None
        batching = self.spec.dynamic_batching
        self._allow_timeout_override = batching is not None and batching.default_queue_policy.allow_timeout_override
        self._priority_levels = batching.priority_levels if batching is not None else 0

    async def infer(self, request: InferRequest, responses: ResponseChannel | None = None) -> dict[str, np.ndarray]:
        """Validate, schedule and wait; failures are counted in the statistics. A decoupled
        model's responses go to ``responses`` instead (see ``infer_decoupled``): this returns
        once its execute did."""
        start = time.monotonic_ns()
        self.stats.pending += 1
        try:
            checked = validate(self.label, self.signature, request.inputs, request.outputs)
            deadline = request.deadline_ns
            work = Work(
                checked.inputs,
                checked.outputs,
                checked.batch_size,
                start,
                None,
                deadline_ns=deadline,
                client_deadline=deadline is not None,
                input_bytes=checked.nbytes,
            )
            if request.parameters:
                work.priority = self._priority(request.parameters)
                self._apply_timeout(work, request.parameters)
                sequence_parameters(request.parameters)  # refused for any model, as Triton's front ends do
            if request.id or request.parameters or responses is not None:
                work.info = RequestInfo(request.id, request.parameters, responses=responses)
            if request.trace is not None:
                work.trace = request.trace
            reshaper = self._reshaper
            if reshaper is not None:
                work.inputs = reshaper.to_model(work.inputs)
            if self.cache is not None:  # a hit answers here: no model run, no scheduler queue
                outputs = await self.cache.infer(request, checked.outputs, work, self.stats, self.scheduler.submit)
            else:
                outputs = await self.scheduler.submit(work)
            return outputs if reshaper is None else reshaper.to_client(outputs)
        except InferdError as e:
            self.stats.record_failure(time.monotonic_ns() - start, _reason(e))
            raise
        except BaseException:
            # Cancelled by the client (or the server shutting down).
            self.stats.record_failure(time.monotonic_ns() - start, "CANCELED")
            raise
        finally:
            self.stats.pending -= 1

    async def infer_decoupled(self, request: InferRequest, limit: int) -> AsyncGenerator[InferResponse, None]:
        """A decoupled model's 0..N responses to ``request``, in the order the model sent them.

        ``final`` is set on the response the model sent with the final flag (when the flag came
        alone, none carries it: the iteration just ends). A response the model sent as an error
        has ``error`` set; a failure of the whole request (refused, execute failed, too slow a
        consumer: see ResponseChannel) is raised after the responses sent before it. Closing
        the iteration early cancels the request: the model sees ``is_cancelled()``."""
        start = time.monotonic_ns()
        channel = ResponseChannel(
            asyncio.get_running_loop(),
            self.name,
            str(self.version),
            request.id,
            limit,
            self.label,
            request.stream_interval_ns,
            request.response_window,
        )
        run = asyncio.ensure_future(self.infer(request, channel))
        run.add_done_callback(partial(_executed, channel))
        index, previous, complete = 0, start, False
        try:
            record, reshaper = self.stats.record_response, self._reshaper
            while (batch := await channel.get_ready()) is not None:
                for response, sent_ns in batch:
                    record(index, sent_ns - previous, response.error is None)
                    index, previous = index + 1, sent_ns
                    if reshaper is not None and response.outputs:
                        response.outputs = reshaper.to_client(response.outputs)
                    yield response
            complete = True
            if not channel.final_on_response:
                self.stats.record_empty_response(index, time.monotonic_ns() - previous)
        except InferdError:
            complete = True  # failed: counted with the request's failure
            self.stats.record_response(index, time.monotonic_ns() - previous, False)
            raise
        finally:
            if not complete:  # the consumer left first
                self.stats.record_cancelled_response(index, time.monotonic_ns() - previous)
                channel.cancel()
                if not run.done():
                    run.cancel()  # still queued (then never runs) or in execute (counted as cancelled)

    def _priority(self, params: Mapping[str, Scalar]) -> int:
        value = params.get("priority")
        if value is None:
            return 0
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidArgument(f"{self.label}: parameter 'priority' must be a non-negative integer")
        if self._priority_levels and value > self._priority_levels:
            raise InvalidArgument(
                f"{self.label}: priority {value} is outside 1..{self._priority_levels} (priority_levels)"
            )
        return value

    def _apply_timeout(self, work: Work, params: Mapping[str, Scalar]) -> None:
        value = params.get("timeout")
        if value is None:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidArgument(f"{self.label}: parameter 'timeout' must be a non-negative integer (microseconds)")
        if value and self._allow_timeout_override:
            work.set_deadline(work.enqueue_ns + value * 1000, client=False)


def _executed(channel: ResponseChannel, run: asyncio.Future[dict[str, np.ndarray]]) -> None:
    """A decoupled request's execute returned: a failure ends its response stream."""
    if run.cancelled():
        channel.fail(Cancelled(f"{channel.label}: the request was cancelled"))
    elif isinstance(e := run.exception(), InferdError):
        channel.fail(e)
    elif e is not None:  # a server fault: logged, and the client reads only "internal error"
        channel.fail(Internal(f"{channel.label}: {internal_error(e, channel.label)}"))


def _reason(e: InferdError) -> str:
    """Triton's failure reasons for the metrics label."""
    if e.code in (Code.INVALID_ARGUMENT, Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED):
        return "REJECTED"
    if e.code in (Code.CANCELLED, Code.DEADLINE_EXCEEDED):
        return "CANCELED"
    return "BACKEND"
