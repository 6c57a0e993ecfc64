"""Triton's example model repository (triton-inference-server/server, docs/examples/model_repository),
rebuilt small: each model has the config Triton ships, with a tiny seeded ONNX graph or a Python
model behind it. The image classifiers keep Triton's tensor names, formats, ``reshape`` and
``label_filename`` but see 16x16 images; they classify an image by its dominant colour, so a test
knows which label a picture must get. ``preprocess_inception_ensemble`` stands in for the image
ensemble Triton's ensemble_image_client.py asks for: a Python step decodes and scales the image,
a batching classifier labels it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from .models import OPSET, write

SIZE = 16  # the classifiers' height and width (Triton's models take 224 and 299)
DENSENET_CLASSES = 1000
INCEPTION_CLASSES = 1001
# Where the colours sit among the classes; every other class gets a made-up label.
COLOUR_CLASSES = {"RED": 7, "GREEN": 23, "BLUE": 511}


def _simple_config(name: str, data_type: str, platform: str = "onnxruntime_onnx") -> str:
    def tensors(kind: str) -> str:
        return ",\n".join(f'  {{ name: "{kind}{i}" data_type: {data_type} dims: [ 16 ] }}' for i in range(2))

    return (
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: 8\n'
        f"input [\n{tensors('INPUT')}\n]\noutput [\n{tensors('OUTPUT')}\n]\n"
    )


def add_sub_model(elem_type: int) -> onnx.ModelProto:
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 over [batch, 16], as Triton's ``simple``."""
    shape = ["batch", 16]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "simple",
        [helper.make_tensor_value_info(n, elem_type, shape) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, elem_type, shape) for n in ("OUTPUT0", "OUTPUT1")],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def string_add_sub_model() -> onnx.ModelProto:
    """``simple_string``: strings holding integers, added and subtracted, answered as strings."""
    shape = ["batch", 16]
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
            helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Sub", ["a", "b"], ["difference"]),
            helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
            helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=TensorProto.STRING),
        ],
        "simple_string",
        [helper.make_tensor_value_info(n, TensorProto.STRING, shape) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, TensorProto.STRING, shape) for n in ("OUTPUT0", "OUTPUT1")],
    )
    return helper.make_model(graph, opset_imports=OPSET)


IDENTITY_CONFIG = """name: "simple_identity"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
"""

IDENTITY_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Answers each request with the tensor it sent."""

    def execute(self, requests):
        answers = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", tensor.as_numpy())]))
        return answers
'''


def _colour_weights(rng: np.random.Generator, classes: int) -> np.ndarray:
    """[3, classes]: colour channel c votes 1 for its class, every other weight is small noise."""
    weights = rng.uniform(-0.2, 0.2, size=(3, classes)).astype(np.float32)
    for channel, index in enumerate(COLOUR_CLASSES.values()):
        weights[:, index] = -0.2
        weights[channel, index] = 1.0
    return weights


def _features(image: str) -> list[onnx.NodeProto]:
    """A seeded 3x3 conv (mostly the identity) and ReLU, then global average pooling: NCHW in,
    [N, 3, 1, 1] out."""
    return [
        helper.make_node("Conv", [image, "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
    ]


def _conv_initializers(rng: np.random.Generator) -> list[onnx.TensorProto]:
    kernel = rng.uniform(-0.02, 0.02, size=(3, 3, 3, 3)).astype(np.float32)
    for c in range(3):
        kernel[c, c, 1, 1] = 1.0
    return [numpy_helper.from_array(kernel, "conv_w"), numpy_helper.from_array(np.zeros(3, np.float32), "conv_b")]


def densenet_model(seed: int = 0) -> onnx.ModelProto:
    """``densenet_onnx``: data_0 [1, 3, H, W] (NCHW) -> fc6_1 [1, 1000, 1, 1], as the real one."""
    rng = np.random.default_rng(seed)
    init = _conv_initializers(rng)
    fc = _colour_weights(rng, DENSENET_CLASSES).T.reshape(DENSENET_CLASSES, 3, 1, 1)
    init.append(numpy_helper.from_array(fc, "fc_w"))
    nodes = [*_features("data_0"), helper.make_node("Conv", ["pooled", "fc_w"], ["fc6_1"])]
    graph = helper.make_graph(
        nodes,
        "densenet_tiny",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, DENSENET_CLASSES, 1, 1])],
        init,
    )
    return helper.make_model(graph, opset_imports=OPSET)


INCEPTION_INPUT = "input:0"
INCEPTION_OUTPUT = "InceptionV3/Predictions/Softmax:0"


def inception_model(batch: int | str = 1, seed: int = 1) -> onnx.ModelProto:
    """``inception_onnx``: input:0 [N, H, W, 3] (NHWC) -> softmax over 1001 classes [N, 1001]."""
    rng = np.random.default_rng(seed)
    init = [*_conv_initializers(rng), numpy_helper.from_array(_colour_weights(rng, INCEPTION_CLASSES), "fc_w")]
    nodes = [
        helper.make_node("Transpose", [INCEPTION_INPUT], ["nchw"], perm=[0, 3, 1, 2]),
        *_features("nchw"),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc_w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [INCEPTION_OUTPUT], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "inception_tiny",
        [helper.make_tensor_value_info(INCEPTION_INPUT, TensorProto.FLOAT, [batch, SIZE, SIZE, 3])],
        [helper.make_tensor_value_info(INCEPTION_OUTPUT, TensorProto.FLOAT, [batch, INCEPTION_CLASSES])],
        init,
    )
    return helper.make_model(graph, opset_imports=OPSET)


DENSENET_CONFIG = f"""name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {{
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, {SIZE}, {SIZE} ]
    reshape {{ shape: [ 1, 3, {SIZE}, {SIZE} ] }}
  }}
]
output [
  {{
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ {DENSENET_CLASSES} ]
    reshape {{ shape: [ 1, {DENSENET_CLASSES}, 1, 1 ] }}
    label_filename: "densenet_labels.txt"
  }}
]
"""

INCEPTION_CONFIG = f"""name: "inception_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {{
    name: "{INCEPTION_INPUT}"
    data_type: TYPE_FP32
    format: FORMAT_NHWC
    dims: [ {SIZE}, {SIZE}, 3 ]
    reshape {{ shape: [ 1, {SIZE}, {SIZE}, 3 ] }}
  }}
]
output [
  {{
    name: "{INCEPTION_OUTPUT}"
    data_type: TYPE_FP32
    dims: [ {INCEPTION_CLASSES} ]
    reshape {{ shape: [ 1, {INCEPTION_CLASSES} ] }}
    label_filename: "inception_labels.txt"
  }}
]
"""

# The ensemble's classifier: inception_onnx's tensors, with a batch dimension instead of reshape.
CLASSIFIER_CONFIG = f"""name: "inception_classifier"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "{INCEPTION_INPUT}" data_type: TYPE_FP32 format: FORMAT_NHWC dims: [ {SIZE}, {SIZE}, 3 ] }} ]
output [ {{ name: "{INCEPTION_OUTPUT}" data_type: TYPE_FP32 dims: [ {INCEPTION_CLASSES} ] label_filename: "inception_labels.txt" }} ]
"""

PREPROCESS_CONFIG = f"""name: "image_preprocess"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ {SIZE}, {SIZE}, 3 ] }} ]
"""

PREPROCESS_PY = f'''
import io

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image


class TritonPythonModel:
    """Encoded images (one per batch item) -> RGB, resized, scaled to [-1, 1], HWC."""

    def execute(self, requests):
        answers = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            images = []
            for item in encoded.reshape(-1):
                image = Image.open(io.BytesIO(item)).convert("RGB").resize(({SIZE}, {SIZE}), Image.BILINEAR)
                images.append(np.asarray(image, dtype=np.float32) / 127.5 - 1)
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", np.stack(images))]))
        return answers
'''

ENSEMBLE_CONFIG = f"""name: "preprocess_inception_ensemble"
platform: "ensemble"
max_batch_size: 8
input [ {{ name: "INPUT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ {INCEPTION_CLASSES} ] }} ]
ensemble_scheduling {{
  step [
    {{
      model_name: "image_preprocess"
      model_version: -1
      input_map {{ key: "INPUT" value: "INPUT" }}
      output_map {{ key: "OUTPUT" value: "preprocessed_image" }}
    }},
    {{
      model_name: "inception_classifier"
      model_version: -1
      input_map {{ key: "{INCEPTION_INPUT}" value: "preprocessed_image" }}
      output_map {{ key: "{INCEPTION_OUTPUT}" value: "OUTPUT" }}
    }}
  ]
}}
"""


def labels(classes: int) -> list[str]:
    names = [f"CLASS {i}" for i in range(classes)]
    for label, index in COLOUR_CLASSES.items():
        names[index] = label
    return names


def _labelled(folder: Path, filename: str, classes: int) -> None:
    (folder / filename).write_text("\n".join(labels(classes)) + "\n")


def build_example_repository(repo: Path) -> Path:
    """Triton's example repository as rebuilt here; returns ``repo``."""
    write(repo, "simple", _simple_config("simple", "TYPE_INT32"), add_sub_model(TensorProto.INT32))
    write(repo, "simple_int8", _simple_config("simple_int8", "TYPE_INT8"), add_sub_model(TensorProto.INT8))
    write(repo, "simple_string", _simple_config("simple_string", "TYPE_STRING"), string_add_sub_model())
    identity = write(repo, "simple_identity", IDENTITY_CONFIG, None)
    (identity / "1").mkdir()
    (identity / "1" / "model.py").write_text(IDENTITY_PY)
    _labelled(write(repo, "densenet_onnx", DENSENET_CONFIG, densenet_model()), "densenet_labels.txt", DENSENET_CLASSES)
    inception = write(repo, "inception_onnx", INCEPTION_CONFIG, inception_model())
    _labelled(inception, "inception_labels.txt", INCEPTION_CLASSES)
    classifier = write(repo, "inception_classifier", CLASSIFIER_CONFIG, inception_model("batch"))
    _labelled(classifier, "inception_labels.txt", INCEPTION_CLASSES)
    preprocess = write(repo, "image_preprocess", PREPROCESS_CONFIG, None)
    (preprocess / "1").mkdir()
    (preprocess / "1" / "model.py").write_text(PREPROCESS_PY)
    write(repo, "preprocess_inception_ensemble", ENSEMBLE_CONFIG, None)
    (repo / "preprocess_inception_ensemble" / "1").mkdir()
    return repo


def write_images(folder: Path) -> dict[str, str]:
    """Three pictures, a different size and format each, mostly one colour with seeded noise;
    returns {file name: the label it must get}, in the sorted order the clients send them."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    pictures = {
        "a_red.jpg": ("RED", (40, 30), "JPEG"),
        "b_green.png": ("GREEN", (20, 20), "PNG"),
        "c_blue.bmp": ("BLUE", (33, 50), "BMP"),
    }
    expected = {}
    for name, (label, (w, h), fmt) in pictures.items():
        pixels = rng.integers(0, 60, size=(h, w, 3))
        pixels[..., list(COLOUR_CLASSES).index(label)] += 190
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8), "RGB").save(buffer, format=fmt)
        (folder / name).write_bytes(buffer.getvalue())
        expected[name] = label
    return expected
