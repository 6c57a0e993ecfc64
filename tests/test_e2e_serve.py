"""End to end: `inferd serve` as a subprocess, health polled over the wire, graceful shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from .models import bundled, write
from .serving import serve_argv

SLOW_ADD_SUB = bundled.ADD_SUB_CONFIG.replace(
    "instance_group", "dynamic_batching { max_queue_delay_microseconds: 700000 }\ninstance_group"
)


def start(repo: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    cmd = serve_argv("--model-repository", str(repo), "--model-control-mode", "none", *extra)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        found = re.search(r"gRPC \(KServe v2\) listening on ([\d.]+:\d+)", line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise AssertionError("server did not report its gRPC port")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    write(root, "add_sub", SLOW_ADD_SUB, bundled.add_sub_model())
    return root


def test_sigterm_finishes_in_flight_requests_then_exits_0(repo: Path) -> None:
    proc, url = start(repo)
    try:
        client = grpcclient.InferenceServerClient(url)
        deadline = time.monotonic() + 30
        while not (client.is_server_live() and client.is_server_ready()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        a = np.ones((1, 16), np.float32)
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            i = grpcclient.InferInput(name, [1, 16], "FP32")
            i.set_data_from_numpy(a)
            inputs.append(i)
        results: list[object] = []
        client.async_infer("add_sub", inputs, lambda result, error: results.append(error or result.as_numpy("OUTPUT0")))
        time.sleep(0.2)  # the request now waits in the batcher's 0.7 s queue delay
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert len(results) == 1 and isinstance(results[0], np.ndarray)
        np.testing.assert_array_equal(results[0], a * 2)
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.stdout.read() if proc.stdout else ""
    assert "stopped" in out


def test_bad_repository_path_exits_with_message(tmp_path: Path) -> None:
    result = subprocess.run(
        serve_argv("--model-repository", str(tmp_path / "nope")),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert result.returncode == 2
    assert "nope" in result.stderr and "not a folder" in result.stderr


def _thread_policies(pid: int) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            out.setdefault(name, set()).add(os.sched_getscheduler(int(tid)))
        except OSError:  # the thread ended meanwhile
            continue
    return out


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="thread scheduling policies are Linux-only")
@pytest.mark.parametrize(
    "flag, expected",
    [((), getattr(os, "SCHED_BATCH", 3)), (("--grpc-io-sched", "other"), getattr(os, "SCHED_OTHER", 0))],
)
def test_grpc_io_sched_flag(repo: Path, flag: tuple[str, ...], expected: int) -> None:
    """grpc's EventEngine threads follow the flag; the event loop thread keeps the default."""
    proc, _ = start(repo, *flag)
    try:
        # Threads grpc starts after start-up are caught by the server's rescan (every 2 s).
        deadline = time.monotonic() + 10
        while (policies := _thread_policies(proc.pid)).get("event_engine") != {expected}:
            assert time.monotonic() < deadline, policies
            time.sleep(0.2)
        assert os.sched_getscheduler(proc.pid) == os.SCHED_OTHER
    finally:
        proc.kill()
        proc.wait(10)
