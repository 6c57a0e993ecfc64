"""The gRPC front end: ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health`` on grpc.aio.

Each RPC converts its message (``grpc_convert`` for inference, ``grpc_metadata`` for the rest),
calls the core and converts back; core errors map to gRPC status codes in ``_status``, once.
ModelInfer and ModelStreamInfer take and give bytes, registered without the message
(de)serializers, so both decode and encode through the same ``InferCodec``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from ...protocol.errors import Code, InferdError, InvalidArgument, Unimplemented
from ...protocol.pb import grpc_service_pb2 as pb
from ...protocol.pb import grpc_service_pb2_grpc as pb_grpc
from ...protocol.pb import health_pb2, health_pb2_grpc
from ...protocol.types import InferRequest
from ..core import InferenceCore
from . import grpc_metadata as meta
from .access import Restrictions, guard_handlers
from .grpc_convert import (
    InferCodec,
    empty_final_response,
    stream_error,
    stream_error_response,
    wants_empty_final,
)
from .internal_error import internal_error
from .request_limits import Refusals, RequestLimits, TooManyElements
from .stream_outbox import Outbox

log = logging.getLogger(__name__)

# Encoded responses of one ModelStreamInfer call waiting for the client to read them.
STREAM_QUEUE = 16
# Requests bigger than this are decoded on a worker thread (unless they fit a learnt layout,
# which is a few byte comparisons): BYTES or `contents` tensors take ~1 s per million values.
OFF_LOOP_BYTES = 1 << 20

STATUS = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    Code.CANCELLED: grpc.StatusCode.CANCELLED,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}
# Triton's ModelStreamInfer header (24.08+): sent as "true" when the stream starts, the first
# error ends the stream with its gRPC status instead of travelling in-band (``error_message``).
# As in Triton (stream_infer_handler.cc), only the exact value "true" turns it on.
GRPC_ERROR_HEADER = "triton_grpc_error"
Servicer = TypeVar("Servicer")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _status(method: Callable[[Servicer, Req, Any], Awaitable[Resp]]) -> Callable[[Servicer, Req, Any], Awaitable[Resp]]:
    """A unary RPC whose InferdError ends the call with the error's status and message."""

    @functools.wraps(method)
    async def rpc(self: Servicer, request: Req, context: Any) -> Resp:
        try:
            return await method(self, request, context)
        except InferdError as e:
            await context.abort(STATUS[e.code], e.message)
        except Exception as e:  # a server fault: logged; the client reads only "internal error"
            await context.abort(grpc.StatusCode.INTERNAL, internal_error(e, f"gRPC {method.__name__}"))
        raise AssertionError("unreachable")  # context.abort always raises

    return rpc


def _unsupported(what: str) -> Callable[[Any, Any, Any], Awaitable[Any]]:
    return _refused(f"{what} is not supported by inferd yet")


def _refused(message: str) -> Callable[[Any, Any, Any], Awaitable[Any]]:
    @_status
    async def rpc(self: Any, request: Any, context: Any) -> Any:
        raise Unimplemented(message)

    return rpc


class TracedReply(bytes):
    """A traced unary answer on the native front end, which calls ``trace.sent`` once grpc++
    took it (trace_file.py)."""

    trace: Any
    answered: int

    def __new__(cls, data: bytes, trace: Any, answered: int) -> TracedReply:
        reply = super().__new__(cls, data)
        reply.trace = trace
        reply.answered = answered
        return reply


class WriteBatch(list):  # type: ignore[type-arg]
    """Stream messages that were ready together, yielded as one item to a front end that queues
    them in one call (``write_batches``: grpc++); grpc.aio's handlers yield each message alone."""


_NOTHING = object()


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        core: InferenceCore,
        limits: RequestLimits | None = None,
        refusals: Refusals | None = None,
        stream_interval_us: int = 0,
        write_batches: bool = False,
    ) -> None:
        """``stream_interval_us``: the server's ``--stream-interval-us``, how often at most a
        decoupled request's responses are written to its stream (the first and final never wait).
        ``write_batches``: ModelStreamInfer yields the messages that are ready together as one
        :class:`WriteBatch` (the native front end)."""
        self.write_batches = write_batches
        self.core = core
        self.limits = limits or RequestLimits()
        self.refusals = refusals or Refusals()
        self.codec = InferCodec(core.shared_memory, self.limits.max_elements)
        self.stream_interval_ns = stream_interval_us * 1000

    async def _decode(self, data: bytes, remaining_s: float | None = None) -> InferRequest:
        """``codec.decode``, on a worker thread for a big message that fits no learnt layout."""
        try:
            if len(data) <= OFF_LOOP_BYTES:
                return self.codec.decode(data, remaining_s)
            request = self.codec.fit(data, remaining_s)
            if request is not None:
                return request
            return await asyncio.to_thread(self.codec.decode, data, remaining_s)
        except TooManyElements:
            self.refusals.count("grpc", "too_many_elements")
            raise

    @_status
    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.core.server_live())

    @_status
    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.server_ready())

    @_status
    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.core.model_ready(request.name, request.version))

    @_status
    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return meta.server_metadata_pb(self.core.server_metadata())

    @_status
    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        return meta.model_metadata_pb(self.core.model_metadata(request.name, request.version))

    @_status
    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        return meta.model_config_pb(self.core.model_config(request.name, request.version))

    @_status
    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        return meta.statistics_pb(self.core.model_statistics(request.name, request.version))

    @_status
    async def ModelInfer(self, request: bytes, context: Any) -> bytes:
        core_request = await self._decode(request, context.time_remaining())
        if not self.core.tracer.active:
            return self.codec.encode(await self.core.infer(core_request))
        core_request.traceparent = _traceparent(context)
        waited = getattr(context, "waited", None)  # the native front end's
        if waited is not None:
            core_request.received = ("GRPC", *waited)
        response = await self.core.infer(core_request)
        trace = core_request.trace if waited is not None else None
        if trace is None:
            return self.codec.encode(response)
        # The native front end reports the send (TracedReply): then the trace ends.
        answered = time.monotonic_ns()
        try:
            return TracedReply(self.codec.encode(response), trace, answered)
        except BaseException:
            trace.sent(answered, time.monotonic_ns())
            raise

    async def ModelStreamInfer(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes | WriteBatch]:
        """Requests on one stream run concurrently; each request's responses (one, or a
        decoupled model's 0..N in the order it sent them) or its error are sent as they come,
        each with Triton's ``triton_final_response`` parameter. Where the model sent the final
        flag alone, an empty final response is sent if the request asked for it
        (``triton_enable_empty_final_response``). The stream's deadline bounds the stream, not
        each request, so requests carry none.

        Errors travel in-band (``error_message``) and the stream goes on, unless the client
        started it with Triton's ``triton_grpc_error: true`` metadata: then the first error (a
        request that fails, or a response a decoupled model sent as an error) ends the stream
        with that error's gRPC status and message, after the responses before it, and the
        stream's other requests are cancelled.

        The responses waiting for the client are bounded (STREAM_QUEUE): a client that reads
        slowly holds the requests back, so a decoupled request's responses wait in its own
        bounded channel, and fail it past ``--max-buffered-responses``. A client that cancels
        or goes away cancels every request of the stream.

        At most ``grpc_stream_max_inflight`` requests of the stream are decoded or running at
        once; the stream is not read further until one finishes, so HTTP/2 flow control holds
        a client that sends faster than the server answers."""
        out: Outbox[bytes | _StreamFailed | None] = Outbox(STREAM_QUEUE)
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        inflight = asyncio.Semaphore(self.limits.grpc_stream_max_inflight)
        traceparent = _traceparent(context) if self.core.tracer.active else None
        status_errors = _grpc_error_mode(context)

        async def one(data: bytes, turn: asyncio.Future[None], done: asyncio.Future[None]) -> None:
            # As in Triton, a model that is not decoupled answers in the order the requests
            # came (its requests run concurrently; only the writing waits for ``turn``).
            try:
                request = await self._decode(data)
                if traceparent is not None:
                    request.traceparent = traceparent
                if self._decoupled(request):
                    done.set_result(None)
                    # Paced: the responses of one interval reach the stream together, and the
                    # native front end writes them in one go.
                    request.stream_interval_ns = self.stream_interval_ns
                empty_final = wants_empty_final(request)
                final = False
                async with aclosing(self.core.infer_stream(request)) as responses:
                    async for r in responses:
                        final = r.final
                        if r.error is None:
                            item: bytes | _StreamFailed = self.codec.encode_stream(r)
                        elif status_errors:  # the stream ends here: nothing more of this request
                            item = _StreamFailed(STATUS[r.error.code], r.error.message)
                        else:
                            item = stream_error_response(r)
                        if not done.done():
                            await turn
                        await out.put(item)
                        if isinstance(item, _StreamFailed):
                            return
                if empty_final and not final:
                    await out.put(empty_final_response(request))
            except InferdError as e:
                if not done.done():
                    await turn
                await out.put(
                    _StreamFailed(STATUS[e.code], e.message) if status_errors else stream_error(e.message, data)
                )
            except Exception as e:  # a server fault: answered, so the request is not left without one
                message = internal_error(e, "gRPC ModelStreamInfer")
                if not done.done():
                    await turn
                failed = _StreamFailed(grpc.StatusCode.INTERNAL, message)
                await out.put(failed if status_errors else stream_error(message, data))
            finally:
                if not done.done():
                    done.set_result(None)
                inflight.release()

        async def read() -> None:
            turn: asyncio.Future[None] = loop.create_future()
            turn.set_result(None)
            async for data in requests:
                await inflight.acquire()
                done: asyncio.Future[None] = loop.create_future()
                task = asyncio.ensure_future(one(data, turn, done))
                turn = done
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks))
            await out.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await out.get()) is not None:
                if isinstance(item, _StreamFailed):
                    # Ends the call with the status (both front ends); the finally below cancels
                    # the stream's other requests, as a client going away does.
                    await context.abort(item.code, item.message)
                    return  # (abort raises)
                if not self.write_batches or out.empty():
                    yield item
                    continue
                # A paced request's responses arrive together: queued in one call (grpc_native).
                batch, after = WriteBatch([item]), _NOTHING
                while not out.empty():
                    nxt = out.get_nowait()
                    if not isinstance(nxt, bytes):
                        after = nxt  # the end of the stream, or its failure: after the batch
                        break
                    batch.append(nxt)
                yield batch
                if after is None:
                    break
                if isinstance(after, _StreamFailed):
                    await context.abort(after.code, after.message)
                    return
        finally:
            reader.cancel()
            for t in list(tasks):
                t.cancel()

    def _decoupled(self, request: InferRequest) -> bool:
        try:
            return self.core.model(request.model_name, request.model_version).decoupled
        except InferdError:
            return False  # answered with its error, in order

    @_status
    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        return meta.repository_index_pb(self.core.repository_index(request.ready))

    @_status
    async def RepositoryModelLoad(self, request: Any, context: Any) -> pb.RepositoryModelLoadResponse:
        config = None
        if "config" in request.parameters:
            param = request.parameters["config"]
            if param.WhichOneof("parameter_choice") != "string_param":
                raise InvalidArgument("parameter 'config' must be a string (a JSON ModelConfig)")
            config = param.string_param
        files = {}
        for key, param in request.parameters.items():
            if key.startswith("file:"):
                if param.WhichOneof("parameter_choice") != "bytes_param":
                    raise InvalidArgument(f"parameter '{key}' must be bytes (the file's content)")
                files[key] = param.bytes_param
        await self.core.load_model(request.model_name, config, files)
        return pb.RepositoryModelLoadResponse()

    @_status
    async def RepositoryModelUnload(self, request: Any, context: Any) -> pb.RepositoryModelUnloadResponse:
        param = request.parameters.get("unload_dependents")
        if param is not None and param.WhichOneof("parameter_choice") != "bool_param":
            raise InvalidArgument("parameter 'unload_dependents' must be a bool")
        await self.core.unload_model(request.model_name, bool(param is not None and param.bool_param))
        return pb.RepositoryModelUnloadResponse()

    @_status
    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for r in self.core.shared_memory_status(request.name):
            response.regions[r.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size
                )
            )
        return response

    @_status
    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> pb.SystemSharedMemoryRegisterResponse:
        self.core.register_shared_memory(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_status
    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> pb.SystemSharedMemoryUnregisterResponse:
        self.core.unregister_shared_memory(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_status
    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> pb.CudaSharedMemoryStatusResponse:
        response = pb.CudaSharedMemoryStatusResponse()
        for r in self.core.cuda_shared_memory_status(request.name):
            response.regions[r.name].CopyFrom(
                pb.CudaSharedMemoryStatusResponse.RegionStatus(
                    name=r.name, device_id=r.device_id, byte_size=r.byte_size
                )
            )
        return response

    @_status
    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> pb.CudaSharedMemoryRegisterResponse:
        self.core.shared_memory.require_enabled()  # refused on the loop when off
        await asyncio.to_thread(  # CUDA may initialize: never on the event loop
            self.core.register_cuda_shared_memory,
            request.name,
            request.raw_handle,
            request.device_id,
            request.byte_size,
        )
        return pb.CudaSharedMemoryRegisterResponse()

    @_status
    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> pb.CudaSharedMemoryUnregisterResponse:
        self.core.unregister_cuda_shared_memory(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    @_status
    async def TraceSetting(self, request: Any, context: Any) -> pb.TraceSettingResponse:
        """Triton's trace extension: the settings named in the request change (an empty value
        list clears one); none named is a read."""
        changes = {key: list(v.value) or None for key, v in request.settings.items()}
        model = request.model_name
        settings = self.core.update_trace_settings(model, changes) if changes else self.core.trace_settings(model)
        response = pb.TraceSettingResponse()
        for key, values in settings.items():
            response.settings[key].value.extend(values)
        return response

    @_status
    async def LogSettings(self, request: Any, context: Any) -> pb.LogSettingsResponse:
        """Triton's logging extension: the settings named in the request change (none: a read)."""
        changes = meta.log_settings_changes(request)
        settings = self.core.update_log_settings(changes) if changes else self.core.log_settings()
        return meta.log_settings_pb(settings)


@dataclass(frozen=True, slots=True)
class _StreamFailed:
    """The error that ends a ModelStreamInfer stream in Triton's ``triton_grpc_error`` mode."""

    code: grpc.StatusCode
    message: str


def _grpc_error_mode(context: Any) -> bool:
    """Whether the stream's client sent ``triton_grpc_error: true`` (Triton reads only the
    first value of the key, and compares it with "true" exactly)."""
    for key, value in context.invocation_metadata() or ():
        if key == GRPC_ERROR_HEADER:
            return bool(value == "true")
    return False


def _traceparent(context: Any) -> str | None:
    """The W3C traceparent the caller sent as metadata (read only while tracing is on)."""
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent":
            return str(value)
    return None


class HealthServicer(health_pb2_grpc.HealthServicer):
    """grpc.health.v1: the empty service name is the server, any other name a model."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    @_status
    async def Check(self, request: Any, context: Any) -> health_pb2.HealthCheckResponse:
        S = health_pb2.HealthCheckResponse
        ready = self.core.server_ready() if not request.service else self.core.model_ready(request.service)
        return S(status=S.SERVING if ready else S.NOT_SERVING)

    Watch = _unsupported("Health.Watch")


class _Collect:
    """Stands in for the server so the generated registration function hands over its method
    handlers, which are then registered with the two infer RPCs' replaced."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers[service] = dict(handlers)


def _inference_handlers(servicer: InferenceServicer, restrictions: Restrictions) -> tuple[str, dict[str, Any]]:
    collect = _Collect()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, collect)
    ((service, handlers),) = collect.handlers.items()
    # Raw bytes both ways: InferCodec reads and writes the messages itself.
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(servicer.ModelInfer)
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(servicer.ModelStreamInfer)
    return service, guard_handlers(service, _lenient(handlers), restrictions)


def _health_handlers(servicer: HealthServicer, restrictions: Restrictions) -> tuple[str, dict[str, Any]]:
    collect = _Collect()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, collect)
    ((service, handlers),) = collect.handlers.items()
    return service, guard_handlers(service, _lenient(handlers), restrictions)


def service_handlers(
    core: InferenceCore,
    restrictions: Restrictions | None = None,
    limits: RequestLimits | None = None,
    refusals: Refusals | None = None,
    stream_interval_us: int = 0,
    write_batches: bool = False,
) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
    """Every RPC the gRPC port serves, by service and method name; both front ends (grpc.aio
    here, grpc++ in grpc_native.py) run these same handlers (``write_batches`` for grpc++)."""
    inference = InferenceServicer(core, limits, refusals, stream_interval_us, write_batches)
    return dict(
        (
            _inference_handlers(inference, restrictions or {}),
            _health_handlers(HealthServicer(core), restrictions or {}),
        )
    )


class _Malformed:
    """What a request that is not a valid message deserializes to (see ``_lenient``)."""


def _lenient(handlers: dict[str, grpc.RpcMethodHandler]) -> dict[str, grpc.RpcMethodHandler]:
    """``handlers`` whose requests that are not valid messages get INVALID_ARGUMENT. grpc.aio
    answers a deserializer's exception with UNKNOWN and the exception's text (a server fault,
    in Python's words, for the client's bytes)."""
    out = dict(handlers)
    for name, handler in handlers.items():
        parse = handler.request_deserializer
        behavior = handler.unary_unary or handler.unary_stream
        if parse is None or behavior is None:
            continue  # ModelInfer/ModelStreamInfer read bytes themselves (grpc_convert)
        message = f"{name}: the request is not a valid message"
        if handler.unary_unary:
            out[name] = handler._replace(
                request_deserializer=_lenient_parse(parse), unary_unary=_refuse(behavior, message)
            )
        else:  # an async generator, or a coroutine that writes or aborts (Health.Watch here)
            wrap = _refuse_stream if inspect.isasyncgenfunction(behavior) else _refuse
            out[name] = handler._replace(
                request_deserializer=_lenient_parse(parse), unary_stream=wrap(behavior, message)
            )
    return out


def _lenient_parse(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def lenient(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # upb's DecodeError, or any other failure: the client's bytes
            return _Malformed()

    return lenient


def _refuse(behavior: Callable[[Any, Any], Awaitable[Any]], message: str) -> Callable[[Any, Any], Awaitable[Any]]:
    async def rpc(request: Any, context: Any) -> Any:
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        return await behavior(request, context)

    return rpc


def _refuse_stream(
    behavior: Callable[[Any, Any], AsyncIterator[Any]], message: str
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def rpc(request: Any, context: Any) -> AsyncIterator[Any]:
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        async for item in behavior(request, context):
            yield item

    return rpc


def channel_arguments(
    max_message_bytes: int, limits: RequestLimits, channel_options: Sequence[tuple[str, int]] = ()
) -> list[tuple[str, int]]:
    """grpc core's channel arguments of the gRPC port, the same for both front ends."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
        # A connection that has not finished the HTTP/2 (and TLS) handshake by then is closed.
        ("grpc.server_handshake_timeout_ms", int(limits.grpc_handshake_timeout_s * 1000)),
        ("grpc.max_concurrent_streams", limits.grpc_max_concurrent_streams),
        *channel_options,  # keepalive and connection age (Triton's --grpc-keepalive-*, --grpc-max-connection-age*)
    ]


def build_server(
    core: InferenceCore,
    address: str,
    max_message_bytes: int,
    *,
    credentials: grpc.ServerCredentials | None = None,
    restrictions: Restrictions | None = None,
    channel_options: Sequence[tuple[str, int]] = (),
    limits: RequestLimits | None = None,
    refusals: Refusals | None = None,
    stream_interval_us: int = 0,
) -> tuple[grpc.aio.Server, int]:
    """Create the grpc.aio server bound to ``address``; returns it and the bound port. With
    ``credentials`` the port serves TLS only (tls.py); ``restrictions`` guard API categories
    (access.py); ``limits`` bound connections and what one request may cost (request_limits.py)
    and ``refusals`` counts what they refuse."""
    limits = limits or RequestLimits()
    options = channel_arguments(max_message_bytes, limits, channel_options)
    server = grpc.aio.server(options=options)
    for service, handlers in service_handlers(core, restrictions, limits, refusals, stream_interval_us).items():
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        server.add_registered_method_handlers(service, handlers)
    port = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind the gRPC port at {address}")
    return server, port
