"""The unit a scheduler queues: one validated request waiting for an execution."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...protocol.errors import DeadlineExceeded, InferdError, Unavailable
from ...protocol.types import RequestInfo


@dataclass(slots=True, eq=False)
class Work:
    inputs: dict[str, np.ndarray]
    outputs: list[str]  # validated output names to return
    batch_size: int  # rows along the batch dim (1 for models without batching)
    enqueue_ns: int  # time.monotonic_ns() when accepted
    future: asyncio.Future[Any] | None
    deadline_ns: int | None = None  # absolute monotonic_ns; expired work is never executed
    client_deadline: bool = False  # deadline_ns is the client's (not a queue policy timeout)
    priority: int = 0  # 1 is the highest level, as in Triton; 0 = the model's default
    timeout_action_delay: bool = False  # expired work is delayed, not rejected
    delayed: bool = False  # set once a DELAY-policy request has expired
    timer: asyncio.TimerHandle | None = None
    level: int = 0  # the priority queue it waits in
    queued: bool = False
    input_bytes: int | None = None  # of all inputs, when the caller already counted them
    key: tuple[Any, ...] | None = None  # batch_key(), kept: the batcher compares it on every plan
    info: RequestInfo | None = None  # the client's request id and parameters, when it sent any
    trace: Any = None  # a tracing.RequestTrace or trace_file.FileTrace when this request is traced

    def nbytes(self) -> int:
        if self.input_bytes is None:
            self.input_bytes = sum(a.nbytes for a in self.inputs.values())
        return self.input_bytes

    def expired_error(self, label: str, where: str) -> InferdError:
        """The error an expired request fails with: the client's deadline or a queue timeout."""
        if self.client_deadline:
            return DeadlineExceeded(f"{label}: the client's deadline passed {where}")
        return Unavailable(f"{label}: request timeout expired {where}")

    def set_deadline(self, deadline_ns: int, *, client: bool) -> bool:
        """Keep the earlier of the current and the new deadline; True when the new one won."""
        if self.deadline_ns is not None and self.deadline_ns <= deadline_ns:
            return False
        self.deadline_ns = deadline_ns
        self.client_deadline = client
        return True

    def batch_key(self) -> tuple[Any, ...]:
        """Requests merge only when their non-batch dims, dtypes and input sets agree."""
        if self.key is None:
            self.key = tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(self.inputs.items())) + (
                tuple(self.outputs),
            )
        return self.key
