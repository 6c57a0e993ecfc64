"""The API a Python model (``model.py``) uses, with the names of Triton's
``triton_python_backend_utils``; inside inferd it is importable by that name too (see
:func:`inferd.backends.python.provide_triton_module`), so a Triton model.py runs unchanged::

    import triton_python_backend_utils as pb_utils   # as on Triton
    import inferd.backends.python_api as pb_utils    # the same module, by inferd's name

Tensors are numpy arrays, passed without copies in both directions (BYTES tensors are object
arrays of ``bytes``). ``InferenceRequest(model_name=..., ...).exec()`` calls another model
through its own scheduler (Triton's BLS); ``await request.async_exec()`` does the same from an
``async def execute``. A request handed to ``execute`` carries the client's ``request_id()`` and its request
``parameters()`` (JSON; those the server acts on, such as ``priority`` and ``timeout``, left
out). Parameters set on a response (``InferenceResponse(..., parameters={...})``) reach the
client. A decoupled model (``model_transaction_policy { decoupled: true }``) sends its 0..N
responses through ``request.get_response_sender()``, from ``execute`` or from threads it
starts. ``MetricFamily``/``Metric`` are Triton's custom metrics (:mod:`.python_metrics`).
Not provided: GPU tensors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf import json_format

from ..protocol import codec
from ..protocol.caller import ThreadCaller
from ..protocol.errors import Code, InferdError, InvalidArgument
from ..protocol.pb import model_config_pb2 as mc
from ..protocol.streaming import RESPONSE_COMPLETE_FINAL, ResponseChannel
from ..protocol.types import InferRequest, InferResponse, RequestInfo, Scalar
from .python_metrics import CustomMetrics, Metric, MetricFamily

# Triton's response and release flags, under their names.
TRITONSERVER_RESPONSE_COMPLETE_FINAL = RESPONSE_COMPLETE_FINAL
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

_log = logging.getLogger("inferd.python_model")


# --- errors --------------------------------------------------------------------------------
class TritonError(Exception):
    """An error for one response (``InferenceResponse(error=...)``) or, raised from
    ``execute``, for every request of the call."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self._msg = msg
        self._code = code

    def message(self) -> str:
        return self._msg

    def code(self) -> int:
        return self._code


class TritonModelException(TritonError):
    """Raised to fail a call; kept for models written against older Triton releases."""


_TO_CODE = {
    TritonError.NOT_FOUND: Code.NOT_FOUND,
    TritonError.INVALID_ARG: Code.INVALID_ARGUMENT,
    TritonError.UNAVAILABLE: Code.UNAVAILABLE,
    TritonError.UNSUPPORTED: Code.UNIMPLEMENTED,
    TritonError.ALREADY_EXISTS: Code.ALREADY_EXISTS,
    TritonError.CANCELLED: Code.CANCELLED,
}
_FROM_CODE = {v: k for k, v in _TO_CODE.items()}


def to_inferd_error(error: TritonError) -> InferdError:
    return InferdError(error.message(), _TO_CODE.get(error.code(), Code.INTERNAL))


def _from_inferd_error(error: InferdError) -> TritonError:
    return TritonError(error.message, _FROM_CODE.get(error.code, TritonError.INTERNAL))


# --- tensors -------------------------------------------------------------------------------
def triton_string_to_numpy(triton_type_string: str) -> type:
    """``"TYPE_FP32"`` -> ``np.float32``."""
    return codec.from_config_type(triton_type_string).dtype.type  # type: ignore[no-any-return]


def triton_to_numpy_type(data_type: int) -> type:
    """A ``TYPE_*`` number (11 = TYPE_FP32) -> its numpy type."""
    return triton_string_to_numpy(mc.DataType.Name(data_type))


def numpy_to_triton_type(data_type: Any) -> int | None:
    try:
        return mc.DataType.Value(codec.of_array(np.empty(0, dtype=data_type)).config_name)
    except (InferdError, TypeError):
        return None


class Tensor:
    """A named numpy array; ``as_numpy()`` returns the very array it was given."""

    def __init__(self, name: str, numpy_array: Any, triton_dtype: int | None = None) -> None:
        array = np.asarray(numpy_array)
        if triton_dtype is not None:
            array = array.view(triton_to_numpy_type(triton_dtype))
        elif array.dtype.kind in "US":
            array = codec.as_object_array(array)  # BYTES travel as object arrays of bytes
        self._name = name
        self._array = array

    @classmethod
    def _of(cls, name: str, array: np.ndarray) -> Tensor:
        """A request's decoded input, already an array of its wire dtype: nothing to convert."""
        tensor = cls.__new__(cls)
        tensor._name = name
        tensor._array = array
        return tensor

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def triton_dtype(self) -> int | None:
        return numpy_to_triton_type(self._array.dtype)

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        return self._array.__dlpack__()

    @staticmethod
    def from_dlpack(name: str, dlpack_tensor: Any) -> Tensor:
        """From any object with ``__dlpack__`` (a CPU torch tensor, a numpy array, ...)."""
        return Tensor(name, np.from_dlpack(dlpack_tensor))


# --- requests and responses ----------------------------------------------------------------
class InferenceResponse:
    def __init__(
        self,
        output_tensors: Sequence[Tensor] = (),
        error: TritonError | str | None = None,
        parameters: Mapping[str, Any] | str | None = None,
    ) -> None:
        self._tensors = list(output_tensors)
        self._error = TritonError(error) if isinstance(error, str) else error
        if parameters and not isinstance(parameters, str):
            _check_parameters(parameters)
        self._parameters = parameters  # JSON-encoded only when asked for: most never are

    def output_tensors(self) -> list[Tensor]:
        return self._tensors

    def get_output_tensor_by_name(self, name: str) -> Tensor | None:
        return next((t for t in self._tensors if t.name() == name), None)

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        p = self._parameters
        return p if isinstance(p, str) else json.dumps(dict(p or {}))

    def _client_parameters(self) -> dict[str, Scalar]:
        """The parameters as the client receives them (response ``parameters`` on both protocols)."""
        p = self._parameters
        if not p:
            return {}
        if isinstance(p, str):
            p = json.loads(p)
            _check_parameters(p)
        return dict(p)


def _check_parameters(parameters: Mapping[str, Any]) -> None:
    """Triton's check of response parameters (it also takes floats: KServe's double_param)."""
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise TritonError(f"Expect parameters keys to have type str, found type {type(key)}")
        if not isinstance(value, (bool, int, float, str)):
            raise TritonError(f"Expect parameters values to have type bool/int/float/str, found type {type(value)}")


# Triton's request flags, as a sequence model's requests carry them (InferenceRequest.flags()).
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2

# Request parameters the server itself acts on (as Triton does); a model sees the others.
SERVER_PARAMETERS = frozenset(
    {
        "priority",
        "timeout",
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "binary_data_output",
        "triton_enable_empty_final_response",
    }
)


class InferenceRequest:
    """A request handed to ``execute``, or one a model builds to call another model (BLS).

    ``preferred_memory`` and ``trace`` are accepted for source compatibility and ignored.
    """

    # What an incoming request leaves at the defaults (never mutated: _incoming sets only the
    # inputs and outputs, which every execution call builds for each of its requests).
    _model_name = ""
    _model_version = -1
    _flags = 0
    _correlation_id: int | str = 0
    _request_id = ""
    _timeout_us = 0
    _parameters: dict[str, Any] = {}  # noqa: RUF012 (read only)
    _sender: InferenceResponseSender | None = None  # a decoupled request's

    def __init__(
        self,
        model_name: str = "",
        inputs: Sequence[Tensor] = (),
        requested_output_names: Sequence[str] = (),
        model_version: int = -1,
        flags: int = 0,
        correlation_id: int | str = 0,
        request_id: str = "",
        timeout: int = 0,
        parameters: Mapping[str, Any] | str | None = None,
        preferred_memory: Any = None,
        trace: Any = None,
    ) -> None:
        self._model_name = model_name
        self._inputs = {t.name(): t for t in inputs}
        self._outputs = list(requested_output_names)
        self._model_version = model_version
        self._flags = flags
        self._correlation_id = correlation_id
        self._request_id = request_id
        self._timeout_us = timeout
        self._parameters = json.loads(parameters) if isinstance(parameters, str) else dict(parameters or {})

    @classmethod
    def _incoming(
        cls, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], info: RequestInfo | None = None
    ) -> InferenceRequest:
        request = cls.__new__(cls)
        request._inputs = {n: Tensor._of(n, a) for n, a in inputs.items()}
        request._outputs = list(outputs)  # the model may change its copy
        if info is not None:
            request._request_id = info.id
            request._parameters = {k: v for k, v in info.parameters.items() if k not in SERVER_PARAMETERS}
            request._correlation_id = info.correlation_id
            request._flags = info.flags
            if info.responses is not None:
                request._sender = InferenceResponseSender(info.responses, request._outputs)
        return request

    def inputs(self) -> list[Tensor]:
        return list(self._inputs.values())

    def get_input_tensor_by_name(self, name: str) -> Tensor | None:
        return self._inputs.get(name)

    def requested_output_names(self) -> list[str]:
        return self._outputs

    def model_name(self) -> str:
        return self._model_name

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        """The sequence's correlation id (an unsigned integer or a string); 0 outside a sequence."""
        return self._correlation_id

    def flags(self) -> int:
        """The TRITONSERVER_REQUEST_FLAG_SEQUENCE_START / _END bits of a sequence model's request."""
        return self._flags

    def timeout(self) -> int:
        return self._timeout_us

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def is_cancelled(self) -> bool:
        """Whether the client cancelled this request (or went away); decoupled requests only:
        an ordinary request whose client gave up while it waited never reaches ``execute``."""
        return self._sender is not None and self._sender.is_cancelled()

    def get_response_sender(self) -> InferenceResponseSender:
        """Where a decoupled model sends this request's responses (the same sender each call)."""
        if self._sender is None:
            raise TritonError(
                "get_response_sender() is for decoupled models (model_transaction_policy { decoupled: true }); "
                "a model that is not decoupled returns one response per request from execute",
                TritonError.UNSUPPORTED,
            )
        return self._sender

    # --- BLS ---------------------------------------------------------------------------
    def _to_core(self) -> InferRequest:
        if not self._model_name:
            raise TritonError("InferenceRequest.exec() needs a model_name", TritonError.INVALID_ARG)
        return InferRequest(
            model_name=self._model_name,
            inputs={n: t.as_numpy() for n, t in self._inputs.items()},
            model_version="" if self._model_version < 0 else str(self._model_version),
            id=self._request_id,
            outputs=self._outputs or None,
            parameters=self._core_parameters(),
            deadline_ns=time.monotonic_ns() + self._timeout_us * 1000 if self._timeout_us > 0 else None,
        )

    def _core_parameters(self) -> dict[str, bool | int | float | str]:
        params = {k: v for k, v in self._parameters.items() if isinstance(v, (bool, int, float, str))}
        if self._correlation_id != 0 and self._correlation_id != "":  # a call into a sequence model
            params["sequence_id"] = self._correlation_id
            params["sequence_start"] = bool(self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_START)
            params["sequence_end"] = bool(self._flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_END)
        return params

    def exec(self, decoupled: bool = False) -> Any:
        """Run the request on another model and wait: an :class:`InferenceResponse` (with
        ``error()`` set if it failed), or an iterator of them when ``decoupled``."""
        caller = _current_caller()
        try:
            if decoupled:
                return iter([_response(r) for r in caller.submit_stream(self._to_core()).result()])
            return _response(caller.infer(self._to_core()))
        except InferdError as e:
            failed = InferenceResponse(error=_from_inferd_error(e))
            return iter([failed]) if decoupled else failed

    def async_exec(self, decoupled: bool = False) -> Awaitable[Any]:
        """``exec`` for ``async def execute``: ``await`` it, or gather several."""
        caller = _current_caller()

        async def run() -> Any:
            try:
                request = self._to_core()
                if decoupled:
                    responses = await asyncio.wrap_future(caller.submit_stream(request))
                    return iter([_response(r) for r in responses])
                return _response(await asyncio.wrap_future(caller.submit(request)))
            except InferdError as e:
                failed = InferenceResponse(error=_from_inferd_error(e))
                return iter([failed]) if decoupled else failed

        return run()


def _response(r: InferResponse) -> InferenceResponse:
    if r.error is not None:  # an error response of a decoupled model
        return InferenceResponse(error=_from_inferd_error(r.error))
    return InferenceResponse([Tensor(n, a) for n, a in r.outputs.items()], parameters=dict(r.parameters))


class InferenceResponseSender:
    """``request.get_response_sender()`` of a decoupled model: ``send`` 0..N responses, the
    last with ``flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL`` (or the flag alone, with no
    response). Usable from any thread, also after ``execute`` returned. After the final flag
    every ``send`` raises; once the client cancelled (``is_cancelled()``) what is sent is
    dropped, but the final flag is still expected, as in Triton. A sender dropped by the
    model without the final flag ends its request with an error."""

    # Every sender still alive, for tests that check that none leaks.
    _alive: weakref.WeakSet[InferenceResponseSender] = weakref.WeakSet()

    def __init__(self, channel: ResponseChannel, requested_outputs: Sequence[str]) -> None:
        self._channel = channel
        self._requested = frozenset(requested_outputs)
        weakref.finalize(self, _sender_dropped, channel)
        InferenceResponseSender._alive.add(self)

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if flags != TRITONSERVER_RESPONSE_COMPLETE_FINAL and flags != 0:
            raise TritonError("Unable to send response. Unsupported flag provided.")
        if response is None and flags == 0:
            raise TritonError("Inference Response object must be provided when the response flags is set to zero.")
        final = flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            if response is None:
                self._channel.send(None, final=True)
                return
            if not isinstance(response, InferenceResponse):
                raise TritonError(f"Expected an 'InferenceResponse' object, found type '{type(response).__name__}'.")
            error = response._error
            if error is not None:
                self._channel.send(None, error=to_inferd_error(error), final=final)
                return
            # Only what the client asked for, as Triton prunes a response's outputs. Both dicts
            # are new: the channel takes them as they are (this runs once per streamed token).
            requested = self._requested
            outputs = {t._name: t._array for t in response._tensors if t._name in requested}
            parameters = response._client_parameters() if response._parameters else {}
            self._channel.send(outputs, parameters, None, final, True)
        except InferdError as e:
            raise _from_inferd_error(e) from None

    def is_cancelled(self) -> bool:
        """Whether the client cancelled the request or went away (or read it too slowly)."""
        return self._channel.cancelled

    @staticmethod
    def alive() -> int:
        """How many senders exist (tests: none may outlive its request)."""
        return len(InferenceResponseSender._alive)


def _sender_dropped(channel: ResponseChannel) -> None:
    channel.fail(
        InferdError(
            f"{channel.label}: the model released the request's response sender without sending "
            "TRITONSERVER_RESPONSE_COMPLETE_FINAL"
        )
    )


# How BLS calls reach other models, and which server's registry custom metrics join: bound on
# the threads that run a model, with a process-wide fallback for threads a model starts itself.
_local = threading.local()
_fallback_caller: ThreadCaller | None = None
_fallback_metrics: CustomMetrics | None = None


def _bind_caller(caller: ThreadCaller | None, metrics: CustomMetrics | None = None) -> None:
    global _fallback_caller, _fallback_metrics
    _local.caller = caller
    _local.metrics = metrics
    if caller is not None:
        _fallback_caller = caller
    if metrics is not None:
        _fallback_metrics = metrics


def _current_metrics() -> CustomMetrics:
    metrics: CustomMetrics | None = getattr(_local, "metrics", None) or _fallback_metrics
    if metrics is None:
        raise TritonError("custom metrics need a running inferd server", TritonError.UNAVAILABLE)
    return metrics


def _current_caller() -> ThreadCaller:
    caller: ThreadCaller | None = getattr(_local, "caller", None) or _fallback_caller
    if caller is None:
        raise TritonError("calling another model needs a running inferd server", TritonError.UNAVAILABLE)
    return caller


# --- helpers with Triton's names ------------------------------------------------------------
def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    return inference_request.get_input_tensor_by_name(name)


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    return inference_response.get_output_tensor_by_name(name)


def get_input_config_by_name(model_config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return next((t for t in model_config.get("input", []) if t.get("name") == name), None)


def get_output_config_by_name(model_config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return next((t for t in model_config.get("output", []) if t.get("name") == name), None)


def using_decoupled_model_transaction_policy(model_config: Mapping[str, Any]) -> bool:
    """Whether ``model_config`` (the JSON of ``initialize``'s ``args``) is decoupled."""
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


class Logger:
    """``pb_utils.Logger.log_info(...)``: goes to the server's log."""

    @staticmethod
    def log(message: str, level: int = logging.INFO) -> None:
        _log.log(level, message)

    @staticmethod
    def log_info(message: str) -> None:
        _log.info(message)

    @staticmethod
    def log_warn(message: str) -> None:
        _log.warning(message)

    @staticmethod
    def log_error(message: str) -> None:
        _log.error(message)

    @staticmethod
    def log_verbose(message: str) -> None:
        _log.debug(message)


# --- model configuration -------------------------------------------------------------------
def config_from_dict(data: Mapping[str, Any]) -> mc.ModelConfig:
    config = mc.ModelConfig()
    try:
        json_format.ParseDict(data, config)
    except json_format.ParseError as e:
        raise InvalidArgument(f"auto_complete_config produced an invalid configuration: {e}") from None
    return config


class ModelConfig:
    """What ``TritonPythonModel.auto_complete_config(auto_complete_model_config)`` receives and
    returns: the config so far, with methods that add to it but never contradict it."""

    def __init__(self, model_config: Mapping[str, Any]) -> None:
        self._config = dict(model_config)

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        current = self._config.get("max_batch_size", 0)
        if current > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {current}, but auto_complete_config "
                f"for model '{self._config.get('name')}' specified max_batch_size {max_batch_size}"
            )
        self._config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if other in self._config:
                raise ValueError(f"cannot set dynamic_batching: the configuration already sets {other}")
        self._config.setdefault("dynamic_batching", {})

    def set_model_transaction_policy(self, transaction_policy_dict: Mapping[str, Any]) -> None:
        self._config["model_transaction_policy"] = dict(transaction_policy_dict)

    def add_input(self, input: Mapping[str, Any]) -> None:  # noqa: A002 (Triton's name)
        self._add("input", input)

    def add_output(self, output: Mapping[str, Any]) -> None:
        self._add("output", output)

    def _add(self, kind: str, tensor: Mapping[str, Any]) -> None:
        if "name" not in tensor:
            raise ValueError(f"an {kind} added by auto_complete_config needs a 'name'")
        items = self._config.setdefault(kind, [])
        existing = next((t for t in items if t.get("name") == tensor["name"]), None)
        if existing is None:
            items.append(dict(tensor))
            return
        for key, value in tensor.items():
            have = existing.get(key)
            if have in (None, "", [], "TYPE_INVALID"):
                existing[key] = value
            elif key in ("data_type", "dims") and list(np.atleast_1d(have)) != list(np.atleast_1d(value)):
                raise ValueError(
                    f"{kind} '{tensor['name']}': auto_complete_config says {key} {value} but the "
                    f"configuration has {have}"
                )


__all__ = [
    "TRITONSERVER_REQUEST_RELEASE_ALL",
    "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "InferenceRequest",
    "InferenceResponse",
    "InferenceResponseSender",
    "Metric",
    "MetricFamily",
    "Logger",
    "ModelConfig",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "get_input_config_by_name",
    "get_input_tensor_by_name",
    "get_output_config_by_name",
    "get_output_tensor_by_name",
    "numpy_to_triton_type",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
    "using_decoupled_model_transaction_policy",
]
