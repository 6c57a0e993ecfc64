"""The typed view of config.pbtxt (server/model_spec.py): every field schedulers read arrives,
named as in the config, and the loader maps the completed config once, into its plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from google.protobuf import text_format
from inferd.protocol.pb import model_config_pb2 as mc
from inferd.server.loader import plan_model
from inferd.server.model_spec import (
    DynamicBatching,
    InstanceGroup,
    QueuePolicy,
    dynamic_batching,
    model_spec,
)
from inferd.server.repository import Repository

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


def _names(message: type) -> set[str]:
    return {f.name for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


def test_every_dynamic_batching_field_is_mapped_under_its_config_name() -> None:
    assert {f.name for f in dataclasses.fields(DynamicBatching)} == _names(mc.ModelDynamicBatching)
    assert {f.name for f in dataclasses.fields(QueuePolicy)} == _names(mc.ModelQueuePolicy)


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


def test_defaults_and_no_dynamic_batching() -> None:
    assert dynamic_batching(mc.ModelDynamicBatching()) == DynamicBatching()
    assert model_spec(mc.ModelConfig(name="m")).dynamic_batching is None


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
