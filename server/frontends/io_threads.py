"""Keep grpc's I/O helper threads from preempting the event loop thread.

grpc.aio does its network I/O on helper threads (a completion-queue poller, EventEngine workers
and the "lifeguard" that starts more of them) that wake the event loop for each batch of events.
Where a helper shares a CPU with the loop, every wake-up preempts the loop: with the server on
one CPU under 16 concurrent clients the loop thread was switched out involuntarily ~6 times per
request. Linux's SCHED_BATCH policy says "do not preempt on wake-up": a helper then runs when the
loop blocks or its time slice ends, and handles its events in bursts (~1k instead of ~58k
involuntary switches over the same 4 s). Where a CPU is free the helper still runs there at once,
so nothing waits longer on a machine with spare cores. Threads grpc starts later inherit the
policy when a helper starts them, but not always; the server rescans every few seconds.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

# Thread names (as /proc shows them, cut at 15 characters) of grpc core's helpers, grpcio's
# and grpc++'s (the native front end: its executor and the callback queue's "nexting" threads);
# grpc.aio's poller is a Python thread, found by its target.
GRPC_HELPER_NAMES = (
    "event_engine",
    "grpc_global_tim",
    "lifeguard",
    "default-executo",
    "nexting_thread",
    "resolver-execut",
    "timer_manager",
)
POLICIES = ("batch", "other")


def _poller_ids() -> set[int]:
    ids = set()
    for t in threading.enumerate():
        target = getattr(t, "_target", None)
        if "_poll_wrapper" in t.name or getattr(target, "__name__", "") == "_poll_wrapper":
            if t.native_id is not None:
                ids.add(t.native_id)
    return ids


def grpc_helper_threads() -> list[int]:
    """Native ids of this process's grpc helper threads (Linux; empty elsewhere)."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []
    pollers = _poller_ids()
    found = []
    for tid in tids:
        if tid in pollers:
            found.append(tid)
            continue
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        if name.startswith(GRPC_HELPER_NAMES):
            found.append(tid)
    return found


def apply_io_policy(policy: str) -> int:
    """Put grpc's helper threads under ``policy`` ("batch" or "other"); returns how many.
    Call after the gRPC server has started (its threads exist from then on)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown gRPC I/O thread policy {policy!r}; expected one of {POLICIES}")
    setter = getattr(os, "sched_setscheduler", None)
    if setter is None:
        return 0
    value = os.SCHED_BATCH if policy == "batch" else os.SCHED_OTHER
    done = 0
    for tid in grpc_helper_threads():
        try:
            setter(tid, value, os.sched_param(0))
            done += 1
        except OSError as e:  # a thread that just ended, or a sandbox that forbids it
            log.debug("cannot set the scheduling policy of thread %d: %s", tid, e)
    return done
