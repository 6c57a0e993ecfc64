"""What `inferd serve` logs while it starts: no framework banners at the default level, one line
per loaded version, a table of models and states, and one line with every address served."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from inferd.backends import framework_logs

from .framework_models import HAVE_TF, put, tf_module
from .models import _config, bundled, write
from .serving import serve_argv

TWO_INSTANCES = bundled.ADD_SUB_CONFIG.replace("count: 1", "count: 2")
BANNERS = [
    "oneDNN",
    "absl::InitializeLog",
    "This TensorFlow binary is optimized",
    "cpu_feature_guard",
    "cuda drivers",
    "rebuild TensorFlow",
    "Unable to register cu",
]
ABSL_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d+\.\d+ ")
LOADED = re.compile(r"model '(\w+)' version (\d+) loaded: (\w+), (\d+ instances? \([^)]+\)), (\d+\.\d\d) s$")
LISTENING = re.compile(r"(gRPC|HTTP|metrics) \(.*?\) listening on ([\d.]+:\d+)")
SERVING = re.compile(r"INFO inferd: serving: gRPC ([\d.]+:\d+), HTTP ([\d.]+:\d+), metrics ([\d.]+:\d+)/metrics$")
ROW = re.compile(r"^\| (\S+)\s+\| (\S+)\s+\| (.+?)\s+\|$")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("startup_logs")
    write(root, "add_sub", TWO_INSTANCES, bundled.add_sub_model())
    write(root, "broken", _config("broken", "TYPE_FP32", 4), None)
    (root / "broken" / "1").mkdir()
    if HAVE_TF:
        module = tf_module()
        saved = root / ".build" / "mlp.savedmodel"
        bundled.save_savedmodel(module, saved, {"serving_default": module.serve})
        put(root, "tf_mlp", None, {"model.savedmodel": saved})
    return root


def serve_until_started(repo: Path, log: Path, *extra: str) -> str:
    """Start `inferd serve`, wait for its addresses line, stop it; returns everything it printed."""
    cmd = serve_argv("--model-repository", str(repo), *extra)
    with log.open("wb") as out:  # a file: nobody has to drain a pipe while the models load
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "INFO inferd: serving: " not in (text := log.read_text(errors="replace")):
            assert proc.poll() is None and time.monotonic() < deadline, f"server did not start:\n{text}"
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)
    return log.read_text(errors="replace")


@pytest.fixture(scope="module")
def output(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    # "broken" fails on purpose: the server serves the rest instead of stopping (Triton's default).
    return serve_until_started(repo, tmp_path_factory.mktemp("log") / "inferd.log", "--exit-on-error=false")


def table_rows(text: str) -> dict[str, tuple[str, str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "model(s) requested at start-up:" in line)
    assert lines[start + 1].startswith("+--") and ROW.match(lines[start + 2]).groups() == ("Model", "Version", "Status")
    rows = {}
    for line in lines[start + 4 :]:
        if line.startswith("+--"):
            break
        name, version, status = ROW.match(line).groups()
        rows[name] = (version, status)
    return rows


def test_no_framework_banners(output: str) -> None:
    for banner in BANNERS:
        assert banner not in output, banner
    assert not [line for line in output.splitlines() if ABSL_LINE.match(line)]


def test_one_loaded_line_per_version(output: str) -> None:
    loaded = [m.groups() for line in output.splitlines() if (m := LOADED.search(line))]
    expected = {("add_sub", "1"): ("onnxruntime", "2 instances (CPU)")}
    if HAVE_TF:
        expected[("tf_mlp", "1")] = ("tensorflow", "1 instance (CPU)")
    assert sorted((name, v) for name, v, *_ in loaded) == sorted(expected)  # each exactly once
    for name, version, backend, instances, seconds in loaded:
        assert (backend, instances) == expected[(name, version)]
        assert float(seconds) > 0
    assert "serving versions" not in output and "none loaded" not in output


def test_table_of_models_and_states(output: str) -> None:
    rows = table_rows(output)
    assert rows.pop("add_sub") == ("1", "READY")
    if HAVE_TF:
        assert rows.pop("tf_mlp") == ("1", "READY")
    version, status = rows.pop("broken")
    assert version == "1" and status.startswith("UNAVAILABLE: ") and "model file not found" in status
    assert rows == {}


def test_addresses_line_after_the_table(output: str) -> None:
    listening = dict(LISTENING.findall(output))
    assert set(listening) == {"gRPC", "HTTP", "metrics"}
    lines = output.splitlines()
    serving = [i for i, line in enumerate(lines) if SERVING.search(line)]
    assert len(serving) == 1, output
    assert SERVING.search(lines[serving[0]]).groups() == (listening["gRPC"], listening["HTTP"], listening["metrics"])
    assert serving[0] > max(i for i, line in enumerate(lines) if line.startswith("+--"))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in framework_logs.QUIET_ENV:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    framework_logs.quiet_frameworks("DEBUG")  # back to this process's default: nothing quieted


def test_quiet_levels_never_override_the_user(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    framework_logs.quiet_frameworks("INFO")
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"  # the user's choice
    assert os.environ["TORCH_CPP_LOG_LEVEL"] == "ERROR"


def test_debug_quiets_nothing(clean_env: pytest.MonkeyPatch) -> None:
    framework_logs.quiet_frameworks("DEBUG")
    assert not set(framework_logs.QUIET_ENV) & set(os.environ)


@pytest.mark.parametrize(
    "line, banner",
    [
        ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR", True),
        ("I0000 00:00:1796588464.804201    5889 port.cc:153] oneDNN custom operations are on.", True),
        ("2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda", True),
        ("To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with flags.", True),
        ("2026-12-06 20:21:04,857 INFO inferd.server.manager: model 'add_sub' version 1 loaded", False),
        ("E0000 00:00:1796588464.804201    5889 loader.cc:12] the model's graph is broken", False),
    ],
)
def test_banner_lines(line: str, banner: bool) -> None:
    assert framework_logs.is_banner(line) is banner


def test_a_model_failing_at_start_up_stops_the_server_with_its_reason(repo: Path, tmp_path: Path) -> None:
    """--exit-on-error is true by default, as in Triton: status 1 and the model's reason."""
    done = subprocess.run(
        serve_argv("--model-repository", str(repo), "--model-control-mode=none"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("inferd: failed to load model 'broken' version 1: ") and "model file not found" in last
    assert "--exit-on-error=false" in last
