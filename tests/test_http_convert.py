"""Unit tests of the HTTP converters and the body reader, on golden payloads."""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from collections.abc import AsyncIterator

import numpy as np
import pytest
from inferd.protocol.errors import Code, InvalidArgument, ResourceExhausted, Unimplemented
from inferd.protocol.messages import message_to_dict
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.types import InferResponse
from inferd.server.frontends import http_convert as conv
from inferd.server.frontends import http_metadata as meta
from inferd.server.frontends.grpc_metadata import statistics_to_pb
from inferd.server.frontends.http_body import ALIGNMENT, read_body
from inferd.server.frontends.http_service import STATUS
from inferd.server.stats import ExecutionTimes, ModelStats

EMPTY = memoryview(b"")


def request(doc: dict, binary: bytes = b""):  # type: ignore[no-untyped-def,type-arg]
    return conv.request_from_json("m", "", doc, memoryview(binary))


def test_every_code_has_a_status() -> None:
    assert set(STATUS) == set(Code)
    assert STATUS[Code.INVALID_ARGUMENT] == 400 and STATUS[Code.NOT_FOUND] == 404
    assert STATUS[Code.UNAVAILABLE] == 503 and STATUS[Code.RESOURCE_EXHAUSTED] == 413
    assert STATUS[Code.UNIMPLEMENTED] == 501 and STATUS[Code.INTERNAL] == 500


def test_json_request_golden() -> None:
    doc = {
        "id": "42",
        "parameters": {"priority": 1, "binary_data_output": True, "custom": "x"},
        "inputs": [
            {"name": "A", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]},
            {"name": "B", "shape": [3], "datatype": "FP64", "data": [1, 2.5, float("nan")]},
            {"name": "C", "shape": [1, 2], "datatype": "BYTES", "data": [["a", "ü"]]},
            {"name": "D", "shape": [2], "datatype": "BOOL", "data": [True, False]},
            {"name": "E", "shape": [0, 3], "datatype": "UINT8", "data": []},
        ],
        "outputs": [{"name": "X", "parameters": {"binary_data": False}}, {"name": "Y"}],
    }
    req, fmt = request(doc)
    assert req.model_name == "m" and req.id == "42" and req.outputs == ["X", "Y"]
    assert req.parameters == {"priority": 1, "custom": "x"}  # binary_data_output is HTTP's own
    assert req.inputs["A"].dtype == np.int32 and req.inputs["A"].tolist() == [[1, 2], [3, 4]]
    assert req.inputs["B"].dtype == np.float64 and np.isnan(req.inputs["B"][2])
    assert req.inputs["C"].dtype == object and req.inputs["C"].tolist() == [[b"a", "ü".encode()]]
    assert req.inputs["D"].tolist() == [True, False]
    assert req.inputs["E"].shape == (0, 3) and req.inputs["E"].dtype == np.uint8
    assert not fmt.binary("X") and fmt.binary("Y")


def test_binary_request_is_zero_copy() -> None:
    a = np.arange(6, dtype=np.float32)
    b = np.array([-1, 7], dtype=np.int64)
    strings = struct.pack("<I", 2) + b"hi" + struct.pack("<I", 0)
    doc = {
        "inputs": [
            {"name": "A", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
            {"name": "B", "shape": [2], "datatype": "INT64", "parameters": {"binary_data_size": 16}},
            {"name": "S", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(strings)}},
        ]
    }
    buffer = bytearray(a.tobytes() + b.tobytes() + strings)
    req, _ = request(doc, buffer)  # type: ignore[arg-type]
    np.testing.assert_array_equal(req.inputs["A"], a.reshape(2, 3))
    np.testing.assert_array_equal(req.inputs["B"], b)
    assert req.inputs["S"].tolist() == [b"hi", b""]
    buffer[0:4] = np.float32(9).tobytes()
    assert req.inputs["A"][0, 0] == 9  # a view of the body, not a copy


def test_misaligned_binary_input_is_copied_aligned() -> None:
    raw = b"\0" + np.arange(4, dtype=np.float64).tobytes()
    doc = {
        "inputs": [
            {"name": "P", "shape": [1], "datatype": "UINT8", "parameters": {"binary_data_size": 1}},
            {"name": "Q", "shape": [4], "datatype": "FP64", "parameters": {"binary_data_size": 32}},
        ]
    }
    req, _ = request(doc, raw)
    assert req.inputs["Q"].flags.aligned and req.inputs["Q"].tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "tensor,words",
    [
        ({"datatype": "INT8", "data": [1, 300]}, "300 does not fit INT8"),
        ({"datatype": "UINT16", "data": [-1, 2]}, "-1 does not fit UINT16"),
        ({"datatype": "INT32", "data": [1.0, 2.5]}, "must be integers"),
        ({"datatype": "BOOL", "data": [1, 0]}, "must be booleans"),
        ({"datatype": "FP32", "data": [True, False]}, "must be numbers"),
        ({"datatype": "FP32", "data": ["1", "2"]}, "strings"),
        ({"datatype": "FP32", "data": [1, None]}, "nulls"),
        ({"datatype": "FP32", "data": {"a": 1}}, "must be a JSON array"),
        ({"datatype": "BF16", "data": [1, 2]}, "binary data"),
        ({"datatype": "BYTES", "data": ["a", 2]}, "must be strings"),
        ({"datatype": "BYTES", "data": ["a", "\ud800"]}, "surrogate"),
        ({"datatype": "FP32", "data": [1, 2], "parameters": {"binary_data_size": 8}}, "both"),
        ({"datatype": "FP32", "data": [1, 2], "shape": [2.0]}, "list of integers"),
        ({"datatype": "FP32", "data": [1, 2], "shape": [True, 2]}, "list of integers"),
    ],
)
def test_bad_json_tensors(tensor: dict, words: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidArgument, match=words):
        request({"inputs": [{"name": "A", "shape": [2], **tensor}]})


@pytest.mark.parametrize(
    "doc,words",
    [
        ({"inputs": [], "id": 5}, "'id' must be a string"),
        ({"inputs": [], "parameters": []}, "'parameters' must be a JSON object"),
        ({"inputs": [], "parameters": {"binary_data_output": 1}}, "binary_data_output"),
        ({"inputs": [{"name": "A"}, {"name": "A"}]}, "more than once"),
        ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, "no 'name'"),
        ({"inputs": [], "outputs": [{"name": "X", "parameters": {"binary_data": "yes"}}]}, "true or false"),
    ],
)
def test_bad_requests(doc: dict, words: str) -> None:  # type: ignore[type-arg]
    doc["inputs"] = [{"shape": [1], "datatype": "FP32", "data": [1], **t} for t in doc["inputs"]]
    with pytest.raises(InvalidArgument, match=words):
        request(doc)


def test_unimplemented_parameters() -> None:
    with pytest.raises(Unimplemented):
        request(
            {"inputs": [{"name": "A", "shape": [1], "datatype": "FP32", "parameters": {"shared_memory_region": "r"}}]}
        )
    # Classification is implemented: the count reaches the core.
    parsed, _ = request({"inputs": [], "outputs": [{"name": "X", "parameters": {"classification": 3}}]})
    assert parsed.classification == {"X": 3}


def test_response_golden_json_and_binary() -> None:
    outputs = {
        "F": np.array([[1.5, np.inf]], np.float32),
        "S": np.array([b"ok", b"\xff"], dtype=object),
        "H": np.array([1, 2], np.float16),
    }
    fmt = conv.OutputFormat(default_binary=False, explicit={"H": True})
    body, header_length = conv.response_to_http(InferResponse("m", "1", outputs, "7"), fmt)
    assert header_length is not None
    header = json.loads(body[:header_length])
    assert header == {
        "model_name": "m",
        "model_version": "1",
        "id": "7",
        "outputs": [
            {"name": "F", "datatype": "FP32", "shape": [1, 2], "data": [1.5, float("inf")]},
            {"name": "S", "datatype": "BYTES", "shape": [2], "data": ["ok", "\ufffd"]},
            {"name": "H", "datatype": "FP16", "shape": [2], "parameters": {"binary_data_size": 4}},
        ],
    }
    assert body[header_length:] == outputs["H"].tobytes()
    only_json, none = conv.response_to_http(InferResponse("m", "1", {"F": outputs["F"]}), conv.OutputFormat())
    assert none is None and b'"id"' not in only_json
    with pytest.raises(InvalidArgument, match="binary"):
        conv.response_to_http(InferResponse("m", "1", {"H": outputs["H"]}), conv.OutputFormat())


def test_check_json_outputs() -> None:
    assert conv.OutputFormat(True).all_binary(None) and not conv.OutputFormat().all_binary(None)
    assert not conv.OutputFormat(True, {"A": False}).all_binary(["A", "B"])
    types = {"A": "FP16", "B": "FP32"}
    conv.check_json_outputs(conv.OutputFormat(True), types, None)
    conv.check_json_outputs(conv.OutputFormat(), types, ["B"])
    with pytest.raises(InvalidArgument, match="output 'A' is FP16"):
        conv.check_json_outputs(conv.OutputFormat(), types, None)


def test_depth_check() -> None:
    conv.check_depth(b"[" * 64 + b"]" * 64)
    with pytest.raises(InvalidArgument, match="nesting"):
        conv.check_depth(b"[" * 65 + b"]" * 65)
    conv.check_depth(b'{"a": "' + b"[{" * 500 + b'\\"[[["}' + b"[]" * 500)  # brackets in strings
    with pytest.raises(InvalidArgument, match="nesting"):
        conv.check_depth(b'{"a\\"[": ' + b"[" * 100 + b"]" * 100 + b"}")


def test_split_body_and_header_length() -> None:
    body = memoryview(b'{"inputs": []}\x01\x02')
    assert conv.parse_header_length(None) is None and conv.parse_header_length("14") == 14
    doc, rest = conv.split_body(body, 14)
    assert doc == {"inputs": []} and bytes(rest) == b"\x01\x02"
    with pytest.raises(InvalidArgument, match="larger than"):
        conv.split_body(body, 17)
    for bad in ("", "-1", "+1", "1.0", "١"):
        with pytest.raises(InvalidArgument, match="Inference-Header-Content-Length"):
            conv.parse_header_length(bad)


def test_statistics_json_matches_the_grpc_shape() -> None:
    stats = ModelStats("m", "3")
    stats.record_execution(ExecutionTimes(4, 10, 20, 30))
    stats.record_success(100, 5, ExecutionTimes(4, 10, 20, 30))
    stats.record_failure(7)
    got = meta.statistics_json([stats])["model_stats"][0]
    message = pb.ModelStatistics()
    statistics_to_pb(stats, message)
    want = message_to_dict(message)
    for key in ("name", "version", "last_inference", "inference_count", "execution_count", "batch_stats"):
        assert got[key] == want[key], key
    for key, value in want["inference_stats"].items():
        assert got["inference_stats"][key] == value, key


# --- body reader ------------------------------------------------------------------------------
async def _chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def read(
    data: bytes, limit: int = 100, length: bool = True, encoding: str | None = None, header_length: int | None = None
) -> memoryview:
    return asyncio.run(read_body(_chunks(data), limit, str(len(data)) if length else None, encoding, header_length))


def test_read_body_limits() -> None:
    assert bytes(read(b"x" * 100)) == b"x" * 100
    assert bytes(read(b"x" * 100, length=False)) == b"x" * 100
    with pytest.raises(ResourceExhausted, match="101 bytes exceeds the limit of 100"):
        read(b"x" * 101)
    with pytest.raises(ResourceExhausted):
        read(b"x" * 101, length=False)
    assert bytes(read(zlib.compress(b"y" * 100), encoding="deflate")) == b"y" * 100
    with pytest.raises(ResourceExhausted, match="decompressed"):
        read(zlib.compress(b"y" * 101), encoding="deflate")
    with pytest.raises(InvalidArgument, match="Content-Encoding"):
        read(b"x", encoding="br")


@pytest.mark.parametrize("header_length", [0, 1, 13, 63, 64, 99])
def test_read_body_aligns_the_binary_part(header_length: int) -> None:
    body = read(bytes(range(100)), header_length=header_length)
    assert bytes(body) == bytes(range(100))
    address = np.frombuffer(body, np.uint8).ctypes.data
    assert (address + header_length) % ALIGNMENT == 0
