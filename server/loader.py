"""Turning a model folder into loaded model versions.

Everything here is synchronous and may block (framework loads), so the manager runs it in a
worker thread; only scheduler construction happens on the event loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..backends import registry
from ..backends.base import Backend, Instance, LoadContext
from ..clients.pb import model_config_pb2 as mc
from . import config as cfg
from .errors import InferdError, ModelLoadError
from .repository import Repository
from .scheduling.worker import InstanceWorker

log = logging.getLogger(__name__)


@dataclass
class ModelPlan:
    """A model's completed config and what to load, before any instance exists."""

    name: str
    model_dir: Path
    config: mc.ModelConfig
    backend: type[Backend] | None  # None for ensembles
    backend_name: str
    signature: cfg.Signature
    versions: list[int]


def plan_model(repo: Repository, name: str, override: mc.ModelConfig | None = None) -> ModelPlan:
    model_dir = repo.model_dir(name)
    source = str(model_dir / cfg.CONFIG_FILE)
    if override is not None:
        config = mc.ModelConfig()
        config.CopyFrom(override)
        source = f"config override for model '{name}'"
    else:
        config, _ = cfg.read_config(model_dir)
    cfg.check_name(config, name, source)
    versions = repo.select_versions(config, model_dir)
    first_dir = model_dir / str(versions[-1])
    if config.platform == "ensemble":
        backend_cls = None
        backend_name = "ensemble"
    else:
        backend_name = registry.backend_name(config, first_dir, source)
        backend_cls = registry.resolve(backend_name)
        filename = config.default_model_filename or backend_cls.default_filename
        model_path = repo.model_file(first_dir, filename)
        backend_cls.auto_complete_config(config, model_path)
        if not config.backend and not config.platform:
            config.backend = backend_name
    _complete_instance_groups(config)
    signature = cfg.signature(config, source)
    return ModelPlan(name, model_dir, config, backend_cls, backend_name, signature, versions)


def _complete_instance_groups(config: mc.ModelConfig) -> None:
    """Fill in the defaults Triton reports: one CPU instance unless asked otherwise."""
    if not config.instance_group:
        group = config.instance_group.add()
        group.kind = mc.ModelInstanceGroup.KIND_CPU
    for i, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{i}"
        if group.count < 1:
            group.count = 1
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            group.kind = mc.ModelInstanceGroup.KIND_GPU if group.gpus else mc.ModelInstanceGroup.KIND_CPU


def instances(config: mc.ModelConfig) -> list[Instance]:
    out: list[Instance] = []
    for group in config.instance_group:
        gpu = group.kind == mc.ModelInstanceGroup.KIND_GPU
        devices = list(group.gpus) or [0] if gpu else [0]
        for device in devices:
            for _ in range(group.count):
                out.append(Instance(f"{group.name}_{len(out)}", "GPU" if gpu else "CPU", device, len(out)))
    return out


def load_workers(repo: Repository, plan: ModelPlan, version: int, core: object) -> list[InstanceWorker]:
    """Create every instance of one version; on failure, unload what was created."""
    assert plan.backend is not None
    version_dir = plan.model_dir / str(version)
    filename = plan.config.default_model_filename or plan.backend.default_filename
    model_path = repo.model_file(version_dir, filename)
    params = {k: v.string_value for k, v in plan.config.parameters.items()}
    workers: list[InstanceWorker] = []
    try:
        for inst in instances(plan.config):
            ctx = LoadContext(plan.name, version, plan.config, plan.model_dir, version_dir, model_path, inst, core, params)
            backend = plan.backend(ctx)
            workers.append(InstanceWorker(backend, f"{plan.name}.v{version}.{inst.name}", plan.config.max_batch_size > 0))
    except BaseException as e:
        for w in workers:
            w.close()
        if isinstance(e, InferdError):
            raise
        if isinstance(e, Exception):
            raise ModelLoadError(f"model '{plan.name}' version {version}: {type(e).__name__}: {e}") from e
        raise
    return workers
