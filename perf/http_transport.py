"""HTTP transport: KServe v2 REST with the binary tensor extension (a JSON header whose size is
given by ``Inference-Header-Content-Length``, then the raw tensors), over one keep-alive
connection pool: aiohttp when installed (lighter per request), else httpx."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf import json_format

from ..protocol import codec
from ..protocol.pb import model_config_pb2 as mc
from .inputs import ModelInfo
from .stats import ServerCounters
from .transport import RequestFailed, Transport, counters_from_json, pick_version

HEADER_LENGTH = "Inference-Header-Content-Length"
# Statuses meaning the server (or a proxy in front of it) cannot serve now, as gRPC UNAVAILABLE.
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})


def encode_binary_request(
    inputs: Mapping[str, np.ndarray], outputs: Sequence[str] = (), binary_output: bool = True
) -> tuple[bytes, int]:
    """(body, json_header_length) of an infer request using the binary tensor extension."""
    header: dict[str, Any] = {"inputs": []}
    raws = []
    for name, array in inputs.items():
        raw = codec.to_raw(array)
        header["inputs"].append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": codec.of_array(array).name,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        raws.append(raw)
    if outputs:
        header["outputs"] = [{"name": o, "parameters": {"binary_data": binary_output}} for o in outputs]
    else:
        header["parameters"] = {"binary_data_output": binary_output}
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + b"".join(raws), len(head)


def decode_binary_response(body: bytes, header_length: int | None) -> dict[str, Any]:
    """The JSON part of a response, each output's ``binary_data_size`` bytes attached as ``raw``."""
    if header_length is None:
        return json.loads(body)
    doc = json.loads(body[:header_length])
    pos = header_length
    for out in doc.get("outputs", []):
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out["raw"] = body[pos : pos + int(size)]
            pos += int(size)
    if pos != len(body):
        raise RequestFailed(f"response has {len(body) - pos} unexpected bytes after its binary outputs")
    return doc


def _error_text(status: int, body: bytes) -> str:
    try:
        return f"HTTP {status}: {json.loads(body).get('error', body.decode(errors='replace'))}"
    except (ValueError, AttributeError):
        return f"HTTP {status}: {body[:200].decode(errors='replace')}"


class HttpTransport(Transport):
    protocol = "http"

    def __init__(self, url: str, connections: int = 1) -> None:
        self.base = url if "://" in url else f"http://{url}"
        self.connections = connections
        self._session: Any = None
        self._kind = ""
        # The client library's "could not reach the server" errors, set with the session.
        self._connection_errors: tuple[type[BaseException], ...] = (OSError,)
        self._payloads: list[tuple[bytes, dict[str, str]]] = []
        self._infer_path = ""

    async def _open(self) -> None:
        if self._session is not None:
            return
        try:
            import aiohttp

            self._kind = "aiohttp"
            self._connection_errors = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)
            # limit=0: as many keep-alive connections as requests in flight, reused across requests.
            self._session = aiohttp.ClientSession(
                self.base, connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
            )
        except ImportError:
            import httpx

            self._kind = "httpx"
            self._connection_errors = (httpx.TransportError, OSError)
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
            self._session = httpx.AsyncClient(base_url=self.base, limits=limits, timeout=None)

    async def _request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Mapping[str, str], bytes]:
        await self._open()
        try:
            if self._kind == "aiohttp":
                async with self._session.request(method, path, data=body, headers=headers) as r:
                    return r.status, r.headers, await r.read()
            r = await self._session.request(method, path, content=body, headers=headers)
            return r.status_code, r.headers, r.content
        except self._connection_errors as e:
            detail = str(e) or type(e).__name__
            raise RequestFailed(f"{method} {path}: {detail}", unavailable=True) from None

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        status, _, content = await self._request(method, path, data)
        if status != 200:
            raise RequestFailed(f"{method} {path}: {_error_text(status, content)}")
        return json.loads(content) if content else {}

    @staticmethod
    def _model_path(name: str, version: str) -> str:
        return f"/v2/models/{name}" + (f"/versions/{version}" if version else "")

    async def server_extensions(self) -> list[str]:
        return list((await self._json("GET", "/v2")).get("extensions", []))

    async def model_info(self, name: str, version: str) -> ModelInfo:
        path = self._model_path(name, version)
        metadata = await self._json("GET", path)
        config_doc = await self._json("GET", path + "/config")
        config = mc.ModelConfig()
        json_format.ParseDict(config_doc, config, ignore_unknown_fields=True)
        metadata.setdefault("inputs", [])
        metadata.setdefault("outputs", [])
        return ModelInfo.from_metadata(metadata, config, version)

    async def statistics(self, name: str, version: str) -> ServerCounters:
        doc = await self._json("GET", self._model_path(name, version) + "/stats")
        entry = pick_version(doc.get("model_stats", []), version, lambda s: s.get("version", ""))
        if entry is None:
            raise RequestFailed(f"no statistics for model '{name}' version '{version}'")
        return counters_from_json(entry)

    def prepare(self, model: ModelInfo, requests: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._infer_path = self._model_path(model.name, model.version) + "/infer"
        self._payloads = []
        for r in requests:
            body, n = encode_binary_request(r)
            headers = {HEADER_LENGTH: str(n), "Content-Type": "application/octet-stream"}
            self._payloads.append((body, headers))

    async def start(self) -> None:
        await self._open()

    async def infer(self, index: int) -> tuple[int, int]:
        t0 = time.monotonic_ns()
        body, headers = self._payloads[index % len(self._payloads)]
        t1 = time.monotonic_ns()
        status, response_headers, content = await self._request("POST", self._infer_path, body, headers)
        t2 = time.monotonic_ns()
        if status != 200:
            raise RequestFailed(_error_text(status, content), unavailable=status in UNAVAILABLE_STATUSES)
        length = response_headers.get(HEADER_LENGTH)
        decode_binary_response(content, int(length) if length is not None else None)
        return t1 - t0, time.monotonic_ns() - t2

    async def close(self) -> None:
        if self._session is not None:
            if self._kind == "aiohttp":
                await self._session.close()
            else:
                await self._session.aclose()
            self._session = None
