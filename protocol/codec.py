"""The one datatype codec: KServe datatype names <-> numpy dtypes <-> config ``TYPE_*`` names,
and raw tensor bytes <-> numpy arrays (including the length-prefixed BYTES wire format).

Every front end and backend converts through here, so a datatype is spelled in exactly one place.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .errors import InvalidArgument


@dataclass(frozen=True)
class DataType:
    name: str  # KServe v2 name, e.g. "FP32"
    config_name: str  # model_config.proto enum name, e.g. "TYPE_FP32"
    dtype: np.dtype  # numpy dtype; object for BYTES
    itemsize: int  # 0 for BYTES (variable length)
    wire: np.dtype  # the dtype of raw wire bytes: little-endian


def _dt(name: str, config_name: str, dtype: object) -> DataType:
    d = np.dtype(dtype)  # type: ignore[call-overload]
    itemsize = 0 if d == np.dtype(object) else d.itemsize
    return DataType(name, config_name, d, itemsize, d.newbyteorder("<") if itemsize > 1 else d)


_ALL = [
    _dt("BOOL", "TYPE_BOOL", np.bool_),
    _dt("UINT8", "TYPE_UINT8", np.uint8),
    _dt("UINT16", "TYPE_UINT16", np.uint16),
    _dt("UINT32", "TYPE_UINT32", np.uint32),
    _dt("UINT64", "TYPE_UINT64", np.uint64),
    _dt("INT8", "TYPE_INT8", np.int8),
    _dt("INT16", "TYPE_INT16", np.int16),
    _dt("INT32", "TYPE_INT32", np.int32),
    _dt("INT64", "TYPE_INT64", np.int64),
    _dt("FP16", "TYPE_FP16", np.float16),
    _dt("FP32", "TYPE_FP32", np.float32),
    _dt("FP64", "TYPE_FP64", np.float64),
    _dt("BF16", "TYPE_BF16", ml_dtypes.bfloat16),
    _dt("BYTES", "TYPE_STRING", object),
]
BY_NAME: dict[str, DataType] = {d.name: d for d in _ALL}
BY_CONFIG_NAME: dict[str, DataType] = {d.config_name: d for d in _ALL}
_BY_DTYPE: dict[np.dtype, DataType] = {d.dtype: d for d in _ALL}
# The per-request lookup: dtype.str ("<f4") is cheaper to hash than a dtype. Only numeric kinds,
# whose str is unambiguous ("<V2" could be any 2-byte void, so bfloat16 takes the slow path).
_BY_STR: dict[str, DataType] = {d.dtype.str: d for d in _ALL if d.dtype.kind in "biuf"}
BYTES = BY_NAME["BYTES"]
# Cheaper still: numpy's built-in dtypes are singletons, so the dtype objects inferd itself makes
# arrays with (and frameworks return) are found by identity. The DataTypes keep them alive.
_BY_ID: dict[int, DataType] = {id(d.dtype): d for d in _ALL if d.dtype.kind in "biuf"} | {
    id(d.wire): d for d in _ALL if d.dtype.kind in "biuf"
}

_LEN = struct.Struct("<I")


def datatype(name: str) -> DataType:
    """Look up a KServe datatype name; unknown names are the client's error."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise InvalidArgument(f"unknown datatype '{name}'; expected one of {', '.join(BY_NAME)}") from None


def from_config_type(config_name: str) -> DataType:
    try:
        return BY_CONFIG_NAME[config_name]
    except KeyError:
        raise InvalidArgument(f"unsupported data_type '{config_name}'") from None


def of_array(array: np.ndarray) -> DataType:
    """The KServe datatype of a numpy array (str/bytes arrays are BYTES)."""
    dt = array.dtype
    found = _BY_ID.get(id(dt)) or _BY_STR.get(dt.str)
    if found is not None:
        return found
    if dt.kind in "OSU":
        return BYTES
    found = _BY_DTYPE.get(dt.newbyteorder("=")) if dt.byteorder not in "=|" else _BY_DTYPE.get(dt)
    if found is None:
        raise InvalidArgument(f"numpy dtype {dt} has no KServe datatype")
    return found


# numpy's own limits, checked here so that a client's shape never reaches numpy's exceptions:
# at most 32 dimensions before numpy 2 and 64 since, and no array whose dims (zeros aside, as
# numpy counts them) times the widest item could exceed the address space.
MAX_DIMS = 64 if int(np.__version__.split(".")[0]) >= 2 else 32
_MAX_SPAN = (2**63 - 1) // 16


def element_count(shape: Sequence[int], what: str) -> int:
    """Number of elements of a client's shape, refusing what numpy could not hold: negative
    dimensions, more than MAX_DIMS of them, sizes beyond any array."""
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(f"{what}: the shape has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    span = 1
    for d in shape:
        if d < 0:
            raise InvalidArgument(f"{what}: shape {list(shape)} has a negative dimension")
        if d:
            span *= d
    if span > _MAX_SPAN:
        raise InvalidArgument(f"{what}: shape {list(shape)} is larger than any tensor can be")
    return math.prod(shape)


def from_raw(raw: bytes | memoryview, dt: DataType, shape: Sequence[int], what: str) -> np.ndarray:
    """Decode raw little-endian tensor bytes, checking the size against the shape first."""
    count = element_count(shape, what)
    if dt.itemsize == 0:
        return _decode_bytes(raw, count, shape, what)
    expected = count * dt.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"{what}: {len(raw)} bytes of raw data but shape {list(shape)} of {dt.name} needs {expected} bytes"
        )
    return np.frombuffer(raw, dtype=dt.wire).reshape(shape)


def _decode_bytes(raw: bytes | memoryview, count: int, shape: Sequence[int], what: str) -> np.ndarray:
    view = memoryview(raw)
    size = len(view)
    if count > size // 4:  # each element has a 4-byte length: check before allocating for them
        raise InvalidArgument(
            f"{what}: {size} bytes of data cannot hold the {count} BYTES elements of shape {list(shape)}"
        )
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > size:
            raise InvalidArgument(f"{what}: BYTES data ends after {i} of {count} elements (shape {list(shape)})")
        (n,) = _LEN.unpack_from(view, pos)
        pos += 4
        if n > size - pos:
            raise InvalidArgument(f"{what}: BYTES element {i} claims {n} bytes beyond the data")
        out[i] = bytes(view[pos : pos + n])
        pos += n
    if pos != size:
        raise InvalidArgument(
            f"{what}: {size - pos} bytes left over after {count} BYTES elements (shape {list(shape)})"
        )
    return out.reshape(shape)


def to_raw(array: np.ndarray) -> bytes:
    """Encode an array as the protocol's raw bytes (little-endian, row-major, BYTES prefixed)."""
    if array.dtype.kind in "OSU":
        if array.size == 1:  # one string (a streamed token): no iteration over a view
            b = as_bytes(array.item())
            return _LEN.pack(len(b)) + b
        return encode_bytes(array.ravel())
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()


def encode_bytes(elements: Iterable[object]) -> bytes:
    parts: list[bytes] = []
    for e in elements:
        b = as_bytes(e)
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def as_bytes(element: object) -> bytes:
    if isinstance(element, bytes):
        return element
    if isinstance(element, str):
        return element.encode("utf-8")
    if isinstance(element, (bytearray, memoryview, np.bytes_)):
        return bytes(element)
    return str(element).encode("utf-8")


def as_object_array(array: np.ndarray) -> np.ndarray:
    """BYTES tensors travel inside inferd as object arrays of ``bytes``."""
    if array.dtype == object:
        return array
    flat = [as_bytes(e) for e in array.ravel()]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(array.shape)
