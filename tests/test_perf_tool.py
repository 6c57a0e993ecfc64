"""inferd perf end to end against the real test server: every request the tool sent is one the
server counted, in each load mode and transport; the CLI writes perf_analyzer's CSV and a plot;
a server killed during a sweep ends the run with an error and the levels measured before."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from inferd.clients import InferenceClient
from inferd.perf import servers
from inferd.perf.cli import main as perf_main
from inferd.perf.inputs import DataOptions
from inferd.perf.loadgen import OUTAGE_NS, OutageWatch
from inferd.perf.report import plot, plot_available, plot_series
from inferd.perf.runner import RunOptions, RunOutput, run_sync
from inferd.perf.stats import StepResult, Window, merge

from .conftest import RunningServer
from .models import bundled, write
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
    opts = short("add_sub", server.grpc_url, mode="rate", values=[150.0], distribution="poisson", measurement_ms=400)
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
    code = perf_main(
        [
            "-m",
            "add_sub",
            "-u",
            server.grpc_url,
            "--concurrency-range",
            "1:2",
            "-p",
            "250",
            "-s",
            "1000",  # this test reads the output, not the stability: a noisy CI machine must not fail it
            "--max-trials",
            "4",
            "-f",
            str(out),
        ]
    )
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


# --- a server that goes away ----------------------------------------------------------------
def start_add_sub_server(root: Path) -> tuple[servers.ServerProcess, dict[str, str]]:
    """`inferd serve` with add_sub only, gRPC and HTTP on free ports: (process, urls by protocol)."""
    write(root, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    argv = [
        sys.executable,
        "-m",
        "inferd.server.cli",
        "serve",
        "--model-repository",
        str(root),
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        "--allow-metrics",
        "false",
        "--model-control-mode",
        "none",
    ]
    proc = servers.start(
        "inferd", argv, ready_line="gRPC (KServe v2) listening on", wait_for="HTTP (KServe v2) listening on"
    )
    http = next(re.search(r"HTTP \(KServe v2\) listening on \S+:(\d+)", line) for line in proc.log if "HTTP (" in line)
    assert http is not None
    return proc, {"grpc": proc.url, "http": f"127.0.0.1:{http.group(1)}"}


class Lines:
    """A pipe's lines, read in a thread; ``wait_for`` blocks until one matches."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> None:
        found = re.compile(pattern)
        with self._changed:
            ok = self._changed.wait_for(lambda: any(found.search(x) for x in self.lines), timeout)
        assert ok, "".join(self.lines)

    @property
    def text(self) -> str:
        with self._changed:
            return "".join(self.lines)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_cli_stops_when_the_server_dies(protocol: str, tmp_path: Path) -> None:
    server, urls = start_add_sub_server(tmp_path / "repo")
    out = tmp_path / "sweep.csv"
    cmd = [
        sys.executable,
        "-m",
        "inferd.server.cli",
        "perf",
        "-m",
        "add_sub",
        "-u",
        urls[protocol],
        "-i",
        protocol,
        "--concurrency-range",
        "1:40",
        "-p",
        "150",
        "-s",
        "100",
        "-r",
        "3",
        "-f",
        str(out),
    ]
    perf = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stderr = Lines(perf.stderr)
        stderr.wait_for(r"\[2\] [\d.]+ infer/s", timeout=60)  # two load levels measured
        server.proc.kill()
        killed = time.monotonic()
        code = perf.wait(15)
        elapsed = time.monotonic() - killed
        stdout = perf.stdout.read() if perf.stdout else ""
    finally:
        if perf.poll() is None:
            perf.kill()
        server.stop()
    err = stderr.text
    assert code == 2, err
    assert elapsed < OUTAGE_NS / 1e9 + 4, err
    assert f"the server at {urls[protocol]} stopped answering" in err
    assert "Traceback" not in err
    # Every level whose result was printed before the kill is in the CSV, the table and the plot.
    done = re.findall(r"^  \[(\d+)\] [\d.]+ infer/s", err, re.MULTILINE)
    assert len(done) >= 2
    assert f"during concurrency {len(done) + 1}:" in err
    rows = list(csv.reader(out.open()))
    assert ",".join(rows[0]) == PA_HEADER
    assert sorted(r[0] for r in rows[1:]) == sorted(done)
    assert all(float(r[1]) > 0 for r in rows[1:])
    assert "infer/s" in stdout and "0.0" not in stdout.split()
    if plot_available():
        assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_outage_rule() -> None:
    """Unavailable failures end the run only after OUTAGE_FAILURES of them spanning OUTAGE_NS
    with nothing answered in between; any answer (even an error about the request) resets."""
    s = 1_000_000_000
    w = OutageWatch(after_ns=2 * s, failures=3)
    w.unavailable("UNAVAILABLE: a", 0)
    w.unavailable("UNAVAILABLE: b", s)
    assert w.failing and w.gone(3 * s) is None  # two failures only: a slow request rate waits for a third
    w.unavailable("UNAVAILABLE: c", 3 * s // 2)
    assert w.gone(2 * s - 1) is None
    assert w.gone(2 * s) == "UNAVAILABLE: c"
    w.answered()
    assert not w.failing and w.gone(10 * s) is None
    for t in (10 * s, 11 * s, 12 * s):
        w.unavailable("UNAVAILABLE: d", t)
    assert w.gone(12 * s) == "UNAVAILABLE: d"  # counted from the first failure after the answer


# --- the plot -------------------------------------------------------------------------------
def step(load: float, throughput: float, latency_us: int, mode: str = "concurrency") -> StepResult:
    """A measured step: one second with ``throughput`` requests, latencies around ``latency_us``."""
    n = int(throughput)
    latencies = [latency_us * 1000 + i * 1000 for i in range(n)]
    return merge([Window(duration_ns=1_000_000_000, latencies_ns=latencies)], mode, load, 1, None, True, 1)


def test_plot_series_in_load_order_with_labels() -> None:
    # Throughput peaks at concurrency 4 and falls after it; given out of order, plus a step
    # in which nothing completed.
    results = [
        step(8, 300, 9000),
        step(1, 100, 1000),
        step(4, 400, 4000),
        step(2, 250, 2000),
        merge([Window(duration_ns=1_000_000_000, latencies_ns=[])], "concurrency", 16, 1, None, False, 1),
    ]
    series = plot_series(results)
    assert [s.name for s in series] == ["p50", "p90", "p95", "p99"]
    for s in series:
        assert [pt.load for pt in s.points] == [1, 2, 4, 8]  # load order, not throughput order
        assert [pt.label for pt in s.points] == ["1", "2", "4", "8"]
        assert [pt.throughput for pt in s.points] == [100, 250, 400, 300]
    p50 = {pt.label: pt.latency_ms for pt in series[0].points}
    assert p50["1"] == pytest.approx(1.05)  # element 50 of 1.000, 1.001, ... 1.099 ms
    for s_low, s_high in zip(series, series[1:]):
        assert all(a.latency_ms <= b.latency_ms for a, b in zip(s_low.points, s_high.points))


def test_plot_series_rate_labels() -> None:
    (p50, *_) = plot_series([step(150.5, 150, 900, "rate"), step(75, 75, 800, "rate")])
    assert [pt.label for pt in p50.points] == ["75", "150.5"]


def test_plot_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "sweep.png"
    plot(path, [step(2, 250, 2000), step(1, 100, 1000)], "add_sub over grpc")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(
    server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the extra sees
    # Asked for by --plot: a usage error before any load is sent.
    assert perf_main(["-m", "add_sub", "-u", server.grpc_url, "--plot", str(tmp_path / "p.png")]) == 2
    assert "pip install 'inferd[perf]'" in capsys.readouterr().err
    # The plot beside the CSV: the run and the CSV go ahead, with a note.
    out = tmp_path / "sweep.csv"
    # -s 1000: the CSV is checked here, not the stability, which a noisy CI machine can miss.
    code = perf_main(["-m", "add_sub", "-u", server.grpc_url, "-p", "150", "-s", "1000", "-r", "4", "-f", str(out)])
    assert code == 0
    assert "pip install 'inferd[perf]'" in capsys.readouterr().err
    assert out.exists() and not out.with_suffix(".png").exists()
