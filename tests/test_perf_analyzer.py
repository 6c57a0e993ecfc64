"""NVIDIA's perf_analyzer (the C++ tool) against inferd: it must start, load, read the server
statistics and finish with sane figures, over gRPC and over HTTP.

Install it with ``bash ../shared/tools/install-perf-analyzer.sh``; the test looks in
$PERF_ANALYZER, on PATH and in ~/.local/perf_analyzer/bin, and skips with a reason otherwise.
"""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

import pytest
from inferd.perf.perf_analyzer import INSTALL_HINT, find_perf_analyzer

from .conftest import RunningServer
from .test_perf_stats import PA_HEADER

PERF_ANALYZER = find_perf_analyzer()
pytestmark = pytest.mark.skipif(
    PERF_ANALYZER is None,
    reason=f"perf_analyzer is not installed ({INSTALL_HINT})",
)

_STEP = re.compile(r"Request concurrency: (\d+)\n(.*?)(?=\nRequest concurrency:|\nInferences/Second vs|\Z)", re.S)
_BREAKDOWN = re.compile(
    r"Avg request latency: (\d+) usec \(overhead (\d+) usec \+ queue (\d+) usec \+ compute input (\d+) usec "
    r"\+ compute infer (\d+) usec \+ compute output (\d+) usec\)"
)


def run_perf_analyzer(protocol: str, url: str, csv_path: Path) -> dict[int, dict[str, float]]:
    assert PERF_ANALYZER is not None
    cmd = [
        PERF_ANALYZER,
        "-m",
        "add_sub",
        "-i",
        protocol,
        "-u",
        url,
        "-p",
        "500",
        "--concurrency-range",
        "1:2",
        "-s",
        "100",
        "--max-trials",
        "10",
        "-f",
        str(csv_path),
        "--verbose-csv",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"perf_analyzer failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    steps: dict[int, dict[str, float]] = {}
    for m in _STEP.finditer(proc.stdout):
        body = m.group(2)
        fig: dict[str, float] = {}
        fig["throughput"] = float(re.search(r"Throughput: ([\d.]+) infer/sec", body).group(1))  # type: ignore[union-attr]
        for p in ("p50", "p90", "p95", "p99"):
            fig[p] = float(re.search(rf"{p} latency: (\d+) usec", body).group(1))  # type: ignore[union-attr]
        fig["requests"] = float(re.search(r"Request count: (\d+)", body).group(1))  # type: ignore[union-attr]
        fig["server_inferences"] = float(re.search(r"Inference count: (\d+)", body).group(1))  # type: ignore[union-attr]
        b = _BREAKDOWN.search(body)
        assert b, f"no server-side breakdown for concurrency {m.group(1)}:\n{body}"
        for key, value in zip(
            ("request", "overhead", "queue", "compute_input", "compute_infer", "compute_output"), b.groups()
        ):
            fig[key] = float(value)
        steps[int(m.group(1))] = fig
    return steps


def check(steps: dict[int, dict[str, float]], csv_path: Path) -> None:
    assert sorted(steps) == [1, 2]
    for fig in steps.values():
        assert fig["throughput"] > 0
        assert 0 < fig["p50"] <= fig["p90"] <= fig["p95"] <= fig["p99"]
        assert fig["compute_infer"] > 0  # the statistics API was read and differenced
        assert fig["request"] >= fig["queue"] + fig["compute_infer"]
        # Server and client counted the same requests, up to the ones in flight at window edges.
        assert abs(fig["server_inferences"] - fig["requests"]) <= 10
    rows = list(csv.reader(csv_path.open()))
    assert ",".join(rows[0]) == PA_HEADER
    assert sorted(r[0] for r in rows[1:]) == ["1", "2"]


def test_perf_analyzer_grpc(server: RunningServer, tmp_path: Path) -> None:
    csv_path = tmp_path / "grpc.csv"
    check(run_perf_analyzer("grpc", server.grpc_url, csv_path), csv_path)


def test_perf_analyzer_http(server: RunningServer, tmp_path: Path) -> None:
    port = getattr(server.server, "http_port", None)
    if port is None:
        pytest.skip("the server has no HTTP endpoint (InferdServer.http_port is missing or None)")
    csv_path = tmp_path / "http.csv"
    check(run_perf_analyzer("http", f"127.0.0.1:{port}", csv_path), csv_path)
