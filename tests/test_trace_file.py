"""Triton's ``triton`` trace mode: JSON trace files (``--trace-config triton,file=...``) written
by a real server for real tritonclient requests over gRPC and HTTP: the objects and timestamps
of each trace, request ids, log-frequency's indexed files, count, ensembles' parent ids, TENSORS'
data, TraceSetting in this mode, the flags (Triton's deprecated ones included), and nothing
written while tracing is off."""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from inferd.server.cli import add_serve_arguments, settings_from_args
from inferd.server.trace_file import tensor_data
from inferd.server.tracing import Tracer, parse_trace_config
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, test_settings
from .models import ADD_TWICE as ENSEMBLE
from .models import bundled, string_identity_model, write

CORE = [
    "REQUEST_START",
    "QUEUE_START",
    "COMPUTE_START",
    "COMPUTE_INPUT_END",
    "COMPUTE_OUTPUT_START",
    "COMPUTE_END",
    "REQUEST_END",
]
FRONT = ["HTTP_RECV_START", "HTTP_RECV_END", "GRPC_WAITREAD_START", "GRPC_WAITREAD_END"]
BACK = ["HTTP_SEND_START", "HTTP_SEND_END", "GRPC_SEND_START", "GRPC_SEND_END"]
STRINGS = """\
name: "strings"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ 2 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 2 ] } ]
"""
X = (np.arange(16, dtype=np.float32) / 4).reshape(1, 16)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trace-file-repo")
    write(root, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    write(root, "add_twice", ENSEMBLE, None)
    (root / "add_twice" / "1").mkdir(exist_ok=True)
    write(root, "strings", STRINGS, string_identity_model())
    return root


def serve(repo: Path, *trace_config: str) -> RunningServer:
    config = parse_trace_config(trace_config)
    return start_server(test_settings(repo, trace=config, allow_metrics=False))


@pytest.fixture
def file(tmp_path: Path) -> Path:
    return tmp_path / "trace.json"


def _infer(client: Any, url: str, model: str, request_id: str) -> None:
    """One request of X, X with tritonclient's ``client`` module (grpc or http: the same API)."""
    inputs = []
    for name in ("INPUT0", "INPUT1") if model == "add_sub" else ("A", "B"):
        i = client.InferInput(name, [1, 16], "FP32")
        i.set_data_from_numpy(X)
        inputs.append(i)
    client.InferenceServerClient(url).infer(model, inputs, request_id=request_id)


def infer_grpc(server: RunningServer, model: str = "add_sub", request_id: str = "") -> None:
    _infer(grpcclient, server.grpc_url, model, request_id)


def infer_http(server: RunningServer, model: str = "add_sub", request_id: str = "") -> None:
    _infer(httpclient, server.http_url, model, request_id)


def read(path: Path) -> list[dict[str, Any]]:
    doc = json.loads(path.read_text())
    assert isinstance(doc, list)
    return doc


def traces(objects: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Trace id -> its objects, in file order; checks each trace's layout: the model object,
    then its timestamps, then its tensors."""
    by_id: dict[int, list[dict[str, Any]]] = {}
    for o in objects:
        by_id.setdefault(o["id"], []).append(o)
    for trace_id, items in by_id.items():
        assert "model_name" in items[0] and isinstance(items[0]["model_version"], int), items
        kinds = ["model" if "model_name" in o else "timestamps" if "timestamps" in o else "tensor" for o in items]
        assert kinds == sorted(kinds, key=["model", "timestamps", "tensor"].index), (trace_id, kinds)
        assert kinds.count("model") == 1
    return by_id


def stamps(items: list[dict[str, Any]]) -> list[tuple[str, int]]:
    out = []
    for o in items:
        if "timestamps" in o:
            ((ts,),) = [o["timestamps"]]
            out.append((ts["name"], ts["ns"]))
    return out


def wait_for(path: Path, timeout: float = 10) -> list[dict[str, Any]]:
    """A <file>.<k> the writer thread writes (complete once it exists)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.02)
    return read(path)


def count_traces(objects: list[dict[str, Any]]) -> int:
    return sum("model_name" in o for o in objects)


# --- TIMESTAMPS ------------------------------------------------------------------------------------
def test_timestamps_of_grpc_and_http_requests(repo: Path, file: Path) -> None:
    server = serve(repo, f"triton,file={file}", "level=TIMESTAMPS", "rate=1")
    try:
        infer_grpc(server, request_id="g-1")
        infer_http(server)
        infer_http(server, request_id="h-2")
        infer_grpc(server)
    finally:
        server.stop()
    native = server.server.grpc_frontend == "native"  # grpc.aio cannot tell when it read a call
    by_id = traces(read(file))
    assert len(by_id) == 4
    allowed = FRONT + CORE + BACK
    request_ids = []
    for (_, items), http in zip(sorted(by_id.items()), (False, True, True, False)):  # in the order sent
        head = items[0]
        assert head["model_name"] == "add_sub" and head["model_version"] == 1 and "parent_id" not in head
        request_ids.append(head.get("request_id"))
        names = [n for n, _ in stamps(items)]
        # When the front end read the request: HTTP's route, or (unary calls on the native front
        # end) grpc++'s read; then, after the core's answer, when the front end sent it.
        front = ["HTTP_RECV_START", "HTTP_RECV_END"] if http else ["GRPC_WAITREAD_START", "GRPC_WAITREAD_END"]
        back = ["HTTP_SEND_START", "HTTP_SEND_END"] if http else ["GRPC_SEND_START", "GRPC_SEND_END"]
        if not http and not native:
            front = back = []
        assert names == front + CORE + back, names
        assert all(n in allowed for n in names)
        ns = [t for _, t in stamps(items)]
        assert ns == sorted(ns) and all(isinstance(t, int) for t in ns)
        at = dict(stamps(items))
        assert at["REQUEST_START"] <= at["QUEUE_START"] <= at["COMPUTE_START"] <= at["COMPUTE_END"] <= at["REQUEST_END"]
        if back:
            assert at["REQUEST_END"] <= at[back[0]] <= at[back[1]]
        assert abs(at["REQUEST_START"] - time.monotonic_ns()) < 60e9  # the steady clock
    # request_id only where the client sent one.
    assert sorted(r for r in request_ids if r) == ["g-1", "h-2"] and request_ids.count(None) == 2
    assert sorted(by_id) == list(range(min(by_id), min(by_id) + 4))  # Triton's ids: 1, 2, ...


def test_a_grpc_stream_request_is_traced(repo: Path, file: Path) -> None:
    server = serve(repo, f"triton,file={file}", "level=TIMESTAMPS", "rate=1")
    answers: queue.Queue[Any] = queue.Queue()
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            i = grpcclient.InferInput(name, [1, 16], "FP32")
            i.set_data_from_numpy(X)
            inputs.append(i)
        client.async_stream_infer("add_sub", inputs, request_id="s-1")
        assert not isinstance(answers.get(timeout=10), Exception)
        client.stop_stream()
    finally:
        server.stop()
    (items,) = traces(read(file)).values()
    assert items[0]["request_id"] == "s-1" and [n for n, _ in stamps(items)] == CORE


def test_a_refused_request_is_traced_without_a_send(repo: Path, file: Path) -> None:
    """A request the core refuses ends its trace at once (no *_SEND_*); an answered one after
    it is traced as usual, so every trace of a count-limited setting is written."""
    server = serve(repo, f"triton,file={file}", "level=TIMESTAMPS", "rate=1", "count=4")
    try:
        for client, url in ((httpclient, server.http_url), (grpcclient, server.grpc_url)):
            wrong = client.InferInput("INPUT0", [1, 16], "FP32")
            wrong.set_data_from_numpy(X)
            with pytest.raises(InferenceServerException):
                client.InferenceServerClient(url).infer("add_sub", [wrong])  # INPUT1 is missing
        infer_http(server)
        infer_grpc(server)
        assert count_traces(wait_for(Path(f"{file}.0"))) == 4
    finally:
        server.stop()
    ends = [[n for n, _ in stamps(items)][-1] for _, items in sorted(traces(read(Path(f"{file}.0"))).items())]
    native = server.server.grpc_frontend == "native"
    assert ends == ["REQUEST_END", "REQUEST_END", "HTTP_SEND_END", "GRPC_SEND_END" if native else "REQUEST_END"]


def test_log_frequency_writes_indexed_files(repo: Path, file: Path) -> None:
    server = serve(repo, f"triton,file={file}", "triton,log-frequency=2", "level=TIMESTAMPS", "rate=1")
    try:
        for i in range(5):
            (infer_grpc if i % 2 else infer_http)(server)
        assert count_traces(wait_for(Path(f"{file}.0"))) == 2
        assert count_traces(wait_for(Path(f"{file}.1"))) == 2
        assert not Path(f"{file}.2").exists()
    finally:
        server.stop()
    last = read(Path(f"{file}.2"))
    assert count_traces(last) == 1
    assert not file.exists() and not Path(f"{file}.3").exists()
    ids = [o["id"] for k in range(3) for o in read(Path(f"{file}.{k}")) if "model_name" in o]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert not list(file.parent.glob("*.partial"))


def test_count_stops_after_that_many_traces(repo: Path, file: Path) -> None:
    server = serve(repo, f"triton,file={file}", "level=TIMESTAMPS", "rate=1", "count=3")
    try:
        for _ in range(5):
            infer_http(server)
        # As in Triton: the collected traces go to an indexed file once count is used up.
        assert count_traces(wait_for(Path(f"{file}.0"))) == 3
        settings = httpclient.InferenceServerClient(server.http_url).get_trace_settings()
        assert settings["trace_count"] == "0"
    finally:
        server.stop()
    assert not file.exists() and not Path(f"{file}.1").exists()


def test_rate_samples_every_nth_request(repo: Path, file: Path) -> None:
    server = serve(repo, f"triton,file={file}", "level=TIMESTAMPS", "rate=3")
    try:
        for _ in range(7):
            infer_grpc(server)
    finally:
        server.stop()
    assert count_traces(read(file)) == 2


def test_ensemble_steps_have_the_ensembles_id_as_parent(repo: Path, file: Path) -> None:
    server = serve(repo, f"triton,file={file}", "level=TIMESTAMPS", "rate=1")
    try:
        infer_grpc(server, "add_twice", request_id="e-1")
    finally:
        server.stop()
    read_stamps = ["GRPC_WAITREAD_START", "GRPC_WAITREAD_END"] if server.server.grpc_frontend == "native" else []
    by_id = traces(read(file))
    (root,) = [items for items in by_id.values() if "parent_id" not in items[0]]
    head = root[0]
    assert head["model_name"] == "add_twice" and head["request_id"] == "e-1"
    # The ensemble's own trace: no compute of its own (its steps compute), as in Triton.
    send_stamps = ["GRPC_SEND_START", "GRPC_SEND_END"] if read_stamps else []
    assert [n for n, _ in stamps(root)] == [*read_stamps, "REQUEST_START", "QUEUE_START", "REQUEST_END", *send_stamps]
    steps = [items for items in by_id.values() if "parent_id" in items[0]]
    assert len(steps) == 2
    for items in steps:
        assert items[0]["parent_id"] == head["id"] and items[0]["model_name"] == "add_sub"
        assert [n for n, _ in stamps(items)] == CORE
        at = dict(stamps(items))
        assert dict(stamps(root))["REQUEST_START"] <= at["REQUEST_START"] <= at["REQUEST_END"]
        assert at["REQUEST_END"] <= dict(stamps(root))["REQUEST_END"]


# --- TENSORS -------------------------------------------------------------------------------------
def tensors(items: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, str]]:
    return {(o["activity"], o["tensor"]["name"]): o["tensor"] for o in items if "activity" in o}


def test_tensors_level_writes_data_shape_and_dtype(repo: Path, file: Path) -> None:
    server = serve(repo, f"triton,file={file}", "level=TIMESTAMPS", "level=TENSORS", "rate=1")
    try:
        infer_http(server)
        strings = httpclient.InferInput("INPUT0", [1, 2], "BYTES")
        strings.set_data_from_numpy(np.array([[b"a,b", 'say "hi" \u00e9'.encode()]], dtype=object))
        httpclient.InferenceServerClient(server.http_url).infer("strings", [strings])
        infer_grpc(server, "add_twice")
    finally:
        server.stop()
    by_id = traces(read(file))
    models = {items[0]["model_name"]: items for items in by_id.values() if "parent_id" not in items[0]}
    fp32 = tensors(models["add_sub"])
    x = ",".join(f"{v:g}" for v in X.ravel())
    assert fp32[("TENSOR_QUEUE_INPUT", "INPUT0")] == {"name": "INPUT0", "data": x, "shape": "1,16", "dtype": "FP32"}
    assert fp32[("TENSOR_BACKEND_OUTPUT", "OUTPUT0")]["data"] == ",".join(f"{v:g}" for v in 2 * X.ravel())
    assert fp32[("TENSOR_BACKEND_OUTPUT", "OUTPUT1")]["data"] == ",".join("0" for _ in range(16))
    over_http = ["HTTP_RECV_START", "HTTP_RECV_END", *CORE, "HTTP_SEND_START", "HTTP_SEND_END"]
    assert [n for n, _ in stamps(models["add_sub"])] == over_http
    text = tensors(models["strings"])
    expected = {"name": "INPUT0", "data": '"a,b","say ""hi"" \u00e9"', "shape": "1,2", "dtype": "BYTES"}
    assert text[("TENSOR_QUEUE_INPUT", "INPUT0")] == expected
    assert text[("TENSOR_BACKEND_OUTPUT", "OUTPUT0")] == {**expected, "name": "OUTPUT0"}
    # An ensemble's steps trace their own inputs and outputs: the data flow between them.
    steps = [tensors(items) for items in by_id.values() if "parent_id" in items[0]]
    assert len(steps) == 2
    assert {("TENSOR_QUEUE_INPUT", "INPUT0"), ("TENSOR_BACKEND_OUTPUT", "OUTPUT0")} <= set(steps[0])
    assert steps[1][("TENSOR_QUEUE_INPUT", "INPUT0")]["data"] == steps[0][("TENSOR_BACKEND_OUTPUT", "OUTPUT0")]["data"]


def test_tensor_data_as_text() -> None:
    assert tensor_data(np.array([[b"ok", b"\xff"]], dtype=object), "BYTES") == '"ok","\ufffd"'
    assert tensor_data(np.array([True, False]), "BOOL") == "1,0"
    assert tensor_data(np.array([1.0, 0.1, 1e-7, 123456789.0], np.float32), "FP32") == "1,0.1,1e-07,1.23457e+08"
    assert tensor_data(np.array([[-3, 255]], np.int64), "INT64") == "-3,255"
    assert tensor_data(np.array([1.5], np.float16), "FP16") == "1.5"


# --- TraceSetting ----------------------------------------------------------------------------------
def test_trace_setting_in_the_triton_mode(repo: Path, file: Path) -> None:
    server = serve(repo, f"triton,file={file}", "level=TIMESTAMPS", "rate=1")
    try:
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        http = httpclient.InferenceServerClient(server.http_url)
        got = http.get_trace_settings()
        assert got == {
            "trace_level": ["TIMESTAMPS"],
            "trace_rate": "1",
            "trace_count": "-1",
            "log_frequency": "0",
            "trace_file": str(file),
            "trace_mode": "triton",
        }
        values = grpc.get_trace_settings(as_json=True)["settings"]
        assert values["trace_mode"]["value"] == ["triton"] and values["trace_file"]["value"] == [str(file)]
        assert values["log_frequency"]["value"] == ["0"]
        # log_frequency globally (HTTP) and for one model (gRPC); the model's is its own.
        assert http.update_trace_settings(settings={"log_frequency": "3"})["log_frequency"] == "3"
        answer = grpc.update_trace_settings("add_twice", {"log_frequency": "1"}, as_json=True)["settings"]
        assert answer["log_frequency"]["value"] == ["1"] and answer["trace_file"]["value"] == [str(file)]
        assert grpc.get_trace_settings(as_json=True)["settings"]["log_frequency"]["value"] == ["3"]
        assert http.get_trace_settings("add_sub")["log_frequency"] == "3"  # follows the global one
        assert http.update_trace_settings("add_sub", {"log_frequency": "2"})["log_frequency"] == "2"
        infer_http(server, "add_twice")  # its own setting: one trace per file
        assert count_traces(wait_for(Path(f"{file}.0"))) == 3  # the ensemble and its two steps
        infer_http(server)
        infer_grpc(server)  # add_sub's setting: two per file
        assert count_traces(wait_for(Path(f"{file}.1"))) == 2
        grpc.update_trace_settings("add_twice", {"log_frequency": None})
        assert http.get_trace_settings("add_twice")["log_frequency"] == "3"
        # The file cannot change over the network, as in Triton.
        for call in (
            lambda: http.update_trace_settings(settings={"trace_file": "/tmp/elsewhere.json"}),
            lambda: grpc.update_trace_settings(settings={"trace_file": "/tmp/elsewhere.json"}),
        ):
            with pytest.raises(InferenceServerException, match="trace file location can not be updated"):
                call()
        with pytest.raises(InferenceServerException, match="Unable to parse 'log_frequency'"):
            http.update_trace_settings(settings={"log_frequency": "-1"})
        assert http.get_trace_settings()["log_frequency"] == "3"
    finally:
        server.stop()
    assert not Path("/tmp/elsewhere.json").exists()


def test_level_off_creates_no_file(repo: Path, file: Path) -> None:
    server = serve(repo, f"triton,file={file}", "rate=1")
    try:
        assert not server.server.core.tracer.active
        infer_http(server)
        infer_grpc(server)
    finally:
        server.stop()
    assert not list(file.parent.iterdir())


def test_a_level_needs_a_file_in_the_triton_mode(repo: Path) -> None:
    server = serve(repo, "mode=triton", "level=TIMESTAMPS")
    try:
        assert not server.server.core.tracer.active  # Triton: "trace file name is not given"
        http = httpclient.InferenceServerClient(server.http_url)
        assert http.get_trace_settings()["trace_file"] == ""
        with pytest.raises(InferenceServerException, match="trace file name is not given"):
            http.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
    finally:
        server.stop()


def test_a_write_failure_is_logged_and_requests_go_on(
    repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(repo, f"triton,file={tmp_path / 'missing' / 'trace.json'}", "level=TIMESTAMPS", "rate=1")
    try:
        infer_http(server)
        infer_grpc(server)
    finally:
        server.stop()
    assert "failed creating trace file" in caplog.text


# --- flags ----------------------------------------------------------------------------------------
def serve_settings(*argv: str) -> Any:
    p = argparse.ArgumentParser(prog="inferd serve", exit_on_error=False)
    add_serve_arguments(p)
    return settings_from_args(p.parse_args(list(argv)))


def test_trace_config_selects_the_mode() -> None:
    config = serve_settings(
        "--trace-config=triton,file=/tmp/t.json", "--trace-config=triton,log-frequency=50", "--trace-config=rate=100"
    ).trace
    assert (config.mode, config.file, config.log_frequency, config.rate) == ("triton", "/tmp/t.json", 50, 100)
    assert parse_trace_config(["mode=triton"]).mode == "triton"
    assert parse_trace_config(["opentelemetry,url=http://c:4318/v1/traces"]).mode == "opentelemetry"
    assert parse_trace_config([]).mode == "opentelemetry"  # inferd's default (Triton's is triton)


@pytest.mark.parametrize(
    "argv",
    [
        ["--trace-config=triton,file=/tmp/t.json", "--trace-config=opentelemetry,url=http://c/v1/traces"],
        ["--trace-config=mode=opentelemetry", "--trace-file=/tmp/t.json"],
        ["--trace-config=mode=triton", "--trace-config=mode=opentelemetry"],
    ],
)
def test_settings_of_both_modes_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        serve_settings(*argv)
    err = capsys.readouterr().err
    assert "select different trace modes" in err and "triton" in err and "opentelemetry" in err, err


def test_tritons_deprecated_flags_map_to_trace_config(caplog: pytest.LogCaptureFixture) -> None:
    config = serve_settings(
        "--trace-file=/tmp/t.json",
        "--trace-level=TIMESTAMPS",
        "--trace-level=TENSORS",
        "--trace-rate=10",
        "--trace-count=5",
        "--trace-log-frequency=4",
    ).trace
    assert (config.mode, config.file, config.level, config.rate, config.count, config.log_frequency) == (
        "triton",
        "/tmp/t.json",
        ("TIMESTAMPS", "TENSORS"),
        10,
        5,
        4,
    )
    Tracer(config).shutdown()  # Triton's deprecation notes, as WARNING lines
    notes = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("'--trace-file' has been deprecated" in n and "triton,file=" in n for n in notes), notes
    assert any("'--trace-log-frequency' has been deprecated" in n for n in notes), notes
    # --trace-config wins over a deprecated flag, as in Triton.
    assert serve_settings("--trace-rate=10", "--trace-config=rate=3").trace.rate == 3


def test_bad_deprecated_values_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        serve_settings("--trace-rate=often")
    assert "--trace-rate=often" in capsys.readouterr().err


def test_the_triton_mode_imports_nothing_of_opentelemetry(tmp_path: Path) -> None:
    code = (
        "import sys; from inferd.server import app, cli; from inferd.server.tracing import Tracer, "
        f"parse_trace_config; t = Tracer(parse_trace_config(['triton,file={tmp_path / 't.json'}', "
        "'level=TIMESTAMPS'])); assert t.active; t.shutdown(); "
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
