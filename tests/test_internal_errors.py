"""A server fault (a bug: an exception that is not an InferdError) on the HTTP port: the client
gets "internal error" in its front end's usual error document (KServe/Triton JSON, a generate
stream event, OpenAI's error object), never Python's exception type, its text or a server path;
the server log has the traceback, once, with the route or model. A model's own error text still
reaches its client, as in Triton."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.pb import grpc_service_pb2_grpc as pb_grpc
from inferd.server import manager as manager_module
from inferd.server.frontends import http_generate
from inferd.server.frontends import openai_convert as oc

from .conftest import RunningServer, start_server, test_settings
from .text_models import build_repository

SECRET = "secret detail in /srv/inferd/server/core.py"
LOGGER = "inferd.server.faults"
# A model whose execute raises an ordinary exception: its text is the model's message to its client.
RAISES = """\
class TritonPythonModel:
    def execute(self, requests):
        raise ValueError("mode one is not allowed")
"""
RAISES_CONFIG = """\
name: "raises"
backend: "python"
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

# A sequence model (Python) that echoes IN, or fails on purpose: its messages reach the client.
SEQUENCE_MODEL = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for r in requests:
            value = int(pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()[0])
            if value == 13:
                raise ValueError("thirteen is not allowed")
            if value == 14:
                raise pb_utils.TritonModelException("fourteen is not allowed")
            error = pb_utils.TritonError("fifteen is not allowed") if value == 15 else None
            out = [] if error else [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]
            responses.append(pb_utils.InferenceResponse(out, error=error))
        return responses
"""
SEQUENCE_STRATEGIES = {"seq_direct": "direct { }", "seq_oldest": "oldest { max_candidate_sequences: 2 }"}


class Fault(RuntimeError):
    """The bug the tests plant in the server."""


def boom(*args: object, **kwargs: object) -> None:
    raise Fault(SECRET)


@pytest.fixture(scope="module")
def text_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = build_repository(tmp_path_factory.mktemp("internal-errors"))
    (root / "raises" / "1").mkdir(parents=True)
    (root / "raises" / "1" / "model.py").write_text(RAISES)
    (root / "raises" / "config.pbtxt").write_text(RAISES_CONFIG)
    for name, strategy in SEQUENCE_STRATEGIES.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(SEQUENCE_MODEL)
        config = RAISES_CONFIG.replace('"raises"', f'"{name}"') + f"sequence_batching {{ {strategy} }}\n"
        (root / name / "config.pbtxt").write_text(config)
    running = start_server(test_settings(root, model_control_mode="explicit", load_models=["*"]))
    yield running
    running.stop()


@pytest.fixture
def http(text_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{text_server.http_url}", timeout=30) as client:
        yield client


@pytest.fixture
def faults(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The server's log from ERROR up, where the planted fault's traceback must be (once)."""
    with caplog.at_level(logging.ERROR):
        yield caplog


def leaks(text: str) -> bool:
    return any(w in text for w in ("Fault", "RuntimeError", "Traceback", SECRET, "/srv/", ".py"))


def logged_once(caplog: pytest.LogCaptureFixture, where: str) -> None:
    """One record of the planted fault, with its traceback and where it happened."""
    records = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], Fault)]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    (record,) = records
    assert record.name == LOGGER and where in record.getMessage(), record.getMessage()
    text = logging.Formatter().format(record)
    assert "Traceback" in text and SECRET in text and 'File "' in text


def sse(response: httpx.Response) -> list[str]:
    body = response.read().decode()
    return [e.removeprefix("data: ") for e in body.split("\n\n")[:-1]]


# --- KServe v2 / Triton routes ------------------------------------------------------------------
def test_http_route_fault_is_internal_error(
    text_server: RunningServer, http: httpx.Client, faults: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text_server.server.core, "server_metadata", boom)
    r = http.get("/v2")
    assert r.status_code == 500 and r.json() == {"error": "internal error"}, r.text
    assert not leaks(r.text)
    logged_once(faults, "HTTP GET '/v2'")


def test_connection_serves_on_after_a_fault(text_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 500 is a complete answer: the keep-alive connection carries the next request."""
    monkeypatch.setattr(text_server.server.core, "server_metadata", boom)
    host, port = text_server.http_url.split(":")
    conn = HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/v2")
        first = conn.getresponse()
        assert first.status == 500 and json.loads(first.read()) == {"error": "internal error"}
        sock = conn.sock
        assert sock is not None
        conn.request("GET", "/v2/health/live")
        second = conn.getresponse()
        second.read()
        assert second.status == 200 and conn.sock is sock
    finally:
        conn.close()


def test_infer_fault_is_internal_error(
    text_server: RunningServer, http: httpx.Client, faults: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text_server.server.core, "infer", boom)
    doc = {
        "inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16} for n in ("INPUT0", "INPUT1")]
    }
    r = http.post("/v2/models/add_sub/infer", json=doc)
    assert r.status_code == 500 and r.json() == {"error": "internal error"}, r.text
    logged_once(faults, "HTTP POST '/v2/models/add_sub/infer'")


def test_model_exception_text_still_reaches_the_client(http: httpx.Client) -> None:
    """Not a server fault: the model's own message, as Triton passes it on (no server path)."""
    r = http.post(
        "/v2/models/raises/infer", json={"inputs": [{"name": "IN", "shape": [1], "datatype": "INT32", "data": [1]}]}
    )
    assert r.status_code == 500
    message = r.json()["error"]
    assert "ValueError: mode one is not allowed" in message and "/" not in message, message


def test_fault_while_loading_is_an_internal_error_reason(
    http: httpx.Client, faults: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_module, "plan_model", boom)
    r = http.post("/v2/repository/models/add_sub/load")
    message = r.json()["error"]
    assert r.status_code >= 400 and message.endswith("internal error") and not leaks(message), r.text
    logged_once(faults, "loading model 'add_sub'")
    monkeypatch.undo()
    assert http.post("/v2/repository/models/add_sub/load").status_code == 200


# --- generate / generate_stream -------------------------------------------------------------------
def test_generate_stream_fault_is_an_error_event(
    http: httpx.Client, faults: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_generate.Frames, "event", boom)  # the stream's encoder
    with http.stream("POST", "/v2/models/charlm/generate_stream", json={"text_input": "x", "max_tokens": 3}) as r:
        assert r.status_code == 200
        events = sse(r)
    assert [json.loads(e) for e in events] == [{"error": "internal error"}]
    logged_once(faults, "generate_stream of model 'charlm'")


def test_generate_fault_is_internal_error(
    http: httpx.Client, faults: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_generate, "encode_generate", boom)
    r = http.post("/v2/models/charlm_whole/generate", json={"text_input": "x", "max_tokens": 3})
    assert r.status_code == 500 and r.json() == {"error": "internal error"}, r.text
    logged_once(faults, "HTTP POST '/v2/models/charlm_whole/generate'")


def test_decoupled_request_fault_is_internal_error(
    text_server: RunningServer, http: httpx.Client, faults: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault inside the server while a decoupled request runs ends its stream with
    "internal error"; the label names the model, nothing else."""
    model = text_server.server.core.model("charlm")
    monkeypatch.setattr(model.scheduler, "submit", boom)
    r = http.post("/v2/models/charlm/generate_stream", json={"text_input": "x", "max_tokens": 3})
    assert r.status_code == 500 and r.json()["error"].endswith(": internal error"), r.text
    assert not leaks(r.text) and "charlm" in r.json()["error"]
    logged_once(faults, model.label)


# --- OpenAI ---------------------------------------------------------------------------------------
def test_openai_fault_is_a_server_error(
    text_server: RunningServer, http: httpx.Client, faults: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text_server.server.core, "repository_index", boom)
    r = http.get("/v1/models")
    assert r.status_code == 500, r.text
    assert r.json() == {"error": {"message": "internal error", "type": "server_error", "param": None, "code": None}}
    logged_once(faults, "HTTP GET '/v1/models'")


def test_openai_completion_fault_is_a_server_error(
    http: httpx.Client, faults: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oc, "whole", boom)
    r = http.post("/v1/completions", json={"model": "charlm", "prompt": "x", "max_tokens": 3})
    assert r.status_code == 500 and r.json()["error"]["message"] == "internal error", r.text
    assert not leaks(r.text)
    logged_once(faults, "HTTP POST '/v1/completions'")


def test_openai_stream_fault_is_an_error_event(
    http: httpx.Client, faults: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oc, "chunk", boom)
    body = {"model": "charlm", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = sse(r)
    assert events[-1] == "[DONE]"
    assert [json.loads(e) for e in events[:-1]] == [
        {"error": {"message": "internal error", "type": "server_error", "param": None, "code": None}}
    ]
    logged_once(faults, "OpenAI chat.completion stream of model 'charlm'")


# --- gRPC -----------------------------------------------------------------------------------------
# Left to grpc.aio, an exception other than InferdError would answer UNKNOWN "Unexpected <class
# '...'>: <text>" (unary RPCs) and drop a ModelStreamInfer request unanswered; both front ends
# answer INTERNAL "internal error" (a stream error response on a stream) through internal_error().


@pytest.fixture
def stub(text_server: RunningServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(text_server.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def grpc_failure(rpc: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        rpc()
    return info.value


def add_sub_request() -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        msg.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        msg.raw_input_contents.append(np.ones(16, np.float32).tobytes())
    return msg


def test_grpc_unary_fault_is_internal_error(
    text_server: RunningServer,
    stub: pb_grpc.GRPCInferenceServiceStub,
    faults: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(text_server.server.core, "server_metadata", boom)
    e = grpc_failure(lambda: stub.ServerMetadata(pb.ServerMetadataRequest()))
    assert e.code() == grpc.StatusCode.INTERNAL and e.details() == "internal error", e.details()
    logged_once(faults, "ServerMetadata")


def test_grpc_infer_fault_is_internal_error(
    text_server: RunningServer,
    stub: pb_grpc.GRPCInferenceServiceStub,
    faults: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(text_server.server.core, "infer", boom)
    e = grpc_failure(lambda: stub.ModelInfer(add_sub_request()))
    assert e.code() == grpc.StatusCode.INTERNAL and e.details() == "internal error", e.details()
    logged_once(faults, "ModelInfer")


def test_grpc_stream_fault_is_an_error_response(
    text_server: RunningServer,
    stub: pb_grpc.GRPCInferenceServiceStub,
    faults: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(text_server.server.core, "infer_stream", boom)
    (response,) = list(stub.ModelStreamInfer(iter([add_sub_request()]), timeout=30))
    assert response.error_message == "internal error"
    logged_once(faults, "ModelStreamInfer")


def test_grpc_model_exception_text_still_reaches_the_client(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    msg = pb.ModelInferRequest(model_name="raises")
    msg.inputs.add(name="IN", datatype="INT32", shape=[1]).contents.int_contents.append(1)
    e = grpc_failure(lambda: stub.ModelInfer(msg))
    assert e.code() == grpc.StatusCode.INTERNAL and "ValueError: mode one is not allowed" in e.details()


# --- sequence batching (both strategies) ----------------------------------------------------------
def sequence_request(http: httpx.Client, model: str, value: int, sequence_id: int = 7) -> httpx.Response:
    doc = {
        "parameters": {"sequence_id": sequence_id, "sequence_start": True, "sequence_end": True},
        "inputs": [{"name": "IN", "shape": [1], "datatype": "INT32", "data": [value]}],
    }
    return http.post(f"/v2/models/{model}/infer", json=doc)


def sequence_scheduler(text_server: RunningServer, model: str) -> Any:
    return text_server.server.core.model(model).scheduler


def assert_sequence_fault(
    text_server: RunningServer, http: httpx.Client, faults: pytest.LogCaptureFixture, model: str
) -> None:
    r = sequence_request(http, model, 1)
    message = r.json()["error"]
    assert r.status_code == 500 and message.endswith(": internal error") and model in message, r.text
    assert not leaks(r.text)
    logged_once(faults, text_server.server.core.model(model).label)


@pytest.mark.parametrize("model", list(SEQUENCE_STRATEGIES))
def test_sequence_fault_before_execution_is_internal_error(
    text_server: RunningServer,
    http: httpx.Client,
    faults: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
) -> None:
    """A fault while the scheduler prepares a request (its control inputs and state)."""
    monkeypatch.setattr(sequence_scheduler(text_server, model), "prepare", boom)
    assert_sequence_fault(text_server, http, faults, model)
    monkeypatch.undo()
    r = sequence_request(http, model, 5)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [5], r.text


def test_sequence_fault_in_an_execution_is_internal_error(
    text_server: RunningServer, http: httpx.Client, faults: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault in running a direct batch (the instance worker, not the model)."""
    (strategy,) = sequence_scheduler(text_server, "seq_direct").strategies
    monkeypatch.setattr(strategy.worker, "run", boom)
    assert_sequence_fault(text_server, http, faults, "seq_direct")
    monkeypatch.undo()
    r = sequence_request(http, "seq_direct", 6)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [6], r.text


@pytest.mark.parametrize("model", list(SEQUENCE_STRATEGIES))
@pytest.mark.parametrize(
    ("value", "words"),
    [
        (13, "ValueError: thirteen is not allowed"),
        (14, "fourteen is not allowed"),
        (15, "fifteen is not allowed"),
    ],
    ids=["raised", "TritonModelException", "error-response"],
)
def test_sequence_model_error_text_reaches_the_client(
    http: httpx.Client, faults: pytest.LogCaptureFixture, model: str, value: int, words: str
) -> None:
    """Not a server fault: a sequence model's own errors reach its client with their text, as in
    Triton, and log no fault."""
    r = sequence_request(http, model, value)
    assert r.status_code == 500 and words in r.json()["error"], r.text
    assert "internal error" not in r.text and "/" not in r.json()["error"]
    assert not [r for r in faults.records if r.name == LOGGER]
