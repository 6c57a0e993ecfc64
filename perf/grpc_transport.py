"""gRPC transport: one grpc.aio channel for everything (connection reuse), requests serialized
once and sent as bytes, unary ModelInfer or, with ``--streaming``, one ModelStreamInfer stream
shared by all in-flight requests and matched back by request id."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from ..clients.client import AsyncInferenceClient, InferenceError, build_infer_request
from ..protocol.pb import grpc_service_pb2 as pb
from .inputs import ModelInfo
from .stats import ServerCounters
from .transport import RequestFailed, Transport, counters_from_pb, pick_version

_SERVICE = "/inference.GRPCInferenceService/"


def _with_id(payload: bytes, request_id: str) -> bytes:
    """Append field 3 (``id``) to a serialized ModelInferRequest: protobuf keeps the last value
    of a singular field, so this sets the id without re-serializing the tensors."""
    raw = request_id.encode()
    n, length = len(raw), bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return payload + b"\x1a" + bytes(length) + raw


def _failed(e: grpc.aio.AioRpcError, prefix: str = "") -> RequestFailed:
    return RequestFailed(f"{prefix}{e.code().name}: {e.details()}", unavailable=e.code() == grpc.StatusCode.UNAVAILABLE)


class GrpcTransport(Transport):
    protocol = "grpc"

    def __init__(self, url: str, streaming: bool = False) -> None:
        self.url = url.split("://", 1)[-1]
        self.streaming = streaming
        self._client: AsyncInferenceClient | None = None
        self._payloads: list[bytes] = []
        self._unary: Any = None
        self._stream: Any = None
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._write_lock: asyncio.Lock | None = None
        self._stream_error = RequestFailed("stream closed", unavailable=True)
        self._next_id = 0

    @property
    def client(self) -> AsyncInferenceClient:
        # Created on first use, inside the running loop that will drive it.
        if self._client is None:
            self._client = AsyncInferenceClient(self.url)
            channel = self._client.channel
            self._unary = channel.unary_unary(_SERVICE + "ModelInfer")  # bytes in, bytes out
        return self._client

    async def server_extensions(self) -> list[str]:
        try:
            return list((await self.client.server_metadata()).extensions)
        except InferenceError as e:
            raise RequestFailed(f"ServerMetadata failed: {e}") from None

    async def model_info(self, name: str, version: str) -> ModelInfo:
        try:
            metadata = await self.client.model_metadata(name, version)
            config = await self.client.model_config(name, version)
        except InferenceError as e:
            raise RequestFailed(f"model '{name}': {e}") from None
        as_dict = json_format.MessageToDict(metadata, preserving_proto_field_name=True)
        as_dict.setdefault("inputs", [])
        as_dict.setdefault("outputs", [])
        return ModelInfo.from_metadata(as_dict, config, version)

    async def statistics(self, name: str, version: str) -> ServerCounters:
        try:
            response = await self.client.model_statistics(name, version)
        except InferenceError as e:
            raise RequestFailed(f"ModelStatistics failed: {e}") from None
        entry = pick_version(list(response.model_stats), version, lambda s: s.version)
        if entry is None:
            raise RequestFailed(f"no statistics for model '{name}' version '{version}'")
        return counters_from_pb(entry)

    def prepare(self, model: ModelInfo, requests: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._payloads = [
            build_infer_request(model.name, r, version=model.version).SerializeToString() for r in requests
        ]

    async def start(self) -> None:
        _ = self.client
        if self.streaming and self._stream is None:
            self._write_lock = asyncio.Lock()
            self._stream = self.client.channel.stream_stream(_SERVICE + "ModelStreamInfer")()
            self._reader = asyncio.ensure_future(self._read_stream())

    async def infer(self, index: int) -> tuple[int, int]:
        if self.streaming:
            return await self._infer_stream(index)
        t0 = time.monotonic_ns()
        payload = self._payloads[index % len(self._payloads)]
        t1 = time.monotonic_ns()
        try:
            data = await self._unary(payload)
        except grpc.aio.AioRpcError as e:
            raise _failed(e) from None
        t2 = time.monotonic_ns()
        pb.ModelInferResponse.FromString(data)
        return t1 - t0, time.monotonic_ns() - t2

    async def _infer_stream(self, index: int) -> tuple[int, int]:
        if self._stream is None or self._write_lock is None:
            await self.start()
        # This request's stream: the reader may end it (and a later request open another)
        # while this one waits for the write lock.
        stream, lock = self._stream, self._write_lock
        assert stream is not None and lock is not None
        t0 = time.monotonic_ns()
        self._next_id += 1
        request_id = str(self._next_id)
        payload = _with_id(self._payloads[index % len(self._payloads)], request_id)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = done
        try:
            async with lock:
                await self._write(stream, payload)
            t1 = time.monotonic_ns()
            await done
        finally:
            self._pending.pop(request_id, None)
            if done.done() and not done.cancelled():
                done.exception()  # failed by the reader while this write failed: already reported
        # The reader task parses responses; the receive time it spent rides on the future.
        return t1 - t0, getattr(done, "recv_ns", 0)

    async def _write(self, stream: Any, payload: bytes) -> None:
        try:
            await stream.write(payload)
        except grpc.aio.AioRpcError as e:
            raise _failed(e, "stream failed: ") from None
        except asyncio.InvalidStateError:  # the stream already ended; the reader saw why
            raise self._stream_error from None

    async def _read_stream(self) -> None:
        stream = self._stream
        assert stream is not None
        error: RequestFailed | None = None
        try:
            while True:
                data = await stream.read()
                if data is grpc.aio.EOF:
                    break
                t0 = time.monotonic_ns()
                msg = pb.ModelStreamInferResponse.FromString(data)
                fut = self._pending.get(msg.infer_response.id)
                if fut is None or fut.done():
                    continue
                fut.recv_ns = time.monotonic_ns() - t0  # type: ignore[attr-defined]
                if msg.error_message:
                    fut.set_exception(RequestFailed(msg.error_message))
                else:
                    fut.set_result(None)
        except grpc.aio.AioRpcError as e:
            error = _failed(e, "stream failed: ")
        except asyncio.CancelledError:
            error = RequestFailed("stream closed")
            raise
        finally:
            self._stream_error = error or RequestFailed("stream ended before the response", unavailable=True)
            if self._stream is stream:
                self._stream = None  # the next request opens a new stream
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(self._stream_error)

    async def close(self) -> None:
        if self._stream is not None:
            try:
                await self._stream.done_writing()
            except Exception:  # the stream may already be broken; closing the channel ends it
                pass
            if self._reader is not None:
                try:
                    await asyncio.wait_for(self._reader, 5)
                except (asyncio.TimeoutError, RequestFailed):
                    self._reader.cancel()
            self._stream = None
        if self._client is not None:
            await self._client.close()
            self._client = None
