"""ModelInfer and ModelStreamInfer decode and encode through the same codec: the same request
sent on either RPC reaches the core as the same InferRequest, a layout learnt on one is read
through the wire-level template on the other, and the responses carry the same message."""

from __future__ import annotations

import asyncio
import threading
import types
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np
import pytest
from inferd.protocol import codec
from inferd.protocol.errors import NotFound
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.pb import grpc_service_pb2_grpc as pb_grpc
from inferd.protocol.types import InferRequest, InferResponse
from inferd.server.frontends import grpc_convert
from inferd.server.frontends.grpc_convert import InferCodec, stream_error
from inferd.server.frontends.grpc_service import build_server

from .test_grpc_wire import assert_same, message


class RecordingCore:
    """Stands in for InferenceCore: records what the front end hands it and echoes the inputs."""

    shared_memory = None  # the front ends refuse shared-memory parameters with no registry
    tracer = types.SimpleNamespace(active=False)  # tracing off: front ends read no traceparent

    def __init__(self) -> None:
        self.requests: list[InferRequest] = []

    def model(self, name: str, version: str = "") -> Any:
        """Every model here answers once (none is decoupled)."""
        if name == "missing":
            raise NotFound("model 'missing' is not in the repository")
        return types.SimpleNamespace(decoupled=False)

    def _respond(self, request: InferRequest) -> InferResponse:
        if request.model_name == "missing":
            raise NotFound("model 'missing' is not in the repository")
        self.requests.append(request)
        outputs = {f"OUT_{n}": a.copy() for n, a in request.inputs.items()}
        return InferResponse(request.model_name, "1", outputs, request.id)

    async def infer(self, request: InferRequest) -> InferResponse:
        return self._respond(request)

    async def infer_stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        yield self._respond(request)


@contextmanager
def serving(core: RecordingCore) -> Iterator[grpc.Channel]:
    """The real gRPC front end over ``core``, on its own loop thread (as the server runs)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-stream-test", daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server, port = build_server(core, "127.0.0.1:0", 1 << 22)  # type: ignore[arg-type]
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def _without_final(response: pb.ModelInferResponse) -> pb.ModelInferResponse:
    """A stream response less Triton's ``triton_final_response`` (true here), which only the
    stream carries: what remains is the unary response."""
    assert response.parameters["triton_final_response"].bool_param
    del response.parameters["triton_final_response"]
    return response


def request(model: str) -> pb.ModelInferRequest:
    inputs = {"A": np.arange(16, dtype=np.float32).reshape(1, 16), "B": np.ones((2, 3), np.int64)}
    return message(inputs, model=model, rid="req-7", outputs=("OUT_A",), params={"priority": 1})


@pytest.mark.parametrize("first", ["unary", "stream"])
def test_stream_and_unary_decode_alike_through_one_template(first: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    message_path = grpc_convert.request_from_pb

    def counting(msg: pb.ModelInferRequest, *args: Any) -> InferRequest:
        parsed.append(msg.id)
        return message_path(msg, *args)

    monkeypatch.setattr(grpc_convert, "request_from_pb", counting)
    core = RecordingCore()
    msg = request(f"m-{first}")
    with serving(core) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = {
            "unary": lambda: [stub.ModelInfer(msg) for _ in range(2)],
            "stream": lambda: [_without_final(r.infer_response) for r in stub.ModelStreamInfer(iter([msg, msg]))],
        }
        other = "stream" if first == "unary" else "unary"
        responses = calls[first]() + calls[other]()
    # The first request's layout is learnt; the other three (both RPCs) fit its template.
    assert parsed == ["req-7"]
    reference = grpc_convert.request_from_pb(msg)
    assert len(core.requests) == 4
    for got in core.requests:
        assert_same(got, reference)
        assert got.deadline_ns is None  # no client deadline on either RPC
    for r in responses:
        assert r == responses[0]
    assert [o.name for o in responses[0].outputs] == ["OUT_A", "OUT_B"]
    np.testing.assert_array_equal(
        np.frombuffer(responses[0].raw_output_contents[0], np.float32), np.arange(16, dtype=np.float32)
    )


def test_stream_errors_name_the_request_and_the_stream_goes_on() -> None:
    core = RecordingCore()
    bad = request("missing")
    unparsable = pb.ModelInferRequest(model_name="m", id="x")
    unparsable.inputs.add(name="A", datatype="FP33", shape=[1])
    with serving(core) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as unary:
            stub.ModelInfer(bad)
        got = list(stub.ModelStreamInfer(iter([bad, unparsable, request("m")])))
        # Bytes that are no message at all: an error response too, and the stream goes on.
        raw_stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        raw = [
            pb.ModelStreamInferResponse.FromString(r)
            for r in raw_stream(iter([b"\x0a\x05ab", request("m").SerializeToString()]))
        ]
    assert unary.value.code() == grpc.StatusCode.NOT_FOUND
    errors = [r for r in got if r.error_message]
    assert len(got) == 3 and len(errors) == 2
    by_model = {r.infer_response.model_name: r for r in errors}
    assert by_model["missing"].error_message == unary.value.details()
    assert by_model["missing"].infer_response.id == "req-7"
    assert "FP33" in by_model["m"].error_message and by_model["m"].infer_response.id == "x"
    raw.sort(key=lambda r: r.error_message)  # they answer as they complete
    assert not raw[0].error_message and raw[0].infer_response.id == "req-7"
    assert "not a valid ModelInferRequest" in raw[1].error_message


def test_encoded_stream_response_is_the_message_serialized() -> None:
    response = InferResponse("m", "2", {"Y": np.arange(300, dtype=np.float32)}, id="abc", parameters={"n": 1})
    inner = pb.ModelInferResponse(model_name="m", model_version="2", id="abc")
    inner.outputs.add(name="Y", datatype="FP32", shape=[300])
    inner.raw_output_contents.append(codec.to_raw(response.outputs["Y"]))
    inner.parameters["n"].int64_param = 1
    inner.parameters["triton_final_response"].bool_param = True  # Triton's, on every stream response
    got = pb.ModelStreamInferResponse.FromString(InferCodec().encode_stream(response))
    assert got == pb.ModelStreamInferResponse(infer_response=inner)


def test_stream_error_of_bytes_that_are_no_message() -> None:
    got = pb.ModelStreamInferResponse.FromString(stream_error("bad bytes", b"\x0a\x05ab"))
    assert got.error_message == "bad bytes" and got.infer_response.id == ""
