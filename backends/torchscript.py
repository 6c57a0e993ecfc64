"""TorchScript backend (``platform: "pytorch_libtorch"``, ``model.pt``).

A TorchScript file carries no tensor names or types, so config.pbtxt must declare every input
and output. Names follow Triton's conventions:

* inputs: ``<anything>__<index>`` (e.g. ``INPUT__0``) is the forward argument at that position;
  otherwise the names of ``forward``'s arguments; otherwise the order of the config. A
  ``forward(self, x: Dict[str, Tensor])`` receives all inputs by their config names.
* outputs: ``<anything>__<index>`` (e.g. ``OUTPUT__0``) is the position in the returned tuple;
  otherwise the order of the config; a returned ``Dict[str, Tensor]`` is read by name.

``TYPE_STRING`` inputs reach the model as ``List[str]`` and ``List[str]`` outputs come back as
BYTES (CPU only), as in Triton.

Threads: torch's intra-op pool is shared by the whole process. Each load sets it to
``INTRA_OP_THREAD_COUNT`` (alias ``intra_op_thread_count``) when given, otherwise to the
cores divided by the model's instance count, so instances do not oversubscribe the machine;
``INTER_OP_THREAD_COUNT`` sets the inter-op pool (only possible before torch first uses it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..protocol import codec
from ..protocol.errors import Internal, ModelLoadError
from ..protocol.model_spec import ModelSpec
from ..protocol.pb import model_config_pb2 as mc
from . import framework_logs
from .base import Backend, LoadContext
from .common import check_output, default_threads, int_param, output_types
from .registry import require

log = logging.getLogger(__name__)

_INDEXED = re.compile(r"^.*__(\d+)$")


def _torch() -> Any:
    with framework_logs.importing("torch"):
        return require("torch", "pytorch", "torch")


class TorchScriptBackend(Backend):
    inline_safe = True
    name = "pytorch"
    platforms = ("pytorch_libtorch",)
    default_filename = "model.pt"
    extra = "torch"

    @classmethod
    def auto_complete_config(cls, config: mc.ModelConfig, model_path: Path) -> None:
        # Checked before torch is imported: there is nothing a TorchScript file could tell.
        if not config.input or not config.output:
            raise ModelLoadError(
                f"model '{config.name}': a TorchScript model has no input/output metadata to "
                "auto-complete from; config.pbtxt must list every 'input' and 'output' with name, "
                "data_type and dims (names INPUT__0, OUTPUT__0, ... or forward's argument names)"
            )
        if not config.platform and not config.backend:
            config.platform = "pytorch_libtorch"

    def __init__(self, context: LoadContext) -> None:
        torch = _torch()
        self.torch = torch
        spec = context.spec
        self.label = f"model '{context.model_name}' version {context.version}"
        source = str(context.model_dir / "config.pbtxt")
        _set_threads(torch, spec, context.parameters)
        self.device = _device(torch, context)
        try:
            self.module = torch.jit.load(str(context.model_path), map_location=self.device)
        except Exception as e:  # torch raises RuntimeError and friends with the reason
            raise ModelLoadError(f"{context.model_path}: torch.jit.load failed: {e}") from None
        self.module.eval()
        self.output_types = output_types(spec)
        self._bind_inputs(spec, source)
        self._bind_outputs(spec, source)

    def _bind_inputs(self, spec: ModelSpec, source: str) -> None:
        try:
            args = list(self.module.forward.schema.arguments)[1:]  # drop self
        except (AttributeError, RuntimeError):
            raise ModelLoadError(f"{source}: the TorchScript file has no scripted forward method") from None
        # Batch inputs (ragged batching) follow the config's inputs, as in Triton's libtorch backend.
        names = [t.name for t in spec.input] + [n for b in spec.batch_input for n in b.target_name]
        self.dict_input = len(args) == 1 and str(args[0].type).startswith("Dict[str")
        if self.dict_input:
            self.arg_order: list[str] = []
            return
        required = sum(1 for a in args if not a.has_default_value())
        if not required <= len(names) <= len(args):
            raise ModelLoadError(
                f"{source}: config.pbtxt has {len(names)} input(s) but forward takes "
                f"{[a.name for a in args]} ({required} required)"
            )
        indexed = [_INDEXED.match(n) for n in names]
        arg_names = [a.name for a in args]
        if all(indexed):
            positions = {n: int(m.group(1)) for n, m in zip(names, indexed) if m}
        elif all(n in arg_names for n in names):
            positions = {n: arg_names.index(n) for n in names}
        else:
            positions = {n: i for i, n in enumerate(names)}  # Triton: strict config order
        order = sorted(positions, key=positions.__getitem__)
        if [positions[n] for n in order] != list(range(len(order))):
            raise ModelLoadError(
                f"{source}: input names {names} must map to forward's first {len(names)} "
                f"argument positions {arg_names[: len(names)]} without gaps or repeats"
            )
        self.arg_order = order

    def _bind_outputs(self, spec: ModelSpec, source: str) -> None:
        names = [t.name for t in spec.output]
        indexed = [_INDEXED.match(n) for n in names]
        if all(indexed):
            self.output_index = {n: int(m.group(1)) for n, m in zip(names, indexed) if m}
        else:
            self.output_index = {n: i for i, n in enumerate(names)}
        if len(set(self.output_index.values())) != len(names):
            raise ModelLoadError(f"{source}: output names {names} map to the same result position twice")
        self.output_shape = {t.name: ([-1] if spec.max_batch_size > 0 else []) + list(t.dims) for t in spec.output}

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            if self.dict_input:
                result = self.module({n: self._to_torch(n, a) for n, a in inputs.items()})
            else:
                result = self.module(*[self._to_torch(n, inputs[n]) for n in self.arg_order])
            return {n: check_output(self.label, n, self._pick(result, n), self.output_types.get(n)) for n in outputs}

    def _to_torch(self, name: str, array: np.ndarray) -> Any:
        torch = self.torch
        if array.dtype == object:
            # A List[str] argument, like Triton's libtorch backend (CPU only).
            return [codec.as_bytes(e).decode("utf-8", "surrogateescape") for e in array.ravel()]
        if array.dtype == codec.BY_NAME["BF16"].dtype:
            tensor = torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
        else:
            # torch cannot hold read-only memory (a request's wire buffer) and a scripted model
            # may write into its inputs, so read-only arrays are copied; batches are not.
            tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
        return tensor.to(self.device) if self.device.type != "cpu" else tensor

    def _pick(self, result: Any, name: str) -> np.ndarray:
        torch = self.torch
        if isinstance(result, dict):
            if name not in result:
                raise Internal(f"{self.label}: the model's result has no key '{name}' ({sorted(result)})")
            value = result[name]
        elif isinstance(result, (tuple, list)) and not (result and isinstance(result[0], str)):
            index = self.output_index[name]
            if index >= len(result):
                raise Internal(f"{self.label}: output '{name}' is result {index} but forward returned {len(result)}")
            value = result[index]
        else:
            if self.output_index[name] != 0:
                raise Internal(f"{self.label}: forward returned one value; output '{name}' expects more")
            value = result
        if isinstance(value, list):  # List[str]
            array = np.empty(len(value), dtype=object)
            array[:] = [codec.as_bytes(s) for s in value]
            try:  # shaped like the config's dims when they fit, else flat
                return array.reshape(self.output_shape[name])
            except ValueError:
                return array
        if not isinstance(value, torch.Tensor):
            raise Internal(f"{self.label}: output '{name}' is a {type(value).__name__}, not a Tensor")
        value = value.detach()
        if value.device.type != "cpu":
            value = value.cpu()
        if value.dtype == torch.bfloat16:
            return value.view(torch.int16).numpy().view(codec.BY_NAME["BF16"].dtype)
        return value.numpy()

    def unload(self) -> None:
        del self.module
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


def _device(torch: Any, context: LoadContext) -> Any:
    if context.instance.kind != "GPU":
        return torch.device("cpu")
    device_id = context.instance.device_id
    if not torch.cuda.is_available() or device_id >= torch.cuda.device_count():
        raise ModelLoadError(
            f"model '{context.model_name}' asks for KIND_GPU device {device_id} but torch "
            f"{torch.__version__} sees {torch.cuda.device_count() if torch.cuda.is_available() else 'no'} "
            "CUDA device(s) (install a CUDA build of torch on a machine with an NVIDIA GPU), "
            "or use kind: KIND_CPU"
        )
    return torch.device("cuda", device_id)


def _set_threads(torch: Any, spec: ModelSpec, params: Mapping[str, str]) -> None:
    intra = int_param(params, ("INTRA_OP_THREAD_COUNT", "intra_op_thread_count"), default_threads(spec))
    if intra > 0:
        torch.set_num_threads(intra)
    inter = int_param(params, ("INTER_OP_THREAD_COUNT", "inter_op_thread_count"), 0)
    if inter > 0:
        try:
            torch.set_num_interop_threads(inter)
        except RuntimeError as e:  # only allowed once, before torch's first parallel work
            log.warning("%s: INTER_OP_THREAD_COUNT not applied: %s", spec.name, e)
