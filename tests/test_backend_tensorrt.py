"""TensorRT: without a GPU a plan is UNAVAILABLE with the reason while the server serves; with
one, an engine built here from an ONNX graph serves and matches numpy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from inferd.backends.cuda_memory import open_device
from inferd.protocol.errors import ModelLoadError

from .conftest import start_server, test_settings
from .framework_models import FrameworkServer, infer, quiet_torchscript
from .models import bundled

pytest_plugins = ["tests.framework_models"]
pytestmark = quiet_torchscript


def test_unloadable_plan_is_unavailable_with_the_reason(framework_server: FrameworkServer) -> None:
    reason = framework_server.reason("trt_junk")
    assert "TensorRT" in reason and "GPU" in reason  # no package, no GPU, or not a plan: all say so
    if importlib.util.find_spec("tensorrt") is None:
        assert "pip install 'inferd[tensorrt]'" in reason
    # The server stays up and serves the other models.
    x = np.ones((1, 16), np.float32)
    out = framework_server.infer("add_sub", {"INPUT0": x, "INPUT1": x})
    np.testing.assert_array_equal(out["OUTPUT0"], 2 * x)


def _build_engine(path: Path) -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(bundled.add_sub_model().SerializeToString()), parser.get_error(0)
    profile = builder.create_optimization_profile()
    for name in ("INPUT0", "INPUT1"):
        profile.set_shape(name, (1, 16), (4, 16), (8, 16))
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    path.parent.mkdir(parents=True)
    path.write_bytes(bytes(plan))


@pytest.mark.gpu
def test_engine_from_onnx_serves(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="needs TensorRT 10 (pip install 'inferd[tensorrt]') and an NVIDIA GPU")
    try:
        open_device(0)
    except ModelLoadError as e:
        pytest.skip(f"needs an NVIDIA GPU: {e}")
    _build_engine(tmp_path / "trt_add_sub" / "1" / "model.plan")
    running = start_server(test_settings(tmp_path))  # no config.pbtxt: all from the engine
    try:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        config = client.get_model_config("trt_add_sub", as_json=True)["config"]
        assert config["platform"] == "tensorrt_plan" and config["max_batch_size"] == 8
        assert config["instance_group"][0]["kind"] == "KIND_GPU"
        rng = np.random.default_rng(0)
        for rows in (1, 3, 8):
            a = rng.standard_normal((rows, 16), dtype=np.float32)
            b = rng.standard_normal((rows, 16), dtype=np.float32)
            out = infer(client, "trt_add_sub", {"INPUT0": a, "INPUT1": b})
            np.testing.assert_allclose(out["OUTPUT0"], a + b, rtol=1e-6)
            np.testing.assert_allclose(out["OUTPUT1"], a - b, rtol=1e-6)
        client.close()
    finally:
        running.stop()
