"""The owner of a running server: builds the manager and the core over it, loads models through
the manager, starts and stops front ends (which see only the core).

Shutdown order: refuse new inference, stop accepting connections while in-flight RPCs finish
(within ``exit_timeout_secs``), then unload models.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Awaitable

import grpc
from prometheus_client import CollectorRegistry

from . import shm_guard
from .cache import ResponseCache
from .core import InferenceCore
from .frontends.asgi_server import AsgiServer
from .frontends.grpc_native import NativeServer, choose_grpc_frontend
from .frontends.grpc_service import build_server, channel_arguments, service_handlers
from .frontends.http_service import build_app
from .frontends.io_threads import apply_io_policy
from .frontends.jobs import JobStore
from .frontends.request_limits import Refusals
from .frontends.status_page import LatencyReader
from .loader import LoadLimits
from .log_settings import LogControl
from .manager import UNAVAILABLE, ModelManager
from .metrics import RequestObserver, build_metrics_app, register_metrics
from .repository import Repository
from .rollout_metrics import register_rollout_metrics
from .scheduling import load
from .settings import Settings
from .shm import SharedMemoryRegistry
from .stats import ModelStats
from .summary import startup_table
from .tls import TlsEndpoint, TlsError
from .tracing import Tracer
from .watcher import RepositoryWatcher

log = logging.getLogger("inferd")
IO_POLICY_RESCAN_SECS = 2.0


class StartupFailed(Exception):
    """A model failed to load at start-up and --exit-on-error is true (the message says which and why)."""


class InferdServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.repository = Repository(*settings.model_repository)
        # One registry per server, injected (never global); the observer feeds the histograms.
        self.metrics_registry = CollectorRegistry()
        observer = RequestObserver(summaries=settings.metrics.summary_latencies)
        cache = ResponseCache(settings.response_cache_bytes) if settings.response_cache_bytes else None
        self.manager = ModelManager(
            self.repository,
            [observer] if settings.allow_metrics else None,
            settings.instance_nice,
            LoadLimits(settings.max_instances_per_model, settings.max_threads_per_instance),
            cache,
        )
        self.manager.max_buffered_responses = settings.max_buffered_responses
        self.manager.load_options = settings.load_options
        for backend, key in settings.load_options.backends.no_effect:
            log.warning(
                "--backend-config %s,%s has no effect: it sizes Triton's Python stub processes, and inferd runs "
                "Python models in-process",
                backend,
                key,
            )
        self.manager.load_slots = asyncio.Semaphore(settings.model_load_threads)
        if cache is not None:
            log.info("response cache: local, %d bytes", cache.capacity)
        # What the front ends refuse before it becomes a request (limits, timeouts, surplus connections).
        self.refusals = Refusals()
        if settings.allow_metrics:
            register_metrics(self.metrics_registry, self.manager, observer, settings.metrics)
            register_rollout_metrics(self.metrics_registry, self.manager)
            self.metrics_registry.register(self.refusals.collector())
        # The status page's latency percentiles come from the metrics' request histograms.
        self._latency = _latency_reader(observer) if settings.allow_metrics else None
        self.core = InferenceCore(
            self.manager,
            settings.strict_readiness,
            settings.model_control_mode,
            SharedMemoryRegistry(enabled=settings.allow_client_shm),
            tracer=Tracer(settings.trace),
        )
        if settings.allow_client_shm and not shm_guard.available():
            log.warning(
                "client shared memory is on without its guard (inferd.server._shm_guard was not built): a client "
                "that truncates a registered shared memory object while a request uses it can end the server"
            )
        self.core.max_load_file_bytes = settings.max_load_file_bytes
        # Asynchronous jobs (HTTP: /v2/jobs); each line is bounded as one request is.
        self.jobs = JobStore(
            self.core, max_elements=settings.request_limits.max_elements, max_bytes=settings.max_job_bytes
        )
        self.core.server_name = settings.server_id
        self.core.logs = LogControl(settings.log_state())  # `inferd serve` installs its own
        self.watcher: RepositoryWatcher | None = None
        self.grpc_server: grpc.aio.Server | NativeServer | None = None
        self.grpc_frontend: str | None = None  # "native" or "aio", once started
        self.grpc_port: int | None = None
        self.http_server: AsgiServer | None = None
        self.http_port: int | None = None
        self.metrics_server: AsgiServer | None = None
        self.metrics_port: int | None = None
        self._stopped = asyncio.Event()
        self._io_policy_task: asyncio.Future[None] | None = None
        self._start_report: asyncio.Future[None] | None = None
        self._startup_names: list[str] = []  # the models requested at start-up
        # TLS of each port that serves it ("grpc", "http", "metrics"), reloaded on SIGHUP.
        self.tls: dict[str, TlsEndpoint] = {}

    async def start(self, wait_for_models: bool = True) -> None:
        s = self.settings
        for root in self.repository.roots:
            if not root.is_dir():
                raise FileNotFoundError(f"model repository {root} is not a folder")
        # Certificates are read once, before any port is bound: a bad file stops the start.
        for port, files, allowed in (
            ("grpc", s.grpc_tls, s.allow_grpc),
            ("http", s.http_tls, s.allow_http),
            ("metrics", s.metrics_tls, s.allow_metrics),
        ):
            if files is not None and allowed:
                self.tls[port] = TlsEndpoint(files)
        if s.allow_grpc:
            grpc_tls = self.tls.get("grpc")
            frontend = choose_grpc_frontend(s.grpc_frontend)
            self.grpc_frontend = frontend
            if frontend == "native":
                limits = s.request_limits
                self.grpc_server = NativeServer(
                    service_handlers(
                        self.core, s.grpc_restrictions, limits, self.refusals, s.stream_interval_us, write_batches=True
                    ),
                    _address(s.grpc_host(), s.grpc_port),
                    s.grpc_max_message_bytes,
                    channel_arguments(s.grpc_max_message_bytes, limits, s.grpc_channel_options),
                    tls=grpc_tls,
                )
                self.grpc_port = self.grpc_server.port
            else:
                self.grpc_server, self.grpc_port = build_server(
                    self.core,
                    _address(s.grpc_host(), s.grpc_port),
                    s.grpc_max_message_bytes,
                    channel_options=s.grpc_channel_options,
                    credentials=grpc_tls.grpc_credentials() if grpc_tls is not None else None,
                    restrictions=s.grpc_restrictions,
                    limits=s.request_limits,
                    refusals=self.refusals,
                    stream_interval_us=s.stream_interval_us,
                )
            await self.grpc_server.start()
            if isinstance(self.grpc_server, NativeServer):  # grpc.aio cannot count its arrivals
                load.current().probes.append(self.grpc_server.inference_calls_in_flight)
            if s.grpc_io_sched != "other":
                apply_io_policy(s.grpc_io_sched)
                self._io_policy_task = asyncio.ensure_future(self._keep_io_policy(s.grpc_io_sched))
            log.info("gRPC (KServe v2) listening on %s:%d%s", s.grpc_host(), self.grpc_port, self._tls_note("grpc"))
        try:
            if s.allow_http:
                app = build_app(
                    self.core,
                    s.http_max_body_bytes,
                    s.http_allow_origins,
                    s.allow_openai,
                    s.http_restrictions,
                    status_latency=self._latency,
                    limits=s.request_limits,
                    refusals=self.refusals,
                    stream_interval_us=s.stream_interval_us,
                    jobs=self.jobs,
                )
                self.http_server = AsgiServer(
                    app,
                    s.http_host(),
                    s.http_port,
                    s.exit_timeout_secs,
                    ssl_context=self._ssl_context("http"),
                    limits=s.request_limits,
                    refusals=self.refusals,
                )
                self.http_port = await self.http_server.start()
                # Its arrivals show while the loop is held; grpc.aio's do not, and with it serving
                # no execution may hold the loop at all (load.py).
                if self.http_server.calls is not None and self.grpc_frontend != "aio":
                    load.current().probes.append(self.http_server.calls)
                log.info("HTTP (KServe v2) listening on %s:%d%s", s.http_host(), self.http_port, self._tls_note("http"))
            if s.allow_metrics:
                self.metrics_server = AsgiServer(
                    build_metrics_app(self.metrics_registry),
                    s.metrics_host(),
                    s.metrics_port,
                    1.0,
                    ssl_context=self._ssl_context("metrics"),
                )
                self.metrics_port = await self.metrics_server.start()
                log.info(
                    "metrics (Prometheus) listening on %s:%d/metrics%s",
                    s.metrics_host(),
                    self.metrics_port,
                    self._tls_note("metrics"),
                )
        except OSError:
            await self.stop()  # e.g. a port in use: release the front ends already started
            raise
        names = await self._startup_models()
        self._startup_names = names
        self.manager.require(names)
        loads = asyncio.gather(*(self._load_quietly(n) for n in names))
        if self.watcher is not None:
            self.watcher.start()  # changes made while the start-up loads run are picked up too
        started = self._report_start(loads, names)
        if wait_for_models:
            await started
        else:
            self._start_report = asyncio.ensure_future(started)

    def _ssl_context(self, port: str) -> ssl.SSLContext | None:
        endpoint = self.tls.get(port)
        return endpoint.ssl_context if endpoint is not None else None

    def _tls_note(self, port: str) -> str:
        endpoint = self.tls.get(port)
        if endpoint is None:
            return ""
        return " (TLS, client certificates required)" if endpoint.files.mutual else " (TLS)"

    def reload_certificates(self) -> None:
        """SIGHUP: read every port's certificate files again; new handshakes use them, open
        connections keep theirs. A port whose files are now bad keeps its current ones."""
        for port, endpoint in self.tls.items():
            try:
                endpoint.reload()
            except TlsError as e:
                log.error("%s: certificates not reloaded, the current ones stay: %s", port, e)
            else:
                when = (
                    " (grpc++ reads them within a second)" if port == "grpc" and self.grpc_frontend == "native" else ""
                )
                log.info("%s: certificates reloaded from %s%s", port, endpoint.files.cert, when)

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
        s = self.settings
        found = []
        if self.grpc_port is not None:
            found.append(f"gRPC {_address(s.grpc_host(), self.grpc_port)}")
        if self.http_port is not None:
            found.append(f"HTTP {_address(s.http_host(), self.http_port)}")
        if self.metrics_port is not None:
            found.append(f"metrics {_address(s.metrics_host(), self.metrics_port)}/metrics")
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
            if isinstance(self.grpc_server, NativeServer):
                load.current().probes.remove(self.grpc_server.inference_calls_in_flight)
            draining.append(self.grpc_server.stop(self.settings.exit_timeout_secs))
        if self.http_server is not None:
            if self.http_server.calls in load.current().probes:
                load.current().probes.remove(self.http_server.calls)
            draining.append(self.http_server.stop())
        await asyncio.gather(*draining)
        for endpoint in self.tls.values():
            endpoint.close()  # grpc++'s copies of the certificates
        await self.jobs.close()  # running jobs cancelled, their files removed
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        await self.manager.close()
        self.core.shared_memory.close()
        # Flush the spans still waiting for export (the exporter may block on the network).
        await asyncio.get_running_loop().run_in_executor(None, self.core.tracer.shutdown)
        self._stopped.set()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_certificates)
        await self.start()
        if self.settings.exit_on_error:
            await self.manager.settle()
            failed = self._startup_failures()
            if failed:
                log.error("stopping: a model failed to load at start-up (--exit-on-error=true)")
                await self.stop()
                raise StartupFailed("failed to load " + "; ".join(failed) + " (--exit-on-error=false serves the rest)")
        await stop.wait()
        log.info("shutting down (a second signal forces exit)")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _force_exit)
        await self.stop()
        log.info("stopped")

    def _startup_failures(self) -> list[str]:
        """'model <name>: <reason>' for every model requested at start-up that did not load."""
        out = []
        requested = set(self._startup_names)
        for entry in self.manager.index():
            if entry.state == UNAVAILABLE and entry.name in requested:
                version = f" version {entry.version}" if entry.version else ""
                out.append(f"model '{entry.name}'{version}: {entry.reason}")
        return out


def _address(host: str, port: int) -> str:
    """host:port, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _latency_reader(observer: RequestObserver) -> LatencyReader:
    """(upper bound s, count) buckets of a version's request durations, for the status page."""

    def read(stats: ModelStats) -> list[tuple[float, int]] | None:
        h = observer.series(stats).histograms.get("inferd_request_duration_seconds")
        return None if h is None else list(zip([*h.bounds, float("inf")], h.counts))

    return read


def _force_exit() -> None:
    import os

    os._exit(1)
