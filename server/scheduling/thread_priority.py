"""Instance threads run at a lower CPU priority than the event loop.

Where the event loop and an instance thread share a CPU, the kernel splits it evenly between
them. The loop admits requests (gRPC/HTTP, conversion, validation) and forms batches; held to
half a CPU by a compute thread it admits requests slowly, so each batch holds only the few that
arrived during the previous execution, and small batches cost more compute per row. Measured on
one CPU with 32 batch-1 clients of a 2048-wide dense model: average batch 2.4 and ~1,050
requests/s at the kernel default, batch ~11-13 and ~2,000-2,350/s with the instance threads at
nice +3..+10. Raising the threads' nice value lets the loop take waiting requests first; a
thread with a CPU to itself runs just as fast at any nice value. The default is the lowest
priority, +19: together with batches that stay open until their thread starts (open_batch.py),
16 batch-1 clients on one CPU reach ~2,850/s at batch ~15 against ~2,250/s at batch ~8 at +5.
The cost is on a host where other processes compete for the server's CPUs: there a thread at +19
gets ~1.5% of a contended CPU against ~25% at +5 (``--instance-nice``). Threads a framework starts from
an instance thread (intra-op pools) inherit its value, which is why backends are built there.

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
