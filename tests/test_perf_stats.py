"""Unit tests of inferd perf's arithmetic on synthetic data: percentiles, the stability rule,
server-statistics deltas, window cutting, merging and the CSV layout."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from inferd.perf.loadgen import LATE_NS, Record
from inferd.perf.profiler import window_of
from inferd.perf.report import csv_header, table, write_csv
from inferd.perf.stats import LatencySummary, ServerCounters, Window, is_stable, merge, percentile
from inferd.perf.transport import counters_from_json, pick_version

PA_HEADER = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
    "Avg latency,request/response,response wait"
)  # perf_analyzer 2.41 -f out.csv --verbose-csv against inferd, verbatim


def test_percentile_is_perf_analyzers_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    # index = int(p/100 * (n-1) + 0.5)
    assert percentile(values, 50) == 51  # int(49.5 + 0.5) = 50 -> values[50]
    assert percentile(values, 90) == 90  # int(89.1 + 0.5) = 89
    assert percentile(values, 99) == 99  # int(98.01 + 0.5) = 98
    assert percentile(values, 100) == 100
    assert percentile([7], 99) == 7
    assert percentile([1, 2], 50) == 2  # 0.5 rounds up
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_summary() -> None:
    lat = [1000, 2000, 3000, 4000]
    s = LatencySummary.of(lat)
    assert s.count == 4
    assert s.avg_ns == 2500
    assert s.percentiles_ns == {50: 3000, 90: 4000, 95: 4000, 99: 4000}
    assert s.std_ns == pytest.approx(1118, abs=1)
    assert LatencySummary.of(reversed(lat), extra_percentile=75).percentiles_ns[75] == 3000
    assert LatencySummary.of([]).count == 0


def test_stability_rule() -> None:
    # Needs three windows.
    assert not is_stable([100, 100], [10, 10], 0.1)
    # max/min <= 1.1 on both: stable (only the last three count).
    assert is_stable([10, 100, 105, 109], [99, 10, 10.5, 10.9], 0.1)
    # Throughput spread 1.12 > 1.1: unstable.
    assert not is_stable([100, 105, 112], [10, 10, 10], 0.1)
    # Latency spread too large: unstable.
    assert not is_stable([100, 100, 100], [10, 10, 11.5], 0.1)
    # A window without completed requests is never stable.
    assert not is_stable([0, 0, 0], [0, 0, 0], 0.5)
    # A looser -s accepts more.
    assert is_stable([100, 105, 112], [10, 10, 10], 0.15)


def test_server_counters_delta_and_breakdown() -> None:
    before = ServerCounters(
        inference_count=10,
        execution_count=10,
        success_count=10,
        success_ns=10_000,
        queue_count=10,
        queue_ns=1_000,
        compute_input_count=10,
        compute_input_ns=500,
        compute_infer_count=10,
        compute_infer_ns=5_000,
        compute_output_count=10,
        compute_output_ns=500,
    )
    after = ServerCounters(
        inference_count=30,
        execution_count=20,
        success_count=30,
        success_ns=70_000,
        queue_count=30,
        queue_ns=21_000,
        compute_input_count=30,
        compute_input_ns=2_500,
        compute_infer_count=30,
        compute_infer_ns=25_000,
        compute_output_count=30,
        compute_output_ns=2_500,
    )
    d = after - before
    assert d.success_count == 20 and d.inference_count == 20 and d.execution_count == 10
    assert d.avg_request_ns == 3000
    assert d.avg_queue_ns == 1000
    assert (d.avg_compute_input_ns, d.avg_compute_infer_ns, d.avg_compute_output_ns) == (100, 1000, 100)
    assert d.accounted_ns == 2200
    assert d.avg_overhead_ns == 800
    assert (d + before).success_ns == after.success_ns
    assert ServerCounters().avg_overhead_ns == 0  # no division by zero


def test_counters_from_json_and_version_choice() -> None:
    stats = [
        {"name": "m", "version": "1", "inference_count": 1, "inference_stats": {"success": {"count": 1, "ns": 5}}},
        {
            "name": "m",
            "version": "3",
            "inference_count": 7,
            "execution_count": 2,
            "inference_stats": {"success": {"count": "7", "ns": "700"}, "queue": {"count": 7, "ns": 70}},
        },
        {"name": "m", "version": "2"},
    ]
    best = pick_version(stats, "", lambda s: s["version"])
    assert best["version"] == "3"  # perf_analyzer picks the highest version
    assert pick_version(stats, "2", lambda s: s["version"])["version"] == "2"
    assert pick_version(stats, "9", lambda s: s["version"]) is None
    c = counters_from_json(best)
    assert (c.inference_count, c.execution_count, c.success_count, c.success_ns, c.avg_queue_ns) == (7, 2, 7, 700, 10)


def _rec(end: int, lat: int, ok: int = 1, lag: int = 0) -> Record:
    return Record(end, lat, 10, 20, ok, lag)


def test_window_keeps_requests_that_ended_inside() -> None:
    records = [_rec(50, 1), _rec(100, 2), _rec(150, 3), _rec(200, 4, ok=0), _rec(210, 5, lag=LATE_NS + 1)]
    w = window_of(records, 100, 250, 0.5, None)
    assert w.latencies_ns == [3, 5]  # (100, 250]: 150 and 210; 200 failed
    assert w.errors == 1
    assert w.late_sends == 1
    assert w.send_ns == 20 and w.recv_ns == 40
    assert w.throughput(batch_size=4) == pytest.approx(2 * 4 / 150e-9)


def test_merge_uses_all_windows_and_sums_server_deltas() -> None:
    s = ServerCounters(
        success_count=2,
        success_ns=2000,
        queue_count=2,
        queue_ns=200,
        compute_input_count=2,
        compute_infer_count=2,
        compute_infer_ns=1000,
        compute_output_count=2,
    )
    windows = [
        Window(1_000_000_000, [1000, 3000], send_ns=20, recv_ns=40, server=s),
        Window(1_000_000_000, [2000, 2000], send_ns=20, recv_ns=40, server=s),
    ]
    r = merge(windows, "concurrency", 2, 1, None, True, 5)
    assert r.throughput == pytest.approx(2.0)
    assert r.latency.avg_ns == 2000
    assert r.avg_send_ns == 10 and r.avg_recv_ns == 20
    assert r.server is not None and r.server.success_count == 4
    # Network+Server = client wait (2000 - 10 - 20) minus queue 100 + compute 500.
    assert r.network_ns == 2000 - 30 - 600
    assert r.windows_measured == 5
    # Without server statistics there is no breakdown.
    assert merge([Window(1, [1])], "rate", 10, 1, None, False, 1).server is None


def test_csv_matches_perf_analyzer(tmp_path: Path) -> None:
    assert ",".join(csv_header("concurrency", [50, 90, 95, 99], server_stats=True)) == PA_HEADER
    rate = csv_header("rate", [50, 85, 90, 95, 99], server_stats=False, extra_percentile=85)
    assert rate[0] == "Request Rate" and "Avg latency" not in rate and "p85 latency" in rate
    assert "Server Queue" not in rate
    fast = merge([Window(10**9, [1000] * 10)], "concurrency", 2, 1, None, True, 3)
    slow = merge([Window(10**9, [2000] * 5)], "concurrency", 1, 1, None, True, 3)
    path = tmp_path / "out.csv"
    write_csv(path, [fast, slow], server_stats=True)
    rows = list(csv.reader(path.open()))
    assert ",".join(rows[0]) == PA_HEADER
    assert [r[0] for r in rows[1:]] == ["1", "2"]  # sorted by throughput, as perf_analyzer does
    assert len(rows[1]) == len(rows[0])
    assert rows[2][rows[0].index("p99 latency")] == "1"  # microseconds
    text = table([slow, fast])
    assert "infer/s" in text and "p99" in text
