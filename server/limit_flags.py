"""The flags that bound what one request or connection may cost (frontends/request_limits.py)."""

from __future__ import annotations

import argparse
from typing import Any

from .frontends.request_limits import RequestLimits


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _positive_secs(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return value


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    d = RequestLimits()
    p.add_argument(
        "--max-request-elements",
        type=_positive_int,
        default=d.max_elements,
        metavar="N",
        help="most values one request may carry that are decoded one by one: JSON values, BYTES elements, "
        "gRPC 'contents' values (default %(default)s); more is refused with RESOURCE_EXHAUSTED / 413. Raw and "
        "binary numeric tensors are not counted",
    )
    p.add_argument(
        "--http-header-timeout-secs",
        type=_positive_secs,
        default=d.http_header_timeout_s,
        metavar="S",
        help="an HTTP connection whose request headers are not complete this long after it opened or after its "
        "previous response is closed (default %(default)s)",
    )
    p.add_argument(
        "--http-body-timeout-secs",
        type=_positive_secs,
        default=d.http_body_timeout_s,
        metavar="S",
        help="an HTTP request body that receives no byte for this long is abandoned and its connection closed "
        "(default %(default)s)",
    )
    p.add_argument(
        "--http-max-connections",
        type=_positive_int,
        default=d.http_max_connections,
        metavar="N",
        help="HTTP connections open at once (default %(default)s); one more is closed at once",
    )
    p.add_argument(
        "--grpc-handshake-timeout-secs",
        type=_positive_secs,
        default=d.grpc_handshake_timeout_s,
        metavar="S",
        help="a gRPC connection that has not completed its HTTP/2 (and TLS) handshake this long after it opened "
        "is closed (default %(default)s)",
    )
    p.add_argument(
        "--grpc-max-concurrent-streams",
        type=_positive_int,
        default=d.grpc_max_concurrent_streams,
        metavar="N",
        help="RPCs one gRPC connection may have open at once (default %(default)s); clients queue more",
    )
    p.add_argument(
        "--grpc-stream-max-inflight",
        type=_positive_int,
        default=d.grpc_stream_max_inflight,
        metavar="N",
        help="requests of one ModelStreamInfer stream decoded or running at once (default %(default)s); the "
        "stream is read no further until one finishes",
    )


def limit_settings(a: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields these flags set."""
    return {
        "request_limits": RequestLimits(
            max_elements=a.max_request_elements,
            http_header_timeout_s=a.http_header_timeout_secs,
            http_body_timeout_s=a.http_body_timeout_secs,
            http_max_connections=a.http_max_connections,
            grpc_stream_max_inflight=a.grpc_stream_max_inflight,
            grpc_handshake_timeout_s=a.grpc_handshake_timeout_secs,
            grpc_max_concurrent_streams=a.grpc_max_concurrent_streams,
        )
    }
