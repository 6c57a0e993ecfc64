"""A model.py written for Triton, importing ``triton_python_backend_utils``, runs unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from inferd.backends import python_api
from inferd.backends.python import TRITON_MODULE, provide_triton_module
from inferd.perf import triton_models

# The Triton flavour of the Triton benchmark's add_sub: Triton's python_backend example as is.
TRITON_ADD_SUB = triton_models.model_py(triton_models.ADD_SUB_PY, "triton")
CONFIG = triton_models.add_sub_config("add_sub", 'backend: "python"')


def test_a_triton_model_py_is_served_unchanged(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    from .conftest import start_server, test_settings

    assert "import triton_python_backend_utils as pb_utils" in TRITON_ADD_SUB
    (tmp_path / "add_sub" / "1").mkdir(parents=True)
    (tmp_path / "add_sub" / "1" / "model.py").write_text(TRITON_ADD_SUB)
    (tmp_path / "add_sub" / "config.pbtxt").write_text(CONFIG)
    running = start_server(test_settings(tmp_path))
    try:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        a = np.arange(4, dtype=np.float32)
        b = np.full(4, 2, np.float32)
        inputs = [grpcclient.InferInput("INPUT0", [4], "FP32"), grpcclient.InferInput("INPUT1", [4], "FP32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("add_sub", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    finally:
        running.stop()


def test_a_module_of_that_name_in_the_environment_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, TRITON_MODULE, raising=False)
    (tmp_path / f"{TRITON_MODULE}.py").write_text("OWN = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not provide_triton_module()
    assert TRITON_MODULE not in sys.modules  # not imported, not replaced
    monkeypatch.delitem(sys.modules, TRITON_MODULE, raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    assert provide_triton_module()
    assert sys.modules[TRITON_MODULE] is python_api


ECHO_REQUEST = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            seen = {"id": r.request_id(), "parameters": json.loads(r.parameters())}
            text = np.array([json.dumps(seen, sort_keys=True).encode()], dtype=object)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("SEEN", text)]))
        return out
"""
ECHO_CONFIG = """name: "echo_request"
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "SEEN" data_type: TYPE_STRING dims: [ 1 ] } ]
"""


def test_requests_carry_the_clients_id_and_parameters(tmp_path: Path) -> None:
    """As in Triton: request_id() and parameters() (JSON) of what the client sent, on both
    protocols; the parameters the server acts on itself (priority, timeout) are left out."""
    import json

    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from .conftest import start_server, test_settings

    (tmp_path / "echo_request" / "1").mkdir(parents=True)
    (tmp_path / "echo_request" / "1" / "model.py").write_text(ECHO_REQUEST)
    (tmp_path / "echo_request" / "config.pbtxt").write_text(ECHO_CONFIG)
    running = start_server(test_settings(tmp_path))
    try:
        x = np.ones(1, np.float32)
        params = {"user": "u-17", "top_k": 5, "greedy": True}
        g = grpcclient.InferenceServerClient(running.grpc_url)
        gi = grpcclient.InferInput("X", [1], "FP32")
        gi.set_data_from_numpy(x)
        h = httpclient.InferenceServerClient(running.http_url)
        hi = httpclient.InferInput("X", [1], "FP32")
        hi.set_data_from_numpy(x)
        for result in (
            g.infer("echo_request", [gi], request_id="req-1", parameters=params, timeout=10**7),
            h.infer("echo_request", [hi], request_id="req-1", parameters=params),
        ):
            seen = json.loads(result.as_numpy("SEEN")[0])
            assert seen == {"id": "req-1", "parameters": params}
        plain = json.loads(g.infer("echo_request", [gi]).as_numpy("SEEN")[0])
        assert plain == {"id": "", "parameters": {}}
    finally:
        running.stop()


def test_a_packed_execution_environment_is_refused_with_its_reason(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    from .conftest import start_server, test_settings

    (tmp_path / "add_sub" / "1").mkdir(parents=True)
    (tmp_path / "add_sub" / "1" / "model.py").write_text(TRITON_ADD_SUB)
    env = 'parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }'
    (tmp_path / "add_sub" / "config.pbtxt").write_text(CONFIG + "\n" + env + "\n")
    running = start_server(test_settings(tmp_path))
    try:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        (entry,) = [m for m in client.get_model_repository_index().models if m.name == "add_sub" and m.version]
        assert entry.state == "UNAVAILABLE"
        assert "parameter 'EXECUTION_ENV_PATH' (a packed Python environment) is not supported" in entry.reason
    finally:
        running.stop()
