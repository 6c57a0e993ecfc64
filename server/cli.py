"""``inferd`` command line: ``inferd serve`` runs the server. Other sub-commands (``inferd perf``,
the load tool) come from the ``inferd.commands`` entry-point group, so the server never imports
them and other packages can add their own."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from ..backends import framework_logs
from ..protocol.streaming import MAX_STREAM_INTERVAL_US
from .flag_values import parse_bool
from .limit_flags import add_limit_arguments, limit_settings
from .log_settings import LogControl
from .operator_flags import add_operator_arguments, operator_settings
from .settings import Settings
from .triton_flags import add_refused_flags, add_triton_arguments, triton_settings


def _nice(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"nice steps must be 0..19, not {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _stream_interval(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_STREAM_INTERVAL_US:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of microseconds from 0 to {MAX_STREAM_INTERVAL_US} (0: write every "
            f"response as soon as possible), not '{text}'"
        )
    return value


CACHES = ("local",)  # Triton's cache implementations inferd has


def _cache_setting(text: str) -> tuple[str, str, str]:
    """One ``--cache-config`` value, Triton's ``<cache name>,<setting>=<value>``."""
    name, comma, rest = text.partition(",")
    setting, equals, value = rest.partition("=")
    if not comma or not name:
        raise argparse.ArgumentTypeError(
            f"no cache specified: the format is <cache name>,<setting>=<value> (e.g. local,size=1048576), got '{text}'"
        )
    if not equals or not setting or not value:
        raise argparse.ArgumentTypeError(
            f"the format is <cache name>,<setting>=<value> (e.g. local,size=1048576), got '{text}'"
        )
    if name not in CACHES:
        raise argparse.ArgumentTypeError(
            f"unknown cache '{name}': inferd has only the 'local' cache (e.g. local,size=1048576)"
        )
    if setting != "size":
        raise argparse.ArgumentTypeError(f"the '{name}' cache has no setting '{setting}'; it takes size=<bytes>")
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise argparse.ArgumentTypeError(
            f"the '{name}' cache's size must be a whole number of bytes, 1 or more, not '{value}'"
        )
    return name, setting, value


def _cache_bytes(settings: list[tuple[str, str, str]]) -> int:
    """The local cache's size from every --cache-config given (the last size wins, as in Triton)."""
    size = 0
    for _, setting, value in settings:
        if setting == "size":
            size = int(value)
    return size


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    d = Settings()
    p.add_argument(
        "--model-repository",
        "--model-store",
        type=Path,
        action="append",
        default=None,
        metavar="FOLDER",
        help="model repository folder; repeat it to serve the models of several "
        "(a model name may be in only one; default: the bundled model_repository/)",
    )
    p.add_argument("--host", default=d.host, help="address to bind (default %(default)s)")
    p.add_argument("--grpc-port", type=int, default=d.grpc_port, help="gRPC port; 0 = any free port")
    p.add_argument("--http-port", type=int, default=d.http_port, help="HTTP/REST port")
    p.add_argument("--metrics-port", type=int, default=d.metrics_port, help="Prometheus metrics port")
    p.add_argument("--allow-grpc", type=parse_bool, default=d.allow_grpc, metavar="BOOL")
    p.add_argument("--allow-http", type=parse_bool, default=d.allow_http, metavar="BOOL")
    p.add_argument("--allow-metrics", type=parse_bool, default=d.allow_metrics, metavar="BOOL")
    p.add_argument(
        "--allow-openai",
        type=parse_bool,
        default=d.allow_openai,
        metavar="BOOL",
        help="serve the OpenAI-compatible text API (/v1/models, /v1/completions, /v1/chat/completions) on the "
        "HTTP port, for models that declare the text contract (default true)",
    )
    p.add_argument(
        "--allow-client-shm",
        type=parse_bool,
        default=d.allow_client_shm,
        metavar="BOOL",
        help="let clients on this host register system and CUDA shared memory regions and pass tensors through them "
        "(default false, as in Triton)",
    )
    p.add_argument(
        "--grpc-max-message-bytes",
        type=int,
        default=d.grpc_max_message_bytes,
        help="largest gRPC message accepted or sent (default %(default)s = 256 MiB)",
    )
    p.add_argument(
        "--grpc-frontend",
        choices=["auto", "native", "aio"],
        default=d.grpc_frontend,
        help="what serves the gRPC port: native (grpc++, built when libgrpc++-dev is installed), aio "
        "(grpc.aio, pure Python) or auto (default: native where built)",
    )
    p.add_argument(
        "--grpc-io-sched",
        choices=["batch", "other"],
        default=d.grpc_io_sched,
        help="Linux scheduling policy of grpc's I/O threads: batch (default) keeps them from "
        "preempting the event loop on a shared CPU; other is the kernel's default",
    )
    p.add_argument(
        "--instance-nice",
        type=_nice,
        default=d.instance_nice,
        metavar="N",
        help="Linux: instances of dynamically batched models run N nice steps below the event loop, so that on a "
        "shared CPU requests are admitted (and batches formed) before compute runs "
        "(default %(default)s, the lowest; 0 = the kernel's default priority). At 10 or more a batch "
        "handed to an instance also takes requests admitted before its execution starts",
    )
    p.add_argument(
        "--event-loop",
        choices=["auto", "asyncio", "uvloop"],
        default=d.event_loop,
        help="the server's event loop: auto (default) is uvloop when installed, else asyncio's",
    )
    p.add_argument(
        "--http-max-body-bytes",
        "--http-max-input-size",
        type=int,
        default=d.http_max_body_bytes,
        help="largest HTTP request body (default %(default)s = 64 MiB)",
    )
    p.add_argument(
        "--max-load-file-bytes",
        type=_positive,
        default=d.max_load_file_bytes,
        metavar="N",
        help="most bytes of model files one load request may send as 'file:' parameters (default "
        "%(default)s = 256 MiB)",
    )
    p.add_argument(
        "--max-instances-per-model",
        type=_positive,
        default=d.max_instances_per_model,
        metavar="N",
        help="most instances one model version may ask for in instance_group (default %(default)s); more is "
        "refused at load",
    )
    p.add_argument(
        "--max-threads-per-instance",
        type=_positive,
        default=d.max_threads_per_instance,
        metavar="N",
        help="most framework threads a model's intra_op/inter_op_thread_count parameters may ask for per "
        "instance (default %(default)s: 4 per CPU, at least 16); more is refused at load",
    )
    p.add_argument(
        "--http-allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (e.g. https://tools.example.com) whose pages may call the HTTP API, with CORS "
        "(repeatable); requests carrying any other Origin header are refused with 403, and POST bodies "
        "typed text/plain or multipart/form-data with 415",
    )
    p.add_argument(
        "--cache-config",
        type=_cache_setting,
        action="append",
        default=[],
        metavar="CACHE,SETTING=VALUE",
        help="turn on the response cache, as Triton's flag does: local,size=<bytes> (an LRU cache of that many "
        "bytes shared by all models); models opt in with response_cache { enable: true }. Default: no cache",
    )
    p.add_argument(
        "--max-buffered-responses",
        type=_positive,
        default=d.max_buffered_responses,
        metavar="N",
        help="responses of one decoupled-model request that may wait for a client reading them slowly "
        "(default %(default)s); one more fails the request and cancels it in the model",
    )
    p.add_argument(
        "--max-job-bytes",
        type=_positive,
        default=d.max_job_bytes,
        metavar="BYTES",
        help="asynchronous jobs' files (inputs and answers, all jobs kept together) on disk (default %(default)s); "
        "a submission that does not fit is refused (413), a job whose next answer does not fit stops as FAILED",
    )
    p.add_argument(
        "--stream-interval-us",
        type=_stream_interval,
        default=d.stream_interval_us,
        metavar="US",
        help="decoupled models' streams (HTTP generate_stream and OpenAI stream: true, one event per "
        "response; gRPC ModelStreamInfer, one message per response): after writing to a stream, write its "
        "next responses together at most this many microseconds later (default %(default)s; 0: write as "
        "soon as possible). The first and the final response are never held",
    )
    p.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default=d.model_control_mode)
    p.add_argument("--repository-poll-secs", type=float, default=d.repository_poll_secs)
    p.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="explicit mode: model to load at start-up (repeatable, '*' for all)",
    )
    p.add_argument(
        "--strict-readiness",
        type=parse_bool,
        default=d.strict_readiness,
        metavar="BOOL",
        help="ready only when every requested model is ready (default true)",
    )
    p.add_argument(
        "--exit-timeout-secs",
        type=float,
        default=d.exit_timeout_secs,
        help="how long in-flight requests may finish at shutdown",
    )
    p.add_argument("--log-level", default=d.log_level, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_operator_arguments(p)  # TLS, restricted APIs, tracing (operator_flags.py)
    add_triton_arguments(p)  # Triton's repository, address, log and metrics flags (triton_flags.py)
    add_limit_arguments(p)  # what one request or connection may cost (limit_flags.py)
    add_refused_flags(p)  # last: every other Triton flag, refused by name


def settings_from_args(a: argparse.Namespace) -> Settings:
    return Settings(
        model_repository=tuple(a.model_repository) if a.model_repository else Settings().model_repository,
        host=a.host,
        grpc_port=a.grpc_port,
        http_port=a.http_port,
        metrics_port=a.metrics_port,
        allow_grpc=a.allow_grpc,
        allow_http=a.allow_http,
        allow_metrics=a.allow_metrics,
        allow_openai=a.allow_openai,
        allow_client_shm=a.allow_client_shm,
        grpc_max_message_bytes=a.grpc_max_message_bytes,
        grpc_io_sched=a.grpc_io_sched,
        grpc_frontend=a.grpc_frontend,
        instance_nice=a.instance_nice,
        event_loop=a.event_loop,
        http_max_body_bytes=a.http_max_body_bytes,
        http_allow_origins=tuple(a.http_allow_origin),
        max_instances_per_model=a.max_instances_per_model,
        max_load_file_bytes=a.max_load_file_bytes,
        max_threads_per_instance=a.max_threads_per_instance,
        max_buffered_responses=a.max_buffered_responses,
        max_job_bytes=a.max_job_bytes,
        stream_interval_us=a.stream_interval_us,
        response_cache_bytes=_cache_bytes(a.cache_config),
        model_control_mode=a.model_control_mode,
        repository_poll_secs=a.repository_poll_secs,
        load_models=a.load_model,
        strict_readiness=a.strict_readiness,
        exit_timeout_secs=a.exit_timeout_secs,
        log_level=a.log_level,
        **operator_settings(a),
        **triton_settings(a),
        **limit_settings(a),
    )


COMMANDS_GROUP = "inferd.commands"


def plugin_commands() -> dict[str, EntryPoint]:
    """Sub-commands other than ``serve``: name -> ``main(argv) -> exit status``."""
    return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP) if ep.name != "serve"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inferd", description="KServe v2 / Triton-compatible inference server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    add_serve_arguments(serve)
    sub.add_parser(
        "batch", help="score a JSON Lines file of requests offline (see 'inferd batch --help')", add_help=False
    )
    plugins = plugin_commands()
    for name in sorted(plugins):
        sub.add_parser(name, help=f"see 'inferd {name} --help'", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "batch":
        from . import batch_command

        return batch_command.main(rest)
    if args.command in plugins:
        command_main = plugins[args.command].load()
        return int(command_main(rest))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    settings = settings_from_args(args)
    logs = LogControl(settings.log_state())
    try:
        logs.install()  # the process's log: Triton's switches, --log-file, --log-format
    except OSError as e:
        print(f"inferd: cannot open the log file: {e}", file=sys.stderr)
        return 2
    framework_logs.quiet_frameworks(logs.state.level_name())
    from . import event_loop
    from .app import InferdServer, StartupFailed
    from .frontends.grpc_native import FrontendRefused

    try:
        kind = event_loop.resolve(settings.event_loop)
    except RuntimeError as e:  # uvloop asked for and not installed
        print(f"inferd: {e}", file=sys.stderr)
        return 2
    logging.getLogger("inferd").info("event loop: %s", kind)
    server = InferdServer(settings)
    server.core.logs = logs  # the installed one: /v2/logging and LogSettings change it
    try:
        event_loop.run(server.serve_forever(), kind)
    except OSError as e:  # no repository folder, a port in use
        print(f"inferd: {e}", file=sys.stderr)
        return 2
    except FrontendRefused as e:  # --grpc-frontend native where it cannot serve
        print(f"inferd: {e}", file=sys.stderr)
        return 2
    except StartupFailed as e:  # --exit-on-error: a model failed at start-up
        print(f"inferd: {e}", file=sys.stderr)
        return 1
    finally:
        logs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
