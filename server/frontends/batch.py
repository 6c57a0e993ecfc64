"""Offline batch scoring (``inferd batch``): a file of requests in, a file of answers out, through
the same core as the network front ends, with no port opened.

Input: JSON Lines, one KServe v2 inference request per line, the body ``POST
/v2/models/<m>/infer`` takes (``id``, ``parameters``, ``inputs`` with ``data``, ``outputs``), read by
the HTTP front end's JSON decoder (the same checks and messages), except that FP16 data may be
JSON numbers (HTTP takes FP16 only as binary data); BF16 inputs cannot be given (JSON numbers
would have to be rounded to it) and are refused per line. Blank lines are skipped.

Output: JSON Lines in input order, one line per request line:

- the KServe v2 response (``model_name``, ``model_version``, ``id``, ``parameters``, ``outputs``
  with ``data``); FP16 and BF16 outputs as JSON numbers (their exact values), BYTES as strings;
- for a decoupled model, ``{"model_name", "model_version", "id", "responses": [...]}`` with each
  response the model sent, in order (an error response as ``{"error": ...}``);
- for a line that failed, ``{"line": N, "id": ..., "error": "<message>", "status": "<code>"}``
  (``status``: Triton's gRPC code name, e.g. ``INVALID_ARGUMENT``); the other lines go on.

Requests run concurrently (``concurrency`` in flight), so the model's dynamic batcher forms
batches as it does for many clients; answers are written in input order as soon as every line
before them is written, so memory stays bounded by ``concurrency`` answers whatever the file's
length. Binary tensor data and shared memory have no place in a JSON Lines file: their
parameters are refused per line.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import IO, Any, Protocol

from ...protocol.errors import Code, InferdError, InvalidArgument
from ...protocol.types import InferRequest, InferResponse
from ..core import InferenceCore
from . import http_convert as conv
from .internal_error import internal_error
from .request_limits import DEFAULT_MAX_ELEMENTS
from .tensor_parameters import uses_shared_memory

DEFAULT_CONCURRENCY = 32
DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024
# Lines taken from the file per read on the reader's thread (the loop is never blocked on it).
READ_CHUNK_LINES = 256
NO_BINARY = (
    "inferd batch reads and writes JSON Lines, which cannot carry binary tensor data: remove the "
    "'binary_data' / 'binary_data_output' / 'binary_data_size' parameters"
)
NO_SHARED_MEMORY = (
    "a JSON Lines request carries its tensors in the line, not in shared memory: remove the "
    "'shared_memory_region' / 'shared_memory_offset' / 'shared_memory_byte_size' parameters"
)


@dataclass
class Summary:
    lines: int = 0
    answered: int = 0
    failed: int = 0
    seconds: float = 0.0

    def text(self) -> str:
        rate = self.lines / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.lines} request(s): {self.answered} answered, {self.failed} failed, "
            f"in {self.seconds:.2f} s ({rate:,.0f} requests/s)"
        )


class LineTooLong(InvalidArgument):
    pass


def read_lines(stream: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | LineTooLong]]:
    """(line number, its bytes) for every non-blank line; a line over ``max_bytes`` is read
    past (never held) and given as the error instead."""
    number = 0
    while True:
        line = stream.readline(max_bytes + 1)
        if not line:
            return
        number += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield number, LineTooLong(f"line {number} is longer than --max-line-bytes ({max_bytes} bytes)")
            continue
        if line.strip():
            yield number, line


async def _chunks(lines: Iterator[tuple[int, bytes | LineTooLong]]) -> AsyncIterator[list[Any]]:
    loop = asyncio.get_running_loop()

    def take() -> list[Any]:
        return [item for _, item in zip(range(READ_CHUNK_LINES), lines)]

    while chunk := await loop.run_in_executor(None, take):
        yield chunk


class Sink(Protocol):
    """Where answers go: a binary file, or anything that writes whole lines like one."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class BatchRunner:
    """Runs every request line of ``source`` on ``model`` (``version``; empty: the server's
    choice) and writes one answer line each to ``sink``."""

    def __init__(
        self,
        core: InferenceCore,
        model: str,
        version: str = "",
        concurrency: int = DEFAULT_CONCURRENCY,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.core = core
        self.model = model
        self.version = version
        self.concurrency = concurrency
        self.max_line_bytes = max_line_bytes
        self.max_elements = max_elements
        self.decoupled = core.model(model, version).decoupled

    async def run(self, source: IO[bytes], sink: Sink, summary: Summary | None = None) -> Summary:
        """Every line of ``source`` answered into ``sink``; ``summary`` (updated as lines are
        answered) is the returned one. Cancelled, it cancels the lines in flight and leaves
        ``sink`` with the answers written so far, in order."""
        summary = summary or Summary()
        start = time.monotonic()
        waiting: deque[asyncio.Task[bytes]] = deque()

        async def write_head() -> None:
            line = await waiting[0]
            waiting.popleft()
            sink.write(line + b"\n")  # one write per answer: a bounded sink refuses whole lines

        try:
            async for chunk in _chunks(read_lines(source, self.max_line_bytes)):
                for number, text in chunk:
                    summary.lines += 1
                    while len(waiting) >= self.concurrency:
                        await write_head()
                    waiting.append(asyncio.ensure_future(self._answer(number, text, summary)))
            while waiting:
                await write_head()
        finally:
            for task in waiting:
                task.cancel()
            sink.flush()
            summary.seconds = time.monotonic() - start
        return summary

    async def _answer(self, number: int, text: bytes | LineTooLong, summary: Summary) -> bytes:
        request_id: object = None
        try:
            if isinstance(text, LineTooLong):
                raise text
            doc = conv.parse_json(text, self.max_elements)
            request_id = doc.get("id")
            if _names_shared_memory(doc):  # (the server's --allow-client-shm is not for lines)
                raise InvalidArgument(NO_SHARED_MEMORY)
            request, fmt = conv.request_from_json(
                self.model, self.version, doc, memoryview(b""), None, self.max_elements, fp16_numbers=True
            )
            if fmt.default_binary or any(fmt.explicit.values()):
                raise InvalidArgument(NO_BINARY)
            line = await (self._stream(request) if self.decoupled else self._one(request))
        except InferdError as e:
            summary.failed += 1
            return _failed(number, request_id, e.message, e.code)
        except Exception as e:  # a server fault: logged; the line says only "internal error"
            summary.failed += 1
            return _failed(number, request_id, internal_error(e, f"inferd batch, line {number}"), Code.INTERNAL)
        summary.answered += 1
        return line

    async def _one(self, request: InferRequest) -> bytes:
        return _json_response(await self.core.infer(request))

    async def _stream(self, request: InferRequest) -> bytes:
        parts: list[bytes] = []
        head: InferResponse | None = None
        async with aclosing(self.core.infer_stream(request)) as stream:
            async for response in stream:
                head = head or response
                if response.error is not None:
                    parts.append(conv.dumps({"error": response.error.message}))
                elif response.outputs or response.parameters:
                    parts.append(_json_response(response))
        doc: dict[str, Any] = {"model_name": self.model, "model_version": head.model_version if head else ""}
        if request.id:
            doc["id"] = request.id
        return conv.dumps(doc)[:-1] + b',"responses":[' + b",".join(parts) + b"]}"


def _names_shared_memory(doc: Any) -> bool:
    """Whether a tensor of the request ``doc`` has shared-memory parameters (malformed tensors
    are left to the request's decoder, which names what is wrong)."""
    if not isinstance(doc, dict):
        return False
    for key in ("inputs", "outputs"):
        tensors = doc.get(key)
        for tensor in tensors if isinstance(tensors, list) else ():
            params = tensor.get("parameters") if isinstance(tensor, dict) else None
            if isinstance(params, dict) and uses_shared_memory(params):
                return True
    return False


def _json_response(response: InferResponse) -> bytes:
    body, _ = conv.response_to_http(response, conv.OutputFormat(), numbers_for_binary_only=True)
    return body


def _failed(number: int, request_id: object, message: str, code: Code) -> bytes:
    doc: dict[str, Any] = {"line": number}
    if isinstance(request_id, str) and request_id:
        doc["id"] = request_id
    doc["error"] = message
    doc["status"] = code.value
    return conv.dumps(doc)


def open_input(path: str) -> IO[bytes]:
    return sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115 - closed by the caller


def open_output(path: str) -> IO[bytes]:
    return sys.stdout.buffer if path == "-" else open(path, "wb")  # noqa: SIM115 - closed by the caller
