"""Helpers for the model lifecycle tests: models whose output tells which build answered,
a test backend with controllable load time and failures, and polling waits."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from inferd.backends import registry
from inferd.backends.base import Backend, LoadContext
from inferd.protocol.errors import ModelLoadError
from onnx import TensorProto, helper, numpy_helper

from .models import OPSET, save

SIZE = 4


def const_model(value: float) -> onnx.ModelProto:
    """OUTPUT0 = INPUT0 + value over FP32 [batch, 4]: the output names the build that ran."""
    c = numpy_helper.from_array(np.full([SIZE], value, np.float32), "C")
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "C"], ["OUTPUT0"])],
        "const",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", SIZE])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", SIZE])],
        initializer=[c],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def const_config(name: str, extra: str = "", backend: str = 'platform: "onnxruntime_onnx"') -> str:
    return (
        f'name: "{name}"\n{backend}\nmax_batch_size: 8\n'
        f'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {SIZE} ] }} ]\n'
        f'output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {SIZE} ] }} ]\n{extra}'
    )


def write_const(repo: Path, name: str, version: int, value: float, config: str | None = None) -> None:
    """Write (or overwrite in place) one version of a const model, and the config if given."""
    folder = repo / name
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    save(const_model(value), folder / str(version) / "model.onnx")


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def index(client: Any) -> dict[tuple[str, str], tuple[str, str]]:
    """RepositoryIndex as {(name, version): (state, reason)} through tritonclient."""
    return {(m.name, m.version): (m.state, m.reason) for m in client.get_model_repository_index().models}


def infer_const(client: Any, model: str, version: str = "", rows: int = 1) -> tuple[str, float]:
    """One request; returns (answering version, the constant its build adds)."""
    import tritonclient.grpc as grpcclient

    data = np.arange(rows * SIZE, dtype=np.float32).reshape(rows, SIZE)
    inp = grpcclient.InferInput("INPUT0", [rows, SIZE], "FP32")
    inp.set_data_from_numpy(data)
    result = client.infer(model, [inp], model_version=version)
    delta = result.as_numpy("OUTPUT0") - data
    assert np.all(delta == delta.flat[0]), f"inconsistent output {delta}"
    return result.get_response().model_version, float(delta.flat[0])


# --- a test backend ------------------------------------------------------------------------

TEST_BACKEND = "lifecycle_test"


class ScriptedBackend(Backend):
    """Reads ``model.json`` ({"const", "load_secs", "exec_secs", "fail"}) from the version
    folder; adds ``const`` to INPUT0. Records every execution so tests can see warmup happen."""

    name = TEST_BACKEND
    default_filename = "model.json"
    executions: dict[str, list[int]] = {}  # model name -> batch sizes executed, in order

    def __init__(self, context: LoadContext) -> None:
        spec = json.loads(context.model_path.read_text())
        time.sleep(spec.get("load_secs", 0.0))
        if spec.get("fail"):
            raise ModelLoadError(f"{context.model_path}: scripted load failure")
        self.const = np.float32(spec.get("const", 0.0))
        self.exec_secs = float(spec.get("exec_secs", 0.0))
        self.model = context.model_name

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        x = inputs["INPUT0"]
        self.executions.setdefault(self.model, []).append(int(x.shape[0]))
        time.sleep(self.exec_secs)
        return {"OUTPUT0": x + self.const}


def register_test_backend() -> None:
    registry.register(TEST_BACKEND, ScriptedBackend)


def write_scripted(repo: Path, name: str, version: int, extra_config: str = "", **spec: Any) -> None:
    folder = repo / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(const_config(name, extra_config, backend=f'backend: "{TEST_BACKEND}"'))
    (folder / str(version) / "model.json").write_text(json.dumps(spec))
