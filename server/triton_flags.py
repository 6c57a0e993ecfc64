"""Triton's operational flags for ``inferd serve``, so that a launch line written for
``tritonserver`` starts inferd unchanged: the repository, address, logging, metrics and gRPC
connection flags with Triton's spellings, value syntax and meaning (:func:`add_triton_arguments`),
and every other flag of Triton's ``command_line_parser.cc`` refused with a message naming it
(:func:`add_refused_flags`), never ignored and never "unrecognized".

A refused flag is still accepted with the value that asks for what inferd does anyway (for
example ``--allow-sagemaker=false`` or ``--rate-limit=off``), so launch lines that switch
Triton's extras off keep working. A flag another module implements (TLS, tracing) is refused
here only until that module registers it: :func:`add_refused_flags` runs last and skips every
flag the parser already has.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import backend_config, metrics_config
from .flag_values import parse_bool
from .loader import LoadOptions
from .log_settings import FORMATS, LogState, state_from_level

# Every long option of Triton's tritonserver (src/command_line_parser.cc, 2026-08), in its order.
TRITON_FLAGS = (
    "help",
    "id",
    "exit-timeout-secs",
    "model-store",
    "model-repository",
    "exit-on-error",
    "disable-auto-complete-config",
    "strict-readiness",
    "model-control-mode",
    "repository-poll-secs",
    "load-model",
    "model-config-name",
    "model-load-thread-count",
    "model-load-retry-count",
    "model-namespacing",
    "enable-peer-access",
    "allow-http",
    "http-address",
    "http-port",
    "reuse-http-port",
    "http-header-forward-pattern",
    "http-thread-count",
    "http-max-input-size",
    "http-restricted-api",
    "allow-grpc",
    "grpc-address",
    "grpc-port",
    "reuse-grpc-port",
    "grpc-header-forward-pattern",
    "grpc-infer-thread-count",
    "grpc-infer-allocation-pool-size",
    "grpc-max-response-pool-size",
    "grpc-use-ssl",
    "grpc-use-ssl-mutual",
    "grpc-server-cert",
    "grpc-server-key",
    "grpc-root-cert",
    "grpc-infer-response-compression-level",
    "grpc-keepalive-time",
    "grpc-keepalive-timeout",
    "grpc-keepalive-permit-without-calls",
    "grpc-http2-max-pings-without-data",
    "grpc-http2-min-recv-ping-interval-without-data",
    "grpc-http2-max-ping-strikes",
    "grpc-max-connection-age",
    "grpc-max-connection-age-grace",
    "grpc-restricted-protocol",
    "log-verbose",
    "log-info",
    "log-warning",
    "log-error",
    "log-format",
    "log-file",
    "allow-sagemaker",
    "sagemaker-port",
    "sagemaker-safe-port-range",
    "sagemaker-thread-count",
    "allow-vertex-ai",
    "vertex-ai-port",
    "vertex-ai-thread-count",
    "vertex-ai-default-model",
    "allow-metrics",
    "allow-gpu-metrics",
    "allow-cpu-metrics",
    "metrics-address",
    "metrics-port",
    "metrics-interval-ms",
    "metrics-config",
    "trace-config",
    "cache-config",
    "cache-directory",
    "rate-limit",
    "rate-limit-resource",
    "pinned-memory-pool-byte-size",
    "cuda-memory-pool-byte-size",
    "cuda-virtual-address-size",
    "min-supported-compute-capability",
    "buffer-manager-thread-count",
    "host-policy",
    "model-load-gpu-limit",
    "allow-client-shm",
    "backend-directory",
    "backend-config",
    "repoagent-directory",
    "strict-model-config",
    "response-cache-byte-size",
    "trace-file",
    "trace-level",
    "trace-rate",
    "trace-count",
    "trace-log-frequency",
)


def _false(text: str) -> bool:
    return text.strip().lower() in ("false", "off", "0")


def _zero(text: str) -> bool:
    return text.strip() == "0"


@dataclass(frozen=True)
class Refusal:
    reason: str
    accepts: Callable[[str], bool] | None = None  # values that ask for what inferd does anyway
    accepted: str = ""  # those values, for the message


_OFF = "false"
_THREADS = "inferd's front ends run on one event loop; there is no thread pool to size"
REFUSED: dict[str, Refusal] = {
    "model-load-retry-count": Refusal("a model that fails to load is not retried", _zero, "0"),
    "model-namespacing": Refusal("model namespaces are not supported", _false, _OFF),
    "enable-peer-access": Refusal("inferd has no GPU peer access to enable", _false, _OFF),
    "reuse-http-port": Refusal("ports are never shared between servers", _false, _OFF),
    "reuse-grpc-port": Refusal("ports are never shared between servers", _false, _OFF),
    "http-header-forward-pattern": Refusal("HTTP headers are not forwarded as request parameters"),
    "grpc-header-forward-pattern": Refusal("gRPC metadata is not forwarded as request parameters"),
    "http-thread-count": Refusal(_THREADS),
    "grpc-infer-thread-count": Refusal(_THREADS),
    "grpc-infer-allocation-pool-size": Refusal("inferd keeps no pool of request states to size"),
    "grpc-max-response-pool-size": Refusal(
        "inferd keeps no pool of response objects (--max-buffered-responses bounds a decoupled request's responses)"
    ),
    "grpc-infer-response-compression-level": Refusal(
        "responses are not compressed by the server", lambda v: v.strip().lower() == "none", "none"
    ),
    "allow-sagemaker": Refusal("the SageMaker front end is not implemented", _false, _OFF),
    "sagemaker-port": Refusal("the SageMaker front end is not implemented"),
    "sagemaker-safe-port-range": Refusal("the SageMaker front end is not implemented"),
    "sagemaker-thread-count": Refusal("the SageMaker front end is not implemented"),
    "allow-vertex-ai": Refusal("the Vertex AI front end is not implemented", _false, _OFF),
    "vertex-ai-port": Refusal("the Vertex AI front end is not implemented"),
    "vertex-ai-thread-count": Refusal("the Vertex AI front end is not implemented"),
    "vertex-ai-default-model": Refusal("the Vertex AI front end is not implemented"),
    "allow-gpu-metrics": Refusal("GPU metrics (DCGM) are not implemented", _false, _OFF),
    "cache-directory": Refusal("cache implementations are built in (--cache-config local,size=N); none are loaded"),
    "rate-limit": Refusal("the rate limiter is not implemented", lambda v: v.strip().lower() == "off", "off"),
    "rate-limit-resource": Refusal("the rate limiter is not implemented"),
    "pinned-memory-pool-byte-size": Refusal("inferd has no pinned memory pool"),
    "cuda-memory-pool-byte-size": Refusal("inferd has no CUDA memory pool"),
    "cuda-virtual-address-size": Refusal("growable GPU state memory is not supported"),
    "min-supported-compute-capability": Refusal("inferd does not filter GPUs by compute capability"),
    "buffer-manager-thread-count": Refusal("inferd has no buffer manager threads", _zero, "0"),
    "host-policy": Refusal("NUMA host policies are not supported"),
    "model-load-gpu-limit": Refusal("GPU memory limits for model loads are not supported"),
    "backend-directory": Refusal(
        "backends are Python packages found through the 'inferd.backends' entry points, not shared libraries"
    ),
    "repoagent-directory": Refusal("repository agents are built in (Triton's 'checksum'); none are loaded"),
    "response-cache-byte-size": Refusal("it is deprecated in Triton; use --cache-config local,size=<bytes>"),
    # Implemented in operator_flags.py (TLS, access control, tracing); refused while absent.
    "grpc-use-ssl": Refusal("TLS is not available in this build", _false, _OFF),
    "grpc-use-ssl-mutual": Refusal("TLS is not available in this build", _false, _OFF),
    "grpc-server-cert": Refusal("TLS is not available in this build"),
    "grpc-server-key": Refusal("TLS is not available in this build"),
    "grpc-root-cert": Refusal("TLS is not available in this build"),
    "grpc-restricted-protocol": Refusal("restricted APIs are not available in this build"),
    "http-restricted-api": Refusal("restricted APIs are not available in this build"),
    "trace-config": Refusal("tracing is not available in this build"),
    "trace-file": Refusal("tracing is not available in this build"),
    "trace-level": Refusal("tracing is not available in this build"),
    "trace-rate": Refusal("tracing is not available in this build"),
    "trace-count": Refusal("tracing is not available in this build"),
    "trace-log-frequency": Refusal("tracing is not available in this build"),
}


class _Refuse(argparse.Action):
    """A Triton flag inferd does not implement: an error naming it, unless the value is one
    that asks for inferd's behaviour."""

    def __init__(self, option_strings: Sequence[str], dest: str, refusal: Refusal, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.refusal = refusal

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None) -> None:
        r = self.refusal
        if r.accepts is not None and r.accepts(str(values)):
            return  # what inferd does anyway
        only = f"; inferd accepts only {option}={r.accepted}" if r.accepted else ""
        raise argparse.ArgumentError(self, f"Triton's {option} is not implemented by inferd: {r.reason}{only}")


def add_refused_flags(p: argparse.ArgumentParser) -> None:
    """Register every Triton flag the parser does not have yet as a refusal. Call it last."""
    have = set(p._option_string_actions)  # argparse's table of registered option strings
    for flag in TRITON_FLAGS:
        option = f"--{flag}"
        if option in have:
            continue
        refusal = REFUSED.get(flag, Refusal("it is not implemented"))
        p.add_argument(option, action=_Refuse, refusal=refusal, dest=f"refused_{flag.replace('-', '_')}")


def implemented(p: argparse.ArgumentParser) -> dict[str, bool]:
    """Each Triton flag: True where ``p`` implements it, False where it is refused."""
    actions = p._option_string_actions
    return {flag: not isinstance(actions.get(f"--{flag}"), _Refuse) for flag in TRITON_FLAGS}


# --- the flags inferd implements -----------------------------------------------------------------


def _int_at_least(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"Invalid option value. Got {text}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {least} or more, not {value}")
        return value

    return parse


def _verbose(text: str) -> int:
    # Triton's ParseIntBoolOption: true is 1, false is 0, otherwise a level.
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return int(lowered == "true")
    return _int_at_least(0)(text)


def _log_format(text: str) -> str:
    if text not in FORMATS:
        raise argparse.ArgumentTypeError(f"invalid argument for --log-format: '{text}' (one of {', '.join(FORMATS)})")
    return text


def _config_name(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("empty argument for --model-config-name")
    if any(c.isspace() for c in text) or "/" in text or "\\" in text or text.startswith("."):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a configuration name: no spaces, path separators or leading '.' (e.g. h100)"
        )
    return text


def _backend_setting(text: str) -> tuple[str, str, str]:
    try:
        item = backend_config.parse(text)
        backend_config.settings([item])  # each value checked on its own, so the error names it
    except backend_config.BackendConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return item


def _metrics_setting(text: str) -> tuple[str, str]:
    try:
        item = metrics_config.parse(text)
        metrics_config.options([item])
    except metrics_config.MetricsConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return item


def _positive_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"Invalid option value. Got {text}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


# Triton's gRPC connection flags -> grpc core's channel arguments (all milliseconds or counts).
GRPC_OPTIONS = {
    "grpc_keepalive_time": "grpc.keepalive_time_ms",
    "grpc_keepalive_timeout": "grpc.keepalive_timeout_ms",
    "grpc_keepalive_permit_without_calls": "grpc.keepalive_permit_without_calls",
    "grpc_http2_max_pings_without_data": "grpc.http2.max_pings_without_data",
    "grpc_http2_min_recv_ping_interval_without_data": "grpc.http2.min_ping_interval_without_data_ms",
    "grpc_http2_max_ping_strikes": "grpc.http2.max_ping_strikes",
    "grpc_max_connection_age": "grpc.max_connection_age_ms",
    "grpc_max_connection_age_grace": "grpc.max_connection_age_grace_ms",
}


def add_triton_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Triton's flags", "as tritonserver takes them; see the README's Operations section")
    g.add_argument("--id", default=None, metavar="NAME", help="the server's name in ServerMetadata (default inferd)")
    for what in ("http", "grpc"):
        g.add_argument(
            f"--{what}-address",
            default=None,
            metavar="ADDRESS",
            help=f"address the {what.upper() if what == 'http' else 'gRPC'} port binds (default: --host)",
        )
    g.add_argument(
        "--metrics-address",
        default=None,
        metavar="ADDRESS",
        help="address the metrics port binds (default: the HTTP one)",
    )
    g.add_argument(
        "--exit-on-error",
        type=parse_bool,
        default=True,
        metavar="BOOL",
        help="stop the server, with the reason, when a model fails to load at start-up (default true, as in "
        "Triton); false serves the models that did load",
    )
    g.add_argument(
        "--disable-auto-complete-config",
        action="store_true",
        help="do not complete configs from the model files: each model needs a complete config.pbtxt",
    )
    g.add_argument(
        "--strict-model-config",
        type=parse_bool,
        default=None,
        metavar="BOOL",
        help="Triton's older spelling: true is --disable-auto-complete-config",
    )
    g.add_argument(
        "--backend-config",
        type=_backend_setting,
        action="append",
        default=[],
        metavar="[BACKEND,]SETTING=VALUE",
        help="a backend setting, e.g. default-max-batch-size=8, onnxruntime,intra_op_thread_count=2 (repeatable)",
    )
    g.add_argument(
        "--model-load-thread-count",
        type=_int_at_least(1),
        default=4,
        metavar="N",
        help="models loaded at once (default %(default)s, as in Triton)",
    )
    g.add_argument(
        "--model-config-name",
        type=_config_name,
        default=None,
        metavar="NAME",
        help="read <model>/configs/NAME.pbtxt where a model has it, else its config.pbtxt",
    )
    for flag, _ in GRPC_OPTIONS.items():
        option = "--" + flag.replace("_", "-")
        if flag == "grpc_keepalive_permit_without_calls":
            g.add_argument(option, type=parse_bool, default=None, metavar="BOOL", help="grpc core's default unless set")
        else:
            g.add_argument(
                option, type=_int_at_least(0), default=None, metavar="N", help="grpc core's default unless set"
            )
    g.add_argument(
        "--log-verbose", type=_verbose, default=None, metavar="LEVEL", help="1 or more: verbose (DEBUG) lines"
    )
    for level in ("info", "warning", "error"):
        g.add_argument(
            f"--log-{level}", type=parse_bool, default=None, metavar="BOOL", help=f"{level} lines (default true)"
        )
    g.add_argument(
        "--log-format",
        type=_log_format,
        default="inferd",
        metavar="FORMAT",
        help="inferd (default), Triton's default or ISO8601, or json (one object per line)",
    )
    g.add_argument("--log-file", default="", metavar="PATH", help="append the log to PATH instead of stderr")
    g.add_argument(
        "--allow-cpu-metrics",
        type=parse_bool,
        default=True,
        metavar="BOOL",
        help="nv_cpu_utilization, nv_cpu_memory_total_bytes, nv_cpu_memory_used_bytes (default true)",
    )
    g.add_argument(
        "--metrics-interval-ms",
        type=_positive_ms,
        default=2000.0,
        metavar="MS",
        help="how often CPU utilization is sampled (default %(default)s)",
    )
    g.add_argument(
        "--metrics-config",
        type=_metrics_setting,
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="counter_latencies, histogram_latencies, summary_latencies=true, summary_quantiles=0.5:0.05,... "
        "(repeatable)",
    )


def triton_settings(a: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields the flags above set."""
    log = state_from_level(a.log_level)
    log = LogState(
        log_file=a.log_file,
        log_info=log.log_info if a.log_info is None else a.log_info,
        log_warning=log.log_warning if a.log_warning is None else a.log_warning,
        log_error=log.log_error if a.log_error is None else a.log_error,
        log_verbose_level=log.log_verbose_level if a.log_verbose is None else a.log_verbose,
        log_format=a.log_format,
    )
    strict = a.disable_auto_complete_config or a.strict_model_config is True
    grpc_options = tuple(
        (option, int(getattr(a, flag))) for flag, option in GRPC_OPTIONS.items() if getattr(a, flag) is not None
    )
    return {
        "server_id": a.id or "inferd",
        "http_address": a.http_address,
        "grpc_address": a.grpc_address,
        "metrics_address": a.metrics_address,
        "exit_on_error": a.exit_on_error,
        "load_options": LoadOptions(a.model_config_name or "", not strict, backend_config.settings(a.backend_config)),
        "model_load_threads": a.model_load_thread_count,
        "grpc_channel_options": grpc_options,
        "log": log,
        "metrics": metrics_config.options(a.metrics_config, a.allow_cpu_metrics, a.metrics_interval_ms),
    }
