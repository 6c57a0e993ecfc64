"""The OpenAI-compatible text API, mounted at ``/v1`` on the HTTP port (``--allow-openai``):
``GET /v1/models``, ``GET /v1/models/<m>``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream: true``: Server-Sent Events ending ``data: [DONE]``).

It serves the models that declare the text contract (:mod:`openai_convert`) through the same
core as every other front end. Errors take OpenAI's shape, ``{"error": {"message", "type",
"param", "code"}}``; parameters the server cannot honour are refused with a 400 naming them,
never ignored. An error after a stream started is an event ``data: {"error": {...}}`` before
``data: [DONE]``. When the client disconnects, the request is cancelled.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ...protocol.errors import Code, InferdError
from ...protocol.types import InferResponse
from ..core import InferenceCore
from . import openai_convert as oc
from .http_body import request_body
from .http_convert import dumps, parse_json
from .http_generate import EventStream, Last, close_stream, first_delivered, sse
from .internal_error import InternalErrors, internal_error

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"
DONE = b"data: [DONE]\n\n"
STATUS = {
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.RESOURCE_EXHAUSTED: 413,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.CANCELLED: 503,
    Code.DEADLINE_EXCEEDED: 504,
}


def error_doc(message: str, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error_response(message: str, status: int, param: str | None = None, code: str | None = None) -> Response:
    return Response(dumps(error_doc(message, status, param, code)), status_code=status, media_type=JSON_TYPE)


def _of(e: InferdError) -> tuple[str, int, str | None, str | None]:
    return e.message, STATUS.get(e.code, 500), getattr(e, "param", None), getattr(e, "error_code", None)


async def _inferd_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InferdError)
    return _error_response(*_of(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error_response(str(exc.detail), exc.status_code)


async def _disconnected(request: Request, exc: Exception) -> Response:
    return Response(status_code=400)  # nobody reads it: the client has gone


def _internal_error(message: str) -> Response:
    return _error_response(message, 500)


class OpenAIApi:
    def __init__(self, core: InferenceCore, max_body_bytes: int, stream_interval_us: int = 0) -> None:
        self.core = core
        self.max_body_bytes = max_body_bytes
        self.stream_interval_ns = stream_interval_us * 1000  # --stream-interval-us (streams only)
        self.created = int(time.time())
        # Each loaded version's contract, worked out once (a reload is a new version object).
        self._contracts: weakref.WeakKeyDictionary[object, oc.TextModel | oc.ModelNotServed] = (
            weakref.WeakKeyDictionary()
        )

    def _contract(self, name: str) -> oc.TextModel:
        try:
            model = self.core.model(name)
        except InferdError as e:
            if e.code == Code.NOT_FOUND:
                raise oc.ModelNotServed(f"The model '{name}' does not exist") from None
            raise
        found = self._contracts.get(model)
        if found is None:
            sig = model.signature
            try:
                found = oc.contract_of(name, model.config, sig.inputs, sig.outputs)
            except oc.ModelNotServed as e:
                found = e
            self._contracts[model] = found
        if isinstance(found, oc.ModelNotServed):
            raise found
        return found

    def _served(self) -> list[str]:
        names = []
        for entry in self.core.repository_index(ready_only=True):
            try:
                self._contract(entry.name)
            except InferdError:
                continue
            names.append(entry.name)
        return sorted(set(names))

    # --- routes ---------------------------------------------------------------------------
    async def list_models(self, request: Request) -> Response:
        data = [oc.model_entry(n, self.created) for n in self._served()]
        return Response(dumps({"object": "list", "data": data}), media_type=JSON_TYPE)

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        self._contract(name)
        return Response(dumps(oc.model_entry(name, self.created)), media_type=JSON_TYPE)

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, oc.completion_request)

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, oc.chat_request)

    async def _serve(
        self, request: Request, parse: Callable[[dict[str, Any], oc.TextModel], oc.TextRequest]
    ) -> Response:
        body = await request_body(request, self.max_body_bytes)
        doc = parse_json(body)
        text_request = parse(doc, self._contract(oc.model_name(doc)))
        if text_request.stream:
            text_request.core.stream_interval_ns = self.stream_interval_ns
        stream = self.core.infer_stream(text_request.core)
        progress = oc.Progress()
        if not text_request.stream:
            pieces = []
            try:
                async for response in stream:
                    if response.error is not None:
                        raise response.error
                    pieces.append(progress.piece(response))
            finally:
                await close_stream(stream)
            return Response(dumps(oc.whole(text_request, "".join(pieces), progress)), media_type=JSON_TYPE)
        # An error before the model's first response is an ordinary error answer.
        first = await first_delivered(stream)
        return EventStream(_events(text_request, progress, first, stream))


async def _events(
    request: oc.TextRequest, progress: oc.Progress, first: InferResponse | None, stream: AsyncIterator[InferResponse]
) -> AsyncIterator[bytes]:
    # As in http_generate: the events of responses that were waiting together (with
    # --stream-interval-us, those of one interval) go out in one write, each its own event;
    # the end of the stream (finish reason, usage, [DONE]) goes out in one write.
    pending: list[bytes] = []
    try:
        if request.kind == "chat.completion":
            pending.append(sse(oc.chunk(request, None)))
        if first is not None:
            text = progress.piece(first)
            if text:
                pending.append(sse(oc.chunk(request, text)))
        if pending and (first is None or not first.more):
            yield b"".join(pending)
            pending.clear()
        async for response in stream:
            if response.error is not None:
                raise response.error
            text = progress.piece(response)
            if text:
                pending.append(sse(oc.chunk(request, text)))
            if pending and not response.more and not response.final:
                yield b"".join(pending)
                pending.clear()
        pending.append(sse(oc.chunk(request, "", progress.finish_reason)))
        if request.include_usage:
            pending.append(sse(oc.usage_chunk(request, progress)))
    except InferdError as e:
        pending.append(sse(error_doc(*_of(e))))
    except Exception as e:  # the status is sent already: the client learns it from the stream
        pending.append(
            sse(error_doc(internal_error(e, f"OpenAI {request.kind} stream of model {request.model!r}"), 500))
        )
    finally:
        await close_stream(stream)
    pending.append(DONE)
    yield Last(b"".join(pending))


def build_openai_app(core: InferenceCore, max_body_bytes: int, stream_interval_us: int = 0) -> Starlette:
    """The ``/v1`` app, mounted into the HTTP app by ``http_service.build_app``."""
    api = OpenAIApi(core, max_body_bytes, stream_interval_us)
    return Starlette(
        routes=[
            Route("/models", api.list_models, methods=["GET"]),
            Route("/models/{model:path}", api.get_model, methods=["GET"]),
            Route("/completions", api.completions, methods=["POST"]),
            Route("/chat/completions", api.chat_completions, methods=["POST"]),
        ],
        middleware=[Middleware(InternalErrors, respond=_internal_error)],  # any other exception
        exception_handlers={
            InferdError: _inferd_error,
            HTTPException: _http_error,
            ClientDisconnect: _disconnected,
        },
    )
