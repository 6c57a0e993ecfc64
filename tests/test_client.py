"""inferd.clients.client against a real server: results equal onnxruntime run in-process, for
every datatype family; errors carry the gRPC status code; the async client matches the sync one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from inferd.clients import AsyncInferenceClient, InferenceClient, InferenceError

from .conftest import RunningServer, start_server, test_settings
from .models import binary_model, write

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client(server: RunningServer):  # type: ignore[no-untyped-def]
    with InferenceClient(server.grpc_url) as c:
        yield c


def run_ort(model_repo: Path, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model_repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


@pytest.mark.parametrize(
    ("model", "make"),
    [
        ("add_sub", lambda rng: rng.standard_normal((3, 16)).astype(np.float32)),
        ("add_int64", lambda rng: rng.integers(-(2**40), 2**40, (2, 4), dtype=np.int64)),
        ("and_bool", lambda rng: rng.integers(0, 2, (4, 4)).astype(np.bool_)),
        ("add_fp16", lambda rng: rng.standard_normal((2, 4)).astype(np.float16)),
    ],
)
def test_infer_matches_onnxruntime(client: InferenceClient, model_repo: Path, model: str, make) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(7)
    inputs = {"INPUT0": make(rng), "INPUT1": make(rng)}
    got = client.infer(model, inputs)
    expected = run_ort(model_repo, model, inputs)
    assert set(got) == set(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want)


def test_bytes_round_trip(client: InferenceClient) -> None:
    data = np.array([["héllo", ""], ["a\x00b", "x" * 300]], dtype=object)
    got = client.infer("strings", {"INPUT0": data})["OUTPUT0"]
    assert got.shape == (2, 2)
    assert got.tolist() == [[s.encode() for s in row] for row in data.tolist()]


def test_requested_outputs_and_parameters(client: InferenceClient) -> None:
    x = np.ones((1, 16), np.float32)
    got = client.infer("add_sub", {"INPUT0": x, "INPUT1": x}, outputs=["OUTPUT1"], parameters={"priority": 0})
    assert list(got) == ["OUTPUT1"]
    np.testing.assert_array_equal(got["OUTPUT1"], np.zeros((1, 16), np.float32))


def test_bytes_tensors_round_trip(client: InferenceClient) -> None:
    """The client encodes with the server's own codec: what it sends is what a model gets."""
    from inferd.clients.client import build_infer_request, parse_infer_response
    from inferd.protocol.pb import grpc_service_pb2 as pb

    array = np.array([[b"", b"ab", "ç".encode()]], dtype=object)
    request = build_infer_request("m", {"x": array})
    assert request.inputs[0].datatype == "BYTES"
    assert (
        request.raw_input_contents[0]
        == b"\x00\x00\x00\x00" + b"\x02\x00\x00\x00ab" + b"\x02\x00\x00\x00" + "ç".encode()
    )
    response = pb.ModelInferResponse(raw_output_contents=list(request.raw_input_contents))
    response.outputs.add(name="x", datatype="BYTES", shape=[1, 3])
    assert parse_infer_response(response)["x"].tolist() == array.tolist()


def test_unknown_model_errors(client: InferenceClient) -> None:
    x = np.ones((1, 16), np.float32)
    with pytest.raises(InferenceError) as e:
        client.infer("no_such_model", {"INPUT0": x, "INPUT1": x})
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert "no_such_model" in e.value.message
    for call in (client.model_metadata, client.model_config):
        with pytest.raises(InferenceError) as e:
            call("no_such_model")
        assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert client.is_model_ready("no_such_model") is False


def test_bad_input_is_invalid_argument(client: InferenceClient) -> None:
    x = np.ones((1, 5), np.float32)  # add_sub wants 16 per row
    with pytest.raises(InferenceError) as e:
        client.infer("add_sub", {"INPUT0": x, "INPUT1": x})
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


# What a caller might pass instead of dict[str, ndarray], and the words the TypeError must contain.
WRONG_INPUTS = [
    pytest.param(lambda x: [x, x], ["dict[str, numpy.ndarray]", "not list", "tritonclient"], id="list"),
    pytest.param(lambda x: (x, x), ["dict[str, numpy.ndarray]", "not tuple"], id="tuple"),
    pytest.param(lambda x: {0: x}, ["key 0 is a int, not a str"], id="int-key"),
    pytest.param(lambda x: {"INPUT0": x, "INPUT1": x.tolist()}, ["input 'INPUT1' is a list"], id="list-value"),
    pytest.param(lambda x: {"INPUT0": np.float32(1)}, ["input 'INPUT0' is a float32"], id="numpy-scalar"),
]


@pytest.mark.parametrize(("make", "words"), WRONG_INPUTS)
def test_infer_rejects_inputs_that_are_not_a_dict_of_arrays(client: InferenceClient, make, words: list[str]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError) as e:
        client.infer("add_sub", make(np.ones((1, 16), np.float32)))
    for word in ["add_sub", *words]:
        assert word in str(e.value)


@pytest.mark.parametrize(("make", "words"), WRONG_INPUTS)
async def test_async_infer_rejects_inputs_that_are_not_a_dict_of_arrays(
    server: RunningServer, make, words: list[str]
) -> None:  # type: ignore[no-untyped-def]
    async with AsyncInferenceClient(server.grpc_url) as c:
        with pytest.raises(TypeError) as e:
            await c.infer("add_sub", make(np.ones((1, 16), np.float32)))
    for word in ["add_sub", *words]:
        assert word in str(e.value)


def test_infer_rejects_tritonclient_inputs(client: InferenceClient) -> None:
    """The README mix-up: tritonclient's InferInput list handed to inferd's client."""
    import tritonclient.grpc as grpcclient

    x = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), np.float32))
    with pytest.raises(TypeError, match=r"dict\[str, numpy.ndarray\].*not list"):
        client.infer("add_sub", [x, x])


def test_health_metadata_config_statistics_index(client: InferenceClient) -> None:
    assert client.is_server_live()
    # The shared repository holds broken models on purpose, so strict readiness says no.
    assert client.is_server_ready() is False
    assert client.is_model_ready("add_sub")
    assert "statistics" in client.server_metadata().extensions
    meta = client.model_metadata("add_sub")
    assert [t.name for t in meta.inputs] == ["INPUT0", "INPUT1"]
    assert list(meta.inputs[0].shape) == [-1, 16]
    assert client.model_config("add_sub").max_batch_size == 8
    before = client.model_statistics("add_sub").model_stats[0].inference_stats.success.count
    x = np.ones((2, 16), np.float32)
    client.infer("add_sub", {"INPUT0": x, "INPUT1": x})
    after = client.model_statistics("add_sub").model_stats[0].inference_stats.success.count
    assert after == before + 1
    index = {m.name: m for m in client.repository_index()}
    assert index["add_sub"].state == "READY"
    assert index["bad_pbtxt"].state == "UNAVAILABLE"


def test_load_and_unload(tmp_path: Path) -> None:
    write(tmp_path, "adder", None, binary_model("Add", 1, 3))  # TensorProto.FLOAT
    running = start_server(test_settings(tmp_path, model_control_mode="explicit", load_models=["adder"]))
    try:
        with InferenceClient(running.grpc_url) as c:
            assert c.is_model_ready("adder")
            c.unload_model("adder")
            assert not c.is_model_ready("adder")
            c.load_model("adder", config_json='{"max_batch_size": 4}')
            assert c.is_model_ready("adder")
            assert c.model_config("adder").max_batch_size == 4
            with pytest.raises(InferenceError) as e:
                c.load_model("adder", config_json="{not json")
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        running.stop()


async def test_async_client(server: RunningServer, model_repo: Path) -> None:
    rng = np.random.default_rng(3)
    inputs = {
        "INPUT0": rng.standard_normal((2, 16)).astype(np.float32),
        "INPUT1": rng.standard_normal((2, 16)).astype(np.float32),
    }
    async with AsyncInferenceClient(server.grpc_url) as c:
        assert await c.is_server_live()
        assert await c.is_server_ready() is False  # broken models in the shared repository
        assert await c.is_model_ready("add_sub")
        got = await c.infer("add_sub", inputs)
        assert (await c.model_config("add_sub")).max_batch_size == 8
        assert (await c.model_metadata("add_sub")).name == "add_sub"
        assert "add_sub" in {m.name for m in await c.repository_index(ready=True)}
        assert (await c.model_statistics("add_sub")).model_stats
        with pytest.raises(InferenceError) as e:
            await c.model_config("no_such_model")
        assert e.value.code == grpc.StatusCode.NOT_FOUND
    for name, want in run_ort(model_repo, "add_sub", inputs).items():
        np.testing.assert_array_equal(got[name], want)


def test_client_imports_without_the_server() -> None:
    """clients/ must not pull in the server or its dependencies."""
    code = (
        "import sys, inferd.clients.client, inferd.perf.cli, inferd.perf.runner, inferd.perf.report\n"
        "bad = [m for m in sys.modules if m.startswith(('inferd.server', 'inferd.backends', 'onnxruntime',"
        " 'starlette', 'uvicorn', 'prometheus_client', 'matplotlib'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
