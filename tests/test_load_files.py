"""RepositoryModelLoad with ``file:<version>/<path>`` parameters, as Triton's clients send them:
the files form the model's folder for that load (beside the required ``config``), private to
the server, removed once nothing loaded from them serves; every bad name or size is refused."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto

from .conftest import start_server, test_settings
from .models import binary_model, write

CONFIG = {
    "name": "sent",
    "backend": "onnxruntime",
    "max_batch_size": 4,
    "input": [{"name": n, "data_type": "TYPE_FP32", "dims": [4]} for n in ("INPUT0", "INPUT1")],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
}


def model_bytes(op: str) -> bytes:
    return binary_model(op, TensorProto.FLOAT).SerializeToString()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    repo: Path = tmp_path_factory.mktemp("files_repo")
    # "sent" is also in the repository, as Sub: a load without files goes back to it.
    config = "\n".join(
        [
            'name: "sent"',
            'backend: "onnxruntime"',
            "max_batch_size: 4",
            'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]',
            'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]',
        ]
    )
    write(repo, "sent", config, binary_model("Sub", TensorProto.FLOAT))
    settings = test_settings(repo, model_control_mode="explicit", max_load_file_bytes=64 * 1024)
    running = start_server(settings)
    yield running
    running.stop()


def add(client, module) -> np.ndarray:  # type: ignore[no-untyped-def]
    inputs = [module.InferInput("INPUT0", [1, 4], "FP32"), module.InferInput("INPUT1", [1, 4], "FP32")]
    inputs[0].set_data_from_numpy(np.full((1, 4), 3, np.float32))
    inputs[1].set_data_from_numpy(np.ones((1, 4), np.float32))
    return client.infer("sent", inputs).as_numpy("OUTPUT0")


def private_folders(server) -> list[Path]:  # type: ignore[no-untyped-def]
    root = server.server.manager.model_folders._root
    return sorted(p for p in root.iterdir()) if root is not None else []


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_files_form_the_model_folder_for_that_load(server, module) -> None:  # type: ignore[no-untyped-def]
    client = module.InferenceServerClient(server.grpc_url if module is grpcclient else server.http_url)
    client.load_model("sent", config=json.dumps(CONFIG), files={"file:1/model.onnx": model_bytes("Add")})
    assert client.is_model_ready("sent")
    assert np.array_equal(add(client, module), np.full((1, 4), 4, np.float32))  # the sent Add
    (folder,) = private_folders(server)
    assert not folder.is_relative_to(Path(server.server.settings.model_repository[0]))
    # Loaded again from the repository: Sub serves and the private folder is gone.
    client.load_model("sent")
    assert np.array_equal(add(client, module), np.full((1, 4), 2, np.float32))
    assert private_folders(server) == []
    # A model the repository does not have can be loaded from files alone, then unloaded.
    other = {**CONFIG, "name": "elsewhere"}
    client.load_model("elsewhere", config=json.dumps(other), files={"file:1/model.onnx": model_bytes("Mul")})
    assert client.is_model_ready("elsewhere") and len(private_folders(server)) == 1
    client.unload_model("elsewhere")
    assert private_folders(server) == []
    client.close()


@pytest.mark.parametrize(
    "key,words",
    [
        ("file:../1/model.onnx", "must name a file as 'file:<version>/<path>'"),
        ("file:/etc/model.onnx", "must name a file"),
        ("file:model.onnx", "must name a file"),
        ("file:1/.hidden/model.onnx", "must name a file"),
        ("file:1\\model.onnx", "must name a file"),
        ("file:x/model.onnx", "must name a file"),
        ("file:1/" + "A" * 256, "names a path longer than the file system allows"),
        ("file:1/" + "a/" * 600 + "model.onnx", "names a path longer than the file system allows"),
    ],
)
def test_bad_names_are_refused(server, key: str, words: str) -> None:  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(grpcclient.InferenceServerException) as e:
        client.load_model("sent", config=json.dumps(CONFIG), files={key: b"x"})
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and words in e.value.message()
    assert private_folders(server) == []
    client.close()


def test_other_refusals(server) -> None:  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(grpcclient.InferenceServerException) as e:
        client.load_model("sent", files={"file:1/model.onnx": model_bytes("Add")})
    assert "need the 'config' parameter" in e.value.message()
    with pytest.raises(grpcclient.InferenceServerException) as e:
        client.load_model("sent", config=json.dumps(CONFIG), files={"file:1/model.onnx": b"x" * (64 * 1024 + 1)})
    assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and "--max-load-file-bytes" in e.value.message()
    # A file that is not a model fails the load with the reason; nothing is left behind.
    with pytest.raises(grpcclient.InferenceServerException) as e:
        client.load_model("sent", config=json.dumps(CONFIG), files={"file:1/model.onnx": b"not onnx"})
    assert e.value.message().startswith("failed to load 'sent'")
    assert private_folders(server) == []
    client.close()
    body = {"parameters": {"config": json.dumps(CONFIG), "file:1/model.onnx": "%%% not base64"}}
    response = httpx.post(f"http://{server.http_url}/v2/repository/models/sent/load", json=body)
    assert response.status_code == 400 and "is not valid base64" in response.text
