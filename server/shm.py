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
- at most ``MAX_REGIONS`` regions per server.

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

import numpy as np

from ..protocol import codec
from ..protocol.errors import Code, InferdError, InvalidArgument, NotFound, ResourceExhausted, Unimplemented
from ..protocol.types import InferResponse

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared-memory objects (glibc's shm_open)
MAX_REGIONS = 256  # registered regions per server; each holds one mapping and one descriptor
MAX_NAME_CHARS = 255  # region names and object keys (NAME_MAX)
# Triton reserves this prefix for the Python backend's own regions.
RESERVED_PREFIX = "triton_python_backend_shm_region_"
FLAG = "--allow-client-shm=true"
DISABLED = f"Client shared memory is disabled. Start the server with '{FLAG}' to enable."
CUDA_UNSUPPORTED = "CUDA shared memory is not supported: inferd serves from the CPU and has no CUDA IPC support"


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


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class SharedMemoryRegistry:
    """The server's registered regions. Thread-safe: HTTP may decode requests on worker threads."""

    def __init__(self, enabled: bool = False, max_regions: int = MAX_REGIONS, directory: str = SHM_DIR) -> None:
        self.enabled = enabled
        self.max_regions = max_regions
        self._directory = directory
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    def require_enabled(self) -> None:
        if not self.enabled:
            raise Unimplemented(DISABLED)

    # --- the API's operations -------------------------------------------------------------
    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.require_enabled()
        if not name:
            raise InvalidArgument("'region name' is necessary to register system shared memory region")
        if len(name) > MAX_NAME_CHARS:
            raise InvalidArgument(f"shared memory region names are at most {MAX_NAME_CHARS} characters")
        object_name = _object_name(name, key)
        if not (_is_size(offset) and _is_size(byte_size)):
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': offset and byte_size must be non-negative integers"
            )
        if byte_size == 0:
            raise InvalidArgument(f"failed to register shared memory region '{name}': invalid args (byte_size is 0)")
        with self._lock:
            if name in self._regions:
                raise InferdError(f"shared memory region '{name}' already in manager", Code.ALREADY_EXISTS)
            if len(self._regions) >= self.max_regions:
                raise ResourceExhausted(
                    f"cannot register shared memory region '{name}': the server holds at most "
                    f"{self.max_regions} regions; unregister some first"
                )
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
            self._regions[name] = _Region(RegionStatus(name, key, offset, byte_size), fd, mapping, offset - base)

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
        """Unregister one region, or every region when ``name`` is empty. An unknown name is not
        an error, as in Triton."""
        self.require_enabled()
        with self._lock:
            if name:
                region = self._regions.pop(name, None)
                regions = [region] if region is not None else []
            else:
                regions = list(self._regions.values())
                self._regions.clear()
        for region in regions:
            _release(region)

    def status(self, name: str = "") -> list[RegionStatus]:
        self.require_enabled()
        with self._lock:
            if not name:
                return [r.status for r in self._regions.values()]
            region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find system shared memory region: '{name}'")
        return [region.status]

    def close(self) -> None:
        """Unmap everything (server shutdown); views still held by requests keep theirs alive."""
        with self._lock:
            regions = list(self._regions.values())
            self._regions.clear()
        for region in regions:
            _release(region)

    # --- requests -------------------------------------------------------------------------
    def view(self, name: str, offset: int, byte_size: int, what: str, writable: bool = False) -> memoryview:
        """The bytes ``[offset, offset + byte_size)`` of region ``name``: read-only for inputs,
        writable for outputs. The view keeps the mapping alive until it is released."""
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
            if os.fstat(region.fd).st_size < region.status.offset + size:
                raise InvalidArgument(
                    f"{what}: the shared memory object behind region '{name}' is smaller than when it was "
                    "registered; register it again"
                )
            start = region.start + offset
            view = memoryview(region.mapping)[start : start + byte_size]
        return view if writable else view.toreadonly()

    def __len__(self) -> int:
        return len(self._regions)

    # --- CUDA shared memory: never registered here ----------------------------------------
    # Registering is refused (CUDA_UNSUPPORTED); status and unregister answer as Triton does
    # when no CUDA region exists, so that clients that clean up both kinds first (Triton's
    # own examples, perf_analyzer) work.
    def cuda_status(self, name: str = "") -> list[RegionStatus]:
        self.require_enabled()
        if name:
            raise NotFound(f"Unable to find cuda shared memory region: '{name}'")
        return []

    def cuda_register(self) -> None:
        self.require_enabled()
        raise Unimplemented(CUDA_UNSUPPORTED)

    def cuda_unregister(self, name: str = "") -> None:
        self.require_enabled()


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


def _release(region: _Region) -> None:
    os.close(region.fd)
    try:
        region.mapping.close()
    except BufferError:
        pass  # a request still reads or writes it: unmapped when its last view is released


# --- outputs --------------------------------------------------------------------------------
def write_outputs(response: InferResponse, regions: Mapping[str, memoryview]) -> InferResponse:
    """Write the outputs named in ``regions`` into their region views and mark them as such in
    the response. Every size is checked before the first byte is written: a region too small
    for its output is INVALID_ARGUMENT with no region changed."""
    plans: list[tuple[memoryview, np.ndarray | bytes]] = []
    for name, target in regions.items():
        array = response.outputs.get(name)
        if array is None:
            continue  # not produced: the model's own validation reports a missing output
        data: np.ndarray | bytes = codec.to_raw(array) if array.dtype.kind in "OSU" else array
        needed = len(data) if isinstance(data, bytes) else data.nbytes
        if needed > len(target):
            raise InvalidArgument(
                f"shared memory size specified with the request for output '{name}' ({len(target)} bytes) "
                f"should be at least {needed} bytes to hold the results"
            )
        plans.append((target, data))
    for target, data in plans:
        if isinstance(data, bytes):
            target[: len(data)] = data
        elif data.size:
            dest = np.frombuffer(target, dtype=codec.of_array(data).wire, count=data.size)
            dest[...] = data.reshape(-1)
    response.in_shared_memory = frozenset(regions)
    return response
