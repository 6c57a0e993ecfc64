"""Ragged batching: ``allow_ragged_batch``, every ``batch_input`` kind and ``batch_output``.

A ragged model is fed what Triton's framework backends feed it (the values of Triton's own
L0_batch_input test: requests of 2, 4, 1 and 3 elements give counts [2, 4, 1, 3], accumulated
[2, 6, 7, 10], with zero [0, 2, 6, 7, 10], a max-count shape [4], ...), requests of different
lengths are batched together, batch outputs are scattered back by their source's shape, clients
never see a batch input, and every config Triton (or the feeding) cannot honour is refused."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from inferd.backends.base import Backend, LoadContext
from inferd.protocol import codec
from inferd.protocol.errors import ModelLoadError
from inferd.protocol.model_spec import BatchInput, model_spec
from inferd.protocol.pb import model_config_pb2 as mc
from inferd.server.loader import load_workers, plan_model
from inferd.server.repository import Repository
from inferd.server.scheduling import make_scheduler
from inferd.server.scheduling.ragged import RaggedBatching, batch_input_value
from inferd.server.scheduling.work import Work
from inferd.server.scheduling.worker import InstanceWorker
from inferd.server.stats import ModelStats
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from .conftest import start_server, test_settings
from .models import OPSET, write

FP32 = codec.BY_NAME["FP32"]
INT32 = codec.BY_NAME["INT32"]

# --- each kind's values, as Triton's L0_batch_input expects them ---------------------------------


@pytest.mark.parametrize(
    ("kind", "shapes", "expected"),
    [
        ("BATCH_ELEMENT_COUNT", [(1, 2), (1, 4), (1, 1), (1, 3)], [2, 4, 1, 3]),
        ("BATCH_ACCUMULATED_ELEMENT_COUNT", [(1, 2), (1, 4), (1, 1), (1, 3)], [2, 6, 7, 10]),
        ("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", [(1, 2), (1, 4), (1, 1), (1, 3)], [0, 2, 6, 7, 10]),
        ("BATCH_MAX_ELEMENT_COUNT_AS_SHAPE", [(1, 2), (1, 4), (1, 1), (1, 3)], [0, 0, 0, 0]),
        ("BATCH_ITEM_SHAPE_FLATTEN", [(1, 4, 1), (1, 1, 2), (1, 1, 2), (1, 2, 2)], [4, 1, 1, 2, 1, 2, 2, 2]),
        # A request of batch size 2 counts all its elements and has one item row per batch item.
        ("BATCH_ELEMENT_COUNT", [(2, 3), (1, 5)], [6, 5]),
        ("BATCH_ITEM_SHAPE", [(2, 1, 2), (1, 1, 2), (1, 2, 2)], [[1, 2], [1, 2], [1, 2], [2, 2]]),
    ],
)
@pytest.mark.parametrize("dtype", [FP32, INT32])
def test_each_kind_has_tritons_shape_values_and_type(
    kind: str, shapes: list[tuple[int, ...]], expected: list[int], dtype: codec.DataType
) -> None:
    value = batch_input_value(BatchInput(kind, ("B",), dtype, ("R",)), shapes)  # type: ignore[arg-type]
    assert value.dtype == dtype.dtype
    assert value.tolist() == expected
    assert value.shape == np.array(expected).shape


# --- the worker and the batcher, with a backend that records what it is fed ---------------------

RAGGED_CONFIG = """
name: "r"
max_batch_size: 8
input [
  { name: "R" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true },
  { name: "X" data_type: TYPE_FP32 dims: [ 2 ] }
]
output [ { name: "SCATTERED" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "ROWS" data_type: TYPE_FP32 dims: [ 2 ] } ]
batch_input [
  { kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_INT32 source_input: "R" },
  { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: [ "ACC", "ACC_AGAIN" ] data_type: TYPE_FP32 source_input: "R" },
  { kind: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO target_name: "ACC0" data_type: TYPE_INT32 source_input: "R" },
  { kind: BATCH_MAX_ELEMENT_COUNT_AS_SHAPE target_name: "MAX" data_type: TYPE_INT32 source_input: "R" },
  { kind: BATCH_ITEM_SHAPE target_name: "ITEM" data_type: TYPE_INT32 source_input: "R" },
  { kind: BATCH_ITEM_SHAPE_FLATTEN target_name: "ITEM_FLAT" data_type: TYPE_FP32 source_input: "R" }
]
batch_output [ { target_name: "SCATTERED" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "R" } ]
dynamic_batching { }
"""


class Recording(Backend):
    """Records every execution's inputs; SCATTERED = R * 10 (flat), ROWS = X + 1."""

    name = "recording"
    default_filename = "none"

    def __init__(self, context: LoadContext | None = None) -> None:
        self.fed: list[dict[str, np.ndarray]] = []
        self.gate = threading.Event()
        self.gate.set()

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        self.gate.wait(10)
        self.fed.append(dict(inputs))
        return {"SCATTERED": inputs["R"] * 10, "ROWS": inputs["X"] + 1}


def _worker(backend: Backend, config: str = RAGGED_CONFIG) -> tuple[InstanceWorker, mc.ModelConfig]:
    parsed = text_format.Parse(config, mc.ModelConfig())
    worker = InstanceWorker(backend, "w", batching=parsed.max_batch_size > 0)
    worker.ragged = RaggedBatching.of(model_spec(parsed))
    return worker, parsed


def _work(n: int, rows: int = 1, x_width: int = 2) -> Work:
    r = np.arange(rows * n, dtype=np.float32).reshape(rows, n) + 100 * n
    x = np.full((rows, x_width), n, np.float32)
    return Work({"R": r, "X": x}, ["SCATTERED", "ROWS"], rows, time.monotonic_ns(), None)


async def test_requests_of_different_lengths_share_a_batch_fed_as_triton_feeds_it() -> None:
    backend = Recording()
    worker, config = _worker(backend)
    stats = ModelStats("r", "1")
    scheduler = make_scheduler(model_spec(config), [worker], stats, "model 'r' version 1")
    try:
        backend.gate.clear()
        first = asyncio.ensure_future(scheduler.submit(_work(5)))  # holds the instance
        while not scheduler._queued and not scheduler._open:  # type: ignore[attr-defined]
            await asyncio.sleep(0)
        works = [_work(2), _work(4, rows=2), _work(1), _work(3)]
        tasks = [asyncio.ensure_future(scheduler.submit(w)) for w in works]
        await asyncio.sleep(0.05)
        backend.gate.set()
        await first
        results = await asyncio.gather(*tasks)
    finally:
        await scheduler.retire(5)
    assert len(backend.fed) == 2 and sorted(stats.batch_stats) == [1, 5]
    fed = backend.fed[1]
    # The ragged input: one flat tensor, each request's elements in turn, no batch dimension.
    np.testing.assert_array_equal(fed["R"], np.concatenate([w.inputs["R"].ravel() for w in works]))
    assert fed["X"].shape == (5, 2)  # the other input stacked along the batch as always
    expected = {
        "COUNT": (np.int32, [2, 8, 1, 3]),
        "ACC": (np.float32, [2, 10, 11, 14]),
        "ACC_AGAIN": (np.float32, [2, 10, 11, 14]),
        "ACC0": (np.int32, [0, 2, 10, 11, 14]),
        "ITEM": (np.int32, [[2], [4], [4], [1], [3]]),
        "ITEM_FLAT": (np.float32, [2, 4, 4, 1, 3]),
    }
    for name, (dtype, values) in expected.items():
        assert fed[name].dtype == dtype, name
        assert fed[name].tolist() == values, name
    assert fed["MAX"].shape == (8,) and fed["MAX"].dtype == np.int32
    # The batch output goes back in each request's own shape; the other output by rows.
    for w, r in zip(works, results):
        np.testing.assert_array_equal(r["SCATTERED"], w.inputs["R"] * 10)
        np.testing.assert_array_equal(r["ROWS"], w.inputs["X"] + 1)


async def test_other_inputs_must_still_match_to_share_a_batch() -> None:
    backend = Recording()
    worker, config = _worker(backend, RAGGED_CONFIG.replace("dims: [ 2 ] }", "dims: [ -1 ] }", 1))
    stats = ModelStats("r", "1")
    scheduler = make_scheduler(model_spec(config), [worker], stats, "model 'r' version 1")
    try:
        backend.gate.clear()
        first = asyncio.ensure_future(scheduler.submit(_work(5)))
        while not scheduler._queued and not scheduler._open:  # type: ignore[attr-defined]
            await asyncio.sleep(0)
        tasks = [asyncio.ensure_future(scheduler.submit(_work(n, x_width=w))) for n, w in ((1, 2), (2, 3), (3, 2))]
        await asyncio.sleep(0.05)
        backend.gate.set()
        await first
        await asyncio.gather(*tasks)
    finally:
        await scheduler.retire(5)
    assert sorted(stats.batch_stats) == [1, 2]  # X of width 3 ran alone


def test_a_single_request_is_fed_flat_too() -> None:
    backend = Recording()
    worker, _ = _worker(backend)
    results, _times = worker._execute([_work(3, rows=2)])
    fed = backend.fed[0]
    assert fed["R"].shape == (6,) and fed["COUNT"].tolist() == [6] and fed["ITEM"].tolist() == [[3], [3]]
    assert results[0]["SCATTERED"].shape == (2, 3)  # type: ignore[index]


def test_a_batch_output_too_small_for_its_requests_fails_the_batch() -> None:
    class Short(Recording):
        def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
            return {"SCATTERED": inputs["R"][:-1], "ROWS": inputs["X"]}

    worker, _ = _worker(Short())
    with pytest.raises(Exception, match="batch output 'SCATTERED' came back with 5 elements"):
        worker._execute([_work(2), _work(4)])


# --- end to end: an ONNX model that proves what it was fed ---------------------------------------


def ragged_model() -> onnx.ModelProto:
    """SUM: each request's sum, computed from RAGGED and the with-zero offsets; DOUBLE: RAGGED * 2
    (scattered back); every batch input returned whole to every request (one row each)."""
    vi = helper.make_tensor_value_info
    c = helper.make_tensor
    nodes = [
        helper.make_node("Shape", ["COUNT"], ["r"]),  # [requests]
        helper.make_node("Concat", ["r", "one"], ["r_by_1"], axis=0),
        helper.make_node("CumSum", ["RAGGED", "zero_axis"], ["cs"]),
        helper.make_node("Concat", ["zero_f", "cs"], ["cs0"], axis=0),
        helper.make_node("Slice", ["ACC0", "one", "big"], ["ends"]),
        helper.make_node("Slice", ["ACC0", "zero_axis", "minus_one"], ["starts"]),
        helper.make_node("Gather", ["cs0", "ends"], ["at_end"]),
        helper.make_node("Gather", ["cs0", "starts"], ["at_start"]),
        helper.make_node("Sub", ["at_end", "at_start"], ["sums"]),
        helper.make_node("Unsqueeze", ["sums", "one"], ["SUM"]),
        helper.make_node("Mul", ["RAGGED", "two"], ["DOUBLE"]),
        helper.make_node("Shape", ["MAX"], ["max_shape"]),
    ]
    outputs = [vi("SUM", TensorProto.FLOAT, ["b", 1]), vi("DOUBLE", TensorProto.FLOAT, ["n"])]
    for source, out, elem in (
        ("COUNT", "COUNT_OUT", TensorProto.INT32),
        ("ACC", "ACC_OUT", TensorProto.FLOAT),
        ("ACC0", "ACC0_OUT", TensorProto.INT32),
        ("max_shape", "MAX_OUT", TensorProto.INT64),
        ("ITEM", "ITEM_OUT", TensorProto.INT32),
        ("ITEM_FLAT", "ITEM_FLAT_OUT", TensorProto.FLOAT),
    ):
        nodes += [
            helper.make_node("Reshape", [source, "row"], [f"{out}_row"]),
            helper.make_node("Expand", [f"{out}_row", "r_by_1"], [out]),
        ]
        outputs.append(vi(out, elem, ["b", "k"]))
    graph = helper.make_graph(
        nodes,
        "ragged",
        [
            vi("RAGGED", TensorProto.FLOAT, ["n"]),
            vi("COUNT", TensorProto.INT32, ["b"]),
            vi("ACC", TensorProto.FLOAT, ["b"]),
            vi("ACC0", TensorProto.INT32, ["b1"]),
            vi("MAX", TensorProto.FLOAT, ["m"]),
            vi("ITEM", TensorProto.INT32, ["i", 1]),
            vi("ITEM_FLAT", TensorProto.FLOAT, ["f"]),
        ],
        outputs,
        initializer=[
            c("one", TensorProto.INT64, [1], [1]),
            c("zero_axis", TensorProto.INT64, [1], [0]),
            c("minus_one", TensorProto.INT64, [1], [-1]),
            c("big", TensorProto.INT64, [1], [1 << 30]),
            c("zero_f", TensorProto.FLOAT, [1], [0.0]),
            c("two", TensorProto.FLOAT, [], [2.0]),
            c("row", TensorProto.INT64, [2], [1, -1]),
        ],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def ragged_config(name: str, extra_inputs: str = "", batch_inputs: str | None = None, tail: str = "") -> str:
    default_inputs = """
  { kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_INT32 source_input: "RAGGED" },
  { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "ACC" data_type: TYPE_FP32 source_input: "RAGGED" },
  { kind: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO target_name: "ACC0" data_type: TYPE_INT32 source_input: "RAGGED" },
  { kind: BATCH_MAX_ELEMENT_COUNT_AS_SHAPE target_name: "MAX" data_type: TYPE_FP32 source_input: "RAGGED" },
  { kind: BATCH_ITEM_SHAPE target_name: "ITEM" data_type: TYPE_INT32 source_input: "RAGGED" },
  { kind: BATCH_ITEM_SHAPE_FLATTEN target_name: "ITEM_FLAT" data_type: TYPE_FP32 source_input: "RAGGED" }"""
    outs = [("SUM", "FP32", "[ 1 ]"), ("DOUBLE", "FP32", "[ -1 ]")] + [
        (n, t, "[ -1 ]")
        for n, t in (
            ("COUNT_OUT", "INT32"),
            ("ACC_OUT", "FP32"),
            ("ACC0_OUT", "INT32"),
            ("MAX_OUT", "INT64"),
            ("ITEM_OUT", "INT32"),
            ("ITEM_FLAT_OUT", "FP32"),
        )
    ]
    outputs = ",\n".join(f'  {{ name: "{n}" data_type: TYPE_{t} dims: {d} }}' for n, t, d in outs)
    return f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ {{ name: "RAGGED" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }}{extra_inputs} ]
output [
{outputs}
]
batch_input [{default_inputs if batch_inputs is None else batch_inputs}
]
batch_output [ {{ target_name: "DOUBLE" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "RAGGED" }} ]
dynamic_batching {{ max_queue_delay_microseconds: 2000000 }}
{tail}"""


PY_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            names = sorted(t.name() for t in r.inputs())
            x = r.get_input_tensor_by_name("RAGGED").as_numpy()
            seen = np.array([[len(requests), x.size, len(names)]], dtype=np.int32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("SEEN", seen)]))
        return out
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    repo = tmp_path_factory.mktemp("ragged_repo")
    write(repo, "ragged", ragged_config("ragged"), ragged_model())
    # Triton's Python backend: requests of different lengths batch, each comes as it was sent.
    folder = write(
        repo,
        "ragged_py",
        'name: "ragged_py"\nbackend: "python"\nmax_batch_size: 4\n'
        'input [ { name: "RAGGED" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]\n'
        'output [ { name: "SEEN" data_type: TYPE_INT32 dims: [ 3 ] } ]\n'
        "dynamic_batching { max_queue_delay_microseconds: 2000000 }\n",
        None,
    )
    (folder / "1").mkdir()
    (folder / "1" / "model.py").write_text(PY_MODEL)
    running = start_server(test_settings(repo))
    yield running
    running.stop()


def _send_together(url: str, model: str, lengths: Sequence[int], outputs: Sequence[str]) -> list[dict[str, np.ndarray]]:
    def one(n: int) -> dict[str, np.ndarray]:
        client = grpcclient.InferenceServerClient(url)
        data = (np.arange(n, dtype=np.float32) + n * 10).reshape(1, n)
        tensor = grpcclient.InferInput("RAGGED", [1, n], "FP32")
        tensor.set_data_from_numpy(data)
        result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
        return {"RAGGED": data} | {o: result.as_numpy(o) for o in outputs}

    with ThreadPoolExecutor(len(lengths)) as pool:
        return list(pool.map(one, lengths))


def test_onnx_model_batches_different_lengths_and_is_fed_tritons_batch_inputs(server) -> None:  # type: ignore[no-untyped-def]
    names = ["SUM", "DOUBLE", "COUNT_OUT", "ACC_OUT", "ACC0_OUT", "MAX_OUT", "ITEM_OUT", "ITEM_FLAT_OUT"]
    results = _send_together(server.grpc_url, "ragged", [2, 4, 1, 3], names)
    stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics("ragged").model_stats[0]
    assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_stats] == [(4, 1)]  # one batch of four
    counts = results[0]["COUNT_OUT"][0]
    assert sorted(counts.tolist()) == [1, 2, 3, 4]  # the order the requests joined the batch
    for r in results:
        x = r["RAGGED"]
        assert r["SUM"].tolist() == [[float(x.sum())]]
        np.testing.assert_array_equal(r["DOUBLE"], x * 2)  # scattered back in the request's shape
        assert r["DOUBLE"].shape == x.shape
        np.testing.assert_array_equal(r["COUNT_OUT"][0], counts)
        assert r["ACC_OUT"][0].tolist() == np.cumsum(counts).tolist()
        assert r["ACC0_OUT"][0].tolist() == [0, *np.cumsum(counts).tolist()]
        assert r["MAX_OUT"].tolist() == [[4]]
        assert r["ITEM_OUT"][0].tolist() == counts.tolist()  # item shape [n] for each request
        assert r["ITEM_FLAT_OUT"][0].tolist() == counts.tolist()


def test_clients_never_see_a_batch_input(server) -> None:  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    metadata = client.get_model_metadata("ragged")
    assert [(t.name, list(t.shape)) for t in metadata.inputs] == [("RAGGED", [-1, -1])]
    config = client.get_model_config("ragged").config
    assert [t.name for t in config.input] == ["RAGGED"] and config.input[0].allow_ragged_batch
    assert [b.target_name[0] for b in config.batch_input] == ["COUNT", "ACC", "ACC0", "MAX", "ITEM", "ITEM_FLAT"]
    ragged = grpcclient.InferInput("RAGGED", [1, 2], "FP32")
    ragged.set_data_from_numpy(np.ones((1, 2), np.float32))
    count = grpcclient.InferInput("COUNT", [1], "INT32")
    count.set_data_from_numpy(np.ones(1, np.int32))
    with pytest.raises(InferenceServerException, match="unexpected input 'COUNT'"):
        client.infer("ragged", [ragged, count])


def test_python_model_gets_requests_as_sent_without_batch_inputs(server) -> None:  # type: ignore[no-untyped-def]
    results = _send_together(server.grpc_url, "ragged_py", [3, 1, 2], ["SEEN"])
    for r in results:
        assert r["SEEN"].tolist() == [[3, r["RAGGED"].size, 1]]  # three requests in one execution


# --- refusals -------------------------------------------------------------------------------------

ONE = '{ kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_INT32 source_input: "RAGGED" }'


@pytest.mark.parametrize(
    ("batch_inputs", "extra", "tail", "message"),
    [
        (
            '{ kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_INT32 }',
            "",
            "",
            "batch input kind 'BATCH_ELEMENT_COUNT' expects 1 source input, got 0",
        ),
        (
            '{ kind: BATCH_ITEM_SHAPE target_name: "C" data_type: TYPE_INT32 source_input: [ "RAGGED", "RAGGED" ] }',
            "",
            "",
            "batch input kind 'BATCH_ITEM_SHAPE' expects 1 source input, got 2",
        ),
        (
            '{ kind: BATCH_ELEMENT_COUNT target_name: "C" data_type: TYPE_INT32 source_input: "NOPE" }',
            "",
            "",
            "unknown source input name 'NOPE'",
        ),
        (
            '{ kind: BATCH_ELEMENT_COUNT target_name: "C" data_type: TYPE_INT64 source_input: "RAGGED" }',
            "",
            "",
            "batch input data type must be TYPE_INT32 or TYPE_FP32",
        ),
        (
            '{ kind: BATCH_ELEMENT_COUNT data_type: TYPE_INT32 source_input: "RAGGED" }',
            "",
            "",
            "names no 'target_name'",
        ),
        (
            '{ kind: BATCH_ELEMENT_COUNT target_name: "OTHER" data_type: TYPE_INT32 source_input: "RAGGED" }',
            ', { name: "OTHER" data_type: TYPE_INT32 dims: [ 1 ] }',
            "",
            "target name 'OTHER' is also a model input",
        ),
        (
            f"{ONE}, {ONE}",
            "",
            "",
            "target name 'COUNT' is the target of another batch input",
        ),
        (
            ONE,
            ', { name: "OPT" data_type: TYPE_INT32 dims: [ -1 ] optional: true allow_ragged_batch: true }',
            "",
            "a ragged input (allow_ragged_batch) cannot be optional",
        ),
        (
            '{ kind: BATCH_ELEMENT_COUNT target_name: "C" data_type: TYPE_INT32 source_input: "OPT" }',
            ', { name: "OPT" data_type: TYPE_INT32 dims: [ 1 ] optional: true }',
            "",
            "source input 'OPT' is optional",
        ),
        (
            ONE,
            "",
            'batch_output [ { target_name: "NOPE" source_input: "RAGGED" } ]',
            "unknown target output name 'NOPE'",
        ),
        (
            ONE,
            "",
            'batch_output [ { target_name: [ "SUM", "SUM" ] source_input: "RAGGED" } ]',
            "target output name 'SUM' can only be specified once",
        ),
        (
            ONE,
            "",
            'batch_output [ { target_name: "SUM" source_input: [ ] } ]',
            "batch output kind 'BATCH_SCATTER_WITH_INPUT_SHAPE' expects 1 source input, got 0",
        ),
        (
            ONE,
            "",
            'batch_output [ { target_name: "SUM" source_input: "NOPE" } ]',
            "unknown source input name 'NOPE'",
        ),
    ],
)
def test_invalid_configs_are_refused_at_load(
    tmp_path: Path, batch_inputs: str, extra: str, tail: str, message: str
) -> None:
    write(tmp_path, "bad", ragged_config("bad", extra, "\n  " + batch_inputs, tail), ragged_model())
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_model(Repository(tmp_path), "bad")


def _graph(ragged_shape: list[int | str], with_count: bool = True) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("RAGGED", TensorProto.FLOAT, ragged_shape)]
    if with_count:
        inputs.append(helper.make_tensor_value_info("COUNT", TensorProto.INT32, ["b"]))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["RAGGED"], ["OUT"])],
        "g",
        inputs,
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, ragged_shape)],
    )
    return helper.make_model(graph, opset_imports=OPSET)


@pytest.mark.parametrize(
    ("shape", "with_count", "message"),
    [
        (["b", "n"], True, r"expects model provides input with shape \[-1\] for ragged input 'RAGGED'"),
        (["n"], False, "batch input 'COUNT' is not an input of the ONNX graph"),
    ],
)
def test_the_onnx_graph_must_take_ragged_inputs_flat_and_every_batch_input(
    tmp_path: Path, shape: list[int | str], with_count: bool, message: str
) -> None:
    config = (
        'name: "g"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input [ { name: "RAGGED" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]\n'
        'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        f"batch_input [ {ONE} ]\n"
        'batch_output [ { target_name: "OUT" source_input: "RAGGED" } ]\n'
    )
    write(tmp_path, "g", config, _graph(shape, with_count))
    repo = Repository(tmp_path)
    plan = plan_model(repo, "g")
    assert [t.name for t in plan.config.input] == ["RAGGED"]  # auto-complete left COUNT out
    with pytest.raises(ModelLoadError, match=message):
        load_workers(repo, plan, 1, None)


def test_auto_complete_never_makes_a_batch_input_a_client_input(tmp_path: Path) -> None:
    write(tmp_path, "g", None, _graph(["n"]))
    config = (
        'name: "g"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input [ { name: "RAGGED" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]\n'
        f"batch_input [ {ONE} ]\n"
    )
    (tmp_path / "g" / "config.pbtxt").write_text(config)
    plan = plan_model(Repository(tmp_path), "g")
    assert [t.name for t in plan.config.input] == ["RAGGED"]
    assert [t.name for t in plan.config.output] == ["OUT"]
    assert list(plan.signature.inputs) == ["RAGGED"]


def test_torchscript_model_gets_batch_inputs_by_forward_argument_name(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    class Sums(torch.nn.Module):  # type: ignore[misc]
        def forward(self, ACC0: torch.Tensor, RAGGED: torch.Tensor) -> torch.Tensor:  # noqa: N803
            cs = torch.cat([torch.zeros(1), torch.cumsum(RAGGED, 0)])
            return (cs[ACC0[1:].long()] - cs[ACC0[:-1].long()]).unsqueeze(1)

    folder = tmp_path / "t"
    (folder / "1").mkdir(parents=True)
    torch.jit.script(Sums()).save(str(folder / "1" / "model.pt"))
    (folder / "config.pbtxt").write_text(
        'name: "t"\nplatform: "pytorch_libtorch"\nmax_batch_size: 4\n'
        'input [ { name: "RAGGED" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]\n'
        'output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'batch_input [ { kind: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO target_name: "ACC0" '
        'data_type: TYPE_INT32 source_input: "RAGGED" } ]\n'
    )
    repo = Repository(tmp_path)
    [worker] = load_workers(repo, plan_model(repo, "t"), 1, None)
    try:
        works = [Work({"RAGGED": np.arange(n, dtype=np.float32).reshape(1, n)}, ["SUM"], 1, 0, None) for n in (3, 1, 2)]
        results, _times = worker._execute(works)
        assert [r["SUM"].tolist() for r in results] == [[[3.0]], [[0.0]], [[1.0]]]  # type: ignore[index]
    finally:
        worker.close()
