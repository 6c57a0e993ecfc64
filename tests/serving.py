"""Starting the real ``inferd serve`` as a subprocess, as a user would."""

from __future__ import annotations

import os
import sys

# The gRPC front end the suite's servers use (--grpc-frontend): `make test-grpc-aio` runs the
# gRPC tests again on grpc.aio where the native front end is the default.
GRPC_FRONTEND = os.environ.get("INFERD_TEST_GRPC_FRONTEND", "auto")


def serve_argv(*args: str) -> list[str]:
    """``inferd serve`` in this Python on ephemeral ports (the server logs the ones it took);
    ``args`` add flags such as ``--model-repository``."""
    ports = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    chosen = GRPC_FRONTEND == "auto" or any(a.startswith("--grpc-frontend") for a in args)
    frontend = [] if chosen else ["--grpc-frontend", GRPC_FRONTEND]
    return [sys.executable, "-m", "inferd.server.cli", "serve", *ports, *frontend, *args]
