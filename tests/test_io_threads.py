"""grpc's I/O helper threads run under SCHED_BATCH once a server has started (frontends/io_threads)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from inferd.clients import InferenceClient
from inferd.server.frontends.io_threads import _poller_ids, apply_io_policy, grpc_helper_threads

from .conftest import RunningServer

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getscheduler") or not os.path.isdir("/proc/self/task"),
    reason="thread scheduling policies are Linux-only",
)


def _policies() -> dict[int, int]:
    out = {}
    for tid in grpc_helper_threads():
        try:
            out[tid] = os.sched_getscheduler(tid)
        except OSError:  # ended meanwhile
            pass
    return out


def _name(tid: int) -> str:
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_helpers_found_and_batched(server: RunningServer) -> None:
    # A thread grpc adds later gets the policy at the server's next rescan (every 2 s).
    deadline = time.monotonic() + 10
    while set((policies := _policies()).values()) != {os.SCHED_BATCH} and time.monotonic() < deadline:
        time.sleep(0.2)
    if server.server.grpc_frontend == "aio":
        assert _poller_ids() & set(policies), "grpc.aio's completion-queue poller thread was not found"
    else:
        names = {_name(tid) for tid in policies}
        assert {"nexting_thread", "default-executo"} <= names, f"grpc++'s threads were not found: {names}"
    assert len(policies) >= 2, "grpc core's EventEngine threads were not found"
    assert set(policies.values()) == {os.SCHED_BATCH}
    # Nothing of ours is touched: the loop thread and this one stay under the default policy.
    for t in (server.thread, threading.current_thread()):
        assert os.sched_getscheduler(t.native_id) == os.SCHED_OTHER


def test_serves_under_either_policy(server: RunningServer) -> None:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    try:
        for policy in ("other", "batch"):
            assert apply_io_policy(policy) >= 2
            expected = os.SCHED_BATCH if policy == "batch" else os.SCHED_OTHER
            assert set(_policies().values()) == {expected}
            with InferenceClient(server.grpc_url) as client:
                out = client.infer("add_sub", {"INPUT0": a, "INPUT1": a})
            np.testing.assert_array_equal(out["OUTPUT0"], a + a)
    finally:
        apply_io_policy("batch")


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one of"):
        apply_io_policy("fifo")
