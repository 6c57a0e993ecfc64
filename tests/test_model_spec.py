"""The typed view of config.pbtxt (protocol/model_spec.py): every field schedulers, backends and
model versions read arrives, named as in the config, and the loader maps the completed config
once, into its plan, whose spec reaches every instance's backend and the loaded version."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor
from inferd.backends import registry
from inferd.backends.base import Backend, Instance, LoadContext
from inferd.backends.common import default_threads, output_types
from inferd.protocol import codec
from inferd.protocol.errors import InvalidArgument, ModelLoadError
from inferd.protocol.model_spec import (
    DynamicBatching,
    Graph,
    Input,
    InstanceGroup,
    ModelSpec,
    Optimization,
    Output,
    QueuePolicy,
    TransactionPolicy,
    dynamic_batching,
    model_spec,
)
from inferd.protocol.pb import model_config_pb2 as mc
from inferd.protocol.types import InferRequest
from inferd.server import config as cfg
from inferd.server.loader import load_workers, plan_model
from inferd.server.model import ModelVersion
from inferd.server.repository import Repository
from inferd.server.scheduling import Scheduler, Work
from inferd.server.stats import ModelStats

CONFIG = """
name: "m"
max_batch_size: 16
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 250
  preserve_ordering: true
  priority_levels: 3
  default_priority_level: 2
  default_queue_policy {
    timeout_action: DELAY
    default_timeout_microseconds: 1000
    allow_timeout_override: true
    max_queue_size: 7
  }
  priority_queue_policy { key: 1 value { max_queue_size: 2 default_timeout_microseconds: 5 } }
}
instance_group [ { name: "g" kind: KIND_GPU count: 2 gpus: [ 0, 1 ] }, { name: "c" kind: KIND_CPU count: 1 } ]
parameters { key: "inline_execution" value { string_value: "false" } }
"""

TENSORS = """
name: "t"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: 8
input [
  { name: "A" data_type: TYPE_FP32 dims: [ 3, -1 ] },
  { name: "B" data_type: TYPE_STRING dims: [ 1 ] optional: true }
]
output [ { name: "Y" data_type: TYPE_BF16 dims: [ 2 ] }, { name: "Z" data_type: TYPE_INT64 dims: [ -1 ] } ]
optimization { graph { level: -1 } }
model_transaction_policy { decoupled: true }
"""


def _names(message: type) -> set[str]:
    return {f.name for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


def _dataclasses_in(annotation: object) -> list[type]:
    """The dataclasses an annotation names: ``X``, ``X | None``, ``tuple[X, ...]``, ``Mapping[int, X]``."""
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return [annotation]
    return [c for arg in typing.get_args(annotation) for c in _dataclasses_in(arg)]


def _check_names(cls: type, message: Descriptor, path: str) -> list[str]:
    """Every field of ``cls`` (recursively) names a field of the protobuf message it maps."""
    wrong: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        where = f"{path}.{f.name}"
        proto = message.fields_by_name.get(f.name)
        if proto is None:
            wrong.append(f"{where} is not a field of {message.full_name}")
            continue
        nested = proto.message_type
        if nested is None:  # a scalar or an enum (data_type maps to codec.DataType)
            continue
        if nested.GetOptions().map_entry:
            nested = nested.fields_by_name["value"].message_type
            if nested is None:
                continue
        for inner in _dataclasses_in(hints[f.name]):
            wrong += _check_names(inner, nested, where)
    return wrong


def test_every_spec_field_is_named_as_in_the_config() -> None:
    assert _check_names(ModelSpec, mc.ModelConfig.DESCRIPTOR, "ModelSpec") == []


@dataclasses.dataclass
class _TypoGraph:
    levle: int = 0


@dataclasses.dataclass
class _TypoOptimization:
    graph: _TypoGraph | None = None


@dataclasses.dataclass
class _TypoPolicy:
    max_queue_sise: int = 0


@dataclasses.dataclass
class _TypoBatching:
    priority_queue_policy: Mapping[int, _TypoPolicy]


def test_the_name_check_catches_a_typo_at_any_depth() -> None:
    assert _check_names(_TypoOptimization, mc.ModelOptimizationPolicy.DESCRIPTOR, "o") == [
        "o.graph.levle is not a field of inference.ModelOptimizationPolicy.Graph"
    ]
    assert _check_names(_TypoBatching, mc.ModelDynamicBatching.DESCRIPTOR, "b") == [
        "b.priority_queue_policy.max_queue_sise is not a field of inference.ModelQueuePolicy"
    ]


def test_every_dynamic_batching_field_is_mapped_under_its_config_name() -> None:
    assert {f.name for f in dataclasses.fields(DynamicBatching)} == _names(mc.ModelDynamicBatching)
    assert {f.name for f in dataclasses.fields(QueuePolicy)} == _names(mc.ModelQueuePolicy)
    assert {f.name for f in dataclasses.fields(TransactionPolicy)} == _names(mc.ModelTransactionPolicy)
    assert {f.name for f in dataclasses.fields(Graph)} == _names(mc.ModelOptimizationPolicy.Graph)


def test_every_dynamic_batching_value_arrives() -> None:
    spec = model_spec(text_format.Parse(CONFIG, mc.ModelConfig()))
    assert spec.name == "m" and spec.max_batch_size == 16
    assert spec.dynamic_batching == DynamicBatching(
        preferred_batch_size=(4, 8),
        max_queue_delay_microseconds=250,
        preserve_ordering=True,
        priority_levels=3,
        default_priority_level=2,
        default_queue_policy=QueuePolicy("DELAY", 1000, True, 7),
        priority_queue_policy={1: QueuePolicy("REJECT", 5, False, 2)},
    )
    batching = spec.dynamic_batching
    assert batching.queue_policy(1) == QueuePolicy("REJECT", 5, False, 2)
    assert batching.queue_policy(3) is batching.default_queue_policy
    assert spec.instance_group == (InstanceGroup("g", "GPU", 2, (0, 1)), InstanceGroup("c", "CPU", 1))
    assert dict(spec.parameters) == {"inline_execution": "false"}


def test_every_tensor_and_backend_value_arrives() -> None:
    spec = model_spec(text_format.Parse(TENSORS, mc.ModelConfig()))
    assert (spec.platform, spec.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert spec.input == (
        Input("A", codec.BY_NAME["FP32"], (3, -1)),
        Input("B", codec.BY_NAME["BYTES"], (1,), optional=True),
    )
    assert spec.output == (Output("Y", codec.BY_NAME["BF16"], (2,)), Output("Z", codec.BY_NAME["INT64"], (-1,)))
    assert spec.input[0].data_type is codec.BY_NAME["FP32"]  # the codec's own objects
    assert spec.optimization == Optimization(Graph(level=-1))
    assert spec.model_transaction_policy == TransactionPolicy(decoupled=True)
    assert output_types(spec) == {"Y": codec.BY_NAME["BF16"], "Z": codec.BY_NAME["INT64"]}


def test_defaults_and_no_dynamic_batching() -> None:
    assert dynamic_batching(mc.ModelDynamicBatching()) == DynamicBatching()
    spec = model_spec(mc.ModelConfig(name="m"))
    assert spec.dynamic_batching is None
    assert (spec.platform, spec.backend, spec.input, spec.output) == ("", "", (), ())
    assert spec.optimization.graph.level == 0 and not spec.model_transaction_policy.decoupled


def test_a_tensor_without_a_datatype_is_refused() -> None:
    config = mc.ModelConfig(name="m")
    config.output.add(name="Y", dims=[1])
    with pytest.raises(ModelLoadError, match="output 'Y' has data_type TYPE_INVALID"):
        model_spec(config)


def test_the_spec_is_read_only() -> None:
    spec = model_spec(text_format.Parse(TENSORS, mc.ModelConfig()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.input[0].name = "other"  # type: ignore[misc]


def test_the_plan_carries_the_spec_of_the_completed_config(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.py").write_text("class TritonPythonModel:\n    pass\n")
    (tmp_path / "m" / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 4\ndynamic_batching { max_queue_delay_microseconds: 100 }\n'
        'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )
    plan = plan_model(Repository(tmp_path), "m")
    assert plan.spec == model_spec(plan.config)
    assert plan.spec.instance_group == (InstanceGroup("m_0", "CPU", 1),)  # completed by the loader
    assert plan.spec.dynamic_batching is not None and plan.spec.dynamic_batching.max_queue_delay_microseconds == 100
    assert plan.spec.backend == "python"
    assert plan.spec.input == (Input("X", codec.BY_NAME["FP32"], (1,)),)


class _Probe(Backend):
    name = "spec_probe"
    default_filename = "model.probe"

    def __init__(self, context: LoadContext) -> None:
        self.context = context

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        return {}


def test_every_instance_gets_the_plans_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._registered, _Probe.name, _Probe)
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.probe").write_text("")
    (tmp_path / "m" / "config.pbtxt").write_text(
        'backend: "spec_probe"\ninstance_group [ { count: 2 kind: KIND_CPU } ]\n'
        'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )
    repo = Repository(tmp_path)
    plan = plan_model(repo, "m")
    workers = load_workers(repo, plan, 1, None)
    try:
        contexts = [w.backend.context for w in workers]  # type: ignore[attr-defined]
        assert len(contexts) == 2 and all(c.spec is plan.spec for c in contexts)  # mapped once
    finally:
        for w in workers:
            w.close()


def test_a_context_built_by_hand_maps_its_config(tmp_path: Path) -> None:
    config = text_format.Parse(TENSORS, mc.ModelConfig())
    config.instance_group.add(count=3)
    ctx = LoadContext("t", 1, config, tmp_path, tmp_path, tmp_path / "model", Instance("t_0", "CPU"))
    assert ctx.spec == model_spec(config)
    assert default_threads(ctx.spec) == max(1, default_threads(model_spec(mc.ModelConfig())) // 3)


class _Recorder(Scheduler):
    def __init__(self) -> None:
        super().__init__([], ModelStats("v", "1"), "model 'v' version 1")
        self.work: list[Work] = []

    async def _run(self, work: Work) -> dict[str, np.ndarray]:
        self.work.append(work)
        return {}


async def test_the_version_reads_priority_timeout_and_decoupled_from_the_spec() -> None:
    config = text_format.Parse(
        'name: "v"\nmax_batch_size: 4\n'
        "dynamic_batching { priority_levels: 2 default_queue_policy { allow_timeout_override: true } }\n"
        'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n',
        mc.ModelConfig(),
    )
    spec = dataclasses.replace(model_spec(config), model_transaction_policy=TransactionPolicy(decoupled=True))
    scheduler = _Recorder()
    # An empty protobuf config: everything the version serves by comes from the spec.
    version = ModelVersion(
        "v", 1, mc.ModelConfig(), spec, cfg.signature(config, "test"), "", scheduler, scheduler.stats
    )
    assert version.decoupled
    x = {"X": np.zeros((1, 1), np.float32)}
    with pytest.raises(InvalidArgument, match="priority_levels"):
        await version.infer(InferRequest("v", x, parameters={"priority": 3}))
    await version.infer(InferRequest("v", x, parameters={"priority": 2, "timeout": 5}))
    [work] = scheduler.work
    assert work.priority == 2 and work.deadline_ns is not None and not work.client_deadline


async def test_without_dynamic_batching_there_is_no_override_or_level_limit() -> None:
    config = text_format.Parse(
        'name: "v"\ninput [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n',
        mc.ModelConfig(),
    )
    scheduler = _Recorder()
    version = ModelVersion(
        "v", 1, config, model_spec(config), cfg.signature(config, "test"), "", scheduler, scheduler.stats
    )
    assert not version.decoupled
    await version.infer(InferRequest("v", {"X": np.zeros(1, np.float32)}, parameters={"priority": 9, "timeout": 5}))
    [work] = scheduler.work
    assert work.priority == 9 and work.deadline_ns is None
