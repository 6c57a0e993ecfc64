"""ModelInfer at the protobuf wire level: the private fast path of ``grpc_convert.InferCodec``.

A client sends the same request over and over with only the tensor bytes (and often the id)
changed: tritonclient and perf_analyzer serialize the same model name, tensors, shapes,
requested outputs and parameters in the same order every time. Parsing those bytes into a
protobuf message and the message into the core's request costs more CPU than the core's work
for a small model (each field read makes a Python object from upb's arena). So each model's
recent request layouts are remembered as *templates*: the header bytes, where the id sits, and
where each input's raw bytes start. A request whose bytes fit a template is decoded with a few
byte comparisons, and its input arrays view the request's own bytes.

A template is only learnt from a request that the message path (``grpc_convert``) accepted, and
a request fits one only if every byte outside the id and the tensor data is the same, so both
paths give the same result and every check and error message stays in one place.

Tensors in shared memory are templated too: a client using them sends identical bytes every time
(the region names, offsets and sizes are parameters). What depends on the registry's state (the
region still registered, its size, the guard's fault count) is not remembered: what the
parameters say is read once (``tensor_parameters.RegionUse``), and each request looks its regions
up again with the same ``tensor_parameters`` functions the message path calls, so a region
unregistered since answers as it would on the message path.

Responses are written directly: a header (model, version, output names, datatypes, shapes) is
encoded once per output layout, then each response is that header, its id and the raw output
bytes: byte for byte what the message would serialize to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from ...protocol import codec
from ...protocol.pb import grpc_service_pb2 as pb
from ...protocol.types import InferRequest, InferResponse
from ..shm import SharedMemoryRegistry
from . import tensor_parameters
from .grpc_params import PbParameters, parameters_to_pb

# Field tags (field number << 3 | wire type 2, length-delimited) of ModelInferRequest/Response.
_MODEL_NAME = 0x0A
_ID = 0x1A
_RAW_INPUT = 0x3A
_RAW_OUTPUT = 0x32
_STREAM_RESPONSE = 0x12  # ModelStreamInferResponse.infer_response
_RAW_OUTPUT_TAG, _STREAM_RESPONSE_TAG = bytes((_RAW_OUTPUT,)), bytes((_STREAM_RESPONSE,))
TEMPLATES_PER_MODEL = 4  # a few layouts per model (e.g. two batch sizes) without thrashing
MAX_MODELS = 256  # both caches are cleared when they reach this many keys: bounded memory
MAX_HEADER_BYTES = 4096  # bigger headers (tensors sent in `contents`) are not worth keeping


def _final_parameter(final: bool) -> bytes:
    msg = pb.ModelInferResponse()
    msg.parameters[FINAL_RESPONSE].bool_param = final  # a oneof member: serialized even when false
    return msg.SerializeToString()


# Triton's response parameter on every ModelStreamInfer response: whether it is the request's last.
FINAL_RESPONSE = "triton_final_response"
_FINAL = {True: _final_parameter(True), False: _final_parameter(False)}


@dataclass(frozen=True, slots=True)
class _Input:
    name: str
    dtype: np.dtype
    count: int
    nbytes: int
    shape: tuple[int, ...]
    mark: bytes  # the raw_input_contents tag and length that precede this input's bytes


@dataclass(frozen=True, slots=True)
class _Regions:
    """A template's tensors in shared memory, and the message's input order around them."""

    inputs: tuple[tuple[str, tensor_parameters.RegionUse], ...]  # (input name, its region)
    outputs: tuple[tuple[str, tensor_parameters.RegionUse], ...]
    order: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Template:
    pre: bytes  # everything before the id (model name, version)
    has_id: bool
    post: bytes  # everything between the id and the first raw input
    inputs: tuple[_Input, ...]
    model: str
    version: str
    outputs: tuple[str, ...] | None
    parameters: object  # the parameters of the request it was learnt from (read-only mapping)
    regions: _Regions | None = None


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise IndexError
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def encode_varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + encode_varint(len(payload)) + payload


class InferWire:
    """The two caches for one server (not global, so tests and servers do not share them)."""

    def __init__(self, regions: SharedMemoryRegistry | None = None) -> None:
        self._regions = regions
        self._templates: dict[bytes, list[_Template]] = {}
        self._headers: dict[tuple[object, ...], tuple[bytes, bytes]] = {}

    def fit(self, data: bytes, remaining_s: float | None) -> InferRequest | None:
        """The request, if ``data`` fits a learnt layout; None sends it down the message path.
        A layout with tensors in shared memory raises what the message path would for a region
        that is gone or too small now."""
        if len(data) < 2 or data[0] != _MODEL_NAME or data[1] >= 0x80:
            return None
        candidates = self._templates.get(data[: 2 + data[1]])
        if candidates is None:
            return None
        for t in candidates:
            if not data.startswith(t.pre):
                continue
            pos = len(t.pre)
            rid = ""
            if t.has_id:
                if pos + 1 >= len(data) or data[pos] != _ID or data[pos + 1] >= 0x80:
                    continue
                end = pos + 2 + data[pos + 1]
                try:
                    rid = data[pos + 2 : end].decode()
                except UnicodeDecodeError:
                    return None  # the message path reports it
                pos = end
            if not data.startswith(t.post, pos):
                continue
            pos += len(t.post)
            inputs: dict[str, np.ndarray] = {}
            for i in t.inputs:
                if not data.startswith(i.mark, pos) or pos + len(i.mark) + i.nbytes > len(data):
                    break
                pos += len(i.mark)
                inputs[i.name] = np.frombuffer(data, i.dtype, i.count, pos).reshape(i.shape)
                pos += i.nbytes
            else:
                if pos != len(data):
                    continue  # more fields follow: not this layout
                outputs = list(t.outputs) if t.outputs is not None else None
                deadline = time.monotonic_ns() + int(remaining_s * 1e9) if remaining_s is not None else None
                if t.regions is not None:
                    return self._with_regions(t, t.regions, inputs, rid, outputs, deadline)
                return InferRequest(t.model, inputs, t.version, rid, outputs, t.parameters, deadline)  # type: ignore[arg-type]
        return None

    def _with_regions(
        self,
        t: _Template,
        shared: _Regions,
        raw: dict[str, np.ndarray],
        rid: str,
        outputs: list[str] | None,
        deadline: int | None,
    ) -> InferRequest:
        """The request of a template with tensors in shared memory: each region looked up now,
        in the message path's order (inputs, then outputs), so its errors are the same."""
        regions = self._regions
        assert regions is not None  # a template with regions was learnt with them
        mark = regions.mark()
        arrays = {name: tensor_parameters.read_input(use, regions) for name, use in shared.inputs}
        arrays.update(raw)
        inputs = {name: arrays[name] for name in shared.order}
        targets = {name: tensor_parameters.output_target(use, regions) for name, use in shared.outputs} or None
        request = InferRequest(t.model, inputs, t.version, rid, outputs, t.parameters, deadline, targets)  # type: ignore[arg-type]
        regions.attach_use(request, mark)
        return request

    def learn(self, data: bytes, request: InferRequest, msg: pb.ModelInferRequest) -> None:
        """Remember the layout of ``data``, which the message path accepted as ``request`` (parsed
        as ``msg``), if it has one worth a template: numeric inputs in raw_input_contents, after
        every other field, or in shared memory, and the id (if any) right after the model name
        and version. Requests asking for classification are not templated."""
        if request.classification is not None:
            return
        # The tensors' parameters are read again only for a request that shows it used a region:
        # an output region, or an input region the guard watches. One whose only region is an
        # unwatched input (CUDA, or no guard built) has no raw entry for it and is not templated.
        uses_regions = request.output_regions is not None or request.shared_epoch is not None
        shared = _shared_tensors(msg, self._regions) if uses_regions else None
        in_regions = {name for name, _ in shared.inputs} if shared is not None else ()
        specs = []
        for name, array in request.inputs.items():  # in the message's input order
            if name in in_regions:
                continue
            if not array.dtype.itemsize or array.dtype.hasobject:
                return  # BYTES
            specs.append((name, array.dtype, array.size, array.nbytes, array.shape))
        try:
            layout = self._scan(data)
        except IndexError:
            return
        if layout is None:
            return
        pre_end, id_end, raw_start, marks = layout
        if len(marks) != len(specs) or raw_start > MAX_HEADER_BYTES:
            return
        inputs = []
        for (name, dtype, count, nbytes, shape), (mark, size) in zip(specs, marks):
            if size != nbytes:
                return
            inputs.append(_Input(name, dtype, count, nbytes, shape, mark))
        outputs = tuple(request.outputs) if request.outputs is not None else None
        # Shared by every request read with this template: a read-only plain dict, cheaper to
        # look up than the message's map.
        params = MappingProxyType(dict(request.parameters)) if request.parameters else {}
        template = _Template(
            data[:pre_end],
            id_end > pre_end,
            data[id_end:raw_start],
            tuple(inputs),
            request.model_name,
            request.model_version,
            outputs,
            params,
            shared,
        )
        key = data[: 2 + data[1]]
        if len(self._templates) >= MAX_MODELS and key not in self._templates:
            self._templates.clear()
        kept = self._templates.setdefault(key, [])
        kept.insert(0, template)
        del kept[TEMPLATES_PER_MODEL:]

    @staticmethod
    def _scan(data: bytes) -> tuple[int, int, int, list[tuple[bytes, int]]] | None:
        """Top-level fields: returns where the id starts and ends (equal when absent), where the
        raw inputs start, and each raw input's tag+length bytes and size; None for a layout no
        template can describe."""
        if data[0] != _MODEL_NAME or data[1] >= 0x80:
            return None
        pos = 2 + data[1]
        pre_end = id_end = -1
        raw_start = -1
        marks: list[tuple[bytes, int]] = []
        while pos < len(data):
            tag = data[pos]
            if tag & 7 != 2 or tag >= 0x80:
                return None
            size, start = read_varint(data, pos + 1)
            end = start + size
            if end > len(data):
                return None
            number = tag >> 3
            if number == 7:
                if raw_start < 0:
                    raw_start = pos
                marks.append((data[pos:start], size))
            elif raw_start >= 0 or number == 1:
                return None  # a header field after the tensors, or the model name twice
            elif number == 3:
                if pre_end >= 0 or size >= 0x80:
                    return None
                pre_end, id_end = pos, end
            elif number != 2 and pre_end < 0:
                pre_end = id_end = pos  # no id before the first other field: the id is absent
            elif number == 2 and pre_end >= 0:
                return None  # the version after the id: an unusual order, not templated
            pos = end
        if raw_start < 0:
            raw_start = len(data)  # no raw inputs: all in shared memory (or none at all)
        if pre_end < 0:
            pre_end = id_end = raw_start
        return pre_end, id_end, raw_start, marks

    def encode(self, response: InferResponse, stream: bool = False) -> bytes:
        """The serialized ModelInferResponse; with ``stream``, the ModelStreamInferResponse that
        carries it, with Triton's ``triton_final_response`` parameter."""
        outputs = response.outputs
        if len(outputs) == 1:  # a streamed token's response, most often: no list to build
            ((name, array),) = outputs.items()
            key: tuple[object, ...] = (response.model_name, response.model_version, name, array.dtype, array.shape)
        else:
            key = (response.model_name, response.model_version, *[(n, a.dtype, a.shape) for n, a in outputs.items()])
        header = self._headers.get(key)
        if header is None:
            header = self._header(response)
            if len(self._headers) >= MAX_MODELS:
                self._headers.clear()
            self._headers[key] = header
        parts = [header[0]]
        if response.id:
            parts.append(_field(_ID, response.id.encode()))
        if response.parameters:
            msg = pb.ModelInferResponse()
            parameters_to_pb(response.parameters, msg.parameters)
            parts.append(msg.SerializeToString())  # field 4 entries, in field order
        if stream:
            parts.append(_FINAL[response.final])
        parts.append(header[1])
        in_region = response.in_shared_memory
        for name, array in outputs.items():
            if in_region and name in in_region:
                # Written into the client's shared memory: an empty entry, as Triton sends, so
                # the entries stay one per output.
                parts.append(bytes((_RAW_OUTPUT, 0)))
                continue
            data = codec.to_raw(array)
            parts.append(_RAW_OUTPUT_TAG + encode_varint(len(data)))
            parts.append(data)
        body = b"".join(parts)
        if stream:
            return _STREAM_RESPONSE_TAG + encode_varint(len(body)) + body
        return body

    @staticmethod
    def _header(response: InferResponse) -> tuple[bytes, bytes]:
        """(model name and version, the output tensors) as serialized fields."""
        pre = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version)
        tensors = pb.ModelInferResponse(
            outputs=[
                {"name": n, "datatype": codec.of_array(a).name, "shape": a.shape} for n, a in response.outputs.items()
            ]
        )
        return pre.SerializeToString(), tensors.SerializeToString()


def _shared_tensors(msg: pb.ModelInferRequest, regions: SharedMemoryRegistry | None) -> _Regions | None:
    """The tensors of ``msg`` in shared memory, read from their parameters as the message path
    read them; None when there are none."""
    model = msg.model_name
    inputs = []
    for t in msg.inputs:
        if len(t.parameters):
            what = f"model '{model}' input '{t.name}'"
            use = tensor_parameters.input_use(PbParameters(t.parameters), t.datatype, t.shape[:], what, regions)
            if use is not None:
                inputs.append((t.name, use))
    outputs = []
    for o in msg.outputs:
        if len(o.parameters):
            what = f"model '{model}' output '{o.name}'"
            use = tensor_parameters.output_use(PbParameters(o.parameters), what, regions)
            if use is not None:
                outputs.append((o.name, use))
    if not inputs and not outputs:
        return None
    return _Regions(tuple(inputs), tuple(outputs), tuple(t.name for t in msg.inputs))
