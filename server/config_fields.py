"""What inferd does with every field of ``config.pbtxt``: one table, applied at load.

Each field of ``ModelConfig`` (nested messages included) is exactly one of

* **honoured**: it does what Triton documents;
* **refused**: a model that sets it does not load, and its reason names the field;
* **warned**: accepted with one WARNING at load, only where ignoring the field cannot change
  any answer (tuning knobs for hardware or schedulers inferd does not have).

A field counts as set when protobuf says so (a scalar off its default, a present message, a
non-empty list or map), so a config that spells out a default is never refused. A test walks the
``ModelConfig`` descriptor and fails on any field missing here, so a field added to the proto
later cannot be ignored by accident; another keeps the README's table in step with this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ..protocol.pb import model_config_pb2 as mc


class Treatment(Enum):
    HONOURED = "honoured"
    REFUSED = "refused"
    WARNED = "warned"


@dataclass(frozen=True, slots=True)
class Rule:
    treatment: Treatment
    note: str
    # Backends that honour the field; on any other the rule's treatment is ``elsewhere``.
    honoured_by: frozenset[str] | None = None
    elsewhere: Treatment = Treatment.WARNED


def _h(note: str, by: tuple[str, ...] | None = None, elsewhere: Treatment = Treatment.WARNED) -> Rule:
    return Rule(Treatment.HONOURED, note, frozenset(by) if by is not None else None, elsewhere)


def _r(note: str) -> Rule:
    return Rule(Treatment.REFUSED, note)


def _w(note: str) -> Rule:
    return Rule(Treatment.WARNED, note)


_ACCELERATOR = _h(
    "ONNX Runtime execution providers: openvino (CPU), tensorrt and cuda (GPU), with Triton's parameters; "
    "refused where the provider is missing",
    by=("onnxruntime",),
    elsewhere=Treatment.REFUSED,
)
_METRIC_CONTROL = _h(
    "a histogram family's bucket boundaries for this model (finite, strictly ascending): "
    "nv_inference_first_response_histogram_ms and inferd's latency histograms; another family is "
    "warned at load and has no effect, as in Triton"
)
# A section that does nothing while empty: what its fields set decides.
_CONTAINER = _h("see its fields")
_GPU_KNOB = _w("tunes GPU execution only; inferd's backends do not read it, and it changes no answer")
_SEQUENCE = _h("sequence batcher for stateful models: correlation ids, one slot per live sequence")
_SEQ_DIRECT = _h("direct strategy: a sequence keeps one batch slot of one instance for its life")
_SEQ_OLDEST = _h("oldest strategy: dynamic batching of the oldest requests of the candidate sequences")
_SEQ_CONTROL = _h("control inputs fed by the server (never clients), with the configured values and types")
_SEQ_STATE = _h("implicit state kept per sequence: fed to the state input, taken from the state output")
_RAGGED = _h(
    "requests whose ragged input differs in shape batch together; the model gets it as one flat 1-D tensor "
    "(a Python model gets its requests as they came)"
)
_BATCH_INPUT = _h(
    "computed per batch (element counts, accumulated counts with and without zero, max element count as shape, "
    "item shapes) and fed to the model, never asked of clients; as in Triton, Python models are not fed them",
    by=("onnxruntime", "pytorch", "tensorflow", "tensorrt"),
    elsewhere=Treatment.WARNED,
)
_BATCH_OUTPUT = _h(
    "BATCH_SCATTER_WITH_INPUT_SHAPE: the output is split per request by the source input's shape; "
    "as in Triton, a Python model answers each request itself",
    by=("onnxruntime", "pytorch", "tensorflow", "tensorrt"),
    elsewhere=Treatment.WARNED,
)
_RESHAPE = _h("clients see 'dims', the model sees 'reshape' (with batching; checked as Triton checks it)")
_AGENTS = _h(
    "Triton's 'checksum' agent (MD5 of files in the model folder) runs before the load; other agents are refused by name"
)
_WARMUP = _h("run before the version is marked READY (bounded in count and time)")
_DYNAMIC = _h("dynamic batcher")
_QUEUE = _h("per-priority queue policy of the dynamic batcher")

# Paths are dotted field names from ModelConfig; lists and maps add no index (a map's value
# message continues the path: ``parameters.string_value``).
FIELDS: dict[str, Rule] = {
    "name": _h("must equal the model folder's name"),
    "platform": _h("selects the backend"),
    "backend": _h("selects the backend"),
    "runtime": _h("checked: empty, the backend's own Triton library name, or model.py for Python models"),
    "version_policy": _h("which versions load"),
    "version_policy.latest": _h("which versions load"),
    "version_policy.latest.num_versions": _h("which versions load"),
    "version_policy.all": _h("which versions load"),
    "version_policy.specific": _h("which versions load"),
    "version_policy.specific.versions": _h("which versions load"),
    "max_batch_size": _h("0: no batch dimension"),
    "input": _h("the model's inputs"),
    "input.name": _h("input name"),
    "input.data_type": _h("input datatype"),
    "input.format": _h("reported to clients as in Triton; NHWC/NCHW need 3 dims"),
    "input.dims": _h("input shape; -1 is variable"),
    "input.reshape": _RESHAPE,
    "input.reshape.shape": _RESHAPE,
    "input.is_shape_tensor": _r("shape tensors are not supported (Triton has them for TensorRT only)"),
    "input.allow_ragged_batch": _RAGGED,
    "input.optional": _h("the input may be left out"),
    "input.is_non_linear_format_io": _r("non-linear TensorRT formats are not supported"),
    "output": _h("the model's outputs"),
    "output.name": _h("output name"),
    "output.data_type": _h("output datatype"),
    "output.dims": _h("output shape; -1 is variable"),
    "output.reshape": _RESHAPE,
    "output.reshape.shape": _RESHAPE,
    "output.label_filename": _h("labels of the classification extension (a file in the model folder, one per line)"),
    "output.is_shape_tensor": _r("shape tensors are not supported (Triton has them for TensorRT only)"),
    "output.is_non_linear_format_io": _r("non-linear TensorRT formats are not supported"),
    "batch_input": _BATCH_INPUT,
    "batch_input.kind": _BATCH_INPUT,
    "batch_input.target_name": _BATCH_INPUT,
    "batch_input.data_type": _BATCH_INPUT,
    "batch_input.source_input": _BATCH_INPUT,
    "batch_output": _BATCH_OUTPUT,
    "batch_output.target_name": _BATCH_OUTPUT,
    "batch_output.kind": _BATCH_OUTPUT,
    "batch_output.source_input": _BATCH_OUTPUT,
    "optimization": _CONTAINER,
    "optimization.graph": _CONTAINER,
    "optimization.graph.level": _h(
        "ONNX Runtime's graph optimization level", by=("onnxruntime",), elsewhere=Treatment.WARNED
    ),
    "optimization.priority": _GPU_KNOB,
    "optimization.cuda": _GPU_KNOB,
    "optimization.cuda.graphs": _GPU_KNOB,
    "optimization.cuda.busy_wait_events": _GPU_KNOB,
    "optimization.cuda.graph_spec": _GPU_KNOB,
    "optimization.cuda.graph_spec.batch_size": _GPU_KNOB,
    "optimization.cuda.graph_spec.input": _GPU_KNOB,
    "optimization.cuda.graph_spec.input.dim": _GPU_KNOB,
    "optimization.cuda.graph_spec.graph_lower_bound": _GPU_KNOB,
    "optimization.cuda.graph_spec.graph_lower_bound.batch_size": _GPU_KNOB,
    "optimization.cuda.graph_spec.graph_lower_bound.input": _GPU_KNOB,
    "optimization.cuda.graph_spec.graph_lower_bound.input.dim": _GPU_KNOB,
    "optimization.cuda.output_copy_stream": _GPU_KNOB,
    "optimization.execution_accelerators": _CONTAINER,
    "optimization.execution_accelerators.gpu_execution_accelerator": _ACCELERATOR,
    "optimization.execution_accelerators.gpu_execution_accelerator.name": _ACCELERATOR,
    "optimization.execution_accelerators.gpu_execution_accelerator.parameters": _ACCELERATOR,
    "optimization.execution_accelerators.cpu_execution_accelerator": _ACCELERATOR,
    "optimization.execution_accelerators.cpu_execution_accelerator.name": _ACCELERATOR,
    "optimization.execution_accelerators.cpu_execution_accelerator.parameters": _ACCELERATOR,
    "optimization.input_pinned_memory": _GPU_KNOB,
    "optimization.input_pinned_memory.enable": _GPU_KNOB,
    "optimization.output_pinned_memory": _GPU_KNOB,
    "optimization.output_pinned_memory.enable": _GPU_KNOB,
    "optimization.gather_kernel_buffer_threshold": _GPU_KNOB,
    "optimization.eager_batching": _w("a TensorRT scheduling knob; inferd's batcher does not read it"),
    "dynamic_batching": _DYNAMIC,
    "dynamic_batching.preferred_batch_size": _DYNAMIC,
    "dynamic_batching.max_queue_delay_microseconds": _DYNAMIC,
    "dynamic_batching.preserve_ordering": _DYNAMIC,
    "dynamic_batching.priority_levels": _DYNAMIC,
    "dynamic_batching.default_priority_level": _DYNAMIC,
    "dynamic_batching.default_queue_policy": _QUEUE,
    "dynamic_batching.default_queue_policy.timeout_action": _QUEUE,
    "dynamic_batching.default_queue_policy.default_timeout_microseconds": _QUEUE,
    "dynamic_batching.default_queue_policy.allow_timeout_override": _QUEUE,
    "dynamic_batching.default_queue_policy.max_queue_size": _h(
        "0 is unbounded as in Triton, up to the server's cap of 4096 waiting requests per level"
    ),
    "dynamic_batching.priority_queue_policy": _QUEUE,
    "dynamic_batching.priority_queue_policy.timeout_action": _QUEUE,
    "dynamic_batching.priority_queue_policy.default_timeout_microseconds": _QUEUE,
    "dynamic_batching.priority_queue_policy.allow_timeout_override": _QUEUE,
    "dynamic_batching.priority_queue_policy.max_queue_size": _QUEUE,
    "sequence_batching": _SEQUENCE,
    "sequence_batching.direct": _SEQ_DIRECT,
    "sequence_batching.direct.max_queue_delay_microseconds": _SEQ_DIRECT,
    "sequence_batching.direct.minimum_slot_utilization": _SEQ_DIRECT,
    "sequence_batching.oldest": _SEQ_OLDEST,
    "sequence_batching.oldest.max_candidate_sequences": _SEQ_OLDEST,
    "sequence_batching.oldest.preferred_batch_size": _SEQ_OLDEST,
    "sequence_batching.oldest.max_queue_delay_microseconds": _SEQ_OLDEST,
    "sequence_batching.oldest.preserve_ordering": _SEQ_OLDEST,
    "sequence_batching.max_sequence_idle_microseconds": _h("an idle sequence is released (default 1 s, as in Triton)"),
    "sequence_batching.control_input": _SEQ_CONTROL,
    "sequence_batching.control_input.name": _SEQ_CONTROL,
    "sequence_batching.control_input.control": _SEQ_CONTROL,
    "sequence_batching.control_input.control.kind": _SEQ_CONTROL,
    "sequence_batching.control_input.control.int32_false_true": _SEQ_CONTROL,
    "sequence_batching.control_input.control.fp32_false_true": _SEQ_CONTROL,
    "sequence_batching.control_input.control.bool_false_true": _SEQ_CONTROL,
    "sequence_batching.control_input.control.data_type": _SEQ_CONTROL,
    "sequence_batching.state": _SEQ_STATE,
    "sequence_batching.state.input_name": _SEQ_STATE,
    "sequence_batching.state.output_name": _SEQ_STATE,
    "sequence_batching.state.data_type": _SEQ_STATE,
    "sequence_batching.state.dims": _SEQ_STATE,
    "sequence_batching.state.initial_state": _h("a sequence's state at START: zeros or initial_state/<data_file>"),
    "sequence_batching.state.initial_state.data_type": _h(
        "a sequence's state at START: zeros or initial_state/<data_file>"
    ),
    "sequence_batching.state.initial_state.dims": _h("a sequence's state at START: zeros or initial_state/<data_file>"),
    "sequence_batching.state.initial_state.zero_data": _h(
        "a sequence's state at START: zeros or initial_state/<data_file>"
    ),
    "sequence_batching.state.initial_state.data_file": _h(
        "a sequence's state at START: zeros or initial_state/<data_file>"
    ),
    "sequence_batching.state.initial_state.name": _h("a sequence's state at START: zeros or initial_state/<data_file>"),
    "sequence_batching.state.use_same_buffer_for_input_output": _r(
        "one buffer for a state's input and output is for backends that update state in place on the GPU; "
        "inferd keeps the state tensor the model returns"
    ),
    "sequence_batching.state.use_growable_memory": _r(
        "growable state memory is for KIND_GPU instances (TensorRT); inferd keeps state in host memory"
    ),
    "sequence_batching.iterative_sequence": _r(
        "iterative sequences (TensorRT-LLM's in-flight batching, which reschedules requests) are not supported"
    ),
    "ensemble_scheduling": _h("the ensemble's steps"),
    "ensemble_scheduling.step": _h("the ensemble's steps"),
    "ensemble_scheduling.step.model_name": _h("the model a step runs"),
    "ensemble_scheduling.step.model_version": _h("the version a step runs; -1 the newest"),
    "ensemble_scheduling.step.input_map": _h("step input <- ensemble tensor"),
    "ensemble_scheduling.step.output_map": _h("step output -> ensemble tensor"),
    "ensemble_scheduling.step.model_namespace": _r("model namespaces are not supported"),
    "ensemble_scheduling.max_inflight_requests": _h(
        "per request, the most requests each step has running at once; a faster decoupled step waits "
        "(its sends block) while a step of its flows is at the bound"
    ),
    "instance_group": _h("the model's instances"),
    "instance_group.name": _h("instance group name"),
    "instance_group.kind": _h("KIND_CPU, KIND_GPU (refused where no GPU exists), KIND_MODEL, KIND_AUTO"),
    "instance_group.count": _h("instances per device"),
    "instance_group.rate_limiter": _w(
        "inferd has no rate limiter (Triton also ignores this unless started with --rate-limit); "
        "it changes scheduling only, never an answer"
    ),
    "instance_group.rate_limiter.resources": _w("see instance_group.rate_limiter"),
    "instance_group.rate_limiter.resources.name": _w("see instance_group.rate_limiter"),
    "instance_group.rate_limiter.resources.global": _w("see instance_group.rate_limiter"),
    "instance_group.rate_limiter.resources.count": _w("see instance_group.rate_limiter"),
    "instance_group.rate_limiter.priority": _w("see instance_group.rate_limiter"),
    "instance_group.gpus": _h("the GPUs of a KIND_GPU group; refused with KIND_CPU or KIND_MODEL"),
    "instance_group.secondary_devices": _r("secondary devices are not supported"),
    "instance_group.secondary_devices.kind": _r("secondary devices are not supported"),
    "instance_group.secondary_devices.device_id": _r("secondary devices are not supported"),
    "instance_group.profile": _r("choosing TensorRT optimization profiles per group is not supported"),
    "instance_group.passive": _r("passive instances are not supported"),
    "instance_group.host_policy": _w("NUMA host policies place memory only; inferd has none"),
    "default_model_filename": _h("the model file's name in each version folder"),
    "cc_model_filenames": _r("per-compute-capability model files are not supported"),
    "metric_tags": _h(
        "each tag is a label '_<key>' on the model's metrics, as in Triton (keys must make valid Prometheus label names)"
    ),
    "parameters": _h(
        "passed to the backend (each backend refuses the keys it cannot honour); the server reads `traffic`, "
        "`traffic_bake_secs` and `drift` itself (Rolling out a new version)"
    ),
    "parameters.string_value": _h("passed to the backend"),
    "model_warmup": _WARMUP,
    "model_warmup.name": _WARMUP,
    "model_warmup.batch_size": _WARMUP,
    "model_warmup.inputs": _WARMUP,
    "model_warmup.inputs.data_type": _WARMUP,
    "model_warmup.inputs.dims": _WARMUP,
    "model_warmup.inputs.zero_data": _WARMUP,
    "model_warmup.inputs.random_data": _WARMUP,
    "model_warmup.inputs.input_data_file": _WARMUP,
    "model_warmup.count": _WARMUP,
    "model_operations": _CONTAINER,
    "model_operations.op_library_filename": _r("custom operation libraries are not supported"),
    "model_transaction_policy": _CONTAINER,
    "model_transaction_policy.decoupled": _h(
        "0..N responses per request, sent by a Python model's response sender and streamed on "
        "ModelStreamInfer; other backends cannot send them",
        by=("python",),
        elsewhere=Treatment.REFUSED,
    ),
    "model_repository_agents": _CONTAINER,
    "model_repository_agents.agents": _AGENTS,
    "model_repository_agents.agents.name": _AGENTS,
    "model_repository_agents.agents.parameters": _AGENTS,
    "response_cache": _h("see its field"),
    "response_cache.enable": _h(
        "answers repeated requests from the server's response cache (--cache-config local,size=N); "
        "refused with decoupled models and sequence batching, as in Triton"
    ),
    "model_metrics": _CONTAINER,
    "model_metrics.metric_control": _METRIC_CONTROL,
    "model_metrics.metric_control.metric_identifier": _METRIC_CONTROL,
    "model_metrics.metric_control.metric_identifier.family": _METRIC_CONTROL,
    "model_metrics.metric_control.histogram_options": _METRIC_CONTROL,
    "model_metrics.metric_control.histogram_options.buckets": _METRIC_CONTROL,
}


@dataclass(frozen=True, slots=True)
class Findings:
    """What the table says about one config: refusals stop the load, warnings are logged."""

    refused: tuple[str, ...]
    warned: tuple[str, ...]


def treatment(rule: Rule, backend: str) -> Treatment:
    if rule.honoured_by is not None and backend not in rule.honoured_by:
        return rule.elsewhere
    return rule.treatment


def classify(config: mc.ModelConfig, backend: str) -> Findings:
    """Every set field's treatment for a model served by ``backend`` ("ensemble" for ensembles)."""
    refused: dict[str, str] = {}
    warned: dict[str, str] = {}
    _walk(config, "", backend, refused, warned)
    return Findings(
        tuple(f"field '{p}' is not supported by inferd: {note}" for p, note in refused.items()),
        tuple(f"field '{p}' has no effect in inferd: {note}" for p, note in warned.items()),
    )


def _walk(message: Message, prefix: str, backend: str, refused: dict[str, str], warned: dict[str, str]) -> None:
    for field, value in message.ListFields():
        path = prefix + field.name
        rule = FIELDS.get(path)
        if rule is None:  # the descriptor test keeps this from happening
            refused[path] = "the field is unknown to inferd"
            continue
        kind = treatment(rule, backend)
        if kind is Treatment.REFUSED:
            refused.setdefault(path, rule.note)
        elif kind is Treatment.WARNED:
            warned.setdefault(path, rule.note)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for child in _children(field, value):
                _walk(child, path + ".", backend, refused, warned)


def _children(field: FieldDescriptor, value: object) -> list[Message]:
    """The messages under a set message field: itself, a list's items, or a map's values."""
    if field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        if value_field.type != FieldDescriptor.TYPE_MESSAGE:
            return []
        return list(value.values())  # type: ignore[attr-defined]
    if _is_repeated(field):
        return list(value)  # type: ignore[call-overload]
    return [value]  # type: ignore[list-item]


def _is_repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 5.27; label is deprecated there
    if repeated is not None:
        return bool(repeated() if callable(repeated) else repeated)
    return field.label == FieldDescriptor.LABEL_REPEATED


def descriptor_paths() -> list[str]:
    """Every field path of ModelConfig, in declaration order (what FIELDS must cover)."""
    out: list[str] = []

    def walk(descriptor, prefix: str, seen: frozenset[str]) -> None:  # type: ignore[no-untyped-def]
        for field in descriptor.fields:
            path = prefix + field.name
            out.append(path)
            if field.type != FieldDescriptor.TYPE_MESSAGE:
                continue
            target = field.message_type
            if target.GetOptions().map_entry:
                target = target.fields_by_name["value"].message_type
                if target is None:
                    continue
            if target.full_name in seen:  # no recursive messages today; guard anyway
                continue
            walk(target, path + ".", seen | {target.full_name})

    walk(mc.ModelConfig.DESCRIPTOR, "", frozenset())
    return out


def markdown_table() -> str:
    """The README's "config support" table."""
    rows = ["| field | in inferd | what it does or why not |", "|---|---|---|"]
    for path in descriptor_paths():
        rule = FIELDS[path]
        kind = rule.treatment.value
        if rule.honoured_by is not None:
            kind = f"honoured by {', '.join(sorted(rule.honoured_by))}; {rule.elsewhere.value} elsewhere"
        rows.append(f"| `{path}` | {kind} | {rule.note} |")
    return "\n".join(rows) + "\n"
