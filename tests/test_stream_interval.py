"""--stream-interval-us: a decoupled model's responses after a write are held for the interval
and written together, one event each; the first and the final response are never held, and a
model that goes quiet has what is held written once the interval is over (protocol/streaming.py,
server/frontends/http_generate.py; gRPC ModelStreamInfer, server/frontends/grpc_service.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from inferd.protocol.errors import Cancelled
from inferd.protocol.streaming import DEFAULT_STREAM_INTERVAL_US, ResponseChannel, _Pacer
from inferd.protocol.types import InferResponse
from inferd.server.cli import add_serve_arguments, settings_from_args

from .conftest import RunningServer, start_server, test_settings
from .text_models import build_repository

INTERVAL_S = 0.3

# Sends "a", then "b" 10 ms later, then after a pause ("quiet": 0.6 s, else 10 ms) "c" with the
# final flag.
PIECES = """\
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def piece(text):
    return pb_utils.InferenceResponse([pb_utils.Tensor("text_output", np.array([text.encode()], dtype=object))])


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            quiet = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0] == b"quiet"
            sender = request.get_response_sender()
            sender.send(piece("a"))
            time.sleep(0.01)
            sender.send(piece("b"))
            time.sleep(0.6 if quiet else 0.01)
            sender.send(piece("c"), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""
PIECES_CONFIG = """\
name: "pieces"
backend: "python"
model_transaction_policy { decoupled: true }
input [ { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "text_output" data_type: TYPE_STRING dims: [ 1 ] } ]
parameters { key: "openai_contract" value { string_value: "text" } }
"""


# --- the channel -----------------------------------------------------------------------------------
def _outputs(i: int) -> dict[str, np.ndarray]:
    return {"i": np.array([i])}


_taken: weakref.WeakKeyDictionary[ResponseChannel, list[tuple[InferResponse, int]]] = weakref.WeakKeyDictionary()


async def _get(channel: ResponseChannel) -> tuple[InferResponse, int] | None:
    """The channel's next response, one at a time from its batches."""
    waiting = _taken.setdefault(channel, [])
    if not waiting:
        batch = await channel.get_ready()
        if batch is None:
            return None
        waiting.extend(batch)
    return waiting.pop(0)


async def _take(channel: ResponseChannel) -> tuple[int, bool, float]:
    item = await _get(channel)
    assert item is not None
    response = item[0]
    return int(response.outputs["i"][0]), response.more, time.monotonic()


def _later(delay: float, fn: object, *args: object, **kwargs: object) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        fn(*args, **kwargs)  # type: ignore[operator]

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_paced_channel_holds_what_comes_within_the_interval_and_the_pacer_hands_it_over() -> None:
    async def main() -> None:
        channel = ResponseChannel(asyncio.get_running_loop(), "m", "1", interval_ns=int(INTERVAL_S * 1e9))
        start = time.monotonic()
        channel.send(_outputs(0))
        first = await _take(channel)
        assert first[:2] == (0, False) and first[2] - start < 0.1  # the first is not held
        # Two more come at once, then the model goes quiet: held until the interval is over,
        # then taken together, in order, one response each.
        sent = time.monotonic()
        channel.send(_outputs(1))
        channel.send(_outputs(2))
        one, two = await _take(channel), await _take(channel)
        assert (one[:2], two[:2]) == ((1, True), (2, False))
        assert INTERVAL_S - 0.05 <= one[2] - first[2] and one[2] - sent < INTERVAL_S + 0.2
        channel.send(None, final=True)
        assert await _get(channel) is None

    asyncio.run(main())
    assert not _Pacer._of  # nothing held: the loop's pacer is gone, with its timer


def test_a_paced_channel_never_holds_the_final_response() -> None:
    async def main() -> None:
        channel = ResponseChannel(asyncio.get_running_loop(), "m", "1", interval_ns=10**9)
        channel.send(_outputs(0))
        first = await _take(channel)
        channel.send(_outputs(1))  # held: the interval is 1 s
        sender = _later(0.05, channel.send, _outputs(2), final=True)
        one, two = await _take(channel), await _take(channel)
        sender.join()
        # The final ended the hold: both went out at once, long before the interval's end.
        assert (one[:2], two[:2]) == ((1, True), (2, False)) and two[2] - first[2] < 0.5
        assert await _get(channel) is None

    asyncio.run(main())
    assert not _Pacer._of


def test_a_send_after_the_interval_is_taken_at_once() -> None:
    async def main() -> None:
        channel = ResponseChannel(asyncio.get_running_loop(), "m", "1", interval_ns=int(0.05e9))
        channel.send(_outputs(0))
        await _take(channel)
        await asyncio.sleep(0.1)  # the interval is over before the next response comes
        sender = _later(0.2, channel.send, _outputs(1))
        sent = time.monotonic() + 0.2
        one = await _take(channel)
        sender.join()
        assert one[:2] == (1, False) and one[2] - sent < 0.1
        channel.fail(Cancelled("ended"))  # a failure is not held either
        with pytest.raises(Cancelled, match="ended"):
            await _get(channel)

    asyncio.run(main())


def test_an_unpaced_channel_hands_each_response_over_at_once() -> None:
    async def main() -> None:
        channel = ResponseChannel(asyncio.get_running_loop(), "m", "1")
        for i in range(3):
            sender = _later(0.01, channel.send, _outputs(i), final=i == 2)
            sent = time.monotonic() + 0.01
            taken = await _take(channel)
            sender.join()
            assert taken[:2] == (i, False) and taken[2] - sent < 0.2
        assert await _get(channel) is None

    asyncio.run(main())


# --- served ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def paced_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = build_repository(tmp_path_factory.mktemp("paced-repo"))
    (root / "pieces" / "1").mkdir(parents=True)
    (root / "pieces" / "1" / "model.py").write_text(PIECES)
    (root / "pieces" / "config.pbtxt").write_text(PIECES_CONFIG)
    running = start_server(test_settings(Path(root), stream_interval_us=int(INTERVAL_S * 1e6)))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(paced_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{paced_server.http_url}", timeout=30) as client:
        yield client


def timed_events(response: httpx.Response, start: float) -> list[tuple[float, dict]]:
    """(seconds after ``start`` its chunk arrived, the event's JSON) for every SSE event."""
    out, buffer = [], b""
    for chunk in response.iter_raw():
        now = time.monotonic() - start
        buffer += chunk
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            assert event.startswith(b"data: "), event
            text = event.removeprefix(b"data: ")
            out.append((now, {"done": True} if text == b"[DONE]" else json.loads(text)))
    assert buffer == b""
    return out


def _stream(http: httpx.Client, path: str, body: dict) -> list[tuple[float, dict]]:
    start = time.monotonic()
    with http.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        return timed_events(r, start)


def test_served_first_and_final_are_not_held(http: httpx.Client) -> None:
    events = _stream(http, "/v2/models/pieces/generate_stream", {"text_input": "x"})
    assert [e["text_output"] for _, e in events] == ["a", "b", "c"]  # one event per response
    (a, _), (b, _), (c, _) = events
    # "b" came within the interval, but the final response followed 10 ms later: nothing waits
    # for the interval (0.3 s).
    assert a < 0.2 and c < 0.25 and b <= c


def test_served_interval_bounds_how_long_a_response_is_held(http: httpx.Client) -> None:
    events = _stream(http, "/v2/models/pieces/generate_stream", {"text_input": "quiet"})
    assert [e["text_output"] for _, e in events] == ["a", "b", "c"]
    (a, _), (b, _), (c, _) = events
    # "b" (10 ms after "a") is held until the interval after the first write is over, though
    # the model sends nothing more for 0.6 s.
    assert a < 0.2 and INTERVAL_S - 0.05 <= b < INTERVAL_S + 0.25 and c >= 0.6


def test_served_charlm_stream_is_whole_and_in_order(http: httpx.Client) -> None:
    body = {"id": "p1", "text_input": "First Citizen:\n", "max_tokens": 40, "seed": 7}
    events = _stream(http, "/v2/models/charlm/generate_stream", body)
    assert len(events) == 40 and all(len(e["text_output"]) == 1 and e["id"] == "p1" for _, e in events)
    assert events[-1][1]["finish_reason"] == "length" and events[-1][0] < INTERVAL_S  # the final is not held
    whole = http.post(
        "/v2/models/charlm_whole/generate", json={"text_input": "First Citizen:\n", "max_tokens": 40, "seed": 7}
    ).json()
    assert "".join(e["text_output"] for _, e in events) == whole["text_output"]


def test_served_openai_stream_is_paced_the_same_way(http: httpx.Client) -> None:
    events = _stream(http, "/v1/completions", {"model": "pieces", "prompt": "quiet", "stream": True})
    texts = [e["choices"][0]["text"] for _, e in events if "choices" in e]
    assert "".join(texts) == "abc" and events[-1][1] == {"done": True}
    held = next(t for t, e in events if "choices" in e and e["choices"][0]["text"] == "b")
    assert INTERVAL_S - 0.05 <= held < INTERVAL_S + 0.25


def _grpc_stream(url: str, model: str, text: str, **inputs: int) -> list[tuple[float, Any]]:
    """(seconds after sending each response arrived, the response) of one ModelStreamInfer request."""
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: results.put((time.monotonic(), (result, error))))
    tensors = [grpcclient.InferInput("text_input", [1], "BYTES")]
    tensors[0].set_data_from_numpy(np.array([text.encode()], dtype=object))
    for name, value in inputs.items():
        tensors.append(grpcclient.InferInput(name, [1], "INT32" if name == "max_tokens" else "INT64"))
        tensors[-1].set_data_from_numpy(np.array([value], np.int32 if name == "max_tokens" else np.int64))
    start = time.monotonic()
    client.async_stream_infer(model, tensors)
    out = []
    while True:
        at, (result, error) = results.get(timeout=30)
        assert error is None, error
        out.append((at - start, result))
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    client.stop_stream()
    client.close()
    return out


def _text(result: Any) -> str:
    return result.as_numpy("text_output").reshape(-1)[0].decode()


def test_grpc_stream_is_paced_one_message_per_response(paced_server: RunningServer) -> None:
    """ModelStreamInfer follows the flag too: one message per response, in order; the first and
    the final are not held, a response within the interval is held until the interval is over."""
    quick = _grpc_stream(paced_server.grpc_url, "pieces", "x")
    assert [_text(r) for _, r in quick] == ["a", "b", "c"]
    assert quick[0][0] < 0.2 and quick[-1][0] < 0.25
    quiet = _grpc_stream(paced_server.grpc_url, "pieces", "quiet")
    assert [_text(r) for _, r in quiet] == ["a", "b", "c"]
    (a, _), (b, _), (c, _) = quiet
    assert a < 0.2 and INTERVAL_S - 0.05 <= b < INTERVAL_S + 0.25 and c >= 0.6
    charlm = _grpc_stream(paced_server.grpc_url, "charlm", "First Citizen:\n", max_tokens=40, seed=7)
    assert len(charlm) == 40 and all(len(_text(r)) == 1 for _, r in charlm)
    assert charlm[-1][0] < INTERVAL_S  # the final is not held


# --- the flag --------------------------------------------------------------------------------------
def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="inferd serve")
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_flag_default_and_value_reach_the_settings() -> None:
    assert settings_from_args(_parse()).stream_interval_us == DEFAULT_STREAM_INTERVAL_US
    assert settings_from_args(_parse("--stream-interval-us", "0")).stream_interval_us == 0
    assert settings_from_args(_parse("--stream-interval-us", "2500")).stream_interval_us == 2500


@pytest.mark.parametrize("value", ["-1", "1000001", "1.5", "soon"])
def test_the_flag_refuses_a_bad_value(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse("--stream-interval-us", value)
    err = capsys.readouterr().err
    assert (
        f"argument --stream-interval-us: must be a whole number of microseconds from 0 to 1000000 "
        f"(0: write every response as soon as possible), not '{value}'"
    ) in err
