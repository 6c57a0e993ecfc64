"""Where Triton's clients and examples look at an error's text, inferd's begins with Triton's
wording (and may add detail after it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto

from .conftest import start_server, test_settings
from .models import binary_model, write

GOOD = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }}, {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
{extra}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    repo: Path = tmp_path_factory.mktemp("wording_repo")
    write(repo, "good", GOOD.format(name="good", extra=""), binary_model("Add", TensorProto.FLOAT))
    write(
        repo,
        "stateful",
        GOOD.format(name="stateful", extra="sequence_batching { iterative_sequence: true }"),
        binary_model("Add", TensorProto.FLOAT),
    )
    running = start_server(test_settings(repo, model_control_mode="explicit", load_models=("good",)))
    yield running
    running.stop()


def inputs(module):  # type: ignore[no-untyped-def]
    out = [module.InferInput("INPUT0", [1, 4], "FP32"), module.InferInput("INPUT1", [1, 4], "FP32")]
    for i in out:
        i.set_data_from_numpy(np.ones((1, 4), np.float32))
    return out


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_unknown_models_and_versions(server, module) -> None:  # type: ignore[no-untyped-def]
    url = server.grpc_url if module is grpcclient else server.http_url
    client = module.InferenceServerClient(url)
    for model, version, words in (
        ("nope", "", "Request for unknown model: 'nope' is not found"),
        ("good", "7", "Request for unknown model: 'good' version 7 is not found"),
    ):
        with pytest.raises(module.InferenceServerException) as e:
            client.infer(model, inputs(module), model_version=version)
        assert e.value.message().startswith(words), e.value.message()
    client.close()


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_a_failed_load(server, module) -> None:  # type: ignore[no-untyped-def]
    url = server.grpc_url if module is grpcclient else server.http_url
    client = module.InferenceServerClient(url)
    with pytest.raises(module.InferenceServerException) as e:
        client.load_model("stateful")
    message = e.value.message()
    assert message.startswith("failed to load 'stateful'") and "sequence_batching" in message, message
    client.close()
