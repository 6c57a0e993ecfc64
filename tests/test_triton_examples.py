"""What Triton's Python client examples (triton-inference-server/client, src/python/examples) do,
done here against inferd with Triton's example models (tests/triton_example_models.py): the same
client calls and the same checks, one test per example (protocols and modes as parameters).

Where inferd deliberately differs the test says so: the server's name is inferd's own, not
"triton". The sequence, decoupled and shared-memory examples are tested with their features."""

from __future__ import annotations

import asyncio
import json
import queue
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.grpc.model_config_pb2 as mc
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
import tritonclient.utils.shared_memory as shm
from onnx import TensorProto
from PIL import Image
from tritonclient import utils
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, test_settings
from .triton_example_models import add_sub_model, build_example_repository, write_images

SERVER_NAME = "inferd"  # the examples check for "triton"; inferd keeps its own name


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_example_repository(tmp_path_factory.mktemp("triton_examples"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("images")
    return folder, write_images(folder)


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    # Triton's QA runs the examples against a server started with --allow-client-shm (for the
    # reuse example) and, for model control, --model-control-mode=explicit.
    settings = test_settings(repo, model_control_mode="explicit", load_models=["*"], allow_client_shm=True)
    running = start_server(settings)
    yield running
    running.stop()


@pytest.fixture
def restores_simple(server: RunningServer) -> Iterator[None]:
    """For tests that reload or unload ``simple``: it serves from the repository again after."""
    yield
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.load_model("simple")
    assert client.is_model_ready("simple")
    client.close()


def client_for(module: Any, server: RunningServer, **kwargs: Any) -> Any:
    url = server.http_url if module in (httpclient, httpaio) else server.grpc_url
    return module.InferenceServerClient(url=url, **kwargs)


# --- simple: INPUT0 + INPUT1 and INPUT0 - INPUT1 over [1, 16] INT32 ----------------------------
X0 = np.arange(16, dtype=np.int32).reshape(1, 16)
ONES = np.ones((1, 16), dtype=np.int32)
MINUS_ONES = np.full((1, 16), -1, dtype=np.int32)  # the HTTP examples' second input
HEADERS = {"test": "1", "dummy": "2"}  # -H test:1 -H dummy:2; copied per call: tritonclient adds to it


def simple_request(
    module: Any, x1: np.ndarray, binary: bool | None = None, outputs: bool = True
) -> tuple[list, list | None]:  # type: ignore[type-arg]
    """The examples' inputs and requested outputs; ``binary`` picks the HTTP examples' mix of JSON
    and binary tensors (INPUT0 JSON, INPUT1 binary, OUTPUT0 binary, OUTPUT1 JSON)."""
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    if binary is None:
        inputs[0].set_data_from_numpy(X0)
        inputs[1].set_data_from_numpy(x1)
        requested = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    else:
        inputs[0].set_data_from_numpy(X0, binary_data=False)
        inputs[1].set_data_from_numpy(x1, binary_data=True)
        requested = [
            module.InferRequestedOutput("OUTPUT0", binary_data=True),
            module.InferRequestedOutput("OUTPUT1", binary_data=False),
        ]
    return inputs, requested if outputs else None


def check_sum_and_difference(result: Any, x1: np.ndarray) -> None:
    """The examples compare each of the 16 elements; a whole-array comparison says the same."""
    out0, out1 = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    assert out0.shape == (1, 16) and out1.shape == (1, 16)
    np.testing.assert_array_equal(out0, X0 + x1)
    np.testing.assert_array_equal(out1, X0 - x1)


# --- health and metadata -----------------------------------------------------------------------
def test_simple_grpc_health_metadata(server: RunningServer) -> None:
    client = client_for(grpcclient, server)
    assert client.is_server_live(headers={"test": "1", "dummy": "2"})
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.get_server_metadata().name == SERVER_NAME
    assert client.get_model_metadata("simple", headers={"test": "1", "dummy": "2"}).name == "simple"
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("wrong_model_name")
    assert "Request for unknown model" in e.value.message()
    assert client.get_model_config("simple").config.name == "simple"
    client.close()


def test_simple_http_health_metadata(server: RunningServer) -> None:
    client = client_for(httpclient, server)
    assert client.is_server_live(query_params={"test_1": 1, "test_2": 2})
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.get_server_metadata()["name"] == SERVER_NAME
    assert client.get_model_metadata("simple", query_params={"test_1": 1, "test_2": 2})["name"] == "simple"
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("wrong_model_name")
    assert "Request for unknown model" in e.value.message()
    client.close()


def test_grpc_client(server: RunningServer) -> None:
    """grpc_client.py: the generated stubs alone, health to inference, against densenet_onnx."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(service_pb2.ServerLiveRequest()).live
        assert stub.ServerReady(service_pb2.ServerReadyRequest()).ready
        assert stub.ModelReady(service_pb2.ModelReadyRequest(name="densenet_onnx", version="")).ready
        assert stub.ServerMetadata(service_pb2.ServerMetadataRequest()).name == SERVER_NAME
        metadata = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="densenet_onnx", version=""))
        assert [(t.name, list(t.shape)) for t in metadata.inputs] == [("data_0", [3, 16, 16])]
        config = stub.ModelConfig(service_pb2.ModelConfigRequest(name="densenet_onnx", version="")).config
        assert config.name == "densenet_onnx" and config.input[0].format == mc.ModelInput.FORMAT_NCHW

        request = service_pb2.ModelInferRequest(model_name="densenet_onnx", model_version="", id="my request id")
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = "data_0", "FP32"
        tensor.shape.extend([3, 16, 16])
        request.outputs.add().name = "fc6_1"
        request.raw_input_contents.append(bytes(3 * 16 * 16 * 4 * "a", "utf-8"))
        response = stub.ModelInfer(request)
    assert response.id == "my request id" and response.model_name == "densenet_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in response.outputs] == [("fc6_1", "FP32", [1000])]
    assert len(response.raw_output_contents[0]) == 1000 * 4


# --- inference: sync, async, asyncio --------------------------------------------------------------
@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_simple_grpc_infer_client(server: RunningServer, compression: str | None) -> None:
    client = client_for(grpcclient, server)
    inputs, outputs = simple_request(grpcclient, ONES)
    result = client.infer(
        model_name="simple",
        inputs=inputs,
        outputs=outputs,
        client_timeout=None,
        headers={"test": "1"},
        compression_algorithm=compression,
    )
    assert len(client.get_inference_statistics(model_name="simple").model_stats) == 1
    check_sum_and_difference(result, ONES)
    result = client.infer(model_name="simple", inputs=inputs, outputs=None, compression_algorithm=compression)
    check_sum_and_difference(result, ONES)
    client.close()


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_simple_http_infer_client(server: RunningServer, compression: str | None) -> None:
    client = client_for(httpclient, server)
    query = {"test_1": 1, "test_2": 2}

    def infer(model: str, outputs: bool) -> Any:
        inputs, requested = simple_request(httpclient, MINUS_ONES, binary=True, outputs=outputs)
        return client.infer(
            model,
            inputs,
            outputs=requested,
            query_params=query,
            headers=dict(HEADERS),
            request_compression_algorithm=compression,
            response_compression_algorithm=compression,
        )

    result = infer("simple", outputs=True)
    assert len(client.get_inference_statistics(model_name="simple", headers=dict(HEADERS))["model_stats"]) == 1
    check_sum_and_difference(result, MINUS_ONES)
    check_sum_and_difference(infer("simple", outputs=False), MINUS_ONES)
    with pytest.raises(InferenceServerException) as e:
        infer("wrong_model_name", outputs=True)
    assert e.value.message().startswith("Request for unknown model")
    client.close()


def test_simple_grpc_async_infer_client(server: RunningServer) -> None:
    client = client_for(grpcclient, server)
    inputs, outputs = simple_request(grpcclient, ONES)
    answers: queue.Queue[Any] = queue.Queue()

    def callback(user_data: queue.Queue[Any], result: Any, error: Any) -> None:
        user_data.put(error if error else result)

    client.async_infer(
        model_name="simple", inputs=inputs, callback=partial(callback, answers), outputs=outputs, client_timeout=None
    )
    answer = answers.get(timeout=10)
    assert not isinstance(answer, InferenceServerException), answer
    check_sum_and_difference(answer, ONES)
    client.close()


def test_simple_http_async_infer_client(server: RunningServer) -> None:
    request_count = 2
    client = client_for(httpclient, server, concurrency=request_count)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(X0, binary_data=True)
    inputs[1].set_data_from_numpy(ONES, binary_data=True)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("OUTPUT0", "OUTPUT1")]
    pending = [client.async_infer(model_name="simple", inputs=inputs, outputs=outputs) for _ in range(request_count)]
    for request in pending:
        check_sum_and_difference(request.get_result(), ONES)
    client.close()


def test_simple_grpc_aio_infer_client(server: RunningServer) -> None:
    async def main() -> None:
        client = client_for(grpcaio, server)
        inputs, outputs = simple_request(grpcaio, ONES)
        result = await client.infer(
            model_name="simple", inputs=inputs, outputs=outputs, client_timeout=None, headers={"test": "1"}
        )
        statistics = await client.get_inference_statistics(model_name="simple")
        assert len(statistics.model_stats) == 1
        check_sum_and_difference(result, ONES)
        both = await asyncio.gather(*(client.infer(model_name="simple", inputs=inputs, outputs=None) for _ in range(2)))
        for result in both:
            check_sum_and_difference(result, ONES)
        await client.close()

    asyncio.run(main())


def test_simple_http_aio_infer_client(server: RunningServer) -> None:
    async def infer(client: Any, model: str, outputs: bool) -> Any:
        inputs, requested = simple_request(httpaio, MINUS_ONES, binary=True, outputs=outputs)
        return await client.infer(
            model, inputs, outputs=requested, query_params={"test_1": 1, "test_2": 2}, headers=dict(HEADERS)
        )

    async def main() -> None:
        client = client_for(httpaio, server)
        result = await infer(client, "simple", outputs=True)
        statistics = await client.get_inference_statistics(model_name="simple", headers=dict(HEADERS))
        assert len(statistics["model_stats"]) == 1
        check_sum_and_difference(result, MINUS_ONES)
        check_sum_and_difference(await infer(client, "simple", outputs=False), MINUS_ONES)
        with pytest.raises(InferenceServerException) as e:
            await infer(client, "wrong_model_name", outputs=True)
        assert e.value.message().startswith("Request for unknown model")
        both = await asyncio.gather(infer(client, "simple", True), infer(client, "simple", False))
        for result in both:
            check_sum_and_difference(result, MINUS_ONES)
        await client.close()

    asyncio.run(main())


# --- strings ------------------------------------------------------------------------------------
def as_strings(x: np.ndarray) -> np.ndarray:
    return np.array([str(v).encode("utf-8") for v in x.reshape(-1)], dtype=np.object_).reshape(x.shape)


NULL_CHARS = np.array([b"he\x00llo"] * 16, dtype=np.object_).reshape(1, 16)
BLOBS = np.array([b"\x00\x01\x02\x03"] * 16, dtype=np.bytes_).reshape(1, 16)


def string_add_sub(client: Any, module: Any, binary: bool | None) -> None:
    """simple_string: strings holding integers; the answers, read back as integers, add up."""
    inputs = [module.InferInput("INPUT0", [1, 16], "BYTES"), module.InferInput("INPUT1", [1, 16], "BYTES")]
    outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    if binary is None:
        inputs[0].set_data_from_numpy(as_strings(X0))
        inputs[1].set_data_from_numpy(as_strings(ONES))
    else:  # the HTTP example: INPUT0 and OUTPUT0 binary, INPUT1 and OUTPUT1 JSON
        inputs[0].set_data_from_numpy(as_strings(X0), binary_data=True)
        inputs[1].set_data_from_numpy(as_strings(ONES), binary_data=False)
        outputs = [
            module.InferRequestedOutput("OUTPUT0", binary_data=True),
            module.InferRequestedOutput("OUTPUT1", binary_data=False),
        ]
    result = client.infer(model_name="simple_string", inputs=inputs, outputs=outputs)
    sums, differences = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    assert [int(v) for v in sums[0]] == list((X0 + ONES)[0])
    assert [int(v) for v in differences[0]] == list((X0 - ONES)[0])


def identity(client: Any, module: Any, data: np.ndarray, binary: bool | None) -> None:
    """simple_identity echoes BYTES, embedded null characters and binary blobs included."""
    tensor = module.InferInput("INPUT0", list(data.shape), "BYTES")
    if binary is None:
        tensor.set_data_from_numpy(data)
        outputs = [module.InferRequestedOutput("OUTPUT0")]
    else:
        tensor.set_data_from_numpy(data, binary_data=binary)
        outputs = [module.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    got = client.infer(model_name="simple_identity", inputs=[tensor], outputs=outputs).as_numpy("OUTPUT0")
    if data.dtype == np.object_:
        if binary is False:  # JSON answers strings; the example encodes them back
            got = np.array([bytes(str(v), encoding="utf-8") for v in got.reshape(-1)], dtype=np.object_).reshape(1, 16)
        assert np.array_equal(data, got)
    else:
        assert np.array_equal(data, np.char.encode(got.astype(str)))


def test_simple_grpc_string_infer_client(server: RunningServer) -> None:
    client = client_for(grpcclient, server)
    string_add_sub(client, grpcclient, None)
    identity(client, grpcclient, NULL_CHARS, None)
    identity(client, grpcclient, BLOBS, None)
    client.close()


def test_simple_http_string_infer_client(server: RunningServer) -> None:
    client = client_for(httpclient, server)
    string_add_sub(client, httpclient, binary=True)
    for data in (NULL_CHARS, BLOBS):
        identity(client, httpclient, data, binary=True)
        identity(client, httpclient, data, binary=False)
    client.close()


# --- explicit tensor contents over the generated stubs --------------------------------------------
def explicit_request(
    model: str, datatype: str, contents: str, x0: list[Any], x1: list[Any]
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, model_version="")
    for name, values in (("INPUT0", x0), ("INPUT1", x1)):
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[1, 16])
        getattr(tensor.contents, contents)[:] = values
    request.outputs.add(name="OUTPUT0")
    request.outputs.add(name="OUTPUT1")
    return request


def read_outputs(response: service_pb2.ModelInferResponse, decode: Any) -> list[np.ndarray]:
    return [np.resize(decode(raw), list(out.shape)) for out, raw in zip(response.outputs, response.raw_output_contents)]


def check_explicit(results: list[np.ndarray], x0: list[int], x1: list[int]) -> None:
    assert len(results) == 2
    assert list(results[0][0]) == [a + b for a, b in zip(x0, x1)]
    assert list(results[1][0]) == [a - b for a, b in zip(x0, x1)]


@pytest.fixture
def stub(server: RunningServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_grpc_explicit_int_content_client(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    x0, x1 = list(range(16)), [1] * 16
    request = explicit_request("simple", "INT32", "int_contents", x0, x1)
    results = read_outputs(stub.ModelInfer(request), lambda raw: np.frombuffer(raw, dtype=np.int32))
    check_explicit(results, x0, x1)
    # Contents beside raw_input_contents are refused, with Triton's words.
    request.raw_input_contents.extend([np.array(x0[0:8]).tobytes()])
    request.inputs[0].contents.int_contents[:] = x0[8:]
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "contents field must not be specified when using raw_input_contents for 'INPUT0' for model 'simple'" in (
        e.value.details()
    )


def test_grpc_explicit_int8_content_client(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    x0, x1 = list(range(16)), [1] * 16
    request = explicit_request("simple_int8", "INT8", "int_contents", x0, x1)
    results = read_outputs(stub.ModelInfer(request), lambda raw: np.frombuffer(raw, dtype=np.int8))
    check_explicit(results, x0, x1)
    request.model_version = "wrong_specification"
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(request)
    assert "failed to get model version from specified version string 'wrong_specification'" in e.value.details()


def test_grpc_explicit_byte_content_client(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    x0 = [str(i).encode("utf-8") for i in range(16)]
    request = explicit_request("simple_string", "BYTES", "bytes_contents", x0, [b"1"] * 16)
    results = read_outputs(stub.ModelInfer(request), utils.deserialize_bytes_tensor)
    assert len(results) == 2
    assert [int(v) for v in results[0][0]] == [i + 1 for i in range(16)]
    assert [int(v) for v in results[1][0]] == [i - 1 for i in range(16)]


# --- reusing InferInput / InferRequestedOutput objects ---------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_reuse_infer_objects_client(server: RunningServer, protocol: str) -> None:
    """The same input and output objects, switched between system shared memory and plain
    tensors and back, answer correctly every time."""
    module = grpcclient if protocol == "grpc" else httpclient
    client = client_for(module, server)
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()
    x0, x1 = np.arange(16, dtype=np.int32), np.ones(16, dtype=np.int32)
    size = x0.size * x0.itemsize
    handles = {}
    for name in ("output0_data", "output1_data", "input0_data", "input1_data"):
        key = f"/{name}_{uuid.uuid4().hex[:8]}"  # unique: other test runs may share this machine
        handles[name] = shm.create_shared_memory_region(name, key, size)
        if name.startswith("input"):
            shm.set_shared_memory_region(handles[name], [x0 if name == "input0_data" else x1])
        client.register_system_shared_memory(name, key, size)
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]

    def infer_and_validate(use_shared_memory: bool) -> None:
        a, b = x0, x1 if use_shared_memory else x1 * 2
        if use_shared_memory:
            inputs[0].set_shared_memory("input0_data", size)
            inputs[1].set_shared_memory("input1_data", size)
            outputs[0].set_shared_memory("output0_data", size)
            outputs[1].set_shared_memory("output1_data", size)
        else:
            inputs[0].set_data_from_numpy(np.expand_dims(a, axis=0))
            inputs[1].set_data_from_numpy(np.expand_dims(b, axis=0))
            outputs[0].unset_shared_memory()
            outputs[1].unset_shared_memory()
        result = client.infer(model_name="simple", inputs=inputs, outputs=outputs)
        got = []
        for name, handle in (("OUTPUT0", handles["output0_data"]), ("OUTPUT1", handles["output1_data"])):
            output = result.get_output(name)
            assert output is not None, f"{name} is missing in the response"
            if use_shared_memory:
                datatype, shape = (
                    (output.datatype, output.shape) if protocol == "grpc" else (output["datatype"], output["shape"])
                )
                got.append(shm.get_contents_as_numpy(handle, utils.triton_to_np_dtype(datatype), shape))
            else:
                got.append(result.as_numpy(name))
        np.testing.assert_array_equal(got[0][0], a + b)
        np.testing.assert_array_equal(got[1][0], a - b)

    try:
        infer_and_validate(True)
        infer_and_validate(False)
        infer_and_validate(True)
    finally:
        client.unregister_system_shared_memory()
        for handle in handles.values():
            shm.destroy_shared_memory_region(handle)
        client.close()


# --- channel arguments and keepalive ------------------------------------------------------------
def test_simple_grpc_custom_args_client(server: RunningServer) -> None:
    channel_args = [
        ("grpc.max_send_message_length", 1024 * 1024),
        ("grpc.max_receive_message_length", 1024 * 1024),
        ("grpc.keepalive_time_ms", 2**31 - 1),
        ("grpc.keepalive_timeout_ms", 20000),
        ("grpc.keepalive_permit_without_calls", False),
        ("grpc.http2.max_pings_without_data", 2),
        ("grpc.dns_enable_srv_queries", 1),
    ]
    client = client_for(grpcclient, server, channel_args=channel_args)
    inputs, outputs = simple_request(grpcclient, ONES)
    check_sum_and_difference(
        client.infer(model_name="simple", inputs=inputs, outputs=outputs, headers={"test": "1"}), ONES
    )
    client.close()


def test_simple_grpc_keepalive_client(server: RunningServer) -> None:
    keepalive = grpcclient.KeepAliveOptions(
        keepalive_time_ms=2**31 - 1,
        keepalive_timeout_ms=20000,
        keepalive_permit_without_calls=False,
        http2_max_pings_without_data=2,
    )
    client = client_for(grpcclient, server, keepalive_options=keepalive)
    inputs, outputs = simple_request(grpcclient, ONES)
    check_sum_and_difference(
        client.infer(model_name="simple", inputs=inputs, outputs=outputs, headers={"test": "1"}), ONES
    )
    client.close()


# --- model control ------------------------------------------------------------------------------
BAD_CONFIG = '"parameters": {"config": {{"max_batch_size": "16"}}}'  # not JSON: the load must fail
GOOD_CONFIG = '{"max_batch_size":"16"}'


def model_control(client: Any, repo: Path, protocol: str) -> None:
    """What simple_{grpc,http}_model_control.py do with the ``simple`` model."""
    index = client.get_model_repository_index()
    assert len(index.models if protocol == "grpc" else index) == len([p for p in repo.iterdir() if p.is_dir()])
    client.load_model("simple")
    assert client.is_model_ready("simple")
    with pytest.raises(InferenceServerException) as e:
        client.load_model("simple", config=BAD_CONFIG)
    assert "failed to load" in e.value.message()
    # Only max_batch_size is given: the rest of the config is completed from the model.
    client.load_model("simple", config=GOOD_CONFIG)
    config = client.get_model_config("simple")
    assert (config.config.max_batch_size if protocol == "grpc" else config["max_batch_size"]) == 16
    client.unload_model("simple")
    assert not client.is_model_ready("simple")


def test_simple_grpc_model_control(server: RunningServer, repo: Path, restores_simple: None) -> None:
    client = client_for(grpcclient, server)
    model_control(client, repo, "grpc")
    # A path component longer than NAME_MAX is refused, saying why, and the server lives on
    # (Triton's own wording and status for this one: the xfail test below).
    for key in ("file:" + "A" * 256, "file:1/" + "A" * 256):
        with pytest.raises(InferenceServerException) as e:
            client.load_model("simple", config="{}", files={key: b"a"})
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and key[:20] in e.value.message()
        assert client.is_server_live()
    with pytest.raises(InferenceServerException) as e:
        client.load_model("wrong_model_name")
    assert "failed to load" in e.value.message()
    client.close()


@pytest.mark.xfail(
    strict=True,
    reason="simple_grpc_model_control.py expects Triton's StatusCode.INTERNAL and 'failed to poll from model "
    "repository' for a 256-character 'file:' name; inferd refuses it before any file is written, with "
    "INVALID_ARGUMENT and a message naming the parameter (Triton's own TODO there says INVALID_ARGUMENT)",
)
def test_long_file_name_answered_as_triton_answers(server: RunningServer) -> None:
    client = client_for(grpcclient, server)
    with pytest.raises(InferenceServerException) as e:
        client.load_model("simple", config="{}", files={"file:" + "A" * 256: b"a"})
    client.close()
    assert e.value.status() == "StatusCode.INTERNAL"
    assert "failed to poll from model repository" in e.value.message()


def test_simple_http_model_control(server: RunningServer, repo: Path, restores_simple: None) -> None:
    client = client_for(httpclient, server)
    model_control(client, repo, "http")
    with pytest.raises(InferenceServerException) as e:
        client.load_model("wrong_model_name")
    assert "failed to load" in e.value.message()
    client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_load_model_with_file_override(server: RunningServer, repo: Path, protocol: str, restores_simple: None) -> None:
    """load_model(config=..., files={"file:1/model.onnx": ...}): tritonclient's documented way to
    load a model from files the client sends (here a ``simple`` whose outputs are swapped)."""
    module = grpcclient if protocol == "grpc" else httpclient
    client = client_for(module, server)
    config = (
        client.get_model_config("simple", as_json=True) if protocol == "grpc" else client.get_model_config("simple")
    )
    config = config["config"] if protocol == "grpc" else config
    swapped = add_sub_model(TensorProto.INT32)
    for node in swapped.graph.node:
        node.output[0] = "OUTPUT1" if node.output[0] == "OUTPUT0" else "OUTPUT0"
    client.load_model("simple", config=json.dumps(config), files={"file:1/model.onnx": swapped.SerializeToString()})
    inputs, outputs = simple_request(module, ONES)
    result = client.infer("simple", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), X0 - ONES)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), X0 + ONES)
    client.load_model("simple")  # from the repository again
    check_sum_and_difference(client.infer("simple", inputs, outputs=outputs), ONES)
    client.close()


# --- image classification ------------------------------------------------------------------------
def field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def parse_image_model(metadata: Any, config: Any) -> tuple[int, str, str, int, int, int, int, str]:
    """image_client.py's requirements for a classification network, on gRPC messages or HTTP
    JSON alike: one input of 3 dims (CHW or HWC), one FP32 vector output."""
    inputs, outputs = field(metadata, "inputs"), field(metadata, "outputs")
    assert len(inputs) == 1 and len(outputs) == 1 and len(field(config, "input")) == 1
    input_metadata, input_config, output_metadata = inputs[0], field(config, "input")[0], outputs[0]
    assert field(output_metadata, "datatype") == "FP32"
    max_batch_size = field(config, "max_batch_size")
    dims = list(field(output_metadata, "shape"))[1 if max_batch_size > 0 else 0 :]
    assert sum(1 for d in dims if d > 1) <= 1, "expecting model output to be a vector"
    shape = list(field(input_metadata, "shape"))
    assert len(shape) == 3 + (1 if max_batch_size > 0 else 0)
    fmt = field(input_config, "format")
    if isinstance(fmt, str):  # HTTP gives the enum's name
        fmt = mc.ModelInput.Format.Value(fmt)
    assert fmt in (mc.ModelInput.FORMAT_NCHW, mc.ModelInput.FORMAT_NHWC)
    dims = shape[1:] if max_batch_size > 0 else shape
    h, w, c = dims if fmt == mc.ModelInput.FORMAT_NHWC else (dims[1], dims[2], dims[0])
    return (
        max_batch_size,
        field(input_metadata, "name"),
        field(output_metadata, "name"),
        c,
        h,
        w,
        fmt,
        field(input_metadata, "datatype"),
    )


def preprocess(path: Path, fmt: int, c: int, h: int, w: int) -> np.ndarray:
    """The example's preprocessing with ``-s INCEPTION``: resize, scale to [-1, 1], CHW if asked."""
    img = Image.open(path).convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    scaled = np.array(img).astype(np.float32) / 127.5 - 1
    return np.transpose(scaled, (2, 0, 1)) if fmt == mc.ModelInput.FORMAT_NCHW else scaled


def parse_class(entry: Any) -> tuple[float, int, str]:
    """One "score:index:label" string (bytes on every path but HTTP JSON)."""
    text = entry.decode() if isinstance(entry, bytes) else str(entry)
    score, index, label = text.split(":", 2)
    return float(score), int(index), label


def expected_scores(repo: Path, model: str, image: np.ndarray) -> np.ndarray:
    """What the model itself computes for ``image``, through onnxruntime directly."""
    session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return session.run(None, {name: image[np.newaxis]})[0].reshape(-1)


def check_classes(classes: np.ndarray, scores: np.ndarray, label: str, count: int) -> None:
    assert classes.shape == (count,)
    parsed = [parse_class(entry) for entry in classes]
    top = np.argsort(-scores, kind="stable")[:count]
    assert [i for _, i, _ in parsed] == list(top)
    assert parsed[0][2] == label
    np.testing.assert_allclose([s for s, _, _ in parsed], scores[top], rtol=1e-5, atol=1e-6)


IMAGE_CASES = [
    ("grpc", "sync", "densenet_onnx", 1),
    ("grpc", "async", "densenet_onnx", 1),
    ("grpc", "streaming", "densenet_onnx", 1),
    ("grpc", "sync", "inception_onnx", 3),
    ("http", "sync", "densenet_onnx", 1),
    ("http", "async", "densenet_onnx", 1),
    ("http", "async", "inception_onnx", 3),
]


@pytest.mark.parametrize("protocol,mode,model,classes", IMAGE_CASES)
def test_image_client(
    server: RunningServer,
    repo: Path,
    images: tuple[Path, dict[str, str]],
    protocol: str,
    mode: str,
    model: str,
    classes: int,
) -> None:
    """image_client.py -m MODEL -s INCEPTION -c CLASSES -b 1 [-a | --streaming] over a folder."""
    folder, expected = images
    module = grpcclient if protocol == "grpc" else httpclient
    client = client_for(module, server, **({"concurrency": 20 if mode == "async" else 1} if protocol == "http" else {}))
    metadata = client.get_model_metadata(model_name=model, model_version="")
    config = client.get_model_config(model_name=model, model_version="")
    config = config.config if protocol == "grpc" else config
    max_batch_size, input_name, output_name, c, h, w, fmt, dtype = parse_image_model(metadata, config)
    assert max_batch_size == 0  # Triton's example configs: no batching, -b 1
    filenames = sorted(expected)
    data = {name: preprocess(folder / name, fmt, c, h, w) for name in filenames}

    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    pending, responses = [], []
    if mode == "streaming":
        client.start_stream(partial(lambda q, result, error: q.put((result, error)), answers))
    for sent, name in enumerate(filenames, start=1):
        inputs = [module.InferInput(input_name, list(data[name].shape), dtype)]
        inputs[0].set_data_from_numpy(data[name])
        outputs = [module.InferRequestedOutput(output_name, class_count=classes)]
        kwargs = {"request_id": str(sent), "model_version": "", "outputs": outputs}
        if mode == "streaming":
            client.async_stream_infer(model, inputs, **kwargs)
        elif mode == "async" and protocol == "grpc":
            client.async_infer(
                model, inputs, partial(lambda q, result, error: q.put((result, error)), answers), **kwargs
            )
        elif mode == "async":
            pending.append(client.async_infer(model, inputs, **kwargs))
        else:
            responses.append(client.infer(model, inputs, **kwargs))
    if mode == "streaming":
        client.stop_stream()
    if protocol == "grpc" and mode != "sync":
        for _ in filenames:
            result, error = answers.get(timeout=30)
            assert error is None, error
            responses.append(result)
    responses += [request.get_result() for request in pending]

    by_id = {(r.get_response().id if protocol == "grpc" else r.get_response()["id"]): r for r in responses}
    assert sorted(by_id) == [str(i) for i in range(1, len(filenames) + 1)]
    for sent, name in enumerate(filenames, start=1):
        check_classes(
            by_id[str(sent)].as_numpy(output_name), expected_scores(repo, model, data[name]), expected[name], classes
        )
    client.close()


@pytest.mark.parametrize("mode", ["sync", "async", "streaming"])
def test_grpc_image_client(server: RunningServer, repo: Path, images: tuple[Path, dict[str, str]], mode: str) -> None:
    """grpc_image_client.py -m densenet_onnx -s INCEPTION -c 1 -b 1: the generated stubs, the
    ``classification`` output parameter, raw tensors in and out."""
    folder, expected = images
    filenames = sorted(expected)
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="densenet_onnx", version=""))
        config = stub.ModelConfig(service_pb2.ModelConfigRequest(name="densenet_onnx", version="")).config
        _, input_name, output_name, c, h, w, fmt, dtype = parse_image_model(metadata, config)
        data = {name: preprocess(folder / name, fmt, c, h, w) for name in filenames}

        def requests() -> Iterator[service_pb2.ModelInferRequest]:
            for name in filenames:
                request = service_pb2.ModelInferRequest(model_name="densenet_onnx", model_version="")
                output = request.outputs.add(name=output_name)
                output.parameters["classification"].int64_param = 1
                request.inputs.add(name=input_name, datatype=dtype, shape=[c, h, w])
                request.raw_input_contents.append(data[name].tobytes())
                yield request

        if mode == "streaming":
            streamed = list(stub.ModelStreamInfer(requests()))
            assert all(r.error_message == "" for r in streamed), [r.error_message for r in streamed]
            responses = [r.infer_response for r in streamed]
        elif mode == "async":
            responses = [future.result() for future in [stub.ModelInfer.future(r) for r in requests()]]
        else:
            responses = [stub.ModelInfer(r) for r in requests()]
    for name, response in zip(filenames, responses):
        assert len(response.outputs) == 1 and len(response.raw_output_contents) == 1
        contents = np.reshape(
            utils.deserialize_bytes_tensor(response.raw_output_contents[0]), response.outputs[0].shape
        )
        check_classes(contents, expected_scores(repo, "densenet_onnx", data[name]), expected[name], 1)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ensemble_image_client(
    server: RunningServer, repo: Path, images: tuple[Path, dict[str, str]], protocol: str
) -> None:
    """ensemble_image_client.py -c 1 over a folder: encoded images go in as BYTES, a Python step
    decodes them, the classifier's top class comes back through the ensemble with its label."""
    folder, expected = images
    module = grpcclient if protocol == "grpc" else httpclient
    client = client_for(module, server)
    model = "preprocess_inception_ensemble"
    metadata = client.get_model_metadata(model_name=model)
    config = client.get_model_config(model_name=model)
    config = config.config if protocol == "grpc" else config
    assert len(field(metadata, "inputs")) == 1 and len(field(config, "input")) == 1
    input_name = field(field(metadata, "inputs")[0], "name")
    output_names = [field(output, "name") for output in field(metadata, "outputs")]
    filenames = sorted(expected)
    batch_size = min(len(filenames), field(config, "max_batch_size"))
    assert batch_size == len(filenames)
    batch = np.stack([np.array([(folder / name).read_bytes()], dtype=bytes) for name in filenames[:batch_size]], axis=0)
    inputs = [module.InferInput(input_name, list(batch.shape), "BYTES")]
    if protocol == "grpc":
        inputs[0].set_data_from_numpy(batch)
        outputs = [module.InferRequestedOutput(name, class_count=1) for name in output_names]
    else:
        inputs[0].set_data_from_numpy(batch, binary_data=True)
        outputs = [module.InferRequestedOutput(name, binary_data=True, class_count=1) for name in output_names]
    result = client.infer(model, inputs, outputs=outputs)
    for output_name in output_names:
        classes = result.as_numpy(output_name)
        assert len(classes) == batch_size
        for name, row in zip(filenames, classes):
            score, index, label = parse_class(row[0])
            assert label == expected[name] and 0 < score <= 1
    client.close()


def test_examples_leave_the_server_serving(server: RunningServer) -> None:
    """Last: after every example (model control included) all models are ready again."""
    client = client_for(grpcclient, server)
    deadline = time.monotonic() + 10
    while not client.is_server_ready() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.is_server_ready()
    assert all(m.state == "READY" for m in client.get_model_repository_index().models)
    client.close()
