"""Scheduling, independent of backends and protocols: a scheduler per model version, chosen
from its config when it loads."""

from __future__ import annotations

from collections.abc import Sequence

from ...protocol.pb import model_config_pb2 as mc
from ..stats import ModelStats
from .base import Scheduler
from .direct import DirectScheduler
from .work import Work
from .worker import InstanceWorker

__all__ = ["InstanceWorker", "Scheduler", "Work", "make_scheduler"]


def make_scheduler(
    config: mc.ModelConfig, workers: Sequence[InstanceWorker], stats: ModelStats, label: str
) -> Scheduler:
    if config.HasField("dynamic_batching"):
        from .batcher import DynamicBatcher

        return DynamicBatcher(workers, stats, label, config.max_batch_size, config.dynamic_batching)
    return DirectScheduler(workers, stats, label)
