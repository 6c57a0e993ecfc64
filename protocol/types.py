"""Protocol-neutral request and response types: what every front end translates to and from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InferdError

if TYPE_CHECKING:
    from .streaming import ResponseChannel

Scalar = bool | int | float | str


@dataclass(slots=True)
class InferRequest:
    """One inference request over numpy tensors.

    ``outputs`` lists the requested output names; ``None`` means all of the model's outputs.
    ``parameters`` holds the request-level parameters (``priority`` and ``timeout`` included).
    ``deadline_ns`` is an absolute ``time.monotonic_ns()`` after which the request must not run,
    set by front ends from the client's own deadline.
    ``output_regions`` maps requested outputs to the shared-memory bytes they are written into
    (the per-tensor ``shared_memory_*`` parameters); ``None`` when no output uses shared memory.
    ``classification`` maps outputs to the number of classes asked for (Triton's classification
    extension); ``None`` when no output asks.
    ``traceparent`` and ``trace`` are set only while tracing is on (see the fields).
    """

    model_name: str
    inputs: dict[str, np.ndarray]
    model_version: str = ""
    id: str = ""
    outputs: list[str] | None = None
    parameters: Mapping[str, Scalar] = field(default_factory=dict)
    deadline_ns: int | None = None
    output_regions: dict[str, memoryview] | None = None
    classification: dict[str, int] | None = None
    # The shared-memory guard's fault count (server/shm_guard.py) from before the front end
    # first read a region for this request, and the guarded regions it uses; None and () when
    # the request uses no system shared memory.
    shared_epoch: int | None = None
    shared_regions: tuple[Any, ...] = ()
    # Tracing (server/tracing.py), set only while it is on: the caller's W3C traceparent, as
    # the front end read it, and the request's trace once the core decided to trace it.
    traceparent: str | None = None
    trace: Any = None
    # Set only while tracing is on, by the front ends that can tell: "HTTP" or "GRPC", and when
    # they began and ended reading the request (monotonic ns), for Triton's trace files
    # (HTTP_RECV_START/_END, GRPC_WAITREAD_START/_END).
    received: tuple[str, int, int] | None = None
    # A decoupled model's responses after the first are taken at most once per this many ns,
    # the final one at once (ResponseChannel's pacing): set by the front ends that write a
    # stream's waiting responses together (--stream-interval-us: HTTP Server-Sent Events and
    # gRPC ModelStreamInfer).
    stream_interval_ns: int = 0
    # A decoupled model's responses waiting for the consumer past which its send (from another
    # thread than the loop's) waits for room (an ensemble's max_inflight_requests); 0: never
    # waits. The server's --max-buffered-responses bounds them either way.
    response_window: int = 0


class ModelOutputs(dict[str, np.ndarray]):
    """A model's outputs together with the response parameters it set (a Python model's
    ``InferenceResponse(..., parameters=...)``); a plain dict when it set none."""

    __slots__ = ("parameters",)

    def __init__(self, outputs: Mapping[str, np.ndarray], parameters: Mapping[str, Scalar]) -> None:
        super().__init__(outputs)
        self.parameters = dict(parameters)


@dataclass(slots=True)
class InferResponse:
    """``in_shared_memory`` names the outputs already written into the client's shared memory:
    front ends send their name, datatype and shape but not their data."""

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str = ""
    parameters: dict[str, Scalar] = field(default_factory=dict)
    in_shared_memory: frozenset[str] = frozenset()
    # A decoupled model's responses (``InferenceCore.infer_stream``): ``final`` marks the one
    # the model sent with TRITONSERVER_RESPONSE_COMPLETE_FINAL; ``error`` is set on a response
    # the model sent as an error (its outputs are empty). Ordinary responses keep the defaults.
    final: bool = True
    error: InferdError | None = None
    # Set when the next response of the same stream was already waiting as this one was taken:
    # a front end may hold this one back and write both together.
    more: bool = False


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]


@dataclass(frozen=True, slots=True)
class ModelIndexEntry:
    name: str
    version: str
    state: str
    reason: str


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a request-list backend (Python models) may read of a request besides its tensors:
    the client's request id and request-level parameters, and for a sequence model its
    correlation id (an unsigned integer or a string; 0 when none) and Triton's request flags
    (1: sequence start, 2: sequence end)."""

    id: str = ""
    parameters: Mapping[str, Scalar] = field(default_factory=dict)
    correlation_id: int | str = 0
    flags: int = 0
    # A decoupled request's response channel: where the model sends its 0..N responses.
    responses: ResponseChannel | None = None
