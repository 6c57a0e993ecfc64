"""``model_warmup`` of sequence models against a real server: each warmup execution is a whole
one-request sequence fed as the sequence scheduler feeds one (controls START, END and READY true,
CORRID 1 or "1", the initial state), a sample may name a control or state input itself, and no
warmup state reaches the first real sequence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, test_settings
from .models import write
from .test_sequence_batching import FILE_STATE, ZERO_STATE, acc_config, acc_model


def warmup(batch_size: int, *inputs: str, count: int = 1) -> str:
    """A ``model_warmup`` with one sample; ``inputs`` are ``key: ... value: {...}`` bodies."""
    body = " ".join(f"inputs {{ {i} }}" for i in inputs)
    return f'model_warmup [ {{ name: "w" batch_size: {batch_size} count: {count} {body} }} ]\n'


SEVEN = 'key: "INPUT" value: { data_type: TYPE_INT32 dims: [ 1 ] input_data_file: "seven.bin" }'
RANDOM = 'key: "INPUT" value: { data_type: TYPE_INT32 dims: [ 1 ] random_data: true }'

PY_MODEL = '''
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """OUTPUT = STATE_OUT = STATE_IN + INPUT; appends what each execution's requests carried to
    seen.jsonl in its folder, one line per execution."""

    def initialize(self, args):
        self.path = os.path.join(args["model_repository"], "seen.jsonl")

    def execute(self, requests):
        seen, responses = [], []
        for r in requests:
            def get(name):
                return pb_utils.get_input_tensor_by_name(r, name).as_numpy()

            record = {n: get(n).ravel().tolist() for n in ("START", "END", "READY", "STATE_IN", "INPUT")}
            record["CORRID"] = [c.decode() if isinstance(c, bytes) else c for c in get("CORRID").ravel().tolist()]
            record.update(shape=list(get("INPUT").shape), flags=r.flags(), corr=r.correlation_id())
            seen.append(record)
            total = get("STATE_IN") + get("INPUT")
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", total), pb_utils.Tensor("STATE_OUT", total)])
            )
        with open(self.path, "a") as f:
            f.write(json.dumps(seen) + "\\n")
        return responses
'''


def py_config(name: str, mbs: int, corrid: str, extra: str = "") -> str:
    return f"""name: "{name}"
backend: "python"
max_batch_size: {mbs}
input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
sequence_batching {{
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START bool_false_true: [ false, true ] }} ] }},
    {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "READY" control [ {{ kind: CONTROL_SEQUENCE_READY fp32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid} }} ] }}
  ]
  state [ {{ input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_INT32 dims: [ 1 ] {FILE_STATE} }} ]
}}
{extra}"""


class Repo:
    """A repository on a server in explicit mode: each test writes its models and loads them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.running: RunningServer = start_server(test_settings(root, model_control_mode="explicit"))
        self.client = grpcclient.InferenceServerClient(self.running.grpc_url)

    def folder(self, name: str) -> Path:
        """The model's folder with its files: warmup/seven.bin and initial_state/thousand.bin."""
        folder = self.root / name
        (folder / "warmup").mkdir(parents=True, exist_ok=True)
        (folder / "warmup" / "seven.bin").write_bytes(np.array([7], "<i4").tobytes())
        (folder / "initial_state").mkdir(exist_ok=True)
        (folder / "initial_state" / "thousand.bin").write_bytes(np.array([1000], "<i4").tobytes())
        return folder

    def onnx(self, name: str, mbs: int, state: str, extra: str) -> None:
        self.folder(name)
        write(self.root, name, acc_config(name, mbs=mbs, state=state) + extra, acc_model(batched=mbs > 0))

    def python(self, name: str, mbs: int, corrid: str, extra: str) -> Path:
        folder = self.folder(name)
        (folder / "config.pbtxt").write_text(py_config(name, mbs, corrid, extra))
        (folder / "1").mkdir(exist_ok=True)
        (folder / "1" / "model.py").write_text(PY_MODEL)
        return folder

    def load_error(self, name: str) -> str:
        with pytest.raises(InferenceServerException) as e:
            self.client.load_model(name)
        return str(e.value.message())

    def close(self) -> None:
        self.client.close()
        self.running.stop()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    r = Repo(tmp_path_factory.mktemp("sequence_warmup"))
    yield r
    r.close()


def step(client: Any, model: str, value: int, seq: int | str, start: bool, end: bool, batched: bool = True) -> Any:
    shape = [1, 1] if batched else [1]
    t = grpcclient.InferInput("INPUT", shape, "INT32")
    t.set_data_from_numpy(np.full(shape, value, np.int32))
    return client.infer(model, [t], sequence_id=seq, sequence_start=start, sequence_end=end)


def first(r: Any, name: str = "OUTPUT") -> int:
    return int(r.as_numpy(name).ravel()[0])


def seen(folder: Path) -> list[list[dict[str, Any]]]:
    path = folder / "seen.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize(
    ("mbs", "state", "sample", "initial"),
    [(4, FILE_STATE, warmup(2, SEVEN, count=2), 1000), (0, ZERO_STATE, warmup(1, RANDOM), 0)],
    ids=["batching-file-state", "no-batching-zero-state"],
)
def test_onnx_sequence_model_warms_up_with_its_controls_and_state(
    repo: Repo, mbs: int, state: str, sample: str, initial: int
) -> None:
    """The graph needs START, END, READY, CORRID and STATE_IN: warmup feeds them all, and the
    first real sequence still starts from the initial state."""
    name = f"acc_warm_{mbs}"
    repo.onnx(name, mbs, state, sample)
    repo.client.load_model(name)
    assert repo.client.is_model_ready(name)
    model = repo.running.server.core.model(name)
    assert model.scheduler.workers[0].executions == (2 if mbs else 1)  # warmup ran, on the instance
    assert model.scheduler.occupancy()["states"] == 0  # and left the sequence slots alone
    batched = mbs > 0
    out = step(repo.client, name, 5, 11, True, False, batched)
    assert (first(out), first(out, "FLAGS"), first(out, "CORR_OUT")) == (initial + 5, 101, 11)
    assert first(step(repo.client, name, 3, 11, False, True, batched)) == initial + 8
    assert first(step(repo.client, name, 5, 12, True, True, batched)) == initial + 5  # a fresh sequence


def test_python_sequence_model_sees_a_one_request_sequence(repo: Repo) -> None:
    """Each row of a batch_size 2 sample is its own request, as the scheduler batches rows of
    different sequences: START, END, READY true, CORRID "1" (a TYPE_STRING CORRID), flags() 3
    (START | END), the initial state; the state it returns is thrown away."""
    folder = repo.python("py_warm", 2, "TYPE_STRING", warmup(2, SEVEN))
    repo.client.load_model("py_warm")
    row = {
        "START": [True],
        "END": [1],
        "READY": [1.0],
        "STATE_IN": [1000],
        "INPUT": [7],
        "CORRID": ["1"],
        "shape": [1, 1],
        "flags": 3,
        "corr": "1",
    }
    assert seen(folder) == [[row, row]]  # one execution of two requests
    assert first(step(repo.client, "py_warm", 5, "s", True, True)) == 1005
    real = seen(folder)[0][0]
    assert (real["CORRID"], real["corr"], real["STATE_IN"], real["flags"]) == (["s"], "s", [1000], 3)


def test_integer_corrid_is_one_without_batching(repo: Repo) -> None:
    folder = repo.python("py_warm_u64", 0, "TYPE_UINT64", warmup(1, SEVEN))
    repo.client.load_model("py_warm_u64")
    [[record]] = seen(folder)
    assert (record["CORRID"], record["corr"], record["flags"], record["shape"]) == ([1], 1, 3, [1])
    assert (record["START"], record["END"], record["READY"], record["STATE_IN"]) == ([True], [1], [1.0], [1000])


def test_a_sample_naming_control_and_state_inputs_gives_their_values(repo: Repo) -> None:
    """As a Triton repository may list them: the sample's values replace the generated ones."""
    named = warmup(
        2,
        SEVEN,
        'key: "START" value: { data_type: TYPE_BOOL dims: [ 1 ] zero_data: true }',
        'key: "CORRID" value: { data_type: TYPE_STRING dims: [ 1 ] input_data_file: "corr.bin" }',
        'key: "STATE_IN" value: { data_type: TYPE_INT32 dims: [ 1 ] input_data_file: "seven.bin" }',
    )
    folder = repo.python("py_named", 2, "TYPE_STRING", named)
    (folder / "warmup" / "corr.bin").write_bytes(len(b"abc").to_bytes(4, "little") + b"abc")
    repo.client.load_model("py_named")
    [[one, two]] = seen(folder)
    assert one == two
    assert (one["START"], one["CORRID"], one["STATE_IN"]) == ([False], ["abc"], [7])
    assert (one["END"], one["READY"], one["flags"]) == ([1], [1.0], 3)  # the rest as generated

    # An ONNX model whose sample lists every control and state input (Triton's way) loads as is.
    every = warmup(
        1,
        SEVEN,
        *(f'key: "{n}" value: {{ data_type: TYPE_INT32 dims: [ 1 ] zero_data: true }}' for n in ("START", "END")),
        'key: "READY" value: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true }',
        'key: "CORRID" value: { data_type: TYPE_UINT64 dims: [ 1 ] zero_data: true }',
        'key: "STATE_IN" value: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true }',
    )
    repo.onnx("acc_named", 4, ZERO_STATE, every)
    repo.client.load_model("acc_named")
    assert first(step(repo.client, "acc_named", 4, 9, True, True)) == 4


def test_unknown_or_mistyped_sample_inputs_are_refused(repo: Repo) -> None:
    bogus = warmup(1, SEVEN, 'key: "BOGUS" value: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true }')
    repo.onnx("acc_bogus", 4, ZERO_STATE, bogus)
    message = repo.load_error("acc_bogus")
    assert "model_warmup[0] 'w': unexpected input 'BOGUS'; the model's inputs are ['INPUT']" in message, message
    mistyped = warmup(1, SEVEN, 'key: "START" value: { data_type: TYPE_FP32 dims: [ 1 ] zero_data: true }')
    repo.onnx("acc_mistyped", 4, ZERO_STATE, mistyped)
    message = repo.load_error("acc_mistyped")
    assert (
        "model_warmup[0] 'w' input 'START': data_type TYPE_FP32 but the model's sequence input is TYPE_INT32"
    ) in message, message
    # Without sequence_batching a control's name is as unknown as any other.
    plain = 'key: "START" value: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true }'
    repo.python("py_plain", 0, "TYPE_UINT64", warmup(1, SEVEN, plain))
    config = repo.root / "py_plain" / "config.pbtxt"
    text = config.read_text()
    config.write_text(text[: text.index("sequence_batching")] + text[text.index("model_warmup") :])
    assert "unexpected input 'START'; the model's inputs are ['INPUT']" in repo.load_error("py_plain")
