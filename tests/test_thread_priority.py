"""Model instance threads run below the event loop's priority (scheduling/thread_priority.py)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from inferd.backends.base import Backend
from inferd.server.cli import add_serve_arguments, settings_from_args
from inferd.server.scheduling.thread_priority import lower_thread_priority
from inferd.server.scheduling.worker import InstanceWorker
from onnx import TensorProto

from .conftest import RunningServer
from .models import binary_model, save

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux-only")


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _task_nice(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])  # field 19: nice


def _tasks() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def _in_thread(fn):  # type: ignore[no-untyped-def]
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(10)
    return out[0]


def test_lower_thread_priority_changes_only_the_calling_thread() -> None:
    base = _nice()
    assert _in_thread(lambda: (lower_thread_priority(3), _nice())) == (min(base + 3, 19), min(base + 3, 19))
    assert _in_thread(lambda: (lower_thread_priority(0), _nice())) == (None, base)
    assert _nice() == base  # this thread untouched


class Recording(Backend):
    name = "recording_test"

    def __init__(self) -> None:
        self.built_at = _nice()

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        return {"NICE": np.array([_nice()])}

    def unload(self) -> None:
        pass


def test_worker_builds_and_runs_its_backend_on_the_lowered_thread() -> None:
    base = _nice()
    worker = InstanceWorker.build(Recording, "rec", batching=False, nice=4)
    try:
        assert worker.backend.built_at == min(base + 4, 19)  # type: ignore[attr-defined]
        ran_at = worker.executor.submit(worker.backend.execute, {}, ["NICE"]).result(10)["NICE"][0]
        assert ran_at == min(base + 4, 19)
    finally:
        worker.close()
    assert _nice() == base


def test_framework_threads_started_by_the_backend_inherit_it(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    save(binary_model("Add", TensorProto.FLOAT), path)

    class Session(Recording):
        def __init__(self) -> None:
            super().__init__()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 3  # the caller plus two pool threads, started at creation
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    base = _nice()
    before = _tasks()
    worker = InstanceWorker.build(Session, "ort", batching=False, nice=5)
    try:
        started = _tasks() - before
        assert len(started) >= 3, "expected the instance thread and onnxruntime's pool threads"
        assert {_task_nice(t) for t in started} == {min(base + 5, 19)}
    finally:
        worker.close()


def test_server_lowers_only_dynamically_batched_instances(server: RunningServer) -> None:
    """The offset lets the loop fill batches; a model without a batcher keeps the loop's priority."""
    base = _nice()  # the server's loop thread runs at the process's value, as this one does
    batched = server.server.manager.get("dense").scheduler.workers[0]  # dynamic_batching {...}
    assert batched.executor.submit(_nice).result(10) == min(base + 19, 19)
    assert batched.nice_steps == min(base + 19, 19) - base  # what the batcher reads for open batches
    direct = server.server.manager.get("add_sub").scheduler.workers[0]
    assert direct.executor.submit(_nice).result(10) == base


def test_instance_nice_flag() -> None:
    import argparse

    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    assert settings_from_args(p.parse_args([])).instance_nice == 19
    assert settings_from_args(p.parse_args(["--instance-nice", "0"])).instance_nice == 0
    with pytest.raises(SystemExit):
        p.parse_args(["--instance-nice", "20"])
