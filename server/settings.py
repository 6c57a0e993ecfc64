"""Server settings: one typed object with embedded defaults; the CLI overrides fields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..protocol.streaming import DEFAULT_BUFFERED_RESPONSES, DEFAULT_STREAM_INTERVAL_US
from .frontends.access import Restriction
from .frontends.request_limits import RequestLimits
from .loader import LoadLimits, LoadOptions
from .log_settings import LogState, state_from_level
from .metrics_config import MetricsOptions
from .tls import TlsFiles
from .tracing import TraceConfig

# The bundled repository sits beside this package, both in a checkout and in an installed wheel.
BUNDLED_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"

# Triton accepts messages up to 2 GiB; inferd defaults lower so one request cannot pin that
# much memory, and tells clients with RESOURCE_EXHAUSTED. Raise it with --grpc-max-message-bytes.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


@dataclass
class Settings:
    # Every folder's models are served; a model name may be in only one of them.
    model_repository: tuple[Path, ...] = (BUNDLED_REPOSITORY,)
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    allow_grpc: bool = True
    allow_http: bool = True
    allow_metrics: bool = True
    # The OpenAI-compatible text API at /v1 on the HTTP port (frontends/openai_service.py).
    allow_openai: bool = True
    # Clients' system shared memory (server/shm.py): off by default, as in Triton.
    allow_client_shm: bool = False
    grpc_max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Linux scheduling policy of grpc's I/O helper threads (frontends/io_threads.py): "batch"
    # keeps them from preempting the event loop on a shared CPU; "other" is the kernel default.
    grpc_io_sched: str = "batch"
    # Which gRPC front end serves the port (frontends/grpc_native.py): auto | native | aio.
    grpc_frontend: str = "auto"
    # Nice steps that model instance threads run below the event loop (scheduling/thread_priority.py;
    # 0 = off). At +19 a thread contending with the loop for a CPU gets about 1.5% of it.
    instance_nice: int = 19
    event_loop: str = "auto"  # auto (uvloop when installed) | asyncio | uvloop
    http_max_body_bytes: int = 64 * 1024 * 1024
    # What one model version may ask for (loader.LoadLimits): instances, and threads per instance.
    max_instances_per_model: int = LoadLimits.max_instances
    max_threads_per_instance: int = LoadLimits.max_threads_per_instance
    # Bytes of model files one load request may send ('file:' parameters; model_files.py).
    max_load_file_bytes: int = 256 * 1024 * 1024
    # Web origins whose pages may call the HTTP API (frontends/http_origin.py); none by default.
    http_allow_origins: tuple[str, ...] = ()
    # Bytes of Triton's "local" response cache (--cache-config local,size=N); 0: no cache.
    response_cache_bytes: int = 0
    # Responses of one decoupled request that may wait for a slow client (protocol/streaming.py).
    max_buffered_responses: int = DEFAULT_BUFFERED_RESPONSES
    # Bytes of asynchronous jobs' files (inputs and answers) kept at once (frontends/jobs.py).
    max_job_bytes: int = 4 << 30
    # How often at most one HTTP Server-Sent Event stream is written to, in µs (0: as soon as
    # possible); its first and final events are never held (protocol/streaming.py).
    stream_interval_us: int = DEFAULT_STREAM_INTERVAL_US
    model_control_mode: str = "poll"  # none | poll | explicit
    repository_poll_secs: float = 2.0
    load_models: list[str] = field(default_factory=list)  # explicit mode; "*" = all
    strict_readiness: bool = True
    exit_timeout_secs: float = 30.0
    log_level: str = "INFO"
    # Triton's operational flags (triton_flags.py). Addresses: None binds --host; the metrics
    # port defaults to the HTTP address, as in Triton.
    server_id: str = "inferd"
    http_address: str | None = None
    grpc_address: str | None = None
    metrics_address: str | None = None
    # A model failing at start-up stops `inferd serve` (Triton's default); in-process servers
    # (InferdServer.start) always serve what loaded.
    exit_on_error: bool = True
    load_options: LoadOptions = field(default_factory=LoadOptions)
    model_load_threads: int = 4
    # grpc core channel arguments from --grpc-keepalive-* and --grpc-max-connection-age*.
    grpc_channel_options: tuple[tuple[str, int], ...] = ()
    # Triton's log switches, file and format; None: from log_level.
    log: LogState | None = None
    metrics: MetricsOptions = field(default_factory=MetricsOptions)
    # Transport security and access control (tls.py, frontends/access.py): TLS per port (None:
    # plaintext) and, per API category, the header a request needs (none: open).
    grpc_tls: TlsFiles | None = None
    http_tls: TlsFiles | None = None
    metrics_tls: TlsFiles | None = None
    grpc_restrictions: Mapping[str, Restriction] = field(default_factory=dict)
    http_restrictions: Mapping[str, Restriction] = field(default_factory=dict)
    # --trace-config (tracing.py): every level OFF by default.
    trace: TraceConfig = field(default_factory=TraceConfig)
    # What one request or connection may cost: decoded elements, HTTP timeouts and connection
    # cap, gRPC handshake timeout and streams (frontends/request_limits.py, limit_flags.py).
    request_limits: RequestLimits = field(default_factory=RequestLimits)

    def log_state(self) -> LogState:
        return self.log if self.log is not None else state_from_level(self.log_level)

    def grpc_host(self) -> str:
        return self.grpc_address or self.host

    def http_host(self) -> str:
        return self.http_address or self.host

    def metrics_host(self) -> str:
        return self.metrics_address or self.http_host()

    def __post_init__(self) -> None:
        # One folder may be given as it is; the server always works with the tuple.
        if isinstance(self.model_repository, (str, Path)):
            self.model_repository = (Path(self.model_repository),)
        else:
            self.model_repository = tuple(Path(p) for p in self.model_repository)
