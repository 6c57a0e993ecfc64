"""Every config.pbtxt field is honoured, refused or warned about, as the table in
server/config_fields.py says; the table covers the whole ModelConfig descriptor and the README
shows it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from inferd.protocol.errors import ModelLoadError
from inferd.protocol.pb import model_config_pb2 as mc
from inferd.server import config_fields
from inferd.server.config_fields import Treatment
from inferd.server.loader import plan_model, visible_gpus
from inferd.server.repository import Repository
from onnx import TensorProto

from .conftest import start_server, test_settings
from .models import binary_model, write

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- config-fields: begin -->", "<!-- config-fields: end -->"

ADD = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }}, {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
{extra}
"""


def test_the_table_covers_every_field_of_model_config() -> None:
    paths = config_fields.descriptor_paths()
    missing = [p for p in paths if p not in config_fields.FIELDS]
    stale = [p for p in config_fields.FIELDS if p not in paths]
    assert not missing, f"fields of ModelConfig with no rule in server/config_fields.py: {missing}"
    assert not stale, f"rules for fields ModelConfig does not have: {stale}"
    # Nested messages included: a deep field of each top-level section is walked.
    for deep in (
        "sequence_batching.state.initial_state.data_file",
        "optimization.cuda.graph_spec.graph_lower_bound.input.dim",
        "dynamic_batching.priority_queue_policy.max_queue_size",
        "model_metrics.metric_control.histogram_options.buckets",
    ):
        assert deep in paths


def test_warned_fields_only_where_no_answer_can_change() -> None:
    # A warning is for tuning knobs; anything that shapes tensors or answers is refused.
    for path, rule in config_fields.FIELDS.items():
        if rule.treatment is Treatment.WARNED:
            assert not path.startswith(("input", "output.reshape", "batch_", "sequence_", "ensemble")), path


def test_the_readme_shows_the_table() -> None:
    text = README.read_text()
    assert BEGIN in text and END in text, "README.md lacks the config-fields markers"
    shown = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert shown == config_fields.markdown_table().strip(), (
        "README.md's config table is stale: regenerate it with "
        "python -c 'from inferd.server.config_fields import markdown_table; print(markdown_table())'"
    )


def plan(tmp_path: Path, extra: str, backend_model: bool = True, name: str = "m"):  # type: ignore[no-untyped-def]
    write(tmp_path, name, ADD.format(name=name, extra=extra), binary_model("Add", TensorProto.FLOAT))
    return plan_model(Repository(tmp_path), name)


@pytest.mark.parametrize(
    "extra,field",
    [
        ("sequence_batching { iterative_sequence: true }", "sequence_batching.iterative_sequence"),
        (
            "sequence_batching { state [ { input_name: 'S' output_name: 'T' data_type: TYPE_FP32 dims: [ 4 ] "
            "use_same_buffer_for_input_output: true } ] }",
            "sequence_batching.state.use_same_buffer_for_input_output",
        ),
        ("model_transaction_policy { decoupled: true }", "model_transaction_policy.decoupled"),
        ("model_operations { op_library_filename: 'libcustom.so' }", "model_operations.op_library_filename"),
        ("cc_model_filenames { key: '8.0' value: 'a.onnx' }", "cc_model_filenames"),
        ("instance_group [ { kind: KIND_CPU passive: true } ]", "instance_group.passive"),
        ("instance_group [ { kind: KIND_CPU profile: '0' } ]", "instance_group.profile"),
    ],
)
def test_refused_fields_name_themselves(tmp_path: Path, extra: str, field: str) -> None:
    with pytest.raises(ModelLoadError) as e:
        plan(tmp_path, extra)
    assert f"field '{field}' is not supported by inferd" in e.value.message


def test_metric_tags_are_honoured_and_their_keys_checked(tmp_path: Path) -> None:
    tagged = plan(tmp_path, "metric_tags { key: 'team' value: 'search' }")
    assert dict(tagged.config.metric_tags) == {"team": "search"}
    for key in ("_private", "has-dash", "with space"):
        with pytest.raises(ModelLoadError) as e:
            plan(tmp_path, f"metric_tags {{ key: '{key}' value: 'a' }}")
        assert f"metric_tags key '{key}'" in e.value.message


def test_checksum_agent_checks_the_files(tmp_path: Path) -> None:
    import hashlib

    write(tmp_path, "m", ADD.format(name="m", extra=""), binary_model("Add", TensorProto.FLOAT))
    good = hashlib.md5((tmp_path / "m" / "1" / "model.onnx").read_bytes()).hexdigest()

    def agent(key: str, value: str) -> str:
        return f"model_repository_agents {{ agents [ {{ name: 'checksum' parameters {{ key: '{key}' value: '{value}' }} }} ] }}"

    assert plan(tmp_path, agent("MD5:1/model.onnx", good)).versions == [1]
    for key, value, words in (
        ("MD5:1/model.onnx", "0" * 32, f"Mismatched MD5 hash for file 1/model.onnx, expect: {'0' * 32}, got: {good}"),
        ("SHA1:1/model.onnx", good, "Unsupported checksum algorithm: SHA1"),
        ("MD5:1/missing.onnx", good, "failed to open file for read: 1/missing.onnx"),
        ("MD5:../m/1/model.onnx", good, ""),
        ("MD5:../../etc/passwd", good, "outside the model folder"),
        ("model.onnx", good, "failed to parse key"),
    ):
        if not words:  # a path that leaves and re-enters the folder is still inside it
            assert plan(tmp_path, agent(key, value)).versions == [1]
            continue
        with pytest.raises(ModelLoadError) as e:
            plan(tmp_path, agent(key, value))
        assert words in e.value.message and str(tmp_path) not in e.value.message.split(": ", 1)[1]
    with pytest.raises(ModelLoadError, match="repository agent 'decrypt' is not supported"):
        plan(tmp_path, "model_repository_agents { agents [ { name: 'decrypt' } ] }")


@pytest.mark.parametrize(
    "config_text,field",
    [
        (
            'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] is_shape_tensor: true } ]',
            "input.is_shape_tensor",
        ),
    ],
)
def test_refused_tensor_fields(tmp_path: Path, config_text: str, field: str) -> None:
    text = (
        'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n' + config_text + "\n"
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
    )
    write(tmp_path, "m", text, binary_model("Add", TensorProto.FLOAT))
    with pytest.raises(ModelLoadError, match=f"field '{field}' is not supported"):
        plan_model(Repository(tmp_path), "m")


def test_ragged_batching_is_honoured_and_warned_where_triton_feeds_no_batch_inputs() -> None:
    config = mc.ModelConfig(name="m", max_batch_size=4)
    config.input.add(name="R", data_type=mc.TYPE_FP32, dims=[-1], allow_ragged_batch=True)
    config.batch_input.add(target_name=["N"], data_type=mc.TYPE_INT32, source_input=["R"])
    config.batch_output.add(target_name=["Y"], source_input=["R"])
    for backend in ("onnxruntime", "pytorch", "tensorflow", "tensorrt"):
        assert config_fields.classify(config, backend) == config_fields.Findings((), ())
    python = config_fields.classify(config, "python")
    assert python.refused == ()
    assert [w.split("'")[1] for w in python.warned] == ["batch_input", "batch_output"]
    assert "Python models are not fed them" in python.warned[0]


def test_fields_that_spell_out_defaults_are_not_refused(tmp_path: Path) -> None:
    extra = "model_transaction_policy { decoupled: false }\nresponse_cache { enable: false }\noptimization { }"
    assert plan(tmp_path, extra).warnings == ()


@pytest.mark.parametrize(
    "extra,field",
    [
        ("optimization { cuda { graphs: true } }", "optimization.cuda"),
        ("optimization { input_pinned_memory { enable: false } }", "optimization.input_pinned_memory"),
        ("instance_group [ { kind: KIND_CPU rate_limiter { priority: 2 } } ]", "instance_group.rate_limiter"),
        ("instance_group [ { kind: KIND_CPU host_policy: 'numa0' } ]", "instance_group.host_policy"),
        ("optimization { priority: PRIORITY_MAX }", "optimization.priority"),
    ],
)
def test_warned_fields_load_with_the_warning(tmp_path: Path, extra: str, field: str) -> None:
    found = plan(tmp_path, extra)
    assert len(found.warnings) == 1 and f"field '{field}' has no effect in inferd" in found.warnings[0]


def test_a_field_honoured_by_one_backend_is_warned_about_on_another() -> None:
    config = mc.ModelConfig(name="m")
    config.optimization.graph.level = 1
    assert config_fields.classify(config, "onnxruntime") == config_fields.Findings((), ())
    found = config_fields.classify(config, "python")
    assert found.refused == () and "optimization.graph.level" in found.warned[0]


@pytest.mark.parametrize(
    "extra,words",
    [
        (
            "dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
            "default priority level must be in range [1, 2]",
        ),
        ("dynamic_batching { priority_levels: 2 }", "default priority level must be in range [1, 2]"),
        (
            "dynamic_batching { priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 5 value: { } } }",
            "priority queue policy must have priority level in range [1, 2]",
        ),
        ("dynamic_batching { default_priority_level: 1 }", "need 'priority_levels' > 0"),
        (
            "dynamic_batching { preserve_ordering: true priority_levels: 2 default_priority_level: 1 }",
            "Only one priority level is allowed when 'preserve_ordering' is true",
        ),
        (
            "dynamic_batching { preserve_ordering: true default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 5 } }",
            "can not have DELAY as timeout action",
        ),
        ("instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]", "has kind KIND_CPU but specifies one or more GPUs"),
        ("instance_group [ { kind: KIND_MODEL gpus: [ 0 ] } ]", "has kind KIND_MODEL but specifies one or more GPUs"),
        ("runtime: 'libtriton_pytorch.so'", "field 'runtime'"),
    ],
)
def test_values_triton_refuses(tmp_path: Path, extra: str, words: str) -> None:
    with pytest.raises(ModelLoadError) as e:
        plan(tmp_path, extra)
    assert words in e.value.message


def test_runtime_naming_the_chosen_backend_is_accepted(tmp_path: Path) -> None:
    assert plan(tmp_path, "runtime: 'libtriton_onnxruntime.so'").config.runtime == "libtriton_onnxruntime.so"


def test_image_formats_need_three_dims(tmp_path: Path) -> None:
    text = (
        'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 4 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
    )
    write(tmp_path, "m", text, binary_model("Add", TensorProto.FLOAT))
    with pytest.raises(ModelLoadError, match="model input NHWC/NCHW require 3 dims"):
        plan_model(Repository(tmp_path), "m")


@pytest.mark.skipif(visible_gpus() > 0, reason="this machine has a GPU")
def test_a_gpu_instance_without_a_gpu_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="has kind KIND_GPU but no GPUs are available"):
        plan(tmp_path, "instance_group [ { kind: KIND_GPU } ]")


def test_visible_gpus_follows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, count in (("", 0), ("0,1", 2), ("0,-1,2", 1), ("-1", 0)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert visible_gpus() == count


def test_the_server_serves_warned_models_and_reports_refused_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(
        tmp_path,
        "tuned",
        ADD.format(name="tuned", extra="optimization { cuda { graphs: true } }"),
        binary_model("Add", TensorProto.FLOAT),
    )
    write(
        tmp_path,
        "stateful",
        ADD.format(name="stateful", extra="sequence_batching { iterative_sequence: true }"),
        binary_model("Add", TensorProto.FLOAT),
    )
    with caplog.at_level(logging.WARNING, logger="inferd"):
        running = start_server(test_settings(tmp_path))
    try:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["tuned"].state == "READY"
        assert "field 'optimization.cuda' has no effect in inferd" in index["tuned"].reason
        assert index["stateful"].state == "UNAVAILABLE"
        assert "field 'sequence_batching.iterative_sequence' is not supported by inferd" in index["stateful"].reason
        assert not client.is_model_ready("stateful")
        a = np.ones((1, 4), np.float32)
        inputs = [grpcclient.InferInput("INPUT0", [1, 4], "FP32"), grpcclient.InferInput("INPUT1", [1, 4], "FP32")]
        for i in inputs:
            i.set_data_from_numpy(a)
        assert np.array_equal(client.infer("tuned", inputs).as_numpy("OUTPUT0"), a + a)
        client.close()
    finally:
        running.stop()
    warned = [r.getMessage() for r in caplog.records if "optimization.cuda" in r.getMessage()]
    assert len(warned) == 1 and "model 'tuned'" in warned[0]


def test_execution_accelerators_map_to_onnxruntime_providers(tmp_path: Path) -> None:
    import onnxruntime

    available = onnxruntime.get_available_providers()

    def accelerators(kind: str, name: str, params: str = "") -> str:
        return f"optimization {{ execution_accelerators {{ {kind}_execution_accelerator [ {{ name: '{name}' {params} }} ] }} }}"

    models = {
        "openvino": accelerators("cpu", "openvino"),
        "on_cpu": accelerators("gpu", "tensorrt"),  # a GPU accelerator does nothing on a CPU instance
        "unknown": accelerators("cpu", "dnnl"),
        "bad_param": accelerators("gpu", "tensorrt", "parameters { key: 'precision' value: 'FP16' }"),
    }
    for name, extra in models.items():
        write(tmp_path, name, ADD.format(name=name, extra=extra), binary_model("Add", TensorProto.FLOAT))
    running = start_server(test_settings(tmp_path))
    try:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        index = {m.name: m for m in client.get_model_repository_index().models if m.version}
        if "OpenVINOExecutionProvider" not in available:
            assert index["openvino"].state == "UNAVAILABLE"
            assert "needs onnxruntime's OpenVINOExecutionProvider, which this onnxruntime does not have" in (
                index["openvino"].reason
            )
        assert index["on_cpu"].state == "READY"
        assert "unknown cpu execution accelerator 'dnnl'" in index["unknown"].reason
        assert "has no parameter 'precision'" in index["bad_param"].reason
        client.close()
    finally:
        running.stop()
    # Other backends have no accelerators: refused by the table.
    config = mc.ModelConfig(name="m")
    config.optimization.execution_accelerators.cpu_execution_accelerator.add(name="openvino")
    refused = config_fields.classify(config, "python").refused
    assert refused and "optimization.execution_accelerators.cpu_execution_accelerator" in refused[0]
