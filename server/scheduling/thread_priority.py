"""Instance threads run at a lower CPU priority than the event loop.

Where the event loop and an instance thread share a CPU, the kernel splits it evenly between
them. The loop admits requests (gRPC/HTTP, conversion, validation) and forms batches; held to
half a CPU by a compute thread it admits requests slowly, so each batch holds only the few that
arrived during the previous execution, and small batches cost more compute per row. Raising the
threads' nice value lets the loop take waiting requests first; a thread with a CPU to itself
runs just as fast at any nice value. The default is the lowest priority, +19, which together
with batches that stay open until their thread starts (open_batch.py) forms the largest batches
(perf/reports/2026-12-04-batching-and-protocol.md has the figures). The cost is on a host where other processes compete for the
server's CPUs: there a thread at +19 gets a small share of a contended CPU
(``--instance-nice`` lowers the offset). Threads a framework starts from an instance thread
(intra-op pools) inherit its value, which is why backends are built there.

Linux only: elsewhere setpriority(PRIO_PROCESS, id) would renice the whole process.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

MAX_NICE = 19


def lower_thread_priority(increment: int) -> int | None:
    """Raise the calling thread's nice value by ``increment``; returns the new value, or None
    where nothing changed (increment 0, not Linux, or the kernel refused)."""
    if increment <= 0 or not sys.platform.startswith("linux"):
        return None
    try:
        value = min(MAX_NICE, thread_nice() + increment)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), value)
    except OSError as e:
        log.warning("could not lower the priority of thread %s: %s", threading.current_thread().name, e)
        return None
    return value


def thread_nice() -> int:
    """The calling thread's nice value; 0 where threads have none of their own (not Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
