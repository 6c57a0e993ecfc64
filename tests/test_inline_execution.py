"""When an instance runs executions on the event loop instead of its thread: only backends that
declare it safe, only while executions are short and inputs small, never for several
instances; and a real server with ONNX and Python models answers the same either way."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from inferd.backends.base import Backend
from inferd.server.scheduling.direct import DirectScheduler
from inferd.server.scheduling.work import Work
from inferd.server.scheduling.worker import INLINE_MAX_BYTES, InstanceWorker
from inferd.server.stats import ModelStats

from .conftest import RunningServer


class Recorder(Backend):
    """Y = X + 1; records the thread of each execution and can be made slow."""

    name = "recorder"
    default_filename = "none"
    inline_safe = True

    def __init__(self, context: object = None) -> None:
        self.threads: list[str] = []
        self.sleep_s = 0.0

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.sleep_s)
        return {"Y": inputs["X"] + 1}


class NotSafe(Recorder):
    inline_safe = False


def work(values: int = 1) -> Work:
    x = np.zeros((1, values), np.float32)
    return Work({"X": x}, ["Y"], 1, time.monotonic_ns(), None)


async def run(scheduler: DirectScheduler, n: int, values: int = 1) -> None:
    for _ in range(n):
        out = await scheduler.submit(work(values))
        assert out["Y"].tolist() == [[1.0] * values]


def direct(backend: Recorder, inline: bool = True, instances: int = 1) -> DirectScheduler:
    workers = [InstanceWorker(backend, f"inst{i}", False, inline) for i in range(instances)]
    return DirectScheduler(workers, ModelStats("m", "1"), "model 'm' version 1")


async def test_short_executions_move_onto_the_loop_once_measured() -> None:
    backend = Recorder()
    await run(direct(backend), 30)
    loop_thread = threading.current_thread().name
    assert backend.threads[0].startswith("inst0")  # unmeasured: the thread
    # A cold first execution may keep the moving average up for a few more.
    assert backend.threads[-10:] == [loop_thread] * 10


async def test_slow_executions_go_back_to_the_thread() -> None:
    backend = Recorder()
    scheduler = direct(backend)
    await run(scheduler, 2)
    backend.sleep_s = 0.02  # far over the inline limit: the moving average crosses it at once
    await run(scheduler, 3)
    assert backend.threads[-1].startswith("inst0")


async def test_large_inputs_unsafe_backends_and_several_instances_use_threads() -> None:
    big = Recorder()
    await run(direct(big), 3, values=INLINE_MAX_BYTES // 4 + 1)
    unsafe = NotSafe()
    await run(direct(unsafe), 3)
    several = Recorder()
    await run(direct(several, instances=2), 3)
    off = Recorder()
    await run(direct(off, inline=False), 3)
    for backend in (big, unsafe, several, off):
        assert all(t.startswith("inst") for t in backend.threads), backend.threads


def test_server_answers_the_same_with_inline_execution_off(server: RunningServer, model_repo: Path) -> None:
    """The session server runs add_sub inline; a copy with ``inline_execution: false`` runs it on
    its thread: results are identical."""
    import shutil

    import tritonclient.grpc as grpcclient

    from .conftest import start_server, test_settings

    repo = model_repo.parent / "inline_off"
    if not repo.exists():
        repo.mkdir()
        shutil.copytree(model_repo / "add_sub", repo / "add_sub")
        config = repo / "add_sub" / "config.pbtxt"
        if config.exists():
            config.write_text(config.read_text()
                              + '\nparameters { key: "inline_execution" value { string_value: "false" } }\n')
        else:
            pytest.skip("the test repository's add_sub has no config.pbtxt to extend")
    other = start_server(test_settings(repo))
    try:
        a = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
        results = []
        for url in (server.grpc_url, other.grpc_url):
            client = grpcclient.InferenceServerClient(url)
            meta = client.get_model_metadata("add_sub")
            shape = [3] + [int(d) for d in meta.inputs[0].shape[1:]]
            x = np.resize(a, shape).astype(np.float32)
            inputs = [grpcclient.InferInput(n, shape, "FP32") for n in ("INPUT0", "INPUT1")]
            for i in inputs:
                i.set_data_from_numpy(x)
            results.append(client.infer("add_sub", inputs).as_numpy("OUTPUT0"))
        np.testing.assert_array_equal(results[0], results[1])
        worker = other.server.core.model("add_sub").scheduler.workers[0]
        assert not worker.inline
        assert server.server.core.model("add_sub").scheduler.workers[0].inline
    finally:
        other.stop()
