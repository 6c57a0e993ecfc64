"""Builds the bundled models reproducibly (seeded weights):
``python model_repository/build.py [REPOSITORY [FRAMEWORKS_REPOSITORY]]``.

The model files are committed so the server runs without a build step; this script is how they
were made. Tests import the builder functions to make their own copies on the fly. torch and
tensorflow are imported only by the builders that need them (``inferd[torch]``,
``inferd[tensorflow]``); their models go to ``examples/frameworks/`` and are skipped when the
framework is not installed.
The Python model (``dense_classify/1/model.py``) is source, not built.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
# The torch and TensorFlow examples live in a second repository, so that the bundled one serves
# (every model READY) with the core install alone; `make serve FRAMEWORKS=all` serves both.
FRAMEWORKS_REPOSITORY = HERE.parent / "examples" / "frameworks"
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


def dense_model(
    features: int = 64, hidden: int = 256, layers: int = 2, classes: int = 10, seed: int = 0
) -> onnx.ModelProto:
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


def mlp_weights(
    features: int = 64, hidden: int = 256, layers: int = 2, classes: int = 10, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (W [in, out], b) pairs of :func:`dense_model`, drawn in the same order, so every
    framework's MLP below computes the same function as the ONNX one for the same arguments."""
    rng = np.random.default_rng(seed)
    weights, width = [], features
    for _ in range(layers):
        w = (rng.standard_normal((width, hidden)) / np.sqrt(width)).astype(np.float32)
        weights.append((w, np.zeros(hidden, np.float32)))
        width = hidden
    w = (rng.standard_normal((width, classes)) / np.sqrt(width)).astype(np.float32)
    weights.append((w, np.zeros(classes, np.float32)))
    return weights


def torch_mlp(features: int = 64, hidden: int = 32, layers: int = 2, classes: int = 10, seed: int = 0) -> Any:
    """The MLP as a scripted ``torch.nn.Module``: ``forward(x)`` -> softmax probabilities."""
    import torch

    class MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            linears = []
            for w, b in mlp_weights(features, hidden, layers, classes, seed):
                linear = torch.nn.Linear(w.shape[0], w.shape[1])
                linear.weight.data = torch.from_numpy(w.T.copy())
                linear.bias.data = torch.from_numpy(b)
                linears.append(linear)
            body: list[torch.nn.Module] = []
            for linear in linears[:-1]:
                body += [linear, torch.nn.ReLU()]
            self.body = torch.nn.Sequential(*body)
            self.head = linears[-1]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.head(self.body(x)), dim=1)

    return torch.jit.script(MLP().eval())


def save_torchscript(module: Any, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(module, str(path))


def tf_mlp(features: int = 64, hidden: int = 32, layers: int = 2, classes: int = 10, seed: int = 0) -> Any:
    """The MLP as a ``tf.Module`` whose ``serve`` signature maps ``INPUT`` to ``PROBS``."""
    import tensorflow as tf

    class MLP(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            pairs = mlp_weights(features, hidden, layers, classes, seed)
            self.w = [tf.Variable(w, trainable=False) for w, _ in pairs]
            self.b = [tf.Variable(b, trainable=False) for _, b in pairs]

        @tf.function(input_signature=[tf.TensorSpec([None, features], tf.float32, name="INPUT")])
        def serve(self, INPUT: Any) -> dict[str, Any]:  # noqa: N803 (the tensor's name)
            x = INPUT
            for w, b in zip(self.w[:-1], self.b[:-1]):
                x = tf.nn.relu(tf.matmul(x, w) + b)
            return {"PROBS": tf.nn.softmax(tf.matmul(x, self.w[-1]) + self.b[-1], axis=1)}

    return MLP()


def save_savedmodel(module: Any, path: Path, signatures: dict[str, Any] | None = None) -> None:
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(path), signatures=signatures or {"serving_default": module.serve})


TORCH_MLP_CONFIG = """\
name: "torch_mlp"
platform: "pytorch_libtorch"
max_batch_size: 32
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching { max_queue_delay_microseconds: 500 }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

# Everything else (tensors, datatypes, dims, batching) auto-completes from the signature.
TF_MLP_CONFIG = """\
name: "tf_mlp"
platform: "tensorflow_savedmodel"
"""


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def build(root: Path = HERE, frameworks_root: Path = FRAMEWORKS_REPOSITORY) -> None:
    _save(add_sub_model(), root / "add_sub" / "1" / "model.onnx")
    (root / "add_sub" / "config.pbtxt").write_text(ADD_SUB_CONFIG)
    _save(dense_model(), root / "dense" / "1" / "model.onnx")
    (root / "dense" / "config.pbtxt").write_text(DENSE_CONFIG)
    if _have("torch"):
        save_torchscript(torch_mlp(), frameworks_root / "torch_mlp" / "1" / "model.pt")
        (frameworks_root / "torch_mlp" / "config.pbtxt").write_text(TORCH_MLP_CONFIG)
    else:
        print("torch is not installed: torch_mlp not rebuilt (pip install 'inferd[torch]')")
    if _have("tensorflow"):
        save_savedmodel(tf_mlp(), frameworks_root / "tf_mlp" / "1" / "model.savedmodel")
        (frameworks_root / "tf_mlp" / "config.pbtxt").write_text(TF_MLP_CONFIG)
    else:
        print("tensorflow is not installed: tf_mlp not rebuilt (pip install 'inferd[tensorflow]')")


if __name__ == "__main__":
    build(*(Path(arg) for arg in sys.argv[1:3]))
