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
