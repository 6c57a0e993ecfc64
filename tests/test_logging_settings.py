"""Triton's logging extension: `LogSettings` (gRPC) and `/v2/logging` (HTTP) read and change
the log's switches and format at run time, with tritonclient on both protocols; `inferd serve`
writes the log file in the chosen format and follows the changes."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from inferd.protocol.errors import InvalidArgument
from inferd.server.log_settings import LogControl, LogState, formatter
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, test_settings
from .models import bundled, write
from .serving import serve_argv

DEFAULTS = {
    "log_file": "",
    "log_info": True,
    "log_warning": True,
    "log_error": True,
    "log_verbose_level": 0,
    "log_format": "inferd",
}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("logging")
    write(repo, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    server = start_server(test_settings(repo))
    yield server
    server.stop()


def test_http_reads_and_changes_the_settings(running: RunningServer) -> None:
    with httpx.Client(base_url=f"http://{running.http_url}", timeout=10) as c:
        assert c.get("/v2/logging").json() == DEFAULTS
        changed = c.post("/v2/logging", json={"log_verbose_level": 2, "log_format": "ISO8601"}).json()
        assert changed == {**DEFAULTS, "log_verbose_level": 2, "log_format": "ISO8601"}
        assert c.get("/v2/logging").json() == changed  # kept
        for body, words in (
            ({"log_info": "yes"}, "'log_info' must be a boolean"),
            ({"log_verbose_level": -1}, "must be >= 0"),
            ({"log_verbose_level": True}, "whole number"),
            ({"log_format": "xml"}, "one of inferd, default, ISO8601, json"),
            ({"log_colour": True}, "log setting 'log_colour' is unknown"),
            ({"log_file": "/tmp/x.log"}, "only be set at start-up"),
        ):
            r = c.post("/v2/logging", json=body)
            assert r.status_code == 400 and words in r.json()["error"], r.text
        # A refused request changes nothing, not even its valid settings.
        c.post("/v2/logging", json={"log_info": False, "log_format": "xml"})
        assert c.get("/v2/logging").json() == changed
        assert c.post("/v2/logging", json=DEFAULTS).json() == DEFAULTS  # log_file unchanged is fine
        assert "logging" in c.get("/v2").json()["extensions"]


def test_tritonclient_on_both_protocols(running: RunningServer) -> None:
    grpc_client = grpcclient.InferenceServerClient(running.grpc_url)
    http_client = httpclient.InferenceServerClient(running.http_url)
    try:
        read = grpc_client.get_log_settings().settings
        assert set(read) == set(DEFAULTS)
        assert read["log_info"].bool_param and read["log_format"].string_param == "inferd"
        assert read["log_verbose_level"].WhichOneof("parameter_choice") == "uint32_param"
        grpc_client.update_log_settings({"log_warning": False, "log_verbose_level": 1})
        assert http_client.get_log_settings() == {**DEFAULTS, "log_warning": False, "log_verbose_level": 1}
        http_client.update_log_settings({"log_warning": True, "log_verbose_level": 0})
        got = grpc_client.get_log_settings().settings
        assert got["log_warning"].bool_param and got["log_verbose_level"].uint32_param == 0
        with pytest.raises(InferenceServerException, match="only be set at start-up"):
            grpc_client.update_log_settings({"log_file": "/etc/passwd"})
        with pytest.raises(InferenceServerException, match="must be a boolean"):
            grpc_client.update_log_settings({"log_error": None})  # a setting without a value
    finally:
        grpc_client.close()
        http_client.close()


def test_switches_are_independent_not_a_threshold() -> None:
    state = LogState(log_info=False, log_warning=True, log_error=False, log_verbose_level=1)
    shown = [lvl for lvl in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR) if state.shows(lvl)]
    assert shown == [logging.DEBUG, logging.WARNING]
    assert LogState(log_info=False, log_warning=False, log_error=False).threshold() > logging.CRITICAL
    with pytest.raises(InvalidArgument):
        LogControl(LogState(log_format="xml"))


def test_formats() -> None:
    record = logging.LogRecord("inferd", logging.WARNING, __file__, 1, "model %s", ("a",), None)
    record.created = 1716235406.829575  # 2024-05-20T20:03:26.829575Z
    assert re.fullmatch(r"W\d{4} \d\d:\d\d:\d\d\.829575 \d+ inferd\] model a", formatter("default").format(record))
    assert re.fullmatch(r"2024-05-20T20:03:26Z W \d+ inferd\] model a", formatter("ISO8601").format(record))
    doc = json.loads(formatter("json").format(record))
    assert doc["time"] == "2024-05-20T20:03:26.829575Z"
    assert (doc["level"], doc["logger"], doc["message"]) == ("WARNING", "inferd", "model a")
    assert " WARNING inferd: model a" in formatter("inferd").format(record)


def wait_for(path: Path, pattern: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, text := path.read_text(errors="replace") if path.exists() else "", re.MULTILINE):
        assert time.monotonic() < deadline, f"no {pattern!r} in:\n{text}"
        time.sleep(0.1)
    return text


def test_serve_writes_the_log_file_and_follows_changes(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write(repo, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    log = tmp_path / "inferd.jsonl"
    argv = serve_argv(
        "--model-repository",
        str(repo),
        "--model-control-mode=explicit",
        "--load-model=add_sub",
        f"--log-file={log}",
        "--log-format=json",
    )
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        text = wait_for(log, r'"message": "serving: ')
        entries = [json.loads(line) for line in text.splitlines()]
        assert all({"time", "level", "pid", "logger", "message"} <= set(e) for e in entries)
        serving = next(e["message"] for e in entries if e["message"].startswith("serving: "))
        http = re.search(r"HTTP ([\d.]+:\d+)", serving).group(1)  # type: ignore[union-attr]
        loaded = "model 'add_sub' version 1 loaded"
        with httpx.Client(base_url=f"http://{http}", timeout=30) as c:
            assert c.get("/v2/logging").json()["log_file"] == str(log)
            assert log.read_text().count(loaded) == 1
            # INFO off: a reload's "loaded" line is not written; back on, the next one is.
            assert c.post("/v2/logging", json={"log_info": False}).status_code == 200
            assert c.post("/v2/repository/models/add_sub/unload").status_code == 200
            assert c.post("/v2/repository/models/add_sub/load").status_code == 200
            assert log.read_text().count(loaded) == 1
            assert c.post("/v2/logging", json={"log_info": True, "log_format": "ISO8601"}).status_code == 200
            assert c.post("/v2/repository/models/add_sub/unload").status_code == 200
            assert c.post("/v2/repository/models/add_sub/load").status_code == 200
        text = wait_for(log, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ I \d+ \S+\] " + re.escape(loaded))
        assert text.count(loaded) == 2
        assert "log settings changed: log_info=True, log_format=ISO8601" in text
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    assert proc.stderr is not None and proc.stderr.read() == b""  # everything went to the file
