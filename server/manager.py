"""Model lifecycle and the request path: which versions are loaded, their states and reasons,
swapping them, and running a request on the version it names.

A load plans the model (config, auto-complete, version policy) and fingerprints every selected
version (completed config + files). Versions whose fingerprint is unchanged keep serving
untouched; new and changed ones are loaded and warmed up next to the serving ones. Then, in one
step with no ``await`` in between (so atomic for requests on the event loop), traffic moves to
them and versions that left the policy stop taking requests; replaced versions are drained and
unloaded in the background. If any version fails while the model is serving, nothing moves:
the serving versions stay as they were and the index shows why.

An ensemble loads the composing models that are not ready first, and one that failed for want
of a composing model is loaded again once that model is ready, so fixing a step heals its
ensembles (as Triton reloads dependents). The manager is also the ``ModelCaller`` that
ensembles and Python models get at load to call other models, so their calls take the same
path as the front ends' requests.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..backends.python_metrics import CustomMetrics
from ..backends.registry import platform_of
from ..protocol.caller import ThreadCaller
from ..protocol.errors import (
    InferdError,
    InvalidArgument,
    ModelLoadError,
    NotFound,
    Unavailable,
    Unimplemented,
    internal_error,
)
from ..protocol.pb import model_config_pb2 as mc
from ..protocol.streaming import DEFAULT_BUFFERED_RESPONSES
from ..protocol.types import InferRequest, InferResponse, ModelIndexEntry
from .cache import ResponseCache, version_cache
from .ensemble import check_types, decoupled_layout, ensemble_scheduler
from .loader import LoadLimits, LoadOptions, ModelPlan, describe_instances, load_workers, plan_model
from .model import ModelVersion
from .model_files import ModelFolders
from .repository import Repository, check_model_name
from .rollout import Rollout, RolloutConfig, plan_rollout, tapped
from .scheduling import make_scheduler
from .scheduling.worker import InstanceWorker
from .stats import ModelStats, Observer
from .traffic import Router, TrafficPolicy
from .warmup import build_samples, run_samples

log = logging.getLogger(__name__)

UNKNOWN, LOADING, READY, UNLOADING, UNAVAILABLE = "UNKNOWN", "LOADING", "READY", "UNLOADING", "UNAVAILABLE"
# Triton's clients and examples look for this wording at the start of lookup errors.
UNKNOWN_MODEL = "Request for unknown model: "
UNLOADED = "unloaded"  # Triton's reason for a version that was unloaded on purpose
DRAIN_TIMEOUT_S = 30.0
# The ensembles whose load led to the current one: an ensemble that (through others) contains
# itself fails instead of waiting for its own lock forever.
_ENSEMBLE_CHAIN: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("ensemble_chain", default=())


@dataclass
class VersionSlot:
    state: str = UNKNOWN
    reason: str = ""
    model: ModelVersion | None = None  # set exactly while the version takes traffic (READY)
    fingerprint: str = ""  # of what ``model`` was loaded from


@dataclass
class ModelRecord:
    name: str
    state: str = UNKNOWN  # model-level state, shown while no version can be listed
    reason: str = ""
    config: mc.ModelConfig | None = None
    versions: dict[int, VersionSlot] = field(default_factory=dict)
    load_seconds: float = 0.0
    files_root: Path | None = None  # the private folder of a load from 'file:' parameters
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Set while a traffic policy routes the requests that name no version (rollout.py).
    traffic: Router | None = None
    rollout: Rollout | None = None  # set while the model has a policy or drift statistics

    def serving(self) -> list[int]:
        return [v for v, s in self.versions.items() if s.model is not None]


class ModelManager:
    def __init__(
        self,
        repository: Repository,
        observers: list[Observer] | None = None,
        instance_nice: int = 0,
        limits: LoadLimits = LoadLimits(),
        response_cache: ResponseCache | None = None,
    ) -> None:
        self.repository = repository
        self.response_cache = response_cache  # the server's (--cache-config), shared by all models
        self.instance_nice = instance_nice
        self.limits = limits
        self.models: dict[str, ModelRecord] = {}
        self.model_folders = ModelFolders()  # models loaded from files sent with the request
        self.observers = observers if observers is not None else []
        # Composing model -> ensembles whose load failed for want of it, loaded again once it is ready.
        self._waiting: dict[str, set[str]] = {}
        # Models strict readiness waits for: those requested at start-up and every model that
        # has been READY since, until it is unloaded. A new model that never loaded does not
        # take the whole server out of rotation; a serving model that breaks does.
        self._required: set[str] = set()
        # Until the start-up's models are known (require), the server is not ready: a client
        # polling readiness as soon as the port opens must not see an empty set as all ready.
        self._requirements_known = False
        self._loads: set[asyncio.Task[None]] = set()
        self._reloads: set[asyncio.Task[None]] = set()
        self._drains: set[asyncio.Task[None]] = set()
        self._shutting_down = False
        # Responses of one decoupled request that may wait for a slow consumer (--max-buffered-responses).
        self.max_buffered_responses = DEFAULT_BUFFERED_RESPONSES
        # Custom metrics of Python models (pb_utils.MetricFamily), read by the metrics endpoint.
        self.custom_metrics = CustomMetrics()
        # How models are planned (--model-config-name, auto-complete, --backend-config).
        self.load_options = LoadOptions()
        # Model loads that may read and build models at once (--model-load-thread-count).
        self.load_slots = asyncio.Semaphore(4)

    # --- the request path -----------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        """The unary path: exactly one response (refused for decoupled models)."""
        model = self._model_for(request)
        if model.decoupled:
            # Triton's wording (UNSUPPORTED there too), protocol-neutral.
            raise Unimplemented(
                f"inference without streaming doesn't support models with decoupled transaction policy: "
                f"{model.label} sends 0..N responses per request; use the streaming API (gRPC ModelStreamInfer)"
            )
        return _response(model, await _outputs(model, request), request.id)

    def infer_stream(self, request: InferRequest) -> AsyncGenerator[InferResponse, None]:
        """Responses for one request as a stream: one item for ordinary models, 0..N for
        decoupled ones (see ``ModelVersion.infer_decoupled``: ``final`` and ``error`` on each
        response, at most ``max_buffered_responses`` waiting for a slow consumer). Unary front
        ends read exactly one item. Closing the iteration early cancels the request. A request
        refused before it reaches a model raises at the first iteration."""
        try:
            model = self._model_for(request)
        except InferdError as e:
            return _raising(e)
        if model.decoupled:
            # The model's own generator: no frame of ours on every streamed response.
            return model.infer_decoupled(request, self.max_buffered_responses)
        return _one(model, request)

    def _model_for(self, request: InferRequest) -> ModelVersion:
        if self._shutting_down:
            raise Unavailable("server is shutting down")
        return self.get(request.model_name, request.model_version, request)

    # --- lookup -------------------------------------------------------------------------
    def get(self, name: str, version: str = "", request: InferRequest | None = None) -> ModelVersion:
        """The version ``version`` names; without one, the version the model's traffic policy
        picks for ``request`` (its heaviest version for lookups without a request), or else
        the newest serving version."""
        record = self.models.get(name)
        if record is None:
            raise NotFound(f"{UNKNOWN_MODEL}'{name}' is not found")
        if version:
            if not (version.isascii() and version.isdigit()):
                raise InvalidArgument(  # Triton's wording first: its examples check it
                    f"failed to get model version from specified version string '{version}', "
                    f"version should be an integral value > 0 (model '{name}')"
                )
            slot = record.versions.get(int(version))
            if slot is None:
                raise NotFound(f"{UNKNOWN_MODEL}'{name}' version {version} is not found")
            if slot.model is None:
                raise Unavailable(
                    f"{UNKNOWN_MODEL}'{name}' version {version} is not at ready state: {slot.state} {slot.reason}".rstrip()
                )
            return slot.model
        if record.traffic is not None:
            routed = record.versions.get(record.traffic.pick(request))
            if routed is not None and routed.model is not None:
                return routed.model
        if len(record.versions) == 1:  # the usual case, without building the serving list
            (slot,) = record.versions.values()
            if slot.model is not None:
                return slot.model
        serving = record.serving()
        if not serving:
            why = record.reason or "; ".join(
                f"version {v}: {s.state} {s.reason}".rstrip() for v, s in sorted(record.versions.items())
            )
            raise Unavailable(
                f"{UNKNOWN_MODEL}'{name}' has no available versions; it is not ready" + (f": {why}" if why else "")
            )
        return record.versions[max(serving)].model  # type: ignore[return-value]

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            model = self.get(name, version)
        except InferdError:
            return False
        return self.missing_dependency(model) is None

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def required_ready(self) -> bool:
        """Whether every model strict readiness waits for is ready."""
        return self._requirements_known and all(self.is_ready(name) for name in self._required)

    def missing_dependency(self, model: ModelVersion) -> str | None:
        """Why an ensemble cannot serve (a composing model is not ready), or None."""
        for dep, dep_version in model.dependencies:
            if not self.is_ready(dep, dep_version):
                which = f"'{dep}'" + (f" version {dep_version}" if dep_version else "")
                return f"composing model {which} is not ready"
        return None

    def index(self, ready_only: bool = False, names: list[str] | None = None) -> list[ModelIndexEntry]:
        """Every model of the repository or the manager; ``names`` is the repository's listing
        when the caller already has it (it is read here otherwise)."""
        entries: list[ModelIndexEntry] = []
        listed = self.repository.model_names() if names is None else names
        for name in sorted(set(listed) | set(self.models)):
            record = self.models.get(name)
            if record is None:  # in the repository, never loaded: Triton lists the name only
                if not ready_only:
                    entries.append(ModelIndexEntry(name, "", "", ""))
                continue
            serving = record.serving()
            if not ready_only and (not record.versions or (record.reason and not serving)):
                entries.append(ModelIndexEntry(name, "", record.state, record.reason))
            notes = _traffic_notes(record)
            for v, slot in sorted(record.versions.items()):
                state, reason = slot.state, slot.reason
                if slot.model is not None and (missing := self.missing_dependency(slot.model)):
                    state, reason = UNAVAILABLE, missing
                elif state == READY and v in notes:
                    reason = f"{reason}; {notes[v]}" if reason else notes[v]
                if not ready_only or state == READY:
                    entries.append(ModelIndexEntry(name, str(v), state, reason))
        return entries

    def dependents(self, name: str) -> list[str]:
        """Loaded ensembles that call ``name`` in a step, directly or through other ensembles."""
        found: list[str] = []
        todo = [name]
        while todo:
            current = todo.pop()
            for other, record in self.models.items():
                if other in found or other == name:
                    continue
                if any(current == dep for s in record.versions.values() if s.model for dep, _ in s.model.dependencies):
                    found.append(other)
                    todo.append(other)
        return found

    def loaded_versions(self, name: str) -> list[ModelVersion]:
        record = self.models.get(name)
        if record is None:
            raise NotFound(f"{UNKNOWN_MODEL}'{name}' is not found")
        return [s.model for _, s in sorted(record.versions.items()) if s.model is not None]

    # --- lifecycle ----------------------------------------------------------------------
    async def settle(self) -> None:
        """Wait for every load in progress and the ensemble reloads they set off (an ensemble
        that failed for want of a composing model loads again once that model is ready)."""
        while self._loads or self._reloads:
            await asyncio.gather(*self._loads, *self._reloads, return_exceptions=True)

    def require(self, names: Iterable[str]) -> None:
        """Make strict readiness wait for ``names`` (the models requested at start-up)."""
        self._required.update(names)
        self._requirements_known = True

    async def load(
        self, name: str, override: mc.ModelConfig | None = None, files: Mapping[PurePosixPath, bytes] | None = None
    ) -> None:
        """Load (or reload) every version the policy selects; raises ModelLoadError on failure.
        ``files`` (checked by model_files.check_files) are the model's folder for this load,
        instead of the repository's.

        On failure the versions that were serving keep serving. The load itself is shielded:
        a caller that goes away (a cancelled RPC) does not abandon half-loaded instances."""
        check_model_name(name)
        if self._shutting_down:
            raise Unavailable("server is shutting down")
        if name not in self.models and files is None:
            self.repository.model_dirs(name)  # unknown names leave no record behind
        task = asyncio.get_running_loop().create_task(self._load_and_follow_up(name, override, files))
        self._loads.add(task)
        task.add_done_callback(_settled)
        task.add_done_callback(self._loads.discard)
        await asyncio.shield(task)

    async def _load_and_follow_up(
        self, name: str, override: mc.ModelConfig | None, files: Mapping[PurePosixPath, bytes] | None
    ) -> None:
        try:
            await self._load(name, override, files)
        finally:
            if self.is_ready(name):
                self._required.add(name)
                self._reload_waiting(name)

    def _reload_waiting(self, name: str) -> None:
        """Load again, in the background, the ensembles that failed because ``name`` was not ready."""
        for ensemble in sorted(self._waiting.pop(name, set())):
            log.info("model '%s' is ready: loading ensemble '%s' again", name, ensemble)
            task = asyncio.get_running_loop().create_task(self.load(ensemble))
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)
            task.add_done_callback(_log_failure)

    async def _load(
        self, name: str, override: mc.ModelConfig | None, files: Mapping[PurePosixPath, bytes] | None = None
    ) -> None:
        record = self.models.setdefault(name, ModelRecord(name))
        async with record.lock:
            started = time.monotonic()
            if not record.serving():
                record.state, record.reason = LOADING, ""
            loop = asyncio.get_running_loop()
            repository, files_root = self.repository, None
            try:
                if files is not None:
                    files_root = await loop.run_in_executor(None, self.model_folders.write, name, files)
                    repository = Repository(files_root)
                async with self.load_slots:
                    plan = await loop.run_in_executor(None, plan_model, repository, name, override, self.load_options)
                rollout = await loop.run_in_executor(None, plan_rollout, name, plan.spec.parameters, plan.model_dir)
                self._check_protected(record, plan.versions)
                planned = time.monotonic() - started  # shared by the versions: part of each one's time
            except Exception as e:
                if files_root is not None:
                    self.model_folders.remove(files_root)
                error = _as_load_error(e, f"model '{name}'")
                self._plan_failed(record, error.message)
                raise error from None
            for warning in plan.warnings:
                log.warning("model '%s': %s", name, warning)
            errors = dict(plan.failed)
            for v in errors:
                record.versions.setdefault(v, VersionSlot())
                log.error("failed to load model '%s' version %d: %s", name, v, errors[v])
            todo = [
                v
                for v in plan.versions
                if v not in errors and not _unchanged(record.versions.get(v), plan.fingerprints[v])
            ]
            loaded: dict[int, ModelVersion] = {}
            seconds: dict[int, float] = {}
            for v in todo:
                slot = record.versions.setdefault(v, VersionSlot())
                if slot.model is None:
                    slot.state, slot.reason = LOADING, ""
                version_started = time.monotonic()
                try:
                    loaded[v] = await self._load_version(plan, v)
                except Exception as e:
                    errors[v] = _as_load_error(e, f"model '{name}' version {v}").message
                    log.error("failed to load model '%s' version %d: %s", name, v, errors[v])
                seconds[v] = planned + time.monotonic() - version_started
            if errors and record.serving():
                self._keep_serving(record, plan, loaded, errors)
                if files_root is not None:
                    self.model_folders.remove(files_root)
            else:
                self._commit(record, plan, loaded, errors)
                self._configure_rollout(record, rollout)
                # The folder of the load now in service; the one before it serves no more.
                if record.files_root is not None and record.files_root != files_root:
                    self.model_folders.remove(record.files_root)
                record.files_root = files_root
                if loaded or not errors:
                    _log_loaded(record, plan, loaded, seconds)
            record.load_seconds = time.monotonic() - started
            if errors:
                raise ModelLoadError("; ".join(f"version {v}: {m}" for v, m in sorted(errors.items())))

    def _check_protected(self, record: ModelRecord, versions: list[int]) -> None:
        """Refuse a reload that would unload a version the traffic policy points at (or, during
        the bake period, one the policy before it pointed at)."""
        rollout = record.rollout
        if rollout is None:
            return
        dropped = sorted(v for v in rollout.protected() if v not in versions and v in record.serving())
        if not dropped:
            return
        policy = rollout.policy
        in_policy = policy is not None and any(v in policy.pointed_at() for v in dropped)
        if not in_policy:
            rollout.reload_refused = True  # tried again when the bake period ends
        which = ", ".join(map(str, dropped))
        if in_policy and policy is not None:
            why = f"its traffic policy ({policy.describe()}) points at it"
        else:
            why = f"the bake period keeps the previous policy's versions loaded {rollout.bake_remaining():.0f} s more"
        raise ModelLoadError(
            f"reload refused: it would unload version {which} of model '{record.name}', and {why}; change the "
            f"traffic policy first (POST /v2/models/{record.name}/traffic)"
        )

    def _configure_rollout(self, record: ModelRecord, config: RolloutConfig) -> None:
        """Apply the config's rollout parameters after a committed load."""
        if record.rollout is None:
            if config.empty:
                return
            record.rollout = self._new_rollout(record)
        record.rollout.configure(config)
        self._retap(record)

    def _new_rollout(self, record: ModelRecord) -> Rollout:
        name = record.name

        def reload() -> None:
            task = asyncio.get_running_loop().create_task(self.load(name))
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)
            task.add_done_callback(_log_failure)

        return Rollout(
            name,
            lambda: sorted(record.serving()),
            lambda model, version: self.get(model, str(version)),
            lambda: self._retap(record),
            reload,
        )

    def _retap(self, record: ModelRecord) -> None:
        """Point the request path at the rollout's router and taps (or at nothing)."""
        rollout = record.rollout
        record.traffic = rollout.router if rollout is not None else None
        for v, slot in record.versions.items():
            if slot.model is not None:
                slot.model.tap = rollout.tap(v) if rollout is not None else None

    # --- traffic policies (rollout.py) ----------------------------------------------------
    def _rollout_of(self, name: str) -> Rollout:
        record = self.models.get(name)
        if record is None or not record.serving():
            raise NotFound(f"{UNKNOWN_MODEL}'{name}' is not loaded")
        if record.rollout is None:
            record.rollout = self._new_rollout(record)
        return record.rollout

    def traffic(self, name: str) -> dict[str, Any]:
        """The model's policy, live shares, canary, shadow, drift and recent events."""
        record = self.models.get(name)
        if record is None or not record.serving():
            raise NotFound(f"{UNKNOWN_MODEL}'{name}' is not loaded")
        serving = [str(v) for v in sorted(record.serving())]
        if record.rollout is None:
            return {"model": name, "policy": None, "effective": "", "serving": serving}
        return {**record.rollout.figures(), "serving": serving}

    async def set_traffic(self, name: str, policy: TrafficPolicy) -> dict[str, Any]:
        """Put ``policy`` in force (InvalidArgument, nothing changed, when it does not fit)."""
        rollout = self._rollout_of(name)
        async with self.models[name].lock:  # not while a reload changes the serving versions
            rollout.set_policy(policy, "set over the API")
        return self.traffic(name)

    async def promote(self, name: str, version: int, bake_s: float | None = None) -> dict[str, Any]:
        """All traffic to ``version``; the policy before stays the rollback target."""
        rollout = self._rollout_of(name)
        async with self.models[name].lock:
            rollout.promote(version, bake_s)
        return self.traffic(name)

    async def rollback(self, name: str) -> dict[str, Any]:
        """Back to the policy before the last change."""
        rollout = self._rollout_of(name)
        async with self.models[name].lock:
            rollout.rollback()
        return self.traffic(name)

    def rollouts(self) -> dict[str, Rollout]:
        """The models that have a rollout, by name."""
        return {n: r.rollout for n, r in sorted(self.models.items()) if r.rollout is not None}

    def _plan_failed(self, record: ModelRecord, message: str) -> None:
        log.error("failed to load model '%s': %s", record.name, message)
        serving = record.serving()
        if not serving:
            record.state, record.reason = UNAVAILABLE, message
            return
        for v in serving:
            record.versions[v].reason = f"reload failed, still serving the previous load: {message}"

    def _keep_serving(
        self, record: ModelRecord, plan: ModelPlan, loaded: dict[int, ModelVersion], errors: dict[int, str]
    ) -> None:
        """A load failed while the model serves: discard what did load and change no routing."""
        for model in loaded.values():
            self._retire(model)  # never routed: closes at once
        failed = ", ".join(str(v) for v in sorted(errors))
        for v, slot in record.versions.items():
            if v in loaded and slot.model is None:
                slot.state, slot.reason = UNAVAILABLE, f"loaded but not put in service: version {failed} failed"
            elif v in errors:
                if slot.model is None:
                    slot.state, slot.reason = UNAVAILABLE, errors[v]
                else:
                    slot.reason = f"reload failed, still serving the previous load: {errors[v]}"
            elif slot.model is not None:
                slot.reason = f"kept as it was: version {failed} failed to load"
        for v in [v for v, s in record.versions.items() if v not in plan.versions and s.model is None]:
            self._unload_slot(record, v)  # failed earlier and left the policy since: drop it

    def _commit(
        self, record: ModelRecord, plan: ModelPlan, loaded: dict[int, ModelVersion], errors: dict[int, str]
    ) -> None:
        """Move traffic; runs without awaiting, so no request sees a half-applied change."""
        notes = "; ".join(plan.warnings)  # fields accepted with a warning, shown beside READY
        for v, model in loaded.items():
            slot = record.versions[v]
            old, slot.model = slot.model, model  # traffic moves here
            slot.state, slot.reason, slot.fingerprint = READY, notes, plan.fingerprints[v]
            if old is not None:
                self._retire(old)
        for v, message in errors.items():
            record.versions[v].state, record.versions[v].reason = UNAVAILABLE, message
        for v in plan.versions:
            if v not in loaded and v not in errors:
                record.versions[v].reason = notes  # unchanged and serving
        for v in [v for v in record.versions if v not in plan.versions]:
            self._unload_slot(record, v)
        record.config = plan.config
        record.state = READY if record.serving() else UNAVAILABLE
        record.reason = ""  # the versions carry their own reasons

    async def _load_version(self, plan: ModelPlan, version: int) -> ModelVersion:
        # Before anything loads: models that cannot use the cache and ask for it are refused.
        cache = version_cache(plan.spec, plan.config, self.response_cache, f"model '{plan.name}' version {version}")
        if plan.ensemble is not None:
            ensemble = await self._load_ensemble(plan, version)
            ensemble.cache = cache
            return ensemble
        assert plan.backend is not None
        loop = asyncio.get_running_loop()
        # Python models call other models from their instance threads, through this loop.
        caller = ThreadCaller(self, loop)
        async with self.load_slots:
            workers = await loop.run_in_executor(
                None,
                load_workers,
                plan.repository,
                plan,
                version,
                caller,
                self.instance_nice,
                self.limits,
                self.custom_metrics,
            )
        label = f"model '{plan.name}' version {version}"
        try:
            if plan.config.model_warmup:
                samples = await loop.run_in_executor(
                    None,
                    build_samples,
                    plan.repository,
                    plan.model_dir,
                    plan.config,
                    plan.signature,
                    label,
                    len(workers),
                    plan.spec.sequence_batching,
                )
                seconds = await run_samples(workers, samples, label)
                log.debug("%s: warmup (%d sample(s)) took %.3fs", label, len(samples), seconds)
        except BaseException:
            await loop.run_in_executor(None, _close, workers)
            raise
        stats = ModelStats(plan.name, str(version), self.observers, plan.histogram_buckets)
        scheduler = make_scheduler(plan.spec, workers, stats, label, plan.model_dir)
        platform = plan.spec.platform or platform_of(plan.backend_name)
        return ModelVersion(
            plan.name,
            version,
            plan.config,
            plan.spec,
            plan.signature,
            platform,
            scheduler,
            stats,
            cache=cache,
            labels=plan.labels,
        )

    async def _load_ensemble(self, plan: ModelPlan, version: int) -> ModelVersion:
        """Load the composing models that are not ready (in every control mode: an ensemble
        is useless without them), check the DAG's types against them, then route."""
        assert plan.ensemble is not None
        label = f"model '{plan.name}' version {version}"
        chain = _ENSEMBLE_CHAIN.get() + (plan.name,)
        token = _ENSEMBLE_CHAIN.set(chain)
        try:
            for dep in plan.ensemble.dependencies:
                if dep in chain:
                    raise ModelLoadError(f"{label}: ensembles contain each other: {' -> '.join(chain + (dep,))}")
                if self.is_ready(dep):
                    continue
                try:
                    await self.load(dep)
                except InferdError as e:
                    self._waiting.setdefault(dep, set()).add(plan.name)
                    raise ModelLoadError(f"{label}: composing model '{dep}' is not ready: {e.message}") from None
        finally:
            _ENSEMBLE_CHAIN.reset(token)

        def signature_of(step):  # type: ignore[no-untyped-def]
            try:
                return self.get(step.model_name, step.model_version).signature
            except InferdError as e:
                raise ModelLoadError(f"{label}: {step.label}: {e.message}") from None

        check_types(plan.config, plan.ensemble, plan.signature, signature_of, label)
        layout = decoupled_layout(
            plan.config, plan.ensemble, lambda s: self.get(s.model_name, s.model_version).decoupled, label
        )
        stats = ModelStats(plan.name, str(version), self.observers, plan.histogram_buckets)
        scheduler = ensemble_scheduler(plan.ensemble, self, stats, label, layout)
        deps = sorted({(s.model_name, s.model_version) for s in plan.ensemble.steps})
        # As Triton: an output without labels of its own takes those of the step making it.
        labels = dict(plan.labels)
        for step in plan.ensemble.steps:
            for step_output, tensor in step.outputs.items():
                if tensor in plan.signature.outputs and tensor not in labels:
                    found = self.get(step.model_name, step.model_version).labels.get(step_output)
                    if found:
                        labels[tensor] = found
        return ModelVersion(
            plan.name,
            version,
            plan.config,
            plan.spec,
            plan.signature,
            "ensemble",
            scheduler,
            stats,
            deps,
            labels=labels,
            decoupled=layout is not None,  # as in Triton: an ensemble with a decoupled step is decoupled
        )

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        """Stop routing to every version of ``name`` and wait (up to the drain timeout) until
        their requests finished and their memory is released. Unloading a model that is not
        loaded succeeds, as in Triton. With ``unload_dependents``, the loaded ensembles that use
        the model are unloaded too, as Triton's parameter of that name does."""
        check_model_name(name)
        dependents = self.dependents(name) if unload_dependents else []
        await self._unload(name)
        for ensemble in dependents:
            await self._unload(ensemble)

    async def _unload(self, name: str) -> None:
        for ensembles in self._waiting.values():
            ensembles.discard(name)  # unloaded on purpose: not to be loaded again
        self._required.discard(name)
        try:
            await self._unload_versions(name)
        finally:  # a load that finished while this one waited for the model may have re-added it
            self._required.discard(name)

    async def _unload_versions(self, name: str) -> None:
        record = self.models.get(name)
        if record is None:
            self.repository.model_dirs(name)  # NotFound for names the repository does not have
            return
        async with record.lock:
            if record.rollout is not None:  # unloaded on purpose: its policy goes with it
                record.rollout.close()
                record.rollout = None
                record.traffic = None
            drains = [t for v in list(record.versions) if (t := self._unload_slot(record, v)) is not None]
            record.state = UNAVAILABLE
            record.reason = "" if record.versions else UNLOADED
            record.config = None
            files_root, record.files_root = record.files_root, None
        if drains:  # outside the lock: a new load of the model need not wait for the drain
            await asyncio.gather(*drains, return_exceptions=True)
        if files_root is not None:
            self.model_folders.remove(files_root)

    def _unload_slot(self, record: ModelRecord, version: int) -> asyncio.Task[None] | None:
        slot = record.versions[version]
        if slot.model is None:
            if slot.state != UNLOADING and slot.reason != UNLOADED:
                del record.versions[version]  # never served: nothing to unload or show
            return None
        model, slot.model = slot.model, None  # no new request reaches it from here on
        slot.state, slot.reason, slot.fingerprint = UNLOADING, "", ""

        def unloaded() -> None:
            if slot.model is None and slot.state == UNLOADING:
                slot.state, slot.reason = UNAVAILABLE, UNLOADED

        return self._retire(model, unloaded)

    def _retire(self, model: ModelVersion, then: Callable[[], None] | None = None) -> asyncio.Task[None]:
        """Drain and close a version that no longer takes new traffic, in the background."""
        if model.cache is not None:
            model.cache.close()  # its cached answers go now; requests still running store nothing

        async def drain() -> None:
            try:
                if not await model.scheduler.retire(DRAIN_TIMEOUT_S):
                    log.warning("%s: requests still running after %.0fs; closed anyway", model.label, DRAIN_TIMEOUT_S)
                log.info("%s unloaded", model.label)
            except Exception:  # a backend failing to release must not wedge the slot in UNLOADING
                log.exception("%s: unloading failed", model.label)
            finally:
                if then is not None:
                    then()

        task = asyncio.get_running_loop().create_task(drain())
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        return task

    def begin_shutdown(self) -> None:
        """Refuse new requests and loads from now on; ``close`` then unloads everything."""
        self._shutting_down = True

    async def close(self) -> None:
        """Finish loads in progress, then unload everything and wait for the drains."""
        self._shutting_down = True
        if self._loads:
            await asyncio.gather(*list(self._loads), return_exceptions=True)
        for name in list(self.models):
            await self.unload(name)
        if self._drains:
            await asyncio.gather(*list(self._drains), return_exceptions=True)
        self.model_folders.close()


def _log_loaded(
    record: ModelRecord, plan: ModelPlan, loaded: dict[int, ModelVersion], seconds: dict[int, float]
) -> None:
    """One line per version put in service, and which serve when others kept serving too; a
    reload that changed nothing says so only at DEBUG."""
    if not loaded:
        log.debug("model '%s': unchanged, nothing reloaded", plan.name)
        return
    for v in sorted(loaded):
        log.info(
            "model '%s' version %d loaded: %s, %s, %.2f s",
            plan.name,
            v,
            plan.backend_name,
            describe_instances(plan),
            seconds[v],
        )
    serving = sorted(record.serving())
    if serving != sorted(loaded):
        log.info("model '%s': serving versions %s", plan.name, ", ".join(map(str, serving)))


def _traffic_notes(record: ModelRecord) -> dict[int, str]:
    """What the index says of each version's part in the model's traffic policy."""
    policy = record.rollout.policy if record.rollout is not None else None
    if policy is None:
        return {}
    total = sum(w for _, w in policy.weights)
    notes = {v: f"traffic {100 * w / total:g}% ({policy.describe()})" for v, w in policy.weights}
    if policy.shadow is not None and not policy.shadow.model:
        notes[policy.shadow.version] = f"shadow of {100 * policy.shadow.share:g}% of the traffic"
    if policy.canary is not None:
        notes[policy.canary.version] += "; canary"
    return notes


def _outputs(model: ModelVersion, request: InferRequest) -> Coroutine[Any, Any, dict[str, np.ndarray]]:
    """The model's own coroutine (no frame of ours on every request), or the rollout tap's."""
    if model.tap is None:
        return model.infer(request)
    return tapped(model.tap, model, request)  # type: ignore[return-value]


async def _one(model: ModelVersion, request: InferRequest) -> AsyncGenerator[InferResponse, None]:
    yield _response(model, await _outputs(model, request), request.id)


async def _raising(error: InferdError) -> AsyncGenerator[InferResponse, None]:
    raise error
    yield  # unreachable: it makes this an async generator, which raises when first iterated


def _response(model: ModelVersion, outputs: dict[str, np.ndarray], request_id: str) -> InferResponse:
    if type(outputs) is dict:
        return InferResponse(model.name, str(model.version), outputs, request_id)
    # A model that set response parameters (a Python model, ModelOutputs).
    parameters = getattr(outputs, "parameters", {})
    return InferResponse(model.name, str(model.version), dict(outputs), request_id, parameters)


def _as_load_error(e: Exception, where: str) -> InferdError:
    """Any failure while loading becomes the model's reason; unexpected ones (server faults) are
    logged in full and give the reason "internal error"."""
    if isinstance(e, InferdError):
        return ModelLoadError(e.message, e.code)
    return ModelLoadError(internal_error(e, f"loading {where}"))


def _unchanged(slot: VersionSlot | None, fingerprint: str) -> bool:
    return slot is not None and slot.model is not None and slot.fingerprint == fingerprint


def _close(workers: list[InstanceWorker]) -> None:
    for w in workers:
        w.close()


def _settled(task: asyncio.Task[None]) -> None:
    """Retrieve the outcome so a load whose caller went away logs no 'never retrieved'."""
    if not task.cancelled():
        task.exception()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (e := task.exception()) is not None:
        log.warning("background load failed: %s", e)
