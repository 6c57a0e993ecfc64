"""ONNX Runtime backend (``platform: "onnxruntime_onnx"``, ``model.onnx``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..protocol import codec
from ..protocol.errors import ModelLoadError
from ..protocol.pb import model_config_pb2 as mc
from . import framework_logs
from .base import Backend, LoadContext
from .common import TensorInfo, batch_input_names, complete_config, default_threads
from .registry import require

# ONNX Runtime's type strings -> config.pbtxt data types.
_log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(bfloat16)": "TYPE_BF16",
    "tensor(string)": "TYPE_STRING",
}


def _ort() -> Any:
    with framework_logs.importing("onnxruntime"):
        return require("onnxruntime", "onnxruntime", None)


def _dims(shape: Sequence[Any]) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


class OnnxRuntimeBackend(Backend):
    inline_safe = True
    name = "onnxruntime"
    platforms = ("onnxruntime_onnx",)
    default_filename = "model.onnx"
    extra = "gpu"

    @classmethod
    def auto_complete_config(cls, config: mc.ModelConfig, model_path: Path) -> None:
        ort = _ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"{model_path}: onnxruntime cannot read the model: {e}") from None
        inputs, outputs = (
            [
                TensorInfo(t.name, codec.BY_CONFIG_NAME.get(_ORT_TYPES.get(t.type, "")), tuple(_dims(t.shape or [])))
                for t in tensors
            ]
            for tensors in (session.get_inputs(), session.get_outputs())
        )
        if not config.platform and not config.backend:
            config.platform = "onnxruntime_onnx"
        complete_config(config, inputs, outputs)

    def __init__(self, context: LoadContext) -> None:
        ort = _ort()
        spec = context.spec
        params = context.parameters
        options = ort.SessionOptions()
        options.intra_op_num_threads = _int_param(params, "intra_op_thread_count", default_threads(spec))
        options.inter_op_num_threads = _int_param(params, "inter_op_thread_count", 1)
        # onnxruntime's pool threads otherwise spin after every run, taking a core from the event
        # loop and the other models; a model with cores to itself can turn it back on.
        spinning = "1" if params.get("allow_spinning", "").lower() in ("1", "true", "yes") else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        level = spec.optimization.graph.level
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level >= 0 else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        providers: list[Any]
        gpu = context.instance.kind == "GPU"
        if gpu:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelLoadError(
                    f"model '{context.model_name}' asks for KIND_GPU but this onnxruntime has no CUDA "
                    "execution provider (pip install 'inferd[gpu]' on a machine with an NVIDIA GPU), "
                    "or use kind: KIND_CPU"
                )
            providers = [("CUDAExecutionProvider", {"device_id": context.instance.device_id})]
        else:
            providers = ["CPUExecutionProvider"]
        providers = accelerator_providers(
            spec.optimization.execution_accelerators,
            gpu,
            context.instance.device_id,
            ort.get_available_providers(),
            f"model '{context.model_name}'",
        ) + [p for p in providers if not (gpu and _has_cuda_accelerator(spec))]
        try:
            self.session = ort.InferenceSession(str(context.model_path), options, providers=providers)
        except Exception as e:
            raise ModelLoadError(f"{context.model_path}: onnxruntime failed to load the model: {e}") from None
        if context.instance.kind == "GPU" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise ModelLoadError(
                f"model '{context.model_name}': no usable CUDA device {context.instance.device_id} "
                "for KIND_GPU (onnxruntime fell back to the CPU)"
            )
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        source = f"{context.model_dir / 'config.pbtxt'}"
        for t in spec.input:
            if t.name not in graph_inputs:
                raise ModelLoadError(
                    f"{source}: input '{t.name}' is not an input of the ONNX graph ({sorted(graph_inputs)})"
                )
        for t in spec.output:
            if t.name not in graph_outputs:
                raise ModelLoadError(
                    f"{source}: output '{t.name}' is not an output of the ONNX graph ({sorted(graph_outputs)})"
                )
        _check_ragged(source, spec, {i.name: i.shape for i in self.session.get_inputs()})
        sequence = spec.sequence_batching
        if sequence is not None:  # the inputs the server feeds and the state outputs it keeps
            fed = [c.name for c in sequence.control_input] + [s.input_name for s in sequence.state]
            for kind, names, found in (
                ("input", fed, graph_inputs),
                ("output", [s.output_name for s in sequence.state], graph_outputs),
            ):
                for name in names:
                    if name not in found:
                        raise ModelLoadError(
                            f"{source}: sequence batching {kind} '{name}' is not an {kind} of the ONNX graph "
                            f"({sorted(found)})"
                        )
        self._string_inputs = {i.name for i in self.session.get_inputs() if i.type == "tensor(string)"}
        self._run = binding_run(self.session)

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        if not self._string_inputs:
            feed = inputs if type(inputs) is dict else dict(inputs)  # the binding takes a dict
        else:
            feed = dict(inputs)
            for name in self._string_inputs & feed.keys():
                # onnxruntime wants str elements for string tensors; inferd carries bytes.
                feed[name] = np.vectorize(lambda b: b.decode("utf-8", "surrogateescape"), otypes=[object])(feed[name])
        names = outputs if isinstance(outputs, list) else list(outputs)
        return dict(zip(names, self._run(names, feed, None)))

    def unload(self) -> None:
        del self._run, self.session  # _run holds the binding too


def binding_run(session: Any) -> Any:
    """``run(output_names, feed, run_options)`` for ``session``: on a CPU-only session the
    binding's own, without the Python wrapper's per-call checks (input names, which inferd
    validates against this graph's config; OrtValue ownership; graph capture; EP fallback, which
    only a GPU provider needs): 2-3% of the server's time on add_sub. Elsewhere, or when this
    onnxruntime lacks the attribute, the wrapper's."""
    if session.get_providers() == ["CPUExecutionProvider"]:
        return getattr(session, "_sess", session).run
    return session.run


def _check_ragged(source: str, spec: Any, graph_inputs: Mapping[str, Sequence[Any]]) -> None:
    """Ragged batching's inputs, as Triton's ONNX Runtime backend checks them: each batch input
    target is a graph input; a ragged input is 1-D and variable (the batch arrives flat)."""
    for name in sorted(batch_input_names(spec)):
        if name not in graph_inputs:
            raise ModelLoadError(
                f"{source}: batch input '{name}' is not an input of the ONNX graph ({sorted(graph_inputs)})"
            )
    for t in spec.input:
        shape = _dims(graph_inputs.get(t.name) or [])
        if t.allow_ragged_batch and shape != [-1]:
            raise ModelLoadError(
                f"{source}: configuration expects model provides input with shape [-1] for ragged input "
                f"'{t.name}', model provides {shape}"
            )


def _int_param(params: Mapping[str, str], key: str, default: int) -> int:
    value = params.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ModelLoadError(f"parameter '{key}' must be an integer, got '{value}'") from None


# Triton's ONNX Runtime accelerators, by instance kind: name -> (execution provider, the
# accelerator parameters Triton documents -> the provider's option).
_ACCELERATORS: dict[tuple[bool, str], tuple[str, dict[str, str]]] = {
    (False, "openvino"): ("OpenVINOExecutionProvider", {}),
    (
        True,
        "tensorrt",
    ): (
        "TensorrtExecutionProvider",
        {
            "precision_mode": "trt_fp16_enable",
            "max_workspace_size_bytes": "trt_max_workspace_size",
            "trt_max_partition_iterations": "trt_max_partition_iterations",
            "trt_min_subgraph_size": "trt_min_subgraph_size",
            "trt_engine_cache_enable": "trt_engine_cache_enable",
            "trt_engine_cache_path": "trt_engine_cache_path",
        },
    ),
    (
        True,
        "cuda",
    ): (
        "CUDAExecutionProvider",
        {
            "cudnn_conv_algo_search": "cudnn_conv_algo_search",
            "gpu_mem_limit": "gpu_mem_limit",
            "arena_extend_strategy": "arena_extend_strategy",
            "do_copy_in_default_stream": "do_copy_in_default_stream",
            "cudnn_conv_use_max_workspace": "cudnn_conv_use_max_workspace",
        },
    ),
}


def _has_cuda_accelerator(spec: Any) -> bool:
    return any(a.name == "cuda" for a in spec.optimization.execution_accelerators.gpu_execution_accelerator)


def accelerator_providers(section: Any, gpu: bool, device_id: int, available: Sequence[str], label: str) -> list[Any]:
    """The execution providers ``execution_accelerators`` asks for, ahead of the default one.

    Accelerators of the other kind of instance do nothing there, as in Triton (a GPU accelerator
    on a KIND_CPU instance): warned about, not refused. An unknown accelerator, an unknown
    parameter, or a provider this onnxruntime lacks is refused, naming it."""
    providers: list[Any] = []
    for on_gpu, items in ((True, section.gpu_execution_accelerator), (False, section.cpu_execution_accelerator)):
        for a in items:
            provider, settings = _provider(a, on_gpu, label)
            if on_gpu != gpu:
                here = "GPU" if gpu else "CPU"
                _log.warning("%s: execution accelerator '%s' has no effect on a KIND_%s instance", label, a.name, here)
                continue
            if provider not in available:
                raise ModelLoadError(
                    f"{label}: execution accelerator '{a.name}' needs onnxruntime's {provider}, which this "
                    f"onnxruntime does not have (it has {', '.join(available)})"
                )
            if gpu:
                settings["device_id"] = str(device_id)
            providers.append((provider, settings))
    return providers


def _provider(accelerator: Any, gpu: bool, label: str) -> tuple[str, dict[str, str]]:
    kind = "gpu" if gpu else "cpu"
    known = _ACCELERATORS.get((gpu, accelerator.name))
    if known is None:
        names = sorted(n for g, n in _ACCELERATORS if g == gpu)
        raise ModelLoadError(
            f"{label}: unknown {kind} execution accelerator '{accelerator.name}' (ONNX Runtime knows {names})"
        )
    provider, options = known
    settings: dict[str, str] = {}
    for key, value in accelerator.parameters.items():
        option = options.get(key)
        if option is None:
            raise ModelLoadError(
                f"{label}: execution accelerator '{accelerator.name}' has no parameter '{key}' "
                f"(known: {', '.join(sorted(options)) or 'none'})"
            )
        if key == "precision_mode":
            value = "True" if value.upper() == "FP16" else "False"  # Triton's FP32 / FP16
        settings[option] = value
    return provider, settings
