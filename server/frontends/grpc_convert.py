"""Conversions between the gRPC messages and the core's types, in both directions.

This is the only place that knows the protobuf layout of tensors and parameters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ...protocol import codec
from ...protocol.errors import InvalidArgument
from ...protocol.pb import grpc_service_pb2 as pb
from ...protocol.types import InferRequest, InferResponse, Scalar
from ..stats import Duration, ModelStats

_BY_NAME = codec.BY_NAME
# Which InferTensorContents field holds each datatype (FP16/BF16 have none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


class PbParameters(Mapping[str, Scalar]):
    """A request's parameters, read from the message when asked for. The core looks at one or
    two keys; converting the whole map up front was one of a request's costliest steps."""

    __slots__ = ("_map",)

    def __init__(self, params: Mapping[str, Any]) -> None:
        self._map = params

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self._map:
            return default
        p = self._map[key]
        which = p.WhichOneof("parameter_choice")
        return default if which is None else getattr(p, which)

    def __getitem__(self, key: str) -> Scalar:
        value = self.get(key, _UNSET)
        if value is _UNSET:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[str]:
        return (k for k, p in self._map.items() if p.WhichOneof("parameter_choice") is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __bool__(self) -> bool:
        return len(self._map) > 0  # a parameter with no value set is as good as absent, and rare


_UNSET = object()


def parameters_to_pb(values: Mapping[str, Scalar], target: Any) -> None:
    for key, v in values.items():
        p = target[key]
        if isinstance(v, bool):
            p.bool_param = v
        elif isinstance(v, int):
            p.int64_param = v
        elif isinstance(v, float):
            p.double_param = v
        else:
            p.string_param = str(v)


def request_from_pb(msg: pb.ModelInferRequest, remaining_s: float | None = None) -> InferRequest:
    model = msg.model_name
    raw = msg.raw_input_contents
    tensors = list(msg.inputs)  # one wrapper per tensor, made once (upb makes one per access)
    if raw and len(raw) != len(tensors):
        raise InvalidArgument(
            f"model '{model}': raw_input_contents has {len(raw)} entries for {len(tensors)} inputs; "
            "there must be one per input, in input order"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(tensors):
        name = t.name
        if name in inputs:
            raise InvalidArgument(f"model '{model}': input '{name}' is given more than once")
        dt = _BY_NAME.get(t.datatype) or codec.datatype(t.datatype)
        shape = tuple(t.shape[:])  # slicing first is cheaper than iterating the repeated field
        if not raw:
            inputs[name] = _from_contents(t, dt, shape, f"model '{model}' input '{name}'")
            continue
        if t.HasField("contents"):
            raise InvalidArgument(f"model '{model}' input '{name}': has 'contents' although raw_input_contents is used")
        data = raw[i]
        # Every request's path, so the common case is written out here: a numeric tensor whose
        # bytes match its (non-negative) shape. Anything else gets codec's checks and messages.
        if dt.itemsize and (not shape or min(shape) >= 0) and len(data) == math.prod(shape) * dt.itemsize:
            inputs[name] = np.frombuffer(data, dt.wire).reshape(shape)
        else:
            inputs[name] = codec.from_raw(data, dt, shape, f"model '{model}' input '{name}'")
    outputs = [o.name for o in msg.outputs] if len(msg.outputs) else None
    params: Mapping[str, Scalar] = PbParameters(msg.parameters) if len(msg.parameters) else {}
    deadline = time.monotonic_ns() + int(remaining_s * 1e9) if remaining_s is not None else None
    return InferRequest(model, inputs, msg.model_version, msg.id, outputs, params, deadline)


def _from_contents(t: Any, dt: codec.DataType, shape: tuple[int, ...], what: str) -> np.ndarray:
    count = codec.element_count(shape, what)
    field = CONTENTS_FIELD.get(dt.name)
    if field is None:
        raise InvalidArgument(f"{what}: {dt.name} data must be sent in raw_input_contents")
    values = getattr(t.contents, field)
    if len(values) != count:
        raise InvalidArgument(f"{what}: {len(values)} values in contents.{field} but shape {list(shape)} needs {count}")
    if dt.itemsize == 0:
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    try:
        return np.array(values, dtype=dt.dtype).reshape(shape)
    except OverflowError:
        raise InvalidArgument(f"{what}: a value in contents.{field} does not fit {dt.name}") from None


def response_to_pb(response: InferResponse) -> pb.ModelInferResponse:
    # Built from plain dicts in one constructor call: with upb that is the cheapest way.
    tensors = []
    raw = []
    for name, array in response.outputs.items():
        tensors.append({"name": name, "datatype": codec.of_array(array).name, "shape": array.shape})
        raw.append(codec.to_raw(array))
    msg = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
        outputs=tensors,
        raw_output_contents=raw,
    )
    if response.parameters:
        parameters_to_pb(response.parameters, msg.parameters)
    return msg


def _duration(target: Any, d: Duration) -> None:
    target.count = d.count
    target.ns = d.ns


def statistics_to_pb(stats: ModelStats, target: pb.ModelStatistics) -> None:
    target.name = stats.name
    target.version = stats.version
    target.last_inference = stats.last_inference_ms
    target.inference_count = stats.inference_count
    target.execution_count = stats.execution_count
    s = target.inference_stats
    _duration(s.success, stats.success)
    _duration(s.fail, stats.fail)
    _duration(s.queue, stats.queue)
    _duration(s.compute_input, stats.compute_input)
    _duration(s.compute_infer, stats.compute_infer)
    _duration(s.compute_output, stats.compute_output)
    for size, b in sorted(stats.batch_stats.items()):
        entry = target.batch_stats.add()
        entry.batch_size = size
        _duration(entry.compute_input, b.compute_input)
        _duration(entry.compute_infer, b.compute_infer)
        _duration(entry.compute_output, b.compute_output)
