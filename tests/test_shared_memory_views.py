"""Region-backed inputs reach models as views of the client's shared memory, not copies: a
Python model reports what its input array is (does it own its data, is it writable, what
buffer is at the end of its ``.base`` chain), served alone and as a step of an ensemble; and a
smoke run of ``inferd perf bench shm``."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm

from .conftest import RunningServer, start_server, test_settings

ROWS, COLS = 2, 1024  # one request: [2, 1024] FP32, 8 KiB
PROBE_PY = """\
import mmap

import numpy as np

import inferd.backends.python_api as pb_utils


def root_buffer(array):
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            root = root_buffer(x)
            # 1 when the array's memory is a mapping (the server's view of the client's region).
            mapped = isinstance(root, memoryview) and isinstance(root.obj, mmap.mmap)
            flags = np.array([[x.flags.owndata, x.flags.writeable, mapped]] * len(x), np.int32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("FLAGS", flags), pb_utils.Tensor("Y", x + 1)]))
        return responses
"""
IO = (
    f'input [ {{ name: "X" data_type: TYPE_FP32 dims: [ {COLS} ] }} ]\n'
    f'output [ {{ name: "FLAGS" data_type: TYPE_INT32 dims: [ 3 ] }}, '
    f'{{ name: "Y" data_type: TYPE_FP32 dims: [ {COLS} ] }} ]\n'
)


def build(repo: Path) -> Path:
    (repo / "probe" / "1").mkdir(parents=True)
    (repo / "probe" / "1" / "model.py").write_text(PROBE_PY)
    (repo / "probe" / "config.pbtxt").write_text(f'name: "probe"\nbackend: "python"\nmax_batch_size: 8\n{IO}')
    # The region-backed ensemble input goes to the first step; the second step gets the first
    # step's output (an array the server made), as a control.
    (repo / "probe_pipeline" / "1").mkdir(parents=True)
    (repo / "probe_pipeline" / "config.pbtxt").write_text(
        'name: "probe_pipeline"\nplatform: "ensemble"\nmax_batch_size: 8\n'
        f'input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ {COLS} ] }} ]\n'
        'output [ { name: "FIRST" data_type: TYPE_INT32 dims: [ 3 ] }, '
        '{ name: "SECOND" data_type: TYPE_INT32 dims: [ 3 ] }, '
        f'{{ name: "OUT" data_type: TYPE_FP32 dims: [ {COLS} ] }} ]\n'
        "ensemble_scheduling { step [\n"
        '{ model_name: "probe" model_version: -1 input_map { key: "X" value: "IN" } '
        'output_map { key: "FLAGS" value: "FIRST" } output_map { key: "Y" value: "MID" } },\n'
        '{ model_name: "probe" model_version: -1 input_map { key: "X" value: "MID" } '
        'output_map { key: "FLAGS" value: "SECOND" } output_map { key: "Y" value: "OUT" } }\n'
        "] }\n"
    )
    return repo


@pytest.fixture(scope="module")
def probe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(test_settings(build(tmp_path_factory.mktemp("views")), allow_client_shm=True))
    yield running
    running.stop()


@pytest.fixture
def client(probe_server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(probe_server.grpc_url)
    yield c
    c.close()


@pytest.fixture
def region(client: grpcclient.InferenceServerClient) -> Iterator[tuple[str, np.ndarray]]:
    """A registered region holding a [2, 1024] FP32 input at a non-zero offset."""
    x = np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS) / 7
    name, key, offset = "views_in", f"/inferd_views_{uuid.uuid4().hex[:12]}", 4096
    handle = shm.create_shared_memory_region(name, key, offset + x.nbytes)
    try:
        shm.set_shared_memory_region(handle, [x], offset=offset)
        client.register_system_shared_memory(name, key, offset + x.nbytes)
        yield name, x
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)


def shm_input(name: str, region: str, x: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(x.shape), "FP32")
    inp.set_shared_memory(region, x.nbytes, offset=4096)
    return inp


def flags(row: np.ndarray) -> dict[str, bool]:
    return dict(zip(("owndata", "writeable", "mapped"), map(bool, row)))


VIEW = {"owndata": False, "writeable": False, "mapped": True}  # a read-only view of the mapping


def test_python_model_gets_a_view_of_the_region(client, region) -> None:  # type: ignore[no-untyped-def]
    name, x = region
    result = client.infer("probe", [shm_input("X", name, x)])
    assert flags(result.as_numpy("FLAGS")[0]) == VIEW
    np.testing.assert_array_equal(result.as_numpy("Y"), x + 1)  # and the values are the region's


def test_raw_input_is_not_a_mapping(client) -> None:  # type: ignore[no-untyped-def]
    """The control: bytes sent in the request do not end at a mapping."""
    x = np.ones((ROWS, COLS), np.float32)
    inp = grpcclient.InferInput("X", [ROWS, COLS], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("probe", [inp])
    assert flags(result.as_numpy("FLAGS")[0])["mapped"] is False
    np.testing.assert_array_equal(result.as_numpy("Y"), x + 1)


def test_ensemble_passes_the_region_view_to_its_step(client, region) -> None:  # type: ignore[no-untyped-def]
    name, x = region
    result = client.infer("probe_pipeline", [shm_input("IN", name, x)])
    assert flags(result.as_numpy("FIRST")[0]) == VIEW
    assert flags(result.as_numpy("SECOND")[0])["mapped"] is False  # a step's output: the server's own array
    np.testing.assert_array_equal(result.as_numpy("OUT"), (x + 1) + 1)


def test_view_sees_the_clients_later_writes(client, region) -> None:  # type: ignore[no-untyped-def]
    """No copy is cached between requests: new contents written by the client are what the
    next request reads."""
    name, x = region
    first = client.infer("probe", [shm_input("X", name, x)]).as_numpy("Y")
    np.testing.assert_array_equal(first, x + 1)
    # Rewrite the region through a second mapping of the same object.
    key = client.get_system_shared_memory_status().regions[name].key
    handle = shm.create_shared_memory_region("again", key, 4096 + x.nbytes)
    try:
        shm.set_shared_memory_region(handle, [x * 3], offset=4096)
        np.testing.assert_array_equal(client.infer("probe", [shm_input("X", name, x)]).as_numpy("Y"), x * 3 + 1)
    finally:
        shm.destroy_shared_memory_region(handle)


# --- the benchmark ----------------------------------------------------------------------------
def test_shm_benchmark_smoke_run() -> None:
    """``inferd perf bench shm`` end to end on the 4 KiB model with the Python tritonclient load
    (no perf_analyzer needed): the table has every row, and no shared-memory object is left."""
    pytest.importorskip("onnx")
    before = set(Path("/dev/shm").iterdir())
    done = subprocess.run(
        [sys.executable, "-m", "inferd.server.cli", "perf", "bench", "shm", "--sizes", "4KB", "--batch", "2"]
        + ["--concurrency", "2", "--duration", "0.3", "--warmup", "0.1", "--rounds", "1"]
        + ["--ceiling-seconds", "0.05", "--load", "tritonclient"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [[c.strip() for c in r.split("|")[1:-1]] for r in done.stdout.splitlines() if r.startswith("| 4KB 2 x 2 ")]
    assert [r[1] for r in rows] == [
        "grpc+shm",
        "grpc",
        "in-process",
        "in-process, input in /dev/shm",
        "**grpc+shm / grpc**",
        "**grpc+shm / in-process**",
        "**grpc+shm / in-process, input in /dev/shm**",
    ]
    assert all(float(r[2].replace(",", "")) > 0 for r in rows[:4])
    assert "4KB 2 x 2: shm/no-shm" in done.stdout
    left = {p.name for p in set(Path("/dev/shm").iterdir()) - before}
    assert not {n for n in left if "shmbench" in n.lower() or "inferd_bench" in n}, left
