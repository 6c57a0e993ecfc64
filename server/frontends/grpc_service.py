"""The gRPC front end: ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health`` on grpc.aio.

Each RPC converts its message (``grpc_convert``), calls the core and converts back; core errors
map to gRPC status codes here, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from ...protocol.errors import Code, InferdError, InvalidArgument
from ...protocol.pb import grpc_service_pb2 as pb
from ...protocol.pb import grpc_service_pb2_grpc as pb_grpc
from ...protocol.pb import health_pb2, health_pb2_grpc
from ..core import InferenceCore
from .grpc_convert import request_from_pb, response_to_pb, statistics_to_pb
from .grpc_wire import InferWire

log = logging.getLogger(__name__)

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


async def _abort(context: grpc.aio.ServicerContext, e: InferdError) -> NoReturn:
    await context.abort(STATUS[e.code], e.message)
    raise AssertionError("unreachable")  # context.abort always raises


async def _unimplemented(context: grpc.aio.ServicerContext, what: str) -> NoReturn:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported by inferd yet")
    raise AssertionError("unreachable")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self.core = core
        self.wire = InferWire()

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.core.server_live())

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.server_ready())

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.core.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        m = self.core.server_metadata()
        return pb.ServerMetadataResponse(name=m.name, version=m.version, extensions=m.extensions)

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        try:
            m = self.core.model_metadata(request.name, request.version)
        except InferdError as e:
            await _abort(context, e)
        T = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=m.name,
            versions=m.versions,
            platform=m.platform,
            inputs=[T(name=t.name, datatype=t.datatype, shape=t.shape) for t in m.inputs],
            outputs=[T(name=t.name, datatype=t.datatype, shape=t.shape) for t in m.outputs],
        )

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        try:
            config = self.core.model_config(request.name, request.version)
        except InferdError as e:
            await _abort(context, e)
        response = pb.ModelConfigResponse()
        response.config.CopyFrom(config)
        return response

    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        try:
            stats = self.core.model_statistics(request.name, request.version)
        except InferdError as e:
            await _abort(context, e)
        response = pb.ModelStatisticsResponse()
        for s in stats:
            statistics_to_pb(s, response.model_stats.add())
        return response

    async def ModelInfer(self, request: bytes, context: Any) -> bytes:
        """Bytes in, bytes out: registered without the message (de)serializers (see grpc_wire)."""
        try:
            core_request = self.wire.decode(request, context.time_remaining())
            response = await self.core.infer(core_request)
            return self.wire.encode(response)
        except InferdError as e:
            await _abort(context, e)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on one stream run concurrently; responses (or per-request errors) are sent
        as they complete, so a decoupled model's 0..N responses fit the same loop."""
        out: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def one(msg: pb.ModelInferRequest) -> None:
            try:
                async for r in self.core.infer_stream(request_from_pb(msg)):
                    out.put_nowait(pb.ModelStreamInferResponse(infer_response=response_to_pb(r)))
            except InferdError as e:
                error = pb.ModelStreamInferResponse(error_message=e.message)
                error.infer_response.id = msg.id
                error.infer_response.model_name = msg.model_name
                out.put_nowait(error)

        async def read() -> None:
            async for msg in request_iterator:
                task = asyncio.ensure_future(one(msg))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks))
            out.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await out.get()) is not None:
                yield item
        finally:
            reader.cancel()
            for t in list(tasks):
                t.cancel()

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        entries = self.core.repository_index(request.ready)
        M = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[M(name=e.name, version=e.version, state=e.state, reason=e.reason) for e in entries]
        )

    async def RepositoryModelLoad(self, request: Any, context: Any) -> pb.RepositoryModelLoadResponse:
        config = None
        if "config" in request.parameters:
            config = request.parameters["config"].string_param
        try:
            await self.core.load_model(request.model_name, config)
        except InferdError as e:
            await _abort(context, e)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> pb.RepositoryModelUnloadResponse:
        try:
            param = request.parameters.get("unload_dependents")
            if param is not None and param.WhichOneof("parameter_choice") != "bool_param":
                raise InvalidArgument("parameter 'unload_dependents' must be a bool")
            await self.core.unload_model(request.model_name, bool(param is not None and param.bool_param))
        except InferdError as e:
            await _abort(context, e)
        return pb.RepositoryModelUnloadResponse()

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        await _unimplemented(context, "system shared memory")

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        await _unimplemented(context, "system shared memory")

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        await _unimplemented(context, "system shared memory")

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        await _unimplemented(context, "CUDA shared memory")

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        await _unimplemented(context, "CUDA shared memory")

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        await _unimplemented(context, "CUDA shared memory")

    async def TraceSetting(self, request: Any, context: Any) -> Any:
        await _unimplemented(context, "tracing")

    async def LogSettings(self, request: Any, context: Any) -> Any:
        await _unimplemented(context, "changing log settings over the API")


class HealthServicer(health_pb2_grpc.HealthServicer):
    """grpc.health.v1: the empty service name is the server, any other name a model."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    async def Check(self, request: Any, context: Any) -> health_pb2.HealthCheckResponse:
        S = health_pb2.HealthCheckResponse
        ready = self.core.server_ready() if not request.service else self.core.model_ready(request.service)
        return S(status=S.SERVING if ready else S.NOT_SERVING)

    async def Watch(self, request: Any, context: Any) -> Any:
        await _unimplemented(context, "Health.Watch")


class _Collect:
    """Stands in for the server so the generated registration function hands over its method
    handlers, which are then registered with ModelInfer's replaced."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers[service] = dict(handlers)


def _add_inference_service(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    collect = _Collect()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, collect)
    ((service, handlers),) = collect.handlers.items()
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(servicer.ModelInfer)  # raw bytes both ways
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def build_server(core: InferenceCore, address: str, max_message_bytes: int) -> tuple[grpc.aio.Server, int]:
    """Create the grpc.aio server bound to ``address``; returns it and the bound port."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    _add_inference_service(InferenceServicer(core), server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(core), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the gRPC port at {address}")
    return server, port
