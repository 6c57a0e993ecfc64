"""A loaded model version: its completed config, validated signature, scheduler and statistics."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..protocol.errors import Code, InferdError, InvalidArgument
from ..protocol.model_spec import ModelSpec
from ..protocol.pb import model_config_pb2 as mc
from ..protocol.types import InferRequest, RequestInfo, Scalar
from .cache import VersionCache
from .config import Signature
from .reshape import Reshaper, needs_reshape
from .scheduling.base import Scheduler
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
    decoupled: bool = field(init=False)  # 0..N responses per request

    def __post_init__(self) -> None:
        self.label = f"model '{self.name}' version {self.version}"
        self.decoupled = self.spec.model_transaction_policy.decoupled
        # Clients see ``dims``, the model ``reshape``: set only where the config reshapes.
        self._reshaper = Reshaper(self.label, self.signature) if needs_reshape(self.signature) else None
        batching = self.spec.dynamic_batching
        self._allow_timeout_override = batching is not None and batching.default_queue_policy.allow_timeout_override
        self._priority_levels = batching.priority_levels if batching is not None else 0

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        """Validate, schedule and wait; failures are counted in the statistics."""
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
            if request.id or request.parameters:
                work.info = RequestInfo(request.id, request.parameters)
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


def _reason(e: InferdError) -> str:
    """Triton's failure reasons for the metrics label."""
    if e.code in (Code.INVALID_ARGUMENT, Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED):
        return "REJECTED"
    if e.code in (Code.CANCELLED, Code.DEADLINE_EXCEEDED):
        return "CANCELED"
    return "BACKEND"
