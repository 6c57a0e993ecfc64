"""Scheduling, independent of backends and protocols: a scheduler per model version, chosen
from its typed config when it loads. Schedulers take work through ``Scheduler.submit`` and run
it through ``InstanceWorker.run``, whose placement decides between the loop and the thread."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...protocol.model_spec import ModelSpec
from ..stats import ModelStats
from .base import Scheduler
from .direct import DirectScheduler
from .work import Work
from .worker import InstanceWorker

__all__ = ["InstanceWorker", "Scheduler", "Work", "make_scheduler"]


def make_scheduler(
    spec: ModelSpec,
    workers: Sequence[InstanceWorker],
    stats: ModelStats,
    label: str,
    model_dir: Path | None = None,
) -> Scheduler:
    """The scheduler the config asks for; ``model_dir`` is where a sequence model's initial
    state files are."""
    if spec.sequence_batching is not None:
        from .sequence import SequenceBatchScheduler

        return SequenceBatchScheduler(workers, stats, label, spec, model_dir)
    if spec.dynamic_batching is not None:
        from .batcher import DynamicBatcher

        return DynamicBatcher(workers, stats, label, spec.max_batch_size, spec.dynamic_batching)
    return DirectScheduler(workers, stats, label)
