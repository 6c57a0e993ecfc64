"""TorchScript models served by the real server, compared with torch's own in-process output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from inferd.backends.base import Instance, LoadContext
from inferd.protocol.pb import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from .framework_models import FEATURES, FrameworkServer, needs_torch, quiet_torchscript

pytest_plugins = ["tests.framework_models"]
pytestmark = [needs_torch, quiet_torchscript]


def torch_output(fw: FrameworkServer, model: str, *args: np.ndarray) -> np.ndarray:
    import torch

    module = torch.jit.load(str(fw.repo / model / "1" / "model.pt"))
    with torch.inference_mode():
        return module(*(torch.from_numpy(a) for a in args)).numpy()


@pytest.mark.parametrize("model, batched", [("torch_mlp", True), ("torch_mlp_direct", False)])
def test_concurrent_requests_match_torch(framework_server: FrameworkServer, model: str, batched: bool) -> None:
    fw = framework_server
    rows = np.random.default_rng(1).standard_normal((32, FEATURES), dtype=np.float32)
    before = fw.counts(model)
    results = fw.infer_concurrently(model, [{"INPUT__0": rows[i : i + 1]} for i in range(len(rows))])
    inferences, executions = (after - b for after, b in zip(fw.counts(model), before))
    expected = torch_output(fw, model, rows)
    got = np.concatenate([r["OUTPUT__0"] for r in results])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert inferences == 32
    if batched:
        assert executions < 32, "concurrent requests should have been merged into batches"
    else:
        assert executions == 32


def test_multi_row_request(framework_server: FrameworkServer) -> None:
    rows = np.random.default_rng(2).standard_normal((5, FEATURES), dtype=np.float32)
    got = framework_server.infer("torch_mlp", {"INPUT__0": rows})["OUTPUT__0"]
    np.testing.assert_allclose(got, torch_output(framework_server, "torch_mlp", rows), rtol=1e-5, atol=1e-6)


def test_inputs_by_forward_argument_names(framework_server: FrameworkServer) -> None:
    # config.pbtxt lists "b" before "a": names, not positions, decide the arguments.
    a = np.array([1, 2, 3, 4], np.int64)
    b = np.array([10, 20, 30, 40], np.int64)
    out = framework_server.infer("torch_two_args", {"a": a, "b": b})
    np.testing.assert_array_equal(out["SUM"], a + b)
    np.testing.assert_array_equal(out["PRODUCT"], a * b)
    only = framework_server.infer("torch_two_args", {"a": a, "b": b}, outputs=["PRODUCT"])
    assert list(only) == ["PRODUCT"]


def test_dict_input_and_output(framework_server: FrameworkServer) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    factor = np.full((2, 3), 2.5, np.float32)
    out = framework_server.infer("torch_dict", {"X": x, "FACTOR": factor})
    np.testing.assert_array_equal(out["SCALED"], x * factor)


def test_string_list_io(framework_server: FrameworkServer) -> None:
    text = np.array([[b"abc"], [b"Hello w\xc3\xb6rld"]], dtype=object)
    out = framework_server.infer("torch_strings", {"INPUT__0": text})["OUTPUT__0"]
    assert out.shape == (2, 1)
    # TorchScript's str.upper() is ASCII-only; the UTF-8 bytes round-trip unchanged.
    assert out.ravel().tolist() == [b"ABC", b"HELLO W\xc3\xb6RLD"]


def test_output_datatype_contradicting_config_fails_clearly(framework_server: FrameworkServer) -> None:
    rows = np.zeros((1, FEATURES), np.float32)
    with pytest.raises(InferenceServerException) as e:
        framework_server.infer("torch_wrong_dtype", {"INPUT__0": rows})
    assert "FP32" in e.value.message() and "FP64" in e.value.message()


def test_missing_config_is_a_clear_load_error(framework_server: FrameworkServer) -> None:
    reason = framework_server.reason("torch_no_config")
    assert "TorchScript" in reason and "config.pbtxt must list" in reason


def test_metadata_reports_the_platform(framework_server: FrameworkServer) -> None:
    meta = framework_server.client.get_model_metadata("torch_mlp", as_json=True)
    assert meta["platform"] == "pytorch_libtorch"
    assert meta["inputs"][0] == {"name": "INPUT__0", "datatype": "FP32", "shape": ["-1", str(FEATURES)]}


def test_kind_gpu_without_a_gpu_is_unavailable(framework_server: FrameworkServer) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: torch_gpu loads (see test_runs_on_gpu)")
    reason = framework_server.reason("torch_gpu")
    # Refused before torch is asked, in Triton's words, where the machine has no GPU at all;
    # by the backend, naming CUDA, where a GPU exists that this torch cannot use.
    assert "KIND_GPU" in reason and ("no GPUs are available" in reason or "CUDA" in reason)


@pytest.mark.gpu
def test_runs_on_gpu(framework_server: FrameworkServer) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU and a CUDA build of torch")
    rows = np.random.default_rng(3).standard_normal((4, FEATURES), dtype=np.float32)
    got = framework_server.infer("torch_gpu", {"INPUT__0": rows})["OUTPUT__0"]
    np.testing.assert_allclose(got, torch_output(framework_server, "torch_gpu", rows), rtol=1e-4, atol=1e-5)


def test_thread_count_parameter(framework_server: FrameworkServer, tmp_path: Path) -> None:
    """INTRA_OP_THREAD_COUNT sets torch's (process-wide) intra-op pool when an instance loads."""
    import torch
    from inferd.backends.torchscript import TorchScriptBackend

    config = mc.ModelConfig(name="t", platform="pytorch_libtorch", max_batch_size=16)
    config.input.add(name="INPUT__0", data_type=mc.TYPE_FP32, dims=[FEATURES])
    config.output.add(name="OUTPUT__0", data_type=mc.TYPE_FP32, dims=[8])
    path = framework_server.repo / "torch_mlp" / "1" / "model.pt"
    previous = torch.get_num_threads()
    try:
        ctx = LoadContext(
            "t", 1, config, tmp_path, tmp_path, path, Instance("t_0", "CPU"), parameters={"INTRA_OP_THREAD_COUNT": "1"}
        )
        backend = TorchScriptBackend(ctx)
        assert torch.get_num_threads() == 1
        backend.unload()
    finally:
        torch.set_num_threads(previous)
