"""Where values sit in the protocol's protobuf messages: the typed ``contents`` field of each
datatype, and the oneof of an ``InferParameter``. Shared by the server's front end and the client."""

from __future__ import annotations

from typing import Any

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


def set_parameter(target: Any, value: bool | int | float | str) -> None:
    """Store ``value`` in an ``InferParameter`` message, in the oneof field of its type."""
    if isinstance(value, bool):  # before int: a bool is an int too
        target.bool_param = value
    elif isinstance(value, int):
        if value >= 1 << 63:  # a uint64 (a correlation id from 2**63 up): int64_param cannot hold it
            target.uint64_param = value
        else:
            target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)
