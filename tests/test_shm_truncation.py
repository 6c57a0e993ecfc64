"""A client that shrinks a registered shared-memory object while the server reads or writes it
(server/shm_guard.py): the request fails with a clear error, the region is refused until it is
registered again, nothing wrong is cached, and the server stays up. Without the guard the
access would be SIGBUS and the end of the server.

The truncation has to land after the server's own size check and before the bytes are read,
so the model does it: it shrinks the object named in the request parameter ``truncate`` inside
``execute``, then reads its input (or leaves the output to be written)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from inferd.protocol.errors import InferdError
from inferd.protocol.types import InferRequest
from inferd.server import shm_guard
from inferd.server.shm import SharedMemoryRegistry
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, test_settings
from .models import write_python

pytestmark = pytest.mark.skipif(
    not shm_guard.available() and os.environ.get("INFERD_REQUIRE_NATIVE_GRPC") != "1",
    reason="the shared-memory guard (native/shm_guard.c) was not built: no C compiler at install",
)

PAGES = 16
FLOATS = PAGES * 1024  # FP32 over 16 pages of 4 KiB

MODEL = """
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            key = json.loads(request.parameters()).get("truncate")
            if key:  # the client shrinking its object, after the server checked its size
                os.truncate("/dev/shm/" + key.lstrip("/"), 0)
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            total = np.array([x.sum(dtype=np.float64)], np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", total)]))
        return responses
"""
CONFIG = """
name: "summer"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
response_cache { enable: true }
"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("truncation")
    write_python(repo, "summer", CONFIG, MODEL)
    running = start_server(test_settings(repo, allow_client_shm=True, response_cache_bytes=1 << 20))
    yield running
    running.stop()


class Objects:
    """Shared-memory objects made with tritonclient's utilities, destroyed at the end."""

    def __init__(self) -> None:
        self.handles: list[object] = []

    def ones(self, name: str, count: int = FLOATS) -> str:
        key = f"/inferd_trunc_{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(name, key, count * 4)
        shm.set_shared_memory_region(handle, [np.ones(count, np.float32)])
        self.handles.append(handle)
        return key

    def close(self) -> None:
        for h in self.handles:
            try:
                shm.destroy_shared_memory_region(h)
            except Exception:  # noqa: BLE001 - already gone
                pass


@pytest.fixture
def objects() -> Iterator[Objects]:
    made = Objects()
    yield made
    made.close()


def _client(protocol: str, server: RunningServer):  # type: ignore[no-untyped-def]
    if protocol == "grpc":
        return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient, httpclient.InferenceServerClient(server.http_url)


def _infer(module, client, region: str, truncate: str = "", out_region: str = ""):  # type: ignore[no-untyped-def]
    x = module.InferInput("INPUT0", [FLOATS], "FP32")
    x.set_shared_memory(region, FLOATS * 4)
    outputs = None
    if out_region:
        out = module.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory(out_region, 4)
        outputs = [out]
    params = {"truncate": truncate} if truncate else None
    return client.infer("summer", [x], outputs=outputs, parameters=params)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_input_truncated_while_read(protocol: str, guarded: RunningServer, objects: Objects) -> None:
    module, client = _client(protocol, guarded)
    try:
        key = objects.ones("victim")
        client.register_system_shared_memory("victim", key, FLOATS * 4)
        assert _infer(module, client, "victim").as_numpy("OUTPUT0")[0] == FLOATS  # cached from here on
        # Another key for the same bytes: not answered from the cache, the model runs and truncates.
        with pytest.raises(InferenceServerException, match="was truncated by its owner") as info:
            _infer(module, client, "victim", truncate=key)
        assert "StatusCode.INVALID_ARGUMENT" in str(info.value.status()) or info.value.status() == "400"
        assert client.is_server_live() and client.is_model_ready("summer")
        with pytest.raises(InferenceServerException, match="shrank after the region was registered"):
            _infer(module, client, "victim")  # broken until registered again
        client.unregister_system_shared_memory("victim")
        fresh = objects.ones("fresh")
        client.register_system_shared_memory("victim", fresh, FLOATS * 4)
        assert _infer(module, client, "victim").as_numpy("OUTPUT0")[0] == FLOATS
        # The failed request's inputs and parameters again (its object is already empty): had the
        # answer computed from the lost pages been cached, this would be it.
        assert _infer(module, client, "victim", truncate=key).as_numpy("OUTPUT0")[0] == FLOATS
    finally:
        client.unregister_system_shared_memory()
        client.close()


def test_output_truncated_before_written(guarded: RunningServer, objects: Objects) -> None:
    module, client = _client("grpc", guarded)
    try:
        client.register_system_shared_memory("in", objects.ones("in"), FLOATS * 4)
        out_key = objects.ones("out", 1024)  # one page
        client.register_system_shared_memory("out", out_key, 4)
        with pytest.raises(InferenceServerException, match="was truncated by its owner"):
            _infer(module, client, "in", truncate=out_key, out_region="out")
        assert client.is_server_live()
        with pytest.raises(InferenceServerException, match="shrank after the region was registered"):
            _infer(module, client, "in", out_region="out")
    finally:
        client.unregister_system_shared_memory()
        client.close()


def test_registry_survives_truncation_in_process(tmp_path: Path) -> None:
    """Two regions, two requests' decodings: the region whose object shrank fails its request
    and is refused from then on; the request on the other region is not touched."""
    keys = [f"inferd_trunc_unit_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    paths = [Path("/dev/shm") / k for k in keys]
    for path in paths:
        path.write_bytes(b"\x01" * (PAGES * 4096))
    try:
        registry = SharedMemoryRegistry(enabled=True)
        registry.register("victim", keys[0], 0, PAGES * 4096)
        registry.register("other", keys[1], 0, PAGES * 4096)
        victim, other, none = (InferRequest("m", {}) for _ in range(3))
        mark = registry.mark()
        array = np.frombuffer(registry.view("victim", 0, PAGES * 4096, "t"), np.uint8)
        registry.attach_use(victim, mark)
        mark = registry.mark()
        registry.view("other", 0, 64, "t")
        registry.attach_use(other, mark)
        assert victim.shared_epoch is not None and other.shared_epoch is not None
        assert len(victim.shared_regions) == len(other.shared_regions) == 1
        registry.attach_use(none, registry.mark())  # a decoding that used no region
        assert none.shared_epoch is None and none.shared_regions == ()
        os.truncate(paths[0], 4096)
        assert int(array.sum()) == 4096  # the first page is still there; the lost ones read as zeros
        with pytest.raises(InferdError, match="was truncated by its owner"):
            shm_guard.check(victim.shared_epoch, victim.shared_regions)
        shm_guard.check(other.shared_epoch, other.shared_regions)  # its region is whole: no error
        with pytest.raises(InferdError, match="shrank after the region was registered"):
            registry.view("victim", 0, 1, "t")
        del array
        registry.close()
    finally:
        for path in paths:
            path.unlink()


def test_sigbus_elsewhere_still_ends_the_process(tmp_path: Path) -> None:
    """The guard answers only for watched mappings: any other SIGBUS keeps its usual action."""
    script = f"""
import mmap, os
from inferd.server import shm_guard
guarded = mmap.mmap(-1, 4096)
shm_guard.Watch.of(guarded)
path = {str(tmp_path / "other")!r}
with open(path, "wb") as f:
    f.write(bytes(8192))
fd = os.open(path, os.O_RDWR)
other = mmap.mmap(fd, 8192)
os.ftruncate(fd, 0)
print(other[5000])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGBUS, result.stderr.decode()[-500:]
