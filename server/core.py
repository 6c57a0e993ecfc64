"""The protocol-neutral core every front end calls: inference, health, metadata, config,
statistics and the repository. Front ends only translate their wire format to these calls."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Coroutine, Mapping
from contextlib import aclosing
from typing import Any

from google.protobuf import json_format

from ..protocol.errors import InferdError, InvalidArgument, ModelLoadError, NotFound, Unavailable
from ..protocol.pb import model_config_pb2 as mc
from ..protocol.types import (
    InferRequest,
    InferResponse,
    ModelIndexEntry,
    ModelMetadata,
    ServerMetadata,
    TensorMetadata,
)
from . import shm_guard
from .classification import classify
from .config import TensorSpec
from .cuda_shm import CudaRegionStatus
from .log_settings import LogControl, SettingValue
from .manager import ModelManager
from .model import ModelVersion
from .model_files import DEFAULT_MAX_BYTES, check_files
from .repository import check_model_name
from .shm import RegionStatus, SharedMemoryRegistry, write_outputs
from .stats import ModelStats
from .tracing import AnyTrace, Tracer
from .traffic import policy_from_json

SERVER_NAME = "inferd"
SERVER_VERSION = "0.1.0"
# What ServerMetadata advertises, in Triton's order; perf_analyzer reads statistics only when
# "statistics" is listed. Only what inferd implements: the shared-memory extensions are added
# where they can work (server_metadata).
EXTENSIONS = [
    "classification",
    "sequence",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
]
_SHM_AFTER = EXTENSIONS.index("model_configuration") + 1  # where Triton lists them


def _extended(request: InferRequest) -> bool:
    """Whether the model's answer goes through ``InferenceCore._extend``: classification,
    outputs into shared memory, or inputs read from it (the guard's check)."""
    return bool(request.output_regions or request.classification or request.shared_epoch is not None)


class InferenceCore:
    """A thin facade over the model manager for the front ends: the API's operations, their
    argument checks and the server-level answers (readiness, metadata); the lifecycle and the
    request path are the manager's."""

    def __init__(
        self,
        manager: ModelManager,
        strict_readiness: bool = True,
        model_control_mode: str = "explicit",
        shared_memory: SharedMemoryRegistry | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.manager = manager
        self.strict_readiness = strict_readiness
        # Only "explicit" lets clients load and unload models (RepositoryModelLoad/Unload).
        self.model_control_mode = model_control_mode
        # Bound on the 'file:' parameters of one load request (--max-load-file-bytes).
        self.max_load_file_bytes = DEFAULT_MAX_BYTES
        # Clients' system shared memory regions (off unless --allow-client-shm=true); front ends
        # resolve the regions a request names through it.
        self.shared_memory = shared_memory if shared_memory is not None else SharedMemoryRegistry(enabled=False)
        # Trace settings and spans (tracing.py); requests test ``tracer.active`` and nothing
        # else while every trace level is OFF.
        self.tracer = tracer if tracer is not None else Tracer()
        # The log's settings, read and changed through the logging extension (log_settings.py).
        self.logs = LogControl()
        # ServerMetadata's name (Triton's --id).
        self.server_name = SERVER_NAME

    # --- inference ----------------------------------------------------------------------
    # Both hand back the manager's own coroutine or iterator, so the facade adds no frame to
    # every request (unless an output goes into shared memory).
    def infer_stream(self, request: InferRequest) -> AsyncGenerator[InferResponse, None]:
        """Responses for one request as a stream: one item for ordinary models, 0..N for
        decoupled ones. Unary front ends read exactly one item.

        For a decoupled model, ``final`` is True on the response the model sent with the final
        flag (when the model sent the flag alone, no response carries it and the iteration just
        ends: Triton's "empty final response"); a response the model sent as an error has
        ``error`` set (an InferdError) and no outputs, and more may follow. A failure of the
        request as a whole (unknown model, bad input, execute raised, the consumer fell more
        than ``--max-buffered-responses`` behind) is raised, after the responses sent before
        it. Closing the iteration early (``aclose()``, or cancelling the task that iterates)
        cancels the request: the model sees ``is_cancelled()`` and what it sends is dropped."""
        if self.tracer.active:
            return self._stream_traced(request)
        if _extended(request):
            return self._stream_extended(request)
        return self.manager.infer_stream(request)

    def infer(self, request: InferRequest) -> Coroutine[Any, Any, InferResponse]:
        """The unary path: exactly one response (refused for decoupled models)."""
        if self.tracer.active:
            return self._infer_traced(request)
        if _extended(request):
            return self._infer_extended(request)
        return self.manager.infer(request)

    # Tracing on: the request is traced when the tracer samples it (or its caller's trace
    # continues); the span ends with the core's answer.
    def _start_trace(self, request: InferRequest) -> AnyTrace | None:
        trace = self.tracer.start(
            request.model_name, request.model_version, request.id, request.traceparent, request.inputs, request.received
        )
        request.trace = trace
        return trace

    async def _infer_traced(self, request: InferRequest) -> InferResponse:
        trace = self._start_trace(request)
        call = self._infer_extended(request) if _extended(request) else self.manager.infer(request)
        if trace is None:
            return await call
        try:
            response = await call
        except BaseException as e:
            trace.end(error=e.message if isinstance(e, InferdError) else type(e).__name__)
            raise
        trace.end(response.model_version, response.outputs)
        return response

    async def _stream_traced(self, request: InferRequest) -> AsyncGenerator[InferResponse, None]:
        trace = self._start_trace(request)
        stream = self._stream_extended(request) if _extended(request) else self.manager.infer_stream(request)
        version = ""
        try:
            async with aclosing(stream) as responses:
                async for response in responses:
                    version = response.model_version
                    if trace is not None and response.error is None:
                        trace.tensor_outputs(response.outputs)
                    yield response
        except BaseException as e:
            if trace is not None:
                trace.end(version, error=e.message if isinstance(e, InferdError) else type(e).__name__)
            raise
        if trace is not None:
            trace.end(version)

    # Per-output extensions, applied to the model's answer: classification, then shared memory.
    async def _infer_extended(self, request: InferRequest) -> InferResponse:
        return self._extend(request, await self.manager.infer(request))

    async def _stream_extended(self, request: InferRequest) -> AsyncGenerator[InferResponse, None]:
        async with aclosing(self.manager.infer_stream(request)) as responses:
            async for response in responses:
                yield response if response.error is not None else self._extend(request, response)

    def _extend(self, request: InferRequest, response: InferResponse) -> InferResponse:
        if request.classification:
            model = self.manager.get(response.model_name, response.model_version)
            batched = model.signature.max_batch_size > 0
            response.outputs = classify(response.outputs, request.classification, model.labels, batched, model.label)
        if request.output_regions:
            response = write_outputs(response, request.output_regions)
        if request.shared_epoch is not None:  # its regions' bytes were all there (shm_guard.py)
            shm_guard.check(request.shared_epoch, request.shared_regions)
        return response

    # --- system shared memory -------------------------------------------------------------
    def shared_memory_status(self, name: str = "") -> list[RegionStatus]:
        """One region, or all when ``name`` is empty."""
        return self.shared_memory.status(name)

    def register_shared_memory(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.shared_memory.register(name, key, offset, byte_size)

    def unregister_shared_memory(self, name: str = "") -> None:
        """One region, or all when ``name`` is empty."""
        self.shared_memory.unregister(name)

    # --- CUDA shared memory (cuda_shm.py): the same registry, names and switch ----------------
    def cuda_shared_memory_status(self, name: str = "") -> list[CudaRegionStatus]:
        """One region, or all when ``name`` is empty."""
        return self.shared_memory.cuda_status(name)

    def register_cuda_shared_memory(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        """Opens the client's CUDA IPC handle: blocking (CUDA may initialize), so front ends call
        it off the event loop. INVALID_ARGUMENT, saying why, where CUDA is not available."""
        self.shared_memory.register_cuda(name, raw_handle, device_id, byte_size)

    def unregister_cuda_shared_memory(self, name: str = "") -> None:
        """One region, or all when ``name`` is empty."""
        self.shared_memory.unregister_cuda(name)

    # --- health -------------------------------------------------------------------------
    def server_live(self) -> bool:
        return True

    def server_ready(self) -> bool:
        if self.manager.shutting_down:
            return False
        return not self.strict_readiness or self.manager.required_ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.manager.is_ready(name, version)

    # --- metadata -----------------------------------------------------------------------
    def server_metadata(self) -> ServerMetadata:
        extensions = list(EXTENSIONS)
        if self.shared_memory.enabled:
            shared = ["system_shared_memory"] + (["cuda_shared_memory"] if self.shared_memory.cuda_usable() else [])
            extensions[_SHM_AFTER:_SHM_AFTER] = shared
        return ServerMetadata(self.server_name, SERVER_VERSION, extensions)

    # --- logging extension --------------------------------------------------------------
    def log_settings(self) -> dict[str, SettingValue]:
        return self.logs.settings()

    def update_log_settings(self, changes: Mapping[str, object]) -> dict[str, SettingValue]:
        """Change the named log settings (InvalidArgument names a bad one; nothing changes)."""
        return self.logs.update(changes)

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

    # --- trace settings (Triton's trace extension) ---------------------------------------
    def trace_settings(self, model: str = "") -> dict[str, list[str]]:
        if model:
            self.manager.get(model)  # an unknown model is NOT_FOUND, as for its other settings
        return self.tracer.settings(model)

    def update_trace_settings(self, model: str, changes: Mapping[str, list[str] | None]) -> dict[str, list[str]]:
        """``changes``: setting -> its new values, or None to clear it (a model's then follows
        the global setting)."""
        if model:
            self.manager.get(model)
        return self.tracer.update(model, changes)

    # --- repository ---------------------------------------------------------------------
    def repository_index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        return self.manager.index(ready_only)

    async def load_model(
        self, name: str, config_json: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """RepositoryModelLoad: load or reload ``name`` (explicit mode only). ``config_json``
        is a JSON ModelConfig used instead of config.pbtxt, as Triton's ``config`` parameter;
        ``files`` are the request's ``file:<path>`` parameters (decoded), which form the
        model's folder for this load (model_files.py) and need a ``config``."""
        check_model_name(name)
        self._check_explicit()
        checked = None
        if files:
            if not config_json:
                raise InvalidArgument(
                    f"model '{name}': 'file:' parameters need the 'config' parameter too, the configuration of "
                    "the model folder they form"
                )
            checked = check_files(name, files, self.max_load_file_bytes)
        override = None
        if config_json:
            override = mc.ModelConfig()
            try:
                json_format.Parse(config_json, override)
            except json_format.ParseError as e:
                raise InvalidArgument(
                    f"failed to load '{name}': the 'config' parameter is not a valid ModelConfig JSON: {e}"
                ) from None
        try:
            await self.manager.load(name, override, checked)
        except (ModelLoadError, NotFound) as e:
            # Triton's wording first: its clients and examples look for it (a name the
            # repository does not have included), with the code the error had.
            raise type(e)(f"failed to load '{name}': {e.message}", e.code) from None

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        """RepositoryModelUnload (explicit mode only). With ``unload_dependents``, the loaded
        ensembles that use the model are unloaded too, as Triton's parameter of that name does."""
        check_model_name(name)
        self._check_explicit()
        await self.manager.unload(name, unload_dependents)

    # --- rollouts: traffic policies, shadow, drift (rollout.py) ------------------------------
    def traffic(self, name: str) -> dict[str, Any]:
        """The model's traffic policy, live shares, canary, shadow and drift figures."""
        check_model_name(name)
        return self.manager.traffic(name)

    async def set_traffic(self, name: str, doc: Any) -> dict[str, Any]:
        """A new policy as JSON: ``{"weights": {"1": 90, "2": 10}, "sticky": "user", "shadow":
        {"version": "3", "share": 0.5}, "canary": {...}}``; InvalidArgument (and the policy in
        force stays) when it is malformed or points at a version that does not serve."""
        check_model_name(name)
        return await self.manager.set_traffic(name, policy_from_json(doc, f"traffic policy of model '{name}'"))

    async def promote(self, name: str, doc: Any) -> dict[str, Any]:
        """``{"version": "2"[, "bake_s": 600]}``: all traffic to that version; the policy before
        stays the rollback target, its versions loaded for the bake period."""
        check_model_name(name)
        if not isinstance(doc, Mapping) or not isinstance(doc.get("version"), str | int):
            raise InvalidArgument(f"promote model '{name}': the body must be an object with a 'version'")
        version = str(doc["version"]).strip()
        if not (version.isascii() and version.isdigit()) or int(version) < 1:
            raise InvalidArgument(f"promote model '{name}': version '{version}' is not an integer > 0")
        bake = doc.get("bake_s")
        if bake is not None and (isinstance(bake, bool) or not isinstance(bake, int | float) or not 0 <= bake < 1e9):
            raise InvalidArgument(f"promote model '{name}': 'bake_s' must be a number of seconds >= 0")
        return await self.manager.promote(name, int(version), None if bake is None else float(bake))

    async def rollback(self, name: str) -> dict[str, Any]:
        """Back to the policy before the last change (InvalidArgument when there is none)."""
        check_model_name(name)
        return await self.manager.rollback(name)

    def rollouts(self) -> dict[str, dict[str, Any]]:
        """Every model with a traffic policy or drift statistics: its figures, by name."""
        return {name: rollout.figures() for name, rollout in self.manager.rollouts().items()}

    def _check_explicit(self) -> None:
        if self.model_control_mode != "explicit":
            why = "polling is enabled" if self.model_control_mode == "poll" else "model control mode is 'none'"
            raise Unavailable(
                f"explicit model load / unload is not allowed if {why}; "
                "start the server with --model-control-mode=explicit"
            )
