"""Triton's classification extension: an output requested with ``class_count`` comes back as
Triton's "value:index[:label]" BYTES tensor, per batch item, on both protocols and through an
ensemble (whose output takes the labels of the step that makes it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper

from .conftest import start_server, test_settings
from .models import OPSET, write

LABELS = ["cat", "dog", "", "fish", "owl"]  # index 2 has no label: printed without one


def identity(elem_type: int, shape: list[int | str]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [helper.make_tensor_value_info("INPUT0", elem_type, shape)],
        [helper.make_tensor_value_info("OUTPUT0", elem_type, shape)],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def config(name: str, dtype: str, max_batch: int, labels: bool) -> str:
    label = ' label_filename: "labels.txt"' if labels else ""
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch}\n'
        f'input [ {{ name: "INPUT0" data_type: {dtype} dims: [ 5 ] }} ]\n'
        f'output [ {{ name: "OUTPUT0" data_type: {dtype} dims: [ 5 ]{label} }} ]\n'
    )


ENSEMBLE = """name: "pipeline"
platform: "ensemble"
max_batch_size: 4
input [ { name: "X" data_type: TYPE_FP32 dims: [ 5 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 5 ] } ]
ensemble_scheduling { step [ { model_name: "scores" model_version: -1
  input_map { key: "INPUT0" value: "X" } output_map { key: "OUTPUT0" value: "Y" } } ] }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    repo: Path = tmp_path_factory.mktemp("classification_repo")
    write(repo, "scores", config("scores", "TYPE_FP32", 4, True), identity(TensorProto.FLOAT, ["b", 5]))
    (repo / "scores" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    write(repo, "plain", config("plain", "TYPE_FP32", 0, False), identity(TensorProto.FLOAT, [5]))
    write(repo, "counts", config("counts", "TYPE_INT32", 4, False), identity(TensorProto.INT32, ["b", 5]))
    write(repo, "halves", config("halves", "TYPE_FP16", 4, False), identity(TensorProto.FLOAT16, ["b", 5]))
    write(repo, "pipeline", ENSEMBLE, None)
    (repo / "pipeline" / "1").mkdir()
    running = start_server(test_settings(repo))
    yield running
    running.stop()


def run(server, protocol: str, model: str, x: np.ndarray, count: object):  # type: ignore[no-untyped-def]
    module = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)
    name = "X" if model == "pipeline" else "INPUT0"
    out = "Y" if model == "pipeline" else "OUTPUT0"
    tensor = module.InferInput(
        name, list(x.shape), {np.float32: "FP32", np.int32: "INT32", np.float16: "FP16"}[x.dtype.type]
    )
    tensor.set_data_from_numpy(x)
    try:
        result = client.infer(model, [tensor], outputs=[module.InferRequestedOutput(out, class_count=count)])
        return result.as_numpy(out)
    finally:
        client.close()


SCORES = np.array([[0.1, 0.7, 0.5, 0.7, 0.2], [0.9, 0.0, 0.3, 0.1, 0.05]], np.float32)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_top_classes_with_labels_per_batch_item(server, protocol: str) -> None:  # type: ignore[no-untyped-def]
    got = run(server, protocol, "scores", SCORES, 3)
    assert got.shape == (2, 3)
    assert [[v.decode() for v in row] for row in got] == [
        ["0.700000:1:dog", "0.700000:3:fish", "0.500000:2"],  # equal values keep index order
        ["0.900000:0:cat", "0.300000:2", "0.100000:3:fish"],
    ]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unbatched_integer_and_capped_counts(server, protocol: str) -> None:  # type: ignore[no-untyped-def]
    got = run(server, protocol, "plain", SCORES[1], 2)
    assert [v.decode() for v in got] == ["0.900000:0", "0.300000:2"]
    ints = run(server, protocol, "counts", np.array([[3, 9, 1, 4, 4]], np.int32), 10)
    assert ints.shape == (1, 5) and [v.decode() for v in ints[0]] == ["9:1", "4:3", "4:4", "3:0", "1:2"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_ensemble_output_takes_its_steps_labels(server, protocol: str) -> None:  # type: ignore[no-untyped-def]
    got = run(server, protocol, "pipeline", SCORES[:1], 1)
    assert [[v.decode() for v in row] for row in got] == [["0.700000:1:dog"]]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_refusals(server, protocol: str) -> None:  # type: ignore[no-untyped-def]
    module = grpcclient if protocol == "grpc" else httpclient
    with pytest.raises(module.InferenceServerException) as e:
        run(server, protocol, "halves", SCORES[:1].astype(np.float16), 2)
    assert "class result not available for output due to unsupported type 'FP16'" in e.value.message()
    assert "INVALID_ARGUMENT" in str(e.value.status()) or e.value.status() == "400"


def test_a_bad_count_is_refused_on_both_protocols(server) -> None:  # type: ignore[no-untyped-def]
    import httpx

    body = {
        "inputs": [{"name": "INPUT0", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"classification": -2}}],
    }
    response = httpx.post(f"http://{server.http_url}/v2/models/scores/infer", json=body)
    assert response.status_code == 400 and "invalid value for 'classification' parameter" in response.text
    body["outputs"] = [{"name": "OUTPUT0", "parameters": {"classification": 0}}]  # 0: none asked
    response = httpx.post(f"http://{server.http_url}/v2/models/scores/infer", json=body)
    assert response.status_code == 200 and response.json()["outputs"][0]["datatype"] == "FP32"


def test_the_extension_is_advertised(server) -> None:  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert "classification" in client.get_server_metadata().extensions
    client.close()
