"""The HTTP/REST front end through the public tritonclient.http, against the real server, with
every answer compared to the gRPC front end's on the same core."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, test_settings
from .models import bundled, write

# tritonclient.http's __del__ joins a gevent pool, which fails when the garbage collector happens
# to run on the server's thread; closed clients are kept here and die on the main thread at exit.
_CLOSED: list[httpclient.InferenceServerClient] = []


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(server.http_url) as c:
        yield c
    _CLOSED.append(c)


@pytest.fixture(scope="module")
def grpc(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def http_input(name: str, array: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    i = httpclient.InferInput(name, list(array.shape), datatype)
    i.set_data_from_numpy(array, binary_data=binary)
    return i


def grpc_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    i = grpcclient.InferInput(name, list(array.shape), datatype)
    i.set_data_from_numpy(array)
    return i


# --- health, metadata, config, statistics, repository -----------------------------------------
def test_health_matches_grpc(http, grpc) -> None:  # type: ignore[no-untyped-def]
    assert http.is_server_live() is True
    # The test repository holds broken models on purpose, so strict readiness is false on both.
    assert http.is_server_ready() == grpc.is_server_ready()
    assert http.is_model_ready("add_sub") and http.is_model_ready("add_sub", "1")
    assert not http.is_model_ready("add_sub", "2")
    assert not http.is_model_ready("missing_file")
    assert not http.is_model_ready("no_such_model")


def test_server_metadata_matches_grpc(http, grpc) -> None:  # type: ignore[no-untyped-def]
    got = http.get_server_metadata()
    want = grpc.get_server_metadata(as_json=True)
    assert got == {"name": want["name"], "version": want["version"], "extensions": want["extensions"]}
    assert "binary_tensor_data" in got["extensions"]


@pytest.mark.parametrize("model", ["add_sub", "add_fp16", "strings", "auto_add"])
def test_model_metadata_matches_grpc(http, grpc, model) -> None:  # type: ignore[no-untyped-def]
    got = http.get_model_metadata(model)
    want = grpc.get_model_metadata(model, as_json=True)
    for t in want["inputs"] + want["outputs"]:
        t["shape"] = [int(d) for d in t["shape"]]  # proto JSON writes int64 as strings
    assert got == {k: want[k] for k in ("name", "versions", "platform", "inputs", "outputs")}
    assert http.get_model_metadata(model, "1") == got


def test_model_config_is_triton_json(http, grpc) -> None:  # type: ignore[no-untyped-def]
    config = http.get_model_config("add_sub")
    assert config["name"] == "add_sub" and config["max_batch_size"] == 8
    assert config["input"][0] == {
        "name": "INPUT0",
        "data_type": "TYPE_FP32",
        "dims": [16],
        "format": "FORMAT_NONE",
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": False,
        "is_non_linear_format_io": False,
    }
    want = grpc.get_model_config("add_sub", as_json=True)["config"]
    assert config["instance_group"][0]["name"] == want["instance_group"][0]["name"]
    assert http.get_model_config("add_sub", "1") == config


def _normalize_stats(doc: dict) -> list[dict]:  # type: ignore[type-arg]
    """gRPC's proto JSON leaves out zeros and writes 64-bit integers as strings."""
    out = []
    for s in doc["model_stats"]:
        inference = {
            k: {"count": int(v.get("count", 0)), "ns": int(v.get("ns", 0))}
            for k, v in s["inference_stats"].items()
            if k not in ("cache_hit", "cache_miss")
        }
        batches = [(int(b["batch_size"]), int(b["compute_infer"].get("count", 0))) for b in s.get("batch_stats", [])]
        out.append(
            {
                "name": s["name"],
                "version": s["version"],
                "last_inference": int(s.get("last_inference", 0)),
                "inference_count": int(s.get("inference_count", 0)),
                "execution_count": int(s.get("execution_count", 0)),
                "inference_stats": inference,
                "batch_stats": batches,
            }
        )
    return out


def test_statistics_match_grpc(http, grpc) -> None:  # type: ignore[no-untyped-def]
    a = np.ones((2, 16), np.float32)
    http.infer("add_sub", [http_input("INPUT0", a, "FP32", True), http_input("INPUT1", a, "FP32", True)])
    for model, version in [("add_sub", ""), ("add_sub", "1"), ("", "")]:
        got = http.get_inference_statistics(model, version)
        assert set(got["model_stats"][0]["inference_stats"]) >= {
            "success",
            "fail",
            "queue",
            "compute_input",
            "compute_infer",
            "compute_output",
        }
        want = grpc.get_inference_statistics(model, version, as_json=True)
        assert _normalize_stats(got) == _normalize_stats(want)
    one = http.get_inference_statistics("add_sub")["model_stats"][0]
    assert one["inference_count"] >= 2 and one["batch_stats"][0]["batch_size"] >= 1


def test_repository_index_matches_grpc(http, grpc) -> None:  # type: ignore[no-untyped-def]
    got = http.get_model_repository_index()
    want = grpc.get_model_repository_index(as_json=True)["models"]
    assert got == want
    names = {m["name"]: m for m in got}
    assert names["add_sub"]["state"] == "READY"
    assert names["missing_file"]["state"] == "UNAVAILABLE" and "not found" in names["missing_file"]["reason"]


@pytest.fixture
def explicit_server(tmp_path: Path) -> Iterator[RunningServer]:
    write(tmp_path, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    running = start_server(test_settings(tmp_path, model_control_mode="explicit"))
    yield running
    running.stop()


def test_load_unload_and_config_override(explicit_server: RunningServer) -> None:
    with httpclient.InferenceServerClient(explicit_server.http_url) as c:
        assert not c.is_model_ready("add_sub")
        c.load_model("add_sub")
        assert c.is_model_ready("add_sub")
        config = c.get_model_config("add_sub")
        config["max_batch_size"] = 4
        c.load_model("add_sub", config=json.dumps(config))
        assert c.get_model_config("add_sub")["max_batch_size"] == 4
        assert c.get_model_repository_index(query_params=None)[0]["state"] == "READY"
        c.unload_model("add_sub")
        assert not c.is_model_ready("add_sub")
        with pytest.raises(InferenceServerException) as e:
            c.load_model(".hidden")
        assert e.value.status() == "400"
        with pytest.raises(InferenceServerException) as e:
            c.load_model("add_sub", config='{"max_batch_size": "many"}')
        assert e.value.status() == "400"
    _CLOSED.append(c)


# --- inference ------------------------------------------------------------------------------
CASES = [
    ("add_sub", "FP32", lambda rng: rng.standard_normal((3, 16)).astype(np.float32)),
    ("add_int64", "INT64", lambda rng: rng.integers(-(2**40), 2**40, (2, 4), dtype=np.int64)),
    ("and_bool", "BOOL", lambda rng: rng.integers(0, 2, (4, 4)).astype(bool)),
    ("add_fp16", "FP16", lambda rng: rng.standard_normal((2, 4)).astype(np.float16)),
]
MODES = ["json", "binary"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model,datatype,make", CASES, ids=[c[0] for c in CASES])
def test_infer_matches_grpc(http, grpc, model, datatype, make, mode) -> None:  # type: ignore[no-untyped-def]
    if datatype == "FP16" and mode == "json":
        pytest.skip("FP16 travels only as binary data (see test_fp16_json_is_refused)")
    binary = mode == "binary"
    rng = np.random.default_rng(11)
    a, b = make(rng), make(rng)
    outputs = [
        httpclient.InferRequestedOutput(f"OUTPUT{i}", binary_data=binary) for i in range(2 if model == "add_sub" else 1)
    ]
    got = http.infer(
        model,
        [http_input("INPUT0", a, datatype, binary), http_input("INPUT1", b, datatype, binary)],
        outputs=outputs,
        request_id="r-1",
    )
    want = grpc.infer(model, [grpc_input("INPUT0", a, datatype), grpc_input("INPUT1", b, datatype)])
    response = got.get_response()
    assert response["model_name"] == model and response["model_version"] == "1" and response["id"] == "r-1"
    for o in response["outputs"]:
        assert ("data" in o) != binary and o["datatype"] == datatype
        g, w = got.as_numpy(o["name"]), want.as_numpy(o["name"])
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("mode", MODES)
def test_bytes_match_grpc(http, grpc, mode) -> None:  # type: ignore[no-untyped-def]
    binary = mode == "binary"
    data = np.array([["plain", "ünïcödé"], ["", "x" * 1000]], dtype=object)
    got = http.infer(
        "strings",
        [http_input("INPUT0", data, "BYTES", binary)],
        outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)],
    )
    want = grpc.infer("strings", [grpc_input("INPUT0", data, "BYTES")]).as_numpy("OUTPUT0")
    out = got.as_numpy("OUTPUT0")
    assert out.shape == (2, 2)
    # JSON carries strings, binary data carries bytes: the same text either way.
    as_text = [e.decode() if isinstance(e, bytes) else e for e in out.ravel()]
    assert as_text == [e.decode() for e in want.ravel()] == list(data.ravel())


def test_default_outputs_are_binary_and_all(http) -> None:  # type: ignore[no-untyped-def]
    # tritonclient asks for binary_data_output when no outputs are named.
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    result = http.infer("add_sub", [http_input("INPUT0", a, "FP32", True), http_input("INPUT1", a, "FP32", True)])
    outputs = result.get_response()["outputs"]
    assert [o["name"] for o in outputs] == ["OUTPUT0", "OUTPUT1"]
    assert all(o["parameters"]["binary_data_size"] == 64 for o in outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - a)


def test_mixed_json_and_binary(http) -> None:  # type: ignore[no-untyped-def]
    a = np.full((2, 16), 3, np.float32)
    b = np.ones((2, 16), np.float32)
    result = http.infer(
        "add_sub",
        [http_input("INPUT0", a, "FP32", False), http_input("INPUT1", b, "FP32", True)],
        outputs=[httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)],
    )
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["OUTPUT1"]
    assert response["outputs"][0]["data"] == [2.0] * 32
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_fp16_json_is_refused(http) -> None:  # type: ignore[no-untyped-def]
    a = np.ones((1, 4), np.float16)
    with pytest.raises(InferenceServerException) as e:
        http.infer("add_fp16", [http_input("INPUT0", a, "FP16", False), http_input("INPUT1", a, "FP16", False)])
    assert e.value.status() == "400" and "binary" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        http.infer(
            "add_fp16",
            [http_input("INPUT0", a, "FP16", True), http_input("INPUT1", a, "FP16", True)],
            outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)],
        )
    assert e.value.status() == "400" and "binary_data" in e.value.message()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_and_response(http, algorithm) -> None:  # type: ignore[no-untyped-def]
    a = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
    result = http.infer(
        "add_sub",
        [http_input("INPUT0", a, "FP32", False), http_input("INPUT1", a, "FP32", True)],
        outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)


def test_core_errors_keep_their_status(http) -> None:  # type: ignore[no-untyped-def]
    a = np.ones((1, 16), np.float32)
    inputs = [http_input("INPUT0", a, "FP32", True), http_input("INPUT1", a, "FP32", True)]
    for model, version, status in [
        ("no_such_model", "", "404"),
        ("add_sub", "7", "404"),
        ("missing_file", "", "503"),
        ("add_sub", "x", "400"),
    ]:
        with pytest.raises(InferenceServerException) as e:
            http.infer(model, inputs, model_version=version)
        assert e.value.status() == status, (model, version, e.value.message())
    with pytest.raises(InferenceServerException) as e:
        http.infer("add_sub", [http_input("INPUT0", a, "FP32", True)])
    assert e.value.status() == "400" and "INPUT1" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        http.get_model_metadata("no_such_model")
    assert e.value.status() == "404"
