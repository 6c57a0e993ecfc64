"""Inference through the public tritonclient.grpc against the real server, compared with
onnxruntime in-process on the same model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient


@pytest.fixture(scope="module")
def client(server):  # type: ignore[no-untyped-def]
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def reference(repo: Path, model: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def make_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    i = grpcclient.InferInput(name, list(array.shape), datatype)
    i.set_data_from_numpy(array)
    return i


CASES = [
    ("add_sub", "FP32", lambda rng: rng.standard_normal((3, 16)).astype(np.float32)),
    ("add_int64", "INT64", lambda rng: rng.integers(-(2**40), 2**40, (2, 4), dtype=np.int64)),
    ("add_fp16", "FP16", lambda rng: rng.standard_normal((2, 4)).astype(np.float16)),
    ("and_bool", "BOOL", lambda rng: rng.integers(0, 2, (4, 4)).astype(bool)),
]


@pytest.mark.parametrize("model,datatype,make", CASES, ids=[c[0] for c in CASES])
def test_matches_onnxruntime(client, model_repo, model, datatype, make):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(7)
    a, b = make(rng), make(rng)
    result = client.infer(model, [make_input("INPUT0", a, datatype), make_input("INPUT1", b, datatype)])
    expected = reference(model_repo, model, {"INPUT0": a, "INPUT1": b})
    for i, want in enumerate(expected):
        got = result.as_numpy(f"OUTPUT{i}")
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert result.get_response().model_version == "1"


def test_bytes_round_trip(client):  # type: ignore[no-untyped-def]
    data = np.array([["plain", "ünïcödé"], ["", "x" * 1000]], dtype=object)
    result = client.infer("strings", [make_input("INPUT0", data, "BYTES")])
    got = result.as_numpy("OUTPUT0")
    assert got.shape == (2, 2)
    assert [e.decode() for e in got.ravel()] == list(data.ravel())


def test_requested_output_subset_and_id(client):  # type: ignore[no-untyped-def]
    a = np.ones((1, 16), np.float32)
    result = client.infer(
        "add_sub",
        [make_input("INPUT0", a, "FP32"), make_input("INPUT1", a, "FP32")],
        outputs=[grpcclient.InferRequestedOutput("OUTPUT1")],
        request_id="req-42",
    )
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["OUTPUT1"]
    assert response.id == "req-42"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((1, 16), np.float32))


def test_nan_and_inf_pass_through(client):  # type: ignore[no-untyped-def]
    # perf_analyzer's random data contains NaN/Inf; the server must not choke on them.
    a = np.array([[np.nan, np.inf, -np.inf] + [0.0] * 13], np.float32)
    result = client.infer("add_sub", [make_input("INPUT0", a, "FP32"), make_input("INPUT1", a, "FP32")])
    out = result.as_numpy("OUTPUT0")
    assert np.isnan(out[0, 0]) and out[0, 1] == np.inf and out[0, 2] == -np.inf


def test_specific_version_and_metadata(client):  # type: ignore[no-untyped-def]
    meta = client.get_model_metadata("dense", "1")
    assert meta.platform == "onnxruntime_onnx"
    assert [list(i.shape) for i in meta.inputs] == [[-1, 64]]
    assert [(o.name, o.datatype) for o in meta.outputs] == [("PROBS", "FP32")]
    config = client.get_model_config("dense").config
    assert config.max_batch_size == 64 and list(config.dynamic_batching.preferred_batch_size) == [16, 32, 64]


def test_health_and_server_metadata(client):  # type: ignore[no-untyped-def]
    assert client.is_server_live()
    assert client.is_server_ready() is False  # strict: the broken test models never become ready
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("add_sub", "7")
    assert not client.is_model_ready("bad_pbtxt")
    meta = client.get_server_metadata()
    assert meta.name == "inferd" and "statistics" in meta.extensions


def test_statistics_count_requests(client):  # type: ignore[no-untyped-def]
    before = client.get_inference_statistics("add_int64").model_stats[0]
    a = np.ones((2, 4), np.int64)
    for _ in range(3):
        client.infer("add_int64", [make_input("INPUT0", a, "INT64"), make_input("INPUT1", a, "INT64")])
    after = client.get_inference_statistics("add_int64").model_stats[0]
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert after.inference_count - before.inference_count == 6  # batch of 2, three times
    assert after.execution_count - before.execution_count == 3
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    sizes = {b.batch_size: b.compute_infer.count for b in after.batch_stats}
    assert sizes.get(2, 0) >= 3
    all_stats = client.get_inference_statistics().model_stats
    assert {"add_int64", "add_sub", "dense"} <= {s.name for s in all_stats}


def test_repository_index_reports_broken_models(client):  # type: ignore[no-untyped-def]
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["add_sub"].state == "READY"
    assert index["bad_pbtxt"].state == "UNAVAILABLE"
    assert "config.pbtxt" in index["bad_pbtxt"].reason and "max_batch_size" in index["bad_pbtxt"].reason
    assert index["missing_file"].state == "UNAVAILABLE" and "model.onnx" in index["missing_file"].reason
    assert "other_name" in index["name_mismatch"].reason and "'name'" in index["name_mismatch"].reason
    ready = {m.name for m in client.get_model_repository_index().models if m.state == "READY"}
    assert "bad_pbtxt" not in ready


def test_autocompleted_config_matches_graph(client):  # type: ignore[no-untyped-def]
    config = client.get_model_config("auto_add").config
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 4  # the graph's first dim is dynamic: batching, as Triton does
    assert config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("INPUT0", [3]), ("INPUT1", [3])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("OUTPUT0", [3])]
    from tritonclient.grpc import model_config_pb2 as mc

    assert all(t.data_type == mc.TYPE_FP32 for t in list(config.input) + list(config.output))
    a = np.ones((2, 3), np.float32)
    out = client.infer("auto_add", [make_input("INPUT0", a, "FP32"), make_input("INPUT1", a, "FP32")])
    np.testing.assert_array_equal(out.as_numpy("OUTPUT0"), a * 2)
