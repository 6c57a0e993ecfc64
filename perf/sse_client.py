"""A minimal HTTP/1.1 client for the token-streaming bench: one kept-alive connection, requests
written as bytes, responses read with asyncio streams (status line, headers, then a
``Content-Length`` body or ``Transfer-Encoding: chunked`` chunks as they arrive).

Why not httpx or aiohttp: at one stream their own work per request (building the request,
parsing headers, the streaming context) is larger than the server's, and it weighs on a time to
first token more than on a plain round trip (httpx: 0.6 ms for ``GET /v2/health/ready`` and
about 1 ms more on a streamed POST, against 0.1 ms on a raw socket). A bench comparing a server
with an in-process drive should measure the server; this client costs a few µs per request.
It speaks only what the bench needs: no TLS, no redirects, no compression.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any


class HttpError(Exception):
    """A response with another status than 200 (``status``), or a broken one."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200].decode(errors='replace')}")
        self.status = status
        self.body = body


class Connection:
    """One kept-alive connection to ``host:port``; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @classmethod
    def to(cls, url: str) -> Connection:
        host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
        return cls(host, int(port))

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()
            self._reader = self._writer = None

    async def _send(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str]]:
        reader, writer = await self._open()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def _chunks(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        reader = self._reader
        assert reader is not None
        if "chunked" not in headers.get("transfer-encoding", "").lower():
            yield await reader.readexactly(int(headers.get("content-length", "0")))
            return
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers: the empty line that ends the body
                return
            chunk = await reader.readexactly(size + 2)
            yield chunk[:-2]

    async def get(self, path: str) -> bytes:
        """The body of ``GET path``; raises HttpError unless the status is 200."""
        status, headers = await self._send("GET", path)
        body = b"".join([c async for c in self._chunks(headers)])
        if status != 200:
            raise HttpError(status, body)
        return body

    async def stream(self, path: str, doc: Any) -> AsyncIterator[bytes]:
        """The body chunks of ``POST path`` with JSON ``doc``, each as it arrives; raises
        HttpError (after reading the body) unless the status is 200."""
        status, headers = await self._send("POST", path, json.dumps(doc).encode())
        if status != 200:
            raise HttpError(status, b"".join([c async for c in self._chunks(headers)]))
        async for chunk in self._chunks(headers):
            yield chunk
