"""The inference routes straight to their endpoints, past Starlette's router and middlewares.

``POST /v2/models/<m>[/versions/<v>]/infer`` (and ``generate``, ``generate_stream``) is nearly
every request an HTTP server gets. Through the Starlette app each one passes seven ASGI layers
(the server-error and internal-error middlewares, the exception middleware, the router trying
routes, the route, ``request_response`` and its exception wrapper), three of which wrap every
message sent: about a tenth of the event loop's CPU per request at 16 clients
(perf/reports/2026-12-07-http-against-triton.md). :class:`HotRoutes` matches those routes itself
(Starlette tries them first too, so no other route could have taken the request) and runs their
endpoints with the same answers as that stack gives:

- an exception with a handler (``handlers``: InferdError, HTTPException, ClientDisconnect) is
  answered by it, unless the response already started;
- anything else is a server fault, answered by :func:`answer_fault` as :class:`InternalErrors`
  answers it (logged; "internal error" while nothing was sent).

A route with an access restriction (access.py) is left to the app, whose guard answers it; so
are the other methods on these paths (405) and every other path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .internal_error import StartWatch, answer_fault

Handler = Callable[[Request, Exception], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


class HotRoutes:
    """ASGI app: ``routes`` answered directly (see the module's docstring), the rest by ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[Route],
        handlers: Mapping[type[Exception], Handler],
        respond: Callable[[str], Response],
    ) -> None:
        self.app = app
        self.routes = list(routes)
        self.handlers = dict(handlers)
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/v2/models/"):
            for route in self.routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    scope["app"] = self.app
                    await self._serve(route.endpoint, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def _handler(self, error: Exception) -> Handler | None:
        for cls in type(error).__mro__:
            handler = self.handlers.get(cls)
            if handler is not None:
                return handler
        return None

    async def _serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        sending = StartWatch(send)
        request = Request(scope, receive, send)
        try:
            try:
                response = await endpoint(request)
                await response(scope, receive, sending)
            except Exception as e:
                handler = self._handler(e)
                if handler is None:
                    raise
                if sending.started:
                    raise RuntimeError("Caught handled exception, but response already started.") from e
                await (await handler(request, e))(scope, receive, sending)
        except Exception as e:
            await answer_fault(e, scope, receive, send, sending.started, self.respond)
