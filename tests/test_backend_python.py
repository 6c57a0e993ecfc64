"""Python models (Triton's ``TritonPythonModel`` contract) served by the real server, BLS
included, and the ``inferd.backends.python_api`` module on its own."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import inferd.backends.python_api as pb_utils
import numpy as np
import pytest
from inferd.backends.base import Instance, LoadContext
from inferd.backends.python import PythonBackend
from inferd.protocol.errors import Code
from inferd.protocol.messages import message_to_dict
from inferd.protocol.pb import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from .framework_models import FrameworkServer, quiet_torchscript

pytest_plugins = ["tests.framework_models"]
pytestmark = quiet_torchscript


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16), dtype=np.float32)


def test_requests_are_batched_and_answered_one_by_one(framework_server: FrameworkServer) -> None:
    fw = framework_server
    a, b = _rows(32, 1), _rows(32, 2)
    before = fw.counts("py_add_sub")
    results = fw.infer_concurrently("py_add_sub", [{"INPUT0": a[i : i + 1], "INPUT1": b[i : i + 1]} for i in range(32)])
    np.testing.assert_allclose(np.concatenate([r["OUTPUT0"] for r in results]), a + b)
    np.testing.assert_allclose(np.concatenate([r["OUTPUT1"] for r in results]), a - b)
    inferences, executions = (after - x for after, x in zip(fw.counts("py_add_sub"), before))
    assert inferences == 32 and executions < 32, "execute(requests) should have received several requests"


def test_one_bad_request_in_a_batch_fails_alone(framework_server: FrameworkServer) -> None:
    a, b = _rows(16, 3), _rows(16, 4)
    a[5, 0] = np.nan

    def one(i: int) -> object:
        try:
            return framework_server.infer("py_add_sub", {"INPUT0": a[i : i + 1], "INPUT1": b[i : i + 1]})
        except InferenceServerException as e:
            return e

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(16)))
    failed = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, InferenceServerException)]
    assert [i for i, _ in failed] == [5]
    assert "INPUT0 has a NaN" in failed[0][1].message() and failed[0][1].status() == "StatusCode.INVALID_ARGUMENT"
    np.testing.assert_allclose(outcomes[6]["OUTPUT0"], (a + b)[6:7])  # type: ignore[index]


def test_auto_complete_and_initialize_arguments(framework_server: FrameworkServer) -> None:
    fw = framework_server
    config = fw.client.get_model_config("py_auto", as_json=True)["config"]
    assert config["backend"] == "python" and config["max_batch_size"] == 4 and "dynamic_batching" in config
    assert [t["name"] for t in config["input"]] == ["INPUT"]
    assert [t["name"] for t in config["output"]] == ["ECHO", "ARGS"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = fw.infer("py_auto", {"INPUT": x})
    np.testing.assert_array_equal(out["ECHO"], x)
    args = json.loads(out["ARGS"][0, 0])
    assert args["model_name"] == "py_auto" and args["model_version"] == "1"
    assert args["model_instance_kind"] == "CPU" and args["model_instance_device_id"] == "0"
    assert args["model_instance_name"].startswith("py_auto_0")
    assert Path(args["model_repository"]) == fw.repo / "py_auto"
    assert args["max_batch_size"] == 4


def test_bls_goes_through_the_callee(framework_server: FrameworkServer) -> None:
    fw = framework_server
    a, b = _rows(2, 5), _rows(2, 6)
    before = fw.counts("add_sub")
    out = fw.infer("py_bls", {"INPUT0": a, "INPUT1": b})
    np.testing.assert_allclose(out["SUM"], a + b)
    assert fw.counts("add_sub")[0] == before[0] + 2  # the callee's statistics counted it


def test_async_bls_with_gather(framework_server: FrameworkServer) -> None:
    a, b = _rows(3, 7), _rows(3, 8)
    out = framework_server.infer("py_bls_async", {"INPUT0": a, "INPUT1": b})
    np.testing.assert_allclose(out["DIFF"], a - b)
    np.testing.assert_allclose(out["NEG_DIFF"], b - a)


def test_bls_error_reaches_the_client_with_its_code(framework_server: FrameworkServer) -> None:
    a = _rows(1)
    with pytest.raises(InferenceServerException) as e:
        framework_server.infer("py_bls_missing", {"INPUT0": a, "INPUT1": a})
    assert "no_such_model" in e.value.message() and e.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize(
    "mode, status, text",
    [
        (1, "INTERNAL", "ValueError: mode one is not allowed"),
        (2, "UNAVAILABLE", "unavailable on purpose"),
        (3, "INTERNAL", "no output(s) ['OUT']"),
        (4, "INTERNAL", "0 responses for 1 requests"),
    ],
)
def test_execute_failures(framework_server: FrameworkServer, mode: int, status: str, text: str) -> None:
    with pytest.raises(InferenceServerException) as e:
        framework_server.infer("py_errors", {"MODE": np.array([mode], np.int32)})
    assert text in e.value.message() and e.value.status() == f"StatusCode.{status}"
    ok = framework_server.infer("py_errors", {"MODE": np.array([0], np.int32)})
    assert ok["OUT"].tolist() == [0]


def test_each_instance_imports_its_own_module(framework_server: FrameworkServer) -> None:
    fw = framework_server
    modules = sorted(m for m in sys.modules if m.startswith("inferd_model_py_instances_v1_"))
    assert len(modules) == 2
    seen = {r["WHO"][0] for r in fw.infer_concurrently("py_instances", [{"X": np.ones(1, np.float32)}] * 16)}
    assert {s.decode().split("|")[0] for s in seen} <= set(modules)
    assert len({sys.modules[m].CALLS is sys.modules[modules[0]].CALLS for m in modules}) == 2


def test_import_and_initialize_errors_are_load_reasons(framework_server: FrameworkServer) -> None:
    reason = framework_server.reason("py_import_error")
    assert "ZeroDivisionError" in reason and "line 3" in reason
    reason = framework_server.reason("py_init_error")
    assert "initialize failed: RuntimeError: no weights found" in reason


def test_finalize_runs_on_unload(framework_server: FrameworkServer) -> None:
    fw = framework_server
    marker = fw.repo / ".build" / "finalized.txt"
    assert fw.infer("py_finalize", {"X": np.ones(1, np.float32)})["OUT"].tolist() == [1.0]
    fw.running.call(fw.running.server.core.unload_model("py_finalize"))
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.read_text() == "finalized"


def test_bundled_pre_post_processing_model(framework_server: FrameworkServer) -> None:
    import onnxruntime as ort

    from .models import bundled

    raw = np.random.default_rng(9).uniform(0, 255, (3, 64)).astype(np.float32)
    out = framework_server.infer("dense_classify", {"FEATURES": raw})
    x = (raw - raw.mean(axis=1, keepdims=True)) / (raw.std(axis=1, keepdims=True) + 1e-6)
    session = ort.InferenceSession(bundled.dense_model().SerializeToString(), providers=["CPUExecutionProvider"])
    probs = session.run(["PROBS"], {"INPUT": x.astype(np.float32)})[0]
    assert out["LABEL"].ravel().tolist() == [f"class_{i}".encode() for i in probs.argmax(axis=1)]
    np.testing.assert_allclose(out["SCORE"].ravel(), probs.max(axis=1), rtol=1e-5)


# --- the backend and python_api without a server ---------------------------------------------
IDENTITY = """\
import inferd.backends.python_api as pb_utils

SEEN = []


class TritonPythonModel:
    def execute(self, requests):
        tensors = [r.get_input_tensor_by_name("X") for r in requests]
        SEEN.extend(t.as_numpy() for t in tensors)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", t.as_numpy())]) for t in tensors]
"""


def test_tensors_pass_without_copies(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.py").write_text(IDENTITY)
    config = mc.ModelConfig(name="identity", backend="python")
    config.input.add(name="X", data_type=mc.TYPE_FP32, dims=[2])
    config.output.add(name="Y", data_type=mc.TYPE_FP32, dims=[2])
    ctx = LoadContext(
        "identity", 1, config, tmp_path, tmp_path / "1", tmp_path / "1" / "model.py", Instance("i", "CPU")
    )
    backend = PythonBackend(ctx)
    x = np.arange(2, dtype=np.float32)
    [result] = backend.execute_requests([{"X": x}], ["Y"])
    module = sys.modules[backend.module_name]
    assert module.SEEN[0] is x and result["Y"] is x  # type: ignore[index]
    backend.unload()
    assert backend.module_name not in sys.modules


def test_auto_complete_config_adds_but_never_contradicts() -> None:
    config = mc.ModelConfig(name="m", max_batch_size=8)
    config.input.add(name="A", dims=[3])
    wrapper = pb_utils.ModelConfig(message_to_dict(config))
    wrapper.add_input({"name": "A", "data_type": "TYPE_INT32", "dims": [3]})  # fills the type
    wrapper.add_output({"name": "B", "data_type": "TYPE_FP32", "dims": [3]})
    with pytest.raises(ValueError, match="dims"):
        wrapper.add_input({"name": "A", "dims": [4]})
    with pytest.raises(ValueError, match="max_batch_size"):
        wrapper.set_max_batch_size(4)
    wrapper.set_dynamic_batching()
    done = pb_utils.config_from_dict(wrapper.as_dict())
    assert done.input[0].data_type == mc.TYPE_INT32 and list(done.output[0].dims) == [3]
    assert done.HasField("dynamic_batching") and done.max_batch_size == 8


def test_config_dict_is_triton_shaped() -> None:
    config = mc.ModelConfig(name="m")
    config.input.add(name="A", data_type=mc.TYPE_FP16, dims=[-1, 4])
    d = message_to_dict(config)
    assert d["max_batch_size"] == 0 and d["input"][0]["dims"] == [-1, 4]
    assert pb_utils.get_input_config_by_name(d, "A")["data_type"] == "TYPE_FP16"  # type: ignore[index]
    assert pb_utils.get_output_config_by_name(d, "A") is None
    assert pb_utils.triton_string_to_numpy("TYPE_FP16") is np.float16
    assert pb_utils.triton_to_numpy_type(mc.TYPE_STRING) is np.object_
    assert pb_utils.numpy_to_triton_type(np.float32) == mc.TYPE_FP32


def test_tensor_and_error_helpers() -> None:
    t = pb_utils.Tensor("S", np.array(["a", "bé"]))
    assert t.as_numpy().dtype == object and t.as_numpy().tolist() == [b"a", "bé".encode()]
    assert t.triton_dtype() == mc.TYPE_STRING
    err = pb_utils.to_inferd_error(pb_utils.TritonError("nope", pb_utils.TritonError.INVALID_ARG))
    assert err.code is Code.INVALID_ARGUMENT and err.message == "nope"
    assert pb_utils.to_inferd_error(pb_utils.TritonError("x")).code is Code.INTERNAL
    response = pb_utils.InferenceResponse(error="bad")
    assert response.has_error() and response.error().message() == "bad"  # type: ignore[union-attr]
