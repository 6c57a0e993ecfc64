"""Tests for the generated protobuf/gRPC stubs in protocol/pb/.

* the committed stubs match what proto/generate.py produces (not stale);
* our messages are wire-compatible with tritonclient's (bytes produced by one
  parse into identical messages with the other, in both directions);
* our descriptors contain every message, field, enum value and RPC that
  tritonclient's do, with identical numbers, types and names;
* our stubs and ``tritonclient.grpc`` coexist in one process (they register
  the same ``inference.*`` names, ours in a private descriptor pool);
* a stock tritonclient gRPC client talks to a server built on our stubs.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import descriptor, descriptor_pool, json_format, message, text_format
from tritonclient.grpc import model_config_pb2 as triton_mc
from tritonclient.grpc import service_pb2 as triton_svc

REPO_ROOT = Path(__file__).resolve().parent.parent


def _import_stubs() -> tuple[ModuleType, str | None]:
    """Import ``inferd.protocol.pb``; return it and the sys.path entry used.

    Until the project is installed (setuptools maps protocol/ to
    ``inferd.protocol``), fall back to a throwaway namespace-package shim
    that points ``inferd/protocol`` at the repo's protocol/ folder.
    """
    try:
        return importlib.import_module("inferd.protocol.pb"), None
    except ModuleNotFoundError as exc:
        if exc.name not in ("inferd", "inferd.protocol"):
            raise
    shim = tempfile.mkdtemp(prefix="inferd-shim-")
    atexit.register(shutil.rmtree, shim, ignore_errors=True)  # removes the link only
    (Path(shim) / "inferd").mkdir()
    (Path(shim) / "inferd" / "protocol").symlink_to(REPO_ROOT / "protocol", target_is_directory=True)
    sys.path.insert(0, shim)
    return importlib.import_module("inferd.protocol.pb"), shim


_, _SHIM_DIR = _import_stubs()

# Imported only now, after the (possible) shim is in place.
ours_svc = importlib.import_module("inferd.protocol.pb.grpc_service_pb2")
ours_svc_grpc = importlib.import_module("inferd.protocol.pb.grpc_service_pb2_grpc")
ours_mc = importlib.import_module("inferd.protocol.pb.model_config_pb2")
ours_health = importlib.import_module("inferd.protocol.pb.health_pb2")
ours_health_grpc = importlib.import_module("inferd.protocol.pb.health_pb2_grpc")


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    if _SHIM_DIR is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_SHIM_DIR, env.get("PYTHONPATH")) if p)
    return env


# ---------------------------------------------------------------------------
# (a) staleness
# ---------------------------------------------------------------------------


def test_generated_stubs_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "proto" / "generate.py"), "--check"],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 0, (
        "protocol/pb/ is stale; run `python proto/generate.py`\n" + result.stdout + result.stderr
    )


# ---------------------------------------------------------------------------
# (b) wire compatibility
# ---------------------------------------------------------------------------


def _as_dict(msg: message.Message) -> dict[str, object]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _cross_parse(src: message.Message, dst_cls: type[message.Message]) -> message.Message:
    """Parse src's bytes as dst_cls and check nothing was lost or changed."""
    dst = dst_cls.FromString(src.SerializeToString())
    assert dst.DESCRIPTOR.full_name == src.DESCRIPTOR.full_name
    assert dst.DESCRIPTOR is not src.DESCRIPTOR  # really two independent schemas
    assert _as_dict(dst) == _as_dict(src)
    # A field dst does not know would be missing from its dict; on top of
    # that, deterministic encodings must be byte-identical.
    assert dst.SerializeToString(deterministic=True) == src.SerializeToString(deterministic=True)
    return dst


def _triton_infer_request() -> triton_svc.ModelInferRequest:
    req = triton_svc.ModelInferRequest(model_name="simple", model_version="3", id="req-7")
    req.parameters["sequence_id"].int64_param = 42
    req.parameters["sequence_start"].bool_param = True
    req.parameters["note"].string_param = "hello"
    req.parameters["temperature"].double_param = 0.25
    req.parameters["big"].uint64_param = 2**63 + 5

    raw = req.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 4])
    raw.parameters["binary_data_size"].int64_param = 16
    req.raw_input_contents.append(np.arange(4, dtype="<i4").tobytes())

    typed = req.inputs.add(name="INPUT1", datatype="FP32", shape=[2])
    typed.contents.fp32_contents.extend([1.5, -2.0])
    text = req.inputs.add(name="INPUT2", datatype="BYTES", shape=[2])
    text.contents.bytes_contents.extend([b"a", b"\x00\xffz"])
    shm = req.inputs.add(name="INPUT3", datatype="UINT64", shape=[1])
    shm.parameters["shared_memory_region"].string_param = "region0"
    shm.parameters["shared_memory_byte_size"].int64_param = 8

    out = req.outputs.add(name="OUTPUT0")
    out.parameters["classification"].int64_param = 3
    req.outputs.add(name="OUTPUT1")
    return req


def test_model_infer_request_triton_to_ours() -> None:
    ours = _cross_parse(_triton_infer_request(), ours_svc.ModelInferRequest)
    assert isinstance(ours, ours_svc.ModelInferRequest)
    assert (ours.model_name, ours.model_version, ours.id) == ("simple", "3", "req-7")
    assert ours.parameters["sequence_id"].int64_param == 42
    assert ours.parameters["sequence_start"].bool_param is True
    assert ours.parameters["temperature"].WhichOneof("parameter_choice") == "double_param"
    assert ours.parameters["big"].uint64_param == 2**63 + 5
    assert [(i.name, i.datatype, list(i.shape)) for i in ours.inputs] == [
        ("INPUT0", "INT32", [1, 4]),
        ("INPUT1", "FP32", [2]),
        ("INPUT2", "BYTES", [2]),
        ("INPUT3", "UINT64", [1]),
    ]
    assert list(ours.inputs[1].contents.fp32_contents) == [1.5, -2.0]
    assert list(ours.inputs[2].contents.bytes_contents) == [b"a", b"\x00\xffz"]
    assert ours.inputs[3].parameters["shared_memory_region"].string_param == "region0"
    assert np.frombuffer(ours.raw_input_contents[0], dtype="<i4").tolist() == [0, 1, 2, 3]
    assert ours.outputs[0].parameters["classification"].int64_param == 3


def test_model_infer_request_ours_to_triton() -> None:
    ours = ours_svc.ModelInferRequest.FromString(_triton_infer_request().SerializeToString())
    back = _cross_parse(ours, triton_svc.ModelInferRequest)
    assert back == _triton_infer_request()


def test_model_infer_and_stream_response_roundtrip() -> None:
    resp = ours_svc.ModelInferResponse(model_name="simple", model_version="1", id="r")
    resp.parameters["triton_final_response"].bool_param = True
    out = resp.outputs.add(name="OUTPUT0", datatype="FP16", shape=[3])
    out.parameters["note"].string_param = "x"
    resp.raw_output_contents.append(np.ones(3, dtype="<f2").tobytes())
    stream = ours_svc.ModelStreamInferResponse(error_message="", infer_response=resp)

    theirs = _cross_parse(stream, triton_svc.ModelStreamInferResponse)
    assert theirs.infer_response.outputs[0].datatype == "FP16"
    _cross_parse(theirs, ours_svc.ModelStreamInferResponse)


def _config_dynamic(pb: ModuleType) -> message.Message:
    cfg = pb.ModelConfig(name="resnet", platform="onnxruntime_onnx", backend="onnxruntime", max_batch_size=8)
    cfg.version_policy.specific.versions.extend([1, 3])
    inp = cfg.input.add(name="input", data_type=pb.TYPE_FP32, format=pb.ModelInput.FORMAT_NCHW, dims=[3, -1, -1])
    inp.reshape.shape.extend([1, 3, 224, 224])
    inp.allow_ragged_batch = True
    inp.optional = True
    cfg.input.add(name="shape", data_type=pb.TYPE_INT64, dims=[2], is_shape_tensor=True)
    cfg.output.add(name="probs", data_type=pb.TYPE_BF16, dims=[1000], label_filename="labels.txt")
    cfg.batch_input.add(
        kind=pb.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT,
        target_name=["acc"],
        data_type=pb.TYPE_FP32,
        source_input=["input"],
    )
    cfg.batch_output.add(
        target_name=["probs"], kind=pb.BatchOutput.BATCH_SCATTER_WITH_INPUT_SHAPE, source_input=["input"]
    )

    opt = cfg.optimization
    opt.graph.level = 1
    opt.priority = pb.ModelOptimizationPolicy.PRIORITY_MAX
    opt.cuda.graphs = True
    spec = opt.cuda.graph_spec.add(batch_size=4)
    spec.input["input"].dim.extend([4, 3, 224, 224])
    spec.graph_lower_bound.batch_size = 1
    spec.graph_lower_bound.input["input"].dim.extend([1, 3, 224, 224])
    acc = opt.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    acc.parameters["precision_mode"] = "FP16"
    opt.input_pinned_memory.enable = True
    opt.gather_kernel_buffer_threshold = 2
    opt.eager_batching = True

    db = cfg.dynamic_batching
    db.preferred_batch_size.extend([4, 8])
    db.max_queue_delay_microseconds = 100
    db.preserve_ordering = True
    db.priority_levels = 2
    db.default_priority_level = 1
    db.default_queue_policy.timeout_action = pb.ModelQueuePolicy.DELAY
    db.default_queue_policy.default_timeout_microseconds = 5000
    db.priority_queue_policy[1].max_queue_size = 16
    db.priority_queue_policy[2].allow_timeout_override = True

    group = cfg.instance_group.add(name="gpu_group", kind=pb.ModelInstanceGroup.KIND_GPU, count=2, gpus=[0, 1])
    group.rate_limiter.priority = 3
    group.rate_limiter.resources.add(name="R1", count=4, **{"global": True})
    group.secondary_devices.add(kind=pb.ModelInstanceGroup.SecondaryDevice.KIND_NVDLA, device_id=0)
    group.profile.append("0")
    group.host_policy = "numa0"
    cfg.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=1, passive=True)

    cfg.default_model_filename = "model.onnx"
    cfg.cc_model_filenames["8.0"] = "model_sm80.onnx"
    cfg.metric_tags["team"] = "vision"
    cfg.parameters["EXECUTION_ENV_PATH"].string_value = "/env.tar.gz"
    warm = cfg.model_warmup.add(name="zeros", batch_size=2, count=3)
    warm.inputs["input"].data_type = pb.TYPE_FP32
    warm.inputs["input"].dims.extend([3, 224, 224])
    warm.inputs["input"].zero_data = True
    warm.inputs["shape"].random_data = True
    cfg.model_operations.op_library_filename.append("libops.so")
    cfg.model_transaction_policy.decoupled = True
    cfg.model_repository_agents.agents.add(name="checksum").parameters["MD5:model.onnx"] = "abc"
    cfg.response_cache.enable = True
    return cfg


def _config_ensemble(pb: ModuleType) -> message.Message:
    cfg = pb.ModelConfig(name="pipeline", platform="ensemble", max_batch_size=4)
    cfg.version_policy.latest.num_versions = 2
    cfg.input.add(name="RAW", data_type=pb.TYPE_STRING, dims=[1])
    cfg.output.add(name="SCORES", data_type=pb.TYPE_FP32, dims=[-1])
    pre = cfg.ensemble_scheduling.step.add(model_name="preprocess", model_version=-1)
    pre.input_map["IN"] = "RAW"
    pre.output_map["OUT"] = "tensor"
    main = cfg.ensemble_scheduling.step.add(model_name="classifier", model_version=2, model_namespace="ns")
    main.input_map["input"] = "tensor"
    main.output_map["probs"] = "SCORES"
    return cfg


def _config_sequence(pb: ModuleType) -> message.Message:
    cfg = pb.ModelConfig(name="stateful", backend="python", max_batch_size=2)
    cfg.version_policy.all.SetInParent()
    sb = cfg.sequence_batching
    sb.max_sequence_idle_microseconds = 1_000_000
    sb.oldest.max_candidate_sequences = 4
    sb.oldest.preferred_batch_size.append(2)
    sb.oldest.max_queue_delay_microseconds = 10
    sb.oldest.preserve_ordering = True
    start = sb.control_input.add(name="START")
    start.control.add(kind=pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START, int32_false_true=[0, 1])
    corr = sb.control_input.add(name="CORRID")
    corr.control.add(kind=pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID, data_type=pb.TYPE_UINT64)
    ready = sb.control_input.add(name="READY")
    ready.control.add(kind=pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_READY, fp32_false_true=[0.0, 1.0])
    ready.control.add(kind=pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_END, bool_false_true=[False, True])
    state = sb.state.add(input_name="IN_STATE", output_name="OUT_STATE", data_type=pb.TYPE_INT32, dims=[-1])
    state.initial_state.add(name="init", data_type=pb.TYPE_INT32, dims=[1], zero_data=True)
    state.use_same_buffer_for_input_output = True
    state.use_growable_memory = True
    sb.iterative_sequence = True
    return cfg


@pytest.mark.parametrize("build", [_config_dynamic, _config_ensemble, _config_sequence])
def test_model_config_roundtrip(build: Callable[[ModuleType], message.Message]) -> None:
    theirs = build(triton_mc)
    ours = _cross_parse(theirs, ours_mc.ModelConfig)
    assert ours == build(ours_mc)  # same values when built field by field
    assert theirs.WhichOneof("scheduling_choice") == ours.WhichOneof("scheduling_choice")
    _cross_parse(build(ours_mc), triton_mc.ModelConfig)

    # config.pbtxt text is interchangeable too.
    pbtxt = text_format.MessageToString(ours)
    assert text_format.Parse(pbtxt, triton_mc.ModelConfig()) == theirs


def test_model_config_response_carries_our_model_config() -> None:
    resp = ours_svc.ModelConfigResponse(config=_config_dynamic(ours_mc))
    assert (
        ours_svc.ModelConfigResponse.DESCRIPTOR.fields_by_name["config"].message_type is ours_mc.ModelConfig.DESCRIPTOR
    )
    theirs = _cross_parse(resp, triton_svc.ModelConfigResponse)
    assert theirs.config == _config_dynamic(triton_mc)


def _triton_statistics() -> triton_svc.ModelStatisticsResponse:
    resp = triton_svc.ModelStatisticsResponse()
    stats = resp.model_stats.add(name="simple", version="1", last_inference=1_700_000_000_000)
    stats.inference_count = 640
    stats.execution_count = 10
    infer = stats.inference_stats
    for i, name in enumerate(
        ["success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss"]
    ):
        getattr(infer, name).count = i + 1
        getattr(infer, name).ns = (i + 1) * 1000
    batch = stats.batch_stats.add(batch_size=64)
    batch.compute_input.count = 10
    batch.compute_infer.ns = 123_456
    batch.compute_output.count = 10
    stats.memory_usage.add(type="GPU", id=0, byte_size=1 << 30)
    resp.model_stats.add(name="other")
    return resp


def test_model_statistics_roundtrip() -> None:
    ours = _cross_parse(_triton_statistics(), ours_svc.ModelStatisticsResponse)
    stats = ours.model_stats[0]
    assert (stats.inference_count, stats.execution_count) == (640, 10)
    assert stats.inference_stats.cache_miss.ns == 8000
    assert stats.batch_stats[0].compute_infer.ns == 123_456
    assert stats.memory_usage[0].byte_size == 1 << 30
    assert _cross_parse(ours, triton_svc.ModelStatisticsResponse) == _triton_statistics()


def test_newer_fields_survive_an_old_tritonclient() -> None:
    """Fields newer than tritonclient 2.41 pass through it as unknown fields."""
    ours = ours_svc.ModelStatistics(name="decoupled")
    ours.response_stats["0"].success.count = 5
    ours.response_stats["1"].cancel.ns = 7
    old = triton_svc.ModelStatistics.FromString(ours.SerializeToString())
    assert old.name == "decoupled"
    again = ours_svc.ModelStatistics.FromString(old.SerializeToString())
    assert again == ours

    cfg = ours_mc.ModelConfig(name="m", runtime="model.py")
    cfg.model_metrics.metric_control.add().histogram_options.buckets.extend([0.1, 1.0])
    assert (
        ours_mc.ModelConfig.FromString(triton_mc.ModelConfig.FromString(cfg.SerializeToString()).SerializeToString())
        == cfg
    )


# ---------------------------------------------------------------------------
# (c) descriptor comparison against tritonclient
# ---------------------------------------------------------------------------

Schema = dict[str, tuple[object, ...]]


def _field_entry(field: descriptor.FieldDescriptor) -> tuple[object, ...]:
    ref = field.message_type or field.enum_type
    return (
        field.number,
        field.type,
        field.is_repeated,
        field.is_packed,
        ref.full_name if ref is not None else None,
        field.containing_oneof.name if field.containing_oneof is not None else None,
    )


def _walk_enum(enum: descriptor.EnumDescriptor, schema: Schema) -> None:
    schema[f"enum {enum.full_name}"] = ()
    for value in enum.values:
        schema[f"enum value {enum.full_name}.{value.name}"] = (value.number,)
        schema[f"enum number {enum.full_name}#{value.number}"] = (value.name,)


def _walk_message(msg: descriptor.Descriptor, schema: Schema) -> None:
    schema[f"message {msg.full_name}"] = (msg.GetOptions().map_entry,)
    for field in msg.fields:
        schema[f"field {field.full_name}"] = _field_entry(field)
        # Keyed by number as well, so a renamed field is reported as such.
        schema[f"field number {msg.full_name}#{field.number}"] = (field.name,)
    for oneof in msg.oneofs:
        schema[f"oneof {msg.full_name}.{oneof.name}"] = tuple(sorted(f.name for f in oneof.fields))
    for enum in msg.enum_types:
        _walk_enum(enum, schema)
    for nested in msg.nested_types:
        _walk_message(nested, schema)


def _file_schema(file: descriptor.FileDescriptor) -> Schema:
    schema: Schema = {"file": (file.name, file.package)}
    for msg in file.message_types_by_name.values():
        _walk_message(msg, schema)
    for enum in file.enum_types_by_name.values():
        _walk_enum(enum, schema)
    for service in file.services_by_name.values():
        schema[f"service {service.full_name}"] = ()
        for method in service.methods:
            schema[f"rpc {method.full_name}"] = (
                method.input_type.full_name,
                method.output_type.full_name,
                method.client_streaming,
                method.server_streaming,
            )
    return schema


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [(triton_svc, ours_svc), (triton_mc, ours_mc)],
    ids=["grpc_service", "model_config"],
)
def test_descriptors_match_tritonclient(theirs: ModuleType, ours: ModuleType) -> None:
    their_schema = _file_schema(theirs.DESCRIPTOR)
    our_schema = _file_schema(ours.DESCRIPTOR)
    assert len(their_schema) > 20  # sanity: the walk found something

    problems = [f"missing in ours: {key} {value}" for key, value in their_schema.items() if key not in our_schema]
    problems += [
        f"mismatch: {key}: tritonclient {value} != ours {our_schema[key]}"
        for key, value in their_schema.items()
        if key in our_schema and our_schema[key] != value
    ]
    assert not problems, "\n".join(problems)


# Fields newer than the tritonclient installed here (2.41); numbers and types
# verified against the descriptors of tritonclient 2.73.0.
_POST_241_FIELDS: list[tuple[ModuleType, str, str, int, int, bool]] = [
    (ours_mc, "ModelConfig", "runtime", 25, descriptor.FieldDescriptor.TYPE_STRING, False),
    (ours_mc, "ModelConfig", "model_metrics", 26, descriptor.FieldDescriptor.TYPE_MESSAGE, False),
    (ours_mc, "ModelInput", "is_non_linear_format_io", 9, descriptor.FieldDescriptor.TYPE_BOOL, False),
    (ours_mc, "ModelOutput", "is_non_linear_format_io", 7, descriptor.FieldDescriptor.TYPE_BOOL, False),
    (ours_mc, "ModelEnsembling", "max_inflight_requests", 2, descriptor.FieldDescriptor.TYPE_UINT32, False),
    (ours_mc, "ModelMetrics", "metric_control", 1, descriptor.FieldDescriptor.TYPE_MESSAGE, True),
    (ours_mc, "ModelMetrics.MetricControl", "metric_identifier", 1, descriptor.FieldDescriptor.TYPE_MESSAGE, False),
    (ours_mc, "ModelMetrics.MetricControl", "histogram_options", 2, descriptor.FieldDescriptor.TYPE_MESSAGE, False),
    (
        ours_mc,
        "ModelMetrics.MetricControl.MetricIdentifier",
        "family",
        1,
        descriptor.FieldDescriptor.TYPE_STRING,
        False,
    ),
    (
        ours_mc,
        "ModelMetrics.MetricControl.HistogramOptions",
        "buckets",
        1,
        descriptor.FieldDescriptor.TYPE_DOUBLE,
        True,
    ),
    (ours_svc, "ModelStatistics", "response_stats", 9, descriptor.FieldDescriptor.TYPE_MESSAGE, True),
    *(
        (ours_svc, "InferResponseStatistics", name, number, descriptor.FieldDescriptor.TYPE_MESSAGE, False)
        for number, name in enumerate(
            ["compute_infer", "compute_output", "success", "fail", "empty_response", "cancel"], start=1
        )
    ),
]


@pytest.mark.parametrize(
    ("module", "message_name", "field_name", "number", "field_type", "repeated"),
    _POST_241_FIELDS,
    ids=[f"{m}.{f}" for _, m, f, *_ in _POST_241_FIELDS],
)
def test_fields_newer_than_installed_tritonclient(
    module: ModuleType, message_name: str, field_name: str, number: int, field_type: int, repeated: bool
) -> None:
    field = module.DESCRIPTOR.pool.FindMessageTypeByName(f"inference.{message_name}").fields_by_name[field_name]
    assert (field.number, field.type, field.is_repeated) == (number, field_type, repeated)


def test_oneof_membership_of_newer_fields() -> None:
    control = ours_mc.ModelMetrics.MetricControl.DESCRIPTOR
    assert control.fields_by_name["metric_identifier"].containing_oneof is None
    assert control.fields_by_name["histogram_options"].containing_oneof.name == "metric_options"


def test_health_descriptor() -> None:
    file = ours_health.DESCRIPTOR
    assert (file.name, file.package) == ("health.proto", "grpc.health.v1")
    assert ours_health.HealthCheckRequest.DESCRIPTOR.fields_by_name["service"].number == 1
    assert ours_health.HealthCheckResponse.DESCRIPTOR.fields_by_name["status"].number == 1
    statuses = {v.name: v.number for v in ours_health.HealthCheckResponse.ServingStatus.DESCRIPTOR.values}
    assert statuses == {"UNKNOWN": 0, "SERVING": 1, "NOT_SERVING": 2, "SERVICE_UNKNOWN": 3}
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in file.services_by_name["Health"].methods}
    assert methods == {"Check": (False, False), "Watch": (False, True)}


# ---------------------------------------------------------------------------
# Coexistence with tritonclient
# ---------------------------------------------------------------------------


def test_private_descriptor_pool() -> None:
    from inferd.protocol.pb import _pool

    for module in (ours_svc, ours_mc, ours_health):
        assert module.DESCRIPTOR.pool is _pool.POOL
    assert _pool.POOL is not descriptor_pool.Default()
    assert triton_svc.DESCRIPTOR.pool is descriptor_pool.Default()
    assert ours_svc.ModelInferRequest.__module__ == "inferd.protocol.pb.grpc_service_pb2"


_COEXIST_SCRIPT = textwrap.dedent(
    """
    import importlib, sys

    def load_ours():
        return (importlib.import_module("inferd.protocol.pb.grpc_service_pb2"),
                importlib.import_module("inferd.protocol.pb.model_config_pb2"),
                importlib.import_module("inferd.protocol.pb.grpc_service_pb2_grpc"),
                importlib.import_module("inferd.protocol.pb.health_pb2_grpc"))

    def load_triton():
        import tritonclient.grpc  # noqa: F401  (registers inference.* in the default pool)
        import tritonclient.grpc.aio  # noqa: F401
        from tritonclient.grpc import model_config_pb2, service_pb2
        return service_pb2, model_config_pb2

    if sys.argv[1] == "ours-first":
        o_svc, o_mc, _, _ = load_ours()
        t_svc, t_mc = load_triton()
    else:
        t_svc, t_mc = load_triton()
        o_svc, o_mc, _, _ = load_ours()

    mine = o_svc.ModelInferRequest(model_name="m", raw_input_contents=[b"abc"])
    mine.inputs.add(name="x", datatype="BYTES", shape=[1])
    theirs = t_svc.ModelInferRequest(model_name="m", raw_input_contents=[b"abc"])
    theirs.inputs.add(name="x", datatype="BYTES", shape=[1])
    assert t_svc.ModelInferRequest.FromString(mine.SerializeToString()) == theirs
    assert o_svc.ModelInferRequest.FromString(theirs.SerializeToString()) == mine

    cfg = o_mc.ModelConfig(name="c", max_batch_size=4)
    cfg.dynamic_batching.preferred_batch_size.append(2)
    assert o_mc.ModelConfig.FromString(t_mc.ModelConfig.FromString(cfg.SerializeToString()).SerializeToString()) == cfg
    print("ok")
    """
)


@pytest.mark.parametrize("order", ["ours-first", "triton-first"])
def test_coexists_with_tritonclient_in_one_process(order: str) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _COEXIST_SCRIPT, order],
        check=False,
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


# ---------------------------------------------------------------------------
# End to end: tritonclient's gRPC client against a server on our stubs
# ---------------------------------------------------------------------------


class _EchoServicer(ours_svc_grpc.GRPCInferenceServiceServicer):  # type: ignore[name-defined]
    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return ours_svc.ServerLiveResponse(live=True)

    def ModelConfig(self, request: Any, context: grpc.ServicerContext) -> Any:
        return ours_svc.ModelConfigResponse(config=_config_ensemble(ours_mc))

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        resp = ours_svc.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
            resp.outputs.add(name=tensor.name.replace("INPUT", "OUTPUT"), datatype=tensor.datatype, shape=tensor.shape)
            resp.raw_output_contents.append(raw)
        return resp


class _HealthServicer(ours_health_grpc.HealthServicer):  # type: ignore[name-defined]
    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        return ours_health.HealthCheckResponse(status=ours_health.HealthCheckResponse.SERVING)


@pytest.fixture
def server_address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ours_svc_grpc.add_GRPCInferenceServiceServicer_to_server(_EchoServicer(), server)
    ours_health_grpc.add_HealthServicer_to_server(_HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_tritonclient_talks_to_our_stubs(server_address: str) -> None:
    client = triton_grpc.InferenceServerClient(url=server_address)
    try:
        assert client.is_server_live()

        config = client.get_model_config("pipeline")
        assert isinstance(config, triton_svc.ModelConfigResponse)
        assert config.config == _config_ensemble(triton_mc)

        data = np.arange(6, dtype=np.float32).reshape(2, 3)
        infer_input = triton_grpc.InferInput("INPUT0", list(data.shape), "FP32")
        infer_input.set_data_from_numpy(data)
        result = client.infer("echo", [infer_input], request_id="7")
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
        assert result.get_response().id == "7"
    finally:
        client.close()

    with grpc.insecure_channel(server_address) as channel:
        reply = ours_health_grpc.HealthStub(channel).Check(ours_health.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == ours_health.HealthCheckResponse.SERVING
