"""A batch handed to an instance that still takes requests until its execution starts.

The batcher forms a batch the moment an instance is free, but the instance's thread may not
get a CPU at once: it runs below the event loop's priority (thread_priority.py), so on a shared
CPU it starts only once the loop has admitted what was waiting. Requests admitted meanwhile
would otherwise wait a whole execution for the next batch, which then runs nearly empty at
nearly the cost of a full one. A request that joins the open batch runs sooner than it would
have, so no request waits longer than Triton's rules allow.

Only where the thread runs at least OPEN_BATCH_MIN_NICE steps below the loop: a thread that
gets the CPU soon closes its batch early, the requests that miss it start the next small one,
and open batches then cost throughput instead of adding it (perf/reports/2026-12-04-batching-and-protocol.md, "open batches").

The event loop joins and withdraws requests; the instance thread closes the batch as its
execution starts. A lock makes the two exclusive; each holds it for a few list operations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .work import Work

OPEN_BATCH_MIN_NICE = 10


class OpenBatch:
    def __init__(
        self,
        items: list[Work],
        rows: int,
        max_rows: int,
        on_expired: Callable[[list[Work]], None],
    ) -> None:
        self.items = items
        self.rows = rows
        self.max_rows = max_rows  # rows == max_rows: nothing can join
        self.key = items[0].batch_key()
        self.started_ns = 0  # set by close()
        self._on_expired = on_expired  # called (on the instance thread) with the expired members
        self._lock = threading.Lock()
        self._closed = False

    def join(self, work: Work) -> bool:
        """Add a newly admitted request when it fits and the execution has not started."""
        if work.batch_key() != self.key or self.rows + work.batch_size > self.max_rows:
            return False
        with self._lock:
            if self._closed:
                return False
            self.items.append(work)
            self.rows += work.batch_size
        return True

    def withdraw(self, work: Work) -> bool:
        """Take out a member whose client went away; False once the execution has started."""
        with self._lock:
            if self._closed or work not in self.items:
                return False
            self.items.remove(work)
            self.rows -= work.batch_size
        return True

    def close(self) -> list[Work]:
        """Called as the execution starts: the members to run. Members past their deadline
        (unless their queue policy delays rather than rejects) are handed to ``on_expired``."""
        with self._lock:
            if self._closed:
                return self.items
            self._closed = True
        now = self.started_ns = time.monotonic_ns()
        expired = [
            w for w in self.items if w.deadline_ns is not None and now >= w.deadline_ns and not w.timeout_action_delay
        ]
        if expired:
            self.items = [w for w in self.items if w not in expired]
            self._on_expired(expired)
        return self.items
