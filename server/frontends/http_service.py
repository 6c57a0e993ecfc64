"""The HTTP/REST front end: KServe v2 routes and Triton's extensions as a Starlette app.

Each route reads its request, calls the core and converts back (``http_convert`` for tensors,
``http_metadata`` for the other documents); core errors map to HTTP statuses here, once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from ...protocol.errors import Code, InferdError, InvalidArgument, Unimplemented
from ...protocol.messages import message_to_dict
from ...protocol.types import InferResponse
from ..core import InferenceCore
from . import http_convert as conv
from . import http_metadata as meta
from .access import HttpGuard, Restrictions, guard_routes
from .http_body import request_body
from .http_generate import GenerateApi
from .http_hot import HotRoutes
from .http_jobs import job_routes
from .http_origin import OriginGuard
from .http_traffic import traffic_routes
from .internal_error import InternalErrors
from .jobs import JobStore
from .openai_service import build_openai_app
from .request_limits import Refusals, RequestLimits, TooManyElements
from .status_page import LatencyReader, status_routes

STATUS = {
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.UNAVAILABLE: 503,
    Code.RESOURCE_EXHAUSTED: 413,
    Code.UNIMPLEMENTED: 501,
    Code.CANCELLED: 503,  # cancelled by the server (shutdown); a client that cancelled reads nothing
    Code.DEADLINE_EXCEEDED: 504,
    Code.ALREADY_EXISTS: 409,
    Code.INTERNAL: 500,
}
JSON_TYPE = "application/json"
# Responses smaller than this are not worth compressing even when the client accepts it.
COMPRESS_MIN_BYTES = 1024
# Conversions of more bytes than this leave the event loop for a worker thread.
OFF_LOOP_BYTES = 1 << 20
P = ParamSpec("P")
T = TypeVar("T")


def _base64(value: Any, key: str) -> bytes:
    """A ``file:`` parameter's content: base64 text, as Triton's HTTP API sends it."""
    if not isinstance(value, str):
        raise InvalidArgument(f"parameter '{key}' must be a base64 string (the file's content)")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"parameter '{key}' is not valid base64") from None


def _json(doc: Any, status: int = 200) -> Response:
    return Response(conv.dumps(doc), status_code=status, media_type=JSON_TYPE)


def _error(message: str, status: int) -> Response:
    return _json({"error": message}, status)


async def _inferd_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InferdError)
    return _error(exc.message, STATUS.get(exc.code, 500))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(str(exc.detail), exc.status_code)


async def _disconnected(request: Request, exc: Exception) -> Response:
    return Response(status_code=400)  # nobody reads it: the client has gone


def _internal_error(message: str) -> Response:
    return _error(message, 500)


async def _off_loop(size: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a conversion of ``size`` bytes inline, or on a worker thread when it is big enough
    to stall the event loop (a 64 MiB JSON body takes seconds), so other requests keep flowing."""
    if size <= OFF_LOOP_BYTES:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


def _compress(body: bytes, accept: str) -> tuple[bytes, str | None]:
    """Honor Accept-Encoding (gzip, deflate) for inference responses, as Triton does."""
    if len(body) < COMPRESS_MIN_BYTES:
        return body, None
    codings = {c.split(";")[0].strip().lower() for c in accept.split(",")}
    if "gzip" in codings:
        c = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return c.compress(body) + c.flush(), "gzip"
    if "deflate" in codings:
        return zlib.compress(body, 1), "deflate"
    return body, None


class _SentResponse(Response):
    """A traced request's answer: once its bytes are handed to the connection (or the send
    failed), the request's trace gets its send timestamps and ends."""

    def __init__(self, trace: Any, answered: int, *args: Any) -> None:
        super().__init__(*args)
        self.trace = trace
        self.answered = answered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.trace.sent(self.answered, time.monotonic_ns())


class HttpApi:
    def __init__(
        self,
        core: InferenceCore,
        max_body_bytes: int,
        limits: RequestLimits | None = None,
        refusals: Refusals | None = None,
    ) -> None:
        self.core = core
        self.max_body_bytes = max_body_bytes
        self.max_elements = (limits or RequestLimits()).max_elements
        self.refusals = refusals or Refusals()

    async def _body(self, request: Request, header_length: int | None = None) -> memoryview:
        return await request_body(request, self.max_body_bytes, header_length)

    async def _optional_json(self, request: Request) -> dict[str, Any]:
        body = await self._body(request)
        return conv.parse_json(body) if len(body) and bytes(body).strip() else {}

    # --- health and metadata ------------------------------------------------------------
    async def live(self, request: Request) -> Response:
        # KServe v2: 200 means true, a 4xx means false.
        return Response(status_code=200 if self.core.server_live() else 400)

    async def ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.core.server_ready() else 400)

    async def model_ready(self, request: Request) -> Response:
        p = request.path_params
        return Response(status_code=200 if self.core.model_ready(p["model"], p.get("version", "")) else 400)

    async def server_metadata(self, request: Request) -> Response:
        return _json(meta.server_metadata_json(self.core.server_metadata()))

    async def model_metadata(self, request: Request) -> Response:
        p = request.path_params
        return _json(meta.model_metadata_json(self.core.model_metadata(p["model"], p.get("version", ""))))

    async def model_config(self, request: Request) -> Response:
        p = request.path_params
        return _json(message_to_dict(self.core.model_config(p["model"], p.get("version", ""))))

    async def statistics(self, request: Request) -> Response:
        p = request.path_params
        return _json(meta.statistics_json(self.core.model_statistics(p.get("model", ""), p.get("version", ""))))

    # --- inference ----------------------------------------------------------------------
    async def infer(self, request: Request) -> Response:
        p = request.path_params
        model, version = p["model"], p.get("version", "")
        traced = self.core.tracer.active
        began = time.monotonic_ns() if traced else 0
        header_length = conv.parse_header_length(request.headers.get("inference-header-content-length"))
        body = await self._body(request, header_length)
        read = time.monotonic_ns() if traced else 0
        json_size = len(body) if header_length is None else header_length
        try:
            core_request, fmt = await _off_loop(
                json_size,
                conv.decode_request,
                model,
                version,
                body,
                header_length,
                self.core.shared_memory,
                self.max_elements,
            )
        except TooManyElements:
            self.refusals.count("http", "too_many_elements")
            raise
        if traced:
            core_request.traceparent = request.headers.get("traceparent")
            core_request.received = ("HTTP", began, read)
        self._check_json_outputs(model, version, core_request.outputs, fmt)
        response = await self.core.infer(core_request)
        trace = core_request.trace if traced else None
        if trace is None:
            return Response(*await self._answer(request, response, fmt))
        # A traced request's trace ends once its answer is handed to the connection (sent()).
        answered = time.monotonic_ns()
        try:
            return _SentResponse(trace, answered, *await self._answer(request, response, fmt))
        except BaseException:
            trace.sent(answered, time.monotonic_ns())
            raise

    async def _answer(
        self, request: Request, response: InferResponse, fmt: conv.OutputFormat
    ) -> tuple[bytes, int, dict[str, str], str]:
        """The body, status, headers and media type of an answer."""
        # JSON text is a few times the size of the numbers it holds.
        json_size = 4 * sum(a.nbytes for n, a in response.outputs.items() if not fmt.binary(n))
        payload, json_length = await _off_loop(json_size, conv.response_to_http, response, fmt)
        headers = {}
        if json_length is not None:
            headers["Inference-Header-Content-Length"] = str(json_length)
        accept = request.headers.get("accept-encoding", "")
        payload, encoding = await _off_loop(len(payload) if accept else 0, _compress, payload, accept)
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        media = JSON_TYPE if json_length is None else "application/octet-stream"
        return payload, 200, headers, media

    def _check_json_outputs(
        self, model: str, version: str, requested: list[str] | None, fmt: conv.OutputFormat
    ) -> None:
        if fmt.all_binary(requested):
            return  # the usual tritonclient request: nothing to check
        try:
            outputs = self.core.model(model, version).signature.outputs
        except InferdError:
            return  # core.infer reports it, as for any other request
        conv.check_json_outputs(fmt, {n: s.datatype.name for n, s in outputs.items()}, requested)

    # --- system shared memory -------------------------------------------------------------
    async def shm_status(self, request: Request) -> Response:
        regions = self.core.shared_memory_status(request.path_params.get("region", ""))
        return _json([{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in regions])

    async def shm_register(self, request: Request) -> Response:
        name = request.path_params["region"]
        if not self.core.shared_memory.enabled:
            self.core.shared_memory.require_enabled()  # refused before the body is read, naming the flag
        doc = await self._optional_json(request)
        key = doc.get("key")
        if not isinstance(key, str):
            raise InvalidArgument("Shared memory register request has no 'key' string field")
        sizes = []
        for field, value in (("offset", doc.get("offset", 0)), ("byte_size", doc.get("byte_size"))):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgument(f"Shared memory register request: '{field}' must be a non-negative integer")
            sizes.append(value)
        self.core.register_shared_memory(name, key, *sizes)
        return Response(status_code=200)

    async def shm_unregister(self, request: Request) -> Response:
        self.core.unregister_shared_memory(request.path_params.get("region", ""))
        return Response(status_code=200)

    async def cuda_status(self, request: Request) -> Response:
        regions = self.core.cuda_shared_memory_status(request.path_params.get("region", ""))
        return _json([{"name": r.name, "device_id": r.device_id, "byte_size": r.byte_size} for r in regions])

    async def cuda_register(self, request: Request) -> Response:
        name = request.path_params["region"]
        self.core.shared_memory.require_enabled()  # refused before the body is read, naming the flag
        doc = await self._optional_json(request)
        raw = doc.get("raw_handle")
        b64 = raw.get("b64") if isinstance(raw, dict) else None
        if not isinstance(b64, str):
            raise InvalidArgument("Shared memory register request has no 'raw_handle' field with a 'b64' string")
        try:
            handle = base64.b64decode(b64, validate=True)
        except ValueError:
            raise InvalidArgument("'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t") from None
        sizes = []
        for field in ("device_id", "byte_size"):
            value = doc.get(field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgument(f"Shared memory register request: '{field}' must be a non-negative integer")
            sizes.append(value)
        # CUDA may initialize: never on the event loop.
        await asyncio.to_thread(self.core.register_cuda_shared_memory, name, handle, *sizes)
        return Response(status_code=200)

    async def cuda_unregister(self, request: Request) -> Response:
        self.core.unregister_cuda_shared_memory(request.path_params.get("region", ""))
        return Response(status_code=200)

    # --- logging extension ----------------------------------------------------------------
    async def logging_settings(self, request: Request) -> Response:
        """GET reads Triton's log settings; POST changes those its JSON object names."""
        if request.method == "GET":
            return _json(self.core.log_settings())
        doc = await self._optional_json(request)
        if not isinstance(doc, dict):
            raise InvalidArgument("the log settings request must be a JSON object")
        return _json(self.core.update_log_settings(doc))

    # --- trace extension -----------------------------------------------------------------
    async def trace_settings(self, request: Request) -> Response:
        """GET reads the global (or a model's) trace settings; POST changes those its JSON
        object names (null clears one)."""
        model = request.path_params.get("model", "")
        if request.method == "GET":
            return _json(_trace_json(self.core.trace_settings(model)))
        doc = await self._optional_json(request)
        if not isinstance(doc, dict):
            raise InvalidArgument("the trace setting request must be a JSON object")
        changes: dict[str, list[str] | None] = {}
        for key, value in doc.items():
            if value is None:
                changes[key] = None
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                changes[key] = value
            elif isinstance(value, (str, int)) and not isinstance(value, bool):
                changes[key] = [str(value)]
            else:
                raise InvalidArgument(f"trace setting '{key}' must be a string, a list of strings or null")
        settings = self.core.update_trace_settings(model, changes) if changes else self.core.trace_settings(model)
        return _json(_trace_json(settings))

    # --- repository ---------------------------------------------------------------------
    async def repository_index(self, request: Request) -> Response:
        doc = await self._optional_json(request)
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument("'ready' must be true or false")
        return _json(meta.repository_index_json(self.core.repository_index(ready)))

    async def load(self, request: Request) -> Response:
        model = request.path_params["model"]
        params = (await self._optional_json(request)).get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidArgument("'parameters' must be a JSON object")
        config = params.get("config")
        if config is not None and not isinstance(config, str):
            config = json.dumps(config)  # accept the config as an object as well as a JSON string
        files = {}
        for key, value in params.items():
            if key.startswith("file:"):
                files[key] = _base64(value, key)
        await self.core.load_model(model, config, files)
        return Response(status_code=200)

    async def unload(self, request: Request) -> Response:
        params = (await self._optional_json(request)).get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidArgument("'parameters' must be a JSON object")
        dependents = params.get("unload_dependents", False)
        if not isinstance(dependents, bool):
            raise InvalidArgument("parameter 'unload_dependents' must be true or false")
        await self.core.unload_model(request.path_params["model"], dependents)
        return Response(status_code=200)


def _trace_json(settings: dict[str, list[str]]) -> dict[str, Any]:
    """Triton's JSON: trace_level is a list, every other setting one string."""
    return {k: v if k == "trace_level" else ",".join(v) for k, v in settings.items()}


def _unimplemented(what: str) -> Callable[[Request], Awaitable[Response]]:
    return _refused(f"{what} is not supported by inferd")


def _refused(message: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        raise Unimplemented(message)

    return endpoint


# The inference routes HotRoutes serves directly (with and without a version).
HOT_PATHS = ("/infer", "/generate", "/generate_stream")


def _routes(api: HttpApi, stream_interval_us: int = 0) -> list[BaseRoute]:
    get, post = ["GET"], ["POST"]
    generate = GenerateApi(api.core, api.max_body_bytes, stream_interval_us)  # Triton's generate extension
    # Inference first: Starlette tries the routes in order, a regular expression each, and no
    # route below matches what these do.
    routes: list[BaseRoute] = []
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            Route(prefix + "/infer", api.infer, methods=post),
            Route(prefix + "/generate_stream", generate.generate_stream, methods=post),
            Route(prefix + "/generate", generate.generate, methods=post),
        ]
    routes += [
        Route("/v2/health/live", api.live, methods=get),
        Route("/v2/health/ready", api.ready, methods=get),
        Route("/v2", api.server_metadata, methods=get),
        Route("/v2/models/stats", api.statistics, methods=get),
        Route("/v2/repository/index", api.repository_index, methods=post),
        Route("/v2/repository/models/{model}/load", api.load, methods=post),
        Route("/v2/repository/models/{model}/unload", api.unload, methods=post),
        Route("/v2/systemsharedmemory/status", api.shm_status, methods=get),
        Route("/v2/systemsharedmemory/region/{region}/status", api.shm_status, methods=get),
        Route("/v2/systemsharedmemory/region/{region}/register", api.shm_register, methods=post),
        Route("/v2/systemsharedmemory/unregister", api.shm_unregister, methods=post),
        Route("/v2/systemsharedmemory/region/{region}/unregister", api.shm_unregister, methods=post),
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            Route(prefix, api.model_metadata, methods=get),
            Route(prefix + "/ready", api.model_ready, methods=get),
            Route(prefix + "/config", api.model_config, methods=get),
            Route(prefix + "/stats", api.statistics, methods=get),
        ]
    routes += [
        Route("/v2/cudasharedmemory/status", api.cuda_status, methods=get),
        Route("/v2/cudasharedmemory/region/{region}/status", api.cuda_status, methods=get),
        Route("/v2/cudasharedmemory/region/{region}/register", api.cuda_register, methods=post),
        Route("/v2/cudasharedmemory/unregister", api.cuda_unregister, methods=post),
        Route("/v2/cudasharedmemory/region/{region}/unregister", api.cuda_unregister, methods=post),
    ]
    routes.append(Route("/v2/trace/setting", api.trace_settings, methods=["GET", "POST"]))
    routes.append(Route("/v2/models/{model}/trace/setting", api.trace_settings, methods=["GET", "POST"]))
    routes.append(Route("/v2/logging", api.logging_settings, methods=["GET", "POST"]))
    return routes


def build_app(
    core: InferenceCore,
    max_body_bytes: int,
    allowed_origins: Iterable[str] = (),
    openai: bool = False,
    restrictions: Restrictions | None = None,
    status_latency: LatencyReader | None = None,
    limits: RequestLimits | None = None,
    refusals: Refusals | None = None,
    stream_interval_us: int = 0,
    jobs: JobStore | None = None,
) -> OriginGuard:
    """The KServe v2 HTTP app over ``core``; request bodies are limited to ``max_body_bytes``;
    only ``allowed_origins`` may call it from web pages (http_origin.py). With ``openai``, the
    OpenAI-compatible text API is mounted at /v1 (openai_service.py). ``restrictions`` guard
    API categories with a header (access.py). The rollout routes (http_traffic.py) and the
    status page at / (status_page.py, latency percentiles from ``status_latency``) are their
    own modules. ``limits`` bound what one request may cost (request_limits.py), counted in
    ``refusals``. ``stream_interval_us`` paces the Server-Sent Event streams (generate_stream,
    OpenAI ``stream: true``): ``--stream-interval-us``. ``jobs`` holds the asynchronous jobs
    (http_jobs.py; the server closes it when it stops)."""
    routes = _routes(HttpApi(core, max_body_bytes, limits, refusals), stream_interval_us)
    routes += traffic_routes(core, max_body_bytes)
    routes += job_routes(jobs or JobStore(core), max_body_bytes)
    routes += status_routes(core, status_latency)
    if openai:
        routes.append(Mount("/v1", app=build_openai_app(core, max_body_bytes, stream_interval_us)))
    handlers = {InferdError: _inferd_error, HTTPException: _http_error, ClientDisconnect: _disconnected}
    app = Starlette(
        routes=routes,
        # Any other exception is a server fault: logged, and answered "internal error".
        middleware=[Middleware(InternalErrors, respond=_internal_error)],
        exception_handlers=handlers,  # type: ignore[arg-type]
    )
    guard_routes(app.routes, restrictions or {})
    # The inference routes (the first ones) skip the router and the middlewares, but for a
    # restricted category, whose guard the route holds.
    hot = [
        r
        for r in app.routes
        if isinstance(r, Route) and r.path.endswith(HOT_PATHS) and not isinstance(r.app, HttpGuard)
    ]
    return OriginGuard(HotRoutes(app, hot, handlers, _internal_error), allowed_origins)
