"""Model lifecycle: which versions are loaded, their states and reasons, and swapping them.

New versions are loaded next to the old ones; traffic moves by replacing one dict entry (a
single assignment on the event loop thread, so it is atomic for requests), and only then are
replaced versions drained and unloaded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from ..backends.registry import platform_of
from ..clients.pb import model_config_pb2 as mc
from .errors import InferdError, InvalidArgument, ModelLoadError, NotFound, Unavailable
from .loader import ModelPlan, load_workers, plan_model
from .model import ModelVersion
from .repository import Repository, check_model_name
from .scheduling import make_scheduler
from .stats import ModelStats, Observer
from .types import ModelIndexEntry

log = logging.getLogger(__name__)

UNKNOWN, LOADING, READY, UNLOADING, UNAVAILABLE = "UNKNOWN", "LOADING", "READY", "UNLOADING", "UNAVAILABLE"
DRAIN_TIMEOUT_S = 30.0


@dataclass
class VersionSlot:
    state: str = UNKNOWN
    reason: str = ""
    model: ModelVersion | None = None


@dataclass
class ModelRecord:
    name: str
    state: str = UNKNOWN  # model-level state when no version could be planned
    reason: str = ""
    config: mc.ModelConfig | None = None
    versions: dict[int, VersionSlot] = field(default_factory=dict)
    load_seconds: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ModelManager:
    def __init__(self, repository: Repository, observers: list[Observer] | None = None) -> None:
        self.repository = repository
        self.models: dict[str, ModelRecord] = {}
        self.observers = observers if observers is not None else []
        self.core: object = None  # set by the core; handed to backends that call other models
        self._drains: set[asyncio.Task[None]] = set()

    # --- lookup -------------------------------------------------------------------------
    def get(self, name: str, version: str = "") -> ModelVersion:
        record = self.models.get(name)
        if record is None:
            raise NotFound(f"unknown model '{name}'")
        if version:
            if not version.isdigit():
                raise InvalidArgument(f"model '{name}': version '{version}' is not a number")
            slot = record.versions.get(int(version))
            if slot is None:
                raise NotFound(f"model '{name}' has no version {version}")
            if slot.model is None or slot.state not in (READY, LOADING):
                raise Unavailable(f"model '{name}' version {version} is not ready: {slot.state} {slot.reason}".rstrip())
            return slot.model
        ready = [v for v, s in record.versions.items() if s.model is not None]
        if not ready:
            why = record.reason or "; ".join(f"version {v}: {s.state} {s.reason}".rstrip() for v, s in record.versions.items())
            raise Unavailable(f"model '{name}' is not ready" + (f": {why}" if why else ""))
        return record.versions[max(ready)].model  # type: ignore[return-value]

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except InferdError:
            return False
        return True

    def index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        entries: list[ModelIndexEntry] = []
        names = sorted(set(self.repository.model_names()) | set(self.models))
        for name in names:
            record = self.models.get(name)
            if record is None:
                if not ready_only:
                    entries.append(ModelIndexEntry(name, "", "", ""))
                continue
            if not record.versions or record.state == UNAVAILABLE:
                if not ready_only:
                    entries.append(ModelIndexEntry(name, "", record.state, record.reason))
            for v, slot in sorted(record.versions.items()):
                if ready_only and slot.state != READY:
                    continue
                entries.append(ModelIndexEntry(name, str(v), slot.state, slot.reason))
        return entries

    def loaded_versions(self, name: str) -> list[ModelVersion]:
        record = self.models.get(name)
        if record is None:
            raise NotFound(f"unknown model '{name}'")
        return [s.model for _, s in sorted(record.versions.items()) if s.model is not None]

    # --- lifecycle ----------------------------------------------------------------------
    async def load(self, name: str, override: mc.ModelConfig | None = None) -> None:
        """Load (or reload) every version the policy selects; raises ModelLoadError on failure.

        On failure the versions that were serving keep serving."""
        check_model_name(name)
        record = self.models.setdefault(name, ModelRecord(name))
        async with record.lock:
            started = time.monotonic()
            loop = asyncio.get_running_loop()
            try:
                plan = await loop.run_in_executor(None, plan_model, self.repository, name, override)
            except InferdError as e:
                if not record.versions or all(s.model is None for s in record.versions.values()):
                    record.state, record.reason = UNAVAILABLE, e.message
                log.error("failed to load model '%s': %s", name, e.message)
                raise ModelLoadError(e.message, e.code) from None
            record.config = plan.config
            errors = []
            for v in plan.versions:
                slot = record.versions.setdefault(v, VersionSlot())
                if slot.model is None:
                    slot.state, slot.reason = LOADING, ""
                try:
                    new = await self._load_version(plan, v)
                except InferdError as e:
                    errors.append(e.message)
                    if slot.model is None:
                        slot.state, slot.reason = UNAVAILABLE, e.message
                    else:
                        slot.reason = f"reload failed, previous load still serving: {e.message}"
                    log.error("failed to load model '%s' version %d: %s", name, v, e.message)
                    continue
                old, slot.model = slot.model, new  # traffic moves here
                slot.state, slot.reason = READY, ""
                if old is not None:
                    self._retire(old)
            for v in [v for v in record.versions if v not in plan.versions]:
                await self._unload_slot(record, v)
            serving = any(s.model is not None for s in record.versions.values())
            record.state = READY if serving else UNAVAILABLE
            record.reason = "; ".join(errors)
            record.load_seconds = time.monotonic() - started
            log.info("model '%s' versions %s: %s", name, plan.versions,
                     "loaded" if not errors else f"errors: {'; '.join(errors)}")
            if errors:
                raise ModelLoadError("; ".join(errors))

    async def _load_version(self, plan: ModelPlan, version: int) -> ModelVersion:
        loop = asyncio.get_running_loop()
        workers = await loop.run_in_executor(None, load_workers, self.repository, plan, version, self.core)
        stats = ModelStats(plan.name, str(version), self.observers)
        label = f"model '{plan.name}' version {version}"
        scheduler = make_scheduler(plan.config, workers, stats, label)
        platform = plan.config.platform or platform_of(plan.backend_name)
        return ModelVersion(plan.name, version, plan.config, plan.signature, platform, scheduler, stats)

    async def unload(self, name: str) -> None:
        check_model_name(name)
        record = self.models.get(name)
        if record is None:
            raise NotFound(f"unknown model '{name}'")
        async with record.lock:
            for v in list(record.versions):
                await self._unload_slot(record, v)
            del self.models[name]

    async def _unload_slot(self, record: ModelRecord, version: int) -> None:
        slot = record.versions.pop(version)
        if slot.model is not None:
            slot.state = UNLOADING
            self._retire(slot.model)

    def _retire(self, model: ModelVersion) -> None:
        """Drain and close a version that no longer takes new traffic, in the background."""
        async def drain() -> None:
            if not await model.scheduler.retire(DRAIN_TIMEOUT_S):
                log.warning("%s: requests still running after %.0fs; closing anyway", model.label, DRAIN_TIMEOUT_S)
            log.info("%s unloaded", model.label)

        task = asyncio.get_running_loop().create_task(drain())
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def close(self) -> None:
        for name in list(self.models):
            await self.unload(name)
        if self._drains:
            await asyncio.gather(*self._drains, return_exceptions=True)
