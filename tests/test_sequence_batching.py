"""Sequence batching (stateful models) with Triton's semantics, through tritonclient over gRPC
(unary and the stream) and HTTP, as Triton's sequence examples drive it: correlation ids as
integers and strings, the control inputs the server feeds, implicit state, the direct and
oldest strategies, idle release, the backlog, every error, and the statistics."""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from inferd.protocol.errors import ModelLoadError
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.pb import grpc_service_pb2_grpc as pb_grpc
from inferd.server.loader import plan_model
from inferd.server.repository import Repository
from inferd.server.scheduling import sequence as sequence_module
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, test_settings
from .models import OPSET, write

CONTROLS = """
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
"""
ZERO_STATE = "initial_state { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: 'zero' }"
FILE_STATE = "initial_state { data_type: TYPE_INT32 dims: [ 1 ] data_file: 'thousand.bin' name: 'thousand' }"


def acc_model(batched: bool = True) -> onnx.ModelProto:
    """OUTPUT = STATE_IN + READY * INPUT (a running sum kept as implicit state), FLAGS = START*100
    + END*10 + READY, CORR_OUT = CORRID: what the server fed shows in the outputs."""
    shape: list[Any] = ["batch", 1] if batched else [1]
    i32 = TensorProto.INT32

    def const(name: str, value: int) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, i32, [], [value]))

    nodes = [
        helper.make_node("Mul", ["READY", "INPUT"], ["ADDED"]),
        helper.make_node("Add", ["STATE_IN", "ADDED"], ["OUTPUT"]),
        helper.make_node("Identity", ["OUTPUT"], ["STATE_OUT"]),
        const("C100", 100),
        const("C10", 10),
        helper.make_node("Mul", ["START", "C100"], ["S"]),
        helper.make_node("Mul", ["END", "C10"], ["E"]),
        helper.make_node("Add", ["S", "E"], ["SE"]),
        helper.make_node("Add", ["SE", "READY"], ["FLAGS"]),
        helper.make_node("Identity", ["CORRID"], ["CORR_OUT"]),
    ]
    inputs = [helper.make_tensor_value_info(n, i32, shape) for n in ("INPUT", "START", "END", "READY", "STATE_IN")]
    inputs.append(helper.make_tensor_value_info("CORRID", TensorProto.UINT64, shape))
    outputs = [helper.make_tensor_value_info(n, i32, shape) for n in ("OUTPUT", "STATE_OUT", "FLAGS")]
    outputs.append(helper.make_tensor_value_info("CORR_OUT", TensorProto.UINT64, shape))
    graph = helper.make_graph(nodes, "acc", inputs, outputs)
    return helper.make_model(graph, opset_imports=OPSET)


def acc_config(name: str, mbs: int = 4, strategy: str = "", extra: str = "", state: str = ZERO_STATE) -> str:
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {mbs}
input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [
  {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "FLAGS" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "CORR_OUT" data_type: TYPE_UINT64 dims: [ 1 ] }}
]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
sequence_batching {{
  {strategy}
  {extra}
  {CONTROLS}
  state [ {{ input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_INT32 dims: [ 1 ] {state} }} ]
}}
"""


PY_CONFIG = """name: "seq_py"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [
  { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "FLAGS" data_type: TYPE_INT32 dims: [ 3 ] },
  { name: "CORR" data_type: TYPE_STRING dims: [ 2 ] }
]
instance_group [ { kind: KIND_CPU count: 2 } ]
sequence_batching {
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START bool_false_true: [ false, true ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY fp32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING } ] }
  ]
  state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
}
"""

PY_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """A running sum kept as implicit state; shows what the server fed it and the request's
    correlation_id() and flags()."""

    def execute(self, requests):
        responses = []
        for r in requests:
            def get(name):
                return pb_utils.get_input_tensor_by_name(r, name).as_numpy()

            ready = int(get("READY")[0])
            total = get("STATE_IN") + get("INPUT") * ready
            flags = np.array([r.flags(), int(get("START")[0]), ready], np.int32)
            corr = np.array([str(r.correlation_id()).encode(), get("CORRID")[0]], dtype=object)
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor("OUTPUT", total),
                        pb_utils.Tensor("STATE_OUT", total),
                        pb_utils.Tensor("FLAGS", flags),
                        pb_utils.Tensor("CORR", corr),
                    ]
                )
            )
        return responses
'''

BLS_CONFIG = """name: "bls_seq"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 2 ] } ]
"""

BLS_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Calls the sequence model 'acc' with a one-request sequence (BLS): OUTPUT and FLAGS."""

    def execute(self, requests):
        responses = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy().reshape(1, 1)
            flags = pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START | pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END
            answer = pb_utils.InferenceRequest(
                model_name="acc",
                inputs=[pb_utils.Tensor("INPUT", x)],
                requested_output_names=["OUTPUT", "FLAGS"],
                correlation_id=555,
                flags=flags,
            ).exec()
            if answer.has_error():
                responses.append(pb_utils.InferenceResponse(error=answer.error()))
                continue
            out = [pb_utils.get_output_tensor_by_name(answer, n).as_numpy().reshape(1) for n in ("OUTPUT", "FLAGS")]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.concatenate(out))]))
        return responses
'''

SHAPES_CONFIG = """name: "seq_shapes"
backend: "python"
max_batch_size: 2
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ -1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
sequence_batching { direct { } }
"""

SHAPES_MODEL = '''
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Each row's sum, slowly (20 ms an execution), so that requests queue in their slots."""

    def execute(self, requests):
        time.sleep(0.02)
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT", pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy().sum(1, keepdims=True).astype(np.int32))]
            )
            for r in requests
        ]
'''

PLAIN_DIRECT = "direct { }"
FULL_DIRECT = "direct { max_queue_delay_microseconds: 2000000 minimum_slot_utilization: 1.0 }"
OLDEST = "oldest { max_candidate_sequences: 4 preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 2000000 }"


def build(repo: Path) -> Path:
    write(repo, "acc", acc_config("acc"), acc_model())
    write(repo, "acc_null", acc_config("acc_null", strategy=PLAIN_DIRECT), acc_model())
    write(repo, "acc_full", acc_config("acc_full", strategy=FULL_DIRECT), acc_model())
    folder = write(repo, "acc_oldest", acc_config("acc_oldest", strategy=OLDEST, state=FILE_STATE), acc_model())
    (folder / "initial_state").mkdir()
    (folder / "initial_state" / "thousand.bin").write_bytes(np.array([1000], "<i4").tobytes())
    idle = "max_sequence_idle_microseconds: 200000"
    write(repo, "acc_idle", acc_config("acc_idle", mbs=0, extra=idle), acc_model(batched=False))
    write(repo, "acc_one", acc_config("acc_one", mbs=1, extra="max_sequence_idle_microseconds: 30000000"), acc_model())
    for name, config, model in (
        ("seq_py", PY_CONFIG, PY_MODEL),
        ("bls_seq", BLS_CONFIG, BLS_MODEL),
        ("seq_shapes", SHAPES_CONFIG, SHAPES_MODEL),
    ):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(config)
        (repo / name / "1" / "model.py").write_text(model)
    return repo


@pytest.fixture(scope="module")
def seq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(test_settings(build(tmp_path_factory.mktemp("sequence_repo"))))
    yield running
    running.stop()


def ints(module: Any, value: int, name: str = "INPUT", shape: tuple[int, ...] = (1, 1)) -> Any:
    t = module.InferInput(name, list(shape), "INT32")
    t.set_data_from_numpy(np.full(shape, value, np.int32))
    return t


def step(client: Any, module: Any, model: str, value: int, seq: int | str, start: bool, end: bool, **kw: Any) -> Any:
    shape = (1,) if model in ("acc_idle", "seq_py") else (1, 1)
    return client.infer(
        model, [ints(module, value, shape=shape)], sequence_id=seq, sequence_start=start, sequence_end=end, **kw
    )


def stats(client: grpcclient.InferenceServerClient, model: str) -> Any:
    return client.get_inference_statistics(model).model_stats[0]


def batches(s: Any) -> dict[int, int]:
    return {b.batch_size: b.compute_infer.count for b in s.batch_stats}


# --- the flows of Triton's examples -----------------------------------------------------------
def test_grpc_stream_interleaved_int_and_string_sequences(seq_server: RunningServer) -> None:
    """simple_grpc_sequence_stream_infer_client.py's flow: two integer sequences and a string
    one, sent asynchronously on one stream, interleaved."""
    client = grpcclient.InferenceServerClient(seq_server.grpc_url)
    done: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: done.put(error or result))
    values = [11, 7, 5, 3, 2, 0, 1]
    sequences: list[tuple[str, int | str, list[int]]] = [
        ("acc", 1000, [0, *values]),
        ("acc", 1001, [100, *[-v for v in values]]),
        ("seq_py", "a1b2-c3d4", [20, *[-v for v in values]]),
    ]
    for i in range(len(values) + 1):
        for model, seq, sent in sequences:
            shape = (1,) if model == "seq_py" else (1, 1)
            client.async_stream_infer(
                model,
                [ints(grpcclient, sent[i], shape=shape)],
                request_id=f"{seq}_{i}",
                sequence_id=seq,
                sequence_start=i == 0,
                sequence_end=i == len(values),
            )
    got: dict[str, list[int]] = {}
    for _ in range(3 * (len(values) + 1)):
        item = done.get(timeout=30)
        assert not isinstance(item, InferenceServerException), item
        seq_id, index = item.get_response().id.rsplit("_", 1)
        got.setdefault(seq_id, [0] * (len(values) + 1))[int(index)] = int(item.as_numpy("OUTPUT").ravel()[0])
    client.stop_stream()
    client.close()
    for _, seq, sent in sequences:
        assert got[str(seq)] == list(np.cumsum(sent)), seq


def test_http_sync_sequences(seq_server: RunningServer) -> None:
    """simple_http_sequence_sync_infer_client.py's flow: two sequences, one request at a time,
    alternating; then a string sequence id on the Python model."""
    client = httpclient.InferenceServerClient(seq_server.http_url)
    values = [11, 7, 5, 3, 2, 0, 1]
    results: dict[int, list[int]] = {7000: [], 7001: []}
    for i, v in enumerate([0, *values]):
        for seq, sign in ((7000, 1), (7001, -1)):
            r = step(client, httpclient, "acc", sign * v, seq, i == 0, i == len(values))
            results[seq].append(int(r.as_numpy("OUTPUT")[0, 0]))
    assert results[7000] == list(np.cumsum([0, *values]))
    assert results[7001] == list(-np.cumsum([0, *values]))
    outs = [
        int(step(client, httpclient, "seq_py", v, "http-sequence", i == 0, i == 2).as_numpy("OUTPUT")[0])
        for i, v in enumerate([3, 4, 5])
    ]
    assert outs == [3, 7, 12]
    client.close()


def test_controls_reach_the_model(seq_server: RunningServer) -> None:
    """START, END and READY with the configured values, CORRID with the id: a uint64 up to
    2**64-1 over HTTP; over gRPC, whose int64_param cannot hold it, the negative int64 of the
    same bits (read as the uint64, as Triton reads it)."""
    http = httpclient.InferenceServerClient(seq_server.http_url)
    client = grpcclient.InferenceServerClient(seq_server.grpc_url)
    seq = 2**64 - 5
    flags = []
    for i, c, m, sent in ((0, http, httpclient, seq), (1, client, grpcclient, -5), (2, http, httpclient, seq)):
        r = step(c, m, "acc", 1, sent, i == 0, i == 2)
        flags.append(int(r.as_numpy("FLAGS")[0, 0]))
        assert int(r.as_numpy("CORR_OUT")[0, 0]) == seq and int(r.as_numpy("OUTPUT")[0, 0]) == i + 1
    assert flags == [101, 1, 11]
    http.close()
    r = step(client, grpcclient, "acc", 9, 77, True, True)  # START and END at once
    assert int(r.as_numpy("FLAGS")[0, 0]) == 111 and int(r.as_numpy("OUTPUT")[0, 0]) == 9
    client.close()


def test_python_model_sees_correlation_id_and_flags(seq_server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(seq_server.grpc_url)
    seen = []
    for i, v in enumerate([5, 6, 7]):
        r = step(client, grpcclient, "seq_py", v, "session-9", i == 0, i == 2)
        seen.append((int(r.as_numpy("OUTPUT")[0]), r.as_numpy("FLAGS").tolist(), r.as_numpy("CORR").tolist()))
    # flags(): 1 = START, 2 = END; the START (bool) and READY (fp32) controls; CORRID as a string.
    assert seen == [
        (5, [1, 1, 1], [b"session-9", b"session-9"]),
        (11, [0, 0, 1], [b"session-9", b"session-9"]),
        (18, [2, 0, 1], [b"session-9", b"session-9"]),
    ]
    # Server parameters are not the model's: parameters() leaves the sequence ones out.
    client.close()


def test_a_python_model_calls_a_sequence_model(seq_server: RunningServer) -> None:
    """BLS: InferenceRequest(correlation_id=, flags=) reaches the sequence model as a sequence."""
    client = grpcclient.InferenceServerClient(seq_server.grpc_url)
    out = client.infer("bls_seq", [ints(grpcclient, 6, shape=(1,))]).as_numpy("OUT")
    assert out.tolist() == [6, 111]
    client.close()


# --- batching ---------------------------------------------------------------------------------
def run_concurrently(url: str, model: str, sequences: dict[int, list[int]]) -> dict[int, list[int]]:
    """Each sequence from its own thread and client, one request at a time."""
    out: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def run(seq: int, sent: list[int]) -> None:
        try:
            client = grpcclient.InferenceServerClient(url)
            out[seq] = [
                int(step(client, grpcclient, model, v, seq, i == 0, i == len(sent) - 1).as_numpy("OUTPUT")[0, 0])
                for i, v in enumerate(sent)
            ]
            client.close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=item) for item in sequences.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return out


def test_direct_sequences_share_a_batch_one_slot_each(seq_server: RunningServer) -> None:
    """max_batch_size 4 and minimum_slot_utilization 1.0: four live sequences run as one batch
    per step, each in its own row, each keeping its own state."""
    sequences = {s: [s * 10 + i for i in range(5)] for s in (1, 2, 3, 4)}
    out = run_concurrently(seq_server.grpc_url, "acc_full", sequences)
    assert out == {s: list(np.cumsum(v)) for s, v in sequences.items()}
    client = grpcclient.InferenceServerClient(seq_server.grpc_url)
    s = stats(client, "acc_full")
    assert batches(s) == {4: 5} and (s.inference_count, s.execution_count) == (20, 5)
    client.close()


def test_a_slot_without_a_request_is_not_ready(seq_server: RunningServer) -> None:
    """Direct: slot 0's sequence ended, slot 1's goes on: its batch has two rows, the first a
    filler with READY false (an execution of two rows, one inference), and its state is intact."""
    client = grpcclient.InferenceServerClient(seq_server.grpc_url)
    assert int(step(client, grpcclient, "acc_null", 5, 1, True, False).as_numpy("OUTPUT")[0, 0]) == 5  # slot 0
    assert int(step(client, grpcclient, "acc_null", 7, 2, True, False).as_numpy("OUTPUT")[0, 0]) == 7  # slot 1
    step(client, grpcclient, "acc_null", 1, 1, False, True)  # slot 0 ends (a batch of one row)
    before = stats(client, "acc_null")
    r = step(client, grpcclient, "acc_null", 3, 2, False, True)
    assert int(r.as_numpy("OUTPUT")[0, 0]) == 10 and int(r.as_numpy("FLAGS")[0, 0]) == 11
    after = stats(client, "acc_null")
    assert batches(after)[2] == batches(before)[2] + 1
    assert (after.inference_count - before.inference_count, after.execution_count - before.execution_count) == (1, 1)
    client.close()


def test_oldest_batches_requests_of_different_sequences(seq_server: RunningServer) -> None:
    """oldest with preferred_batch_size 4: one request of each of four sequences per batch; the
    initial state is the file's 1000."""
    sequences = {s: [s, s, s] for s in (11, 12, 13, 14)}
    out = run_concurrently(seq_server.grpc_url, "acc_oldest", sequences)
    assert out == {s: [1000 + s, 1000 + 2 * s, 1000 + 3 * s] for s in sequences}
    client = grpcclient.InferenceServerClient(seq_server.grpc_url)
    s = stats(client, "acc_oldest")
    assert batches(s) == {4: 3} and (s.inference_count, s.execution_count) == (12, 3)
    client.close()


def test_a_slot_whose_shapes_differ_is_not_starved(seq_server: RunningServer) -> None:
    """Direct: while slot 0's sequence always has a request queued, slot 1's request of another
    row shape (which cannot share its batch) still runs once it is the oldest, not after the
    whole of slot 0's sequence."""
    client = grpcclient.InferenceServerClient(seq_server.grpc_url)
    answered: queue.Queue[None] = queue.Queue()
    seen: list[str] = []  # which sequence each response came from, in order
    errors: list[Any] = []
    total = 30

    def on_response(result: Any, error: Any) -> None:
        if error is not None:
            errors.append(error)
        seen.append("a")
        answered.put(None)

    def send_a(i: int) -> None:
        client.async_stream_infer(
            "seq_shapes", [ints(grpcclient, 1)], sequence_id=71, sequence_start=i == 0, sequence_end=i == total - 1
        )

    client.start_stream(callback=on_response)
    send_a(0)
    send_a(1)  # two in flight: slot 0 never runs dry
    other = grpcclient.InferenceServerClient(seq_server.grpc_url)
    b: queue.Queue[Any] = queue.Queue()
    sent = 2
    while sent < total:
        answered.get(timeout=10)
        if sent == 3:  # slot 0 busy with its queue: slot 1 starts a sequence of rows of two
            other.async_infer(
                "seq_shapes",
                [ints(grpcclient, 5, shape=(1, 2))],
                callback=lambda result, error: (seen.append("b"), b.put(error or result)),
                sequence_id=72,
                sequence_start=True,
                sequence_end=True,
            )
        send_a(sent)
        sent += 1
    answer = b.get(timeout=10)
    assert not isinstance(answer, InferenceServerException), answer
    assert int(answer.as_numpy("OUTPUT")[0, 0]) == 10
    client.stop_stream()
    assert not errors, errors
    assert seen.index("b") < 6, seen  # before: after all 30 of sequence 71's requests
    client.close()
    other.close()


# --- slots, idleness, backlog -----------------------------------------------------------------
def test_an_idle_sequence_is_released(seq_server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(seq_server.grpc_url)
    step(client, grpcclient, "acc_idle", 1, 31, True, False)
    time.sleep(0.5)  # max_sequence_idle_microseconds is 200 ms
    with pytest.raises(InferenceServerException) as e:
        step(client, grpcclient, "acc_idle", 1, 31, False, False)
    assert "inference request for sequence 31 to model 'acc_idle' must specify the START flag on the first request" in (
        e.value.message()
    )
    started = time.monotonic()  # the only slot is free again: a new sequence runs at once
    assert int(step(client, grpcclient, "acc_idle", 4, 32, True, True).as_numpy("OUTPUT")[0]) == 4
    assert time.monotonic() - started < 0.2
    client.close()


def test_more_sequences_than_slots_wait_then_are_refused(
    seq_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One slot: a second sequence waits in the backlog until the first ends; beyond the
    backlog's bound a new sequence is UNAVAILABLE."""
    monkeypatch.setattr(sequence_module, "MAX_BACKLOG", 1)
    client = grpcclient.InferenceServerClient(seq_server.grpc_url)
    step(client, grpcclient, "acc_one", 1, 41, True, False)
    waiting: queue.Queue[Any] = queue.Queue()
    client.async_infer(
        "acc_one",
        [ints(grpcclient, 2)],
        callback=lambda result, error: waiting.put(error or result),
        sequence_id=42,
        sequence_start=True,
        sequence_end=True,
    )
    time.sleep(0.2)
    assert waiting.empty()  # no slot for it yet
    with pytest.raises(InferenceServerException) as e:
        step(client, grpcclient, "acc_one", 3, 43, True, True)
    assert e.value.status() == "StatusCode.UNAVAILABLE" and "exceeds maximum queue size" in e.value.message()
    assert int(step(client, grpcclient, "acc_one", 1, 41, False, True).as_numpy("OUTPUT")[0, 0]) == 2
    result = waiting.get(timeout=10)
    assert not isinstance(result, InferenceServerException), result
    assert int(result.as_numpy("OUTPUT")[0, 0]) == 2
    client.close()


def test_start_for_a_live_sequence_starts_it_again(seq_server: RunningServer) -> None:
    """As Triton: the previous sequence is ended early (a warning is logged) and its state reset."""
    client = grpcclient.InferenceServerClient(seq_server.grpc_url)
    assert int(step(client, grpcclient, "acc", 5, 51, True, False).as_numpy("OUTPUT")[0, 0]) == 5
    assert int(step(client, grpcclient, "acc", 2, 51, True, False).as_numpy("OUTPUT")[0, 0]) == 2
    assert int(step(client, grpcclient, "acc", 1, 51, False, True).as_numpy("OUTPUT")[0, 0]) == 3
    client.close()


# --- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_errors_in_tritons_words(seq_server: RunningServer, module: Any) -> None:
    url = seq_server.grpc_url if module is grpcclient else seq_server.http_url
    client = module.InferenceServerClient(url)
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "inference request to model 'acc' must specify a non-zero or non-empty correlation ID"),
        (
            {"sequence_id": 61, "sequence_start": False},
            "inference request for sequence 61 to model 'acc' must specify the START flag on the first request "
            "of the sequence",
        ),
        (
            {"sequence_id": "sixty-two", "sequence_start": True},
            "sequence batching control 'CORRID' data-type is 'BYTES', but model 'acc' expects 'UINT64'",
        ),
    ]
    for kw, words in cases:
        with pytest.raises(InferenceServerException) as e:
            client.infer("acc", [ints(module, 1)], **kw)
        assert words in e.value.message(), e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer("acc", [ints(module, 1, shape=(2, 1))], sequence_id=63, sequence_start=True)
    assert "must specify batch-size 1 due to requirements of sequence batcher" in e.value.message()
    with pytest.raises(InferenceServerException) as e:  # an integer id where the model wants a string
        step(client, module, "seq_py", 1, 64, True, True)
    assert "data-type is 'UINT64', but model 'seq_py' expects 'BYTES'" in e.value.message()
    client.close()


def test_parameters_of_the_wrong_type_are_refused(seq_server: RunningServer) -> None:
    def post(parameters: dict[str, Any]) -> tuple[int, str]:
        body = {
            "parameters": parameters,
            "inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "INT32", "data": [1]}],
        }
        request = urllib.request.Request(
            f"http://{seq_server.http_url}/v2/models/acc/infer", json.dumps(body).encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(request) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    status, body = post({"sequence_id": 71, "sequence_start": 1})
    assert (status, json.loads(body)) == (
        400,
        {"error": "invalid value type for 'sequence_start' parameter, expected a boolean"},
    )
    status, body = post({"sequence_id": 7.5, "sequence_start": True})
    assert status == 400 and "'sequence_id' parameter, expected an unsigned integer or a string" in body
    status, body = post({"sequence_id": 72, "sequence_start": True, "sequence_end": True})
    assert status == 200 and json.loads(body)["outputs"][0]["data"] == [1]


@pytest.mark.parametrize("value", [-5, -1, 2**64, 2**70, 1.5, 73.0, True, False], ids=repr)
@pytest.mark.parametrize("model", ["acc", "bls_seq"])
def test_http_refuses_a_sequence_id_that_is_not_a_uint64(seq_server: RunningServer, model: str, value: Any) -> None:
    """Triton's HTTP front end reads sequence_id as a uint64 or a string: anything else is a 400
    that names the parameter, for any model (bls_seq has no sequence batching)."""
    shape = [1, 1] if model == "acc" else [1]
    body = {
        "parameters": {"sequence_id": value, "sequence_start": True, "sequence_end": True},
        "inputs": [{"name": "INPUT", "shape": shape, "datatype": "INT32", "data": [1]}],
    }
    r = httpx.post(f"http://{seq_server.http_url}/v2/models/{model}/infer", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json() == {
        "error": "invalid value type for 'sequence_id' parameter, expected an unsigned integer or a string"
    }


def test_http_sequence_id_takes_the_whole_uint64_range(seq_server: RunningServer) -> None:
    for value in (1, 2**63, 2**64 - 1):
        body = {
            "parameters": {"sequence_id": value, "sequence_start": True, "sequence_end": True},
            "inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "INT32", "data": [3]}],
            "outputs": [{"name": "CORR_OUT"}],
        }
        r = httpx.post(f"http://{seq_server.http_url}/v2/models/acc/infer", json=body, timeout=30)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [value], r.text


def grpc_sequence_request(model: str, **param: Any) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=model)
    shape = [1, 1] if model == "acc" else [1]
    msg.inputs.add(name="INPUT", datatype="INT32", shape=shape).contents.int_contents.append(3)
    if model == "acc":
        msg.outputs.add(name="CORR_OUT")
    ((kind, value),) = param.items()
    setattr(msg.parameters["sequence_id"], kind, value)
    msg.parameters["sequence_start"].bool_param = True
    msg.parameters["sequence_end"].bool_param = True
    return msg


@pytest.mark.parametrize(
    ("kind", "value"),
    [("double_param", 1.5), ("double_param", 74.0), ("bool_param", True)],
    ids=["fraction", "double", "bool"],
)
@pytest.mark.parametrize("model", ["acc", "bls_seq"])
def test_grpc_refuses_a_sequence_id_that_is_not_an_integer(
    seq_server: RunningServer, model: str, kind: str, value: Any
) -> None:
    with grpc.insecure_channel(seq_server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(grpc_sequence_request(model, **{kind: value}))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid value type for 'sequence_id' parameter" in str(e.value.details())


@pytest.mark.parametrize(
    ("kind", "value", "corr"),
    [
        ("int64_param", 75, 75),
        ("uint64_param", 2**64 - 1, 2**64 - 1),
        # Triton's C++ client and perf_analyzer send a uint64 id as int64_param: from 2**63 up it
        # arrives negative, and Triton reads the same bits back as the uint64.
        ("int64_param", -5, 2**64 - 5),
        ("int64_param", -(2**63), 2**63),
    ],
)
def test_grpc_sequence_id_is_read_as_a_uint64(seq_server: RunningServer, kind: str, value: int, corr: int) -> None:
    with grpc.insecure_channel(seq_server.grpc_url) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(grpc_sequence_request("acc", **{kind: value}))
    assert np.frombuffer(response.raw_output_contents[0], "<u8").tolist() == [corr]


@pytest.mark.parametrize("seq", [7, 2**63 + 5, 2**64 - 1])
def test_inferds_client_sends_the_whole_uint64_range(seq_server: RunningServer, seq: int) -> None:
    """inferd's own client: ids from 2**63 up travel as uint64_param (int64_param cannot hold
    them), smaller ones as int64_param, as tritonclient's Python client sends them."""
    from inferd.clients.client import InferenceClient, build_infer_request

    message = build_infer_request("acc", {"INPUT": np.ones((1, 1), np.int32)}, parameters={"sequence_id": seq})
    assert message.parameters["sequence_id"].WhichOneof("parameter_choice") == (
        "uint64_param" if seq >= 2**63 else "int64_param"
    )
    client = InferenceClient(seq_server.grpc_url)
    try:
        params = {"sequence_id": seq, "sequence_start": True, "sequence_end": True}
        out = client.infer("acc", {"INPUT": np.ones((1, 1), np.int32)}, parameters=params)
    finally:
        client.close()
    assert out["CORR_OUT"].reshape(-1).tolist() == [seq]


# --- statistics and leaks ---------------------------------------------------------------------
def test_a_thousand_short_sequences_leave_nothing_behind(seq_server: RunningServer) -> None:
    """1,000 sequences of two requests on one stream (most wait in the backlog for one of the
    four slots): every answer is right, and no slot, state or backlog entry is left."""
    client = grpcclient.InferenceServerClient(seq_server.grpc_url)
    done: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: done.put(error or result))
    count = 1000
    for seq in range(100_000, 100_000 + count):
        for i, v in enumerate((seq % 7, 1)):
            client.async_stream_infer(
                "acc",
                [ints(grpcclient, v)],
                request_id=f"{seq}_{i}",
                sequence_id=seq,
                sequence_start=i == 0,
                sequence_end=i == 1,
            )
    for _ in range(2 * count):
        item = done.get(timeout=60)
        assert not isinstance(item, InferenceServerException), item
        seq, i = (int(x) for x in item.get_response().id.split("_"))
        assert int(item.as_numpy("OUTPUT")[0, 0]) == seq % 7 + i
    client.stop_stream()
    client.close()
    scheduler = seq_server.server.manager.get("acc").scheduler
    held = seq_server.call(_occupancy(scheduler))
    assert held == {"live": 0, "backlog": 0, "slots_in_use": 0, "states": 0}, held


async def _occupancy(scheduler: Any) -> dict[str, int]:
    return dict(scheduler.occupancy())


# --- perf_analyzer ----------------------------------------------------------------------------
def test_perf_analyzer_drives_a_sequence_model(seq_server: RunningServer, tmp_path: Path) -> None:
    from inferd.perf.perf_analyzer import INSTALL_HINT, find_perf_analyzer

    tool = find_perf_analyzer()
    if tool is None:
        pytest.skip(f"perf_analyzer is not installed ({INSTALL_HINT})")
    import subprocess

    for extra in ([], ["--streaming"]):
        cmd = [
            tool, "-m", "acc", "-u", seq_server.grpc_url, "-i", "grpc", "--sequence-length", "8",
            "--sequence-id-range", "1:1000", "--concurrency-range", "2", "-p", "300", "-s", "100",
            "--max-trials", "4", *extra,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
        assert "Throughput:" in proc.stdout
    client = grpcclient.InferenceServerClient(seq_server.grpc_url)
    s = stats(client, "acc")
    assert s.inference_stats.success.count > 0
    client.close()


# --- at load ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config,words",
    [
        (
            acc_config("m").replace(
                'input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]',
                'input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }, { name: "READY" data_type: TYPE_INT32 dims: [ 1 ] } ]',
            ),
            "input 'READY' is a sequence batching control input, which the server feeds the model",
        ),
        (
            acc_config("m", extra="iterative_sequence: true"),
            "field 'sequence_batching.iterative_sequence' is not supported",
        ),
        (
            acc_config("m", state="use_growable_memory: true"),
            "field 'sequence_batching.state.use_growable_memory' is not supported",
        ),
        (
            acc_config("m").replace(
                'int32_false_true: [ 0, 1 ] } ] },\n    { name: "END"',
                'int32_false_true: [ 0 ] } ] },\n    { name: "END"',
            ),
            "sequence batching control 'int32_false_true' must have exactly 2 entries for CONTROL_SEQUENCE_START for m",
        ),
        (
            acc_config("m").replace("data_type: TYPE_UINT64 }", "data_type: TYPE_FP32 }"),
            "unexpected data type for control CONTROL_SEQUENCE_CORRID for m. Allowed data types are TYPE_UINT64",
        ),
        (
            acc_config("m", strategy="oldest { preferred_batch_size: [ 9 ] }"),
            "sequence batching preferred batch size must be <= max batch size for m",
        ),
        (
            acc_config("m", state=FILE_STATE),
            "cannot read",
        ),
        (
            acc_config("m", state="initial_state { data_type: TYPE_INT32 dims: [ -1 ] zero_data: true name: 'z' }"),
            "'initial_state' field for state input name 'STATE_IN' contains variable dimensions.",
        ),
    ],
    ids=["control-as-input", "iterative", "growable", "pair", "corrid-type", "preferred", "missing-file", "variable"],
)
def test_load_refusals(tmp_path: Path, config: str, words: str) -> None:
    write(tmp_path, "m", config, acc_model())
    with pytest.raises(ModelLoadError) as e:
        plan_model(Repository(tmp_path), "m")
    assert words in e.value.message, e.value.message


def test_the_config_shows_tritons_defaults(tmp_path: Path) -> None:
    write(tmp_path, "m", acc_config("m", strategy="oldest { max_candidate_sequences: 2 }"), acc_model())
    plan = plan_model(Repository(tmp_path), "m")
    section = plan.config.sequence_batching
    assert section.max_sequence_idle_microseconds == 1_000_000
    assert list(section.oldest.preferred_batch_size) == [4]
    assert [t.name for t in plan.config.input] == ["INPUT"]  # auto-complete left the fed ones out
    assert [t.name for t in plan.config.output] == ["OUTPUT", "FLAGS", "CORR_OUT"]
    short = tmp_path / "m" / "initial_state"
    short.mkdir()
    (short / "thousand.bin").write_bytes(b"\x01\x00")
    write(tmp_path, "m", acc_config("m", state=FILE_STATE), None)
    with pytest.raises(ModelLoadError) as e:
        plan_model(Repository(tmp_path), "m")
    assert "initial_state setting expects 4 bytes, but the data provided from thousand.bin only has 2 bytes" in (
        e.value.message
    )
