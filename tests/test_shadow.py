"""Shadow traffic: copies go to the shadow after the primary answered, are compared, and never
reach the caller."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from inferd.server.shadow import compare
from inferd.server.traffic import ShadowSpec

from .conftest import RunningServer, start_server, test_settings
from .rollout_support import infer, load, traffic, traffic_param, wait_until, write_model


@pytest.fixture(scope="module")
def shadow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("shadow")
    # Version 2 answers like version 1 (same constant); version 3 differs by 2; version 4 fails.
    write_model(repo, "mirrored", {1: 1.0, 2: 1.0, 3: 3.0, 4: 1.0}, traffic_param("1:100"), fail={4: 1.0})
    write_model(repo, "twin", {1: 1.0})
    running = start_server(test_settings(repo, model_control_mode="explicit", load_models=["*"]))
    yield running
    running.stop()


def test_compare() -> None:
    a = {"Y": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)}
    b = {"Y": np.array([[0.2, 0.7], [0.6, 0.3]], np.float32)}
    assert compare(a, b, ShadowSpec(1, compare="argmax")) == (True, pytest.approx(0.2, abs=1e-6))
    agree, diff = compare(a, b, ShadowSpec(1, tolerance=1e-3))
    assert not agree and diff == pytest.approx(0.2, abs=1e-6)
    assert compare(a, {"Y": a["Y"][:1]}, ShadowSpec(1)) == (False, float("inf"))


def _shadow(url: str, version: str, model: str = "", **extra: object) -> dict:
    shadow = {"version": version, "share": 1.0, **extra}
    if model:
        shadow["model"] = model
    r = traffic(url, "mirrored", body={"weights": {"1": 100}, "shadow": shadow})
    assert r.status_code == 200, r.text
    return r.json()


def _pair(url: str) -> dict:
    return traffic(url, "mirrored").json()["shadow"]["pairs"].get("1", {"compared": 0})


def test_shadow_answers_never_reach_the_caller(shadow_server: RunningServer) -> None:
    url = shadow_server.http_url
    _shadow(url, "3")
    with load(shadow_server.grpc_url, "mirrored", clients=3) as tally:
        wait_until(lambda: _pair(url)["compared"] >= 100, what="100 comparisons")
    assert tally.errors == [] and set(tally.answers) == {1.0}  # only the primary's answers
    pair = _pair(url)
    assert pair["agreement"] == 0.0 and pair["difference"]["p50"] == pytest.approx(2.0, rel=0.15)
    assert pair["shadow_errors"] == 0 and pair["primary_latency_s"]["p99"] > 0
    assert pair["mirrored"] + pair["dropped"] >= pair["compared"]
    stats = httpx.get(f"http://{url}/v2/models/mirrored/versions/3/stats").json()
    assert stats["model_stats"][0]["inference_stats"]["success"]["count"] >= 100  # the shadow did run


def test_agreeing_and_failing_shadows(shadow_server: RunningServer) -> None:
    url = shadow_server.http_url
    _shadow(url, "2")
    client = grpcclient.InferenceServerClient(shadow_server.grpc_url)
    for _ in range(60):
        assert infer(client, "mirrored") == 1.0
    wait_until(lambda: _pair(url)["compared"] >= 50, what="comparisons")
    assert _pair(url)["agreement"] == 1.0
    _shadow(url, "4")  # fails every request: counted, never seen by the caller
    for _ in range(40):
        assert infer(client, "mirrored") == 1.0
    wait_until(lambda: _pair(url).get("shadow_errors", 0) >= 30, what="shadow errors counted")
    client.close()
    metrics = httpx.get(f"http://{shadow_server.metrics_url}/metrics").text
    assert 'inferd_shadow_errors_total{model="mirrored",shadow="mirrored:4",side="shadow",version="1"}' in metrics


def test_shadow_to_another_model(shadow_server: RunningServer) -> None:
    url = shadow_server.http_url
    doc = _shadow(url, "1", model="twin", compare="allclose", tolerance=1e-6)
    assert doc["shadow"]["target"] == "twin:1"
    client = grpcclient.InferenceServerClient(shadow_server.grpc_url)
    for _ in range(40):
        assert infer(client, "mirrored") == 1.0
    client.close()
    wait_until(lambda: _pair(url)["compared"] >= 30, what="comparisons with the other model")
    assert _pair(url)["agreement"] == 1.0
    r = traffic(url, "mirrored", body={"weights": {"1": 100}, "shadow": {"version": "1", "model": "nope"}})
    assert r.status_code in (400, 404)
