"""CUDA shared memory (server/cuda_shm.py, registered in server/shm.py's registry).

Three parts:
- everywhere: how registration is refused where CUDA cannot work (no cuda-python, no driver, no
  such device), the status / unregister answers, the disabled server, a request naming an
  unknown region, over gRPC and HTTP with tritonclient; none of it harms the server;
- everywhere: the whole path (register, inputs copied from the device, outputs copied to it,
  leases, close at unregister and shutdown) over a stand-in for cuda-python's calls whose
  "device memory" is host memory. It checks inferd's logic, not CUDA: the real API is exercised
  only by the GPU tests;
- on a GPU (``-m gpu``; skipped with the reason elsewhere): Triton's simple_{grpc,http}_cudashm
  client flow with ``tritonclient.utils.cuda_shared_memory``.
"""

from __future__ import annotations

import base64
import ctypes
import enum
import multiprocessing
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from inferd.protocol.errors import InferdError
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.pb import grpc_service_pb2_grpc as pb_grpc
from inferd.server import cuda_shm
from inferd.server.shm import SharedMemoryRegistry
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from .conftest import RunningServer, start_server, test_settings
from .serving import serve_argv

FLOATS = 16 * 4  # one add_sub tensor, [1, 16] FP32
HANDLE = bytes(range(64))  # the size of a cudaIpcMemHandle_t; opens nothing


@pytest.fixture(scope="module")
def shm_server(model_repo: Path) -> Iterator[RunningServer]:
    running = start_server(test_settings(model_repo, allow_client_shm=True))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def grpc_client(shm_server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(shm_server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(shm_server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(shm_server.http_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(shm_server: RunningServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(shm_server.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def http(shm_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{shm_server.http_url}", timeout=30) as c:
        yield c


def grpc_error(call, *args, **kwargs) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def cuda_reason() -> str | None:
    """Why this machine cannot open CUDA IPC handles (None: it has a GPU that cuda-python sees)."""
    saved = cuda_shm._runtime
    try:
        cuda_shm.check_device("probe", 0)
        return None
    except InferdError as e:
        return e.message
    finally:
        cuda_shm._runtime = saved


def add_sub_ok(client: grpcclient.InferenceServerClient) -> None:
    """The server still serves: add_sub with the tensors on the wire."""
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "FP32"), grpcclient.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    np.testing.assert_array_equal(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), a + a)


# --- refused where CUDA cannot work ------------------------------------------------------------
def test_register_refused_without_cuda(grpc_client, http_client, http, stub) -> None:  # type: ignore[no-untyped-def]
    """tritonclient's register_cuda_shared_memory with a well-formed 64-byte handle, on a host
    where CUDA cannot open it: INVALID_ARGUMENT / 400 with Triton's "GPUs not supported" and
    the reason, never a Python exception's text; nothing is registered."""
    reason = cuda_reason()
    if reason is None:
        pytest.skip("this machine has a usable GPU: registration is not refused here")
    b64 = base64.b64encode(HANDLE)
    with pytest.raises(InferenceServerException) as info:
        grpc_client.register_cuda_shared_memory("c", b64, 0, 64)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    message = info.value.message()
    assert message == reason.replace("'probe'", "'c'")
    assert message.startswith("failed to register CUDA shared memory region: 'c', GPUs not supported: ")
    assert "cuda-python is not installed" in message or "no usable NVIDIA GPU and driver" in message
    assert "Traceback" not in message and "Error:" not in message.split("(")[0]
    with pytest.raises(InferenceServerException) as info:
        http_client.register_cuda_shared_memory("c", b64, 0, 64)
    assert "GPUs not supported" in info.value.message()
    r = http.post(
        "/v2/cudasharedmemory/region/c/register",
        json={"raw_handle": {"b64": b64.decode()}, "device_id": 0, "byte_size": 64},
    )
    assert r.status_code == 400 and r.json()["error"] == message
    assert grpc_client.get_cuda_shared_memory_status().regions == {}
    assert http.get("/v2/cudasharedmemory/status").json() == []
    add_sub_ok(grpc_client)


def test_refusals_name_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each reason, as the registry gives it: cuda-python missing, no driver, no such device."""
    registry = SharedMemoryRegistry(enabled=True)
    monkeypatch.setattr(cuda_shm, "_runtime", None)

    def missing() -> None:
        raise ImportError("No module named 'cuda'")

    monkeypatch.setattr(cuda_shm, "_import_bindings", missing)
    with pytest.raises(InferdError) as info:
        registry.register_cuda("c", HANDLE, 0, 64)
    assert info.value.code.name == "INVALID_ARGUMENT"
    assert "cuda-python is not installed on the server; pip install 'inferd[gpu]'" in info.value.message
    assert "No module named" not in info.value.message

    monkeypatch.setattr(cuda_shm, "_runtime", cuda_shm.CudaRuntime(FakeCuda(devices=0, driver=False), None))
    with pytest.raises(InferdError, match=r"no usable NVIDIA GPU and driver .*cudaErrorInsufficientDriver"):
        registry.register_cuda("c", HANDLE, 0, 64)
    monkeypatch.setattr(cuda_shm, "_runtime", cuda_shm.CudaRuntime(FakeCuda(devices=2), None))
    with pytest.raises(InferdError, match=r"no CUDA device 2 on the server \(2 found\)"):
        registry.register_cuda("c", HANDLE, 2, 64)
    assert len(registry) == 0


def test_status_and_unregister_of_unknown_names(grpc_client, http_client, stub, http) -> None:  # type: ignore[no-untyped-def]
    e = grpc_error(stub.CudaSharedMemoryStatus, pb.CudaSharedMemoryStatusRequest(name="nope"))
    assert e.code() == grpc.StatusCode.NOT_FOUND and e.details() == "Unable to find cuda shared memory region: 'nope'"
    r = http.get("/v2/cudasharedmemory/region/nope/status")
    assert r.status_code == 404 and r.json()["error"] == "Unable to find cuda shared memory region: 'nope'"
    grpc_client.unregister_cuda_shared_memory("nope")  # not an error, as in Triton
    grpc_client.unregister_cuda_shared_memory()
    http_client.unregister_cuda_shared_memory("nope")
    http_client.unregister_cuda_shared_memory()
    assert http_client.get_cuda_shared_memory_status() == []
    assert not stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest()).regions


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"raw_handle": "AAAA", "device_id": 0, "byte_size": 64},
        {"raw_handle": {"b64": "not base64!"}, "device_id": 0, "byte_size": 64},
        {"raw_handle": {"b64": 7}, "device_id": 0, "byte_size": 64},
        {"raw_handle": {"b64": base64.b64encode(HANDLE).decode()}, "byte_size": 64},
        {"raw_handle": {"b64": base64.b64encode(HANDLE).decode()}, "device_id": -1, "byte_size": 64},
        {"raw_handle": {"b64": base64.b64encode(HANDLE).decode()}, "device_id": 0, "byte_size": 1.5},
        {"raw_handle": {"b64": base64.b64encode(HANDLE).decode()}, "device_id": True, "byte_size": 64},
    ],
)
def test_malformed_http_register(body: dict[str, Any], http) -> None:  # type: ignore[no-untyped-def]
    r = http.post("/v2/cudasharedmemory/region/c/register", json=body)
    assert r.status_code == 400, r.text
    assert "Traceback" not in r.text


def test_disabled_server_names_the_flag(server: RunningServer) -> None:
    """Without --allow-client-shm every CUDA RPC says how to turn shared memory on."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for call, msg in (
            (
                stub.CudaSharedMemoryRegister,
                pb.CudaSharedMemoryRegisterRequest(name="c", raw_handle=HANDLE, byte_size=64),
            ),
            (stub.CudaSharedMemoryStatus, pb.CudaSharedMemoryStatusRequest()),
            (stub.CudaSharedMemoryUnregister, pb.CudaSharedMemoryUnregisterRequest()),
        ):
            e = grpc_error(call, msg)
            assert e.code() == grpc.StatusCode.UNIMPLEMENTED and "--allow-client-shm=true" in e.details()
    base = f"http://{server.http_url}/v2/cudasharedmemory"
    body = {"raw_handle": {"b64": base64.b64encode(HANDLE).decode()}, "device_id": 0, "byte_size": 64}
    for r in (
        httpx.post(f"{base}/region/c/register", json=body),
        httpx.get(f"{base}/status"),
        httpx.post(f"{base}/unregister"),
    ):
        assert r.status_code == 501 and "--allow-client-shm=true" in r.json()["error"]


def test_request_naming_an_unknown_region(grpc_client, http_client) -> None:  # type: ignore[no-untyped-def]
    for module, client in ((grpcclient, grpc_client), (httpclient, http_client)):
        inputs = [module.InferInput("INPUT0", [1, 16], "FP32"), module.InferInput("INPUT1", [1, 16], "FP32")]
        inputs[0].set_shared_memory("no_such_cuda_region", FLOATS)
        inputs[1].set_data_from_numpy(np.ones((1, 16), np.float32))
        with pytest.raises(
            InferenceServerException, match="Unable to find shared memory region: 'no_such_cuda_region'"
        ):
            client.infer("add_sub", inputs)
    add_sub_ok(grpc_client)


# --- the whole path over a stand-in for cuda-python ------------------------------------------
class FakeCuda:
    """The cuda-python calls cuda_shm makes (runtime and driver), with cuda-python's calling
    convention (a tuple whose first item is the error), over host memory: an allocation is a
    ctypes buffer and its IPC handle is 64 bytes that name it. Copies outside an opened
    allocation fail, as CUDA's would, so an unchecked offset shows up as an error."""

    class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorInsufficientDriver = 35
        cudaErrorInvalidDevice = 101

    class CUresult(enum.IntEnum):  # noqa: N801
        CUDA_SUCCESS = 0
        CUDA_ERROR_INVALID_VALUE = 1

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    cudaIpcMemLazyEnablePeerAccess = 1

    class cudaIpcMemHandle_t:  # noqa: N801
        def __init__(self, _ptr: int = 0) -> None:
            self._ptr = _ptr

        def getPtr(self) -> int:  # noqa: N802
            return self._ptr

    def __init__(self, devices: int = 1, driver: bool = True) -> None:
        self.devices = devices
        self.driver = driver
        self.allocations: dict[bytes, Any] = {}  # handle -> ctypes buffer
        self.opened: dict[int, int] = {}  # address -> times opened and not closed
        self.device = threading.local()
        self.ok = self.cudaError_t.cudaSuccess

    # the client's side
    def allocate(self, nbytes: int) -> tuple[bytes, Any]:
        buffer = (ctypes.c_char * nbytes)()
        handle = len(self.allocations).to_bytes(8, "little") * 8
        self.allocations[handle] = buffer
        return handle, buffer

    # the runtime
    def cudaGetDeviceCount(self):  # type: ignore[no-untyped-def]  # noqa: N802
        if not self.driver:
            return (self.cudaError_t.cudaErrorInsufficientDriver, None)
        return (self.ok, self.devices)

    def cudaGetErrorName(self, err):  # type: ignore[no-untyped-def]  # noqa: N802
        return (self.ok, err.name.encode())

    def cudaGetErrorString(self, err):  # type: ignore[no-untyped-def]  # noqa: N802
        return (self.ok, b"a stand-in error")

    def cudaGetDevice(self):  # type: ignore[no-untyped-def]  # noqa: N802
        return (self.ok, getattr(self.device, "id", 0))

    def cudaSetDevice(self, device_id):  # type: ignore[no-untyped-def]  # noqa: N802
        if not 0 <= device_id < self.devices:
            return (self.cudaError_t.cudaErrorInvalidDevice,)
        self.device.id = device_id
        return (self.ok,)

    def cudaIpcOpenMemHandle(self, handle, flags):  # type: ignore[no-untyped-def]  # noqa: N802
        assert flags == self.cudaIpcMemLazyEnablePeerAccess
        buffer = self.allocations.get(ctypes.string_at(handle.getPtr(), 64))
        if buffer is None:
            return (self.cudaError_t.cudaErrorInvalidValue, None)
        address = ctypes.addressof(buffer)
        self.opened[address] = self.opened.get(address, 0) + 1
        return (self.ok, address)

    def cudaIpcCloseMemHandle(self, ptr):  # type: ignore[no-untyped-def]  # noqa: N802
        if not self.opened.get(ptr):
            return (self.cudaError_t.cudaErrorInvalidValue,)
        self.opened[ptr] -= 1
        if not self.opened[ptr]:
            del self.opened[ptr]
        return (self.ok,)

    def cudaStreamCreate(self):  # type: ignore[no-untyped-def]  # noqa: N802
        return (self.ok, 1)

    def cudaStreamSynchronize(self, stream):  # type: ignore[no-untyped-def]  # noqa: N802
        return (self.ok,)

    def _in_device_memory(self, ptr: int, nbytes: int) -> bool:
        for buffer in self.allocations.values():
            base = ctypes.addressof(buffer)
            if base in self.opened and base <= ptr and ptr + nbytes <= base + ctypes.sizeof(buffer):
                return True
        return False

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # type: ignore[no-untyped-def]  # noqa: N802
        device = dst if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice else src
        if not self._in_device_memory(device, nbytes):
            return (self.cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(dst, src, nbytes)
        return (self.ok,)

    # the driver
    def cuMemGetAddressRange(self, ptr):  # type: ignore[no-untyped-def]  # noqa: N802
        for buffer in self.allocations.values():
            base = ctypes.addressof(buffer)
            if base <= ptr < base + ctypes.sizeof(buffer):
                return (self.CUresult.CUDA_SUCCESS, base, ctypes.sizeof(buffer))
        return (self.CUresult.CUDA_ERROR_INVALID_VALUE, 0, 0)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCuda]:
    """The stand-in as the server's CUDA (the test servers run in this process)."""
    cuda = FakeCuda(devices=2)
    monkeypatch.setattr(cuda_shm, "_runtime", cuda_shm.CudaRuntime(cuda, cuda))
    yield cuda


def register(client, name: str, handle: bytes, byte_size: int, device_id: int = 0) -> None:  # type: ignore[no-untyped-def]
    client.register_cuda_shared_memory(name, base64.b64encode(handle), device_id, byte_size)


def as_array(buffer: Any, dtype: Any, count: int, offset: int = 0) -> np.ndarray:
    return np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_infer_through_cuda_regions(protocol: str, fake: FakeCuda, grpc_client, http_client) -> None:  # type: ignore[no-untyped-def]
    """simple_{grpc,http}_cudashm_client.py's flow: inputs in one region, outputs in another;
    status, then unregister closes both handles."""
    module, client = (grpcclient, grpc_client) if protocol == "grpc" else (httpclient, http_client)
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.full((1, 16), 0.5, np.float32)
    in_handle, in_buffer = fake.allocate(2 * FLOATS)
    out_handle, out_buffer = fake.allocate(2 * FLOATS)
    ctypes.memmove(in_buffer, a.tobytes() + b.tobytes(), 2 * FLOATS)  # the client's cudaMemcpy
    register(client, "input_data", in_handle, 2 * FLOATS)
    register(client, "output_data", out_handle, 2 * FLOATS, device_id=1)
    inputs = [module.InferInput("INPUT0", [1, 16], "FP32"), module.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_shared_memory("input_data", FLOATS)
    inputs[1].set_shared_memory("input_data", FLOATS, offset=FLOATS)
    outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("output_data", FLOATS)
    outputs[1].set_shared_memory("output_data", FLOATS, offset=FLOATS)
    result = client.infer("add_sub", inputs, outputs=outputs)
    assert result.get_output("OUTPUT0") is not None  # name, datatype and shape; the data is in the region
    if protocol == "grpc":
        assert list(result.get_response().raw_output_contents) == [b"", b""]
    np.testing.assert_array_equal(as_array(out_buffer, np.float32, 16), (a + b).ravel())
    np.testing.assert_array_equal(as_array(out_buffer, np.float32, 16, FLOATS), (a - b).ravel())

    if protocol == "grpc":
        status = client.get_cuda_shared_memory_status().regions
        assert {n: (r.device_id, r.byte_size) for n, r in status.items()} == {
            "input_data": (0, 2 * FLOATS),
            "output_data": (1, 2 * FLOATS),
        }
    else:
        assert sorted(client.get_cuda_shared_memory_status(), key=lambda r: r["name"]) == [
            {"name": "input_data", "device_id": 0, "byte_size": 2 * FLOATS},
            {"name": "output_data", "device_id": 1, "byte_size": 2 * FLOATS},
        ]
    assert len(fake.opened) == 2
    client.unregister_cuda_shared_memory("input_data")
    assert len(fake.opened) == 1
    client.unregister_cuda_shared_memory()
    assert fake.opened == {}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bytes_tensors_in_cuda_regions(protocol: str, fake: FakeCuda, grpc_client, http_client) -> None:  # type: ignore[no-untyped-def]
    """BYTES in and out, in their 4-byte-length-prefixed form, as system shared memory."""
    module, client = (grpcclient, grpc_client) if protocol == "grpc" else (httpclient, http_client)
    data = np.array([[b"hello", "wörld".encode()]], dtype=object)
    serialized = serialize_byte_tensor(data)
    size = serialized_byte_size(serialized)
    in_handle, in_buffer = fake.allocate(size)
    out_handle, out_buffer = fake.allocate(size + 7)
    ctypes.memmove(in_buffer, serialized.item(), size)
    register(client, "in0", in_handle, size)
    register(client, "out0", out_handle, size + 7)
    try:
        inp = module.InferInput("INPUT0", [1, 2], "BYTES")
        inp.set_shared_memory("in0", size)
        out = module.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory("out0", size + 7)
        client.infer("strings", [inp], outputs=[out])
        assert bytes(out_buffer)[:size] == serialized.item()
    finally:
        client.unregister_cuda_shared_memory()
    assert fake.opened == {}


def test_output_region_too_small_writes_nothing(fake: FakeCuda, grpc_client, http_client) -> None:  # type: ignore[no-untyped-def]
    in_handle, in_buffer = fake.allocate(2 * FLOATS)
    out_handle, out_buffer = fake.allocate(2 * FLOATS)
    register(grpc_client, "in", in_handle, 2 * FLOATS)
    register(grpc_client, "out", out_handle, 2 * FLOATS)
    try:
        for module, client in ((grpcclient, grpc_client), (httpclient, http_client)):
            inputs = [module.InferInput("INPUT0", [1, 16], "FP32"), module.InferInput("INPUT1", [1, 16], "FP32")]
            inputs[0].set_shared_memory("in", FLOATS)
            inputs[1].set_shared_memory("in", FLOATS, offset=FLOATS)
            outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
            outputs[0].set_shared_memory("out", FLOATS)  # fits
            outputs[1].set_shared_memory("out", FLOATS - 4, offset=FLOATS)  # one float short
            with pytest.raises(InferenceServerException) as info:
                client.infer("add_sub", inputs, outputs=outputs)
            assert "should be at least 64 bytes to hold the results" in info.value.message()
            assert bytes(out_buffer) == bytes(2 * FLOATS)  # not even OUTPUT0, which fitted
    finally:
        grpc_client.unregister_cuda_shared_memory()
    add_sub_ok(grpc_client)


def test_register_refusals_and_shared_namespace(fake: FakeCuda, stub, http, grpc_client) -> None:  # type: ignore[no-untyped-def]
    handle, _ = fake.allocate(4096)
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    def reg(name: str, raw: bytes = handle, device_id: int = 0, byte_size: int = 64) -> None:
        stub.CudaSharedMemoryRegister(
            pb.CudaSharedMemoryRegisterRequest(name=name, raw_handle=raw, device_id=device_id, byte_size=byte_size)
        )

    for kwargs, text in (
        ({"raw": handle[:63]}, "'raw_handle' must be the 64 bytes of a cudaIpcMemHandle_t, not 63"),
        ({"raw": b"\xff" * 64}, "invalid args (cudaIpcOpenMemHandle failed (cudaErrorInvalidValue"),
        ({"byte_size": 4097}, "byte_size 4097 is beyond the 4096 bytes of the CUDA allocation"),
        ({"byte_size": 2**64 - 1}, "beyond the 4096 bytes"),
        ({"byte_size": 0}, "byte_size is 0"),
        ({"device_id": 7}, "no CUDA device 7 on the server (2 found)"),
    ):
        e = grpc_error(reg, "c", **kwargs)
        assert e.code() == invalid and text in e.details(), (kwargs, e.details())
    e = grpc_error(reg, "")
    assert e.code() == invalid
    assert fake.opened == {}  # every refused open was closed again

    reg("c")
    e = grpc_error(reg, "c")
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS and "shared memory region 'c' already in manager" in e.details()
    # One namespace with system regions, as in Triton: the other kind's calls do not see it.
    e = grpc_error(
        stub.SystemSharedMemoryRegister, pb.SystemSharedMemoryRegisterRequest(name="c", key="/x", byte_size=8)
    )
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS
    e = grpc_error(stub.SystemSharedMemoryStatus, pb.SystemSharedMemoryStatusRequest(name="c"))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert e.details() == "The region named 'c' is registered as CUDA shared memory, not system shared memory"
    assert not stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions
    grpc_client.unregister_system_shared_memory("c")  # another kind's name: not unregistered
    grpc_client.unregister_system_shared_memory()
    assert list(grpc_client.get_cuda_shared_memory_status().regions) == ["c"]
    r = http.get("/v2/cudasharedmemory/region/c/status")
    assert r.json() == [{"name": "c", "device_id": 0, "byte_size": 64}]
    grpc_client.unregister_cuda_shared_memory("c")
    assert fake.opened == {}


def test_request_bounds(fake: FakeCuda, stub, grpc_client) -> None:  # type: ignore[no-untyped-def]
    handle, _ = fake.allocate(4096)
    register(grpc_client, "in", handle, 256)  # a region smaller than its allocation
    try:
        for offset, size, text in (
            (256, FLOATS, "Invalid offset for shared memory region: 'in'"),
            (256 - 8, FLOATS, "Invalid offset + byte size"),
            (2**63 - 1, FLOATS, "Invalid offset"),
            (0, FLOATS - 4, "does not match shape"),
        ):
            msg = pb.ModelInferRequest(model_name="add_sub")
            t0 = msg.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
            t0.parameters["shared_memory_region"].string_param = "in"
            t0.parameters["shared_memory_offset"].int64_param = offset
            t0.parameters["shared_memory_byte_size"].int64_param = size
            msg.inputs.add(name="INPUT1", datatype="FP32", shape=[1, 16])
            msg.raw_input_contents.append(np.ones(16, np.float32).tobytes())
            e = grpc_error(stub.ModelInfer, msg)
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and text in e.details(), (offset, size, e.details())
    finally:
        grpc_client.unregister_cuda_shared_memory()


def test_unregister_while_in_use(fake: FakeCuda) -> None:
    """A region unregistered (or the server stopped) while a request holds an output in it is
    closed when that request is done, not before."""
    registry = SharedMemoryRegistry(enabled=True)
    handle, buffer = fake.allocate(256)
    registry.register_cuda("r", handle, 0, 256)
    target = registry.view("r", 16, 8, "t", writable=True)
    registry.unregister_cuda("r")
    assert len(registry) == 0 and len(fake.opened) == 1  # still open: the request holds it
    with pytest.raises(InferdError, match="Unable to find"):
        registry.view("r", 0, 8, "t")
    target_obj = cuda_shm.output_target(target)
    assert target_obj is not None
    target_obj.write(b"abcdefgh")
    assert bytes(buffer)[16:24] == b"abcdefgh"
    del target, target_obj
    assert fake.opened == {}

    registry.register_cuda("r", handle, 0, 256)
    ctypes.memmove(buffer, b"xyz", 3)
    assert bytes(registry.view("r", 0, 3, "t")) == b"xyz"  # an input: a host copy
    held = registry.view("r", 0, 4, "t", writable=True)
    registry.close()  # shutdown
    assert len(fake.opened) == 1
    del held
    assert fake.opened == {}


def test_region_count_is_shared(fake: FakeCuda, tmp_path: Path) -> None:
    registry = SharedMemoryRegistry(enabled=True, max_regions=2)
    handle, _ = fake.allocate(64)
    registry.register_cuda("a", handle, 0, 64)
    registry.register_cuda("b", handle, 1, 64)  # the same allocation, opened on another device
    with pytest.raises(InferdError, match="at most 2 regions") as info:
        registry.register_cuda("c", handle, 0, 64)
    assert info.value.code.name == "RESOURCE_EXHAUSTED"
    with pytest.raises(InferdError, match="at most 2 regions"):
        registry.register("c", "/whatever", 0, 8)
    registry.close()
    assert fake.opened == {}


def test_cuda_failure_in_a_copy_is_internal(fake: FakeCuda) -> None:
    registry = SharedMemoryRegistry(enabled=True)
    handle, _ = fake.allocate(64)
    registry.register_cuda("r", handle, 0, 64)
    fake.opened.clear()  # the stand-in now refuses copies, as CUDA would after a fault
    with pytest.raises(InferdError) as info:
        registry.view("r", 0, 8, "model 'm' input 'x'")
    assert info.value.code.name == "INTERNAL"
    assert info.value.message == (
        "model 'm' input 'x': copy from CUDA shared memory region 'r': cudaMemcpyAsync failed "
        "(cudaErrorInvalidValue: a stand-in error)"
    )
    registry.close()


# --- on a GPU ----------------------------------------------------------------------------------
# CUDA refuses to open an IPC handle in the process that exported it, and the suite's servers run
# in the test process: here the server is `inferd serve` in a subprocess, and the registry test
# opens a region that a child process owns.
@pytest.fixture(scope="module")
def cudashm() -> Any:
    """tritonclient.utils.cuda_shared_memory where it can make a region; skipped elsewhere."""
    try:
        import tritonclient.utils.cuda_shared_memory as module
    except Exception as e:  # RuntimeError without cuda-python
        pytest.skip(f"tritonclient.utils.cuda_shared_memory cannot be imported: {e}")
    try:
        probe = module.create_shared_memory_region("probe", 64, 0)
    except Exception as e:
        pytest.skip(f"cannot create a CUDA shared memory region here (needs an NVIDIA GPU and driver): {e}")
    module.destroy_shared_memory_region(probe)
    return module


@pytest.fixture(scope="module")
def gpu_server(cudashm: Any, model_repo: Path) -> Iterator[tuple[str, str]]:
    """`inferd serve --allow-client-shm true` in a subprocess: its gRPC and HTTP addresses."""
    cmd = serve_argv(
        "--model-repository", str(model_repo), "--model-control-mode", "none", "--allow-client-shm", "true"
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    found: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while len(found) < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(r"(gRPC|HTTP) \(KServe v2\) listening on ([\d.]+:\d+)", line)
        if match:
            found[match.group(1)] = match.group(2)
    if len(found) < 2:
        proc.kill()
        raise AssertionError("the server did not report its ports")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain its log
    yield found["gRPC"], found["HTTP"]
    proc.terminate()
    proc.wait(30)


@pytest.mark.gpu
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_gpu_simple_cudashm_client(protocol: str, cudashm: Any, gpu_server: tuple[str, str]) -> None:
    """Triton's simple_{grpc,http}_cudashm_client.py against add_sub, then an output region
    too small (nothing written)."""
    module: Any = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(gpu_server[0] if protocol == "grpc" else gpu_server[1])
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.ones((1, 16), np.float32)
    handles = {
        "input0_data": cudashm.create_shared_memory_region("input0_data", FLOATS, 0),
        "input1_data": cudashm.create_shared_memory_region("input1_data", FLOATS, 0),
        "output_data": cudashm.create_shared_memory_region("output_data", 2 * FLOATS, 0),
    }
    try:
        cudashm.set_shared_memory_region(handles["input0_data"], [a])
        cudashm.set_shared_memory_region(handles["input1_data"], [b])
        for name, handle in handles.items():
            size = 2 * FLOATS if name == "output_data" else FLOATS
            client.register_cuda_shared_memory(name, cudashm.get_raw_handle(handle), 0, size)
        inputs = [module.InferInput("INPUT0", [1, 16], "FP32"), module.InferInput("INPUT1", [1, 16], "FP32")]
        inputs[0].set_shared_memory("input0_data", FLOATS)
        inputs[1].set_shared_memory("input1_data", FLOATS)
        outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
        outputs[0].set_shared_memory("output_data", FLOATS)
        outputs[1].set_shared_memory("output_data", FLOATS, offset=FLOATS)
        client.infer("add_sub", inputs, outputs=outputs)
        got = cudashm.get_contents_as_numpy(handles["output_data"], np.float32, [2, 16])
        np.testing.assert_array_equal(got[0], (a + b)[0])
        np.testing.assert_array_equal(got[1], (a - b)[0])
        status = client.get_cuda_shared_memory_status()
        names = list(status.regions) if protocol == "grpc" else [r["name"] for r in status]
        assert sorted(names) == sorted(handles)

        cudashm.set_shared_memory_region(handles["output_data"], [np.zeros((2, 16), np.float32)])
        outputs[1].set_shared_memory("output_data", FLOATS - 4, offset=FLOATS)
        with pytest.raises(InferenceServerException, match="should be at least 64 bytes"):
            client.infer("add_sub", inputs, outputs=outputs)
        assert not cudashm.get_contents_as_numpy(handles["output_data"], np.float32, [2, 16]).any()
        client.unregister_cuda_shared_memory()
        assert (
            len(
                client.get_cuda_shared_memory_status().regions
                if protocol == "grpc"
                else client.get_cuda_shared_memory_status()
            )
            == 0
        )
        add_sub_inputs = [module.InferInput("INPUT0", [1, 16], "FP32"), module.InferInput("INPUT1", [1, 16], "FP32")]
        add_sub_inputs[0].set_data_from_numpy(a)
        add_sub_inputs[1].set_data_from_numpy(b)
        np.testing.assert_array_equal(client.infer("add_sub", add_sub_inputs).as_numpy("OUTPUT0"), a + b)
    finally:
        client.unregister_cuda_shared_memory()
        for handle in handles.values():
            cudashm.destroy_shared_memory_region(handle)
        client.close()


def _gpu_region_owner(conn: Any) -> None:
    """A child process that owns a 256-byte CUDA region (0..63 as FP32) and reads it back on request."""
    import tritonclient.utils.cuda_shared_memory as cudashm

    handle = cudashm.create_shared_memory_region("owned", 256, 0)
    cudashm.set_shared_memory_region(handle, [np.arange(64, dtype=np.float32)])
    conn.send(base64.b64decode(cudashm.get_raw_handle(handle)))
    conn.recv()
    conn.send(cudashm.get_contents_as_numpy(handle, np.float32, [64]))
    conn.recv()
    cudashm.destroy_shared_memory_region(handle)


@pytest.mark.gpu
def test_gpu_registry_reads_writes_and_unregisters_while_in_use(cudashm: Any) -> None:
    """The real cudaIpcOpenMemHandle, copies and cudaIpcCloseMemHandle in this process, on a
    region a child process exported: an input is a host copy; an output target keeps its
    region open past unregister and is written through it."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    owner = ctx.Process(target=_gpu_region_owner, args=(child,))
    owner.start()
    saved = cuda_shm._runtime
    cuda_shm._runtime = None  # the real cuda-python, whatever an earlier test set
    registry = SharedMemoryRegistry(enabled=True)
    try:
        raw = parent.recv()
        registry.register_cuda("r", raw, 0, 256)
        with pytest.raises(InferdError, match="beyond the"):
            registry.register_cuda("big", raw, 0, 1 << 30)
        np.testing.assert_array_equal(np.frombuffer(registry.view("r", 16, 16, "t"), np.float32), [4, 5, 6, 7])
        target = registry.view("r", 0, 16, "t", writable=True)
        registry.unregister_cuda("r")
        out = cuda_shm.output_target(target)
        assert out is not None
        out.write(np.full(4, -1, np.float32))
        del target, out  # the last lease: cudaIpcCloseMemHandle now
        parent.send("read")
        got = parent.recv()
        np.testing.assert_array_equal(got[:4], [-1] * 4)
        np.testing.assert_array_equal(got[4:], np.arange(4, 64))
    finally:
        registry.close()
        cuda_shm._runtime = saved
        parent.send("done")
        owner.join(60)
