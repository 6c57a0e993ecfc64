"""inferd perf end to end against the real test server: every request the tool sent is one the
server counted, in each load mode and transport; the CLI writes perf_analyzer's CSV and a plot."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from inferd.clients import InferenceClient
from inferd.perf.cli import main as perf_main
from inferd.perf.inputs import DataOptions
from inferd.perf.runner import RunOptions, RunOutput, run_sync

from .conftest import RunningServer
from .test_perf_stats import PA_HEADER


def success_count(server: RunningServer, model: str) -> tuple[int, int]:
    with InferenceClient(server.grpc_url) as c:
        s = c.model_statistics(model).model_stats[-1]
        return s.inference_stats.success.count, s.inference_count


def short(model: str, url: str, **kw: object) -> RunOptions:
    """Short windows and a loose stability rule: these tests check accounting, not speed."""
    base: dict[str, object] = dict(model=model, url=url, measurement_ms=250, stability=1.0, max_trials=4)
    base.update(kw)
    return RunOptions(**base)  # type: ignore[arg-type]


def check_counts(server: RunningServer, model: str, opts: RunOptions, batch: int = 1) -> RunOutput:
    before = success_count(server, model)
    out = run_sync(opts)
    after = success_count(server, model)
    sent = sum(r.requests_sent for r in out.results)
    assert sent > 0
    assert all(r.errors == 0 for r in out.results), [n for r in out.results for n in r.notes]
    assert after[0] - before[0] == sent  # every request the tool sent, the server counted once
    assert after[1] - before[1] == sent * batch
    for r in out.results:
        assert r.throughput > 0 and r.latency.count > 0
        assert r.server is not None
        # Per merged window, the server's count and the client's agree up to the requests in
        # flight at the window edges.
        assert abs(r.server.success_count - r.latency.count) <= 2 * max(int(r.value), 1) + 2
    return out


def test_concurrency_counts_match_server(server: RunningServer) -> None:
    out = check_counts(server, "add_sub", short("add_sub", server.grpc_url, values=[1.0, 3.0]))
    assert [r.value for r in out.results] == [1.0, 3.0]
    assert out.server_stats
    r = out.results[-1]
    assert r.server is not None and r.server.avg_compute_infer_ns > 0
    assert set(r.latency.percentiles_ns) == {50, 90, 95, 99}


def test_rate_mode_holds_the_rate(server: RunningServer) -> None:
    opts = short("add_sub", server.grpc_url, mode="rate", values=[150.0], distribution="poisson",
                 measurement_ms=400)
    (r,) = check_counts(server, "add_sub", opts).results
    assert r.throughput == pytest.approx(150, rel=0.35)


def test_streaming_batched_dense(server: RunningServer) -> None:
    opts = short("dense", server.grpc_url, values=[2.0], streaming=True, data=DataOptions(batch_size=4))
    (r,) = check_counts(server, "dense", opts, batch=4).results
    assert r.batch_size == 4


def test_bytes_model(server: RunningServer) -> None:
    check_counts(server, "strings", short("strings", server.grpc_url, data=DataOptions(string_length=16)))


def test_two_generator_processes(server: RunningServer) -> None:
    check_counts(server, "add_sub", short("add_sub", server.grpc_url, values=[2.0], processes=2))


def test_http(server: RunningServer) -> None:
    port = getattr(server.server, "http_port", None)
    if port is None:
        pytest.skip("the server has no HTTP endpoint (InferdServer.http_port is missing or None)")
    check_counts(server, "add_sub", short("add_sub", f"127.0.0.1:{port}", protocol="http", values=[2.0]))


def test_cli_writes_csv_and_plot(server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep.csv"
    code = perf_main(["-m", "add_sub", "-u", server.grpc_url, "--concurrency-range", "1:2", "-p", "250",
                      "-s", "100", "--max-trials", "4", "-f", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "infer/s" in printed and "p99" in printed
    rows = list(csv.reader(out.open()))
    assert ",".join(rows[0]) == PA_HEADER
    assert sorted(r[0] for r in rows[1:]) == ["1", "2"]
    assert all(float(r[1]) > 0 for r in rows[1:])
    png = tmp_path / "sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_unknown_model(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert perf_main(["-m", "no_such_model", "-u", server.grpc_url, "-p", "100"]) == 2
    assert "no_such_model" in capsys.readouterr().err
    assert perf_main(["-m", "add_sub", "-u", server.grpc_url, "-b", "64"]) == 2
    assert "max_batch_size" in capsys.readouterr().err
