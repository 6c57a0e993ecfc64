"""Triton's generate extension on the HTTP port: ``POST /v2/models/<m>[/versions/<v>]/generate``
(one JSON answer) and ``.../generate_stream`` (Server-Sent Events, one ``data:`` event per
response). The JSON mapping is in :mod:`generate_convert`.

As in Triton: a request that fails before the model answers gets a JSON error with the error's
status; once events flow, an error is an event ``data: {"error": "..."}`` in a stream whose
status is already 200. ``/generate`` answers only models that give exactly one response (a
decoupled model that streams is refused with Triton's message, after it ran). When the client
disconnects, the request is cancelled: a decoupled model sees ``is_cancelled()``.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ...protocol.errors import InferdError, Internal
from ...protocol.types import InferResponse, TensorMetadata
from ..core import InferenceCore
from .generate_convert import Frames, decode_generate, encode_generate
from .http_body import request_body
from .http_convert import dumps, parse_json
from .http_origin import RAW_SEND
from .internal_error import internal_error

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"
NOT_ONE = (
    "generate expects model to produce exactly 1 response, use generate stream for model that "
    "generates various number of responses"
)


class Last(bytes):
    """The last chunk of an :class:`EventStream`: it ends the body in the same write."""


class EventStream(Response):
    """A Server-Sent Events response from an async iterator of chunks, each written as it comes.

    What Starlette's StreamingResponse does, for less per chunk and per stream: the start of the
    response goes through the app's middlewares (CORS headers, "response started"), the chunks
    after it straight to the server (``RAW_SEND``: the middlewares do nothing with a body
    chunk), and a :class:`Last` chunk ends the body in the same message, one write. A client that
    disconnects cancels the iteration through one watching task (no anyio task group): the
    iterator's ``finally`` closes the model's stream."""

    media_type = SSE_TYPE

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks
        self.status_code = 200
        self.background = None
        self.init_headers(None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body_send: Send = scope.get(RAW_SEND, send)
        task = asyncio.current_task()
        assert task is not None
        state = {"done": False, "gone": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["done"]:
                state["gone"] = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            ended = False
            async for chunk in self.chunks:
                if type(chunk) is Last:
                    state["done"] = ended = True
                    await send({"type": "http.response.body", "body": bytes(chunk), "more_body": False})
                else:
                    await body_send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not ended:
                state["done"] = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+: the cancel was ours, and is over
            if uncancel is not None:
                uncancel()
        finally:
            watcher.cancel()


def sse(doc: Any) -> bytes:
    """One Server-Sent Event carrying ``doc`` as JSON."""
    return b"data: " + dumps(doc) + b"\n\n"


def delivered(response: InferResponse) -> bool:
    """Whether a response is sent on: a decoupled model's final flag sent alone is not."""
    return bool(response.outputs or response.parameters or response.error is not None or not response.final)


class GenerateApi:
    def __init__(self, core: InferenceCore, max_body_bytes: int, stream_interval_us: int = 0) -> None:
        """``stream_interval_us``: the server's ``--stream-interval-us``, how often at most one
        event stream is written to (its first and final events are never held)."""
        self.core = core
        self.max_body_bytes = max_body_bytes
        self.stream_interval_ns = stream_interval_us * 1000
        # Each loaded version's inputs, worked out once (a reload is a new version object).
        self._inputs: weakref.WeakKeyDictionary[object, dict[str, TensorMetadata]] = weakref.WeakKeyDictionary()

    def _inputs_of(self, model: str, version: str) -> dict[str, TensorMetadata]:
        served = self.core.model(model, version)
        inputs = self._inputs.get(served)
        if inputs is None:
            metadata = self.core.model_metadata(model, str(served.version))
            inputs = self._inputs[served] = {t.name: t for t in metadata.inputs}
        return inputs

    async def _stream(self, request: Request, interval_ns: int = 0) -> AsyncIterator[InferResponse]:
        p = request.path_params
        model, version = p["model"], p.get("version", "")
        body = await request_body(request, self.max_body_bytes)
        doc = parse_json(body) if bytes(body).strip() else {}
        infer_request = decode_generate(model, version, doc, self._inputs_of(model, version))
        infer_request.stream_interval_ns = interval_ns
        return self.core.infer_stream(infer_request)

    async def generate(self, request: Request) -> Response:
        stream = await self._stream(request)
        answers: list[InferResponse] = []
        try:
            async for response in stream:
                if response.error is not None:
                    raise response.error
                if delivered(response):
                    answers.append(response)
        finally:
            await close_stream(stream)
        if len(answers) != 1:
            raise Internal(NOT_ONE)
        return Response(dumps(encode_generate(answers[0])), media_type=JSON_TYPE)

    async def generate_stream(self, request: Request) -> Response:
        stream = await self._stream(request, self.stream_interval_ns)
        first = await first_delivered(stream)
        where = f"generate_stream of model {request.path_params['model']!r}"
        return EventStream(_events(first, stream, where))


async def _events(
    first: InferResponse | None, stream: AsyncIterator[InferResponse], where: str
) -> AsyncIterator[bytes]:
    # The events of responses that were already waiting together go out in one write: a
    # write's cost (the ASGI send, a syscall, the client's wake-up) is paid per batch, not per
    # event, whenever the model runs ahead of the connection. Each event is still its own frame.
    # With --stream-interval-us the stream's channel holds the responses of each interval
    # after a write, so that they are waiting together (protocol/streaming.py).
    frames = Frames()
    pending: list[bytes] = []
    try:
        if first is not None:
            pending.append(frames.event(first))
            if not first.more:
                yield pending[0]
                pending.clear()
        async for response in stream:
            if response.error is not None:
                pending.append(sse({"error": response.error.message}))
            elif delivered(response):
                pending.append(frames.event(response))
            if pending and not response.more:
                yield b"".join(pending)
                pending.clear()
    except InferdError as e:
        pending.append(sse({"error": e.message}))
    except Exception as e:  # the status is sent already: the client learns it from the stream
        pending.append(sse({"error": internal_error(e, where)}))
    finally:
        # Also when the client went away (EventStream cancels this generator): the model stops.
        await close_stream(stream)
    yield Last(b"".join(pending))


async def first_delivered(stream: AsyncIterator[InferResponse]) -> InferResponse | None:
    """The stream's first response with something to send (None if it ends first). It decides
    the HTTP status: an error before it is an ordinary JSON error, and closes the stream."""
    try:
        async for response in stream:
            if response.error is not None:
                raise response.error
            if delivered(response):
                return response
    except BaseException:
        await close_stream(stream)
        raise
    return None


async def close_stream(stream: AsyncIterator[InferResponse]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
