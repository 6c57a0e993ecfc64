"""Turning a model folder into loaded model versions.

Everything here is synchronous and may block (framework loads), so the manager runs it in a
worker thread; only scheduler construction happens on the event loop.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..backends import common as backend_common
from ..backends import registry
from ..backends.base import Backend, Instance, LoadContext
from ..backends.python_metrics import CustomMetrics
from ..protocol.caller import ThreadCaller
from ..protocol.errors import InferdError, ModelLoadError
from ..protocol.model_spec import InstanceGroup, ModelSpec, model_spec
from ..protocol.pb import model_config_pb2 as mc
from . import config as cfg
from . import config_fields, sequence_config
from .backend_config import BackendSettings
from .classification import read_labels
from .ensemble import EnsemblePlan, plan_ensemble
from .repository import Repository
from .repository_agents import run_agents
from .scheduling.placement import one_cpu
from .scheduling.ragged import RaggedBatching
from .scheduling.worker import InstanceWorker
from .stats import histogram_buckets

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
    failed: dict[int, str] = field(default_factory=dict)  # version -> why its file is unusable
    # Per version: a digest of the completed config and the version's files; a version whose
    # digest did not change since it was loaded is not reloaded.
    fingerprints: dict[int, str] = field(default_factory=dict)
    ensemble: EnsemblePlan | None = None  # the checked DAG of an ensemble
    # Fields accepted with a warning (config_fields): logged at load, shown as READY's reason.
    warnings: tuple[str, ...] = ()
    # Each output's classification labels (its label_filename), read once at load.
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Parameters every instance gets unless the config sets its own (--backend-config).
    default_parameters: dict[str, str] = field(default_factory=dict)
    # Bucket boundaries the config sets per histogram family (model_metrics.metric_control).
    histogram_buckets: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # The typed view of the completed config that schedulers, backends and versions read.
    spec: ModelSpec = field(init=False)
    # Where the model's folder is: the server's repository, or a load's own files (model_files).
    repository: Repository = field(init=False)

    def __post_init__(self) -> None:
        self.spec = model_spec(self.config)


@dataclass(frozen=True)
class LoadOptions:
    """How the server plans every model (Triton's repository flags)."""

    config_name: str = ""  # --model-config-name: configs/<name>.pbtxt where a model has one
    auto_complete: bool = True  # false: --disable-auto-complete-config / --strict-model-config=true
    backends: BackendSettings = field(default_factory=BackendSettings)  # --backend-config

    def config_file(self, model_dir: Path) -> str:
        """The config file a model is read from, relative to its folder."""
        if self.config_name:
            custom = f"configs/{self.config_name}.pbtxt"
            if (model_dir / custom).is_file():
                return custom
        return cfg.CONFIG_FILE


def plan_model(
    repo: Repository, name: str, override: mc.ModelConfig | None = None, options: LoadOptions = LoadOptions()
) -> ModelPlan:
    model_dir = repo.model_dir(name)
    filename = options.config_file(model_dir)
    source = str(model_dir / filename)
    if override is not None:
        config = mc.ModelConfig()
        config.CopyFrom(override)
        source = f"config override for model '{name}'"
    else:
        repo.check_config_file(model_dir, filename)
        config, found = cfg.read_config(model_dir, filename)
        if not found and not options.auto_complete:
            raise ModelLoadError(
                f"{source}: no model configuration, and auto-complete is off (--disable-auto-complete-config)"
            )
    cfg.check_name(config, name, source)
    cfg.check_metric_tags(config, source)
    run_agents(config, model_dir, source)
    versions = repo.select_versions(config, model_dir)
    failed: dict[int, str] = {}
    ensemble = None
    if config.platform == "ensemble":
        backend_cls = None
        backend_name = "ensemble"
        ensemble = plan_ensemble(config, source)
    else:
        backend_name = registry.backend_name(config, model_dir / str(versions[-1]), source)
        backend_cls = registry.resolve(backend_name)
        if options.auto_complete:
            default_batch = options.backends.default_max_batch_size(backend_name, backend_common.DEFAULT_MAX_BATCH_SIZE)
            token = backend_common.AUTO_COMPLETE_MAX_BATCH.set(default_batch)
            try:
                config, failed = _auto_complete(repo, model_dir, config, backend_cls, versions)
            finally:
                backend_common.AUTO_COMPLETE_MAX_BATCH.reset(token)
        if not config.backend and not config.platform:
            config.backend = backend_name
    _complete_instance_groups(config)
    sequence_config.complete(config)
    try:
        findings = config_fields.classify(config, backend_name)
        if findings.refused:
            raise ModelLoadError(f"{source}: {'; '.join(findings.refused)}")
        cfg.check_values(config, source, backend_name, visible_gpus())
        sequence_config.check(config, source, backend_name)
        signature = cfg.signature(config, source)
    except ModelLoadError:
        if len(failed) == len(versions):  # nothing to complete from: the file is the cause
            raise ModelLoadError(failed[versions[-1]]) from None
        raise
    plan = ModelPlan(name, model_dir, config, backend_cls, backend_name, signature, versions, failed, ensemble=ensemble)
    plan.histogram_buckets, metric_warnings = histogram_buckets(plan.spec.model_metrics, source)
    plan.warnings = findings.warned + metric_warnings
    plan.default_parameters = dict(options.backends.parameters.get(backend_name, {}))
    if plan.spec.sequence_batching is not None:  # its initial state files, read now to refuse bad ones
        sequence_config.initial_states(plan.spec.sequence_batching, config.max_batch_size > 0, model_dir, source)
    plan.labels = read_labels(model_dir, config, source)
    plan.repository = repo
    plan.fingerprints = {v: version_fingerprint(repo, plan, v) for v in versions}
    return plan


def _auto_complete(
    repo: Repository, model_dir: Path, config: mc.ModelConfig, backend: type[Backend], versions: list[int]
) -> tuple[mc.ModelConfig, dict[int, str]]:
    """Complete the config from the newest version whose model file can be read. Versions
    whose file cannot be are returned as failed, so that a broken new version fails alone
    (and the manager keeps the serving versions) instead of failing the whole model."""
    failed: dict[int, str] = {}
    filename = config.default_model_filename or backend.default_filename
    for v in reversed(versions):
        candidate = mc.ModelConfig()
        candidate.CopyFrom(config)
        try:
            backend.auto_complete_config(candidate, repo.model_file(model_dir / str(v), filename))
        except ModelLoadError as e:
            failed[v] = e.message
            continue
        return candidate, failed
    return config, failed  # every version fails; a complete config still lets each say why


def version_fingerprint(repo: Repository, plan: ModelPlan, version: int) -> str:
    """What a loaded version depends on: the completed config (so comment-only edits of
    config.pbtxt do not reload), the version folder's files, and the model folder's other
    files (``warmup/``, label files) except config.pbtxt and the version folders."""
    digest = hashlib.sha256(plan.config.SerializeToString(deterministic=True))
    digest.update(str(plan.model_dir).encode())  # a load from sent files replaces one from the repository
    version_names = frozenset(e.name for e in plan.model_dir.iterdir() if e.name.isascii() and e.name.isdigit())
    shared = repo.fingerprint(plan.model_dir, skip=version_names | {cfg.CONFIG_FILE})
    own = repo.fingerprint(plan.model_dir / str(version))
    digest.update(repr((shared, own)).encode())
    return digest.hexdigest()


def visible_gpus() -> int:
    """How many GPUs this process can use: ``CUDA_VISIBLE_DEVICES`` when set (counted up to its
    first invalid entry, as CUDA does), else the NVIDIA device files."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = 0
        for entry in visible.split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):
                break
            count += 1
        return count
    try:
        return sum(1 for name in os.listdir("/dev") if name.startswith("nvidia") and name[6:].isdigit())
    except OSError:
        return 0


def _complete_instance_groups(config: mc.ModelConfig) -> None:
    """Fill in the defaults Triton reports: one CPU instance unless asked otherwise."""
    if not config.instance_group:
        group = config.instance_group.add()
        group.kind = mc.ModelInstanceGroup.KIND_CPU
    for i, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{i}"
        group.count = max(group.count, 1)
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            group.kind = mc.ModelInstanceGroup.KIND_GPU if group.gpus else mc.ModelInstanceGroup.KIND_CPU


def _factory(plan: ModelPlan, ctx: LoadContext) -> Callable[[], Backend]:
    backend = plan.backend
    if backend is None:  # ensembles have no instances
        raise ModelLoadError(f"model '{plan.name}' has no backend to build instances of")
    return lambda: backend(ctx)


def instances(groups: Sequence[InstanceGroup]) -> list[Instance]:
    out: list[Instance] = []
    for group in groups:
        gpu = group.kind == "GPU"
        devices = list(group.gpus) or [0] if gpu else [0]
        for device in devices:
            for _ in range(group.count):
                out.append(Instance(f"{group.name}_{len(out)}", "GPU" if gpu else "CPU", device, len(out)))
    return out


def describe_instances(plan: ModelPlan) -> str:
    """What a version runs on, for the log: "2 instances (CPU)", "3 instances (2 CPU, 1 GPU 0)"."""
    if plan.ensemble is not None:
        steps = len(plan.ensemble.steps)
        return f"{steps} step{'s' if steps != 1 else ''}"
    kinds = Counter("CPU" if i.kind == "CPU" else f"GPU {i.device_id}" for i in instances(plan.spec.instance_group))
    total = sum(kinds.values())
    where = next(iter(kinds)) if len(kinds) == 1 else ", ".join(f"{n} {k}" for k, n in kinds.items())
    return f"{total} instance{'s' if total != 1 else ''} ({where})"


THREAD_PARAMETERS = ("intra_op_thread_count", "inter_op_thread_count", "INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT")


@dataclass(frozen=True)
class LoadLimits:
    """What one model version may ask of the machine: a config (or an override sent with a load
    request) beyond these is refused at load, naming the flag that sets the limit."""

    max_instances: int = 64  # --max-instances-per-model
    max_threads_per_instance: int = max(16, 4 * (os.cpu_count() or 1))  # --max-threads-per-instance


def check_limits(plan: ModelPlan, limits: LoadLimits) -> None:
    """Refuse instance counts and framework thread counts over ``limits``."""
    placed = instances(plan.spec.instance_group)
    if len(placed) > limits.max_instances:
        raise ModelLoadError(
            f"model '{plan.name}': instance_group asks for {len(placed)} instances; at most "
            f"{limits.max_instances} are allowed (--max-instances-per-model)"
        )
    params = dict(plan.spec.parameters)
    for key in THREAD_PARAMETERS:
        value = params.get(key, "").strip()
        if value.isascii() and value.isdigit() and int(value) > limits.max_threads_per_instance:
            raise ModelLoadError(
                f"model '{plan.name}': parameter '{key}' asks for {value} threads per instance; at most "
                f"{limits.max_threads_per_instance} are allowed (--max-threads-per-instance)"
            )


INLINE_CHOICES = ("auto", "true", "false")


def inline_execution(plan: ModelPlan, placed: list[Instance], params: Mapping[str, str]) -> bool | None:
    """Whether the instance may run short executions on the event loop: the part of the
    decision made once at load; the worker's ExecutionPlacement makes the rest per execution.
    True: allowed; False: never; None: as the loaded backend says (its ``inline_safe``).

    Parameter ``inline_execution``: "auto" (default) lets backends that declare themselves
    pure computation do it (a Python model is, unless its execute is async or it builds
    InferenceRequests to call other models); "true" also lets a Python model that calls other
    models (its calls then fail while it runs on the loop); "false" turns it off. Only ever for
    a single CPU instance: more instances were asked for to run side by side, which only their
    threads can do, and GPU instances keep their thread's device context."""
    assert plan.backend is not None
    choice = params.get("inline_execution", "auto").strip().lower()
    if choice not in INLINE_CHOICES:
        raise ModelLoadError(
            f"model '{plan.name}': parameter 'inline_execution' is '{choice}'; use one of {', '.join(INLINE_CHOICES)}"
        )
    if len(placed) != 1 or placed[0].kind != "CPU" or choice == "false":
        return False
    if choice == "true":
        return True
    return None if plan.backend.inline_safe else False


def load_workers(
    repo: Repository,
    plan: ModelPlan,
    version: int,
    caller: ThreadCaller | None,
    nice: int = 0,
    limits: LoadLimits = LoadLimits(),
    metrics: CustomMetrics | None = None,
) -> list[InstanceWorker]:
    """Create every instance of one version, each backend on its instance's thread; on failure,
    unload what was created. ``nice`` lowers the threads of dynamically batched models only: it
    lets the loop admit requests (and so fill batches) before compute runs, and without a
    batcher to fill it only slows the hand-off. ``caller`` is how the instances call other
    models (Python models' BLS)."""
    check_limits(plan, limits)
    assert plan.backend is not None
    version_dir = plan.model_dir / str(version)
    filename = plan.config.default_model_filename or plan.backend.default_filename
    model_path = repo.model_file(version_dir, filename)
    spec = plan.spec
    params = {**plan.default_parameters, **dict(spec.parameters)}
    workers: list[InstanceWorker] = []
    placed = instances(spec.instance_group)
    inline = inline_execution(plan, placed, params)
    nice = nice if spec.dynamic_batching is not None else 0
    # On one CPU an instance thread only takes turns with the loop (placement.py), unless a
    # dynamic batcher fills batches while it waits.
    single_cpu = spec.dynamic_batching is None and one_cpu()
    batching = spec.max_batch_size > 0
    try:
        for inst in placed:
            ctx = LoadContext(
                plan.name,
                version,
                plan.config,
                plan.model_dir,
                version_dir,
                model_path,
                inst,
                caller,
                params,
                spec=spec,
                metrics=metrics,
            )
            name = f"{plan.name}.v{version}.{inst.name}"
            workers.append(InstanceWorker.build(_factory(plan, ctx), name, batching, inline, nice, single_cpu))
    except BaseException as e:
        for w in workers:
            w.close()
        if isinstance(e, InferdError):
            raise
        if isinstance(e, Exception):
            raise ModelLoadError(f"model '{plan.name}' version {version}: {type(e).__name__}: {e}") from e
        raise
    ragged = RaggedBatching.of(spec)  # before warmup runs: the model is fed as it will be
    for w in workers:
        w.ragged = ragged
    return workers
