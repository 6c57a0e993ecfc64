"""The server's event loop choice (server/event_loop.py) and that the test servers use it."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest
from inferd.server import event_loop

from .conftest import TEST_EVENT_LOOP, RunningServer

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def test_auto_prefers_uvloop_when_installed() -> None:
    assert event_loop.resolve("auto") == ("uvloop" if HAVE_UVLOOP else "asyncio")
    assert event_loop.resolve("asyncio") == "asyncio"


def test_unknown_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one of"):
        event_loop.resolve("trio")


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_run_uses_the_chosen_loop() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert event_loop.run(which(), "uvloop").startswith("uvloop")
    assert event_loop.run(which(), "asyncio").startswith("asyncio")


def test_session_server_runs_on_the_default_loop(server: RunningServer) -> None:
    module = type(server.loop).__module__
    assert module.startswith("uvloop" if TEST_EVENT_LOOP == "uvloop" else "asyncio")
