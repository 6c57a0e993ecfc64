"""Keep web pages from driving the server: the HTTP API answers programs, not browsers' pages.

A page a local user opens can send requests to ``localhost``: a cross-origin POST that a
browser sends without asking first (a "simple" request) runs before the browser looks at the
answer, so it could load, unload or run models. Browsers mark every such request with an
``Origin`` header, which programs such as tritonclient, perf_analyzer and curl do not send:

* a request with an ``Origin`` not in the allow-list (``--http-allow-origin``, empty by default)
  is refused with 403 before any route runs; an allowed origin gets CORS headers, and its
  preflight (OPTIONS) is answered;
* a POST body must be JSON or the binary tensor extension's: ``text/plain`` and
  ``multipart/form-data``, which pages send without asking, are refused with 415. A request
  without a ``Content-Type`` is taken as JSON, as tritonclient sends it, and so is one typed
  ``application/x-www-form-urlencoded``, which ``curl -d`` and Python's urllib send for any body
  (Triton's documentation posts JSON with ``curl -d``); a page's form would carry an Origin.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY_TYPES = ("application/json", "application/octet-stream")
# What command-line tools send by default for any body: read as JSON (see the docstring).
TOOL_DEFAULT_TYPES = ("application/x-www-form-urlencoded",)
ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Content-Type, Content-Encoding, Accept-Encoding, Inference-Header-Content-Length"
EXPOSED_HEADERS = "Inference-Header-Content-Length, Content-Encoding"
# Where __call__ leaves the server's own send for the body chunks of an event stream
# (http_generate.py's EventStream): nothing between here and a route does anything with one.
RAW_SEND = "inferd.raw_send"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _answer(send: Send, status: int, message: str | None, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode() if message is not None else b""
    head = [*headers]
    if message is not None:
        head += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class OriginGuard:
    """ASGI middleware in front of the HTTP app (see the module's docstring)."""

    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(o.rstrip("/") for o in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[RAW_SEND] = send
        origin = _header(scope, b"origin")
        cors: list[tuple[bytes, bytes]] = []
        if origin is not None:
            if origin.rstrip("/") not in self.allowed:
                await _answer(
                    send,
                    403,
                    f"cross-origin requests from '{origin[:200]}' are refused; "
                    "start the server with --http-allow-origin ORIGIN to allow that origin",
                )
                return
            cors = [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
                (b"vary", b"Origin"),
            ]
            if scope["method"] == "OPTIONS":
                preflight = [
                    (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
                    (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                    (b"access-control-max-age", b"600"),
                ]
                await _answer(send, 204, None, cors + preflight)
                return
        if scope["method"] == "POST":
            content_type = _header(scope, b"content-type")
            media = (content_type or "").split(";", 1)[0].strip().lower()
            if content_type is not None and media not in BODY_TYPES + TOOL_DEFAULT_TYPES:
                await _answer(
                    send,
                    415,
                    f"Content-Type '{content_type[:100]}' is not accepted; send {' or '.join(BODY_TYPES)}",
                    cors,
                )
                return
        if not cors:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *cors]
            await send(message)

        await self.app(scope, receive, send_with_cors)
