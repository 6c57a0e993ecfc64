"""What a Python model sets beyond its tensors reaches the client: response parameters
(``pb_utils.InferenceResponse(..., parameters=...)``) on gRPC and HTTP, ordinary and
decoupled, and custom metrics (``pb_utils.MetricFamily`` / ``Metric``) on the metrics port."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from inferd.backends import python_api as pb_utils
from inferd.backends.python_metrics import CustomMetrics

from . import decoupled_models
from .conftest import RunningServer, start_server, test_settings

EXPECTED = {"sum": 7, "model": "params", "big": False, "ratio": 0.5}


@pytest.fixture(scope="module")
def pserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = decoupled_models.build(tmp_path_factory.mktemp("params"))
    running = start_server(test_settings(repo))
    yield running
    running.stop()


def _x() -> np.ndarray:
    return np.array([[3, 4]], np.float32)


def test_response_parameters_over_grpc(pserver: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(pserver.grpc_url)
    t = grpcclient.InferInput("X", [1, 2], "FP32")
    t.set_data_from_numpy(_x())
    result = client.infer("params", [t])
    np.testing.assert_array_equal(result.as_numpy("Y"), _x() * 2)
    p = result.get_response().parameters
    assert p["sum"].int64_param == 7 and p["model"].string_param == "params"
    assert p["big"].HasField("bool_param") and not p["big"].bool_param and p["ratio"].double_param == 0.5


def test_response_parameters_over_http(pserver: RunningServer) -> None:
    client = httpclient.InferenceServerClient(pserver.http_url)
    t = httpclient.InferInput("X", [1, 2], "FP32")
    t.set_data_from_numpy(_x(), binary_data=False)
    result = client.infer("params", [t])
    assert result.get_response()["parameters"] == EXPECTED
    body = httpx.post(
        f"http://{pserver.http_url}/v2/models/params/infer",
        json={"inputs": [{"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [3, 4]}]},
        timeout=10,
    ).json()
    assert body["parameters"] == EXPECTED and body["outputs"][0]["data"] == [6, 8]


def test_decoupled_response_parameters_on_the_stream(pserver: RunningServer) -> None:
    import queue

    client = grpcclient.InferenceServerClient(pserver.grpc_url)
    got: queue.Queue[object] = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put(result if error is None else error))
    try:
        inputs = []
        for name, array in decoupled_models_repeat_inputs().items():
            t = grpcclient.InferInput(name, list(array.shape), "INT32" if name == "IN" else "UINT32")
            t.set_data_from_numpy(array)
            inputs.append(t)
        client.async_stream_infer("repeat", inputs)
        results = [got.get(timeout=10) for _ in range(2)]
    finally:
        client.stop_stream()
    params = [r.get_response().parameters for r in results]  # type: ignore[attr-defined]
    assert [p["index"].int64_param for p in params] == [0, 1]
    assert [p["last"].bool_param for p in params] == [False, True]


def decoupled_models_repeat_inputs() -> dict[str, np.ndarray]:
    return {"IN": np.array([5, 6], np.int32), "DELAY": np.zeros(2, np.uint32), "WAIT": np.zeros(1, np.uint32)}


def test_custom_metrics_are_on_the_metrics_port(pserver: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(pserver.grpc_url)
    for value in (3.0, 20.0):
        t = grpcclient.InferInput("X", [1, 2], "FP32")
        t.set_data_from_numpy(np.array([[value, 1]], np.float32))
        client.infer("params", [t])
    text = httpx.get(f"http://{pserver.metrics_url}/metrics", timeout=10).text
    requests = re.search(r'^params_requests\{model="params",version="1"\} (\S+)$', text, re.MULTILINE)
    assert requests is not None and float(requests.group(1)) >= 2
    assert "# HELP params_requests requests seen" in text
    assert re.search(r'^params_last_value\{model="params"\} 20\.0$', text, re.MULTILINE)
    assert "# TYPE params_x histogram" in text
    count = re.search(r'^params_x_count\{model="params"\} (\S+)$', text, re.MULTILINE)
    assert count is not None and float(count.group(1)) >= 2
    assert re.search(r'^params_x_bucket\{le="10",model="params"\} \S+$', text, re.MULTILINE)
    assert re.search(r'^params_x_bucket\{le="\+Inf",model="params"\} \S+$', text, re.MULTILINE)


def test_metric_kinds_follow_tritons_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = CustomMetrics()
    monkeypatch.setattr(pb_utils, "_fallback_metrics", pb_utils._fallback_metrics)  # restored after
    pb_utils._bind_caller(None, registry)
    try:
        counter = pb_utils.MetricFamily("c_total_seen", "a counter", pb_utils.MetricFamily.COUNTER)
        assert pb_utils.MetricFamily("c_total_seen", "a counter", pb_utils.MetricFamily.COUNTER) is counter
        with pytest.raises(pb_utils.TritonError, match="another description or kind"):
            pb_utils.MetricFamily("c_total_seen", "a counter", pb_utils.MetricFamily.GAUGE)
        with pytest.raises(pb_utils.TritonError, match="prefix the server's own metrics use"):
            pb_utils.MetricFamily("nv_inference_count", "clash", pb_utils.MetricFamily.COUNTER)
        with pytest.raises(pb_utils.TritonError, match="Unknown metric kind"):
            pb_utils.MetricFamily("k", "k", "SUMMARY")
        m = counter.Metric(labels={"a": "1"})
        assert counter.Metric(labels={"a": "1"}) is m  # the same labels: the same series
        m.increment(2)
        assert m.value() == 2
        with pytest.raises(pb_utils.TritonError, match="can only be incremented monotonically"):
            m.increment(-1)
        with pytest.raises(pb_utils.TritonError, match="does not support Set"):
            m.set(1)
        with pytest.raises(pb_utils.TritonError, match="Unexpected buckets found"):
            counter.Metric(buckets=[1.0])
        histogram = pb_utils.MetricFamily("h", "h", pb_utils.MetricFamily.HISTOGRAM)
        with pytest.raises(pb_utils.TritonError, match="Missing required buckets"):
            histogram.Metric()
        h = histogram.Metric(buckets=[1, 5])
        h.observe(0.5)
        h.observe(7)
        assert h.histogram() == ([(1.0, 1), (5.0, 1), (float("inf"), 2)], 2, 7.5)
        with pytest.raises(pb_utils.TritonError, match="does not support Value"):
            h.value()
        del m
        assert [f.name for f in registry.families()] == ["c_total_seen", "h"]
        assert counter.metrics() == []  # a metric is reported while the model holds it, as in Triton
    finally:
        pb_utils._bind_caller(None, None)


def test_bad_response_parameters_are_refused_as_triton_does() -> None:
    with pytest.raises(pb_utils.TritonError, match="Expect parameters values to have type bool/int/float/str"):
        pb_utils.InferenceResponse([], parameters={"k": [1, 2]})
    with pytest.raises(pb_utils.TritonError, match="Expect parameters keys to have type str"):
        pb_utils.InferenceResponse([], parameters={1: "v"})
