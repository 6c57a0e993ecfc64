"""TensorFlow SavedModel backend (``platform: "tensorflow_savedmodel"``, ``model.savedmodel/``).

Serves one signature of the SavedModel's ``serve`` meta graph: ``serving_default`` unless the
config says otherwise with ``parameters { key: "signature_def" value { string_value: "..." } }``.
The signature's input and output keys are the tensor names; datatypes and dims auto-complete
from it. Instances run on the CPU, or on ``/GPU:<id>`` for ``KIND_GPU`` (with GPU memory
growth on, so TensorFlow does not take every GPU's memory at start-up).

Threads: TensorFlow's pools are per process and fixed once its runtime starts, so the first
SavedModel loaded sets them: ``intra_op_thread_count`` (default: the cores divided by that
model's instance count) and ``inter_op_thread_count`` (default 1: inferd runs instances in
parallel itself).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..protocol.errors import Internal, ModelLoadError
from ..protocol.model_spec import ModelSpec
from ..protocol.pb import model_config_pb2 as mc
from . import framework_logs
from .base import Backend, LoadContext
from .common import (
    TensorInfo,
    check_output,
    check_tensors,
    complete_config,
    datatype_of,
    default_threads,
    int_param,
    output_types,
)
from .registry import require

log = logging.getLogger(__name__)

SIGNATURE_PARAM = "signature_def"
DEFAULT_SIGNATURE = "serving_default"
SERVE_TAG = "serve"

_runtime_lock = threading.Lock()
_runtime_configured = False


def _tf() -> Any:
    with framework_logs.importing("tensorflow"):
        return require("tensorflow", "tensorflow", "tensorflow")


def read_signature(key: str, model_path: Path) -> tuple[str, list[TensorInfo], list[TensorInfo]]:
    """The tensors of signature ``key`` (the config parameter's value; empty for the default),
    read from ``saved_model.pb`` without loading weights."""
    tf = _tf()
    from tensorflow.core.protobuf import saved_model_pb2

    pb_file = model_path / "saved_model.pb"
    if not pb_file.is_file():
        raise ModelLoadError(f"{model_path}: not a SavedModel folder (it has no saved_model.pb)")
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(pb_file.read_bytes())
    except Exception as e:  # DecodeError, OSError
        raise ModelLoadError(f"{pb_file}: cannot read the SavedModel: {e}") from None
    metas = [m for m in saved.meta_graphs if SERVE_TAG in m.meta_info_def.tags] or list(saved.meta_graphs)
    if not metas:
        raise ModelLoadError(f"{pb_file}: the SavedModel has no meta graph")
    key = key or DEFAULT_SIGNATURE
    signatures = metas[0].signature_def
    if key not in signatures:
        names = sorted(k for k in signatures if not k.startswith("__"))
        raise ModelLoadError(
            f"{model_path}: the SavedModel has no signature '{key}'; it has {names} "
            f"(choose one with the config parameter '{SIGNATURE_PARAM}')"
        )
    sig = signatures[key]

    def info(name: str, t: Any) -> TensorInfo:
        try:
            dtype = datatype_of(tf.dtypes.as_dtype(t.dtype).as_numpy_dtype)
        except TypeError:  # resource and variant tensors have no numpy dtype
            dtype = None
        shape = None if t.tensor_shape.unknown_rank else tuple(int(d.size) for d in t.tensor_shape.dim)
        return TensorInfo(name, dtype, shape)

    inputs = [info(n, t) for n, t in sorted(sig.inputs.items())]
    outputs = [info(n, t) for n, t in sorted(sig.outputs.items())]
    return key, inputs, outputs


class SavedModelBackend(Backend):
    inline_safe = True
    name = "tensorflow"
    platforms = ("tensorflow_savedmodel",)
    default_filename = "model.savedmodel"
    extra = "tensorflow"

    @classmethod
    def auto_complete_config(cls, config: mc.ModelConfig, model_path: Path) -> None:
        param = config.parameters.get(SIGNATURE_PARAM)
        _, inputs, outputs = read_signature(param.string_value if param is not None else "", model_path)
        if not config.platform and not config.backend:
            config.platform = "tensorflow_savedmodel"
        complete_config(config, inputs, outputs)

    def __init__(self, context: LoadContext) -> None:
        tf = _tf()
        self.tf = tf
        spec = context.spec
        self.label = f"model '{context.model_name}' version {context.version}"
        source = str(context.model_dir / "config.pbtxt")
        key, inputs, outputs = read_signature(spec.parameters.get(SIGNATURE_PARAM, ""), context.model_path)
        check_tensors(source, spec, inputs, outputs)
        _configure_runtime(tf, spec, context.parameters)
        self.device = _device(tf, context)
        try:
            with tf.device(self.device):
                self.model = tf.saved_model.load(str(context.model_path), tags=[SERVE_TAG])
                self.fn = self.model.signatures[key]
        except Exception as e:  # TensorFlow raises many error types, all with a reason
            raise ModelLoadError(f"{context.model_path}: TensorFlow failed to load the SavedModel: {e}") from None
        self.output_types = output_types(spec)

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        tf = self.tf
        with tf.device(self.device):
            result = self.fn(**{n: tf.constant(a) for n, a in inputs.items()})
        produced = {}
        for n in outputs:
            tensor = result.get(n)
            if tensor is None:
                raise Internal(f"{self.label}: the signature returned no output '{n}' ({sorted(result)})")
            produced[n] = check_output(self.label, n, tensor.numpy(), self.output_types.get(n))
        return produced

    def unload(self) -> None:
        del self.fn
        del self.model


def _device(tf: Any, context: LoadContext) -> str:
    if context.instance.kind != "GPU":
        return "/CPU:0"
    gpus = tf.config.list_physical_devices("GPU")
    if context.instance.device_id >= len(gpus):
        raise ModelLoadError(
            f"model '{context.model_name}' asks for KIND_GPU device {context.instance.device_id} but "
            f"TensorFlow sees {len(gpus)} GPU(s) (install the GPU build, 'tensorflow[and-cuda]', on a "
            "machine with an NVIDIA GPU), or use kind: KIND_CPU"
        )
    return f"/GPU:{context.instance.device_id}"


def _configure_runtime(tf: Any, spec: ModelSpec, params: Mapping[str, str]) -> None:
    """Thread pools and GPU memory growth can only be set before TensorFlow's runtime starts."""
    global _runtime_configured
    with _runtime_lock:
        if _runtime_configured:
            if "intra_op_thread_count" in params or "inter_op_thread_count" in params:
                log.warning("%s: TensorFlow thread counts are already fixed for this process", spec.name)
            return
        _runtime_configured = True
        intra = int_param(params, ("intra_op_thread_count",), default_threads(spec))
        inter = int_param(params, ("inter_op_thread_count",), 1)
        try:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
            tf.config.threading.set_inter_op_parallelism_threads(inter)
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as e:  # the runtime was started elsewhere in this process
            log.warning("TensorFlow runtime already initialized; thread and GPU settings not applied: %s", e)
