"""A small KServe v2 / Triton gRPC client over numpy arrays: :class:`InferenceClient` (blocking)
and :class:`AsyncInferenceClient` (grpc.aio).

It needs only grpcio, protobuf, numpy, ml_dtypes and inferd's protocol layer (the generated
stubs and the one datatype codec the server uses too), so it never imports the server. Tensors always
travel as ``raw_input_contents`` / ``raw_output_contents``, as Triton's own clients do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from ..protocol import codec
from ..protocol.fields import CONTENTS_FIELD, set_parameter
from ..protocol.pb import grpc_service_pb2 as pb
from ..protocol.pb import grpc_service_pb2_grpc as pb_grpc
from ..protocol.pb import model_config_pb2 as mc

__all__ = [
    "AsyncInferenceClient",
    "InferenceClient",
    "InferenceError",
    "build_infer_request",
    "parse_infer_response",
]

# Triton and tritonclient accept messages up to 2 GiB; grpcio's default receive limit is 4 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 2**31 - 1


class InferenceError(Exception):
    """A failed RPC: the gRPC status ``code`` and the server's ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"[{code.name}] {message}")
        self.code = code
        self.message = message


# --- tensors ------------------------------------------------------------------------------
def build_infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
    version: str = "",
    parameters: Mapping[str, bool | int | float | str] | None = None,
    request_id: str = "",
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying every input in ``raw_input_contents``."""
    msg = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    raw = []
    for name, value in inputs.items():
        array = np.asarray(value)
        t = msg.inputs.add()
        t.name = name
        t.datatype = codec.of_array(array).name
        t.shape.extend(array.shape)
        raw.append(codec.to_raw(array))
    msg.raw_input_contents.extend(raw)
    for name in outputs or ():
        msg.outputs.add().name = name
    for key, v in (parameters or {}).items():
        set_parameter(msg.parameters[key], v)
    return msg


def parse_infer_response(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Output name -> numpy array, from raw_output_contents (typed ``contents`` as a fallback)."""
    result: dict[str, np.ndarray] = {}
    raw = response.raw_output_contents
    for i, t in enumerate(response.outputs):
        if i < len(raw):
            result[t.name] = codec.from_raw(raw[i], codec.datatype(t.datatype), t.shape, f"output '{t.name}'")
        else:
            result[t.name] = _from_contents(t)
    return result


def _from_contents(t: Any) -> np.ndarray:
    field = CONTENTS_FIELD.get(t.datatype)
    if field is None:
        raise TypeError(f"output '{t.name}': {t.datatype} without raw_output_contents")
    values = list(getattr(t.contents, field))
    dtype = codec.datatype(t.datatype).dtype
    out = np.empty(len(values), dtype=dtype)
    out[:] = values
    return out.reshape(tuple(t.shape))


def _check_inputs(model: str, inputs: object) -> None:
    """Fail early, naming the culprit: a list of tritonclient InferInputs, say, would otherwise end
    in an AttributeError deep inside :func:`build_infer_request`."""
    wanted = "inputs must be a dict[str, numpy.ndarray] (input name -> array)"
    if not isinstance(inputs, Mapping):
        hint = (
            " (a list of tritonclient InferInputs is for tritonclient's own client)" if isinstance(inputs, list) else ""
        )
        raise TypeError(f"infer('{model}'): {wanted}, not {type(inputs).__name__}{hint}")
    for name, value in inputs.items():
        if not isinstance(name, str):
            raise TypeError(f"infer('{model}'): {wanted}; key {name!r} is a {type(name).__name__}, not a str")
        if not isinstance(value, np.ndarray):
            raise TypeError(
                f"infer('{model}'): {wanted}; input '{name}' is a {type(value).__name__}, not a numpy.ndarray "
                "(wrap it in numpy.asarray)"
            )


def _error(e: grpc.RpcError) -> InferenceError:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = e.details() if hasattr(e, "details") else str(e)
    return InferenceError(code, details or "")


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def _load_request(name: str, config_json: str | None) -> pb.RepositoryModelLoadRequest:
    request = pb.RepositoryModelLoadRequest(model_name=name)
    if config_json is not None:
        request.parameters["config"].string_param = config_json
    return request


# --- clients ------------------------------------------------------------------------------
class InferenceClient:
    """Blocking client for one server. Metadata calls return the protobuf messages."""

    def __init__(self, url: str = "127.0.0.1:8001", max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.url = url
        self.channel = grpc.insecure_channel(url, options=_channel_options(max_message_bytes))
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=timeout)
        except grpc.RpcError as e:
            raise _error(e) from None

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        version: str = "",
        parameters: Mapping[str, bool | int | float | str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        _check_inputs(model, inputs)
        request = build_infer_request(model, inputs, outputs, version, parameters)
        return parse_infer_response(self._call("ModelInfer", request, timeout))

    def is_server_live(self) -> bool:
        return bool(self._call("ServerLive", pb.ServerLiveRequest()).live)

    def is_server_ready(self) -> bool:
        return bool(self._call("ServerReady", pb.ServerReadyRequest()).ready)

    def is_model_ready(self, name: str, version: str = "") -> bool:
        return bool(self._call("ModelReady", pb.ModelReadyRequest(name=name, version=version)).ready)

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return self._call("ServerMetadata", pb.ServerMetadataRequest())

    def model_metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        return self._call("ModelMetadata", pb.ModelMetadataRequest(name=name, version=version))

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        return self._call("ModelConfig", pb.ModelConfigRequest(name=name, version=version)).config

    def model_statistics(self, name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
        return self._call("ModelStatistics", pb.ModelStatisticsRequest(name=name, version=version))

    def repository_index(self, ready: bool = False) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        return list(self._call("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready)).models)

    def load_model(self, name: str, config_json: str | None = None) -> None:
        self._call("RepositoryModelLoad", _load_request(name, config_json))

    def unload_model(self, name: str) -> None:
        self._call("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=name))


class AsyncInferenceClient:
    """The grpc.aio counterpart of :class:`InferenceClient` (same methods, awaitable).

    Create it inside a running event loop; one channel is reused for every call.
    """

    def __init__(self, url: str = "127.0.0.1:8001", max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.url = url
        self.channel = grpc.aio.insecure_channel(url, options=_channel_options(max_message_bytes))
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return await getattr(self.stub, method)(request, timeout=timeout)
        except grpc.RpcError as e:
            raise _error(e) from None

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        version: str = "",
        parameters: Mapping[str, bool | int | float | str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        _check_inputs(model, inputs)
        request = build_infer_request(model, inputs, outputs, version, parameters)
        return parse_infer_response(await self._call("ModelInfer", request, timeout))

    async def is_server_live(self) -> bool:
        return bool((await self._call("ServerLive", pb.ServerLiveRequest())).live)

    async def is_server_ready(self) -> bool:
        return bool((await self._call("ServerReady", pb.ServerReadyRequest())).ready)

    async def is_model_ready(self, name: str, version: str = "") -> bool:
        return bool((await self._call("ModelReady", pb.ModelReadyRequest(name=name, version=version))).ready)

    async def server_metadata(self) -> pb.ServerMetadataResponse:
        return await self._call("ServerMetadata", pb.ServerMetadataRequest())

    async def model_metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        return await self._call("ModelMetadata", pb.ModelMetadataRequest(name=name, version=version))

    async def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        return (await self._call("ModelConfig", pb.ModelConfigRequest(name=name, version=version))).config

    async def model_statistics(self, name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
        return await self._call("ModelStatistics", pb.ModelStatisticsRequest(name=name, version=version))

    async def repository_index(self, ready: bool = False) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        return list((await self._call("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready))).models)

    async def load_model(self, name: str, config_json: str | None = None) -> None:
        await self._call("RepositoryModelLoad", _load_request(name, config_json))

    async def unload_model(self, name: str) -> None:
        await self._call("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=name))
