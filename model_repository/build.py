"""Builds the bundled ONNX models reproducibly (seeded weights): ``python model_repository/build.py``.

The .onnx files are committed so the server runs without a build step; this script is how they
were made. Tests import the builder functions to make their own copies on the fly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OPSET = [helper.make_opsetid("", 17)]


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def add_sub_model(elem_type: int = TensorProto.FLOAT, size: int = 16, batch: bool = True) -> onnx.ModelProto:
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (the classic element-wise example)."""
    shape: list[int | str] = (["batch"] if batch else []) + [size]
    inputs = [helper.make_tensor_value_info(n, elem_type, shape) for n in ("INPUT0", "INPUT1")]
    outputs = [helper.make_tensor_value_info(n, elem_type, shape) for n in ("OUTPUT0", "OUTPUT1")]
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    graph = helper.make_graph(nodes, "add_sub", inputs, outputs)
    return helper.make_model(graph, opset_imports=OPSET, producer_name="inferd")


def dense_model(features: int = 64, hidden: int = 256, layers: int = 2, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """A small MLP classifier: FP32 [batch, features] -> softmax probabilities [batch, classes]."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    prev, width = "INPUT", features
    for i in range(layers):
        w = (rng.standard_normal((width, hidden)) / np.sqrt(width)).astype(np.float32)
        b = np.zeros(hidden, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"h{i}"]),
            helper.make_node("Relu", [f"h{i}"], [f"r{i}"]),
        ]
        prev, width = f"r{i}", hidden
    w = (rng.standard_normal((width, classes)) / np.sqrt(width)).astype(np.float32)
    inits += [numpy_helper.from_array(w, "wout"), numpy_helper.from_array(np.zeros(classes, np.float32), "bout")]
    nodes += [
        helper.make_node("Gemm", [prev, "wout", "bout"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["PROBS"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("PROBS", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=OPSET, producer_name="inferd")


ADD_SUB_CONFIG = """\
name: "add_sub"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

DENSE_CONFIG = """\
name: "dense"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "PROBS" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching {
  preferred_batch_size: [ 16, 32, 64 ]
  max_queue_delay_microseconds: 500
}
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def build(root: Path = HERE) -> None:
    _save(add_sub_model(), root / "add_sub" / "1" / "model.onnx")
    (root / "add_sub" / "config.pbtxt").write_text(ADD_SUB_CONFIG)
    _save(dense_model(), root / "dense" / "1" / "model.onnx")
    (root / "dense" / "config.pbtxt").write_text(DENSE_CONFIG)


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
