"""TensorFlow SavedModels served by the real server, compared with TensorFlow's own output."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from .framework_models import CLASSES, FEATURES, FrameworkServer, needs_tf, quiet_torchscript

pytest_plugins = ["tests.framework_models"]
pytestmark = [needs_tf, quiet_torchscript]


def tf_output(fw: FrameworkServer, rows: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(fw.repo / "tf_mlp" / "1" / "model.savedmodel"))
    return loaded.signatures["serving_default"](INPUT=tf.constant(rows))["PROBS"].numpy()


def test_config_auto_completes_from_the_signature(framework_server: FrameworkServer) -> None:
    config = framework_server.client.get_model_config("tf_mlp", as_json=True)["config"]
    assert config["platform"] == "tensorflow_savedmodel"
    assert config["max_batch_size"] == 4  # Triton's default for a batchable model
    assert "dynamic_batching" in config
    assert config["input"] == [{"name": "INPUT", "data_type": "TYPE_FP32", "dims": [str(FEATURES)]}]
    assert config["output"] == [{"name": "PROBS", "data_type": "TYPE_FP32", "dims": [str(CLASSES)]}]


@pytest.mark.parametrize("model, batched", [("tf_mlp_batched", True), ("tf_mlp_direct", False)])
def test_concurrent_requests_match_tensorflow(framework_server: FrameworkServer, model: str, batched: bool) -> None:
    fw = framework_server
    rows = np.random.default_rng(4).standard_normal((32, FEATURES), dtype=np.float32)
    before = fw.counts(model)
    results = fw.infer_concurrently(model, [{"INPUT": rows[i : i + 1]} for i in range(len(rows))])
    inferences, executions = (after - b for after, b in zip(fw.counts(model), before))
    got = np.concatenate([r["PROBS"] for r in results])
    np.testing.assert_allclose(got, tf_output(fw, rows), rtol=1e-5, atol=1e-6)
    assert inferences == 32
    if batched:
        assert executions < 32, "concurrent requests should have been merged into batches"
    else:
        assert executions == 32


def test_multi_row_request(framework_server: FrameworkServer) -> None:
    rows = np.random.default_rng(5).standard_normal((4, FEATURES), dtype=np.float32)
    got = framework_server.infer("tf_mlp", {"INPUT": rows})["PROBS"]
    np.testing.assert_allclose(got, tf_output(framework_server, rows), rtol=1e-5, atol=1e-6)


def test_signature_chosen_by_parameter_with_strings(framework_server: FrameworkServer) -> None:
    config = framework_server.client.get_model_config("tf_upper", as_json=True)["config"]
    assert config["input"][0]["data_type"] == "TYPE_STRING" and config["input"][0]["dims"] == ["2"]
    text = np.array([[b"ab", b"cD"], [b"x", b""]], dtype=object)
    out = framework_server.infer("tf_upper", {"TEXT": text})["UPPER"]
    assert out.tolist() == [[b"AB", b"CD"], [b"X", b""]]


def test_unknown_signature_lists_the_ones_there(framework_server: FrameworkServer) -> None:
    reason = framework_server.reason("tf_bad_signature")
    assert "no signature 'nope'" in reason and "serving_default" in reason and "upper" in reason


def test_config_naming_a_tensor_the_signature_lacks(framework_server: FrameworkServer) -> None:
    reason = framework_server.reason("tf_wrong_input")
    assert "IMAGE" in reason and "INPUT" in reason


def test_config_dims_contradicting_the_signature(framework_server: FrameworkServer) -> None:
    reason = framework_server.reason("tf_wrong_dims")
    assert f"dims [{FEATURES + 1}]" in reason and f"[-1, {FEATURES}]" in reason


def test_wrong_datatype_is_rejected_before_tensorflow(framework_server: FrameworkServer) -> None:
    with pytest.raises(InferenceServerException) as e:
        framework_server.infer("tf_mlp", {"INPUT": np.zeros((1, FEATURES), np.float64)})
    assert "FP64" in e.value.message() and "FP32" in e.value.message()
