"""The backend interface.

A backend class knows one framework. The server creates one backend object per model
instance (``instance_group``), calls ``execute`` from that instance's own worker thread, and
``unload`` once when the instance goes away. Backends know nothing of protocols, requests,
batching or asyncio: they see batched numpy tensors keyed by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..protocol.caller import ThreadCaller
from ..protocol.model_spec import ModelSpec, model_spec
from ..protocol.pb import model_config_pb2 as mc
from ..protocol.types import RequestInfo
from .python_metrics import CustomMetrics


@dataclass(frozen=True)
class Instance:
    """Where one model instance runs."""

    name: str
    kind: str  # "CPU" or "GPU"
    device_id: int = 0  # GPU index for kind "GPU"
    index: int = 0  # position among the model's instances


@dataclass
class LoadContext:
    """What one instance loads from. Backends read the typed ``spec`` when they load and execute."""

    model_name: str
    version: int
    # The protobuf config, for the edges only: the Python backend hands it to a model's
    # ``initialize`` as Triton's JSON. Nothing reads it to load or execute.
    config: mc.ModelConfig
    model_dir: Path  # the model's folder (holds config.pbtxt)
    version_dir: Path
    model_path: Path  # version_dir / model file (may be a folder, e.g. SavedModel)
    instance: Instance
    # How this model calls other models in-process (Python models' BLS); None outside a server.
    caller: ThreadCaller | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    # The loader passes its plan's spec (mapped once per model); a context built by hand (tests,
    # tools) gets one mapped from ``config``.
    spec: ModelSpec = None  # type: ignore[assignment]
    # The server's registry of Python models' custom metrics (pb_utils.MetricFamily); None outside a server.
    metrics: CustomMetrics | None = None

    def __post_init__(self) -> None:
        if self.spec is None:
            self.spec = model_spec(self.config)


class Backend(ABC):
    #: ``backend`` name in config.pbtxt (e.g. "onnxruntime").
    name: ClassVar[str]
    #: ``platform`` strings this backend serves (e.g. "onnxruntime_onnx").
    platforms: ClassVar[tuple[str, ...]] = ()
    #: File or folder name inside a version folder when ``default_model_filename`` is unset.
    default_filename: ClassVar[str]
    #: The pip extra that installs this backend's framework, named in load errors.
    extra: ClassVar[str | None] = None
    #: True for backends that take a batch as its separate requests (Python models, as in
    #: Triton's ``execute(requests)``) instead of merged tensors.
    takes_request_list: ClassVar[bool] = False
    #: True when ``execute`` is pure computation that never waits on the server (no calls to
    #: other models, no locks held by other threads): short executions of such a backend may
    #: run on the event loop instead of paying the hop to the instance thread. A backend whose
    #: models differ sets it True on the class and narrows it on the instance once loaded.
    inline_safe: bool = False

    @classmethod
    def auto_complete_config(cls, config: mc.ModelConfig, model_path: Path) -> None:
        """Fill in what the model file tells (inputs, outputs, batching). Default: nothing."""

    @abstractmethod
    def __init__(self, context: LoadContext) -> None:
        """Load the model for one instance; raise ``ModelLoadError`` with a clear reason."""

    @abstractmethod
    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Run one (possibly batched) execution and return the requested outputs."""

    def execute_requests(
        self,
        requests: Sequence[Mapping[str, np.ndarray]],
        outputs: Sequence[str],
        infos: Sequence[RequestInfo | None] | None = None,
    ) -> list[dict[str, np.ndarray] | Exception]:
        """For ``takes_request_list`` backends: one result (numpy arrays by output name) or
        error per request, in order. ``infos`` has each request's id and parameters (None for
        a request that sent neither; None for all when none did)."""
        raise NotImplementedError

    def unload(self) -> None:
        """Release the framework's resources."""
