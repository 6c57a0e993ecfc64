"""The JSON decoder's one-element fast path gives what the general path gives: the same array
(dtype, shape, value) or the same error, for every datatype and kind of JSON value."""

from __future__ import annotations

import numpy as np
import pytest
from inferd.protocol import codec
from inferd.protocol.errors import InvalidArgument
from inferd.server.frontends import http_convert

DATATYPES = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64"]
VALUES = [
    True,
    False,
    0,
    1,
    -1,
    127,
    128,
    -129,
    255,
    256,
    65535,
    2**31 - 1,
    2**31,
    -(2**31) - 1,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64,
    0.5,
    -2.75,
    1e300,
    None,
    "7",
]


def _decode(value: object, datatype: str, shape: tuple[int, ...]) -> np.ndarray | str:
    try:
        return http_convert._numbers([value], codec.datatype(datatype), shape, "input 'x'")
    except InvalidArgument as e:
        return e.message


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e300 as FP16/FP32: inf, both paths
@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("shape", [(1,), (1, 1)])
def test_one_element_matches_the_general_path(
    monkeypatch: pytest.MonkeyPatch, datatype: str, shape: tuple[int, ...]
) -> None:
    fast = [_decode(v, datatype, shape) for v in VALUES]
    monkeypatch.setattr(http_convert, "_SCALAR_DTYPES", {})
    general = [_decode(v, datatype, shape) for v in VALUES]
    for value, a, b in zip(VALUES, fast, general):
        if isinstance(b, str):
            assert a == b, value
        else:
            assert isinstance(a, np.ndarray), (value, a)
            assert a.dtype == b.dtype and a.shape == b.shape, value
            assert a.tobytes() == b.tobytes(), value
