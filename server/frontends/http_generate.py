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

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ...protocol.errors import InferdError, Internal
from ...protocol.types import InferResponse
from ..core import InferenceCore
from .generate_convert import Frames, decode_generate, encode_generate
from .http_body import read_body
from .http_convert import dumps, parse_json
from .internal_error import internal_error

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"
NOT_ONE = (
    "generate expects model to produce exactly 1 response, use generate stream for model that "
    "generates various number of responses"
)


def sse(doc: Any) -> bytes:
    """One Server-Sent Event carrying ``doc`` as JSON."""
    return b"data: " + dumps(doc) + b"\n\n"


def delivered(response: InferResponse) -> bool:
    """Whether a response is sent on: a decoupled model's final flag sent alone is not."""
    return bool(response.outputs or response.parameters or response.error is not None or not response.final)


class GenerateApi:
    def __init__(self, core: InferenceCore, max_body_bytes: int) -> None:
        self.core = core
        self.max_body_bytes = max_body_bytes

    async def _stream(self, request: Request) -> AsyncIterator[InferResponse]:
        p = request.path_params
        model, version = p["model"], p.get("version", "")
        h = request.headers
        body = await read_body(
            request.stream(), self.max_body_bytes, h.get("content-length"), h.get("content-encoding")
        )
        doc = parse_json(body) if bytes(body).strip() else {}
        inputs = {t.name: t for t in self.core.model_metadata(model, version).inputs}
        return self.core.infer_stream(decode_generate(model, version, doc, inputs))

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
        stream = await self._stream(request)
        first = await first_delivered(stream)
        where = f"generate_stream of model {request.path_params['model']!r}"
        return StreamingResponse(_events(first, stream, where), media_type=SSE_TYPE)


async def _events(
    first: InferResponse | None, stream: AsyncIterator[InferResponse], where: str
) -> AsyncIterator[bytes]:
    # The events of responses that were already waiting together go out in one write: a
    # write's cost (the ASGI send, a syscall, the client's wake-up) is paid per batch, not per
    # event, whenever the model runs ahead of the connection. Each event is still its own frame.
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
        # Also when the client went away (Starlette cancels this generator): the model stops.
        await close_stream(stream)
    if pending:
        yield b"".join(pending)


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
