"""Starting the real ``inferd serve`` as a subprocess, as a user would."""

from __future__ import annotations

import sys


def serve_argv(*args: str) -> list[str]:
    """``inferd serve`` in this Python on ephemeral ports (the server logs the ones it took);
    ``args`` add flags such as ``--model-repository``."""
    ports = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    return [sys.executable, "-m", "inferd.server.cli", "serve", *ports, *args]
