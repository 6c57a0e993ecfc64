"""``ensemble_scheduling { max_inflight_requests }``: a decoupled step that sends faster than the
step after it consumes is paused, as in Triton, instead of the ensemble holding every response
it sent. Driven with tritonclient's gRPC streaming client against the real server."""

from __future__ import annotations

import asyncio
import gc
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from inferd.protocol.streaming import ChannelOverflow, ResponseChannel

from .conftest import RunningServer, start_server, test_settings
from .models import write_python

COUNT = 20
SLOW_S = 0.02

# COUNT responses (INDEX 0..COUNT-1) as fast as the sends return, each with the time it was
# sent; stops early once the request is cancelled; the final flag alone.
BURST = """
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            count = int(pb_utils.get_input_tensor_by_name(request, "COUNT").as_numpy()[0])
            sender = request.get_response_sender()
            threading.Thread(target=self.respond, args=(request, sender, count), daemon=True).start()
        return None

    def respond(self, request, sender, count):
        for i in range(count):
            if request.is_cancelled():
                break
            out = [pb_utils.Tensor("INDEX", np.array([i], np.int32))]
            sender.send(pb_utils.InferenceResponse(out, parameters={"sent_at": repr(time.monotonic())}))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""
BURST_CONFIG = """name: "burst"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "INDEX" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

# The index back, SLOW_S later, with the time it was done.
SLOW = f"""
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            time.sleep({SLOW_S})
            index = pb_utils.get_input_tensor_by_name(request, "INDEX").as_numpy()
            done = np.array([time.monotonic()], np.float64)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("SEEN", index), pb_utils.Tensor("DONE", done)]))
        return out
"""
SLOW_CONFIG = """name: "slow"
backend: "python"
max_batch_size: 0
input [ { name: "INDEX" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [
  { name: "SEEN" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "DONE" data_type: TYPE_FP64 dims: [ 1 ] }
]
"""


def ensemble(name: str, extra: str) -> str:
    return f"""name: "{name}"
platform: "ensemble"
max_batch_size: 0
input [ {{ name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [
  {{ name: "SEEN" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "DONE" data_type: TYPE_FP64 dims: [ 1 ] }}
]
ensemble_scheduling {{
  {extra}
  step [
    {{ model_name: "burst" input_map {{ key: "COUNT" value: "COUNT" }} output_map {{ key: "INDEX" value: "_index" }} }},
    {{ model_name: "slow" input_map {{ key: "INDEX" value: "_index" }}
      output_map [ {{ key: "SEEN" value: "SEEN" }}, {{ key: "DONE" value: "DONE" }} ] }}
  ]
}}
"""


# A second decoupled step after the first: two responses per index (10 * index and one more),
# from its own thread.
FAN = """
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            index = int(pb_utils.get_input_tensor_by_name(request, "INDEX").as_numpy()[0])
            sender = request.get_response_sender()
            threading.Thread(target=self.respond, args=(sender, index), daemon=True).start()
        return None

    def respond(self, sender, index):
        for k in (0, 1):
            out = [pb_utils.Tensor("OUT", np.array([10 * index + k], np.int32))]
            sender.send(pb_utils.InferenceResponse(out), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL * k)
"""
FAN_CONFIG = """name: "fan"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "INDEX" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""
# burst -> fan -> slow, one request at a time at each step: the fan step at its bound must go on
# (its ending makes room) while burst waits.
NESTED = """name: "nested"
platform: "ensemble"
max_batch_size: 0
input [ { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "SEEN" data_type: TYPE_INT32 dims: [ 1 ] }, { name: "DONE" data_type: TYPE_FP64 dims: [ 1 ] } ]
ensemble_scheduling {
  max_inflight_requests: 1
  step [
    { model_name: "burst" input_map { key: "COUNT" value: "COUNT" } output_map { key: "INDEX" value: "_index" } },
    { model_name: "fan" input_map { key: "INDEX" value: "_index" } output_map { key: "OUT" value: "_out" } },
    { model_name: "slow" input_map { key: "INDEX" value: "_out" }
      output_map [ { key: "SEEN" value: "SEEN" }, { key: "DONE" value: "DONE" } ] }
  ]
}
"""

# A plain ensemble (no decoupled step) accepts the field too: each step runs once per request.
PLAIN = """name: "plain"
platform: "ensemble"
max_batch_size: 0
input [ { name: "INDEX" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "SEEN" data_type: TYPE_INT32 dims: [ 1 ] } ]
ensemble_scheduling {
  max_inflight_requests: 1
  step [ { model_name: "slow" input_map { key: "INDEX" value: "INDEX" } output_map { key: "SEEN" value: "SEEN" } } ]
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("ensemble_backpressure")
    write_python(repo, "burst", BURST_CONFIG, BURST)
    write_python(repo, "slow", SLOW_CONFIG, SLOW)
    write_python(repo, "bounded", ensemble("bounded", "max_inflight_requests: 2"))
    write_python(repo, "unbounded", ensemble("unbounded", ""))
    write_python(repo, "plain", PLAIN)
    write_python(repo, "fan", FAN_CONFIG, FAN)
    write_python(repo, "nested", NESTED)
    running = start_server(test_settings(repo))
    yield running
    running.stop()


def _count(n: int) -> grpcclient.InferInput:
    t = grpcclient.InferInput("COUNT", [1], "INT32")
    t.set_data_from_numpy(np.array([n], np.int32))
    return t


def _run(url: str, model: str) -> list[tuple[int, float, float]]:
    """Every response of one request: (SEEN, the producer's send time, the slow step's time)."""
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer(model, [_count(COUNT)], enable_empty_final_response=True)
    out = []
    while True:
        result, error = results.get(timeout=30)
        assert error is None, error
        response = result.get_response()
        if response.outputs:
            sent = float(response.parameters["sent_at"].string_param) if "sent_at" in response.parameters else 0.0
            out.append((int(result.as_numpy("SEEN")[0]), sent, float(result.as_numpy("DONE")[0])))
        if response.parameters["triton_final_response"].bool_param:
            break
    client.stop_stream()
    client.close()
    return out


def _spread(rows: list[tuple[int, float, float]]) -> float:
    sent = [r[1] for r in rows]
    return max(sent) - min(sent)


def test_a_fast_decoupled_step_is_paused_at_the_bound(server: RunningServer) -> None:
    """With max_inflight_requests 2 the producer cannot run ahead of the slow step by more than a
    few responses: its sends wait. Without the bound it sends all 20 at once."""
    bounded = _run(server.grpc_url, "bounded")
    unbounded = _run(server.grpc_url, "unbounded")
    for rows in (bounded, unbounded):
        assert sorted(r[0] for r in rows) == list(range(COUNT))
    # Every response waits for the ones ahead of it: 2 at the step, 1 parked, 2 in the
    # producer's channel and 1 being read. So the 20th cannot be sent before the 13th is done.
    ahead = 2 + 1 + 2 + 1
    done = sorted(r[2] for r in bounded)
    by_index = sorted(bounded)
    for index, sent, _ in by_index[ahead + 1 :]:
        assert sent >= done[index - ahead - 1], (index, by_index)
    assert _spread(bounded) >= (COUNT - ahead - 1) * SLOW_S * 0.9
    assert _spread(unbounded) < _spread(bounded) / 2, (_spread(unbounded), _spread(bounded))


def test_cancelling_while_the_producer_waits_releases_it(server: RunningServer) -> None:
    """The client leaves while the producer's send waits for room: the send returns, the model
    sees is_cancelled() and ends, and nothing of the request stays behind."""
    before = ResponseChannel.alive()
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer("bounded", [_count(1000)])
    results.get(timeout=10)  # flowing; the producer is held at the bound from here on
    time.sleep(0.1)
    client.stop_stream(cancel_requests=True)
    client.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        gc.collect()
        if ResponseChannel.alive() <= before:
            break
        time.sleep(0.05)
    assert ResponseChannel.alive() <= before
    # And the server goes on: the same ensemble answers a new request whole.
    assert sorted(r[0] for r in _run(server.grpc_url, "bounded")) == list(range(COUNT))


def test_a_plain_ensemble_takes_the_field(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    t = grpcclient.InferInput("INDEX", [1], "INT32")
    t.set_data_from_numpy(np.array([7], np.int32))
    assert int(client.infer("plain", [t]).as_numpy("SEEN")[0]) == 7
    config = client.get_model_config("plain", as_json=True)["config"]
    assert config["ensemble_scheduling"]["max_inflight_requests"] == 1
    client.close()


def test_a_decoupled_step_at_the_bound_goes_on_while_the_one_before_it_waits(server: RunningServer) -> None:
    """burst -> fan (decoupled) -> slow, max_inflight_requests 1: fan at its bound holds burst's
    next flow back, and fan's own stream is still read to its end, which makes the room."""
    rows = _run(server.grpc_url, "nested")
    assert sorted(r[0] for r in rows) == sorted(10 * i + k for i in range(COUNT) for k in (0, 1))


# --- the channel ---------------------------------------------------------------------------------
def test_a_window_makes_a_thread_wait_for_room_and_the_loop_go_on_to_the_limit() -> None:
    async def main() -> None:
        channel = ResponseChannel(asyncio.get_running_loop(), "m", "1", limit=4, window=2)
        channel.send({"i": np.array([0])})
        channel.send({"i": np.array([1])})
        sent = threading.Event()
        thread = threading.Thread(target=lambda: (channel.send({"i": np.array([2])}), sent.set()))
        thread.start()
        await asyncio.sleep(0.1)
        assert not sent.is_set()  # two wait: the third send waits for room
        batch = await channel.get_ready()  # both waiting ones: room for two more
        assert batch is not None and [int(r.outputs["i"][0]) for r, _ in batch] == [0, 1]
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 5)
        assert sent.is_set()
        channel.send({"i": np.array([3])})  # on the consumer's own loop a send cannot wait: it goes on
        channel.send({"i": np.array([4])})
        channel.send({"i": np.array([5])})  # ... to the limit (4 waiting)
        with pytest.raises(ChannelOverflow):
            channel.send({"i": np.array([6])})

    asyncio.run(main())


def test_cancelling_a_windowed_channel_releases_a_waiting_send() -> None:
    async def main() -> None:
        channel = ResponseChannel(asyncio.get_running_loop(), "m", "1", window=1)
        channel.send({"i": np.array([0])})
        thread = threading.Thread(target=channel.send, args=({"i": np.array([1])},))
        thread.start()
        await asyncio.sleep(0.1)
        assert thread.is_alive()
        channel.cancel()
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 5)
        assert not thread.is_alive() and channel.cancelled

    asyncio.run(main())
