"""Test models, built on the fly (tiny, seeded) into a temporary model repository."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("inferd_bundled_models", ROOT / "model_repository" / "build.py")
bundled = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(bundled)  # type: ignore[union-attr]

OPSET = bundled.OPSET
# An ensemble of two add_sub steps (the bundled model): OUT = (A + B) + (A - B).
ADD_TWICE = """\
name: "add_twice"
platform: "ensemble"
max_batch_size: 8
input [ { name: "A" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "B" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 16 ] } ]
ensemble_scheduling { step [
  { model_name: "add_sub" model_version: -1
    input_map { key: "INPUT0" value: "A" } input_map { key: "INPUT1" value: "B" }
    output_map { key: "OUTPUT0" value: "sum" } output_map { key: "OUTPUT1" value: "diff" } },
  { model_name: "add_sub" model_version: -1
    input_map { key: "INPUT0" value: "sum" } input_map { key: "INPUT1" value: "diff" }
    output_map { key: "OUTPUT0" value: "OUT" } }
] }
"""


def save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write(repo: Path, name: str, config: str | None, model: onnx.ModelProto | None, version: int = 1) -> Path:
    folder = repo / name
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    if model is not None:
        save(model, folder / str(version) / "model.onnx")
    return folder


def write_python(repo: Path, name: str, config: str, code: str | None = None) -> Path:
    """A model folder with ``config.pbtxt`` and version 1: its ``model.py`` (a Python model) or
    nothing (an ensemble)."""
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    if code is not None:
        (folder / "1" / "model.py").write_text(code)
    (folder / "config.pbtxt").write_text(config)
    return folder


def binary_model(op: str, elem_type: int, size: int = 4) -> onnx.ModelProto:
    """OUTPUT0 = op(INPUT0, INPUT1) over [batch, size]."""
    shape = ["batch", size]
    graph = helper.make_graph(
        [helper.make_node(op, ["INPUT0", "INPUT1"], ["OUTPUT0"])],
        op.lower(),
        [helper.make_tensor_value_info(n, elem_type, shape) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info("OUTPUT0", elem_type, shape)],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def string_identity_model() -> onnx.ModelProto:
    shape = ["batch", 2]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "strings",
        [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, shape)],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, shape)],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def _config(
    name: str, dtype: str, size: int, inputs: int = 2, outputs: int = 1, max_batch: int = 8, extra: str = ""
) -> str:
    ins = ",\n".join(f'  {{ name: "INPUT{i}" data_type: {dtype} dims: [ {size} ] }}' for i in range(inputs))
    outs = ",\n".join(f'  {{ name: "OUTPUT{i}" data_type: {dtype} dims: [ {size} ] }}' for i in range(outputs))
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch}\n'
        f"input [\n{ins}\n]\noutput [\n{outs}\n]\n{extra}"
    )


def build_repository(repo: Path) -> Path:
    """The shared test repository: one model per datatype, batching variants and broken ones."""
    write(repo, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    write(repo, "add_int64", _config("add_int64", "TYPE_INT64", 4), binary_model("Add", TensorProto.INT64))
    write(repo, "add_fp16", _config("add_fp16", "TYPE_FP16", 4), binary_model("Add", TensorProto.FLOAT16))
    write(repo, "and_bool", _config("and_bool", "TYPE_BOOL", 4), binary_model("And", TensorProto.BOOL))
    write(repo, "strings", _config("strings", "TYPE_STRING", 2, inputs=1), string_identity_model())
    write(repo, "dense", bundled.DENSE_CONFIG, bundled.dense_model())
    # No config.pbtxt: everything comes from the graph (auto-complete).
    write(repo, "auto_add", None, binary_model("Add", TensorProto.FLOAT, 3))
    # Broken on purpose: each must be UNAVAILABLE with its reason while the others serve.
    write(repo, "bad_pbtxt", 'name: "bad_pbtxt"\nmax_batch_size: eight\n', binary_model("Add", TensorProto.FLOAT))
    write(repo, "missing_file", _config("missing_file", "TYPE_FP32", 4), None)
    (repo / "missing_file" / "1").mkdir(exist_ok=True)
    write(repo, "name_mismatch", _config("other_name", "TYPE_FP32", 4), binary_model("Add", TensorProto.FLOAT))
    return repo
