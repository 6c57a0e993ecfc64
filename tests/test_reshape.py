"""``reshape``: clients send and receive ``dims``, the model sees ``reshape.shape`` — as in
Triton's densenet_onnx and inception_onnx configs — with and without batching, over both
protocols, and every config Triton refuses is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from inferd.protocol.errors import ModelLoadError
from inferd.server.loader import plan_model
from inferd.server.repository import Repository
from onnx import TensorProto, helper

from .conftest import start_server, test_settings
from .models import OPSET, write


def scale_model(shape: list[int | str], out_name: str = "OUTPUT0") -> onnx.ModelProto:
    """OUTPUT0 = INPUT0 * 2 over ``shape``; the graph's shape is what the model checks against."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["INPUT0", "two"], [out_name])],
        "scale",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, shape)],
        initializer=[two],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def config(name: str, max_batch: int, dims: str, reshape: str, extra: str = "") -> str:
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch}\n'
        f'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: {dims} reshape {{ shape: {reshape} }} }} ]\n'
        f'output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: {dims} reshape {{ shape: {reshape} }} }} ]\n{extra}'
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    repo = tmp_path_factory.mktemp("reshape_repo")
    # Triton's image models: the client sends a flat [3*2*2] and the model takes [3, 2, 2].
    write(repo, "flat", config("flat", 8, "[ 12 ]", "[ 3, 2, 2 ]", "dynamic_batching { }"), scale_model(["b", 3, 2, 2]))
    # A scalar per batch item: dims [1], reshape [] (the model's input is [batch]).
    write(repo, "scalar", config("scalar", 8, "[ 1 ]", "[ ]"), scale_model(["b"]))
    # Variable sizes carry over in order.
    write(repo, "variable", config("variable", 4, "[ -1, 4 ]", "[ -1, 2, 2 ]"), scale_model(["b", "n", 2, 2]))
    write(repo, "unbatched", config("unbatched", 0, "[ 2, 3 ]", "[ 6 ]"), scale_model([6]))
    warmup = "model_warmup [ { name: 'w' batch_size: 2 inputs { key: 'INPUT0' value: { data_type: TYPE_FP32 dims: [ 12 ] zero_data: true } } } ]"
    write(repo, "warm", config("warm", 8, "[ 12 ]", "[ 3, 2, 2 ]", warmup), scale_model(["b", 3, 2, 2]))
    running = start_server(test_settings(repo))
    yield running
    running.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize(
    "model,shape",
    [("flat", [2, 12]), ("scalar", [3, 1]), ("variable", [2, 5, 4]), ("unbatched", [2, 3])],
)
def test_clients_see_dims_and_the_model_sees_the_reshape(server, protocol: str, model: str, shape: list[int]) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    module = grpcclient if protocol == "grpc" else httpclient
    url = server.grpc_url if protocol == "grpc" else server.http_url
    client = module.InferenceServerClient(url)
    tensor = module.InferInput("INPUT0", shape, "FP32")
    tensor.set_data_from_numpy(x)
    out = client.infer(model, [tensor]).as_numpy("OUTPUT0")
    assert out.shape == tuple(shape) and np.array_equal(out, x * 2)
    metadata = client.get_model_metadata(model)
    dims = metadata.inputs[0].shape if protocol == "grpc" else metadata["inputs"][0]["shape"]
    assert [int(d) for d in dims][-1] == shape[-1]  # the client's dims, not the reshape
    client.close()


def test_batched_requests_with_a_reshape_are_split_back(server) -> None:  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    rng = np.random.default_rng(1)
    sent, pending = [], []
    for i in range(8):
        x = rng.standard_normal((1 + i % 2, 12)).astype(np.float32)
        tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        results: list = []
        pending.append(results)
        sent.append(x)
        client.async_infer("flat", [tensor], lambda result, error, r=results: r.append((result, error)))
    import time

    deadline = time.monotonic() + 30
    while any(not r for r in pending) and time.monotonic() < deadline:
        time.sleep(0.01)
    for x, [(result, error)] in zip(sent, pending):
        assert error is None
        assert np.array_equal(result.as_numpy("OUTPUT0"), x * 2)
    client.close()


def test_warmup_samples_are_reshaped_like_requests(server) -> None:  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_model_ready("warm")
    client.close()


def test_a_wrong_shape_is_refused_in_the_clients_terms(server) -> None:  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("INPUT0", [1, 3, 2, 2], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(grpcclient.InferenceServerException) as e:
        client.infer("flat", [tensor])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "[-1, 12]" in e.value.message()
    client.close()


@pytest.mark.parametrize(
    "max_batch,dims,reshape,words",
    [
        (0, "[ 1 ]", "[ ]", "cannot have empty reshape for non-batching model as scalar tensors are not supported"),
        (4, "[ 2 ]", "[ ]", "has different size for dims and reshape"),
        (4, "[ 12 ]", "[ 5, 2 ]", "has different size for dims and reshape"),
        (4, "[ 12 ]", "[ 0, 12 ]", "reshape dimensions must be integer >= 1, or -1"),
        (4, "[ -1, 4 ]", "[ -1, 2, -1 ]", "has different number of variable-size dimensions for dims and reshape"),
        (4, "[ 2, 4, -1, 6 ]", "[ 4, -1, 12 ]", "has different size for dims and reshape"),
    ],
)
def test_reshapes_triton_refuses(tmp_path: Path, max_batch: int, dims: str, reshape: str, words: str) -> None:
    write(tmp_path, "m", config("m", max_batch, dims, reshape), scale_model(["b", 12]))
    with pytest.raises(ModelLoadError) as e:
        plan_model(Repository(tmp_path), "m")
    assert words in e.value.message


def test_a_reshape_with_matching_runs_between_variable_dims_loads(tmp_path: Path) -> None:
    # [2, 4, -1, 6] -> [8, -1, 1, 6]: 2*4 = 8 and 6 = 1*6, Triton's own example.
    write(tmp_path, "m", config("m", 4, "[ 2, 4, -1, 6 ]", "[ 8, -1, 1, 6 ]"), scale_model(["b", 8, "n", 1, 6]))
    plan = plan_model(Repository(tmp_path), "m")
    assert plan.signature.inputs["INPUT0"].reshape == (8, -1, 1, 6)
    assert plan.spec.input[0].dims == (8, -1, 1, 6)  # what the backend checks against the file
