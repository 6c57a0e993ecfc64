"""System shared memory (server/shm.py) with tritonclient's own utilities over gRPC and HTTP, as
Triton's examples use it (simple_grpc_shm_client.py, simple_http_shm_client.py,
simple_grpc_shm_string_client.py), every refusal, and a fuzz of offsets and sizes."""

from __future__ import annotations

import mmap
import os
import random
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from inferd.perf.perf_analyzer import INSTALL_HINT, find_perf_analyzer
from inferd.protocol.errors import InferdError
from inferd.protocol.pb import grpc_service_pb2 as pb
from inferd.protocol.pb import grpc_service_pb2_grpc as pb_grpc
from inferd.server.shm import SharedMemoryRegistry
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from .conftest import RunningServer, start_server, test_settings

FLOATS = 16 * 4  # one add_sub tensor, [1, 16] FP32


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


class Regions:
    """Shared-memory objects made with tritonclient's utilities, each under a unique key, all
    destroyed (and unregistered) at the end of a test."""

    def __init__(self, client: grpcclient.InferenceServerClient) -> None:
        self.client = client
        self.handles: list[object] = []

    def create(self, name: str, byte_size: int, register: bool = True) -> tuple[object, str]:
        key = f"/inferd_test_{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        self.handles.append(handle)
        if register:
            self.client.register_system_shared_memory(name, key, byte_size)
        return handle, key

    def close(self) -> None:
        self.client.unregister_system_shared_memory()
        for h in self.handles:
            shm.destroy_shared_memory_region(h)


@pytest.fixture
def regions(grpc_client: grpcclient.InferenceServerClient) -> Iterator[Regions]:
    r = Regions(grpc_client)
    yield r
    r.close()


def add_sub_inputs(module, a: np.ndarray, b: np.ndarray) -> list:  # type: ignore[no-untyped-def,type-arg]
    inputs = [module.InferInput("INPUT0", [1, 16], "FP32"), module.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_shared_memory("input_data", FLOATS)
    inputs[1].set_shared_memory("input_data", FLOATS, offset=FLOATS)
    return inputs


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_simple_shm_client(protocol: str, regions: Regions, grpc_client, http_client) -> None:  # type: ignore[no-untyped-def]
    """Triton's simple_{grpc,http}_shm_client.py against add_sub (FP32 sum and difference)."""
    module, client = (grpcclient, grpc_client) if protocol == "grpc" else (httpclient, http_client)
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()  # the examples clean up both kinds first
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.ones((1, 16), np.float32)
    out_handle, out_key = regions.create("output_data", FLOATS * 2)
    in_handle, in_key = regions.create("input_data", FLOATS * 2, register=False)
    shm.set_shared_memory_region(in_handle, [a])
    shm.set_shared_memory_region(in_handle, [b], offset=FLOATS)
    client.register_system_shared_memory("input_data", in_key, FLOATS * 2)

    outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("output_data", FLOATS)
    outputs[1].set_shared_memory("output_data", FLOATS, offset=FLOATS)
    for _ in range(3):  # repeated: the gRPC front end must not template a request in shared memory
        result = client.infer("add_sub", add_sub_inputs(module, a, b), outputs=outputs)
        out0, out1 = result.get_output("OUTPUT0"), result.get_output("OUTPUT1")
        shape0 = out0.shape if protocol == "grpc" else out0["shape"]
        datatype = out0.datatype if protocol == "grpc" else out0["datatype"]
        assert datatype == "FP32" and list(shape0) == [1, 16] and out1 is not None
        if protocol == "http":
            assert "data" not in out0 and "parameters" not in out0
        np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, [1, 16]), a + b)
        np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, [1, 16], offset=FLOATS), a - b)
        shm.set_shared_memory_region(in_handle, [a + 1])
        a = a + 1

    status = client.get_system_shared_memory_status()
    if protocol == "grpc":
        found = {n: (r.key, r.offset, r.byte_size) for n, r in status.regions.items()}
    else:
        found = {r["name"]: (r["key"], r["offset"], r["byte_size"]) for r in status}
    assert found == {"input_data": (in_key, 0, FLOATS * 2), "output_data": (out_key, 0, FLOATS * 2)}
    client.unregister_system_shared_memory("input_data")
    only = client.get_system_shared_memory_status()
    assert (list(only.regions) if protocol == "grpc" else [r["name"] for r in only]) == ["output_data"]
    client.unregister_system_shared_memory()
    empty = client.get_system_shared_memory_status()
    assert not (empty.regions if protocol == "grpc" else empty)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bytes_tensors_in_shared_memory(protocol: str, regions: Regions, grpc_client, http_client) -> None:  # type: ignore[no-untyped-def]
    """simple_grpc_shm_string_client.py: BYTES in and out, serialized with 4-byte lengths."""
    module, client = (grpcclient, grpc_client) if protocol == "grpc" else (httpclient, http_client)
    data = np.array([[b"hello", "wörld".encode()]], dtype=object)
    serialized = serialize_byte_tensor(data)
    size = serialized_byte_size(serialized)
    in_handle, _ = regions.create("in0", size)
    out_handle, _ = regions.create("out0", size + 7)
    shm.set_shared_memory_region(in_handle, [serialized])
    inp = module.InferInput("INPUT0", [1, 2], "BYTES")
    inp.set_shared_memory("in0", size)
    out = module.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("out0", size + 7)
    result = client.infer("strings", [inp], outputs=[out])
    meta = result.get_output("OUTPUT0")
    assert (meta.datatype if protocol == "grpc" else meta["datatype"]) == "BYTES"
    got = shm.get_contents_as_numpy(out_handle, np.object_, [1, 2])
    assert got.tolist() == data.tolist()


def test_mixed_shared_and_raw_tensors(regions: Regions, grpc_client) -> None:  # type: ignore[no-untyped-def]
    """One input and one output in shared memory, the others on the wire: the response keeps one
    raw_output_contents entry per output (empty for the one in shared memory), as Triton does,
    so tritonclient's as_numpy still finds the other output."""
    a = np.full((1, 16), 3, np.float32)
    b = np.arange(16, dtype=np.float32).reshape(1, 16)
    in_handle, _ = regions.create("in", FLOATS)
    out_handle, _ = regions.create("out", FLOATS)
    shm.set_shared_memory_region(in_handle, [a])
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "FP32"), grpcclient.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_shared_memory("in", FLOATS)
    inputs[1].set_data_from_numpy(b)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("out", FLOATS)
    result = grpc_client.infer("add_sub", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    raw = result.get_response().raw_output_contents
    assert len(raw) == 2 and raw[0] == b""
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, [1, 16]), a + b)


def test_extension_advertised_only_when_on(shm_server: RunningServer, server: RunningServer) -> None:
    def extensions(s: RunningServer) -> list[str]:
        return httpx.get(f"http://{s.http_url}/v2").json()["extensions"]

    # Triton's list and order; CUDA shared memory only where a GPU and cuda-python are there.
    triton = [
        "classification", "sequence", "model_repository", "model_repository(unload_dependents)",
        "schedule_policy", "model_configuration", "system_shared_memory", "cuda_shared_memory",
        "binary_tensor_data", "parameters", "statistics", "trace", "logging",
    ]  # fmt: skip
    cuda = shm_server.server.core.shared_memory.cuda_usable()
    assert extensions(shm_server) == [e for e in triton if cuda or e != "cuda_shared_memory"]
    assert extensions(server) == [e for e in triton if not e.endswith("shared_memory")]


# --- refusals -------------------------------------------------------------------------------
def grpc_error(call, *args, **kwargs) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def test_off_by_default_names_the_flag(server: RunningServer) -> None:
    """The session's server runs without --allow-client-shm: every RPC and parameter says how
    to turn it on."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for call, msg in (
            (stub.SystemSharedMemoryRegister, pb.SystemSharedMemoryRegisterRequest(name="r", key="/k", byte_size=8)),
            (stub.SystemSharedMemoryStatus, pb.SystemSharedMemoryStatusRequest()),
            (stub.SystemSharedMemoryUnregister, pb.SystemSharedMemoryUnregisterRequest()),
        ):
            e = grpc_error(call, msg)
            assert e.code() == grpc.StatusCode.UNIMPLEMENTED and "--allow-client-shm=true" in e.details()
        e = grpc_error(stub.ModelInfer, shm_request("r", 0, FLOATS))
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "input 'INPUT0'" in e.details() and "--allow-client-shm=true" in e.details()
    r = httpx.post(f"http://{server.http_url}/v2/systemsharedmemory/region/r/register", json={"key": "/k"})
    assert r.status_code == 501 and "--allow-client-shm=true" in r.json()["error"]


def register(stub, name: str, key: str, offset: int = 0, byte_size: int = 64):  # type: ignore[no-untyped-def]
    return stub.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=offset, byte_size=byte_size)
    )


@pytest.mark.parametrize(
    "key",
    ["/etc/passwd", "../../etc/passwd", "/..", "/.", "", "/", "//x", "dir/obj", "/dev/shm/x", "a\0b",
     "/triton_python_backend_shm_region_1"],
)  # fmt: skip
def test_keys_that_are_not_object_names(key: str, stub, http) -> None:  # type: ignore[no-untyped-def]
    e = grpc_error(register, stub, "r", key)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
    assert "/dev/shm" not in e.details() or key.startswith("/dev/shm")
    if "\0" not in key and key:
        r = http.post("/v2/systemsharedmemory/region/r/register", json={"key": key, "byte_size": 64})
        assert r.status_code == 400, r.text


def test_unknown_key_symlink_and_directory(stub) -> None:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:12]
    e = grpc_error(register, stub, "r", f"/inferd_missing_{tag}")
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "Unable to open shared memory region" in e.details()
    link, folder = f"/dev/shm/inferd_link_{tag}", f"/dev/shm/inferd_dir_{tag}"
    os.symlink("/etc/hostname", link)
    os.mkdir(folder)
    try:
        for key in (link[len("/dev/shm") :], folder[len("/dev/shm") :]):
            e = grpc_error(register, stub, "r", key)
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "Unable to open" in e.details()
    finally:
        os.unlink(link)
        os.rmdir(folder)


def test_register_bounds_and_duplicates(regions: Regions, stub, http) -> None:  # type: ignore[no-untyped-def]
    _, key = regions.create("r1", 4096)
    for offset, size in [(0, 4097), (4096, 1), (1, 4096), (2**63, 2**63), (2**64 - 1, 1), (0, 2**64 - 1), (0, 0)]:
        e = grpc_error(register, stub, "r2", key, offset, size)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (offset, size, e.details())
    for body in (
        {"key": key, "offset": -1, "byte_size": 8},
        {"key": key, "byte_size": -8},
        {"key": key, "byte_size": 10**30},
        {"key": key, "byte_size": 1.5},
        {"key": key, "byte_size": True},
        {"key": key},
        {"byte_size": 8},
        {"key": 7, "byte_size": 8},
    ):
        r = http.post("/v2/systemsharedmemory/region/r2/register", json=body)
        assert r.status_code == 400, (body, r.text)
    register(stub, "r2", key, 4000, 96)  # a region of the same object: fine
    e = grpc_error(register, stub, "r1", key)
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS and "shared memory region 'r1' already in manager" in e.details()
    assert http.post("/v2/systemsharedmemory/region/r1/register", json={"key": key, "byte_size": 8}).status_code == 409
    e = grpc_error(stub.SystemSharedMemoryStatus, pb.SystemSharedMemoryStatusRequest(name="nope"))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert http.get("/v2/systemsharedmemory/region/nope/status").status_code == 404
    stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="nope"))  # not an error, as in Triton


def test_cuda_shared_memory_without_regions(stub, http) -> None:  # type: ignore[no-untyped-def]
    """CUDA shared memory has its own tests (test_cuda_shared_memory.py); with no CUDA region its
    status is empty, so clients that clean up both kinds first work."""
    assert http.get("/v2/cudasharedmemory/status").json() == []
    assert not stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest()).regions


def shm_request(
    region: str, offset: int, size: int, datatype: str = "FP32", raw_other: bool = True, out: tuple | None = None
) -> pb.ModelInferRequest:  # type: ignore[type-arg]
    """add_sub with INPUT0 in ``region`` and INPUT1 raw (or both in the region)."""
    msg = pb.ModelInferRequest(model_name="add_sub")
    t0 = msg.inputs.add(name="INPUT0", datatype=datatype, shape=[1, 16])
    t0.parameters["shared_memory_region"].string_param = region
    t0.parameters["shared_memory_offset"].int64_param = offset
    t0.parameters["shared_memory_byte_size"].int64_param = size
    msg.inputs.add(name="INPUT1", datatype="FP32", shape=[1, 16])
    if raw_other:
        msg.raw_input_contents.append(np.ones(16, np.float32).tobytes())
    if out is not None:
        o = msg.outputs.add(name="OUTPUT0")
        o.parameters["shared_memory_region"].string_param = out[0]
        o.parameters["shared_memory_offset"].int64_param = out[1]
        o.parameters["shared_memory_byte_size"].int64_param = out[2]
    return msg


def test_request_refusals(regions: Regions, stub, http) -> None:  # type: ignore[no-untyped-def]
    regions.create("in", 4096)
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    cases = {
        "unknown region": (shm_request("nope", 0, FLOATS), not_found, "Unable to find shared memory region: 'nope'"),
        "offset past the end": (shm_request("in", 4096, FLOATS), invalid, "Invalid offset"),
        "size past the end": (shm_request("in", 4096 - 8, FLOATS), invalid, "Invalid offset + byte size"),
        "huge offset": (shm_request("in", 2**63 - 1, FLOATS), invalid, "Invalid offset"),
        "negative offset": (shm_request("in", -64, FLOATS), invalid, "non-negative"),
        "byte_size mismatch": (shm_request("in", 0, FLOATS - 4), invalid, "does not match shape"),
        "raw entry for the shm input too": (shm_request("in", 0, FLOATS), invalid, "raw_input_contents"),
        "unknown output region": (shm_request("in", 0, FLOATS, out=("nope", 0, 64)), not_found, "nope"),
    }
    cases["raw entry for the shm input too"][0].raw_input_contents.append(b"\0" * FLOATS)
    contents = shm_request("in", 0, FLOATS, raw_other=False)
    contents.inputs[0].contents.fp32_contents.extend([1.0] * 16)
    contents.inputs[1].contents.fp32_contents.extend([1.0] * 16)
    cases["contents and shared memory"] = (contents, invalid, "contents")
    no_region = shm_request("in", 0, FLOATS)
    del no_region.inputs[0].parameters["shared_memory_region"]
    cases["offset without region"] = (no_region, invalid, "without the 'shared_memory_region'")
    for case, (msg, code, words) in cases.items():
        e = grpc_error(stub.ModelInfer, msg)
        assert e.code() == code and words in e.details(), (case, e.details())
        assert "Traceback" not in e.details() and "/dev/shm" not in e.details()
    doc = {
        "inputs": [
            {
                "name": "INPUT0",
                "shape": [1, 16],
                "datatype": "FP32",
                "data": [1.0] * 16,
                "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": FLOATS},
            },
            {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16},
        ]
    }
    r = http.post("/v2/models/add_sub/infer", json=doc)
    assert r.status_code == 400 and "only one of" in r.json()["error"]
    doc["inputs"][0].pop("data")
    doc["outputs"] = [{"name": "OUTPUT0", "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 64,
                                                         "binary_data": True}}]  # fmt: skip
    r = http.post("/v2/models/add_sub/infer", json=doc)
    assert r.status_code == 400 and "binary_data" in r.json()["error"]
    assert stub.ModelInfer(shm_request("in", 0, FLOATS)).outputs  # the valid form of the same request


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_output_region_too_small_writes_nothing(protocol: str, regions: Regions, stub, http) -> None:  # type: ignore[no-untyped-def]
    handle, key = regions.create("in", FLOATS)
    shm.set_shared_memory_region(handle, [np.ones((1, 16), np.float32)])
    out_handle, _ = regions.create("out", FLOATS + FLOATS - 4)
    sentinel = np.full(2 * 16 - 1, 7, np.uint32)
    shm.set_shared_memory_region(out_handle, [sentinel])
    # OUTPUT0 fits, OUTPUT1 (the second) is 4 bytes short: neither may be written.
    if protocol == "grpc":
        msg = shm_request("in", 0, FLOATS, out=("out", 0, FLOATS))
        o = msg.outputs.add(name="OUTPUT1")
        o.parameters["shared_memory_region"].string_param = "out"
        o.parameters["shared_memory_offset"].int64_param = FLOATS
        o.parameters["shared_memory_byte_size"].int64_param = FLOATS - 4
        e = grpc_error(stub.ModelInfer, msg)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
        message = e.details()
    else:
        doc = {
            "inputs": [
                {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                 "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": FLOATS}},
                {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16},
            ],
            "outputs": [
                {"name": "OUTPUT0", "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": FLOATS}},
                {"name": "OUTPUT1", "parameters": {"shared_memory_region": "out", "shared_memory_offset": FLOATS,
                                                   "shared_memory_byte_size": FLOATS - 4}},
            ],
        }  # fmt: skip
        r = http.post("/v2/models/add_sub/infer", json=doc)
        assert r.status_code == 400, r.text
        message = r.json()["error"]
    assert "output 'OUTPUT1' (60 bytes) should be at least 64 bytes" in message
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.uint32, [2 * 16 - 1]), sentinel)


# --- the registry, in process --------------------------------------------------------------
@pytest.fixture
def shm_object() -> Iterator[tuple[str, int]]:
    key = f"inferd_unit_{uuid.uuid4().hex[:12]}"
    size = 3 * mmap.ALLOCATIONGRANULARITY + 123
    with open(f"/dev/shm/{key}", "wb") as f:
        f.write(bytes(range(256)) * (size // 256) + bytes(size % 256))
    yield key, size
    os.unlink(f"/dev/shm/{key}")


def test_unregistered_region_stays_valid_while_in_use(shm_object: tuple[str, int]) -> None:
    key, size = shm_object
    registry = SharedMemoryRegistry(enabled=True)
    registry.register("r", "/" + key, 5000, 300)  # an offset that is not on a page boundary
    view = registry.view("r", 10, 20, "t")
    array = np.frombuffer(view, np.uint8)
    registry.unregister("r")
    assert len(registry) == 0
    assert array.tolist() == [(5000 + 10 + i) % 256 for i in range(20)]  # still mapped
    with pytest.raises(InferdError, match="Unable to find"):
        registry.view("r", 0, 1, "t")
    with pytest.raises(TypeError):
        view[0] = 1  # input views are read-only
    registry.register("w", key, 0, 64)
    out = registry.view("w", 0, 4, "t", writable=True)
    out[:] = b"abcd"
    registry.close()  # shutdown with a view still held: the view keeps its mapping
    out[:] = b"efgh"
    with open(f"/dev/shm/{key}", "rb") as f:
        assert f.read(4) == b"efgh"


def test_region_count_is_bounded(shm_object: tuple[str, int]) -> None:
    key, _ = shm_object
    registry = SharedMemoryRegistry(enabled=True, max_regions=2)
    registry.register("a", key, 0, 8)
    registry.register("b", key, 8, 8)
    with pytest.raises(InferdError, match="at most 2 regions") as info:
        registry.register("c", key, 16, 8)
    assert info.value.code.name == "RESOURCE_EXHAUSTED"
    registry.unregister()
    registry.register("c", key, 16, 8)
    registry.close()


def test_shrunk_object_is_refused(shm_object: tuple[str, int]) -> None:
    key, _ = shm_object
    registry = SharedMemoryRegistry(enabled=True)
    registry.register("r", key, 0, 4096)
    os.truncate(f"/dev/shm/{key}", 100)  # a client shrinking it: reading on would be SIGBUS
    with pytest.raises(InferdError, match="shrank after the region was registered"):
        registry.view("r", 0, 64, "t")
    registry.close()


def test_fuzz_registry(shm_object: tuple[str, int]) -> None:
    """20,000 random registrations and views: every outcome is a view of exactly the asked
    bytes or an InferdError, never another exception."""
    key, size = shm_object
    rng = random.Random(23)
    registry = SharedMemoryRegistry(enabled=True, max_regions=8)
    content = open(f"/dev/shm/{key}", "rb").read()

    def number() -> int:
        return rng.choice([0, 1, rng.randrange(size + 2), size, size - 1, 2**63, 2**64 + 5, -1, -(2**70)])

    registered: dict[str, tuple[int, int]] = {}
    ok = refused = 0
    for i in range(20_000):
        name = f"r{rng.randrange(12)}"
        try:
            if i % 4 == 0:
                offset, byte_size = number(), number()
                registry.register(name, key, offset, byte_size)
                registered[name] = (offset, byte_size)
            elif i % 17 == 0:
                registry.unregister(name)
                registered.pop(name, None)
            else:
                offset, byte_size = number(), number()
                view = registry.view(name, offset, byte_size, "t", writable=bool(i % 2))
                base = registered[name][0] + offset
                assert bytes(view) == content[base : base + byte_size]
            ok += 1
        except InferdError:
            refused += 1
    registry.close()
    assert ok > 1000 and refused > 1000


def test_fuzz_over_grpc(regions: Regions, stub) -> None:  # type: ignore[no-untyped-def]
    """A few hundred random offsets and sizes in real requests; the server keeps answering."""
    handle, _ = regions.create("f", 4096)
    shm.set_shared_memory_region(handle, [np.arange(1024, dtype=np.float32)])
    rng = random.Random(5)
    codes = set()
    for _ in range(300):
        offset = rng.choice([0, 64, rng.randrange(4200), 2**62, -1])
        size = rng.choice([FLOATS, rng.randrange(200), 0, 2**40])
        out = ("f", rng.choice([0, 4032, rng.randrange(4200)]), rng.choice([FLOATS, rng.randrange(100)]))
        try:
            stub.ModelInfer(shm_request("f", offset, size, out=out if rng.random() < 0.5 else None))
            codes.add("OK")
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), e.details()
            codes.add(e.code().name)
    assert {"OK", "INVALID_ARGUMENT"} <= codes
    shm.set_shared_memory_region(handle, [np.arange(1024, dtype=np.float32)])  # outputs went into it too
    result = stub.ModelInfer(shm_request("f", 0, FLOATS))
    assert np.frombuffer(result.raw_output_contents[0], np.float32).tolist() == (np.arange(16) + 1).tolist()


def test_grpc_client_errors_are_clear(regions: Regions, grpc_client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException, match="already in manager"):
        regions.create("dup", 64)
        grpc_client.register_system_shared_memory("dup", regions.handles[-1]._shm_key, 64)  # type: ignore[attr-defined]


# --- perf_analyzer --------------------------------------------------------------------------
@pytest.mark.skipif(find_perf_analyzer() is None, reason=f"perf_analyzer is not installed ({INSTALL_HINT})")
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_shared_memory(protocol: str, shm_server: RunningServer, server: RunningServer) -> None:
    """NVIDIA's perf_analyzer --shared-memory system: inputs and outputs through regions it
    registers itself; against a server without the flag it stops at the refusal."""

    def run(s: RunningServer) -> subprocess.CompletedProcess[str]:
        url = s.grpc_url if protocol == "grpc" else s.http_url
        cmd = [str(find_perf_analyzer()), "-m", "add_sub", "-i", protocol, "-u", url, "--shared-memory", "system",
               "--output-shared-memory-size", "256", "-p", "300", "--concurrency-range", "1", "-s", "100",
               "--max-trials", "6"]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    proc = run(shm_server)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert re.search(r"Throughput: [\d.]+ infer/sec", proc.stdout)
    # perf_analyzer names its objects after the tensors and leaves them behind when the server
    # refuses them: remove the ones this run made.
    names = [f"/dev/shm/{n}" for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")]
    before = {n for n in names if os.path.exists(n)}
    try:
        refused = run(server)
    finally:
        for n in set(names) - before:
            if os.path.exists(n):
                os.unlink(n)
    assert refused.returncode != 0 and "--allow-client-shm=true" in refused.stdout + refused.stderr


def test_stream_writes_outputs_into_the_region(regions: Regions, stub) -> None:  # type: ignore[no-untyped-def]
    handle, _ = regions.create("io", 2 * FLOATS)
    shm.set_shared_memory_region(handle, [np.full(16, 2, np.float32)])
    msg = shm_request("io", 0, FLOATS, out=("io", FLOATS, FLOATS))
    msg.id = "s-1"
    (reply,) = stub.ModelStreamInfer(iter([msg]))
    assert not reply.error_message and reply.infer_response.id == "s-1"
    assert list(reply.infer_response.raw_output_contents) == [b""]
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [16], offset=FLOATS), np.full(16, 3))


def test_cli_flag() -> None:
    import argparse

    from inferd.server.cli import add_serve_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert settings_from_args(parser.parse_args([])).allow_client_shm is False
    assert settings_from_args(parser.parse_args(["--allow-client-shm", "true"])).allow_client_shm is True
    assert settings_from_args(parser.parse_args(["--allow-client-shm=true"])).allow_client_shm is True
