"""An ensemble of sequence (stateful) models, as in Triton: each step's request carries the
ensemble request's correlation id and START/END flags, so two sequences interleaved through the
ensemble answer as the steps driven directly do. The ensemble itself has no sequence_batching
(its scheduling is ensemble_scheduling, as Triton's config allows only one)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, test_settings
from .models import write
from .test_sequence_batching import acc_config, acc_model

# acc_a's running sum feeds acc_b, which keeps the running sum of those sums.
ENSEMBLE = """name: "acc_ensemble"
platform: "ensemble"
max_batch_size: 4
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [
  { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "SUM" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "FLAGS" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "CORR_OUT" data_type: TYPE_UINT64 dims: [ 1 ] }
]
ensemble_scheduling { step [
  { model_name: "acc_a" model_version: -1
    input_map { key: "INPUT" value: "INPUT" }
    output_map { key: "OUTPUT" value: "SUM" } output_map { key: "FLAGS" value: "FLAGS" } },
  { model_name: "acc_b" model_version: -1
    input_map { key: "INPUT" value: "SUM" }
    output_map { key: "OUTPUT" value: "OUTPUT" } output_map { key: "CORR_OUT" value: "CORR_OUT" } }
] }
"""
SEQUENCES = {101: [4, 2, 7, 1], 2**62 + 5: [10, 20, 30, 40]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo: Path = tmp_path_factory.mktemp("sequence_ensemble")
    for name in ("acc_a", "acc_b"):
        write(repo, name, acc_config(name), acc_model())
    (repo / "acc_ensemble" / "1").mkdir(parents=True)
    (repo / "acc_ensemble" / "config.pbtxt").write_text(ENSEMBLE)
    running = start_server(test_settings(repo))
    yield running
    running.stop()


def ints(value: int) -> grpcclient.InferInput:
    t = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    t.set_data_from_numpy(np.array([[value]], np.int32))
    return t


def interleaved() -> Iterator[tuple[int, int, bool, bool]]:
    """(sequence, value, start, end): the sequences' requests, taking turns."""
    length = len(next(iter(SEQUENCES.values())))
    for i in range(length):
        for seq, values in SEQUENCES.items():
            yield seq, values[i], i == 0, i == length - 1


def direct_answers(client: grpcclient.InferenceServerClient, offset: int) -> dict[int, list[int]]:
    """The same sequences (their ids moved by ``offset``) sent to acc_a, and its sums to acc_b."""
    got: dict[int, list[int]] = {seq: [] for seq in SEQUENCES}
    for seq, value, start, end in interleaved():
        kw = {"sequence_id": seq + offset, "sequence_start": start, "sequence_end": end}
        running = int(client.infer("acc_a", [ints(value)], **kw).as_numpy("OUTPUT")[0, 0])
        got[seq].append(int(client.infer("acc_b", [ints(running)], **kw).as_numpy("OUTPUT")[0, 0]))
    return got


def test_interleaved_sequences_through_an_ensemble_answer_as_the_steps_do(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    got: dict[int, list[int]] = {seq: [] for seq in SEQUENCES}
    for seq, value, start, end in interleaved():
        result = client.infer("acc_ensemble", [ints(value)], sequence_id=seq, sequence_start=start, sequence_end=end)
        got[seq].append(int(result.as_numpy("OUTPUT")[0, 0]))
        # Each step saw the ensemble's id (acc_b's CORRID) and flags (acc_a's START, END, READY).
        assert int(result.as_numpy("CORR_OUT")[0, 0]) == seq
        assert int(result.as_numpy("FLAGS")[0, 0]) == 100 * start + 10 * end + 1
    expected = {seq: list(np.cumsum(np.cumsum(values))) for seq, values in SEQUENCES.items()}
    assert got == expected
    assert direct_answers(client, offset=1000) == expected
    client.close()


def test_interleaved_sequences_on_a_stream_through_an_ensemble(server: RunningServer) -> None:
    """simple_grpc_sequence_stream_infer_client.py's flow, through the ensemble: the requests of
    both sequences sent at once on one stream, in order."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    sent = list(interleaved())
    for i, (seq, value, start, end) in enumerate(sent):
        client.async_stream_infer(
            "acc_ensemble",
            [ints(value)],
            request_id=str(i),
            sequence_id=seq + 7,
            sequence_start=start,
            sequence_end=end,
        )
    got: dict[int, dict[int, int]] = {seq: {} for seq in SEQUENCES}
    for _ in sent:
        item = answers.get(timeout=30)
        assert not isinstance(item, InferenceServerException), item
        i = int(item.get_response().id)
        got[sent[i][0]][i] = int(item.as_numpy("OUTPUT")[0, 0])
    client.stop_stream()
    client.close()
    ordered = {seq: [v for _, v in sorted(answers_of.items())] for seq, answers_of in got.items()}
    assert ordered == {seq: list(np.cumsum(np.cumsum(values))) for seq, values in SEQUENCES.items()}


def test_an_ensemble_request_without_a_correlation_id_fails_in_tritons_words(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as e:
        client.infer("acc_ensemble", [ints(1)])
    assert "inference request to model 'acc_a' must specify a non-zero or non-empty correlation ID" in str(
        e.value.message()
    )
    with pytest.raises(InferenceServerException) as e:  # no START on an unknown sequence
        client.infer("acc_ensemble", [ints(1)], sequence_id=333)
    assert "must specify the START flag on the first request of the sequence" in str(e.value.message())
    client.close()
