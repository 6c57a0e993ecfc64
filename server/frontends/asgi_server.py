"""Serve an ASGI app with uvicorn inside the server's running event loop.

The HTTP/REST and metrics front ends share the gRPC server's loop and process. We bind the
socket ourselves so a busy port is an ordinary ``OSError`` at start-up (uvicorn would call
``sys.exit``) and port 0 gives its real port back at once. Signals stay with the owner
(:class:`~inferd.server.app.InferdServer`), and uvicorn does not reconfigure logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from .http_connections import calls_probe, guarded_protocol
from .request_limits import Refusals, RequestLimits


class _EmbeddedServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the owner handles SIGINT/SIGTERM and calls stop()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


def _quiet_uvicorn_lifecycle() -> None:
    """inferd logs each front end's start and stop itself; uvicorn's own lines ("Started server
    process", "Shutting down") would repeat them once per server without saying which. Its
    warnings and errors still show, and everything does at DEBUG or where a level was set."""
    log = logging.getLogger("uvicorn.error")
    if log.level == logging.NOTSET and not log.isEnabledFor(logging.DEBUG):
        log.setLevel(logging.WARNING)


class AsgiServer:
    """One uvicorn server for ``app`` on ``host:port``; ``port`` is the bound port once started."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        graceful_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        limits: RequestLimits | None = None,
        refusals: Refusals | None = None,
    ) -> None:
        """``limits`` time out slow connections and cap how many are open (http_connections.py),
        counting what they close in ``refusals``."""
        self.host = host
        self.port = port
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="off",
            ws="none",
            log_config=None,  # keep the process's logging setup as it is
            access_log=False,  # a log line per request costs more than a small inference
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=math.ceil(graceful_timeout_s),
            # TLS (tls.py): the server's own live context, so that a reload reaches new handshakes.
            ssl_context_factory=(lambda config, default: ssl_context) if ssl_context is not None else None,
            http=guarded_protocol(limits or RequestLimits(), refusals or Refusals()),
        )
        self._server = _EmbeddedServer(self._config)
        _quiet_uvicorn_lifecycle()
        self._task: asyncio.Task[None] | None = None
        self.calls: Callable[[], int] | None = None  # once started: http_connections.calls_probe

    async def start(self) -> int:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto=IPPROTO_TCP matters: asyncio turns on TCP_NODELAY only for such sockets, and
        # without it Nagle's algorithm meets delayed ACKs and adds ~40 ms to every response
        # written in two parts (headers, then body).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"cannot bind {self.host}:{self.port}: {e.strerror}") from None
        self.port = sock.getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        ready = asyncio.ensure_future(self._server.ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not self._server.ready.is_set():
            ready.cancel()
            sock.close()
            self._task.result()  # raises the start-up error
            raise OSError(f"cannot serve HTTP on {self.host}:{self.port}")
        self.calls = calls_probe(self._server.server_state.connections)
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the graceful timeout), close."""
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None
