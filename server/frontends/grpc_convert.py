"""The gRPC front end's one infer request decoder and response encoder (``InferCodec``), used by
ModelInfer and ModelStreamInfer alike.

Requests arrive as the message's bytes. Those that repeat a learnt layout are read at the wire
level (``grpc_wire``, a private optimisation); every other request is parsed and converted here
(``request_from_pb``), which owns every check and error message. This is the only place that
knows the protobuf layout of tensors.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...protocol import codec
from ...protocol.errors import InvalidArgument
from ...protocol.fields import CONTENTS_FIELD
from ...protocol.pb import grpc_service_pb2 as pb
from ...protocol.types import InferRequest, InferResponse, Scalar
from ..shm import SharedMemoryRegistry
from . import grpc_cost, tensor_parameters
from .grpc_params import PbParameters
from .grpc_wire import FINAL_RESPONSE, InferWire
from .request_limits import DEFAULT_MAX_ELEMENTS, ElementBudget

# The request parameter with which a streaming client asks for empty final responses.
ENABLE_EMPTY_FINAL = "triton_enable_empty_final_response"


class InferCodec:
    """Decode and encode for one server; it holds the wire-level caches (per server, not global,
    so tests and servers do not share them)."""

    def __init__(self, regions: SharedMemoryRegistry | None = None, max_elements: int = DEFAULT_MAX_ELEMENTS) -> None:
        self._wire = InferWire(regions)
        self._regions = regions  # shared memory (tensor_parameters); None: refused
        self.max_elements = max_elements  # values decoded one by one (request_limits)

    def fit(self, data: bytes, remaining_s: float | None = None) -> InferRequest | None:
        """The request if ``data`` fits a learnt layout (cheap at any size), else None."""
        return self._wire.fit(data, remaining_s)

    def decode(self, data: bytes, remaining_s: float | None = None) -> InferRequest:
        """A serialized ModelInferRequest as the core's request; ``remaining_s`` is the client's
        deadline, if any."""
        request = self._wire.fit(data, remaining_s)
        if request is not None:
            return request
        grpc_cost.check(data, self.max_elements)  # before parsing can expand it
        try:
            msg = pb.ModelInferRequest.FromString(data)
        except Exception as e:  # upb raises DecodeError; any failure is the client's bytes
            raise InvalidArgument(f"ModelInfer: the request is not a valid ModelInferRequest message ({e})") from None
        request = request_from_pb(msg, remaining_s, self._regions, ElementBudget(self.max_elements))
        self._wire.learn(data, request, msg)
        return request

    def encode(self, response: InferResponse) -> bytes:
        """The serialized ModelInferResponse."""
        return self._wire.encode(response)

    def encode_stream(self, response: InferResponse) -> bytes:
        """The serialized ModelStreamInferResponse that carries ``response``."""
        return self._wire.encode(response, stream=True)


def stream_error(message: str, data: bytes) -> bytes:
    """A ModelStreamInferResponse reporting that the request ``data`` failed, with the request's
    id and model name so that the client can tell which one (parsed only on this rare path)."""
    error = pb.ModelStreamInferResponse(error_message=message)
    error.infer_response.parameters[FINAL_RESPONSE].bool_param = True
    # Read at the wire level: parsing a message refused for its cost would pay that cost.
    fields = grpc_cost.top_level_strings(data)
    try:
        error.infer_response.model_name = fields.get(1, b"").decode()
        error.infer_response.model_version = fields.get(2, b"").decode()
        error.infer_response.id = fields.get(3, b"").decode()
    except UnicodeDecodeError:
        pass  # the error being reported is that the bytes are not a valid message
    return error.SerializeToString()


def stream_error_response(response: InferResponse) -> bytes:
    """A response a decoupled model sent as an error: Triton's error message beside the
    request's id, model and whether it was the last response."""
    assert response.error is not None
    error = pb.ModelStreamInferResponse(error_message=response.error.message)
    inner = error.infer_response
    inner.id, inner.model_name, inner.model_version = response.id, response.model_name, response.model_version
    inner.parameters[FINAL_RESPONSE].bool_param = response.final
    return error.SerializeToString()


def empty_final_response(request: InferRequest) -> bytes:
    """Triton's "empty final response": no outputs, only the request's id and model and
    ``triton_final_response`` true, sent where the model sent the final flag alone and the
    client asked for it (request parameter ``triton_enable_empty_final_response``)."""
    out = pb.ModelStreamInferResponse()
    inner = out.infer_response
    inner.id, inner.model_name, inner.model_version = request.id, request.model_name, request.model_version
    inner.parameters[FINAL_RESPONSE].bool_param = True
    return out.SerializeToString()


def wants_empty_final(request: InferRequest) -> bool:
    """The request's ``triton_enable_empty_final_response`` (a bool, as Triton checks)."""
    if not request.parameters:
        return False
    value = request.parameters.get(ENABLE_EMPTY_FINAL)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidArgument(f"invalid value type for '{ENABLE_EMPTY_FINAL}' parameter, expected bool_param.")
    return value


def request_from_pb(
    msg: pb.ModelInferRequest,
    remaining_s: float | None = None,
    regions: SharedMemoryRegistry | None = None,
    budget: ElementBudget | None = None,
) -> InferRequest:
    """The message path of ``InferCodec.decode``; ``budget`` bounds the BYTES elements and
    ``contents`` values decoded one by one."""
    budget = budget or ElementBudget(DEFAULT_MAX_ELEMENTS)
    model = msg.model_name
    mark = regions.mark() if regions else None  # regions: truthy once one is registered
    raw = msg.raw_input_contents
    tensors = list(msg.inputs)  # one wrapper per tensor, made once (upb makes one per access)
    # Inputs in shared memory come first, so that one is refused as such; as in Triton, they
    # have no raw_input_contents entry (the entries are those of the other inputs, in order).
    shared: dict[int, np.ndarray] = {}
    for i, t in enumerate(tensors):
        if len(t.parameters):
            what = f"model '{model}' input '{t.name}'"
            array = tensor_parameters.input_from_region(
                PbParameters(t.parameters), t.datatype, t.shape[:], what, regions
            )
            if array is not None:
                if t.HasField("contents"):
                    raise InvalidArgument(f"{what}: has 'contents' although its data is in shared memory")
                shared[i] = array
    if raw and len(raw) != len(tensors) - len(shared):
        # An input with contents beside raw_input_contents is what Triton names first (its
        # explicit-content example sends one raw entry and contents for the other input).
        for i, t in enumerate(tensors):
            if i not in shared and t.HasField("contents"):
                raise InvalidArgument(_contents_beside_raw(t.name, model))
        raise InvalidArgument(
            f"model '{model}': raw_input_contents has {len(raw)} entries for {len(tensors) - len(shared)} inputs "
            "not in shared memory; there must be one per input, in input order"
        )
    inputs: dict[str, np.ndarray] = {}
    r = 0
    for i, t in enumerate(tensors):
        name = t.name
        if name in inputs:
            raise InvalidArgument(f"model '{model}': input '{name}' is given more than once")
        if shared and i in shared:
            inputs[name] = shared[i]
            continue
        dt = codec.datatype(t.datatype)
        shape = tuple(t.shape[:])  # slicing first is cheaper than iterating the repeated field
        what = f"model '{model}' input '{name}'"
        if not raw:
            inputs[name] = _from_contents(t, dt, shape, what, budget)
        elif t.HasField("contents"):
            raise InvalidArgument(_contents_beside_raw(name, model))
        else:
            data = raw[r]
            if not dt.itemsize and (count := codec.element_count(shape, what)) <= len(data) // 4:
                budget.take(count, what)  # (more elements than the bytes can hold: from_raw says so)
            inputs[name] = codec.from_raw(data, dt, shape, what)
            r += 1
    outputs, regions_out, classes = _requested_outputs(msg, regions) if len(msg.outputs) else (None, None, None)
    params: Mapping[str, Scalar] = PbParameters(msg.parameters) if len(msg.parameters) else {}
    deadline = time.monotonic_ns() + int(remaining_s * 1e9) if remaining_s is not None else None
    request = InferRequest(model, inputs, msg.model_version, msg.id, outputs, params, deadline, regions_out, classes)
    if mark is not None and regions is not None:
        regions.attach_use(request, mark)
    return request


def _contents_beside_raw(name: str, model: str) -> str:
    return f"contents field must not be specified when using raw_input_contents for '{name}' for model '{model}'"


def _requested_outputs(
    msg: pb.ModelInferRequest, regions: SharedMemoryRegistry | None
) -> tuple[list[str], dict[str, memoryview] | None, dict[str, int] | None]:
    names = []
    targets: dict[str, memoryview] | None = None
    classes: dict[str, int] | None = None
    for o in msg.outputs:
        if len(o.parameters):
            what = f"model '{msg.model_name}' output '{o.name}'"
            params = PbParameters(o.parameters)
            target = tensor_parameters.output_region(params, what, regions)
            if target is not None:
                targets = targets or {}
                targets[o.name] = target
            if count := tensor_parameters.classification_count(params, what):
                classes = classes or {}
                classes[o.name] = count
        names.append(o.name)
    return names, targets, classes


def _from_contents(t: Any, dt: codec.DataType, shape: tuple[int, ...], what: str, budget: ElementBudget) -> np.ndarray:
    count = codec.element_count(shape, what)
    field = CONTENTS_FIELD.get(dt.name)
    if field is None:
        raise InvalidArgument(f"{what}: {dt.name} data must be sent in raw_input_contents")
    values = getattr(t.contents, field)
    if len(values) != count:
        raise InvalidArgument(f"{what}: {len(values)} values in contents.{field} but shape {list(shape)} needs {count}")
    budget.take(count, what)
    if dt.itemsize == 0:
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    try:
        # fromiter converts value by value; np.array would first build a list of Python numbers
        # (32 bytes each) beside the array.
        return np.fromiter(values, dtype=dt.dtype, count=count).reshape(shape)
    except OverflowError:
        raise InvalidArgument(f"{what}: a value in contents.{field} does not fit {dt.name}") from None
