"""config.pbtxt parsing and validation: every error names the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from inferd.protocol.errors import ModelLoadError
from inferd.protocol.messages import message_to_dict
from inferd.protocol.pb import model_config_pb2 as mc
from inferd.server import config as cfg


def load(tmp_path: Path, text: str) -> cfg.ModelConfig:
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "m" / "config.pbtxt").write_text(text)
    config, found = cfg.read_config(tmp_path / "m")
    assert found
    return config


def test_parse_and_signature(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        max_batch_size: 4
        input [ { name: "A" data_type: TYPE_FP32 dims: [ -1, 3 ] optional: true } ]
        output [ { name: "B" data_type: TYPE_STRING dims: [ 1 ] } ]
        dynamic_batching { preferred_batch_size: [ 2, 4 ] }
    """,
    )
    cfg.check_name(config, "m", "src")
    assert config.name == "m"
    sig = cfg.signature(config, "src")
    assert sig.inputs["A"].dims == (-1, 3) and sig.inputs["A"].optional
    assert sig.outputs["B"].datatype.name == "BYTES"


def test_syntax_error_names_file_and_position(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as e:
        load(tmp_path, "max_batch_size: lots\n")
    assert "config.pbtxt" in str(e.value) and "1:" in str(e.value) and "max_batch_size" in str(e.value)


def test_unknown_field(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="max_batch"):
        load(tmp_path, "max_batch: 4\n")


@pytest.mark.parametrize(
    "text,words",
    [
        ('input [ { name: "A" dims: [ 1 ] } ] output [ { name: "B" data_type: TYPE_FP32 dims: [ 1 ] } ]', "data_type"),
        (
            'input [ { name: "A" data_type: TYPE_FP32 dims: [ 0 ] } ] output [ { name: "B" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "dims",
        ),
        (
            'input [ { name: "A" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "A" data_type: TYPE_FP32 dims: [ 1 ] } ] '
            'output [ { name: "B" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "duplicate input",
        ),
        ('input [ { name: "A" data_type: TYPE_FP32 dims: [ 1 ] } ]', "no 'output'"),
        (
            'max_batch_size: 0 dynamic_batching { } input [ { name: "A" data_type: TYPE_FP32 dims: [ 1 ] } ] '
            'output [ { name: "B" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "max_batch_size",
        ),
        (
            'max_batch_size: 4 dynamic_batching { preferred_batch_size: 8 } input [ { name: "A" data_type: TYPE_FP32 dims: [ 1 ] } ] '
            'output [ { name: "B" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "preferred_batch_size",
        ),
    ],
)
def test_invalid_configs(tmp_path: Path, text: str, words: str) -> None:
    config = load(tmp_path, text)
    with pytest.raises(ModelLoadError, match=words) as e:
        cfg.signature(config, str(tmp_path / "m" / "config.pbtxt"))
    assert "config.pbtxt" in str(e.value)


def test_name_mismatch(tmp_path: Path) -> None:
    config = load(tmp_path, 'name: "other"')
    with pytest.raises(ModelLoadError, match="'other'.*'m'"):
        cfg.check_name(config, "m", "src")


def test_message_to_dict_writes_64_bit_integers_as_numbers() -> None:
    """Triton's JSON has numbers where protobuf's JSON writes strings (on protobuf 6 and 7 alike)."""
    config = mc.ModelConfig(name="m", max_batch_size=8)
    config.input.add(name="x", dims=[-1, 3])
    config.dynamic_batching.max_queue_delay_microseconds = 500
    config.dynamic_batching.priority_queue_policy[1].default_timeout_microseconds = 7
    doc = message_to_dict(config)
    assert doc["input"][0]["dims"] == [-1, 3]
    assert doc["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    assert doc["dynamic_batching"]["priority_queue_policy"]["1"]["default_timeout_microseconds"] == 7
    assert doc["max_batch_size"] == 8 and doc["name"] == "m"
