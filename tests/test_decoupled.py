"""Decoupled models (0..N responses per request) end to end, with Triton's clients and flows:
tritonclient's gRPC streaming (``start_stream`` / ``async_stream_infer``) against Python models
that send from execute and from their own threads, the final flag alone or on a response,
errors mid-stream, cancellation, the per-request bound on buffered responses, ensembles with a
decoupled step, statistics and the first-response histogram."""

from __future__ import annotations

import asyncio
import gc
import queue
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from inferd.backends import python_api as pb_utils
from inferd.protocol.errors import Cancelled, InferdError
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.pb import grpc_service_pb2_grpc as pb_grpc
from inferd.protocol.streaming import ChannelOverflow, ResponseChannel
from inferd.protocol.types import InferRequest
from tritonclient.utils import InferenceServerException

from . import decoupled_models
from .conftest import RunningServer, start_server, test_settings


@pytest.fixture(scope="module")
def dserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = decoupled_models.build(tmp_path_factory.mktemp("decoupled"))
    running = start_server(test_settings(repo))
    yield running
    running.stop()


class Stream:
    """tritonclient's streaming API, as Triton's decoupled examples use it."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def send(self, model: str, inputs: dict[str, np.ndarray], rid: str = "", empty_final: bool = False) -> None:
        tensors = []
        for name, array in inputs.items():
            t = grpcclient.InferInput(name, list(array.shape), {"i": "INT32", "u": "UINT32"}[array.dtype.kind])
            t.set_data_from_numpy(array)
            tensors.append(t)
        self.client.async_stream_infer(model, tensors, request_id=rid, enable_empty_final_response=empty_final)

    def take(self, n: int, timeout: float = 10) -> list[tuple[Any, Any]]:
        return [self.results.get(timeout=timeout) for _ in range(n)]

    def nothing_more(self, wait: float = 0.3) -> bool:
        time.sleep(wait)
        return self.results.empty()

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def final(result: Any) -> bool:
    return bool(result.get_response().parameters["triton_final_response"].bool_param)


def repeat_inputs(values: list[int], delay_ms: int, wait_ms: int) -> dict[str, np.ndarray]:
    return {
        "IN": np.array(values, np.int32),
        "DELAY": np.full(len(values), delay_ms, np.uint32),
        "WAIT": np.array([wait_ms], np.uint32),
    }


def test_repeat_sends_every_response_in_order_from_its_thread(dserver: RunningServer) -> None:
    s = Stream(dserver.grpc_url)
    try:
        # execute returns after 5 ms, the responses come from the model's thread every 20 ms.
        s.send("repeat", repeat_inputs([7, 8, 9, 10], 20, 5), rid="a", empty_final=True)
        s.send("repeat", repeat_inputs([1, 2], 5, 0), rid="b")  # interleaves with "a"
        got = s.take(4 + 1 + 2)
        assert s.nothing_more()
    finally:
        s.close()
    assert all(error is None for _, error in got)
    by_id: dict[str, list[Any]] = {}
    for result, _ in got:
        by_id.setdefault(result.get_response().id, []).append(result)
    a, b = by_id["a"], by_id["b"]
    assert [int(r.as_numpy("OUT")[0]) for r in a[:4]] == [7, 8, 9, 10]
    assert [int(r.as_numpy("IDX")[0]) for r in a[:4]] == [0, 1, 2, 3]
    assert [r.get_response().parameters["index"].int64_param for r in a[:4]] == [0, 1, 2, 3]
    assert [final(r) for r in a] == [False, False, False, False, True]
    # The final flag came alone: the empty final response has no outputs, only the request's id.
    assert not a[4].get_response().outputs and a[4].get_response().model_name == "repeat"
    # "b" did not ask for the empty final response: its two responses only.
    assert [int(r.as_numpy("OUT")[0]) for r in b] == [1, 2] and not any(final(r) for r in b)


def test_zero_responses_then_the_final_flag(dserver: RunningServer) -> None:
    s = Stream(dserver.grpc_url)
    try:
        s.send("square", {"IN": np.array([0], np.int32)}, rid="quiet")
        assert s.nothing_more()  # no response, and no empty final response unless asked for
        s.send("square", {"IN": np.array([0], np.int32)}, rid="asked", empty_final=True)
        ((result, error),) = s.take(1)
        assert error is None and result.get_response().id == "asked" and final(result)
        # The final flag on the last response: nothing after it, even when asked for.
        s.send("square", {"IN": np.array([3], np.int32)}, rid="three", empty_final=True)
        got = s.take(3)
        assert s.nothing_more()
    finally:
        s.close()
    assert [int(r.as_numpy("OUT")[0]) for r, _ in got] == [3, 3, 3]
    assert [final(r) for r, _ in got] == [False, False, True]


def test_errors_mid_stream_and_from_execute(dserver: RunningServer) -> None:
    s = Stream(dserver.grpc_url)
    try:
        s.send("square", {"IN": np.array([-1], np.int32)}, rid="mid", empty_final=True)
        mid = s.take(4)
        s.send("square", {"IN": np.array([1000], np.int32)}, rid="raised")
        raised = s.take(2)
        s.send("square", {"IN": np.array([1], np.int32)}, rid="after")  # the stream goes on
        ((after, after_error),) = s.take(1)
    finally:
        s.close()
    # A response, an error response, a response, then the final flag: the stream goes on after the error.
    assert mid[0][1] is None and int(mid[0][0].as_numpy("OUT")[0]) == 1
    assert mid[1][0] is None and "step 2 failed" in mid[1][1].message()
    assert mid[2][1] is None and int(mid[2][0].as_numpy("OUT")[0]) == 3
    assert mid[3][1] is None and final(mid[3][0])
    # execute raised after one response: the request ends with Triton's message.
    assert raised[0][1] is None and int(raised[0][0].as_numpy("OUT")[0]) == 1
    assert raised[1][1].message() == "Failed to process the request(s) for model 'square', message: execute gave up"
    assert after_error is None and final(after)


def test_unary_inference_is_refused_on_both_protocols(dserver: RunningServer) -> None:
    message = "doesn't support models with decoupled transaction policy"
    g = grpcclient.InferenceServerClient(dserver.grpc_url)
    t = grpcclient.InferInput("IN", [1], "INT32")
    t.set_data_from_numpy(np.array([2], np.int32))
    with pytest.raises(InferenceServerException) as grpc_error:
        g.infer("square", [t])
    assert message in grpc_error.value.message() and grpc_error.value.status() == "StatusCode.UNIMPLEMENTED"
    h = httpclient.InferenceServerClient(dserver.http_url)
    t2 = httpclient.InferInput("IN", [1], "INT32")
    t2.set_data_from_numpy(np.array([2], np.int32))
    with pytest.raises(InferenceServerException) as http_error:
        h.infer("square", [t2])
    assert message in http_error.value.message() and "ModelStreamInfer" in http_error.value.message()


def test_an_ensemble_ending_in_a_decoupled_step_streams_its_responses(dserver: RunningServer) -> None:
    s = Stream(dserver.grpc_url)
    try:
        s.send(
            "double_then_repeat",
            {
                "VALUES": np.array([1, 2, 3], np.int32),
                "DELAYS": np.full(3, 5, np.uint32),
                "WAIT": np.zeros(1, np.uint32),
            },
            rid="e",
            empty_final=True,
        )
        got = s.take(4)
    finally:
        s.close()
    assert all(e is None for _, e in got)
    assert [int(r.as_numpy("REPEATED")[0]) for r, _ in got[:3]] == [2, 4, 6]
    assert [r.get_response().model_name for r, _ in got[:3]] == ["double_then_repeat"] * 3
    assert [final(r) for r, _ in got] == [False, False, False, True]


def test_an_ensemble_step_after_a_decoupled_one_runs_once_per_response() -> None:
    """No longer refused (Triton runs it once per response; tests/test_ensemble_decoupled.py
    runs such ensembles); only pairing a response with tensors made outside its flow is."""
    from google.protobuf import text_format
    from inferd.protocol.errors import ModelLoadError
    from inferd.protocol.pb import model_config_pb2 as mc
    from inferd.server.ensemble import decoupled_layout, plan_ensemble

    def layout(second_input: str):  # type: ignore[no-untyped-def]
        config = text_format.Parse(
            """name: "e" platform: "ensemble"
            input [ { name: "V" data_type: TYPE_INT32 dims: [ -1 ] } ]
            output [ { name: "OUT" data_type: TYPE_INT32 dims: [ -1 ] } ]
            ensemble_scheduling { step [
              { model_name: "repeat" input_map { key: "IN" value: "V" }
                output_map [ { key: "OUT" value: "R" }, { key: "IDX" value: "I" } ] },
              { model_name: "add" input_map [ { key: "A" value: "R" }, { key: "B" value: "SECOND" } ]
                output_map { key: "SUM" value: "OUT" } }
            ] }""".replace("SECOND", second_input),
            mc.ModelConfig(),
        )
        plan = plan_ensemble(config, "ensemble")
        return decoupled_layout(config, plan, lambda step: step.model_name == "repeat", "ensemble")

    found = layout("I")
    assert found is not None and found.scope == {0: None, 1: 0} and found.output_scope == 0
    with pytest.raises(ModelLoadError) as refused:
        layout("V")
    assert "step 1 ('add') reads" in refused.value.message
    assert "'R' (made once per response of the decoupled step 0 ('repeat'))" in refused.value.message
    assert "'V' (made once per request)" in refused.value.message


def test_statistics_and_the_first_response_histogram(dserver: RunningServer) -> None:
    s = Stream(dserver.grpc_url)
    try:
        s.send("repeat", repeat_inputs([1, 2, 3], 1, 0), empty_final=True)
        s.take(4)
    finally:
        s.close()
    stats = grpcclient.InferenceServerClient(dserver.grpc_url).get_inference_statistics("repeat").model_stats[0]
    assert stats.inference_stats.success.count >= 1
    responses = stats.response_stats
    assert responses["0"].success.count >= 1 and responses["2"].success.count >= 1
    assert responses["3"].empty_response.count >= 1
    http_stats = httpx.get(f"http://{dserver.http_url}/v2/models/repeat/stats", timeout=10).json()
    assert int(http_stats["model_stats"][0]["response_stats"]["1"]["success"]["count"]) >= 1
    text = httpx.get(f"http://{dserver.metrics_url}/metrics", timeout=10).text
    count = re.search(r'nv_inference_first_response_histogram_ms_count\{model="repeat",version="1"\} (\S+)', text)
    assert count is not None and float(count.group(1)) >= 1
    assert re.search(
        r'nv_inference_first_response_histogram_ms_bucket\{le="100",model="repeat",version="1"\} \S+', text
    )
    assert re.search(
        r'nv_inference_first_response_histogram_ms_bucket\{le="5000",model="repeat",version="1"\} \S+', text
    )


async def _cancelled_streams(url: str, count: int, concurrent: int) -> None:
    async with grpc.aio.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="endless")
        t = request.inputs.add(name="SIZE", datatype="INT32", shape=[1])
        t.contents.int_contents.append(4)

        async def one() -> None:
            call = stub.ModelStreamInfer()
            await call.write(request)
            first = await call.read()  # the model is streaming
            assert not first.error_message, first.error_message
            call.cancel()

        for _ in range(count // concurrent):
            await asyncio.gather(*(one() for _ in range(concurrent)))


def _metric(dserver: RunningServer, name: str) -> float:
    text = httpx.get(f"http://{dserver.metrics_url}/metrics", timeout=10).text
    found = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_thousand_cancelled_streams_leave_nothing_behind(dserver: RunningServer) -> None:
    seen_before = _metric(dserver, "endless_cancellations_seen")
    asyncio.run(_cancelled_streams(dserver.grpc_url, 1000, 50))
    deadline = time.monotonic() + 20
    while _metric(dserver, "endless_cancellations_seen") - seen_before < 1000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(dserver, "endless_cancellations_seen") - seen_before == 1000  # the model saw each cancellation
    while time.monotonic() < deadline:
        gc.collect()
        if pb_utils.InferenceResponseSender.alive() == 0 and ResponseChannel.alive() == 0:
            break
        time.sleep(0.05)
    assert pb_utils.InferenceResponseSender.alive() == 0
    assert ResponseChannel.alive() == 0
    stats = grpcclient.InferenceServerClient(dserver.grpc_url).get_inference_statistics("endless").model_stats[0]
    assert stats.response_stats["1"].cancel.count + stats.response_stats["0"].cancel.count >= 1
    assert dserver.server.manager.get("endless").stats.pending == 0


def test_a_slow_consumer_fails_its_request_at_the_bound(dserver: RunningServer) -> None:
    """The core's stream: the consumer stops reading, the model keeps sending; at the bound the
    send fails in the model, the model sees the cancellation, and the consumer reads what was
    buffered, then the error."""
    manager = dserver.server.manager
    errors_before = _metric(dserver, "endless_send_errors")

    async def slow() -> tuple[int, str]:
        request = InferRequest("endless", {"SIZE": np.array([16], np.int32)})
        read = 0
        stream = dserver.server.core.infer_stream(request)
        try:
            await stream.__anext__()
            await asyncio.sleep(0.5)  # the model sends every ms meanwhile
            async for _ in stream:
                read += 1
        except ChannelOverflow as e:
            return read, e.message
        finally:
            await stream.aclose()
        return read, ""

    old = manager.max_buffered_responses
    manager.max_buffered_responses = 16
    try:
        read, message = dserver.call(slow())
    finally:
        manager.max_buffered_responses = old
    assert read == 16, "what was buffered is delivered before the error"
    assert "reading this request's responses too slowly: more than 16 wait" in message
    assert "--max-buffered-responses" in message
    deadline = time.monotonic() + 5
    while _metric(dserver, "endless_send_errors") == errors_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(dserver, "endless_send_errors") > errors_before  # the send failed in the model


def test_no_sender_survives_an_overflowed_request(dserver: RunningServer) -> None:
    """The overflow is raised in the model's send: the channel must not keep the raised error,
    whose traceback holds the send's frame and so the sender (the sender's finalizer keeps the
    channel, so the sender would live for good)."""
    manager = dserver.server.manager
    senders_before = pb_utils.InferenceResponseSender.alive()
    seen_before = _metric(dserver, "endless_cancellations_seen")

    async def overflow() -> str:
        stream = dserver.server.core.infer_stream(InferRequest("endless", {"SIZE": np.array([16], np.int32)}))
        try:
            await stream.__anext__()
            await asyncio.sleep(0.5)  # not reading: the model's sends overflow the channel
            async for _ in stream:
                pass
        except ChannelOverflow as e:
            return e.message
        finally:
            await stream.aclose()
        return ""

    old = manager.max_buffered_responses
    manager.max_buffered_responses = 4
    try:
        message = dserver.call(overflow())
    finally:
        manager.max_buffered_responses = old
    assert "--max-buffered-responses" in message
    deadline = time.monotonic() + 5
    while _metric(dserver, "endless_cancellations_seen") == seen_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(dserver, "endless_cancellations_seen") > seen_before  # the model saw it and returned
    while pb_utils.InferenceResponseSender.alive() > senders_before and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert pb_utils.InferenceResponseSender.alive() <= senders_before


def test_a_channel_keeps_no_raised_error() -> None:
    """What the channel raises and keeps carries no traceback (its frames would keep the
    model's sender and whatever else their locals hold alive as long as the channel)."""
    channel = ResponseChannel(None, "m", "1", limit=1)
    sender = pb_utils.InferenceResponseSender(channel, ["Y"])
    y = pb_utils.Tensor("Y", np.zeros(1, np.float32))
    sender.send(pb_utils.InferenceResponse([y]))
    with pytest.raises(pb_utils.TritonError, match="--max-buffered-responses"):
        sender.send(pb_utils.InferenceResponse([y]))
    assert channel.cancelled and isinstance(channel._failure, ChannelOverflow)
    assert channel._failure.__traceback__ is None
    alive = pb_utils.InferenceResponseSender.alive()
    del sender
    assert pb_utils.InferenceResponseSender.alive() == alive - 1  # freed at once, no collection needed

    failed = ResponseChannel(None, "m", "1")
    try:
        raise InferdError("execute failed")
    except InferdError as e:
        failed.fail(e)
    assert failed._failure is not None and failed._failure.__traceback__ is None
    assert failed._failure.message == "execute failed" and type(failed._failure) is InferdError


def test_a_client_that_does_not_read_gets_the_error_over_grpc(tmp_path: Path) -> None:
    """End to end: big responses fill the transport and the stream's queue, then the request's
    own bound gives and the client, once it reads again, finds the error after the responses."""
    running = start_server(test_settings(decoupled_models.build(tmp_path), max_buffered_responses=8))
    try:
        with grpc.insecure_channel(running.grpc_url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = pb.ModelInferRequest(model_name="endless")
            t = request.inputs.add(name="SIZE", datatype="INT32", shape=[1])
            t.contents.int_contents.append(1 << 20)
            done = False

            def requests() -> Iterator[pb.ModelInferRequest]:
                yield request
                while not done:
                    time.sleep(0.05)

            responses = stub.ModelStreamInfer(requests(), timeout=60)
            next(responses)
            time.sleep(2)  # not reading: the server must not buffer without bound
            errors = []
            count = 0
            for r in responses:
                count += 1
                if r.error_message:
                    errors.append(r.error_message)
                    break
            done = True
            responses.cancel()
    finally:
        running.stop()
    assert errors and "--max-buffered-responses" in errors[0]
    assert count < 200, f"{count} responses of 1 MiB were buffered for a client that did not read"


def test_the_sender_follows_tritons_rules() -> None:
    channel = ResponseChannel(None, "m", "1")
    sender = pb_utils.InferenceResponseSender(channel, ["Y"])
    with pytest.raises(pb_utils.TritonError, match="Unsupported flag provided"):
        sender.send(flags=7)
    with pytest.raises(pb_utils.TritonError, match="must be provided when the response flags is set to zero"):
        sender.send()
    y = pb_utils.Tensor("Y", np.ones(2, np.float32))
    hidden = pb_utils.Tensor("NOT_ASKED", np.ones(2, np.float32))
    sender.send(pb_utils.InferenceResponse([y, hidden], parameters={"k": "v"}))
    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    with pytest.raises(pb_utils.TritonError, match="Response sender has been closed"):
        sender.send(pb_utils.InferenceResponse([y]))
    response, _ = channel._items[0]
    assert list(response.outputs) == ["Y"] and response.parameters == {"k": "v"} and not response.final
    assert not sender.is_cancelled()

    # A sender the model drops without the final flag ends its request with an error.
    dropped = ResponseChannel(None, "m", "1")
    pb_utils.InferenceResponseSender(dropped, [])
    gc.collect()
    assert dropped.closed and isinstance(dropped._failure, InferdError)
    assert "without sending TRITONSERVER_RESPONSE_COMPLETE_FINAL" in dropped._failure.message

    # A request of a model that is not decoupled has no sender.
    plain = pb_utils.InferenceRequest._incoming({}, [])
    with pytest.raises(pb_utils.TritonError, match="for decoupled models"):
        plain.get_response_sender()
    assert not plain.is_cancelled()


def test_a_cancelled_request_still_takes_its_final_flag() -> None:
    """The client left while execute ran: the front end cancels the channel and the execution's
    future, whose callback fails the channel. The model, which already handed the request to its
    own thread, sees is_cancelled() and sends the final flag, as Triton expects: dropped, not an
    error (the bundled charlm's engine thread died of that error under load)."""
    channel = ResponseChannel(None, "m", "1")
    sender = pb_utils.InferenceResponseSender(channel, ["Y"])
    channel.cancel()
    channel.fail(Cancelled("m: the request was cancelled"))
    assert sender.is_cancelled()
    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.ones(1, np.float32))]))  # dropped
    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    assert channel.closed and not channel._items
    with pytest.raises(pb_utils.TritonError, match="Response sender has been closed"):
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
