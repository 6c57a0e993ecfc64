"""The typed view of a completed ``config.pbtxt`` that schedulers, backends and model versions read.

``config.pbtxt`` is parsed into the protobuf ``ModelConfig``, which stays the source of truth
at the edges (parsing, auto-complete, the ModelConfig RPC, the JSON a Python model's
``initialize`` receives). At load it is mapped once, by :func:`model_spec`, into these frozen
dataclasses, so neither schedulers nor backends walk protobuf messages (whose field access is
slow and whose defaults hide in the message type). Field names are the config's own, so a
reader can go from one to the other; a test checks them against the messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from . import codec
from .errors import ModelLoadError
from .pb import model_config_pb2 as mc

TimeoutAction = Literal["REJECT", "DELAY"]
InstanceKind = Literal["AUTO", "CPU", "GPU", "MODEL"]


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """``ModelQueuePolicy``: the bounds of one priority level's queue."""

    timeout_action: TimeoutAction = "REJECT"
    default_timeout_microseconds: int = 0  # 0: no timeout
    allow_timeout_override: bool = False
    max_queue_size: int = 0  # 0: no limit set in the config


@dataclass(frozen=True, slots=True)
class DynamicBatching:
    """``ModelDynamicBatching``; priority levels are numbered from 1 (the highest), as in Triton."""

    preferred_batch_size: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0
    preserve_ordering: bool = False
    priority_levels: int = 0  # 0: one level
    default_priority_level: int = 0  # 0: the lowest level
    default_queue_policy: QueuePolicy = QueuePolicy()
    # Levels whose policy differs from the default; read-only.
    priority_queue_policy: Mapping[int, QueuePolicy] = field(default_factory=lambda: MappingProxyType({}))

    def queue_policy(self, level: int) -> QueuePolicy:
        return self.priority_queue_policy.get(level, self.default_queue_policy)


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    """``ModelInstanceGroup``, as completed by the loader (named, count >= 1, kind resolved)."""

    name: str
    kind: InstanceKind
    count: int
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Input:
    """``ModelInput``; ``dims`` exclude the batch dimension when ``max_batch_size`` > 0, and are
    the model's own (``reshape.shape`` where the config reshapes the tensor)."""

    name: str
    data_type: codec.DataType
    dims: tuple[int, ...]
    optional: bool = False
    allow_ragged_batch: bool = False  # requests of different shapes batch; the model sees it flat


@dataclass(frozen=True, slots=True)
class Output:
    """``ModelOutput``; ``dims`` as :class:`Input`'s."""

    name: str
    data_type: codec.DataType
    dims: tuple[int, ...]


BatchInputKind = Literal[
    "BATCH_ELEMENT_COUNT",
    "BATCH_ACCUMULATED_ELEMENT_COUNT",
    "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO",
    "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE",
    "BATCH_ITEM_SHAPE",
    "BATCH_ITEM_SHAPE_FLATTEN",
]


@dataclass(frozen=True, slots=True)
class BatchInput:
    """``BatchInput``: a model input the server computes from the formed batch, never a client's."""

    kind: BatchInputKind
    target_name: tuple[str, ...]
    data_type: codec.DataType
    source_input: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BatchOutput:
    """``BatchOutput``: a model output scattered back to the requests by a source input's shape."""

    target_name: tuple[str, ...]
    kind: Literal["BATCH_SCATTER_WITH_INPUT_SHAPE"]
    source_input: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Graph:
    """``ModelOptimizationPolicy.Graph``: the framework's graph optimization level."""

    level: int = 0  # 0: the framework's default; < 0: optimizations off


@dataclass(frozen=True, slots=True)
class Accelerator:
    """``ExecutionAccelerators.Accelerator``: a framework accelerator and its settings."""

    name: str
    parameters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class ExecutionAccelerators:
    gpu_execution_accelerator: tuple[Accelerator, ...] = ()
    cpu_execution_accelerator: tuple[Accelerator, ...] = ()


@dataclass(frozen=True, slots=True)
class Optimization:
    """``ModelOptimizationPolicy``: the part of it backends read."""

    graph: Graph = Graph()
    execution_accelerators: ExecutionAccelerators = ExecutionAccelerators()


@dataclass(frozen=True, slots=True)
class TransactionPolicy:
    """``ModelTransactionPolicy``."""

    decoupled: bool = False  # 0..N responses per request


@dataclass(frozen=True, slots=True)
class ResponseCache:
    """``ModelResponseCache``: the model's responses may be answered from the server's cache."""

    enable: bool = False


@dataclass(frozen=True, slots=True)
class SequenceControl:
    """``ModelSequenceBatching.Control``: one control signal the server feeds the model.
    START, END and READY carry their (false, true) values in exactly one of the three
    ``*_false_true`` pairs; CORRID has ``data_type`` (None when the config names none)."""

    kind: str  # "CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_END", "CONTROL_SEQUENCE_READY", "CONTROL_SEQUENCE_CORRID"
    int32_false_true: tuple[int, ...] = ()
    fp32_false_true: tuple[float, ...] = ()
    bool_false_true: tuple[bool, ...] = ()
    data_type: codec.DataType | None = None


@dataclass(frozen=True, slots=True)
class SequenceControlInput:
    """``ModelSequenceBatching.ControlInput``: a model input the server fills, never the client."""

    name: str
    control: tuple[SequenceControl, ...] = ()


@dataclass(frozen=True, slots=True)
class SequenceInitialState:
    """``ModelSequenceBatching.InitialState``: zeros, or raw bytes from ``initial_state/<data_file>``."""

    data_type: codec.DataType | None
    dims: tuple[int, ...]
    zero_data: bool = False
    data_file: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class SequenceState:
    """``ModelSequenceBatching.State``: an implicit state tensor kept by the server per sequence;
    ``dims`` exclude the batch dimension."""

    input_name: str
    output_name: str
    data_type: codec.DataType | None
    dims: tuple[int, ...]
    initial_state: tuple[SequenceInitialState, ...] = ()
    use_same_buffer_for_input_output: bool = False
    use_growable_memory: bool = False


@dataclass(frozen=True, slots=True)
class SequenceDirect:
    """``ModelSequenceBatching.StrategyDirect``."""

    max_queue_delay_microseconds: int = 0
    minimum_slot_utilization: float = 0.0


@dataclass(frozen=True, slots=True)
class SequenceOldest:
    """``ModelSequenceBatching.StrategyOldest``."""

    max_candidate_sequences: int = 0
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0
    preserve_ordering: bool = False


@dataclass(frozen=True, slots=True)
class SequenceBatching:
    """``ModelSequenceBatching``: exactly one of ``direct`` and ``oldest`` is set (direct when the
    config names neither, as in Triton)."""

    direct: SequenceDirect | None = SequenceDirect()
    oldest: SequenceOldest | None = None
    max_sequence_idle_microseconds: int = 1_000_000  # Triton's default when the config has 0
    control_input: tuple[SequenceControlInput, ...] = ()
    state: tuple[SequenceState, ...] = ()
    iterative_sequence: bool = False


@dataclass(frozen=True, slots=True)
class MetricIdentifier:
    """``ModelMetrics.MetricControl.MetricIdentifier``: the metric family the options apply to."""

    family: str = ""


@dataclass(frozen=True, slots=True)
class HistogramOptions:
    """``ModelMetrics.MetricControl.HistogramOptions``: a histogram's bucket boundaries."""

    buckets: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class MetricControl:
    """``ModelMetrics.MetricControl``: one metric family's options for this model."""

    metric_identifier: MetricIdentifier = MetricIdentifier()
    histogram_options: HistogramOptions | None = None  # None: the config sets no options


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """``ModelMetrics``: per-model options of the server's metric families."""

    metric_control: tuple[MetricControl, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    max_batch_size: int  # 0: the model has no batch dimension
    dynamic_batching: DynamicBatching | None  # None: no dynamic batcher (requests run alone)
    instance_group: tuple[InstanceGroup, ...]
    parameters: Mapping[str, str]  # the config's ``parameters``, by their string values; read-only
    platform: str = ""
    backend: str = ""
    input: tuple[Input, ...] = ()
    output: tuple[Output, ...] = ()
    optimization: Optimization = Optimization()
    model_transaction_policy: TransactionPolicy = TransactionPolicy()
    response_cache: ResponseCache = ResponseCache()
    sequence_batching: SequenceBatching | None = None  # None: not a stateful (sequence) model
    batch_input: tuple[BatchInput, ...] = ()
    batch_output: tuple[BatchOutput, ...] = ()
    model_metrics: ModelMetrics = ModelMetrics()


def model_spec(config: mc.ModelConfig) -> ModelSpec:
    """Map a completed, checked config (loader.plan_model) to its typed view."""
    return ModelSpec(
        name=config.name,
        max_batch_size=config.max_batch_size,
        dynamic_batching=dynamic_batching(config.dynamic_batching) if config.HasField("dynamic_batching") else None,
        instance_group=tuple(instance_group(g) for g in config.instance_group),
        parameters=MappingProxyType({k: v.string_value for k, v in config.parameters.items()}),
        platform=config.platform,
        backend=config.backend,
        input=tuple(
            Input(t.name, data_type(config, "input", t), model_dims(t), t.optional, t.allow_ragged_batch)
            for t in config.input
        ),
        output=tuple(Output(t.name, data_type(config, "output", t), model_dims(t)) for t in config.output),
        optimization=Optimization(Graph(config.optimization.graph.level), accelerators(config.optimization)),
        model_transaction_policy=TransactionPolicy(config.model_transaction_policy.decoupled),
        response_cache=ResponseCache(config.response_cache.enable),
        sequence_batching=sequence_batching(config.sequence_batching) if config.HasField("sequence_batching") else None,
        batch_input=tuple(batch_input(b) for b in config.batch_input),
        batch_output=tuple(
            BatchOutput(tuple(b.target_name), "BATCH_SCATTER_WITH_INPUT_SHAPE", tuple(b.source_input))
            for b in config.batch_output
        ),
        model_metrics=ModelMetrics(tuple(metric_control(c) for c in config.model_metrics.metric_control)),
    )


def metric_control(section: mc.ModelMetrics.MetricControl) -> MetricControl:
    options = (
        HistogramOptions(tuple(section.histogram_options.buckets)) if section.HasField("histogram_options") else None
    )
    return MetricControl(MetricIdentifier(section.metric_identifier.family), options)


def batch_input(section: mc.BatchInput) -> BatchInput:
    kind: BatchInputKind = mc.BatchInput.Kind.Name(section.kind)  # type: ignore[assignment]
    found = _config_type(section.data_type)
    if found is None:
        raise ModelLoadError(
            f"batch input {list(section.target_name)}: data_type {mc.DataType.Name(section.data_type)}"
        )
    return BatchInput(kind, tuple(section.target_name), found, tuple(section.source_input))


def accelerators(policy: mc.ModelOptimizationPolicy) -> ExecutionAccelerators:
    section = policy.execution_accelerators

    def each(items) -> tuple[Accelerator, ...]:  # type: ignore[no-untyped-def]
        return tuple(Accelerator(a.name, MappingProxyType(dict(a.parameters))) for a in items)

    return ExecutionAccelerators(each(section.gpu_execution_accelerator), each(section.cpu_execution_accelerator))


def dynamic_batching(section: mc.ModelDynamicBatching) -> DynamicBatching:
    return DynamicBatching(
        preferred_batch_size=tuple(section.preferred_batch_size),
        max_queue_delay_microseconds=section.max_queue_delay_microseconds,
        preserve_ordering=section.preserve_ordering,
        priority_levels=section.priority_levels,
        default_priority_level=section.default_priority_level,
        default_queue_policy=queue_policy(section.default_queue_policy),
        priority_queue_policy=MappingProxyType(
            {level: queue_policy(p) for level, p in section.priority_queue_policy.items()}
        ),
    )


def sequence_batching(section: mc.ModelSequenceBatching) -> SequenceBatching:
    oldest = None
    direct: SequenceDirect | None = None
    if section.HasField("oldest"):
        o = section.oldest
        oldest = SequenceOldest(
            o.max_candidate_sequences,
            tuple(o.preferred_batch_size),
            o.max_queue_delay_microseconds,
            o.preserve_ordering,
        )
    else:
        d = section.direct
        direct = SequenceDirect(d.max_queue_delay_microseconds, d.minimum_slot_utilization)
    return SequenceBatching(
        direct=direct,
        oldest=oldest,
        max_sequence_idle_microseconds=section.max_sequence_idle_microseconds or 1_000_000,
        control_input=tuple(
            SequenceControlInput(c.name, tuple(_control(k) for k in c.control)) for c in section.control_input
        ),
        state=tuple(
            SequenceState(
                s.input_name,
                s.output_name,
                _config_type(s.data_type),
                tuple(s.dims),
                tuple(
                    SequenceInitialState(
                        _config_type(i.data_type), tuple(i.dims), i.HasField("zero_data"), i.data_file, i.name
                    )
                    for i in s.initial_state
                ),
                s.use_same_buffer_for_input_output,
                s.use_growable_memory,
            )
            for s in section.state
        ),
        iterative_sequence=section.iterative_sequence,
    )


def _control(c: mc.ModelSequenceBatching.Control) -> SequenceControl:
    return SequenceControl(
        mc.ModelSequenceBatching.Control.Kind.Name(c.kind),
        tuple(c.int32_false_true),
        tuple(c.fp32_false_true),
        tuple(c.bool_false_true),
        _config_type(c.data_type),
    )


def _config_type(value: int) -> codec.DataType | None:
    return codec.BY_CONFIG_NAME.get(mc.DataType.Name(value))


def queue_policy(policy: mc.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        timeout_action="DELAY" if policy.timeout_action == mc.ModelQueuePolicy.DELAY else "REJECT",
        default_timeout_microseconds=policy.default_timeout_microseconds,
        allow_timeout_override=policy.allow_timeout_override,
        max_queue_size=policy.max_queue_size,
    )


def instance_group(group: mc.ModelInstanceGroup) -> InstanceGroup:
    kind: InstanceKind = mc.ModelInstanceGroup.Kind.Name(group.kind).removeprefix("KIND_")  # type: ignore[assignment]
    return InstanceGroup(group.name, kind, group.count, tuple(group.gpus))


def model_dims(tensor: mc.ModelInput | mc.ModelOutput) -> tuple[int, ...]:
    """The dims the model itself has: ``reshape.shape`` where set (clients see ``dims``)."""
    return tuple(tensor.reshape.shape) if tensor.HasField("reshape") else tuple(tensor.dims)


def data_type(config: mc.ModelConfig, kind: str, tensor: mc.ModelInput | mc.ModelOutput) -> codec.DataType:
    # A checked config has a known type on every tensor (config.signature refuses the rest).
    config_name = mc.DataType.Name(tensor.data_type)
    found = codec.BY_CONFIG_NAME.get(config_name)
    if found is None:
        raise ModelLoadError(f"model '{config.name}': {kind} '{tensor.name}' has data_type {config_name}")
    return found
