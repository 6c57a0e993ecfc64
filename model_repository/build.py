"""Builds the bundled models reproducibly (seeded weights):
``python model_repository/build.py [REPOSITORY [FRAMEWORKS_REPOSITORY]]``.

The model files are committed so the server runs without a build step; this script is how they
were made. Tests import the builder functions to make their own copies on the fly. torch and
tensorflow are imported only by the builders that need them (``inferd[torch]``,
``inferd[tensorflow]``); their models go to ``examples/frameworks/`` and are skipped when the
framework is not installed.
The Python models (``dense_classify/1/model.py``, ``charlm/1/model.py``, ...) are source, not built.

``charlm`` is a character-level GRU language model trained here, in numpy, on
``charlm_corpus.txt`` (the first 40 KB of Shakespeare's *Coriolanus*, public domain, as excerpted
in karpathy/char-rnn's ``tinyshakespeare``): about 15 s on 2 CPUs, seeded. Its one-token step is
exported to ONNX (``charlm_step/1/model.onnx``, the same bytes as ``charlm/1/step.onnx``); a
re-run reuses the trained step while the corpus and the training settings are unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

# The GRU's matrices are small: BLAS threads only contend with each other on a shared machine
# (training ran 3-5x slower with them). Set before numpy loads; a caller's own choice wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

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


# --- charlm: a character-level GRU language model -----------------------------------------
CHARLM_CORPUS = HERE / "charlm_corpus.txt"
# Printable ASCII and the newline: token i is CHARLM_VOCAB[i]. Other characters read as a space.
CHARLM_VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))


class CharLMTraining(NamedTuple):
    """Truncated backpropagation through time with Adam, on ``batch`` contiguous streams of
    the corpus, ``seq`` characters per step; the state is carried from step to step."""

    hidden: int = 128
    steps: int = 700
    batch: int = 32
    seq: int = 32
    lr: float = 4e-3
    clip: float = 5.0
    seed: int = 0

    def key(self, text: str) -> str:
        """What a trained step depends on: a re-run with the same key reuses it."""
        doc = json.dumps([self._asdict(), CHARLM_VOCAB, hashlib.sha256(text.encode()).hexdigest()], sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def charlm_tokens(text: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(CHARLM_VOCAB)}
    return np.array([index.get(c, 1) for c in text], dtype=np.int64)


def train_charlm(text: str, t: CharLMTraining = CharLMTraining()) -> dict[str, np.ndarray]:
    """GRU weights (``wx`` [V, 3H], ``bx``, ``wh`` [H, 3H], ``bh``, ``wy`` [H, V], ``by``; gate
    order r, z, n) trained to predict each next character of ``text``."""
    rng = np.random.default_rng(t.seed)
    data = charlm_tokens(text)
    V, H, B, T = len(CHARLM_VOCAB), t.hidden, t.batch, t.seq
    f32 = np.float32
    p = {
        "wx": (rng.standard_normal((V, 3 * H)) * 0.1).astype(f32),
        "bx": np.zeros(3 * H, f32),
        "wh": (rng.standard_normal((H, 3 * H)) / np.sqrt(H)).astype(f32),
        "bh": np.zeros(3 * H, f32),
        "wy": (rng.standard_normal((H, V)) / np.sqrt(H)).astype(f32),
        "by": np.zeros(V, f32),
    }
    m = {k: np.zeros_like(v) for k, v in p.items()}
    s = {k: np.zeros_like(v) for k, v in p.items()}
    span = (len(data) - 1) // B
    starts = np.arange(B) * span
    h0 = np.zeros((B, H), f32)
    pos = 0
    for step in range(1, t.steps + 1):
        if pos + T >= span:
            pos, h0 = 0, np.zeros((B, H), f32)
        cols = starts[:, None] + pos + np.arange(T)[None, :]
        xs, ys = data[cols], data[cols + 1]
        pos += T
        # forward, keeping what the backward pass needs
        hs = np.empty((T + 1, B, H), f32)
        hs[0] = h0
        r_, z_, n_, hn_ = [], [], [], []
        for i in range(T):
            xp = p["wx"][xs[:, i]] + p["bx"]
            hp = hs[i] @ p["wh"] + p["bh"]
            r = _sigmoid(xp[:, :H] + hp[:, :H])
            z = _sigmoid(xp[:, H : 2 * H] + hp[:, H : 2 * H])
            n = np.tanh(xp[:, 2 * H :] + r * hp[:, 2 * H :])
            hs[i + 1] = (1 - z) * n + z * hs[i]
            r_.append(r), z_.append(z), n_.append(n), hn_.append(hp[:, 2 * H :])
        states = hs[1:].transpose(1, 0, 2).reshape(-1, H)
        logits = states @ p["wy"] + p["by"]
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        # backward: softmax cross-entropy, then through time
        targets = ys.reshape(-1)
        dlogits = prob
        dlogits[np.arange(targets.size), targets] -= 1
        dlogits /= targets.size
        g = {"wy": states.T @ dlogits, "by": dlogits.sum(0), "wh": np.zeros_like(p["wh"]), "bh": np.zeros_like(p["bh"])}
        dstates = (dlogits @ p["wy"].T).reshape(B, T, H)
        dh = np.zeros((B, H), f32)
        dxp_all = np.empty((T, B, 3 * H), f32)
        for i in reversed(range(T)):
            dh = dh + dstates[:, i]
            r, z, n, hn, h_prev = r_[i], z_[i], n_[i], hn_[i], hs[i]
            dn = dh * (1 - z) * (1 - n * n)
            dr = dn * hn * r * (1 - r)
            dz = dh * (h_prev - n) * z * (1 - z)
            dxp_all[i] = np.concatenate([dr, dz, dn], 1)
            dhp = np.concatenate([dr, dz, dn * r], 1)
            g["wh"] += h_prev.T @ dhp
            g["bh"] += dhp.sum(0)
            dh = dh * z + dhp @ p["wh"].T
        dxp = dxp_all.transpose(1, 0, 2).reshape(-1, 3 * H)
        g["wx"] = np.zeros_like(p["wx"])
        np.add.at(g["wx"], xs.reshape(-1), dxp)
        g["bx"] = dxp.sum(0)
        norm = np.sqrt(sum(float((v * v).sum()) for v in g.values()))
        scale = min(1.0, t.clip / (norm + 1e-6))
        for k in p:  # Adam
            gk = g[k] * scale
            m[k] = 0.9 * m[k] + 0.1 * gk
            s[k] = 0.999 * s[k] + 0.001 * gk * gk
            update = t.lr * (m[k] / (1 - 0.9**step)) / (np.sqrt(s[k] / (1 - 0.999**step)) + 1e-8)
            p[k] -= update.astype(f32)
        h0 = hs[-1]
    return p


def charlm_step_model(weights: dict[str, np.ndarray], training_key: str = "") -> onnx.ModelProto:
    """One step of the GRU: TOKEN (INT64 [batch, 1]) and STATE_IN (FP32 [batch, H]) ->
    LOGITS (FP32 [batch, V], the next character's) and STATE_OUT (FP32 [batch, H]). The
    vocabulary is in the model's metadata (``vocabulary``, a JSON string)."""
    H = weights["wh"].shape[0]
    V = weights["wy"].shape[1]
    inits = [numpy_helper.from_array(weights[k], k) for k in ("wx", "bx", "wh", "bh", "wy", "by")]
    inits += [
        numpy_helper.from_array(np.array([-1], np.int64), "flat"),
        numpy_helper.from_array(np.array([H, H, H], np.int64), "gates"),
    ]
    nodes = [
        helper.make_node("Reshape", ["TOKEN", "flat"], ["token"]),
        helper.make_node("Gather", ["wx", "token"], ["xw"], axis=0),
        helper.make_node("Add", ["xw", "bx"], ["xp"]),
        helper.make_node("MatMul", ["STATE_IN", "wh"], ["hw"]),
        helper.make_node("Add", ["hw", "bh"], ["hp"]),
        helper.make_node("Split", ["xp", "gates"], ["xr", "xz", "xn"], axis=1),
        helper.make_node("Split", ["hp", "gates"], ["hr", "hz", "hn"], axis=1),
        helper.make_node("Add", ["xr", "hr"], ["r_in"]),
        helper.make_node("Sigmoid", ["r_in"], ["r"]),
        helper.make_node("Add", ["xz", "hz"], ["z_in"]),
        helper.make_node("Sigmoid", ["z_in"], ["z"]),
        helper.make_node("Mul", ["r", "hn"], ["rhn"]),
        helper.make_node("Add", ["xn", "rhn"], ["n_in"]),
        helper.make_node("Tanh", ["n_in"], ["n"]),
        # h' = (1 - z) * n + z * h = n + z * (h - n)
        helper.make_node("Sub", ["STATE_IN", "n"], ["h_minus_n"]),
        helper.make_node("Mul", ["z", "h_minus_n"], ["z_h_minus_n"]),
        helper.make_node("Add", ["n", "z_h_minus_n"], ["STATE_OUT"]),
        helper.make_node("MatMul", ["STATE_OUT", "wy"], ["yw"]),
        helper.make_node("Add", ["yw", "by"], ["LOGITS"]),
    ]
    graph = helper.make_graph(
        nodes,
        "charlm_step",
        [
            helper.make_tensor_value_info("TOKEN", TensorProto.INT64, ["batch", 1]),
            helper.make_tensor_value_info("STATE_IN", TensorProto.FLOAT, ["batch", H]),
        ],
        [
            helper.make_tensor_value_info("LOGITS", TensorProto.FLOAT, ["batch", V]),
            helper.make_tensor_value_info("STATE_OUT", TensorProto.FLOAT, ["batch", H]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="inferd")
    helper.set_model_props(model, {"vocabulary": json.dumps(CHARLM_VOCAB), "training_key": training_key})
    return model


def _trained_step(path: Path, key: str) -> onnx.ModelProto | None:
    """The step model already at ``path`` when it was trained with ``key``."""
    if not path.is_file():
        return None
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    return model if props.get("training_key") == key else None


# The generator (decoupled: one response per piece of text) over the ONNX step; see
# charlm/1/model.py for the inputs' meaning and README's "Generate and OpenAI" section for the
# text contract (openai_contract) and the chat template.
CHARLM_CONFIG = """\
name: "charlm"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [
  { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true },
  { name: "temperature" data_type: TYPE_FP32 dims: [ 1 ] optional: true },
  { name: "top_p" data_type: TYPE_FP32 dims: [ 1 ] optional: true },
  { name: "seed" data_type: TYPE_INT64 dims: [ 1 ] optional: true },
  { name: "stop" data_type: TYPE_STRING dims: [ -1 ] optional: true }
]
output [
  { name: "text_output" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "finish_reason" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "prompt_tokens" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "completion_tokens" data_type: TYPE_INT32 dims: [ 1 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "openai_contract" value { string_value: "text" } }
parameters { key: "chat_message_template" value { string_value: "{ROLE}:\\n{content}\\n\\n" } }
parameters { key: "chat_generation_prompt" value { string_value: "ASSISTANT:\\n" } }
parameters { key: "chat_stop" value { string_value: "\\n\\n" } }
"""

# The same step as a stateful model: the client sends one token per request of a sequence
# (sequence_id, sequence_start, sequence_end) and gets the next token's logits; the GRU state is
# the sequence's implicit state, kept by the server between requests.
CHARLM_STEP_CONFIG = """\
name: "charlm_step"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "TOKEN" data_type: TYPE_INT64 dims: [ 1 ] } ]
output [ { name: "LOGITS" data_type: TYPE_FP32 dims: [ %(vocab)d ] } ]
sequence_batching {
  max_sequence_idle_microseconds: 10000000
  state [
    {
      input_name: "STATE_IN"
      output_name: "STATE_OUT"
      data_type: TYPE_FP32
      dims: [ %(hidden)d ]
      initial_state { data_type: TYPE_FP32 dims: [ %(hidden)d ] zero_data: true name: "zero" }
    }
  ]
}
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "vocabulary" value { string_value: %(vocabulary)s } }
"""


def build_charlm(root: Path = HERE, training: CharLMTraining = CharLMTraining()) -> None:
    text = CHARLM_CORPUS.read_text(encoding="utf-8")
    key = training.key(text)
    step_path = root / "charlm" / "1" / "step.onnx"
    model = _trained_step(step_path, key)
    if model is None:
        start = time.monotonic()
        model = charlm_step_model(train_charlm(text, training), key)
        print(f"charlm: trained {training.steps} steps in {time.monotonic() - start:.1f} s")
    else:
        print("charlm: the trained step is up to date (delete charlm/1/step.onnx to train again)")
    _save(model, step_path)
    _save(model, root / "charlm_step" / "1" / "model.onnx")
    (root / "charlm" / "config.pbtxt").write_text(CHARLM_CONFIG)
    vocabulary = json.dumps(json.dumps(CHARLM_VOCAB))  # a pbtxt string literal of the JSON
    (root / "charlm_step" / "config.pbtxt").write_text(
        CHARLM_STEP_CONFIG % {"hidden": training.hidden, "vocab": len(CHARLM_VOCAB), "vocabulary": vocabulary}
    )


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def build(root: Path = HERE, frameworks_root: Path = FRAMEWORKS_REPOSITORY) -> None:
    _save(add_sub_model(), root / "add_sub" / "1" / "model.onnx")
    (root / "add_sub" / "config.pbtxt").write_text(ADD_SUB_CONFIG)
    _save(dense_model(), root / "dense" / "1" / "model.onnx")
    (root / "dense" / "config.pbtxt").write_text(DENSE_CONFIG)
    build_charlm(root)
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
