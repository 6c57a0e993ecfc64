"""The owner of a running server: builds the manager and the core over it, loads models through
the manager, starts and stops front ends (which see only the core).

Shutdown order: refuse new inference, stop accepting connections while in-flight RPCs finish
(within ``exit_timeout_secs``), then unload models.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable

import grpc
from prometheus_client import CollectorRegistry

from .cache import ResponseCache
from .core import InferenceCore
from .frontends.asgi_server import AsgiServer
from .frontends.grpc_service import build_server
from .frontends.http_service import build_app
from .frontends.io_threads import apply_io_policy
from .loader import LoadLimits
from .manager import ModelManager
from .metrics import RequestObserver, build_metrics_app, register_metrics
from .repository import Repository
from .settings import Settings
from .shm import SharedMemoryRegistry
from .summary import startup_table
from .watcher import RepositoryWatcher

log = logging.getLogger("inferd")
IO_POLICY_RESCAN_SECS = 2.0


class InferdServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.repository = Repository(*settings.model_repository)
        # One registry per server, injected (never global); the observer feeds the histograms.
        self.metrics_registry = CollectorRegistry()
        observer = RequestObserver()
        cache = ResponseCache(settings.response_cache_bytes) if settings.response_cache_bytes else None
        self.manager = ModelManager(
            self.repository,
            [observer] if settings.allow_metrics else None,
            settings.instance_nice,
            LoadLimits(settings.max_instances_per_model, settings.max_threads_per_instance),
            cache,
        )
        self.manager.max_buffered_responses = settings.max_buffered_responses
        if cache is not None:
            log.info("response cache: local, %d bytes", cache.capacity)
        if settings.allow_metrics:
            register_metrics(self.metrics_registry, self.manager, observer)
        self.core = InferenceCore(
            self.manager,
            settings.strict_readiness,
            settings.model_control_mode,
            SharedMemoryRegistry(enabled=settings.allow_client_shm),
        )
        self.core.max_load_file_bytes = settings.max_load_file_bytes
        self.watcher: RepositoryWatcher | None = None
        self.grpc_server: grpc.aio.Server | None = None
        self.grpc_port: int | None = None
        self.http_server: AsgiServer | None = None
        self.http_port: int | None = None
        self.metrics_server: AsgiServer | None = None
        self.metrics_port: int | None = None
        self._stopped = asyncio.Event()
        self._io_policy_task: asyncio.Future[None] | None = None
        self._start_report: asyncio.Future[None] | None = None

    async def start(self, wait_for_models: bool = True) -> None:
        s = self.settings
        for root in self.repository.roots:
            if not root.is_dir():
                raise FileNotFoundError(f"model repository {root} is not a folder")
        if s.allow_grpc:
            self.grpc_server, self.grpc_port = build_server(
                self.core, f"{s.host}:{s.grpc_port}", s.grpc_max_message_bytes
            )
            await self.grpc_server.start()
            if s.grpc_io_sched != "other":
                apply_io_policy(s.grpc_io_sched)
                self._io_policy_task = asyncio.ensure_future(self._keep_io_policy(s.grpc_io_sched))
            log.info("gRPC (KServe v2) listening on %s:%d", s.host, self.grpc_port)
        try:
            if s.allow_http:
                app = build_app(self.core, s.http_max_body_bytes, s.http_allow_origins, s.allow_openai)
                self.http_server = AsgiServer(app, s.host, s.http_port, s.exit_timeout_secs)
                self.http_port = await self.http_server.start()
                log.info("HTTP (KServe v2) listening on %s:%d", s.host, self.http_port)
            if s.allow_metrics:
                self.metrics_server = AsgiServer(build_metrics_app(self.metrics_registry), s.host, s.metrics_port, 1.0)
                self.metrics_port = await self.metrics_server.start()
                log.info("metrics (Prometheus) listening on %s:%d/metrics", s.host, self.metrics_port)
        except OSError:
            await self.stop()  # e.g. a port in use: release the front ends already started
            raise
        names = await self._startup_models()
        self.manager.require(names)
        loads = asyncio.gather(*(self._load_quietly(n) for n in names))
        if self.watcher is not None:
            self.watcher.start()  # changes made while the start-up loads run are picked up too
        started = self._report_start(loads, names)
        if wait_for_models:
            await started
        else:
            self._start_report = asyncio.ensure_future(started)

    async def _report_start(self, loads: Awaitable[object], names: list[str]) -> None:
        """Once the start-up loads are done: the models' table, then every address served."""
        await loads
        log.info(
            "%d model(s) requested at start-up%s",
            len(names),
            ":\n" + startup_table(self.manager.index()) if names else "",
        )
        log.info("serving: %s", ", ".join(self._addresses()))

    def _addresses(self) -> list[str]:
        host = self.settings.host
        found = []
        if self.grpc_port is not None:
            found.append(f"gRPC {host}:{self.grpc_port}")
        if self.http_port is not None:
            found.append(f"HTTP {host}:{self.http_port}")
        if self.metrics_port is not None:
            found.append(f"metrics {host}:{self.metrics_port}/metrics")
        return found or ["no front end (every --allow-* is false)"]

    async def _startup_models(self) -> list[str]:
        s = self.settings
        if s.model_control_mode == "explicit":
            if "*" in s.load_models:
                return self.repository.model_names()
            return list(dict.fromkeys(s.load_models))
        if s.load_models:
            log.warning("--load-model is ignored in model control mode '%s'", s.model_control_mode)
        if s.model_control_mode == "poll":
            self.watcher = RepositoryWatcher(
                self.repository, self.manager.load, self.manager.unload, s.repository_poll_secs
            )
            return await self.watcher.prime()  # the baseline the watcher compares against
        return self.repository.model_names()

    async def _load_quietly(self, name: str) -> None:
        try:
            await self.manager.load(name)
        except Exception as e:  # recorded as the model's reason; the server stays up
            log.debug("model %s failed: %s", name, e)

    async def _keep_io_policy(self, policy: str) -> None:
        """grpc starts EventEngine threads after start-up too, not always from a thread that
        passes the policy on; a scan every few seconds (a directory listing) catches them."""
        while True:
            await asyncio.sleep(IO_POLICY_RESCAN_SECS)
            apply_io_policy(policy)

    async def stop(self) -> None:
        self.manager.begin_shutdown()
        for task in (self._io_policy_task, self._start_report):
            if task is not None:
                task.cancel()
        if self.watcher is not None:
            await self.watcher.stop()
        # gRPC and HTTP stop accepting and drain their in-flight requests side by side.
        draining = []
        if self.grpc_server is not None:
            draining.append(self.grpc_server.stop(self.settings.exit_timeout_secs))
        if self.http_server is not None:
            draining.append(self.http_server.stop())
        await asyncio.gather(*draining)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        await self.manager.close()
        self.core.shared_memory.close()
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
