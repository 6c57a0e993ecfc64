"""/metrics as Prometheus reads it: scraped with prometheus_client's text parser, every family has
Triton's type (counters typed ``counter`` under Triton's names, without ``_total``) and its
labels (model, version, metric_tags as ``_<key>``, reason, quantile); the latency summaries of
``--metrics-config summary_latencies=true`` with Triton's quantiles; the CPU gauges; the
metrics address."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from inferd.server.metrics import SlidingSummary
from inferd.server.metrics_config import DEFAULT_QUANTILES, MetricsConfigError, MetricsOptions, options
from prometheus_client.parser import text_string_to_metric_families

from .conftest import RunningServer, start_server, test_settings
from .models import bundled, write

GOOD = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16} for n in ("INPUT0", "INPUT1")]}
BAD = {"inputs": [{"name": n, "shape": [1, 15], "datatype": "FP32", "data": [1.0] * 15} for n in ("INPUT0", "INPUT1")]}
TAGS = 'metric_tags { key: "team" value: "search" }\nmetric_tags { key: "tier" value: "gold" }\n'

COUNTERS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
}
SUMMARIES = {
    "nv_inference_request_summary_us",
    "nv_inference_queue_summary_us",
    "nv_inference_compute_input_summary_us",
    "nv_inference_compute_infer_summary_us",
    "nv_inference_compute_output_summary_us",
}
EXPECTED_TYPES = {
    **dict.fromkeys(COUNTERS, "counter"),
    **dict.fromkeys(SUMMARIES, "summary"),
    "nv_inference_pending_request_count": "gauge",
    "nv_model_load_duration_secs": "gauge",
    "inferd_request_duration_seconds": "histogram",
    "inferd_queue_duration_seconds": "histogram",
    "inferd_compute_infer_duration_seconds": "histogram",
    "nv_cpu_utilization": "gauge",
    "nv_cpu_memory_total_bytes": "gauge",
    "nv_cpu_memory_used_bytes": "gauge",
}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("metrics_types")
    write(repo, "add_sub", bundled.ADD_SUB_CONFIG + TAGS, bundled.add_sub_model())
    plain = bundled.ADD_SUB_CONFIG.replace('name: "add_sub"', 'name: "plain"')
    write(repo, "plain", plain, bundled.add_sub_model())
    metrics = MetricsOptions(summary_latencies=True, interval_ms=50)
    server = start_server(test_settings(repo, metrics=metrics, metrics_address="127.0.0.2"))
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=30) as c:
        for _ in range(6):
            assert c.post("/v2/models/add_sub/infer", json=GOOD).status_code == 200
        for _ in range(2):
            assert c.post("/v2/models/add_sub/infer", json=BAD).status_code == 400
        assert c.post("/v2/models/plain/infer", json=GOOD).status_code == 200
    yield server
    server.stop()


def scrape(running: RunningServer) -> str:
    # --metrics-address: the metrics port is bound there, not on the HTTP address.
    return httpx.get(f"http://127.0.0.2:{running.server.metrics_port}/metrics", timeout=10).text


def test_every_family_has_tritons_type_and_labels(running: RunningServer) -> None:
    text = scrape(running)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in EXPECTED_TYPES.items():
        assert families[name].type == kind, (name, families[name].type)
    # None of Triton's families is left untyped.
    assert [n for n, f in families.items() if n.startswith("nv_") and f.type in ("untyped", "unknown")] == []
    tagged = {"model": "add_sub", "version": "1", "_team": "search", "_tier": "gold"}
    plain = {"model": "plain", "version": "1"}
    for name, family in families.items():
        if name not in EXPECTED_TYPES or name.startswith("nv_cpu_"):
            continue  # the per-model families this test knows
        by_model: dict[str, set[tuple[str, ...]]] = {}
        for s in family.samples:
            extra = set(s.labels) - set(tagged)
            want = {"counter": {"reason"} if name.endswith("failure") else set(), "summary": {"quantile"}}
            assert extra <= want.get(family.type, {"le"} if family.type == "histogram" else set()), (name, s)
            model_labels = {k: v for k, v in s.labels.items() if k not in ("reason", "quantile", "le")}
            assert model_labels in (tagged, plain), (name, s.labels)
            by_model.setdefault(s.labels["model"], set()).add(s.name)
        assert set(by_model) == {"add_sub", "plain"}, name


def test_counters_are_typed_without_total_as_tritons(running: RunningServer) -> None:
    text = scrape(running)
    for name in COUNTERS:
        assert f"# TYPE {name} counter\n" in text
        assert f"{name}_total" not in text
    assert re.search(
        r'^nv_inference_request_success\{_team="search",_tier="gold",model="add_sub",version="1"\} 6\.0$', text, re.M
    )
    assert re.search(r'^nv_inference_request_failure\{[^}]*reason="REJECTED"[^}]*\} 2\.0$', text, re.M)
    # prometheus_client's own counters keep their suffix.
    assert "# TYPE process_cpu_seconds_total counter\n" in text


def test_summaries_have_tritons_quantiles_and_match_the_counters(running: RunningServer) -> None:
    families = {f.name: f for f in text_string_to_metric_families(scrape(running))}
    wanted = {f"{q:g}" for q, _ in DEFAULT_QUANTILES}
    for name in SUMMARIES:
        samples = [s for s in families[name].samples if s.labels["model"] == "add_sub"]
        quantiles = {s.labels["quantile"]: s.value for s in samples if "quantile" in s.labels}
        assert set(quantiles) == wanted, name
        assert all(v >= 0 and not math.isnan(v) for v in quantiles.values())
        assert sorted(quantiles.values()) == [quantiles[q] for q in sorted(quantiles, key=float)]
        count = next(s.value for s in samples if s.name == name + "_count")
        assert count == 6
    counters = {f.name: f for f in families.values() if f.type == "counter"}
    request_sum = next(
        s.value
        for s in families["nv_inference_request_summary_us"].samples
        if s.name.endswith("_sum") and s.labels["model"] == "add_sub"
    )
    request_counter = next(
        s.value for s in counters["nv_inference_request_duration_us"].samples if s.labels["model"] == "add_sub"
    )
    assert request_sum == pytest.approx(request_counter, abs=6)  # whole µs per request


def test_cpu_gauges(running: RunningServer) -> None:
    families = {f.name: f for f in text_string_to_metric_families(scrape(running))}
    (util,) = families["nv_cpu_utilization"].samples
    (total,) = families["nv_cpu_memory_total_bytes"].samples
    (used,) = families["nv_cpu_memory_used_bytes"].samples
    assert 0.0 <= util.value <= 1.0 and util.labels == {}
    assert 0 < used.value < total.value


def test_counter_latencies_off_and_summaries_off_by_default(tmp_path: Path) -> None:
    write(tmp_path, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    metrics = options([("counter_latencies", "false")], cpu=False)
    server = start_server(test_settings(tmp_path, metrics=metrics, allow_grpc=False))
    try:
        text = httpx.get(f"http://{server.metrics_url}/metrics", timeout=10).text
        assert "# TYPE nv_inference_request_success counter" in text
        assert "nv_inference_request_duration_us" not in text and "_summary_us" not in text
        assert "nv_cpu_" not in text
    finally:
        server.stop()


def test_metrics_config_settings() -> None:
    assert options([("summary_latencies", "true")]).summary_latencies
    assert options([("summary_quantiles", "0.9:0.01,0.5:0.05")]).summary_quantiles == ((0.5, 0.05), (0.9, 0.01))
    for bad in ([("summary_max_age", "60")], [("summary_quantiles", "2:0.1")], [("summary_latencies", "yes")]):
        with pytest.raises(MetricsConfigError):
            options(bad)


def test_sliding_summary_window() -> None:
    s = SlidingSummary(max_age=10, age_buckets=5, keep=1000)
    for v in range(1, 101):
        s.observe(v, now=0.0)
    assert s.quantiles([0.5, 0.99], now=1.0) == [50, 99]
    s.observe(1000, now=5.0)
    assert s.quantiles([1.0], now=9.0) == [1000]
    assert s.quantiles([0.5], now=10.5) == [1000]  # the first slice has left the window
    assert math.isnan(s.quantiles([0.5], now=30.0)[0])
    assert (s.count, s.total) == (101, 5050 + 1000)  # count and sum are cumulative
    sampled = SlidingSummary(max_age=10, age_buckets=1, keep=100)
    for v in range(10_000):
        sampled.observe(v, now=0.0)
    assert abs(sampled.quantiles([0.5], now=1.0)[0] - 5000) < 1500
