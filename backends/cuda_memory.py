"""The little CUDA a TensorRT engine needs: device buffers, a stream, and copies to and from
numpy. Uses cuda-python (what ``inferd[tensorrt]`` installs), or torch's CUDA when only that is
present. The CUDA device is per thread, so every entry point selects it first."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..protocol.errors import Internal, ModelLoadError


class Device(ABC):
    """One GPU. Buffers and streams are plain ints (addresses, handles), as TensorRT takes them."""

    def __init__(self, device_id: int) -> None:
        self.device_id = device_id

    @abstractmethod
    def select(self) -> None:
        """Make this GPU the calling thread's current device."""

    @abstractmethod
    def malloc(self, nbytes: int) -> int: ...

    @abstractmethod
    def free(self, ptr: int) -> None: ...

    @abstractmethod
    def stream(self) -> int: ...

    @abstractmethod
    def destroy_stream(self, stream: int) -> None: ...

    @abstractmethod
    def to_device(self, ptr: int, array: np.ndarray, stream: int) -> None:
        """Copy a C-contiguous array into device memory, ordered on ``stream``."""

    @abstractmethod
    def to_host(self, array: np.ndarray, ptr: int, stream: int) -> None:
        """Copy device memory into a C-contiguous array, ordered on ``stream``."""

    @abstractmethod
    def synchronize(self, stream: int) -> None: ...


def open_device(device_id: int) -> Device:
    """A :class:`Device` for GPU ``device_id``; a ModelLoadError says why there is none."""
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            cudart = importlib.import_module(module)
        except ImportError:
            continue
        return _CudaPython(cudart, device_id)
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        raise ModelLoadError(
            "TensorRT needs CUDA from Python: pip install 'inferd[tensorrt]' (cuda-python), or torch with CUDA"
        ) from None
    return _TorchCuda(torch, device_id)


class _CudaPython(Device):
    def __init__(self, cudart: Any, device_id: int) -> None:
        super().__init__(device_id)
        self.rt = cudart
        err, count = cudart.cudaGetDeviceCount()
        ok = err == cudart.cudaError_t.cudaSuccess
        if not ok or device_id >= count:
            found = f"{count} GPU(s) found" if ok else self._describe(err)
            raise ModelLoadError(
                f"no CUDA GPU {device_id} for TensorRT ({found}); TensorRT engines run only on NVIDIA GPUs"
            )
        self.select()

    def _describe(self, err: Any) -> str:
        return bytes(self.rt.cudaGetErrorString(err)[1]).decode("utf-8", "replace")

    def _check(self, result: Any, what: str) -> Any:
        err = result[0]
        if err != self.rt.cudaError_t.cudaSuccess:
            raise Internal(f"CUDA {what} failed: {self._describe(err)}")
        return result[1] if len(result) > 1 else None

    def select(self) -> None:
        self._check(self.rt.cudaSetDevice(self.device_id), "cudaSetDevice")

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(nbytes), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr), "cudaFree")

    def stream(self) -> int:
        return int(self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate"))

    def destroy_stream(self, stream: int) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def to_device(self, ptr: int, array: np.ndarray, stream: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, kind, stream), "copy to GPU")

    def to_host(self, array: np.ndarray, ptr: int, stream: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes, kind, stream), "copy to host")

    def synchronize(self, stream: int) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


class _TorchCuda(Device):
    def __init__(self, torch: Any, device_id: int) -> None:
        super().__init__(device_id)
        self.torch = torch
        if not torch.cuda.is_available() or device_id >= torch.cuda.device_count():
            raise ModelLoadError(f"no CUDA GPU {device_id} for TensorRT; TensorRT engines run only on NVIDIA GPUs")
        self.device = torch.device("cuda", device_id)
        self._buffers: dict[int, Any] = {}  # address -> tensor that owns it
        self._streams: dict[int, Any] = {}

    def select(self) -> None:
        self.torch.cuda.set_device(self.device)

    def malloc(self, nbytes: int) -> int:
        t = self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.device)
        self._buffers[t.data_ptr()] = t
        return int(t.data_ptr())

    def free(self, ptr: int) -> None:
        self._buffers.pop(ptr, None)

    def stream(self) -> int:
        s = self.torch.cuda.Stream(self.device)
        self._streams[s.cuda_stream] = s
        return int(s.cuda_stream)

    def destroy_stream(self, stream: int) -> None:
        self._streams.pop(stream, None)

    def _flat(self, array: np.ndarray) -> Any:
        return self.torch.from_numpy(array.reshape(-1).view(np.uint8))

    def to_device(self, ptr: int, array: np.ndarray, stream: int) -> None:
        source = array if array.flags.writeable else array.copy()  # torch refuses read-only memory
        with self.torch.cuda.stream(self._streams[stream]):
            self._buffers[ptr][: array.nbytes].copy_(self._flat(source))

    def to_host(self, array: np.ndarray, ptr: int, stream: int) -> None:
        with self.torch.cuda.stream(self._streams[stream]):
            self._flat(array).copy_(self._buffers[ptr][: array.nbytes])

    def synchronize(self, stream: int) -> None:
        self._streams[stream].synchronize()
