"""Python models (``backend: "python"``, ``model.py``), in-process, with Triton's contract.

``model.py`` defines ``class TritonPythonModel`` with ``initialize(args)`` (optional),
``execute(requests) -> responses`` (one per request, in order; plain or ``async def``; a
decoupled model returns None and sends through each request's response sender instead),
``finalize()`` (optional) and an optional ``@staticmethod auto_complete_config(config)``.
The API is importable under Triton's name (``import triton_python_backend_utils as pb_utils``)
as well as inferd's, so a Triton model.py needs no change.
Each instance imports its own copy of ``model.py`` by file path under a unique module name,
so instances and versions share no module state. Execution runs on the instance's thread with
the requests' numpy arrays as they are (no copies); see :mod:`inferd.backends.python_api`.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import itertools
import json
import logging
import re
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..protocol.errors import InferdError, Internal, ModelLoadError, Unavailable
from ..protocol.messages import message_to_dict
from ..protocol.pb import model_config_pb2 as mc
from ..protocol.streaming import STREAMED, ResponseChannel
from ..protocol.types import ModelOutputs, RequestInfo
from . import python_api as api
from .base import Backend, LoadContext

log = logging.getLogger(__name__)

MODEL_CLASS = "TritonPythonModel"
TRITON_MODULE = "triton_python_backend_utils"
_serial = itertools.count()


def _where(e: BaseException, path: Path) -> str:
    """The line of model.py an exception came from, to point the model's author at it."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename) == path]
    return f" (model.py line {frames[-1].lineno})" if frames else ""


def provide_triton_module() -> bool:
    """Make ``import triton_python_backend_utils`` (how Triton's model.py files import the API)
    give inferd's :mod:`python_api`, unless this environment has a module of that name of its
    own, which is then left alone. Returns whether the name now means inferd's API."""
    if TRITON_MODULE not in sys.modules:
        if importlib.util.find_spec(TRITON_MODULE) is not None:
            return False
        sys.modules[TRITON_MODULE] = api
    return sys.modules[TRITON_MODULE] is api


def _import(path: Path, module_name: str) -> ModuleType:
    provide_triton_module()
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses, pickle and typing look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"{path}: importing failed: {type(e).__name__}: {e}{_where(e, path)}") from None
    return module


def _model_class(module: ModuleType, path: Path) -> type:
    cls = getattr(module, MODEL_CLASS, None)
    if not isinstance(cls, type):
        raise ModelLoadError(f"{path}: defines no class {MODEL_CLASS}")
    if not callable(getattr(cls, "execute", None)):
        raise ModelLoadError(f"{path}: {MODEL_CLASS} has no execute(requests) method")
    return cls


_AST_LOCK = threading.Lock()


def calls_other_models(path: Path) -> bool:
    """Whether model.py builds InferenceRequests, the only way a Python model calls another
    model (BLS): such a model waits on the server while it runs, so never on the event loop."""
    try:
        source = path.read_bytes()
        # CPython 3.11 keeps ast.parse's recursion count per interpreter: two loads parsing at
        # once (a collection switching threads mid-parse) fail with "AST constructor recursion
        # depth mismatch".
        with _AST_LOCK:
            tree = ast.parse(source)
    except (OSError, SyntaxError, ValueError):
        return True
    for node in ast.walk(tree):
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name == "InferenceRequest":
                return True
    return False


def _module_name(model: str, version: int | str, instance: int | str) -> str:
    safe = re.sub(r"\W", "_", model)
    return f"inferd_model_{safe}_v{version}_{instance}_{next(_serial)}"


class PythonBackend(Backend):
    name = "python"
    platforms = ()
    default_filename = "model.py"
    takes_request_list = True
    inline_safe = True  # narrowed per model once loaded: see __init__

    @classmethod
    def auto_complete_config(cls, config: mc.ModelConfig, model_path: Path) -> None:
        if not config.backend and not config.platform:
            config.backend = "python"
        module = _import(model_path, _module_name(config.name, "autocomplete", 0))
        try:
            hook = getattr(_model_class(module, model_path), "auto_complete_config", None)
            if hook is None:
                return
            try:
                result = hook(api.ModelConfig(message_to_dict(config)))
            except Exception as e:
                raise ModelLoadError(
                    f"{model_path}: auto_complete_config failed: {type(e).__name__}: {e}{_where(e, model_path)}"
                ) from None
            if not isinstance(result, api.ModelConfig):
                raise ModelLoadError(f"{model_path}: auto_complete_config must return the config it was given")
            try:
                config.CopyFrom(api.config_from_dict(result.as_dict()))
            except InferdError as e:
                raise ModelLoadError(f"{model_path}: {e.message}") from None
        finally:
            sys.modules.pop(module.__name__, None)

    def __init__(self, context: LoadContext) -> None:
        self.label = f"model '{context.model_name}' version {context.version}"
        self.model_name = context.model_name
        self.decoupled = context.spec.model_transaction_policy.decoupled
        self.metrics = context.metrics
        if "EXECUTION_ENV_PATH" in context.spec.parameters:
            # Triton starts the model's stub in a packed interpreter; inferd runs every Python
            # model in its own, so the packed packages would silently not be the ones used.
            raise ModelLoadError(
                f"{self.label}: parameter 'EXECUTION_ENV_PATH' (a packed Python environment) is not supported: "
                "inferd runs Python models in its own interpreter; install the model's packages there instead"
            )
        self.path = context.model_path
        self.caller = context.caller
        self.module_name = _module_name(context.model_name, context.version, context.instance.index)
        module = _import(self.path, self.module_name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._background: asyncio.AbstractEventLoop | None = None  # a decoupled async execute's
        try:
            self.model = _model_class(module, self.path)()
            self.is_async = inspect.iscoroutinefunction(self.model.execute)
            # A quick model runs on the loop like any pure computation, unless it may wait on
            # the server: its async execute has a loop of its own, and calls to other models
            # are answered by the loop.
            # A decoupled model may wait in execute, or start threads that send: never inline.
            self.inline_safe = not self.is_async and not self.decoupled and not calls_other_models(self.path)
            initialize = getattr(self.model, "initialize", None)
            if initialize is not None:
                api._bind_caller(self.caller, self.metrics)
                # Triton's arguments: every value is a string, the config is JSON (of the
                # protobuf, so a model sees every field of it, as in Triton).
                initialize(
                    {
                        "model_config": json.dumps(message_to_dict(context.config)),
                        "model_instance_kind": context.instance.kind,
                        "model_instance_name": context.instance.name,
                        "model_instance_device_id": str(context.instance.device_id),
                        "model_repository": str(context.model_dir),
                        "model_version": str(context.version),
                        "model_name": context.model_name,
                    }
                )
        except ModelLoadError:
            sys.modules.pop(self.module_name, None)
            raise
        except Exception as e:
            sys.modules.pop(self.module_name, None)
            raise ModelLoadError(
                f"{self.label}: initialize failed: {type(e).__name__}: {e}{_where(e, self.path)}"
            ) from None

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        result = self.execute_requests([inputs], outputs)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def execute_requests(
        self,
        requests: Sequence[Mapping[str, np.ndarray]],
        outputs: Sequence[str],
        infos: Sequence[RequestInfo | None] | None = None,
    ) -> list[dict[str, np.ndarray] | Exception]:
        api._bind_caller(self.caller, self.metrics)
        if infos is None:
            incoming = [api.InferenceRequest._incoming(r, outputs) for r in requests]
        else:
            incoming = [api.InferenceRequest._incoming(r, outputs, i) for r, i in zip(requests, infos)]
        if self.decoupled:
            return self._execute_decoupled(incoming)
        try:
            responses = self.model.execute(incoming)
            if self.is_async:
                responses = self._run(responses)
        except api.TritonError as e:  # fails every request of the call, with the model's code
            raise api.to_inferd_error(e) from None
        if not isinstance(responses, (list, tuple)):
            raise Internal(
                f"{self.label}: execute() returned {type(responses).__name__}, not a list of InferenceResponse"
            )
        return [self._result(r) for r in responses]

    def _result(self, response: Any) -> dict[str, np.ndarray] | Exception:
        if not isinstance(response, api.InferenceResponse):
            return Internal(
                f"{self.label}: execute() returned a {type(response).__name__} instead of an InferenceResponse"
            )
        error = response.error()
        if error is not None:
            return api.to_inferd_error(error)
        outputs = {t.name(): t.as_numpy() for t in response.output_tensors()}
        if response._parameters:
            try:
                return ModelOutputs(outputs, response._client_parameters())
            except api.TritonError as e:
                return Internal(f"{self.label}: {e.message()}")
        return outputs

    # --- decoupled models -------------------------------------------------------------
    def _execute_decoupled(self, incoming: list[api.InferenceRequest]) -> list[dict[str, np.ndarray] | Exception]:
        """Run execute; the responses go through each request's sender, now or later. What
        execute raises fails every request whose final flag was not sent yet (Triton's rule)."""
        for request in incoming:
            if request._sender is None:  # warmup: nobody reads the responses
                request._sender = api.InferenceResponseSender(ResponseChannel(None, self.model_name, ""), [])
        try:
            returned = self.model.execute(incoming)
            if self.is_async:
                # As Triton: the coroutine runs in the background, execute is done at once.
                future = asyncio.run_coroutine_threadsafe(returned, self._background_loop())
                future.add_done_callback(lambda f: self._async_done(f, incoming))
                return [STREAMED for _ in incoming]
            if returned is not None:
                raise Internal(self._must_return_none())
        except Exception as e:
            failure = self._failure(e)
            for request in incoming:
                if request._sender is not None:
                    request._sender._channel.fail(failure)
            return [failure for _ in incoming]
        return [STREAMED for _ in incoming]

    def _must_return_none(self) -> str:
        return (
            f"Python model '{self.model_name}' is using the decoupled mode and the execute function must return None."
        )

    def _failure(self, e: BaseException) -> InferdError:
        if isinstance(e, api.TritonError):
            error = api.to_inferd_error(e)
            return InferdError(
                f"Failed to process the request(s) for model '{self.model_name}', message: {error.message}", error.code
            )
        detail = e.message if isinstance(e, InferdError) else f"{type(e).__name__}: {e}{_where(e, self.path)}"
        return Internal(f"Failed to process the request(s) for model '{self.model_name}', message: {detail}")

    def _async_done(self, future: Any, incoming: list[api.InferenceRequest]) -> None:
        error: InferdError | None = None
        if future.cancelled():
            error = Unavailable(f"{self.label} was unloaded while the request ran")
        elif (e := future.exception()) is not None:
            error = self._failure(e)
        elif future.result() is not None:
            error = Internal(self._must_return_none())
        if error is not None:
            for request in incoming:
                if request._sender is not None:
                    request._sender._channel.fail(error)

    def _background_loop(self) -> asyncio.AbstractEventLoop:
        """The loop a decoupled async execute runs on: its own thread, started on first use."""
        if self._background is None:
            loop = asyncio.new_event_loop()
            caller, metrics = self.caller, self.metrics

            def run() -> None:
                api._bind_caller(caller, metrics)
                asyncio.set_event_loop(loop)
                loop.run_forever()

            threading.Thread(target=run, name=f"{self.module_name}-async", daemon=True).start()
            self._background = loop
        return self._background

    def _run(self, coroutine: Any) -> Any:
        # An async execute gets a loop of its own on the instance thread, where async_exec's
        # awaits resolve while the server's loop runs the called models.
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coroutine)

    def unload(self) -> None:
        finalize = getattr(self.model, "finalize", None)
        try:
            if finalize is not None:
                finalize()
        except Exception:
            log.exception("%s: finalize failed", self.label)
        finally:
            if self._loop is not None:
                self._loop.close()
            if self._background is not None:
                self._background.call_soon_threadsafe(self._background.stop)
            sys.modules.pop(self.module_name, None)
