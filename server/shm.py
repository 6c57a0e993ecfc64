"""System shared memory (Triton's extension): the registry of client regions, protocol-neutral.

A client creates a POSIX shared-memory object (``shm_open``; on Linux a file under /dev/shm),
registers a *region* of it under a name, then names that region in the per-tensor parameters
of its requests instead of sending the bytes. Inputs become numpy views of the mapping; outputs
are written into it after the model runs.

Safety, as the server maps memory that another process owns:
- only object *names* are accepted as keys (an optional leading '/', then no '/', NUL or
  '..'), opened under /dev/shm without following symlinks: never a file path;
- every offset and size is checked against the object's real size (Python ints: no overflow),
  at registration and again (``fstat``) whenever a request uses the region, so an object that
  shrank is refused rather than read past its end;
- each region is mapped once, at registration, and unmapped when unregistered or at shutdown;
  a request holds a memoryview of the mapping, so a region unregistered while it is in use is
  unmapped only when the last such view is released (``mmap.close`` refuses while views
  exist; the mapping is then freed by reference counting);
- at most ``MAX_REGIONS`` regions per server;
- an object truncated while a request reads or writes it (after that ``fstat``) does not end
  the server: ``shm_guard.py`` turns the fault into an error for the request and refuses the
  region until it is registered again.

CUDA shared memory regions (``server/cuda_shm.py``) live in the same registry, as in Triton's
``SharedMemoryManager``: one namespace of region names, one bound on their number, the same
switch, and one lookup (:meth:`SharedMemoryRegistry.view`) for the regions a request names.

Messages follow Triton's ``shared_memory_manager.cc`` so that clients read the same text.
"""

from __future__ import annotations

import logging
import mmap
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..protocol import codec
from ..protocol.errors import Code, InferdError, InvalidArgument, NotFound, ResourceExhausted, Unimplemented
from ..protocol.types import InferRequest, InferResponse
from . import shm_guard
from .cuda_shm import (
    IPC_HANDLE_BYTES,
    CudaError,
    CudaOutput,
    CudaRegion,
    CudaRegionStatus,
    check_device,
    output_target,
)
from .cuda_shm import runtime as cuda_runtime
from .shm_guard import Watch

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared-memory objects (glibc's shm_open)
MAX_REGIONS = 256  # registered regions per server; each holds one mapping and one descriptor
MAX_NAME_CHARS = 255  # region names and object keys (NAME_MAX)
# Triton reserves this prefix for the Python backend's own regions.
RESERVED_PREFIX = "triton_python_backend_shm_region_"
FLAG = "--allow-client-shm=true"
DISABLED = f"Client shared memory is disabled. Start the server with '{FLAG}' to enable."


@dataclass(frozen=True, slots=True)
class RegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(slots=True)
class _Region:
    status: RegionStatus
    fd: int
    mapping: mmap.mmap
    start: int  # where the region starts in ``mapping`` (mappings start on a page boundary)
    watch: Watch | None  # SIGBUS guard (None where the native module is missing)


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class SharedMemoryRegistry:
    """The server's registered regions. Thread-safe: HTTP may decode requests on worker threads."""

    def __init__(self, enabled: bool = False, max_regions: int = MAX_REGIONS, directory: str = SHM_DIR) -> None:
        self.enabled = enabled
        self.max_regions = max_regions
        self._directory = directory
        self._regions: dict[str, _Region | CudaRegion] = {}
        self._lock = threading.Lock()
        # The guarded regions a request decoding on this thread has used since mark().
        self._decoding = threading.local()
        self._cuda_usable: bool | None = None

    def require_enabled(self) -> None:
        if not self.enabled:
            raise Unimplemented(DISABLED)

    # --- the API's operations -------------------------------------------------------------
    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.require_enabled()
        _check_name(name, "system")
        object_name = _object_name(name, key)
        _check_sizes(name, offset, byte_size)
        with self._lock:
            self._check_room(name)
            fd = self._open(key, object_name)
            try:
                size = os.fstat(fd).st_size
                if offset + byte_size > size:
                    raise InvalidArgument(
                        f"failed to register shared memory region '{name}': invalid args (offset {offset} + "
                        f"byte_size {byte_size} is beyond the {size} bytes of shared memory object '{key}')"
                    )
                base = offset - offset % mmap.ALLOCATIONGRANULARITY
                mapping = mmap.mmap(fd, offset + byte_size - base, mmap.MAP_SHARED, offset=base)
            except BaseException:
                os.close(fd)
                raise
            status = RegionStatus(name, key, offset, byte_size)
            self._regions[name] = _Region(status, fd, mapping, offset - base, Watch.of(mapping))

    def _check_room(self, name: str) -> None:
        """ALREADY_EXISTS or RESOURCE_EXHAUSTED, for regions of either kind. Holds the lock."""
        if name in self._regions:
            raise InferdError(f"shared memory region '{name}' already in manager", Code.ALREADY_EXISTS)
        if len(self._regions) >= self.max_regions:
            raise ResourceExhausted(
                f"cannot register shared memory region '{name}': the server holds at most "
                f"{self.max_regions} regions; unregister some first"
            )

    def _open(self, key: str, object_name: str) -> int:
        path = os.path.join(self._directory, object_name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            # The reason (errno, path) stays in the server's log, not in the client's message.
            log.debug("cannot open shared memory object %r", path, exc_info=True)
            raise InvalidArgument(f"Unable to open shared memory region: '{key}'") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InvalidArgument(f"Unable to open shared memory region: '{key}' (not a shared memory object)")
        return fd

    def unregister(self, name: str = "") -> None:
        """Unregister one system region, or every system region when ``name`` is empty. An
        unknown name (or a CUDA region's) is not an error, as in Triton."""
        self.require_enabled()
        self._unregister(name, _Region)

    def _unregister(self, name: str, kind: type) -> None:
        with self._lock:
            names = [name] if name else list(self._regions)
            regions = [self._regions.pop(n) for n in names if isinstance(self._regions.get(n), kind)]
        for region in regions:
            _release(region)

    def status(self, name: str = "") -> list[RegionStatus]:
        self.require_enabled()
        return [r.status for r in self._status(name, _Region, "system")]

    def _status(self, name: str, kind: type, kind_name: str) -> list[Any]:
        with self._lock:
            if not name:
                return [r for r in self._regions.values() if isinstance(r, kind)]
            region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find {kind_name} shared memory region: '{name}'")
        if not isinstance(region, kind):
            registered, asked = ("CUDA", "system") if kind is _Region else ("system", "CUDA")
            raise NotFound(
                f"The region named '{name}' is registered as {registered} shared memory, not {asked} shared memory"
            )
        return [region]

    def close(self) -> None:
        """Unmap and close everything (server shutdown); regions still used by requests are
        released when those requests end."""
        with self._lock:
            regions = list(self._regions.values())
            self._regions.clear()
        for region in regions:
            _release(region)

    # --- requests -------------------------------------------------------------------------
    def view(self, name: str, offset: int, byte_size: int, what: str, writable: bool = False) -> memoryview:
        """The bytes ``[offset, offset + byte_size)`` of region ``name``, of either kind: the one
        lookup for the regions requests name.

        A system region gives a view of its mapping (read-only for inputs, writable for outputs),
        which keeps the mapping alive until it is released. A CUDA region gives, for an input, a
        fresh host copy of those bytes and, for an output, a view of a :class:`CudaOutput`
        (``write_outputs`` copies the output to the device), which keeps the region open until
        the request is done."""
        self.require_enabled()
        if not (_is_size(offset) and _is_size(byte_size)):
            raise InvalidArgument(f"{what}: shared memory offset and byte size must be non-negative integers")
        with self._lock:
            region = self._regions.get(name)
            if region is None:
                raise NotFound(f"{what}: Unable to find shared memory region: '{name}'")
            size = region.status.byte_size
            if offset >= size:
                raise InvalidArgument(f"{what}: Invalid offset for shared memory region: '{name}'")
            if offset + byte_size > size:
                raise InvalidArgument(f"{what}: Invalid offset + byte size for shared memory region: '{name}'")
            if isinstance(region, _Region):
                if os.fstat(region.fd).st_size < region.status.offset + size or (
                    region.watch is not None and region.watch.broken()
                ):
                    raise InvalidArgument(
                        f"{what}: the shared memory object behind region '{name}' shrank after the region was "
                        "registered; register it again"
                    )
                used = getattr(self._decoding, "used", None)
                if used is not None and region.watch is not None:
                    used.append(region.watch)
                start = region.start + offset
                view = memoryview(region.mapping)[start : start + byte_size]
                return view if writable else view.toreadonly()
            if writable:
                return memoryview(CudaOutput(region, offset, byte_size, what))
            region.acquire()  # the copy runs outside the lock; unregistering meanwhile waits for it
        try:
            return region.read(offset, byte_size, what)
        finally:
            region.release()

    def __len__(self) -> int:
        return len(self._regions)

    def mark(self) -> int:
        """Called before a request's tensors are decoded (on the decoding thread): the guard's
        fault count, and the start of the list of guarded regions the decoding uses."""
        self._decoding.used = []
        return shm_guard.epoch()

    def attach_use(self, request: InferRequest, mark: int) -> None:
        """After decoding ``request`` (``mark`` from :meth:`mark`): its ``shared_epoch`` and
        ``shared_regions`` (the guarded regions it reads or writes), left unset when it uses none."""
        used, self._decoding.used = getattr(self._decoding, "used", None), None
        if used:
            request.shared_epoch, request.shared_regions = mark, tuple(used)

    # --- CUDA shared memory (cuda_shm.py) ---------------------------------------------------
    def cuda_usable(self) -> bool:
        """Whether CUDA regions can be registered here (cuda-python, a driver and a device), so
        that ServerMetadata lists ``cuda_shared_memory``; asked once, at the first call."""
        if self._cuda_usable is None:
            try:
                self._cuda_usable = cuda_runtime().device_count() > 0
            except Exception:  # no cuda-python, no driver: CudaError, ImportError, OSError
                self._cuda_usable = False
        return self._cuda_usable

    def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        """Open the client's CUDA IPC handle on ``device_id`` as region ``name``. Refused with
        INVALID_ARGUMENT, saying why, where cuda-python, a driver or the device is missing."""
        self.require_enabled()
        _check_name(name, "CUDA")
        if not _is_size(device_id):
            raise InvalidArgument(f"failed to register shared memory region '{name}': invalid args (device_id)")
        cuda = check_device(name, device_id)
        if len(raw_handle) != IPC_HANDLE_BYTES:
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': 'raw_handle' must be the {IPC_HANDLE_BYTES} "
                f"bytes of a cudaIpcMemHandle_t, not {len(raw_handle)}"
            )
        _check_sizes(name, 0, byte_size)
        with self._lock:
            self._check_room(name)  # before the slow open; checked again after it
        try:
            ptr = cuda.open(raw_handle, device_id)
        except CudaError as e:
            log.info("CUDA shared memory region '%s': %s", name, e)
            raise InvalidArgument(f"failed to register shared memory region '{name}': invalid args ({e})") from None
        region = CudaRegion(cuda, CudaRegionStatus(name, device_id, byte_size), ptr)
        try:
            available = cuda.allocation_bytes(ptr, device_id)
            if byte_size > available:
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': invalid args (byte_size {byte_size} is "
                    f"beyond the {available} bytes of the CUDA allocation behind the handle)"
                )
            with self._lock:
                self._check_room(name)
                self._regions[name] = region
        except CudaError as e:
            region.retire()
            log.info("CUDA shared memory region '%s': %s", name, e)
            raise InvalidArgument(f"failed to register shared memory region '{name}': invalid args ({e})") from None
        except BaseException:
            region.retire()
            raise

    def cuda_status(self, name: str = "") -> list[CudaRegionStatus]:
        self.require_enabled()
        return [r.status for r in self._status(name, CudaRegion, "cuda")]

    def unregister_cuda(self, name: str = "") -> None:
        """One CUDA region, or all when ``name`` is empty; an unknown name is not an error."""
        self.require_enabled()
        self._unregister(name, CudaRegion)


def _check_name(name: str, kind: str) -> None:
    if not name:
        raise InvalidArgument(f"'region name' is necessary to register {kind} shared memory region")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidArgument(f"shared memory region names are at most {MAX_NAME_CHARS} characters")


def _check_sizes(name: str, offset: object, byte_size: object) -> None:
    if not (_is_size(offset) and _is_size(byte_size)):
        raise InvalidArgument(
            f"failed to register shared memory region '{name}': offset and byte_size must be non-negative integers"
        )
    if byte_size == 0:
        raise InvalidArgument(f"failed to register shared memory region '{name}': invalid args (byte_size is 0)")


def _object_name(name: str, key: str) -> str:
    """The object's name under SHM_DIR: ``key`` without its optional leading '/'. Anything else
    that could reach another file is refused."""
    object_name = key[1:] if key.startswith("/") else key
    if (
        not object_name
        or len(object_name) > MAX_NAME_CHARS
        or "/" in object_name
        or "\0" in object_name
        or object_name in (".", "..")
    ):
        raise InvalidArgument(
            f"cannot register shared memory region '{name}' - invalid shm key '{key[:MAX_NAME_CHARS]}': a key is "
            "the name of a POSIX shared memory object (e.g. '/input_data'), not a path"
        )
    if object_name.startswith(RESERVED_PREFIX):
        raise InvalidArgument(
            f"cannot register shared memory region '{name}' with key '{key}' as the key contains the reserved "
            f"prefix '{RESERVED_PREFIX}'"
        )
    return object_name


def _release(region: _Region | CudaRegion) -> None:
    if isinstance(region, CudaRegion):
        region.retire()  # closed now, or when the last request using it ends
        return
    os.close(region.fd)
    try:
        region.mapping.close()
    except BufferError:
        return  # a request still reads or writes it: unmapped (and unwatched) when its last view goes
    if region.watch is not None:
        region.watch.release()


# --- outputs --------------------------------------------------------------------------------
def write_outputs(response: InferResponse, regions: Mapping[str, memoryview]) -> InferResponse:
    """Write the outputs named in ``regions`` into their region views (system) or copy them to
    the device (CUDA) and mark them as such in the response. Every size is checked before the
    first byte is written: a region too small for its output is INVALID_ARGUMENT with no region
    changed."""
    plans: list[tuple[memoryview, np.ndarray | bytes]] = []
    for name, target in regions.items():
        array = response.outputs.get(name)
        if array is None:
            continue  # not produced: the model's own validation reports a missing output
        data: np.ndarray | bytes = codec.to_raw(array) if array.dtype.kind in "OSU" else array
        needed = len(data) if isinstance(data, bytes) else data.nbytes
        cuda = output_target(target)
        room = cuda.byte_size if cuda is not None else len(target)
        if needed > room:
            raise InvalidArgument(
                f"shared memory size specified with the request for output '{name}' ({room} bytes) "
                f"should be at least {needed} bytes to hold the results"
            )
        plans.append((target, data))
    for target, data in plans:
        cuda = output_target(target)
        if cuda is not None:
            wire = data if isinstance(data, bytes) else data.reshape(-1).astype(codec.of_array(data).wire, copy=False)
            cuda.write(wire)
        elif isinstance(data, bytes):
            target[: len(data)] = data
        elif data.size:
            dest = np.frombuffer(target, dtype=codec.of_array(data).wire, count=data.size)
            dest[...] = data.reshape(-1)
    response.in_shared_memory = frozenset(regions)
    return response
