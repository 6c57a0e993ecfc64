"""``inferd serve`` flags for transport security, access control and tracing, in Triton's
spellings (``--grpc-use-ssl``, ``--grpc-restricted-protocol``, ``--trace-config``, ...) and, for
the HTTP and metrics ports, beyond Triton in the same style (``--http-use-ssl``, ...)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .flag_values import parse_bool
from .frontends.access import build_restrictions, parse_restriction
from .tls import TlsError, TlsFiles, check_files
from .tracing import DEPRECATED_FLAGS, parse_trace_config

PORTS = ("grpc", "http", "metrics")


def _restriction(flag: str) -> Any:
    def parse(text: str) -> tuple[tuple[str, ...], str, str]:
        try:
            return parse_restriction(text, flag)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def add_operator_arguments(p: argparse.ArgumentParser) -> None:
    for port in PORTS:
        what = {"grpc": "gRPC", "http": "HTTP", "metrics": "metrics (HTTP)"}[port]
        beyond = "" if port == "grpc" else " (inferd's, in the style of Triton's --grpc-* flags)"
        p.add_argument(
            f"--{port}-use-ssl",
            type=parse_bool,
            default=False,
            metavar="BOOL",
            help=f"serve the {what} port over TLS only, with --{port}-server-cert and --{port}-server-key{beyond}",
        )
        p.add_argument(
            f"--{port}-use-ssl-mutual",
            type=parse_bool,
            default=False,
            metavar="BOOL",
            help=f"TLS on the {what} port, and clients must present a certificate signed by --{port}-root-cert",
        )
        p.add_argument(f"--{port}-server-cert", type=Path, metavar="PEM", help=f"the {what} port's certificate (chain)")
        p.add_argument(f"--{port}-server-key", type=Path, metavar="PEM", help=f"the {what} port's private key")
        p.add_argument(
            f"--{port}-root-cert",
            type=Path,
            metavar="PEM",
            help=f"CA certificate(s) that client certificates on the {what} port must chain to",
        )
    for flag, proto in (("--grpc-restricted-protocol", "gRPC"), ("--http-restricted-api", "HTTP")):
        header = "metadata key triton-grpc-protocol-<key>" if proto == "gRPC" else "header <key>"
        p.add_argument(
            flag,
            type=_restriction(flag),
            action="append",
            default=[],
            metavar="CATEGORIES:KEY=VALUE",
            help=f"{proto} requests to these API categories (comma-separated: health, metadata, inference, "
            f"shared-memory, model-config, model-repository, statistics, trace, logging) need the {header} "
            "with this value (repeatable, a category in one group only)",
        )
    p.add_argument(
        "--trace-config",
        action="append",
        default=[],
        metavar="[MODE,]SETTING=VALUE",
        help="tracing, as Triton's flag: level=OFF|TIMESTAMPS|TENSORS, rate=N (every N-th request), count=N "
        "(-1: no limit), mode=opentelemetry|triton (default opentelemetry), triton,file=PATH, "
        "triton,log-frequency=N, opentelemetry,url=URL, opentelemetry,resource=KEY=VALUE, "
        "opentelemetry,bsp_max_queue_size|bsp_schedule_delay|bsp_max_export_batch_size=N (repeatable)",
    )
    for flag, (setting, placeholder) in DEPRECATED_FLAGS.items():
        p.add_argument(
            f"--{flag}",
            action="append",
            default=[],
            metavar="VALUE",
            help=f"deprecated in Triton: --trace-config {setting}=<{placeholder}>",
        )


def _tls(a: argparse.Namespace, port: str) -> TlsFiles | None:
    def get(name: str) -> Any:
        return getattr(a, f"{port}_{name}")

    mutual = bool(get("use_ssl_mutual"))
    if not (get("use_ssl") or mutual):
        given = [f"--{port}-{n.replace('_', '-')}" for n in ("server_cert", "server_key", "root_cert") if get(n)]
        if given:
            raise TlsError(f"{', '.join(given)} given without --{port}-use-ssl=true (or --{port}-use-ssl-mutual=true)")
        return None
    for name in ("server_cert", "server_key"):
        if get(name) is None:
            raise TlsError(f"--{port}-use-ssl needs --{port}-{name.replace('_', '-')}")
    files = TlsFiles(port, get("server_cert"), get("server_key"), get("root_cert"), mutual)
    check_files(files)
    return files


def operator_settings(a: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields these flags set. A contradiction between flags ends the command
    with exit status 2 and one line naming the flag, as argparse does for a bad value."""
    try:
        return _settings(a)
    except (ValueError, OSError) as e:
        print(f"inferd serve: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _settings(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "grpc_tls": _tls(a, "grpc"),
        "http_tls": _tls(a, "http"),
        "metrics_tls": _tls(a, "metrics"),
        "grpc_restrictions": build_restrictions(
            a.grpc_restricted_protocol, "--grpc-restricted-protocol", prefix="triton-grpc-protocol-"
        ),
        "http_restrictions": build_restrictions(a.http_restricted_api, "--http-restricted-api"),
        "trace": parse_trace_config(
            a.trace_config, {flag: getattr(a, flag.replace("-", "_")) for flag in DEPRECATED_FLAGS}
        ),
    }
