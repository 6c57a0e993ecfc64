"""Restricted API categories, with Triton's syntax and categories (``--grpc-restricted-protocol``
and ``--http-restricted-api``, ``<category>[,<category>...]:<key>=<value>``).

A request to a restricted category must carry the group's header with its value: on HTTP the
header ``<key>``, on gRPC the metadata key ``triton-grpc-protocol-<key>`` (Triton's prefix).
Without it the answer is 403 / ``PERMISSION_DENIED`` with Triton's message, before anything
else runs (no body is read, no model is looked up). Values are compared in constant time.

Every HTTP route and gRPC method is in exactly one category through the two tables below
(``HTTP_CATEGORIES``, ``GRPC_CATEGORIES``); a test checks that every route and method the
servers register is in them, and a server with restrictions refuses to start with a route it
cannot place, rather than leave it open. Only restricted routes and methods get a guard: the
others run exactly as without restrictions.
"""

from __future__ import annotations

import hmac
import inspect
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CATEGORIES = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"

# --- the one table ----------------------------------------------------------------------------
_MODEL_PREFIXES = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
# Routes under a model (after either prefix above).
_MODEL_ROUTES = {
    "": "metadata",
    "/ready": "health",
    "/config": "model-config",
    "/stats": "statistics",
    "/infer": "inference",
    "/generate": "inference",
    "/generate_stream": "inference",
    "/jobs": "inference",
    "/trace/setting": "trace",
    # Per-version traffic (rollouts: http_traffic.py) changes what the repository serves.
    "/traffic": "model-repository",
    "/traffic/promote": "model-repository",
    "/traffic/rollback": "model-repository",
}
HTTP_CATEGORIES: dict[str, str] = {
    "/v2/health/live": "health",
    "/v2/health/ready": "health",
    "/v2": "metadata",
    "/v2/models/stats": "statistics",
    "/v2/repository/index": "model-repository",
    "/v2/repository/models/{model}/load": "model-repository",
    "/v2/repository/models/{model}/unload": "model-repository",
    "/v2/repository/models/{model}/traffic": "model-repository",
    "/v2/systemsharedmemory/status": "shared-memory",
    "/v2/systemsharedmemory/region/{region}/status": "shared-memory",
    "/v2/systemsharedmemory/region/{region}/register": "shared-memory",
    "/v2/systemsharedmemory/unregister": "shared-memory",
    "/v2/systemsharedmemory/region/{region}/unregister": "shared-memory",
    "/v2/cudasharedmemory/status": "shared-memory",
    "/v2/cudasharedmemory/region/{region}/status": "shared-memory",
    "/v2/cudasharedmemory/region/{region}/register": "shared-memory",
    "/v2/cudasharedmemory/unregister": "shared-memory",
    "/v2/cudasharedmemory/region/{region}/unregister": "shared-memory",
    "/v2/trace/setting": "trace",
    "/v2/logging": "logging",
    # The status page (status_page.py): models, traffic and latency percentiles for an operator.
    "/": "statistics",
    "/status": "statistics",
    # The OpenAI-compatible API (a Mount): completions and the model list are inference.
    "/v1": "inference",
    # Asynchronous jobs (http_jobs.py): inference, submitted now and fetched later.
    "/v2/jobs": "inference",
    "/v2/jobs/{job}": "inference",
    "/v2/jobs/{job}/results": "inference",
    "/v2/jobs/{job}/cancel": "inference",
    **{prefix + suffix: c for prefix in _MODEL_PREFIXES for suffix, c in _MODEL_ROUTES.items()},
}
_INFERENCE_SERVICE = "/inference.GRPCInferenceService/"
GRPC_CATEGORIES: dict[str, str] = {
    **{
        _INFERENCE_SERVICE + method: category
        for method, category in {
            "ServerLive": "health",
            "ServerReady": "health",
            "ModelReady": "health",
            "ServerMetadata": "metadata",
            "ModelMetadata": "metadata",
            "ModelInfer": "inference",
            "ModelStreamInfer": "inference",
            "ModelConfig": "model-config",
            "ModelStatistics": "statistics",
            "RepositoryIndex": "model-repository",
            "RepositoryModelLoad": "model-repository",
            "RepositoryModelUnload": "model-repository",
            "SystemSharedMemoryStatus": "shared-memory",
            "SystemSharedMemoryRegister": "shared-memory",
            "SystemSharedMemoryUnregister": "shared-memory",
            "CudaSharedMemoryStatus": "shared-memory",
            "CudaSharedMemoryRegister": "shared-memory",
            "CudaSharedMemoryUnregister": "shared-memory",
            "TraceSetting": "trace",
            "LogSettings": "logging",
        }.items()
    },
    # grpc.health.v1 is part of "health", as in Triton.
    "/grpc.health.v1.Health/Check": "health",
    "/grpc.health.v1.Health/Watch": "health",
}


# --- parsing the flags --------------------------------------------------------------------------
@dataclass(frozen=True)
class Restriction:
    header: str  # lower-case: HTTP header names and gRPC metadata keys are compared lower-case
    value: str

    def allows(self, value: str | bytes | None) -> bool:
        if value is None:
            return False
        given = value.encode() if isinstance(value, str) else bytes(value)
        return hmac.compare_digest(given, self.value.encode())


Restrictions = Mapping[str, Restriction]  # category -> what it requires


def parse_restriction(text: str, flag: str) -> tuple[tuple[str, ...], str, str]:
    """One flag value, ``<categories>:<key>=<value>`` -> (categories, key, value)."""
    categories, colon, rest = text.partition(":")
    key, equals, value = rest.partition("=")
    if not colon or not equals or not categories or not key or not value:
        raise ValueError(f"{flag} option format is '<categories>:<key>=<value>'. Got {text}")
    names = tuple(c.strip() for c in categories.split(","))
    for name in names:
        if name not in CATEGORIES:
            raise ValueError(f"{flag}: unknown restricted category '{name}' (known: {', '.join(CATEGORIES)})")
    return names, key, value


def build_restrictions(groups: Iterable[tuple[tuple[str, ...], str, str]], flag: str, prefix: str = "") -> Restrictions:
    """Every flag's groups as one map; a category may be in one group only (as in Triton)."""
    found: dict[str, Restriction] = {}
    for categories, key, value in groups:
        for category in categories:
            if category in found:
                raise ValueError(
                    f"{flag}: restricted category '{category}' can not be specified in multiple config groups"
                )
            found[category] = Restriction((prefix + key).lower(), value)
    return found


def denial(restriction: Restriction, grpc: bool) -> str:
    what = "protocol" if grpc else "API"
    return f"This {what} is restricted, expecting header '{restriction.header}'"


# --- HTTP ---------------------------------------------------------------------------------------
def category_of_route(path: str) -> str:
    try:
        return HTTP_CATEGORIES[path]
    except KeyError:
        raise RuntimeError(
            f"HTTP route '{path}' has no access category; add it to HTTP_CATEGORIES in server/frontends/access.py"
        ) from None


class HttpGuard:
    """The ASGI app of one restricted route: the header, or 403."""

    def __init__(self, app: Any, restriction: Restriction) -> None:
        self.app = app
        self.restriction = restriction
        self.body = json.dumps({"error": denial(restriction, grpc=False)}).encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        header = self.restriction.header.encode()
        value = next((bytes(v) for k, v in scope.get("headers", ()) if k.lower() == header), None)
        if self.restriction.allows(value):
            await self.app(scope, receive, send)
            return
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": 403, "headers": head})
        await send({"type": "http.response.body", "body": self.body})


def guard_routes(routes: Iterable[Any], restrictions: Restrictions) -> None:
    """Put a guard in front of every route (a Starlette Route or Mount) of a restricted category."""
    if not restrictions:
        return
    for route in routes:
        restriction = restrictions.get(category_of_route(route.path))
        if restriction is not None:
            route.app = HttpGuard(route.app, restriction)


# --- gRPC ---------------------------------------------------------------------------------------
def category_of_method(method: str) -> str:
    try:
        return GRPC_CATEGORIES[method]
    except KeyError:
        raise RuntimeError(
            f"gRPC method '{method}' has no access category; add it to GRPC_CATEGORIES in server/frontends/access.py"
        ) from None


def _allowed(context: Any, restriction: Restriction) -> bool:
    for key, value in context.invocation_metadata() or ():
        if key == restriction.header:
            return restriction.allows(value)
    return False


def guard_handlers(service: str, handlers: dict[str, Any], restrictions: Restrictions) -> dict[str, Any]:
    """``handlers`` (method name -> grpc.RpcMethodHandler) with the restricted ones guarded."""
    import grpc

    if not restrictions:
        return handlers
    guarded = dict(handlers)
    for name, handler in handlers.items():
        restriction = restrictions.get(category_of_method(f"/{service}/{name}"))
        if restriction is None:
            continue
        kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream") if getattr(handler, k))
        guard = _guard(getattr(handler, kind), restriction, denial(restriction, grpc=True), grpc)
        guarded[name] = handler._replace(**{kind: guard})
    return guarded


def _guard(behavior: Any, restriction: Restriction, message: str, grpc: Any) -> Any:
    """``behavior`` (a coroutine function, or an async generator function for streamed
    responses) behind the header check."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Any) -> Any:
            if not _allowed(context, restriction):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
            async for item in behavior(request, context):
                yield item

        return stream

    async def unary(request: Any, context: Any) -> Any:
        if not _allowed(context, restriction):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
        return await behavior(request, context)

    return unary
