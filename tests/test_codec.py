"""The datatype codec: round trips for every datatype, BYTES framing and size checks."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from inferd.protocol import codec
from inferd.protocol.errors import InvalidArgument

NUMERIC = [n for n, d in codec.BY_NAME.items() if d.itemsize]


@pytest.mark.parametrize("name", NUMERIC)
def test_raw_round_trip(name: str) -> None:
    dt = codec.BY_NAME[name]
    rng = np.random.default_rng(0)
    for shape in [(0,), (1,), (3, 5), (2, 1, 4)]:
        values = rng.standard_normal(shape) * 100
        array = values.astype(dt.dtype) if name != "BOOL" else values > 0
        raw = codec.to_raw(array)
        assert len(raw) == array.size * dt.itemsize
        back = codec.from_raw(raw, dt, shape, "t")
        assert back.dtype == dt.dtype and back.shape == shape
        np.testing.assert_array_equal(back.view(np.uint8), np.ascontiguousarray(array).view(np.uint8))
        assert codec.of_array(back) is dt


def test_big_endian_arrays_are_sent_little_endian() -> None:
    array = np.arange(4, dtype=">i4")
    assert codec.to_raw(array) == np.arange(4, dtype="<i4").tobytes()


def test_bf16_is_ml_dtypes() -> None:
    array = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    assert codec.of_array(array).name == "BF16"
    assert codec.from_raw(codec.to_raw(array), codec.BY_NAME["BF16"], (2,), "t").tolist() == [1.5, -2.0]


def test_bytes_round_trip() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(0, 6))
        elems = [bytes(rng.integers(0, 256, int(rng.integers(0, 20)), dtype=np.uint8)) for _ in range(n)]
        array = np.empty(n, dtype=object)
        array[:] = elems
        raw = codec.to_raw(array)
        assert len(raw) == sum(4 + len(e) for e in elems)
        back = codec.from_raw(raw, codec.BYTES, (n,), "t")
        assert list(back) == elems


def test_bytes_accepts_str_and_numpy_strings() -> None:
    assert codec.to_raw(np.array(["ab", "é"])) == b"\x02\x00\x00\x00ab\x02\x00\x00\x00\xc3\xa9"
    assert codec.to_raw(np.array([b"ab"])) == b"\x02\x00\x00\x00ab"


@pytest.mark.parametrize(
    "raw,count,words",
    [
        (b"\x01\x00\x00", 1, "3 bytes of data cannot hold the 1 BYTES elements"),  # before allocating
        (b"\x00\x00\x00\x00", 2, "cannot hold the 2 BYTES elements"),
        (b"\xff\xff\xff\xff", 1, "beyond the data"),
        (b"\x00\x00\x00\x00\x00", 1, "left over"),
        (b"\x04\x00\x00\x00abcd", 2, "ends after 1"),
    ],
)
def test_bad_bytes_framing(raw: bytes, count: int, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        codec.from_raw(raw, codec.BYTES, (count,), "model 'm' input 'x'")


def test_size_checked_without_overflow() -> None:
    with pytest.raises(InvalidArgument, match="larger than any tensor"):
        codec.from_raw(b"\x00" * 8, codec.BY_NAME["FP32"], (2**62, 2**62, 2), "t")
    with pytest.raises(InvalidArgument, match="needs 4000000000000 bytes"):
        codec.from_raw(b"\x00" * 8, codec.BY_NAME["FP32"], (10**6, 10**6), "t")
    with pytest.raises(InvalidArgument, match="65 dimensions"):
        codec.from_raw(b"\x00" * 4, codec.BY_NAME["FP32"], (1,) * 65, "t")
    with pytest.raises(InvalidArgument, match="negative"):
        codec.from_raw(b"", codec.BY_NAME["FP32"], (-1,), "t")


def test_unknown_names() -> None:
    with pytest.raises(InvalidArgument, match="unknown datatype 'FLOAT'"):
        codec.datatype("FLOAT")
    assert codec.from_config_type("TYPE_STRING") is codec.BYTES
    with pytest.raises(InvalidArgument):
        codec.of_array(np.array([1 + 2j]))
