"""Triton's generate extension: its JSON request to the core's request, and each response back.

A request is one JSON object. ``id`` is the request id. Every other key, and every key of the
nested ``parameters`` object, is an input tensor when the model has an input of that name and
otherwise a request parameter (a string, number or boolean). A tensor's value is a scalar or a
flat list; its shape is the input's (from the model's metadata) with the dimensions of -1
filled as Triton fills them: the fixed dimensions take their share of the element count, the
innermost variable one the rest, the others 1.

A response becomes ``id`` (when set), ``model_name``, ``model_version``, the response's
parameters and one key per output tensor: its value, or a list of its values when it has more
than one element (strings for BYTES).
"""

from __future__ import annotations

from collections.abc import Mapping
from json.encoder import encode_basestring_ascii
from typing import Any

import numpy as np

from ...protocol import codec
from ...protocol.errors import InvalidArgument
from ...protocol.types import InferRequest, InferResponse, Scalar, TensorMetadata
from .http_convert import dumps, request_from_json

NESTED = "parameters"  # the one nested object of Triton's generate request schema


def decode_generate(
    model: str, version: str, doc: dict[str, Any], inputs: Mapping[str, TensorMetadata]
) -> InferRequest:
    """The core's request for a generate request ``doc``; ``inputs`` is the model's metadata."""
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument(f"model '{model}': 'id' must be a string")
    tensors: list[dict[str, Any]] = []
    parameters: dict[str, Scalar] = {}

    def take(key: str, value: Any) -> None:
        meta = inputs.get(key)
        if meta is None:
            parameters[key] = _parameter(key, value)
            return
        data = value if isinstance(value, list) else [value]
        tensors.append(
            {"name": key, "datatype": meta.datatype, "shape": _shape(key, meta.shape, len(data)), "data": data}
        )

    for key, value in doc.items():
        if key == "id":
            continue
        if key != NESTED:
            take(key, value)
            continue
        if NESTED in inputs:
            raise InvalidArgument(f"Keyword '{NESTED}' for nested schema also given as input tensor name")
        if not isinstance(value, dict):
            raise InvalidArgument(f"Expected JSON object for keyword: '{NESTED}'")
        for nested_key, nested_value in value.items():
            take(nested_key, nested_value)
    # The KServe JSON decoder checks datatypes, ranges, strings and counts, as for /infer.
    request, _ = request_from_json(model, version, {"id": request_id, "inputs": tensors}, memoryview(b""))
    request.parameters = parameters
    return request


def _parameter(key: str, value: Any) -> Scalar:
    if isinstance(value, (bool, int, float, str)):
        return value
    raise InvalidArgument(f"parameter '{key}' has invalid type. It should be either 'int', 'bool', or 'string'.")


def _shape(name: str, dims: list[int], count: int) -> list[int]:
    """Triton's two passes: fixed dimensions divide the count, then the innermost -1 takes
    what is left and the other -1s become 1."""
    shape = list(dims)
    left = count
    for d in reversed(shape):
        if d == -1:
            continue
        if (d == 0 and count) or (d and left % d):
            raise InvalidArgument(f"The schema can not convert input '{name}' to tensor with proper shape")
        left = left // d if d else left
    for i in reversed(range(len(shape))):
        if shape[i] == -1:
            shape[i], left = left, 1
    if left != 1 and count:
        raise InvalidArgument(f"The schema can not convert input '{name}' to tensor with proper shape")
    return shape


def encode_generate(response: InferResponse) -> dict[str, Any]:
    """One response as the generate extension's JSON object (reserved keys win a clash, as in
    Triton: an output named ``model_name`` does not replace the model's name)."""
    doc: dict[str, Any] = {}
    if response.id:
        doc["id"] = response.id
    doc["model_name"] = response.model_name
    doc["model_version"] = response.model_version
    for key, value in response.parameters.items():
        doc.setdefault(key, value)
    for name, array in response.outputs.items():
        doc.setdefault(name, _value(array))
    return doc


def _value(array: np.ndarray) -> Any:
    dt = codec.of_array(array)
    if dt.itemsize == 0:
        values: list[Any] = [codec.as_bytes(e).decode("utf-8", "replace") for e in array.ravel()]
    elif dt.name in ("FP16", "BF16"):
        values = array.astype(np.float32).ravel().tolist()  # no binary data here: JSON numbers
    else:
        values = array.ravel().tolist()
    return values[0] if len(values) == 1 else values


_RESERVED = frozenset(("id", "model_name", "model_version"))


class Frames:
    """The Server-Sent Events of one stream's responses: ``data: <encode_generate's JSON>``.
    A streamed piece of text (no parameters, one-element string outputs) is written straight
    to bytes, the same bytes as ``dumps`` gives; anything else takes the general path."""

    def __init__(self) -> None:
        self._head: bytes | None = None
        self._who: tuple[str, str, str] = ("", "", "")
        self._keys: dict[str, str] = {}

    def event(self, response: InferResponse) -> bytes:
        if not response.parameters:
            body = self._text_only(response)
            if body is not None:
                return body
        return b"data: " + dumps(encode_generate(response)) + b"\n\n"

    def _text_only(self, response: InferResponse) -> bytes | None:
        parts = []
        keys = self._keys
        for name, array in response.outputs.items():
            if array.dtype.kind != "O" or array.size != 1 or name in _RESERVED:
                return None
            element = array.item()
            if not isinstance(element, bytes):
                return None
            key = keys.get(name)
            if key is None:
                key = keys[name] = "," + encode_basestring_ascii(name) + ":"
            parts.append(key)
            parts.append(encode_basestring_ascii(element.decode("utf-8", "replace")))
        who = (response.id, response.model_name, response.model_version)
        head = self._head
        if head is None or who != self._who:  # the same for every response of a stream
            doc = {"id": response.id} if response.id else {}
            doc["model_name"] = response.model_name
            doc["model_version"] = response.model_version
            head = self._head = b"data: " + dumps(doc)[:-1]
            self._who = who
        return head + "".join(parts).encode("ascii") + b"}\n\n"
