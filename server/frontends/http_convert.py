"""Conversions between KServe v2 JSON bodies (with Triton's binary tensor data extension) and
the core's types, in both directions.

This is the only place that knows the JSON layout of tensors. Numeric JSON data becomes numpy
in one ``np.asarray`` call (no per-element Python loop) after its length has been checked
against the shape; binary data is decoded by the codec with ``np.frombuffer``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...protocol import codec
from ...protocol.errors import InvalidArgument
from ...protocol.types import InferRequest, InferResponse, Scalar
from ..shm import SharedMemoryRegistry
from . import tensor_parameters
from .request_limits import DEFAULT_MAX_ELEMENTS, ElementBudget, too_many_elements

# Deep enough for any tensor rank numpy supports inside {"inputs": [{"data": ...}]}, shallow
# enough that no parser recursion can be driven by a request.
MAX_JSON_DEPTH = 64
# JSON has no 16-bit float; the protocol carries these only as binary data.
BINARY_ONLY = frozenset({"FP16", "BF16"})
FP16_MAX = 65504.0

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# bytes.translate table: '[' and '{' -> +1, ']' and '}' -> -1 (as int8), everything else deleted.
_BRACKETS = bytes(range(256)).translate(bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff"))
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[{]}")


@dataclass(slots=True)
class OutputFormat:
    """Which outputs go back as binary data: per output ``binary_data``, else the request's
    ``binary_data_output``."""

    default_binary: bool = False
    explicit: dict[str, bool] = field(default_factory=dict)
    in_region: frozenset[str] = frozenset()  # written into shared memory: no data in the body

    def binary(self, name: str) -> bool:
        return self.explicit.get(name, self.default_binary)

    def all_binary(self, requested: list[str] | None) -> bool:
        """Whether every output goes back binary or into shared memory (``None``: all of the
        model's outputs)."""
        if requested is None:
            return self.default_binary  # per-output flags come only with a requested list
        return all(self.binary(n) or n in self.in_region for n in requested)


# --- parsing -------------------------------------------------------------------------------
def parse_header_length(value: str | None) -> int | None:
    """The ``Inference-Header-Content-Length`` header: a non-negative decimal or absent."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise InvalidArgument(f"Inference-Header-Content-Length must be a non-negative integer, got '{value[:40]}'")
    return int(value)


def split_body(
    body: memoryview, header_length: int | None, max_values: int = DEFAULT_MAX_ELEMENTS
) -> tuple[dict[str, Any], memoryview]:
    """The leading JSON object and the binary data after it."""
    n = len(body) if header_length is None else header_length
    if n > len(body):
        raise InvalidArgument(
            f"Inference-Header-Content-Length {n} is larger than the request body ({len(body)} bytes)"
        )
    return parse_json(body[:n], max_values), body[n:]


def parse_json(data: bytes | memoryview, max_values: int = DEFAULT_MAX_ELEMENTS) -> dict[str, Any]:
    """A JSON object of at most MAX_JSON_DEPTH levels and ``max_values`` values, both
    checked before the parser builds anything."""
    text = bytes(data)
    check_values(text, max_values)  # first: it bounds the brackets check_depth counts
    check_depth(text)
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"malformed JSON in the request body: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return doc


def check_values(text: bytes, limit: int) -> None:
    """Refuse JSON that could hold more than ``limit`` values, before the parser makes a
    Python object of each (an empty list costs 64 bytes, 21x its 3 bytes of text). Every value
    but the first follows a ',' or ':' or opens a container, so their count bounds the values
    (strings' commas count too: an overestimate). Texts shorter than ``limit`` cannot exceed it."""
    if len(text) <= limit:
        return
    if text.count(b",") + text.count(b":") + text.count(b"[") + text.count(b"{") >= limit:
        raise too_many_elements(limit, "the JSON body")


def check_depth(text: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit``, before any parser sees it (C-speed scan)."""
    if text.count(b"[") + text.count(b"{") <= limit:
        return
    steps = _STRING.sub(b'""', text).translate(_BRACKETS, _NOT_BRACKETS)
    depth = np.cumsum(np.frombuffer(steps, dtype=np.int8), dtype=np.int32)
    if depth.size and int(depth.max()) > limit:
        raise InvalidArgument(f"JSON nesting is deeper than {limit} levels")


def decode_request(
    model: str,
    version: str,
    body: memoryview,
    header_length: int | None,
    regions: SharedMemoryRegistry | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> tuple[InferRequest, OutputFormat]:
    """A whole infer request body: JSON, or JSON then binary tensor data; tensors may name
    shared-memory ``regions`` instead (refused when None). At most ``max_elements`` JSON values,
    and as many BYTES elements in binary data (request_limits)."""
    doc, binary = split_body(body, header_length, max_elements)
    return request_from_json(model, version, doc, binary, regions, max_elements)


def request_from_json(
    model: str,
    version: str,
    doc: dict[str, Any],
    binary: memoryview,
    regions: SharedMemoryRegistry | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    fp16_numbers: bool = False,
) -> tuple[InferRequest, OutputFormat]:
    """``fp16_numbers``: FP16 input data may be JSON numbers (inferd batch, which has no binary
    data); HTTP refuses them, as Triton does."""
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument(f"model '{model}': 'id' must be a string")
    params = _parameters(doc.get("parameters"), f"model '{model}'")
    mark = regions.mark() if regions else None  # regions: truthy once one is registered
    default_binary = params.pop("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise InvalidArgument(f"model '{model}': parameter 'binary_data_output' must be true or false")
    inputs = _inputs(model, doc.get("inputs"), binary, regions, ElementBudget(max_elements), fp16_numbers)
    fmt = OutputFormat(default_binary)
    outputs, targets, classes = _requested_outputs(model, doc.get("outputs"), fmt, regions)
    if targets:
        fmt.in_region = frozenset(targets)
    request = InferRequest(
        model, inputs, version, request_id, outputs, params, output_regions=targets, classification=classes
    )
    if mark is not None and regions is not None:
        regions.attach_use(request, mark)
    return request, fmt


def _parameters(value: Any, what: str) -> dict[str, Scalar]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what}: 'parameters' must be a JSON object")
    for key, v in value.items():
        if not isinstance(v, (bool, int, float, str)):
            raise InvalidArgument(f"{what}: parameter '{key}' must be a boolean, number or string")
    return dict(value)


def _name(t: Any, what: str) -> str:
    if not isinstance(t, dict):
        raise InvalidArgument(f"{what}: each tensor must be a JSON object")
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{what}: a tensor has no 'name' string")
    return name


def _inputs(
    model: str,
    value: Any,
    binary: memoryview,
    regions: SharedMemoryRegistry | None,
    budget: ElementBudget,
    fp16_numbers: bool = False,
) -> dict[str, np.ndarray]:
    if not isinstance(value, list):
        raise InvalidArgument(f"model '{model}': 'inputs' must be a list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for t in value:
        name = _name(t, f"model '{model}' inputs")
        if name in inputs:
            raise InvalidArgument(f"model '{model}': input '{name}' is given more than once")
        what = f"model '{model}' input '{name}'"
        datatype = t.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidArgument(f"{what}: 'datatype' must be a string")
        dt = codec.datatype(datatype)
        shape = _shape(t.get("shape"), what)
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidArgument(f"{what}: 'parameters' must be a JSON object")
        if params and tensor_parameters.uses_shared_memory(params):
            tensor_parameters.refuse_if_disabled(params, what, regions)
            if "data" in t or "binary_data_size" in params:
                raise InvalidArgument(
                    f"{what}: Input must set only one of the following fields: 'data', 'binary_data_size' in "
                    "'parameters', 'shared_memory_region' in 'parameters'"
                )
            array = tensor_parameters.input_from_region(params, datatype, shape, what, regions)
            assert array is not None
            inputs[name] = array
            continue
        size = params.get("binary_data_size")
        if size is None:
            if "data" not in t:
                raise InvalidArgument(f"{what}: has neither 'data' nor a 'binary_data_size' parameter")
            inputs[name] = _from_json(t["data"], dt, shape, what, fp16_numbers)
            continue
        if "data" in t:
            raise InvalidArgument(f"{what}: has both 'data' and a 'binary_data_size' parameter")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"{what}: 'binary_data_size' must be a non-negative integer")
        left = len(binary) - offset
        if size > left:
            raise InvalidArgument(
                f"{what}: binary_data_size {size} is more than the {left} bytes of binary data left in the body"
            )
        # BYTES: one object per element (JSON's are bounded by check_values); more elements than
        # the bytes can hold is the client's error, which _from_binary reports.
        if not dt.itemsize and (count := codec.element_count(shape, what)) <= size // 4:
            budget.take(count, what)
        inputs[name] = _from_binary(binary[offset : offset + size], dt, shape, what)
        offset += size
    if offset != len(binary):
        raise InvalidArgument(
            f"model '{model}': the body has {len(binary) - offset} bytes of binary data that no input's "
            "binary_data_size accounts for"
        )
    return inputs


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidArgument(f"{what}: 'shape' must be a list of integers")
    return tuple(value)


def _from_binary(raw: memoryview, dt: codec.DataType, shape: tuple[int, ...], what: str) -> np.ndarray:
    array = codec.from_raw(raw, dt, shape, what)  # sizes checked against the bytes before allocating
    # Zero-copy when the data is aligned (the usual case, see http_body); backends may assume it.
    return array if array.flags.aligned else array.copy()


def _from_json(
    data: Any, dt: codec.DataType, shape: tuple[int, ...], what: str, fp16_numbers: bool = False
) -> np.ndarray:
    if dt.name in BINARY_ONLY:
        if fp16_numbers and dt.name == "FP16":
            return _fp16(_from_json(data, codec.datatype("FP32"), shape, what), what)
        raise InvalidArgument(
            f"{what}: {dt.name} data cannot be sent as JSON; send it as binary data "
            "(the 'binary_data_size' parameter of the binary tensor extension)"
        )
    if not isinstance(data, list):
        raise InvalidArgument(f"{what}: 'data' must be a JSON array")
    count = codec.element_count(shape, what)
    found = _nested_count(data)
    if found != count:
        raise InvalidArgument(f"{what}: 'data' has {found} elements but shape {list(shape)} needs {count}")
    if dt.itemsize == 0:
        return _strings(data, count, shape, what)
    return _numbers(data, dt, shape, what)


def _fp16(array: np.ndarray, what: str) -> np.ndarray:
    finite = np.isfinite(array)
    if np.any(np.abs(array[finite]) > FP16_MAX):
        raise InvalidArgument(f"{what}: a value does not fit FP16 (at most {FP16_MAX:g} in magnitude)")
    return array.astype(np.float16)


def _nested_count(data: list[Any]) -> int:
    """Element count implied by the first element at each level (ragged data fails later)."""
    n, x = 1, data
    while isinstance(x, list):
        n *= len(x)
        if not x:
            break
        x = x[0]
    return n


_KIND_OK = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_KIND_NAME = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers", "U": "strings"}


# What np.asarray makes of one plain JSON value: the type its kind checks read. A Python int
# outside int64 is left to np.asarray (uint64 or object), as are other types.
_SCALAR_DTYPES: dict[type, np.dtype[Any]] = {
    bool: np.dtype(np.bool_),
    int: np.dtype(np.int64),
    float: np.dtype(np.float64),
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _numbers(data: list[Any], dt: codec.DataType, shape: tuple[int, ...], what: str) -> np.ndarray:
    target = dt.dtype
    if len(data) == 1:  # a scalar (generate's inputs, parameters-like tensors): no inference pass
        value = data[0]
        dtype = _SCALAR_DTYPES.get(type(value))
        if dtype is not None and (dtype.kind != "i" or _INT64_MIN <= value <= _INT64_MAX):
            return _checked(np.array(data, dtype=dtype), dt, shape, what)
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidArgument(f"{what}: 'data' is not a regular (non-ragged) array") from None
    if array.size != codec.element_count(shape, what):
        raise InvalidArgument(f"{what}: 'data' is not a regular (non-ragged) array of shape {list(shape)}")
    if array.size == 0:
        return np.empty(shape, dtype=target)
    return _checked(array, dt, shape, what)


def _checked(array: np.ndarray, dt: codec.DataType, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``array`` (what np.asarray made of the JSON data) as ``dt``, if its values fit."""
    target = dt.dtype
    kind = array.dtype.kind
    if kind not in _KIND_OK[target.kind]:
        got = _KIND_NAME.get(kind, "nulls, objects or out-of-range numbers")
        raise InvalidArgument(f"{what}: {dt.name} data must be {_KIND_NAME[target.kind]}, got {got}")
    if target.kind in "iu" and array.dtype != target:
        info = np.iinfo(target)
        if array.size == 1:
            lo = hi = int(array.reshape(-1)[0])
        else:
            lo, hi = int(array.min()), int(array.max())
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise InvalidArgument(f"{what}: value {bad} does not fit {dt.name}")
    return array.astype(target, copy=False).reshape(shape)


def _strings(data: list[Any], count: int, shape: tuple[int, ...], what: str) -> np.ndarray:
    flat: list[bytes] = []
    _flatten_strings(data, flat, what)
    if len(flat) != count:
        raise InvalidArgument(f"{what}: 'data' has {len(flat)} strings but shape {list(shape)} needs {count}")
    out = np.empty(count, dtype=object)
    out[:] = flat
    return out.reshape(shape)


def _flatten_strings(data: list[Any], out: list[bytes], what: str) -> None:
    for i, e in enumerate(data):
        if isinstance(e, str):
            try:
                out.append(e.encode("utf-8"))
            except UnicodeEncodeError:
                raise InvalidArgument(f"{what}: a string is not valid Unicode (lone surrogate)") from None
            data[i] = None  # the parsed document's copy goes as its bytes come: one copy at a time
        elif isinstance(e, list):
            _flatten_strings(e, out, what)  # depth is bounded by check_depth
        else:
            raise InvalidArgument(f"{what}: BYTES data must be strings, got {type(e).__name__}")


def _requested_outputs(
    model: str, value: Any, fmt: OutputFormat, regions: SharedMemoryRegistry | None
) -> tuple[list[str] | None, dict[str, memoryview] | None, dict[str, int] | None]:
    if value is None:
        return None, None, None
    if not isinstance(value, list):
        raise InvalidArgument(f"model '{model}': 'outputs' must be a list")
    names = []
    targets: dict[str, memoryview] | None = None
    classes: dict[str, int] | None = None
    for t in value:
        name = _name(t, f"model '{model}' outputs")
        what = f"model '{model}' output '{name}'"
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidArgument(f"{what}: 'parameters' must be a JSON object")
        flag = params.get("binary_data")
        if flag is not None:
            if not isinstance(flag, bool):
                raise InvalidArgument(f"{what}: 'binary_data' must be true or false")
            fmt.explicit[name] = flag
        if params:
            if flag and tensor_parameters.uses_shared_memory(params):
                raise InvalidArgument(f"{what}: Output can't set both 'shared_memory_region' and 'binary_data'")
            target = tensor_parameters.output_region(params, what, regions)
            if target is not None:
                targets = targets or {}
                targets[name] = target
            if count := tensor_parameters.classification_count(params, what):
                classes = classes or {}
                classes[name] = count
        names.append(name)
    return names, targets, classes


# --- responses -----------------------------------------------------------------------------
def check_json_outputs(fmt: OutputFormat, datatypes: dict[str, str], requested: list[str] | None) -> None:
    """Refuse, before running the model, outputs that would have to be JSON but cannot be."""
    for name in requested or list(datatypes):
        if datatypes.get(name) in BINARY_ONLY and not fmt.binary(name) and name not in fmt.in_region:
            raise InvalidArgument(_binary_only_message(name, datatypes[name]))


def _binary_only_message(name: str, datatype: str) -> str:
    return (
        f"output '{name}' is {datatype}, which JSON cannot carry; request it as binary data "
        "(output parameter 'binary_data': true, or request parameter 'binary_data_output': true)"
    )


# JSON headers of all-binary responses, by model, version and output layout (see _binary).
_BINARY_HEADERS: dict[tuple[object, ...], bytes] = {}
_BINARY_HEADERS_MAX = 1024


def response_to_http(
    response: InferResponse, fmt: OutputFormat, numbers_for_binary_only: bool = False
) -> tuple[bytes, int | None]:
    """The body, and the JSON header's length when binary data follows it (else None).
    ``numbers_for_binary_only``: FP16 and BF16 outputs asked for as JSON are written as JSON
    numbers (their exact values) instead of refused (inferd batch: JSON is all it writes)."""
    if response.outputs and not (response.id or response.parameters or response.in_shared_memory):
        answer = _binary(response, fmt)
        if answer is not None:
            return answer
    return _response_to_http(response, fmt, numbers_for_binary_only)


def _binary(response: InferResponse, fmt: OutputFormat) -> tuple[bytes, int] | None:
    """The usual tritonclient answer: every output numeric and sent as binary data. Its JSON
    header depends only on the model, the version and each output's name, datatype and shape,
    so it is made once (by the general path) and reused."""
    layout: list[object] = [response.model_name, response.model_version]
    for name, array in response.outputs.items():
        if array.dtype.hasobject or not fmt.binary(name):
            return None
        layout.append((name, codec.of_array(array).name, array.shape))
    key = tuple(layout)
    header = _BINARY_HEADERS.get(key)
    if header is None:
        body, length = _response_to_http(response, fmt)
        assert length is not None
        if len(_BINARY_HEADERS) >= _BINARY_HEADERS_MAX:
            _BINARY_HEADERS.clear()
        _BINARY_HEADERS[key] = body[:length]
        return body, length
    return b"".join([header, *(codec.to_raw(a) for a in response.outputs.values())]), len(header)


def _response_to_http(
    response: InferResponse, fmt: OutputFormat, numbers_for_binary_only: bool = False
) -> tuple[bytes, int | None]:
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    in_region = response.in_shared_memory
    for name, array in response.outputs.items():
        dt = codec.of_array(array)
        entry: dict[str, Any] = {"name": name, "datatype": dt.name, "shape": list(array.shape)}
        if name in in_region:
            pass  # in the client's shared memory: name, datatype and shape only, as Triton answers
        elif fmt.binary(name):
            raw = codec.to_raw(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif dt.name in BINARY_ONLY:
            if not numbers_for_binary_only:
                raise InvalidArgument(_binary_only_message(name, dt.name))
            entry["data"] = array.astype(np.float32).ravel().tolist()
        elif dt.itemsize == 0:
            entry["data"] = [codec.as_bytes(e).decode("utf-8", "replace") for e in array.ravel()]
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = dict(response.parameters)
    doc["outputs"] = outputs
    header = dumps(doc)
    if not any(fmt.binary(name) and name not in in_region for name in response.outputs):
        return header, None
    return b"".join([header, *chunks]), len(header)


def dumps(doc: Any) -> bytes:
    # NaN/Inf pass through as the literals Python and rapidjson (tritonclient) read back.
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")
