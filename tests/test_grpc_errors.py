"""Every bad request gets the protocol's status code and a message that names the model and
tensor, before anything reaches a model; the server keeps serving afterwards."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.pb import grpc_service_pb2_grpc as pb_grpc

OK = np.ones((1, 16), np.float32).tobytes()
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def stub(server):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def tensor(name: str, shape: list[int], datatype: str = "FP32") -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)


def request(model: str = "add_sub", inputs=None, raw=None, outputs=(), version: str = "") -> pb.ModelInferRequest:  # type: ignore[no-untyped-def]
    if inputs is None:
        inputs = [tensor("INPUT0", [1, 16]), tensor("INPUT1", [1, 16])]
        raw = [OK, OK] if raw is None else raw
    msg = pb.ModelInferRequest(model_name=model, model_version=version, inputs=inputs, raw_input_contents=raw or [])
    for o in outputs:
        msg.outputs.add(name=o)
    return msg


def call(stub, msg) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(msg)
    return info.value


CASES = {
    "unknown model": (request(model="nope"), grpc.StatusCode.NOT_FOUND, ["nope"]),
    "unknown version": (request(version="9"), grpc.StatusCode.NOT_FOUND, ["add_sub", "9"]),
    "non-numeric version": (request(version="latest"), INVALID, ["latest"]),
    "missing input": (request(inputs=[tensor("INPUT0", [1, 16])], raw=[OK]), INVALID, ["add_sub", "INPUT1", "missing"]),
    "extra input": (
        request(
            inputs=[tensor("INPUT0", [1, 16]), tensor("INPUT1", [1, 16]), tensor("INPUT9", [1, 16])], raw=[OK, OK, OK]
        ),
        INVALID,
        ["add_sub", "INPUT9"],
    ),
    "duplicate input": (
        request(inputs=[tensor("INPUT0", [1, 16]), tensor("INPUT0", [1, 16])], raw=[OK, OK]),
        INVALID,
        ["INPUT0", "more than once"],
    ),
    "wrong datatype": (
        request(inputs=[tensor("INPUT0", [1, 16], "FP64"), tensor("INPUT1", [1, 16])], raw=[OK + OK, OK]),
        INVALID,
        ["add_sub", "INPUT0", "FP64", "FP32"],
    ),
    "unknown datatype": (
        request(inputs=[tensor("INPUT0", [1, 16], "FP33"), tensor("INPUT1", [1, 16])]),
        INVALID,
        ["FP33"],
    ),
    "wrong shape": (
        request(inputs=[tensor("INPUT0", [1, 8]), tensor("INPUT1", [1, 16])], raw=[OK[:32], OK]),
        INVALID,
        ["add_sub", "INPUT0", "[1, 8]", "16"],
    ),
    "missing batch dim": (
        request(inputs=[tensor("INPUT0", [16]), tensor("INPUT1", [16])], raw=[OK, OK]),
        INVALID,
        ["INPUT0", "batch"],
    ),
    "batch too large": (
        request(inputs=[tensor("INPUT0", [9, 16]), tensor("INPUT1", [9, 16])], raw=[OK * 9, OK * 9]),
        INVALID,
        ["add_sub", "max_batch_size", "9"],
    ),
    "mismatched batch": (
        request(inputs=[tensor("INPUT0", [2, 16]), tensor("INPUT1", [1, 16])], raw=[OK * 2, OK]),
        INVALID,
        ["INPUT1", "batch size"],
    ),
    "raw size short": (request(raw=[OK[:-4], OK]), INVALID, ["add_sub", "INPUT0", "60 bytes", "64"]),
    "raw size long": (request(raw=[OK, OK + b"x"]), INVALID, ["INPUT1", "65 bytes"]),
    "negative dim": (
        request(inputs=[tensor("INPUT0", [-1, 16]), tensor("INPUT1", [1, 16])]),
        INVALID,
        ["INPUT0", "negative"],
    ),
    "huge shape": (
        request(inputs=[tensor("INPUT0", [2**62, 2**62]), tensor("INPUT1", [1, 16])], raw=[OK, OK]),
        INVALID,
        ["INPUT0", "larger than any tensor"],
    ),
    "huge shape of zero elements": (
        request(inputs=[tensor("INPUT0", [0, 2**62, 16]), tensor("INPUT1", [1, 16])], raw=[b"", OK]),
        INVALID,
        ["INPUT0", "larger than any tensor"],
    ),
    "too many dimensions": (
        request(inputs=[tensor("INPUT0", [1] * 65 + [16]), tensor("INPUT1", [1, 16])], raw=[OK, OK]),
        INVALID,
        ["INPUT0", "66 dimensions", "at most"],
    ),
    "non-ASCII digits as the version": (request(version="²"), INVALID, ["add_sub", "²", "an integral value"]),
    "Arabic-Indic digits as the version": (request(version="١"), INVALID, ["add_sub", "١", "an integral value"]),
    # A few bytes declaring a hundred million BYTES elements: refused before any allocation.
    "bytes shape over a tiny buffer": (
        request(model="strings", inputs=[tensor("INPUT0", [1, 10**8], "BYTES")], raw=[b"\x01\x00\x00\x00a"]),
        INVALID,
        ["strings", "INPUT0", "cannot hold", "100000000"],
    ),
    "bytes shape overflowing": (
        request(model="strings", inputs=[tensor("INPUT0", [2**62, 2**62], "BYTES")], raw=[b"\x01\x00\x00\x00a"]),
        INVALID,
        ["strings", "INPUT0", "larger than any tensor"],
    ),
    "raw count mismatch": (request(raw=[OK]), INVALID, ["raw_input_contents", "1 entries", "2 inputs"]),
    "unknown output": (request(outputs=["OUTPUT7"]), INVALID, ["add_sub", "OUTPUT7"]),
    "duplicate output": (request(outputs=["OUTPUT0", "OUTPUT0"]), INVALID, ["OUTPUT0", "twice"]),
    "model not ready": (request(model="bad_pbtxt"), grpc.StatusCode.UNAVAILABLE, ["bad_pbtxt", "not ready"]),
    "bytes truncated": (
        request(model="strings", inputs=[tensor("INPUT0", [1, 2], "BYTES")], raw=[b"\x05\x00\x00\x00ab"]),
        INVALID,
        ["strings", "INPUT0", "BYTES"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request(stub, case):  # type: ignore[no-untyped-def]
    msg, code, words = CASES[case]
    error = call(stub, msg)
    assert error.code() == code, error.details()
    for w in words:
        assert w in error.details(), (w, error.details())
    assert "Traceback" not in error.details() and "numpy" not in error.details()
    # ...and the server keeps serving.
    assert len(stub.ModelInfer(request()).raw_output_contents) == 2


def test_typed_contents(stub):  # type: ignore[no-untyped-def]
    a = list(range(4))
    msg = pb.ModelInferRequest(model_name="add_int64")
    for name in ("INPUT0", "INPUT1"):
        t = msg.inputs.add(name=name, datatype="INT64", shape=[1, 4])
        t.contents.int64_contents.extend(a)
    out = stub.ModelInfer(msg)
    assert np.frombuffer(out.raw_output_contents[0], np.int64).tolist() == [0, 2, 4, 6]
    t = msg.inputs[1]
    t.contents.int64_contents.append(9)
    error = call(stub, msg)
    assert error.code() == INVALID and "5 values" in error.details()


def test_contents_and_raw_together_rejected(stub):  # type: ignore[no-untyped-def]
    msg = request()
    msg.inputs[0].contents.fp32_contents.extend([1.0] * 16)
    error = call(stub, msg)
    assert error.code() == INVALID and "contents" in error.details()


def test_fp16_needs_raw(stub):  # type: ignore[no-untyped-def]
    msg = pb.ModelInferRequest(model_name="add_fp16")
    for name in ("INPUT0", "INPUT1"):
        msg.inputs.add(name=name, datatype="FP16", shape=[1, 4])
    error = call(stub, msg)
    assert error.code() == INVALID and "raw_input_contents" in error.details()


def test_unknown_model_metadata_and_config(stub):  # type: ignore[no-untyped-def]
    for rpc, msg in (
        (stub.ModelMetadata, pb.ModelMetadataRequest(name="nope")),
        (stub.ModelConfig, pb.ModelConfigRequest(name="nope")),
        (stub.ModelStatistics, pb.ModelStatisticsRequest(name="nope")),
    ):
        with pytest.raises(grpc.RpcError) as info:
            rpc(msg)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in info.value.details()


def test_unimplemented_extensions_say_so(stub):  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "shared memory" in info.value.details()


def test_message_over_limit_is_resource_exhausted(model_repo):  # type: ignore[no-untyped-def]
    from .conftest import start_server, test_settings

    running = start_server(test_settings(model_repo, grpc_max_message_bytes=1024))
    try:
        with grpc.insecure_channel(running.grpc_url) as channel:
            big = pb_grpc.GRPCInferenceServiceStub(channel)
            msg = request(
                model="strings",
                inputs=[tensor("INPUT0", [1, 2], "BYTES")],
                raw=[b"\x00\x08\x00\x00" + b"x" * 2048 + b"\x00\x00\x00\x00"],
            )
            error = call(big, msg)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len(big.ModelInfer(request()).raw_output_contents) == 2
    finally:
        running.stop()


def test_load_with_a_config_that_is_not_a_string(stub):  # type: ignore[no-untyped-def]
    bad_config = pb.RepositoryModelLoadRequest(model_name="add_sub")
    bad_config.parameters["config"].int64_param = 1
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryModelLoad(bad_config)
    assert info.value.code() == INVALID
