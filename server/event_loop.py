"""Which asyncio event loop runs the server: uvloop (libuv) when it is installed, else asyncio's.

Everything inferd does per request happens on this loop (grpc.aio's callbacks, the HTTP server,
the core and inline executions), so the loop's own overhead is part of every request's cost;
uvloop's is lower (+8-14% infer/s for add_sub at 16 clients on one CPU, perf/reports/2026-12-04-batching-and-protocol.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

CHOICES = ("auto", "asyncio", "uvloop")
T = TypeVar("T")


def resolve(choice: str) -> str:
    """The loop ``choice`` means here: "auto" is uvloop when importable, else asyncio."""
    if choice not in CHOICES:
        raise ValueError(f"unknown event loop {choice!r}; expected one of {CHOICES}")
    available = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not available:
        raise RuntimeError("--event-loop uvloop: uvloop is not installed (pip install uvloop)")
    if choice == "auto":
        return "uvloop" if available else "asyncio"
    return choice


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    # asyncio's own loop class, not asyncio.new_event_loop: that follows the installed policy,
    # which may be uvloop's (the perf tool installs it in-process).
    return getattr(asyncio, "ProactorEventLoop") if sys.platform == "win32" else asyncio.SelectorEventLoop  # noqa: B009 (absent off Windows)


def run(main: Coroutine[Any, Any, T], kind: str) -> T:
    """``asyncio.run`` on the chosen loop."""
    factory = loop_factory(kind)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    loop = factory()  # Python 3.10: no Runner
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
