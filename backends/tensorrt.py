"""TensorRT backend (``platform: "tensorrt_plan"``, ``model.plan``), for the TensorRT 10 API.

A plan is a serialized engine, built for one TensorRT version and GPU. Its I/O tensors are
found by name (``get_tensor_name``/``get_tensor_mode``/``get_tensor_dtype``/``get_tensor_shape``),
so inputs, outputs, datatypes and dims auto-complete from the engine; a variable first dimension
on every tensor makes the model batchable, up to the smallest ``max`` batch of optimization
profile 0. Each execution sets the request's input shapes (``set_input_shape``), reads the
output shapes the engine infers, and runs ``execute_async_v3`` on the instance's own CUDA
stream with device buffers that grow as needed and are reused.

TensorRT runs only on NVIDIA GPUs: instances must be ``KIND_GPU`` (the default this backend
fills in), and where there is no GPU or no ``tensorrt`` package the model is UNAVAILABLE with
that reason while the rest of the server serves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..protocol import codec
from ..protocol.errors import Internal, InvalidArgument, ModelLoadError
from ..protocol.pb import model_config_pb2 as mc
from .base import Backend, LoadContext
from .common import TensorInfo, check_tensors, complete_config, datatype_of
from .cuda_memory import Device, open_device
from .registry import require

_GPU_ONLY = "TensorRT engines (model.plan) run only on NVIDIA GPUs with TensorRT 10 and a CUDA driver"


def _trt() -> Any:
    try:
        return require("tensorrt", "tensorrt", "tensorrt")
    except ModelLoadError as e:
        raise ModelLoadError(f"{e.message}. {_GPU_ONLY}") from None


def _datatype(trt: Any, dtype: Any) -> codec.DataType | None:
    if dtype == getattr(trt.DataType, "BF16", None):  # numpy has no bfloat16; the codec does
        return codec.BY_NAME["BF16"]
    try:
        return datatype_of(trt.nptype(dtype))
    except TypeError:  # FP8, INT4, ...: no KServe datatype
        return None


class _Engine:
    """A deserialized engine and what it says about its tensors."""

    def __init__(self, trt: Any, path: Path) -> None:
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.ERROR)
        self.runtime = trt.Runtime(self.logger)
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise ModelLoadError(f"{path}: cannot read the plan: {e}") from None
        engine = self.runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise ModelLoadError(
                f"{path}: TensorRT {trt.__version__} could not deserialize the plan (a plan only loads "
                "with the TensorRT version and GPU kind it was built for; TensorRT's log has details)"
            )
        self.engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def info(self, name: str) -> TensorInfo:
        e = self.engine
        return TensorInfo(name, _datatype(self.trt, e.get_tensor_dtype(name)), tuple(e.get_tensor_shape(name)))

    def max_batch(self) -> int:
        """The largest first dimension profile 0 accepts on every input."""
        try:
            sizes = [int(self.engine.get_tensor_profile_shape(n, 0)[2][0]) for n in self.inputs]
        except (RuntimeError, TypeError, IndexError):  # an engine without dynamic shapes
            return 1
        return max(1, min(sizes)) if sizes else 1


def _first_gpu(config: mc.ModelConfig) -> int:
    for group in config.instance_group:
        if group.gpus:
            return int(group.gpus[0])
    return 0


class TensorRTBackend(Backend):
    inline_safe = True
    name = "tensorrt"
    platforms = ("tensorrt_plan",)
    default_filename = "model.plan"
    extra = "tensorrt"

    @classmethod
    def auto_complete_config(cls, config: mc.ModelConfig, model_path: Path) -> None:
        trt = _trt()
        open_device(_first_gpu(config))  # deserializing needs a current CUDA device
        engine = _Engine(trt, model_path)
        if not config.platform and not config.backend:
            config.platform = "tensorrt_plan"
        if not config.instance_group:
            config.instance_group.add().kind = mc.ModelInstanceGroup.KIND_GPU
        complete_config(
            config,
            [engine.info(n) for n in engine.inputs],
            [engine.info(n) for n in engine.outputs],
            engine.max_batch(),
        )

    def __init__(self, context: LoadContext) -> None:
        trt = _trt()
        self.label = f"model '{context.model_name}' version {context.version}"
        if context.instance.kind != "GPU":
            raise ModelLoadError(f"{self.label}: {_GPU_ONLY}; use kind: KIND_GPU in instance_group")
        self.device: Device = open_device(context.instance.device_id)
        self.engine = _Engine(trt, context.model_path)
        engine = self.engine.engine
        source = str(context.model_dir / "config.pbtxt")
        check_tensors(
            source,
            context.spec,
            [self.engine.info(n) for n in self.engine.inputs],
            [self.engine.info(n) for n in self.engine.outputs],
        )
        for n in self.engine.inputs:
            if engine.is_shape_inference_io(n):
                raise ModelLoadError(f"{source}: input '{n}' is a shape tensor, which inferd does not support")
        self.dtypes: dict[str, np.dtype] = {}
        for n in self.engine.inputs + self.engine.outputs:
            dt = _datatype(trt, engine.get_tensor_dtype(n))
            if dt is None:
                raise ModelLoadError(
                    f"{source}: tensor '{n}' has TensorRT type {engine.get_tensor_dtype(n)}, which has no KServe datatype"
                )
            self.dtypes[n] = dt.dtype
        self.context = engine.create_execution_context()
        if self.context is None:
            raise ModelLoadError(f"{self.label}: TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = self.device.stream()
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (address, capacity in bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, capacity = self.buffers.get(name, (0, 0))
        if nbytes > capacity:
            if ptr:
                self.device.free(ptr)  # safe: the previous execution was synchronized
            capacity = max(256, 1 << (nbytes - 1).bit_length())  # grow by powers of two
            ptr = self.device.malloc(capacity)
            self.buffers[name] = (ptr, capacity)
        return ptr

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        self.device.select()  # the CUDA device is per thread
        ctx = self.context
        for name in self.engine.inputs:
            array = np.ascontiguousarray(inputs[name], dtype=self.dtypes[name])
            if not ctx.set_input_shape(name, array.shape):
                raise InvalidArgument(
                    f"{self.label}: input '{name}' shape {list(array.shape)} is outside the engine's "
                    "optimization profile"
                )
            ptr = self._buffer(name, array.nbytes)
            self.device.to_device(ptr, array, self.stream)
            ctx.set_tensor_address(name, ptr)
        host: dict[str, np.ndarray] = {}
        for name in self.engine.outputs:  # every output needs an address, requested or not
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise Internal(f"{self.label}: output '{name}' has a data-dependent shape {list(shape)}, not supported")
            host[name] = np.empty(shape, dtype=self.dtypes[name])
            ctx.set_tensor_address(name, self._buffer(name, host[name].nbytes))
        if not ctx.execute_async_v3(self.stream):
            raise Internal(f"{self.label}: TensorRT failed to enqueue the execution")
        for name in outputs:
            self.device.to_host(host[name], self.buffers[name][0], self.stream)
        self.device.synchronize(self.stream)
        return {n: host[n] for n in outputs}

    def unload(self) -> None:
        self.device.select()
        self.device.synchronize(self.stream)
        del self.context
        for ptr, _ in self.buffers.values():
            self.device.free(ptr)
        self.buffers.clear()
        self.device.destroy_stream(self.stream)
        del self.engine
