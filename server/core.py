"""The protocol-neutral core every front end calls: inference, health, metadata, config,
statistics and the repository. Front ends only translate their wire format to these calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from google.protobuf import json_format

from ..protocol.errors import InvalidArgument, NotFound, Unavailable
from ..protocol.pb import model_config_pb2 as mc
from ..protocol.types import (
    InferRequest,
    InferResponse,
    ModelIndexEntry,
    ModelMetadata,
    ServerMetadata,
    TensorMetadata,
)
from .config import TensorSpec
from .manager import ModelManager
from .model import ModelVersion
from .repository import check_model_name
from .stats import ModelStats

SERVER_NAME = "inferd"
SERVER_VERSION = "0.1.0"
log = logging.getLogger(__name__)
# What ServerMetadata advertises; perf_analyzer reads statistics only when "statistics" is listed.
# Only what inferd implements (not classification).
EXTENSIONS = [
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "statistics",
    "binary_tensor_data",
    "parameters",
]


class InferenceCore:
    def __init__(
        self, manager: ModelManager, strict_readiness: bool = True, model_control_mode: str = "explicit"
    ) -> None:
        self.manager = manager
        manager.core = self
        self.strict_readiness = strict_readiness
        # Only "explicit" lets clients load and unload models (RepositoryModelLoad/Unload).
        self.model_control_mode = model_control_mode
        self.shutting_down = False
        self._background: set[asyncio.Task[None]] = set()
        # Models strict readiness waits for: those requested at start-up and every model that
        # has been READY since, until it is unloaded. A new model that never loaded does not
        # take the whole server out of rotation; a serving model that breaks does.
        self.required_models: set[str] = set()
        # The event loop the core runs on, for calls from backend threads (infer_blocking).
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- inference ----------------------------------------------------------------------
    async def infer_stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        """Responses for one request as a stream: one item for ordinary models, 0..N for
        decoupled ones. Unary front ends read exactly one item."""
        model = self._model_for(request)
        outputs = await model.infer(request)
        yield InferResponse(model.name, str(model.version), outputs, request.id)

    async def infer(self, request: InferRequest) -> InferResponse:
        """The unary path: exactly one response (refused for decoupled models)."""
        model = self._model_for(request)
        if model.decoupled:
            raise InvalidArgument(
                f"{model.label} is decoupled (0..N responses); use the streaming API (ModelStreamInfer)"
            )
        outputs = await model.infer(request)
        return InferResponse(model.name, str(model.version), outputs, request.id)

    def _model_for(self, request: InferRequest) -> ModelVersion:
        if self.shutting_down:
            raise Unavailable("server is shutting down")
        return self.manager.get(request.model_name, request.model_version)

    def infer_blocking(self, request: InferRequest, timeout: float | None = None) -> InferResponse:
        """Call a model from a backend's worker thread (e.g. a Python model calling another
        model, like Triton's BLS). The call runs on the core's loop through the callee's
        scheduler; never call this from the event loop thread itself."""
        if self.loop is None:
            raise Unavailable("the server core is not running")
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop:  # waiting here for the loop would wait forever
            raise InvalidArgument(
                f"model '{request.model_name}' was called from a model that runs on the event loop "
                '(parameter inline_execution: "true"); a model that calls other models needs '
                'inline_execution "auto" or "false"'
            )
        return asyncio.run_coroutine_threadsafe(self.infer(request), self.loop).result(timeout)

    # --- health -------------------------------------------------------------------------
    def server_live(self) -> bool:
        return True

    def server_ready(self) -> bool:
        if self.shutting_down:
            return False
        if not self.strict_readiness:
            return True
        return all(self.manager.is_ready(name) for name in self.required_models)

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.manager.is_ready(name, version)

    # --- metadata -----------------------------------------------------------------------
    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, SERVER_VERSION, list(EXTENSIONS))

    def model(self, name: str, version: str = "") -> ModelVersion:
        return self.manager.get(name, version)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        model = self.manager.get(name, version)
        sig = model.signature
        batch = [-1] if sig.max_batch_size > 0 else []
        versions = [str(m.version) for m in self.manager.loaded_versions(name)]

        def meta(spec: TensorSpec) -> TensorMetadata:
            return TensorMetadata(spec.name, spec.datatype.name, batch + list(spec.dims))

        return ModelMetadata(
            model.name,
            versions,
            model.platform,
            [meta(s) for s in sig.inputs.values()],
            [meta(s) for s in sig.outputs.values()],
        )

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        return self.manager.get(name, version).config

    def model_statistics(self, name: str = "", version: str = "") -> list[ModelStats]:
        """Statistics of one model (all loaded versions unless ``version``), or of all models."""
        if not name:
            if version:
                raise InvalidArgument("a version needs a model name")
            return [m.stats for n in sorted(self.manager.models) for m in self.manager.loaded_versions(n)]
        if version:
            return [self.manager.get(name, version).stats]
        models = self.manager.loaded_versions(name)
        if not models:
            raise NotFound(f"model '{name}' has no loaded version")
        return [m.stats for m in models]

    # --- repository ---------------------------------------------------------------------
    def repository_index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        return self.manager.index(ready_only)

    async def load_model(self, name: str, config_json: str | None = None) -> None:
        """RepositoryModelLoad: load or reload ``name`` (explicit mode only). ``config_json``
        is a JSON ModelConfig used instead of config.pbtxt, as Triton's ``config`` parameter."""
        check_model_name(name)
        self._check_explicit()
        override = None
        if config_json:
            override = mc.ModelConfig()
            try:
                json_format.Parse(config_json, override)
            except json_format.ParseError as e:
                raise InvalidArgument(
                    f"model '{name}': the 'config' parameter is not a valid ModelConfig JSON: {e}"
                ) from None
        await self.load(name, override)

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        """RepositoryModelUnload (explicit mode only). With ``unload_dependents``, the loaded
        ensembles that use the model are unloaded too, as Triton's parameter of that name does."""
        check_model_name(name)
        self._check_explicit()
        dependents = self.manager.dependents(name) if unload_dependents else []
        await self.unload(name)
        for ensemble in dependents:
            await self.unload(ensemble)

    def _check_explicit(self) -> None:
        if self.model_control_mode != "explicit":
            why = "polling is enabled" if self.model_control_mode == "poll" else "model control mode is 'none'"
            raise Unavailable(
                f"explicit model load / unload is not allowed if {why}; "
                "start the server with --model-control-mode=explicit"
            )

    async def load(self, name: str, override: mc.ModelConfig | None = None) -> None:
        """Load or reload a model in any control mode (start-up, the repository watcher, the API)."""
        if self.shutting_down:
            raise Unavailable("server is shutting down")
        try:
            await self.manager.load(name, override)
        finally:
            if self.manager.is_ready(name):
                self.required_models.add(name)
                self._retry_dependents(name)

    def _retry_dependents(self, name: str) -> None:
        """Load again, in the background, the ensembles that failed because ``name`` was not ready."""
        for ensemble in sorted(self.manager.waiting.pop(name, set())):
            log.info("model '%s' is ready: loading ensemble '%s' again", name, ensemble)
            task = asyncio.get_running_loop().create_task(self.load(ensemble))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            task.add_done_callback(_log_failure)

    async def unload(self, name: str) -> None:
        for ensembles in self.manager.waiting.values():
            ensembles.discard(name)  # unloaded on purpose: not to be retried
        self.required_models.discard(name)
        try:
            await self.manager.unload(name)
        finally:  # a load that finished while this one waited for the model may have re-added it
            self.required_models.discard(name)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (e := task.exception()) is not None:
        log.warning("background load failed: %s", e)
