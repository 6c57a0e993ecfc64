"""The owner of a running server: builds the core, loads models, starts and stops front ends.

Shutdown order: refuse new inference, stop accepting connections while in-flight RPCs finish
(within ``exit_timeout_secs``), then unload models.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc

from .core import InferenceCore
from .frontends.grpc_service import build_server
from .manager import ModelManager
from .repository import Repository
from .settings import Settings

log = logging.getLogger("inferd")


class InferdServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.repository = Repository(settings.model_repository)
        self.manager = ModelManager(self.repository)
        self.core = InferenceCore(self.manager, settings.strict_readiness)
        self.grpc_server: grpc.aio.Server | None = None
        self.grpc_port: int | None = None
        self._stopped = asyncio.Event()

    async def start(self, wait_for_models: bool = True) -> None:
        s = self.settings
        self.core.loop = asyncio.get_running_loop()
        if not self.repository.root.is_dir():
            raise FileNotFoundError(f"model repository {self.repository.root} is not a folder")
        if s.allow_grpc:
            self.grpc_server, self.grpc_port = build_server(
                self.core, f"{s.host}:{s.grpc_port}", s.grpc_max_message_bytes
            )
            await self.grpc_server.start()
            log.info("gRPC (KServe v2) listening on %s:%d", s.host, self.grpc_port)
        names = self._startup_models()
        self.core.required_models = set(names)
        loads = asyncio.gather(*(self._load_quietly(n) for n in names))
        if wait_for_models:
            await loads
        log.info("repository %s: %d model(s) requested", self.repository.root, len(names))

    def _startup_models(self) -> list[str]:
        s = self.settings
        if s.model_control_mode == "explicit":
            if "*" in s.load_models:
                return self.repository.model_names()
            return list(dict.fromkeys(s.load_models))
        return self.repository.model_names()

    async def _load_quietly(self, name: str) -> None:
        try:
            await self.manager.load(name)
        except Exception as e:  # recorded as the model's reason; the server stays up
            log.debug("model %s failed: %s", name, e)

    async def stop(self) -> None:
        self.core.shutting_down = True
        if self.grpc_server is not None:
            await self.grpc_server.stop(self.settings.exit_timeout_secs)
        await self.manager.close()
        self._stopped.set()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("shutting down (a second signal forces exit)")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _force_exit)
        await self.stop()
        log.info("stopped")


def _force_exit() -> None:
    import os

    os._exit(1)
