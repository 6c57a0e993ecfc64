"""Shared fixtures: a test model repository built once per session, and a real server on an
ephemeral loopback port, running its own event loop in a background thread."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from inferd.server import event_loop
from inferd.server.app import InferdServer
from inferd.server.settings import Settings

from .models import build_repository
from .serving import GRPC_FRONTEND


@dataclass
class RunningServer:
    server: InferdServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.server.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"127.0.0.1:{self.server.metrics_port}"

    def call(self, coro, timeout: float = 60):  # type: ignore[no-untyped-def]
        """Run a coroutine on the server's loop from the test thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


# The loop the test servers run on: by default the one `inferd serve` picks (uvloop when
# installed); INFERD_TEST_EVENT_LOOP=asyncio runs the suite on asyncio's own.
TEST_EVENT_LOOP = event_loop.resolve(os.environ.get("INFERD_TEST_EVENT_LOOP", "auto"))


def start_server(settings: Settings) -> RunningServer:
    """Start an InferdServer on its own loop thread; returns once models are loaded."""
    loop = event_loop.loop_factory(TEST_EVENT_LOOP)()
    thread = threading.Thread(target=loop.run_forever, name="inferd-test-server", daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(_make(settings), loop).result(60)
    running = RunningServer(server, loop, thread)
    running.call(server.start())
    return running


async def _make(settings: Settings) -> InferdServer:
    return InferdServer(settings)


def test_settings(repo: Path, **overrides: object) -> Settings:
    """Settings for a test server: loopback, ephemeral ports, no polling unless asked."""
    s = Settings(
        model_repository=(repo,),
        grpc_port=0,
        http_port=0,
        metrics_port=0,
        model_control_mode="none",
        grpc_frontend=GRPC_FRONTEND,
    )
    for k, v in overrides.items():
        if not hasattr(s, k):  # a misspelt setting would silently test the default
            raise AttributeError(f"Settings has no field {k!r}")
        setattr(s, k, v)
    return s


test_settings.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session")
def server(model_repo: Path) -> Iterator[RunningServer]:
    running = start_server(test_settings(model_repo))
    yield running
    running.stop()
