"""The models of ``inferd perf bench triton``, written on the fly into a model repository per
server, so that NVIDIA's Triton and inferd run the same files (seeded weights, nothing downloaded):

* ``add_sub`` (Python backend): Triton's python_backend example, OUTPUT0 = INPUT0 + INPUT1 and
  OUTPUT1 = INPUT0 - INPUT1 on FP32 [4], no batching: the cost of a request through the server
  and the Python model API, with almost no compute.
* ``mlp`` (Python backend): an MLP 512 -> 1024 -> 1024 -> 1000 (ReLU between) that the model
  runs with onnxruntime on one thread, written as a batching Python model is: ``execute``
  concatenates every request of the call, runs once and splits the output per request.
* ``add_sub_onnx`` and ``mlp_onnx`` (inferd only: the Triton of the pytriton wheel has no ONNX
  Runtime backend): the same computations as ONNX graphs on inferd's onnxruntime backend, with
  one intra-op thread like the Python model's session.

The two flavours of a Python model differ only in the line importing the model API
(``triton_python_backend_utils`` or ``inferd.backends.python_api``); their config.pbtxt files
are identical. ``onnx`` and numpy are imported only when a repository is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import onnx

Flavour = Literal["triton", "inferd"]

IMPORTS: dict[str, str] = {
    "triton": "import triton_python_backend_utils as pb_utils",
    "inferd": "import inferd.backends.python_api as pb_utils",
}
# The MLP's layer widths: input, hidden..., output.
MLP_WIDTHS = (512, 1024, 1024, 1000)
MLP_MAX_BATCH = 64
ADD_SUB_SIZE = 4
# ONNX opset and IR version that both onnxruntime builds (inferd's and Triton's venv) read.
OPSET = 17
IR_VERSION = 8

_IMPORT_MARK = "{pb_utils_import}"

ADD_SUB_PY = f'''"""add_sub: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (Triton's python_backend example)."""

import numpy as np
{_IMPORT_MARK}


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            out0 = pb_utils.Tensor("OUTPUT0", (in0 + in1).astype(np.float32))
            out1 = pb_utils.Tensor("OUTPUT1", (in0 - in1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out0, out1]))
        return responses
'''

MLP_PY = f'''"""mlp: model.onnx beside this file, run by onnxruntime on one thread; every request of a call
goes through one run (the dynamic batcher's batch), and the output is split per request."""

import os

import numpy as np
import onnxruntime as ort
{_IMPORT_MARK}


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
        batch = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)
        (output,) = self.session.run(["OUTPUT0"], {{"INPUT0": batch}})
        responses = []
        start = 0
        for x in inputs:
            end = start + len(x)
            out = pb_utils.Tensor("OUTPUT0", output[start:end])
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start = end
        return responses
'''

_ONE_THREAD = """parameters { key: "intra_op_thread_count" value { string_value: "1" } }
parameters { key: "inter_op_thread_count" value { string_value: "1" } }
"""


def add_sub_config(name: str, head: str) -> str:
    """config.pbtxt of an add_sub model; ``head`` names its backend or platform."""
    d = ADD_SUB_SIZE
    return f'''name: "{name}"
{head}
max_batch_size: 0
input [
  {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {d} ] }},
  {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ {d} ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {d} ] }},
  {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ {d} ] }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
'''


def mlp_config(name: str, head: str) -> str:
    """config.pbtxt of an MLP model: batching up to MLP_MAX_BATCH rows, dynamic batching."""
    return f'''name: "{name}"
{head}
max_batch_size: {MLP_MAX_BATCH}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {MLP_WIDTHS[0]} ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {MLP_WIDTHS[-1]} ] }} ]
dynamic_batching {{ }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
'''


def model_py(template: str, flavour: Flavour) -> str:
    """A Python model's source for Triton or for inferd: only the import line differs."""
    return template.replace(_IMPORT_MARK, IMPORTS[flavour])


def mlp_weights(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight [fan_in, fan_out], bias [fan_out]) per layer, scaled by 1/sqrt(fan_in) so that
    activations keep their size through the layers."""
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in zip(MLP_WIDTHS[:-1], MLP_WIDTHS[1:]):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        layers.append((w, b))
    return layers


def mlp_reference(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The MLP in numpy: what model.onnx computes."""
    h = x.astype(np.float32)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="inferd")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def mlp_onnx(layers: list[tuple[np.ndarray, np.ndarray]]) -> onnx.ModelProto:
    """INPUT0 FP32 [batch, 512] -> OUTPUT0 FP32 [batch, 1000]: Gemm, Relu, ..., Gemm."""
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes, prev = [], [], "INPUT0"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(layers) - 1
        out = "OUTPUT0" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            prev = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", MLP_WIDTHS[0]])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", MLP_WIDTHS[-1]])],
        initializer=inits,
    )
    return _model(graph)


def add_sub_onnx() -> onnx.ModelProto:
    """add_sub as an ONNX graph on FP32 [4] (no batch dimension, as max_batch_size 0)."""
    from onnx import TensorProto, helper

    def info(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [ADD_SUB_SIZE])

    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    graph = helper.make_graph(nodes, "add_sub", [info("INPUT0"), info("INPUT1")], [info("OUTPUT0"), info("OUTPUT1")])
    return _model(graph)


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)


def build(root: Path, flavour: Flavour, seed: int = 0) -> Path:
    """Write the repository for one server under ``root`` and return it: add_sub and mlp as
    Python models of ``flavour``, and for inferd also add_sub_onnx and mlp_onnx."""
    python = 'backend: "python"'
    mlp_file = mlp_onnx(mlp_weights(seed)).SerializeToString()
    _write(root / "add_sub" / "config.pbtxt", add_sub_config("add_sub", python))
    _write(root / "add_sub" / "1" / "model.py", model_py(ADD_SUB_PY, flavour))
    _write(root / "mlp" / "config.pbtxt", mlp_config("mlp", python))
    _write(root / "mlp" / "1" / "model.py", model_py(MLP_PY, flavour))
    _write(root / "mlp" / "1" / "model.onnx", mlp_file)
    if flavour == "inferd":
        onnx_head = 'platform: "onnxruntime_onnx"'
        _write(root / "add_sub_onnx" / "config.pbtxt", add_sub_config("add_sub_onnx", onnx_head) + _ONE_THREAD)
        _write(root / "add_sub_onnx" / "1" / "model.onnx", add_sub_onnx().SerializeToString())
        _write(root / "mlp_onnx" / "config.pbtxt", mlp_config("mlp_onnx", onnx_head) + _ONE_THREAD)
        _write(root / "mlp_onnx" / "1" / "model.onnx", mlp_file)
    return root
