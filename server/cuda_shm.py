"""CUDA shared memory (Triton's cudasharedmemory extension): GPU buffers a client on the same host
exports with ``cudaIpcGetMemHandle`` and registers by its 64-byte handle.

The server opens a handle with ``cudaIpcOpenMemHandle(handle, cudaIpcMemLazyEnablePeerAccess)``
on the named device (selected first: the CUDA device is per thread), checks the registered
byte_size against the allocation behind it (``cuMemGetAddressRange``, as Triton does) and closes
it with ``cudaIpcCloseMemHandle`` when the region is unregistered or the server stops, never while
a request still uses it: every use holds a lease (:meth:`CudaRegion.acquire`), and a region
retired while leased is closed by its last release, as a system region's mapping is freed with
its last view.

inferd's backends take host memory, so an input is copied device-to-host into a fresh buffer
and an output host-to-device into its region, each on a stream of the device that is synchronized
before the call returns (the client reads the region as soon as the response arrives).

cuda-python (``cuda.bindings`` or, before 12.6, ``cuda.cudart`` / ``cuda.cuda``) is imported on
the first registration, never at import, as ``backends/cuda_memory.py`` does for TensorRT. Where it
is missing, or there is no driver or no such device, registration is refused with
INVALID_ARGUMENT, Triton's "GPUs not supported" wording, the reason and what to install. The
registry of names (shared with system regions, as in Triton) is ``server/shm.py``'s.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..protocol.errors import Internal, InvalidArgument

log = logging.getLogger(__name__)

IPC_HANDLE_BYTES = 64  # sizeof(cudaIpcMemHandle_t), CUDA_IPC_HANDLE_SIZE
INSTALL_HINT = "pip install 'inferd[gpu]' (or 'inferd[tensorrt]'), which bring cuda-python"
_RUNTIME_MODULES = ("cuda.bindings.runtime", "cuda.cudart")
_DRIVER_MODULES = ("cuda.bindings.driver", "cuda.cuda")


@dataclass(frozen=True, slots=True)
class CudaRegionStatus:
    name: str
    device_id: int
    byte_size: int


class CudaError(Exception):
    """A CUDA call failed; ``str()`` is CUDA's error name and description, never a traceback."""


def not_supported(name: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"failed to register CUDA shared memory region: '{name}', GPUs not supported: {why}")


class CudaRuntime:
    """The few CUDA calls CUDA shared memory needs, over cuda-python's runtime (and driver, for
    the allocation's size). Thread-safe; every call selects its device first and restores the
    thread's previous one."""

    def __init__(self, rt: Any, drv: Any | None) -> None:
        self.rt = rt
        self.drv = drv
        self._streams: dict[int, Any] = {}
        self._lock = threading.Lock()

    # --- errors -------------------------------------------------------------------------
    def _describe(self, err: Any) -> str:
        try:
            name = self.rt.cudaGetErrorName(err)[1]
            text = self.rt.cudaGetErrorString(err)[1]
            return f"{bytes(name).decode('utf-8', 'replace')}: {bytes(text).decode('utf-8', 'replace')}"
        except Exception:
            return str(getattr(err, "name", err))

    def call(self, what: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)``'s value; CudaError on a CUDA error or any failure inside cuda-python."""
        try:
            result = fn(*args)
        except Exception as e:  # e.g. cuda-python cannot load the CUDA library
            log.debug("%s raised", what, exc_info=True)
            raise CudaError(f"{what} failed ({type(e).__name__})") from None
        err = result[0]
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{what} failed ({self._describe(err)})")
        return result[1] if len(result) == 2 else result[1:] if len(result) > 2 else None

    # --- devices ------------------------------------------------------------------------
    def device_count(self) -> int:
        return int(self.call("cudaGetDeviceCount", self.rt.cudaGetDeviceCount))

    def _enter(self, device_id: int) -> int | None:
        """Select ``device_id`` (always: cudaSetDevice also makes its primary context current,
        which the driver call needs); the device to restore afterwards (None: nothing to restore)."""
        try:
            previous = int(self.call("cudaGetDevice", self.rt.cudaGetDevice))
        except CudaError:
            previous = None
        self.call("cudaSetDevice", self.rt.cudaSetDevice, device_id)
        return previous if previous != device_id else None

    def _leave(self, previous: int | None) -> None:
        if previous is not None:
            try:
                self.call("cudaSetDevice", self.rt.cudaSetDevice, previous)
            except CudaError:
                log.debug("cannot restore CUDA device %d", previous, exc_info=True)

    def _stream(self, device_id: int) -> Any:
        """This device's stream for the server's copies (created once, with the device current)."""
        with self._lock:
            stream = self._streams.get(device_id)
            if stream is None:
                stream = self.call("cudaStreamCreate", self.rt.cudaStreamCreate)
                self._streams[device_id] = stream
            return stream

    # --- IPC ----------------------------------------------------------------------------
    def open(self, raw_handle: bytes, device_id: int) -> int:
        """The device address of the allocation behind ``raw_handle``, opened on ``device_id``."""
        buffer = ctypes.create_string_buffer(bytes(raw_handle), IPC_HANDLE_BYTES)
        # cudaIpcMemHandle_t over our copy of the 64 bytes (cuda-bindings 13 has no 'reserved'
        # field to assign; every version takes the address of an existing handle).
        handle = self.rt.cudaIpcMemHandle_t(_ptr=ctypes.addressof(buffer))
        previous = self._enter(device_id)
        try:
            flags = self.rt.cudaIpcMemLazyEnablePeerAccess
            return int(self.call("cudaIpcOpenMemHandle", self.rt.cudaIpcOpenMemHandle, handle, flags))
        finally:
            self._leave(previous)
            del handle  # before the buffer it points into

    def allocation_bytes(self, ptr: int, device_id: int) -> int:
        """How many bytes the allocation holding ``ptr`` has from ``ptr`` on (cuMemGetAddressRange)."""
        if self.drv is None:
            raise CudaError("cuMemGetAddressRange is not available (no CUDA driver bindings)")
        previous = self._enter(device_id)
        try:
            try:
                err, base, size = self.drv.cuMemGetAddressRange(ptr)
            except Exception as e:
                log.debug("cuMemGetAddressRange raised", exc_info=True)
                raise CudaError(f"cuMemGetAddressRange failed ({type(e).__name__})") from None
            if err != self.drv.CUresult.CUDA_SUCCESS:
                raise CudaError(f"cuMemGetAddressRange failed ({getattr(err, 'name', err)})")
            return int(base) + int(size) - ptr
        finally:
            self._leave(previous)

    def close(self, ptr: int, device_id: int) -> None:
        previous = self._enter(device_id)
        try:
            self.call("cudaIpcCloseMemHandle", self.rt.cudaIpcCloseMemHandle, ptr)
        finally:
            self._leave(previous)

    # --- copies -------------------------------------------------------------------------
    def copy(self, dst: int, src: int, nbytes: int, to_device: bool, device_id: int) -> None:
        """``nbytes`` from ``src`` to ``dst`` (host to device, or device to host), complete on return."""
        kinds = self.rt.cudaMemcpyKind
        kind = kinds.cudaMemcpyHostToDevice if to_device else kinds.cudaMemcpyDeviceToHost
        previous = self._enter(device_id)
        try:
            stream = self._stream(device_id)
            self.call("cudaMemcpyAsync", self.rt.cudaMemcpyAsync, dst, src, nbytes, kind, stream)
            self.call("cudaStreamSynchronize", self.rt.cudaStreamSynchronize, stream)
        finally:
            self._leave(previous)


_runtime: CudaRuntime | None = None
_runtime_lock = threading.Lock()


def _import_bindings() -> tuple[Any, Any | None]:
    """cuda-python's runtime and driver modules (ImportError when it is not installed)."""
    for runtime_name in _RUNTIME_MODULES:
        try:
            rt = importlib.import_module(runtime_name)
        except ImportError:
            continue
        drv = None
        for driver_name in _DRIVER_MODULES:
            try:
                drv = importlib.import_module(driver_name)
                break
            except ImportError:
                continue
        return rt, drv
    raise ImportError("cuda-python")


def runtime() -> CudaRuntime:
    """The process's CudaRuntime, loaded on first use; ImportError without cuda-python."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = CudaRuntime(*_import_bindings())
        return _runtime


def check_device(name: str, device_id: int) -> CudaRuntime:
    """The runtime, once ``device_id`` is known to exist; otherwise INVALID_ARGUMENT saying why
    CUDA shared memory cannot work here and what would make it."""
    try:
        cuda = runtime()
    except Exception:
        log.debug("cuda-python cannot be imported", exc_info=True)
        raise not_supported(name, f"cuda-python is not installed on the server; {INSTALL_HINT}") from None
    try:
        count = cuda.device_count()
    except CudaError as e:
        raise not_supported(
            name, f"no usable NVIDIA GPU and driver on the server ({e}); CUDA shared memory needs both"
        ) from None
    if not 0 <= device_id < count:
        raise not_supported(name, f"no CUDA device {device_id} on the server ({count} found)")
    return cuda


# --- regions --------------------------------------------------------------------------------
class CudaRegion:
    """One opened handle. ``acquire`` / ``release`` bracket every use; ``retire`` (unregister,
    shutdown) closes it now, or at the last release when a request still uses it."""

    def __init__(self, cuda: CudaRuntime, status: CudaRegionStatus, ptr: int) -> None:
        self.status = status
        self._cuda = cuda
        self._ptr = ptr
        self._users = 0
        self._retired = False
        self._closed = False
        self._lock = threading.Lock()

    @property
    def byte_size(self) -> int:
        return self.status.byte_size

    def acquire(self) -> None:
        with self._lock:
            if self._retired:
                raise AssertionError("a retired CUDA region is not in the registry")
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            close = self._retired and self._users == 0 and not self._closed
            self._closed = self._closed or close
        if close:
            self._close()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            close = self._users == 0 and not self._closed
            self._closed = self._closed or close
        if close:
            self._close()

    def _close(self) -> None:
        try:
            self._cuda.close(self._ptr, self.status.device_id)
        except CudaError as e:
            log.warning("CUDA shared memory region '%s': %s", self.status.name, e)

    # Callers hold a lease and have checked offset and size against byte_size.
    def read(self, offset: int, nbytes: int, what: str) -> memoryview:
        """A fresh host copy of ``[offset, offset + nbytes)``."""
        host = np.empty(nbytes, np.uint8)
        if nbytes:
            try:
                self._cuda.copy(host.ctypes.data, self._ptr + offset, nbytes, False, self.status.device_id)
            except CudaError as e:
                raise Internal(f"{what}: copy from CUDA shared memory region '{self.status.name}': {e}") from None
        return host.data

    def write(self, offset: int, data: np.ndarray, what: str) -> None:
        """Copy the C-contiguous ``data`` to ``offset``."""
        if data.nbytes:
            try:
                self._cuda.copy(self._ptr + offset, data.ctypes.data, data.nbytes, True, self.status.device_id)
            except CudaError as e:
                raise Internal(f"{what}: copy into CUDA shared memory region '{self.status.name}': {e}") from None


class CudaOutput(bytearray):
    """Where a requested output goes in a CUDA region. Requests carry outputs' targets as
    memoryviews (``InferRequest.output_regions``): this empty bytearray is the object behind
    such a view (``memoryview.obj``), carrying the region, offset and size. It holds a lease
    on the region until it is garbage (the request is done): a decoupled model's responses may
    write it more than once."""

    def __init__(self, region: CudaRegion, offset: int, byte_size: int, what: str) -> None:
        super().__init__()
        self.region = region
        self.offset = offset
        self.byte_size = byte_size
        self.what = what
        region.acquire()
        self._lease = weakref.finalize(self, region.release)

    def write(self, data: bytes | np.ndarray) -> None:
        """All of ``data`` (at most ``byte_size`` bytes: checked by the caller) into the region."""
        array = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else np.ascontiguousarray(data)
        self.region.write(self.offset, array, self.what)


def output_target(view: memoryview) -> CudaOutput | None:
    """The CUDA target behind an output's view, or None for system shared memory."""
    obj = view.obj
    return obj if isinstance(obj, CudaOutput) else None
