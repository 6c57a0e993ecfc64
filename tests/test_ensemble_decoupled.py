"""Ensembles with a decoupled step anywhere, as Triton runs them: the common LLM layout
``tokenize`` -> a decoupled ``generate`` (one response per token) -> ``detokenize``, the
ensemble's outputs coming from the step after the decoupled one. Every response of the
decoupled step flows on through the steps that read its outputs, and each completed flow is a
response of the (decoupled) ensemble. Driven with tritonclient's gRPC streaming client and over
HTTP generate_stream."""

from __future__ import annotations

import asyncio
import gc
import json
import queue
import re
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from inferd.backends import python_api as pb_utils
from inferd.protocol.errors import ModelLoadError
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.pb import grpc_service_pb2_grpc as pb_grpc
from inferd.protocol.pb import model_config_pb2 as mc
from inferd.protocol.streaming import ResponseChannel
from inferd.server.ensemble import decoupled_layout, plan_ensemble
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, test_settings
from .models import write_python

# Text -> its characters' codes.
TOKENIZE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()[0].decode()
            ids = np.array([ord(c) for c in text], np.int32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("IDS", ids)]))
        return out
"""
TOKENIZE_CONFIG = """name: "tokenize"
backend: "python"
max_batch_size: 0
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "IDS" data_type: TYPE_INT32 dims: [ -1 ] } ]
"""

# One response per id (TOKEN, and its INDEX), from a thread, every 2 ms; then the final flag
# alone, or (ids starting with '>') on the last response. '!' sends an error response in its
# place; '~' streams '~' until the request is cancelled, counting the cancellations it saw.
GENERATE = """
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        family = pb_utils.MetricFamily(
            name="generate_cancellations_seen", description="cancelled", kind=pb_utils.MetricFamily.COUNTER
        )
        self.seen = family.Metric(labels={"model": "generate"})

    def execute(self, requests):
        for request in requests:
            ids = [int(i) for i in pb_utils.get_input_tensor_by_name(request, "IDS").as_numpy()]
            sender = request.get_response_sender()
            threading.Thread(target=self.respond, args=(request, sender, ids), daemon=True).start()
        return None

    def respond(self, request, sender, ids):
        final_on_last = bool(ids) and ids[0] == ord(">")
        if final_on_last:
            ids = ids[1:]
        index = 0
        for position, token in enumerate(ids):
            while True:
                time.sleep(0.03 if token == ord("!") else 0.002)
                if token == ord("!"):
                    sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("cannot say '!'")))
                else:
                    out = [
                        pb_utils.Tensor("TOKEN", np.array([token], np.int32)),
                        pb_utils.Tensor("INDEX", np.array([index], np.uint32)),
                    ]
                    last = final_on_last and position == len(ids) - 1
                    sender.send(pb_utils.InferenceResponse(out, parameters={"step": index}), flags=FINAL if last else 0)
                    if last:
                        return
                index += 1
                if token != ord("~"):
                    break
                if request.is_cancelled():
                    self.seen.increment(1)
                    sender.send(flags=FINAL)
                    return
        sender.send(flags=FINAL)
"""
GENERATE_CONFIG = """name: "generate"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "IDS" data_type: TYPE_INT32 dims: [ -1 ] } ]
output [
  { name: "TOKEN" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "INDEX" data_type: TYPE_UINT32 dims: [ 1 ] }
]
"""

# One response's token back to text, "<index>:<char>"; '#' fails.
DETOKENIZE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            token = int(pb_utils.get_input_tensor_by_name(request, "TOKEN").as_numpy()[0])
            index = int(pb_utils.get_input_tensor_by_name(request, "INDEX").as_numpy()[0])
            if token == ord("#"):
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("cannot detokenize '#'")))
                continue
            text = np.array([f"{index}:{chr(token)}".encode()], np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", text)]))
        return out
"""
DETOKENIZE_CONFIG = """name: "detokenize"
backend: "python"
max_batch_size: 0
input [
  { name: "TOKEN" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "INDEX" data_type: TYPE_UINT32 dims: [ 1 ] }
]
output [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
"""

# A second decoupled step, chained after the first: two responses per token (the token, then
# the token + 1), the final flag on the second.
FANOUT = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            token = pb_utils.get_input_tensor_by_name(request, "TOKEN").as_numpy()
            sender = request.get_response_sender()
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", token)]))
            sender.send(
                pb_utils.InferenceResponse([pb_utils.Tensor("OUT", token + 1)]),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
        return None
"""
FANOUT_CONFIG = """name: "fanout"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "TOKEN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

TOKENIZE_STEP = (
    '{ model_name: "tokenize" input_map { key: "TEXT" value: "text_input" } output_map { key: "IDS" value: "_ids" } }'
)
GENERATE_STEP = """{ model_name: "generate" input_map { key: "IDS" value: "_ids" }
    output_map [ { key: "TOKEN" value: "_token" }, { key: "INDEX" value: "index" } ] }"""
PIPELINE = f"""name: "pipeline"
platform: "ensemble"
max_batch_size: 0
input [ {{ name: "text_input" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [
  {{ name: "text_output" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "index" data_type: TYPE_UINT32 dims: [ 1 ] }}
]
ensemble_scheduling {{ step [
  {TOKENIZE_STEP},
  {GENERATE_STEP},
  {{ model_name: "detokenize" input_map [ {{ key: "TOKEN" value: "_token" }}, {{ key: "INDEX" value: "index" }} ]
    output_map {{ key: "TEXT" value: "text_output" }} }}
] }}
"""
CHAINED = f"""name: "chained"
platform: "ensemble"
max_batch_size: 0
input [ {{ name: "text_input" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "fanned" data_type: TYPE_INT32 dims: [ 1 ] }} ]
ensemble_scheduling {{ step [
  {TOKENIZE_STEP},
  {GENERATE_STEP},
  {{ model_name: "fanout" input_map {{ key: "TOKEN" value: "_token" }} output_map {{ key: "OUT" value: "fanned" }} }}
] }}
"""
# What Triton refuses: detokenize pairing a response's token with the request's own text.
MIXED = f"""name: "mixed"
platform: "ensemble"
max_batch_size: 0
input [ {{ name: "text_input" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "text_output" data_type: TYPE_STRING dims: [ 1 ] }} ]
ensemble_scheduling {{ step [
  {TOKENIZE_STEP},
  {GENERATE_STEP},
  {{ model_name: "detokenize" input_map [ {{ key: "TOKEN" value: "_token" }}, {{ key: "INDEX" value: "_len" }} ]
    output_map {{ key: "TEXT" value: "text_output" }} }},
  {{ model_name: "count" input_map {{ key: "TEXT" value: "text_input" }} output_map {{ key: "N" value: "_len" }} }}
] }}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("ensemble_decoupled")
    write_python(repo, "tokenize", TOKENIZE_CONFIG, TOKENIZE)
    write_python(repo, "generate", GENERATE_CONFIG, GENERATE)
    write_python(repo, "detokenize", DETOKENIZE_CONFIG, DETOKENIZE)
    write_python(repo, "fanout", FANOUT_CONFIG, FANOUT)
    write_python(repo, "pipeline", PIPELINE)
    write_python(repo, "chained", CHAINED)
    running = start_server(test_settings(repo))
    yield running
    running.stop()


class Stream:
    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def send(self, model: str, text: str, rid: str = "", empty_final: bool = True) -> None:
        t = grpcclient.InferInput("text_input", [1], "BYTES")
        t.set_data_from_numpy(np.array([text.encode()], np.object_))
        self.client.async_stream_infer(model, [t], request_id=rid, enable_empty_final_response=empty_final)

    def until_final(self, timeout: float = 10) -> list[tuple[Any, Any]]:
        """Everything up to the final response or an error (which ends the request)."""
        got = []
        while True:
            result, error = self.results.get(timeout=timeout)
            got.append((result, error))
            if error is not None or final(result):
                return got

    def nothing_more(self, wait: float = 0.3) -> bool:
        time.sleep(wait)
        return self.results.empty()

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def final(result: Any) -> bool:
    return bool(result.get_response().parameters["triton_final_response"].bool_param)


def texts(got: list[tuple[Any, Any]]) -> list[str]:
    return [r.as_numpy("text_output")[0].decode() for r, _ in got if r.get_response().outputs]


def test_every_response_of_the_decoupled_step_flows_through_the_steps_after_it(server: RunningServer) -> None:
    s = Stream(server.grpc_url)
    try:
        s.send("pipeline", "hello", rid="h")
        got = s.until_final()
        assert s.nothing_more()
    finally:
        s.close()
    assert all(e is None for _, e in got)
    # Each flow's answer is sent as the flow completes, as in Triton: usually in the decoupled
    # step's order, but a busy CPU can finish a later flow first.
    assert sorted(texts(got)) == ["0:h", "1:e", "2:l", "3:l", "4:o"]
    answers = sorted((r for r, _ in got if r.get_response().outputs), key=lambda r: int(r.as_numpy("index")[0]))
    assert [int(r.as_numpy("index")[0]) for r in answers] == [0, 1, 2, 3, 4]  # from the decoupled step itself
    assert all(r.get_response().model_name == "pipeline" and r.get_response().id == "h" for r, _ in got)
    # The decoupled step's response parameters come with its flow's answer.
    assert [r.get_response().parameters["step"].int64_param for r in answers] == [0, 1, 2, 3, 4]
    # Final once the decoupled step sent its flag and every flow finished: on the last answer,
    # or alone after it.
    assert [final(r) for r, _ in got] == [False] * (len(got) - 1) + [True]
    assert len(got) in (5, 6)


def test_the_final_flag_on_the_last_response_rides_on_the_last_flows_answer(server: RunningServer) -> None:
    s = Stream(server.grpc_url)
    try:
        s.send("pipeline", ">abc")
        got = s.until_final()
        assert s.nothing_more()
    finally:
        s.close()
    assert sorted(texts(got)) == ["0:a", "1:b", "2:c"] and len(got) == 3  # in completion order
    assert [final(r) for r, _ in got] == [False, False, True]


def test_no_response_then_the_final_flag_alone(server: RunningServer) -> None:
    s = Stream(server.grpc_url)
    try:
        s.send("pipeline", "", rid="empty")
        ((result, error),) = s.until_final()
        s.send("pipeline", "", rid="quiet", empty_final=False)
        assert s.nothing_more()  # no empty final response unless asked for
    finally:
        s.close()
    assert error is None and final(result) and not result.get_response().outputs
    assert result.get_response().id == "empty"


def test_a_decoupled_step_after_a_decoupled_step(server: RunningServer) -> None:
    s = Stream(server.grpc_url)
    try:
        s.send("chained", "ab")
        got = s.until_final()
    finally:
        s.close()
    values = sorted(int(r.as_numpy("fanned")[0]) for r, _ in got if r.get_response().outputs)
    assert values == [ord("a"), ord("a") + 1, ord("b"), ord("b") + 1]
    assert [final(r) for r, _ in got][-1] and not any(final(r) for r, _ in got[:-1])


def test_an_error_response_of_the_decoupled_step_fails_the_request(server: RunningServer) -> None:
    s = Stream(server.grpc_url)
    try:
        s.send("pipeline", "ab!cd", rid="bang")
        got = s.until_final()
        assert s.nothing_more()
        s.send("pipeline", "ok")  # the stream goes on
        after = s.until_final()
    finally:
        s.close()
    assert sorted(texts(got[:-1])) == ["0:a", "1:b"]  # in completion order
    error = got[-1][1]
    assert error is not None
    assert "step 1 ('generate') failed: cannot say '!'" in error.message() and "'pipeline'" in error.message()
    assert sorted(texts(after)) == ["0:o", "1:k"]


def test_a_failing_step_in_one_flow_fails_the_request(server: RunningServer) -> None:
    s = Stream(server.grpc_url)
    try:
        s.send("pipeline", "ab#cdefgh", rid="hash")
        got = s.until_final()
        assert s.nothing_more()
    finally:
        s.close()
    assert sorted(texts(got[:-1])) == ["0:a", "1:b"]  # in completion order
    error = got[-1][1]
    assert error is not None and "step 2 ('detokenize') failed: cannot detokenize '#'" in error.message()
    # No further flows ran: the generator's request was cancelled with the ensemble's.
    deadline = time.monotonic() + 5
    while server.server.manager.get("generate").stats.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.server.manager.get("generate").stats.pending == 0


def test_unary_inference_is_refused(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    t = grpcclient.InferInput("text_input", [1], "BYTES")
    t.set_data_from_numpy(np.array([b"x"], np.object_))
    with pytest.raises(InferenceServerException, match="decoupled transaction policy"):
        client.infer("pipeline", [t])
    config = client.get_model_config("pipeline").config
    assert config.platform == "ensemble"


def test_generate_stream_over_http(server: RunningServer) -> None:
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=10) as http:
        with http.stream("POST", "/v2/models/pipeline/generate_stream", json={"text_input": "hey"}) as r:
            assert r.status_code == 200
            docs = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
        assert [d["text_output"] for d in docs] == ["0:h", "1:e", "2:y"]
        assert [d["index"] for d in docs] == [0, 1, 2]
        with http.stream("POST", "/v2/models/pipeline/generate_stream", json={"text_input": "a#b"}) as r:
            docs = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
        assert docs[0]["text_output"] == "0:a"
        assert "cannot detokenize '#'" in docs[-1]["error"]


def _metric(server: RunningServer, name: str) -> float:
    text = httpx.get(f"http://{server.metrics_url}/metrics", timeout=10).text
    found = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def _cancelled_streams(url: str, count: int) -> None:
    async with grpc.aio.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="pipeline")
        t = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
        t.contents.bytes_contents.append(b"ab~")

        async def one() -> None:
            call = stub.ModelStreamInfer()
            await call.write(request)
            for _ in range(4):  # a, b, and two of the endless '~'
                response = await call.read()
                assert not response.error_message, response.error_message
            call.cancel()

        await asyncio.gather(*(one() for _ in range(count)))


def test_a_client_leaving_cancels_the_running_flows_and_leaves_nothing_behind(server: RunningServer) -> None:
    seen_before = _metric(server, "generate_cancellations_seen")
    # Other modules' servers may still hold senders of their own: count this test's only.
    senders_before, channels_before = pb_utils.InferenceResponseSender.alive(), ResponseChannel.alive()
    asyncio.run(_cancelled_streams(server.grpc_url, 20))
    deadline = time.monotonic() + 20
    while _metric(server, "generate_cancellations_seen") - seen_before < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(server, "generate_cancellations_seen") - seen_before == 20  # the generator saw each
    while time.monotonic() < deadline:
        gc.collect()
        if pb_utils.InferenceResponseSender.alive() <= senders_before and ResponseChannel.alive() <= channels_before:
            break
        time.sleep(0.05)
    assert pb_utils.InferenceResponseSender.alive() <= senders_before
    assert ResponseChannel.alive() <= channels_before
    for model in ("pipeline", "tokenize", "generate", "detokenize"):
        assert server.server.manager.get(model).stats.pending == 0
    tasks = server.call(_other_tasks())
    assert not [t for t in tasks if "ensemble" in repr(t)], tasks


async def _other_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def test_statistics_and_step_traces_count_each_flow(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    before = client.get_inference_statistics("detokenize").model_stats[0].inference_stats.success.count
    s = Stream(server.grpc_url)
    try:
        s.send("pipeline", "xyz")
        s.until_final()
    finally:
        s.close()
    stats = client.get_inference_statistics("detokenize").model_stats[0].inference_stats.success.count
    assert stats - before == 3  # once per response of the decoupled step
    ensemble = client.get_inference_statistics("pipeline").model_stats[0]
    assert ensemble.inference_stats.success.count >= 1 and ensemble.response_stats["2"].success.count >= 1


# --- load-time layout ----------------------------------------------------------------------------
def _layout(config_text: str, decoupled: set[str]):  # type: ignore[no-untyped-def]
    config = text_format.Parse(config_text, mc.ModelConfig())
    plan = plan_ensemble(config, "ensemble")
    return decoupled_layout(config, plan, lambda step: step.model_name in decoupled, "ensemble")


def test_steps_after_a_decoupled_step_are_accepted() -> None:
    layout = _layout(PIPELINE, {"generate"})
    assert layout is not None and layout.decoupled == {1}
    assert layout.scope == {0: None, 1: None, 2: 1} and layout.output_scope == 1
    chained = _layout(CHAINED, {"generate", "fanout"})
    assert chained is not None and chained.scope == {0: None, 1: None, 2: 1} and chained.output_scope == 2
    assert _layout(PIPELINE, set()) is None


def test_a_step_pairing_a_response_with_the_requests_own_tensors_is_refused() -> None:
    with pytest.raises(ModelLoadError) as e:
        _layout(MIXED, {"generate"})
    message = e.value.message
    assert "step 2 ('detokenize') reads" in message
    assert "'_token' (made once per response of the decoupled step 1 ('generate'))" in message
    assert "'_len' (made once per request)" in message and "inputs originated from different decoupled" in message


def test_outputs_from_different_flows_are_refused() -> None:
    config = PIPELINE.replace(
        '{ name: "index" data_type: TYPE_UINT32 dims: [ 1 ] }', '{ name: "_ids" data_type: TYPE_INT32 dims: [ -1 ] }'
    )
    with pytest.raises(ModelLoadError, match=r"the ensemble's outputs are 'text_output' \(made once per response"):
        _layout(config, {"generate"})
