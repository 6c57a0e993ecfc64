"""/metrics against a server of its own: after a known number of requests, Triton's counters,
the failure reasons and the latency histograms read back exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from inferd.server.metrics import Histogram, RequestObserver
from inferd.server.stats import ExecutionTimes, ModelStats
from prometheus_client.parser import text_string_to_metric_families

from .conftest import RunningServer, start_server, test_settings
from .models import bundled, write

GOOD = {"inputs": [{"name": n, "shape": [2, 16], "datatype": "FP32", "data": [1.0] * 32} for n in ("INPUT0", "INPUT1")]}
BAD_SHAPE = {
    "inputs": [{"name": n, "shape": [2, 15], "datatype": "FP32", "data": [1.0] * 30} for n in ("INPUT0", "INPUT1")]
}


@pytest.fixture
def own(tmp_path: Path) -> Iterator[RunningServer]:
    write(tmp_path, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    running = start_server(test_settings(tmp_path, model_control_mode="explicit", load_models=["add_sub"]))
    yield running
    running.stop()


def scrape(running: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by the name it has on the wire."""
    text = httpx.get(f"http://{running.metrics_url}/metrics", timeout=10).text
    return samples_of(text)


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        # The parser names the samples of a counter typed without "_total" (Triton's counters)
        # "<name>_total"; on the wire they are "<name>".
        triton_style = family.type == "counter" and f"# TYPE {family.name} counter" in text
        for s in family.samples:
            name = s.name.removesuffix("_total") if triton_style else s.name
            samples[(name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def ids(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"model": "add_sub", "version": "1", **labels}.items()))


def test_counters_and_histograms_match_exactly(own: RunningServer) -> None:
    base = f"http://{own.http_url}"
    with httpx.Client(base_url=base, timeout=30) as c:
        for _ in range(5):
            assert c.post("/v2/models/add_sub/infer", json=GOOD).status_code == 200
        for _ in range(3):
            assert c.post("/v2/models/add_sub/infer", json=BAD_SHAPE).status_code == 400
        stats = c.get("/v2/models/add_sub/stats").json()["model_stats"][0]
    m = scrape(own)
    s = stats["inference_stats"]
    assert m[("nv_inference_request_success", ids())] == 5
    assert m[("nv_inference_request_failure", ids(reason="REJECTED"))] == 3
    for reason in ("CANCELED", "BACKEND", "OTHER"):
        assert m[("nv_inference_request_failure", ids(reason=reason))] == 0
    assert m[("nv_inference_count", ids())] == 10  # a batch of 2 counts 2
    assert m[("nv_inference_exec_count", ids())] == 5
    assert m[("nv_inference_pending_request_count", ids())] == 0
    assert m[("nv_inference_request_duration_us", ids())] == s["success"]["ns"] // 1000
    assert m[("nv_inference_queue_duration_us", ids())] == s["queue"]["ns"] // 1000
    for part in ("compute_input", "compute_infer", "compute_output"):
        assert m[(f"nv_inference_{part}_duration_us", ids())] == s[part]["ns"] // 1000
    assert m[("nv_model_load_duration_secs", ids())] > 0

    for name, total_ns in [
        ("inferd_request_duration_seconds", s["success"]["ns"]),
        ("inferd_queue_duration_seconds", s["queue"]["ns"]),
        ("inferd_compute_infer_duration_seconds", s["compute_infer"]["ns"]),
    ]:
        assert m[(f"{name}_count", ids())] == 5
        assert m[(f"{name}_bucket", ids(le="+Inf"))] == 5
        assert m[(f"{name}_sum", ids())] == pytest.approx(total_ns / 1e9, rel=1e-9)
        buckets = sorted((float(dict(k[1])["le"]), v) for k, v in m.items() if k[0] == f"{name}_bucket")
        counts = [v for _, v in buckets]
        assert counts == sorted(counts)  # cumulative

    assert m[("process_resident_memory_bytes", ())] > 0
    assert ("process_cpu_seconds_total", ()) in m


def test_series_follow_the_loaded_versions(own: RunningServer) -> None:
    with httpx.Client(base_url=f"http://{own.http_url}", timeout=30) as c:
        assert c.post("/v2/models/add_sub/infer", json=GOOD).status_code == 200
        assert scrape(own)[("nv_inference_request_success", ids())] == 1
        assert c.post("/v2/repository/models/add_sub/unload").status_code == 200
        assert not any(k[1] and dict(k[1]).get("model") == "add_sub" for k in scrape(own))
        assert c.post("/v2/repository/models/add_sub/load").status_code == 200
    # A reloaded version starts from zero, as in Triton.
    assert scrape(own)[("nv_inference_request_success", ids())] == 0


def test_front_ends_can_be_disabled(tmp_path: Path) -> None:
    write(tmp_path, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    running = start_server(test_settings(tmp_path, allow_grpc=False, allow_metrics=False))
    try:
        assert running.server.grpc_port is None and running.server.metrics_port is None
        r = httpx.post(f"http://{running.http_url}/v2/models/add_sub/infer", json=GOOD, timeout=30)
        assert r.status_code == 200
    finally:
        running.stop()
    running = start_server(test_settings(tmp_path, allow_http=False))
    try:
        assert running.server.http_port is None
        assert scrape(running)[("nv_inference_request_success", ids())] == 0
    finally:
        running.stop()


def test_histogram_buckets_are_upper_inclusive() -> None:
    h = Histogram((0.001, 0.01))
    for v in (0.001, 0.0011, 0.5, 0.0):
        h.observe(v)
    assert h.buckets() == [("0.001", 2), ("0.01", 3), ("+Inf", 4)]
    assert h.total == pytest.approx(0.5021)


def test_observer_counts_reasons_per_stats_object() -> None:
    observer = RequestObserver(buckets=(1.0,))
    a, b = ModelStats("m", "1", [observer]), ModelStats("m", "2", [observer])
    times = ExecutionTimes(1, 0, 2_000_000_000, 0)
    a.record_success(500_000_000, 0, times)
    a.record_failure(1, "BACKEND")
    b.record_failure(1, "SOMETHING_NEW")  # unknown reasons count as OTHER
    assert observer.series(a).failures == {"REJECTED": 0, "CANCELED": 0, "BACKEND": 1, "OTHER": 0}
    assert observer.series(b).failures["OTHER"] == 1
    assert observer.series(a).histograms["inferd_compute_infer_duration_seconds"].buckets() == [("1.0", 0), ("+Inf", 1)]
