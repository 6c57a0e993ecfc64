"""A model's own histogram buckets (``model_metrics.metric_control``), as Triton's model config
sets them: for Triton's first-response histogram of a decoupled model and for inferd's latency
histograms, read back from /metrics after real requests from tritonclient; a family that has
no such histogram is warned and loads; boundaries out of order are refused at load."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto

from .conftest import RunningServer, start_server, test_settings
from .decoupled_models import REPEAT, REPEAT_CONFIG
from .models import binary_model, write, write_python
from .test_config_fields import ADD


def control(family: str, buckets: str | None) -> str:
    options = f" histogram_options {{ buckets: [ {buckets} ] }}" if buckets is not None else ""
    return f'model_metrics {{ metric_control [ {{ metric_identifier {{ family: "{family}" }}{options} }} ] }}'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("metric_control")
    first = control("nv_inference_first_response_histogram_ms", "0.5, 20, 1e3")
    write_python(repo, "repeat", REPEAT_CONFIG.format(name="repeat") + first + "\n", REPEAT)
    latency = control("inferd_request_duration_seconds", "0.000001, 0.25")
    write(repo, "tuned", ADD.format(name="tuned", extra=latency), binary_model("Add", TensorProto.FLOAT))
    bare = control("inferd_queue_duration_seconds", None)
    write(repo, "bare", ADD.format(name="bare", extra=bare), binary_model("Add", TensorProto.FLOAT))
    write(repo, "plain", ADD.format(name="plain", extra=""), binary_model("Add", TensorProto.FLOAT))
    running = start_server(test_settings(repo))
    yield running
    running.stop()


def scrape(server: RunningServer) -> str:
    return httpx.get(f"http://{server.metrics_url}/metrics", timeout=10).text


def buckets(text: str, family: str, model: str) -> dict[str, float]:
    """``le`` -> cumulative count of one model's series of ``family``."""
    found = re.findall(rf'{family}_bucket\{{le="([^"]+)",model="{model}",version="1"\}} (\S+)', text)
    return {le: float(n) for le, n in found}


def add_once(url: str, model: str) -> None:
    client = httpclient.InferenceServerClient(url)
    inputs = [httpclient.InferInput("INPUT0", [1, 4], "FP32"), httpclient.InferInput("INPUT1", [1, 4], "FP32")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    client.infer(model, inputs)


def test_the_first_response_histogram_takes_the_models_buckets(server: RunningServer) -> None:
    results: list[object] = []
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.append(error or result))
    try:
        tensors = []
        for name, array in {
            "IN": np.array([1, 2], np.int32),
            "DELAY": np.array([30, 0], np.uint32),
            "WAIT": np.array([0], np.uint32),
        }.items():
            t = grpcclient.InferInput(name, list(array.shape), "INT32" if array.dtype.kind == "i" else "UINT32")
            t.set_data_from_numpy(array)
            tensors.append(t)
        client.async_stream_infer("repeat", tensors)
    finally:
        client.stop_stream()  # waits for the stream's responses
    assert len(results) == 2 and not any(isinstance(r, Exception) for r in results)
    got = buckets(scrape(server), "nv_inference_first_response_histogram_ms", "repeat")
    # The first response came after 30 ms: above 20, within 1000.
    assert got == {"0.5": 0, "20": 0, "1000": 1, "+Inf": 1}


def test_a_latency_histogram_takes_the_models_buckets(server: RunningServer) -> None:
    add_once(server.http_url, "tuned")
    text = scrape(server)
    got = buckets(text, "inferd_request_duration_seconds", "tuned")
    assert list(got) == ["1e-06", "0.25", "+Inf"] and got["+Inf"] == 1 and got["1e-06"] == 0
    # The model's other histograms and other models keep the server's buckets.
    assert len(buckets(text, "inferd_queue_duration_seconds", "tuned")) > 3
    add_once(server.http_url, "plain")
    assert "1e-06" not in buckets(scrape(server), "inferd_request_duration_seconds", "plain")


def test_a_control_without_options_leaves_only_the_inf_bucket(server: RunningServer) -> None:
    add_once(server.http_url, "bare")
    assert buckets(scrape(server), "inferd_queue_duration_seconds", "bare") == {"+Inf": 1}


def repository_states(repo: Path) -> dict[str, tuple[str, str]]:
    """Each model of ``repo`` served: its state and reason in the repository index."""
    running = start_server(test_settings(repo))
    try:
        index = grpcclient.InferenceServerClient(running.grpc_url).get_model_repository_index().models
        return {m.name: (m.state, m.reason) for m in index}
    finally:
        running.stop()


def test_a_family_without_such_a_histogram_is_warned_and_the_model_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    extra = control("nv_inference_count", "1, 2")
    write(tmp_path, "counted", ADD.format(name="counted", extra=extra), binary_model("Add", TensorProto.FLOAT))
    with caplog.at_level(logging.WARNING, logger="inferd"):
        state, reason = repository_states(tmp_path)["counted"]
    assert state == "READY"
    assert "metric family 'nv_inference_count' is not a customizable histogram" in reason
    assert any("nv_inference_count" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bounds", ["2, 1", "1, 1", "1, inf", "nan"])
def test_buckets_out_of_order_or_not_finite_are_refused_at_load(tmp_path: Path, bounds: str) -> None:
    extra = control("inferd_request_duration_seconds", bounds)
    write(tmp_path, "bad", ADD.format(name="bad", extra=extra), binary_model("Add", TensorProto.FLOAT))
    state, reason = repository_states(tmp_path)["bad"]
    assert state == "UNAVAILABLE"
    assert "model_metrics.metric_control" in reason and "strictly ascending" in reason
