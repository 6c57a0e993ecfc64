"""Unexpected server faults, answered without Python's words.

An :class:`~inferd.protocol.errors.InferdError` carries a message written for clients (a model's
own ``TritonError`` or exception text included, as Triton passes it on) and is answered with it.
Any other exception that reaches a front end is a fault of the server: :func:`~inferd.protocol.errors.internal_error`
logs it with its traceback, once, naming where it happened, and gives the client only
``internal error``, never the exception's type, its text or a server path.
:class:`InternalErrors` does that for whatever an HTTP route raises that no handler took,
answering in the front end's own error document.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...protocol.errors import internal_error

__all__ = ["InternalErrors", "StartWatch", "answer_fault", "internal_error"]


class StartWatch:
    """An ASGI ``send`` that notes whether the response has started (its headers went out): a
    fault after that can no longer be answered, only logged."""

    __slots__ = ("_send", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if not self.started and message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


class InternalErrors:
    """ASGI middleware, inside Starlette's exception handlers: an exception none of them took is
    logged (:func:`internal_error`) and, while the response has not started, answered with
    ``respond("internal error")`` (the front end's 500 document). It is not raised on, so the server
    neither logs it again nor closes the connection; a response that had started is left
    unfinished, and the server closes that connection."""

    def __init__(self, app: ASGIApp, respond: Callable[[str], Response]) -> None:
        self.app = app
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sending = StartWatch(send)
        try:
            await self.app(scope, receive, sending)
        except Exception as e:
            await answer_fault(e, scope, receive, send, sending.started, self.respond)


async def answer_fault(
    error: Exception, scope: Scope, receive: Receive, send: Send, started: bool, respond: Callable[[str], Response]
) -> None:
    """A server fault of an HTTP request: logged (:func:`internal_error`, naming the request) and,
    unless its response started, answered with ``respond("internal error")``."""
    message = internal_error(error, f"HTTP {scope.get('method', '')} {scope.get('path', '')!r}")
    if not started:
        await respond(message)(scope, receive, send)
