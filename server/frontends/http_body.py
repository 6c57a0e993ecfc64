"""Reading HTTP request bodies within a size limit.

The body is read chunk by chunk and refused (RESOURCE_EXHAUSTED, HTTP 413) as soon as it passes
the limit, so an oversized or endless upload never sits in memory. gzip/deflate bodies are
limited again after decompression. When the client declares the size of the leading JSON
(``Inference-Header-Content-Length``), the body is placed so that the binary tensor data after
it starts on a 64-byte boundary: numeric inputs can then be zero-copy numpy views.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import numpy as np

from ...protocol.errors import InvalidArgument, ResourceExhausted

if TYPE_CHECKING:
    from starlette.requests import Request

ALIGNMENT = 64
# zlib or gzip container, detected from its header: clients send either for "deflate".
_AUTO_WBITS = 32 + zlib.MAX_WBITS


def _too_large(size: int | str, limit: int) -> ResourceExhausted:
    return ResourceExhausted(f"request body of {size} bytes exceeds the limit of {limit} bytes (--http-max-body-bytes)")


async def request_body(request: Request, limit: int, header_length: int | None = None) -> memoryview:
    """The whole body of a Starlette ``request`` (see :func:`read_body`), as its headers declare it."""
    h = request.headers
    return await read_body(request.stream(), limit, h.get("content-length"), h.get("content-encoding"), header_length)


async def read_body(
    chunks: AsyncIterator[bytes],
    limit: int,
    content_length: str | None,
    content_encoding: str | None,
    header_length: int | None = None,
) -> memoryview:
    """The whole body of at most ``limit`` bytes (after decompression too)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise InvalidArgument(f"unsupported Content-Encoding '{encoding[:40]}'; use gzip, deflate or none")
    if content_length is not None:
        if not (content_length.isascii() and content_length.isdigit()):
            raise InvalidArgument("Content-Length is not a number")
        size = int(content_length)
        if size > limit:
            raise _too_large(size, limit)
        if encoding == "identity":
            return await _read_exact(chunks, size, header_length or 0)
    body = bytearray()
    async for chunk in chunks:
        if len(body) + len(chunk) > limit:
            raise _too_large(f"more than {limit}", limit)
        body += chunk
    if encoding == "identity":
        return memoryview(body)
    return memoryview(_decompress(body, encoding, limit))


async def _read_exact(chunks: AsyncIterator[bytes], size: int, header_length: int) -> memoryview:
    raw = np.empty(size + ALIGNMENT, dtype=np.uint8)
    shift = -(raw.ctypes.data + header_length) % ALIGNMENT
    buf = raw[shift : shift + size].data  # a memoryview of the numpy buffer
    pos = 0
    async for chunk in chunks:
        end = pos + len(chunk)
        if end > size:  # the HTTP layer stops at Content-Length; this only guards the copy
            raise InvalidArgument(f"request body is longer than its Content-Length ({size})")
        buf[pos:end] = chunk
        pos = end
    return buf[:pos]


def _decompress(data: bytearray, encoding: str, limit: int) -> bytes:
    d = zlib.decompressobj(_AUTO_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise InvalidArgument(f"request body is not valid {encoding} data: {e}") from None
    if len(out) > limit:
        raise _too_large(f"more than {limit} (decompressed)", limit)
    if not d.eof:
        raise InvalidArgument(f"request body is truncated {encoding} data")
    return out
