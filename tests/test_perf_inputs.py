"""Unit tests of what inferd perf sends: inputs from a model's signature, option parsing, the
HTTP binary tensor encoding and the streaming id trick."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from inferd.clients.client import build_infer_request
from inferd.perf.cli import build_parser, options_from_args, parse_range
from inferd.perf.grpc_transport import _with_id
from inferd.perf.http_transport import decode_binary_response, encode_binary_request
from inferd.perf.inputs import DataOptions, InputError, ModelInfo, TensorInfo, build_requests, parse_shape
from inferd.perf.procs import split
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.pb import model_config_pb2 as mc


def model(max_batch: int = 8, dims: tuple[int, ...] = (16,), datatype: str = "FP32", **kw: object) -> ModelInfo:
    return ModelInfo("m", "", max_batch, (TensorInfo("IN", datatype, dims),), ("OUT",), **kw)  # type: ignore[arg-type]


def test_model_info_from_metadata_and_config() -> None:
    config = mc.ModelConfig(name="m", max_batch_size=4)
    config.input.add(name="A", data_type=mc.TYPE_FP32, dims=[-1, 3], optional=True)
    meta = {
        "name": "m",
        "inputs": [{"name": "A", "datatype": "FP32", "shape": ["-1", "-1", "3"]}],
        "outputs": [{"name": "B", "datatype": "FP32", "shape": [-1]}],
    }
    info = ModelInfo.from_metadata(meta, config)
    assert info.inputs[0].dims == (-1, 3) and info.inputs[0].optional
    assert info.outputs == ("B",)
    meta["inputs"][0]["shape"] = [3]  # batching model without the leading -1
    with pytest.raises(InputError):
        ModelInfo.from_metadata(meta, config)


def test_batch_dimension_and_random_bytes() -> None:
    (req,) = build_requests(model(), DataOptions(batch_size=4))
    assert req["IN"].shape == (4, 16) and req["IN"].dtype == np.float32
    (again,) = build_requests(model(), DataOptions(batch_size=4))
    assert req["IN"].tobytes() == again["IN"].tobytes()  # seeded
    (zero,) = build_requests(model(max_batch=0), DataOptions(input_data="zero"))
    assert zero["IN"].shape == (16,) and not zero["IN"].any()
    (b,) = build_requests(model(datatype="BOOL"), DataOptions())
    assert b["IN"].dtype == np.bool_


def test_batch_limits() -> None:
    with pytest.raises(InputError, match="does not support batching"):
        build_requests(model(max_batch=0), DataOptions(batch_size=2))
    with pytest.raises(InputError, match="max_batch_size"):
        build_requests(model(max_batch=8), DataOptions(batch_size=9))
    with pytest.raises(InputError, match="decoupled"):
        build_requests(model(decoupled=True), DataOptions())


def test_variable_dims_need_shape() -> None:
    m = model(dims=(-1, 4))
    with pytest.raises(InputError, match="--shape IN:N,4"):
        build_requests(m, DataOptions())
    (req,) = build_requests(m, DataOptions(shapes={"IN": [3, 4]}, batch_size=2))
    assert req["IN"].shape == (2, 3, 4)
    with pytest.raises(InputError, match="does not fit"):
        build_requests(m, DataOptions(shapes={"IN": [3, 5]}))


def test_bytes_inputs() -> None:
    m = model(dims=(2,), datatype="BYTES")
    (req,) = build_requests(m, DataOptions(string_length=7))
    assert req["IN"].shape == (1, 2) and req["IN"].dtype == object
    assert all(isinstance(v, bytes) and len(v) == 7 for v in req["IN"].ravel())
    (fixed,) = build_requests(m, DataOptions(string_data="hi"))
    assert fixed["IN"].ravel().tolist() == [b"hi", b"hi"]


def test_json_input_data(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(
        json.dumps(
            {
                "data": [
                    {"IN": [1, 2, 3, 4]},
                    {"IN": {"content": [5, 6, 7, 8], "shape": [4]}},
                    {"IN": {"b64": "AAAAAAAAgD8AAABAAABAQA=="}},  # FP32 0, 1, 2, 3
                ]
            }
        )
    )
    m = model(dims=(4,))
    reqs = build_requests(m, DataOptions(input_data=str(path)))
    assert [r["IN"].ravel().tolist() for r in reqs] == [[1, 2, 3, 4], [5, 6, 7, 8], [0, 1, 2, 3]]
    (batched,) = build_requests(m, DataOptions(input_data=str(path), batch_size=3))
    assert batched["IN"].shape == (3, 4)
    path.write_text(json.dumps({"data": [{"IN": [1, 2]}]}))
    with pytest.raises(InputError, match="needs 4"):
        build_requests(m, DataOptions(input_data=str(path)))
    with pytest.raises(InputError):
        build_requests(m, DataOptions(input_data=str(tmp_path / "missing.json")))


def test_ranges_and_shapes() -> None:
    assert parse_range("1:4", integer=True) == [1, 2, 3, 4]
    assert parse_range("2:8:3", integer=True) == [2, 5, 8]
    assert parse_range("4", integer=True) == [4]
    assert parse_range("100:200:50", integer=False) == [100, 150, 200]
    for bad in ("0:2", "3:1", "1:2:0", "a", "1:2:3:4"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_range(bad, integer=True)
    assert parse_shape("IN:1,2,3") == ("IN", [1, 2, 3])
    assert parse_shape("ns:IN:4") == ("ns:IN", [4])
    with pytest.raises(InputError):
        parse_shape("IN")


def test_cli_options_use_perf_analyzer_names(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "-m",
            "dense",
            "-x",
            "1",
            "-u",
            "h:1",
            "-i",
            "http",
            "-b",
            "4",
            "--request-rate-range",
            "100:300:100",
            "--request-distribution",
            "poisson",
            "--shape",
            "IN:3",
            "--input-data",
            "zero",
            "-p",
            "200",
            "-s",
            "20",
            "--max-trials",
            "5",
            "--percentile",
            "95",
            "-f",
            str(tmp_path / "o.csv"),
            "--async",
        ]
    )
    o = options_from_args(args)
    assert (o.model, o.version, o.url, o.protocol, o.mode, o.values) == (
        "dense",
        "1",
        "h:1",
        "http",
        "rate",
        [100, 200, 300],
    )
    assert o.distribution == "poisson" and o.data.batch_size == 4 and o.data.shapes == {"IN": [3]}
    assert (o.measurement_ms, o.stability, o.max_trials, o.percentile) == (200, 0.2, 5, 95)
    assert o.plot_path == tmp_path / "o.png"


def test_http_binary_round_trip() -> None:
    body, n = encode_binary_request({"A": np.arange(4, dtype=np.float32), "S": np.array([b"xy"], dtype=object)})
    header = json.loads(body[:n])
    assert header["inputs"][0] == {
        "name": "A",
        "shape": [4],
        "datatype": "FP32",
        "parameters": {"binary_data_size": 16},
    }
    assert header["inputs"][1]["parameters"]["binary_data_size"] == 6
    assert header["parameters"] == {"binary_data_output": True}
    assert body[n:] == np.arange(4, dtype=np.float32).tobytes() + b"\x02\x00\x00\x00xy"
    head = json.dumps(
        {"outputs": [{"name": "O", "datatype": "INT8", "shape": [3], "parameters": {"binary_data_size": 3}}]}
    ).encode()
    doc = decode_binary_response(head + b"\x01\x02\x03", len(head))
    assert doc["outputs"][0]["raw"] == b"\x01\x02\x03"
    assert decode_binary_response(b'{"outputs": []}', None) == {"outputs": []}


def test_stream_id_is_appended_without_reserializing() -> None:
    x = np.ones((1, 16), np.float32)
    payload = build_infer_request("add_sub", {"INPUT0": x, "INPUT1": x}, request_id="old").SerializeToString()
    for rid in ("7", "x" * 200):
        msg = pb.ModelInferRequest.FromString(_with_id(payload, rid))
        assert msg.id == rid and msg.model_name == "add_sub" and len(msg.raw_input_contents) == 2


def test_split_load_across_processes() -> None:
    assert split(16, 3) == [6, 5, 5]
    assert split(1, 2) == [1, 0]
