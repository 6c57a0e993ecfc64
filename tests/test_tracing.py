"""Tracing with OpenTelemetry: the span tree of a request and of an ensemble (the SDK's
in-memory exporter), W3C traceparent continuation on HTTP and gRPC, Triton's rate / count /
level and per-model settings through TraceSetting and /v2/trace/setting, and spans sent to a
real OTLP/HTTP receiver."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from inferd.server.tracing import TraceConfig, parse_trace_config
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from .conftest import RunningServer, start_server, test_settings
from .models import ADD_TWICE as ENSEMBLE
from .models import bundled, write

ONES = np.ones((1, 16), np.float32)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trace-repo")
    write(root, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    write(root, "add_twice", ENSEMBLE, None)
    (root / "add_twice" / "1").mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="module")
def traced(repo: Path) -> Iterator[tuple[RunningServer, InMemorySpanExporter]]:
    running = start_server(test_settings(repo, trace=TraceConfig(level=("TIMESTAMPS",), rate=1)))
    exporter = InMemorySpanExporter()
    running.server.core.tracer.use_exporter(exporter)
    yield running, exporter
    running.stop()


@pytest.fixture
def server(traced: tuple[RunningServer, InMemorySpanExporter]) -> Iterator[RunningServer]:
    running, exporter = traced
    exporter.clear()
    yield running
    with httpx.Client(base_url=f"http://{running.http_url}") as c:  # back to the module's settings
        c.post(
            "/v2/models/add_twice/trace/setting", json={"trace_level": None, "trace_rate": None, "trace_count": None}
        )
        c.post("/v2/trace/setting", json={"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1"})


@pytest.fixture
def spans(traced: tuple[RunningServer, InMemorySpanExporter]) -> InMemorySpanExporter:
    return traced[1]


def infer_http(server: RunningServer, model: str = "add_sub", headers: dict[str, str] | None = None) -> None:
    names = ("INPUT0", "INPUT1") if model == "add_sub" else ("A", "B")
    doc = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16} for n in names]}
    r = httpx.post(f"http://{server.http_url}/v2/models/{model}/infer", json=doc, headers=headers, timeout=10)
    assert r.status_code == 200, r.text


def grpc_inputs() -> list[grpcclient.InferInput]:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        i = grpcclient.InferInput(name, [1, 16], "FP32")
        i.set_data_from_numpy(ONES)
        inputs.append(i)
    return inputs


def test_span_tree_of_a_request(server: RunningServer, spans: InMemorySpanExporter) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.infer("add_sub", grpc_inputs(), request_id="r-7")
    finished = spans.get_finished_spans()
    (root,) = [s for s in finished if s.parent is None]
    assert root.name == "add_sub" and root.kind is SpanKind.SERVER
    assert root.attributes == {"triton.model_name": "add_sub", "triton.request_id": "r-7", "triton.model_version": 1}
    children = {s.name: s for s in finished if s.parent is not None}
    assert sorted(children) == ["compute_infer", "compute_input", "compute_output", "queue"]
    assert all(s.parent.span_id == root.context.span_id for s in children.values())  # type: ignore[union-attr]
    assert all(s.context.trace_id == root.context.trace_id for s in children.values())
    order = [children[n] for n in ("queue", "compute_input", "compute_infer", "compute_output")]
    for a, b in zip(order, order[1:]):
        assert a.end_time <= b.start_time  # type: ignore[operator]
    assert root.start_time <= order[0].start_time and order[-1].end_time <= root.end_time  # type: ignore[operator]
    assert abs(root.start_time - time.time_ns()) < 60e9  # type: ignore[operator]  # wall-clock times


def test_ensemble_steps_are_children(server: RunningServer, spans: InMemorySpanExporter) -> None:
    infer_http(server, "add_twice")
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    (root,) = [s for s in finished if s.parent is None]
    assert root.name == "add_twice"
    steps = sorted((s for s in finished if s.name == "add_sub"), key=lambda s: s.attributes["inferd.ensemble_step"])  # type: ignore[index]
    assert [s.attributes["inferd.ensemble_step"] for s in steps] == [0, 1]  # type: ignore[index]
    assert all(s.parent.span_id == root.context.span_id for s in steps)  # type: ignore[union-attr]
    for step in steps:
        kids = sorted(s.name for s in finished if s.parent is not None and s.parent.span_id == step.context.span_id)
        assert kids == ["compute_infer", "compute_input", "compute_output", "queue"]
    # The ensemble itself has a queue span but no compute spans of its own: its steps are those.
    assert sorted(
        by_id[s.context.span_id].name for s in finished if s.parent and s.parent.span_id == root.context.span_id
    ) == [
        "add_sub",
        "add_sub",
        "queue",
    ]


def test_traceparent_continues_the_callers_trace(server: RunningServer, spans: InMemorySpanExporter) -> None:
    infer_http(server, headers={"traceparent": TRACEPARENT})
    grpcclient.InferenceServerClient(server.grpc_url).infer(
        "add_sub", grpc_inputs(), headers={"traceparent": TRACEPARENT}
    )
    roots = [s for s in spans.get_finished_spans() if s.name == "add_sub" and s.kind is SpanKind.SERVER]
    assert len(roots) == 2
    for root in roots:
        assert format(root.context.trace_id, "032x") == TRACE_ID
        assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT_ID and root.parent.is_remote
    # A malformed traceparent starts a new trace.
    spans.clear()
    infer_http(server, headers={"traceparent": "00-zz-yy-01"})
    (root,) = [s for s in spans.get_finished_spans() if s.parent is None]
    assert format(root.context.trace_id, "032x") != TRACE_ID


def test_rate_and_count(server: RunningServer, spans: InMemorySpanExporter) -> None:
    with httpx.Client(base_url=f"http://{server.http_url}") as c:
        doc = c.post("/v2/trace/setting", json={"trace_rate": "2", "trace_count": "3"}).json()
        assert doc["trace_rate"] == "2" and doc["trace_count"] == "3" and doc["trace_mode"] == "opentelemetry"
        for _ in range(10):
            infer_http(server)
        assert len([s for s in spans.get_finished_spans() if s.parent is None]) == 3  # requests 2, 4, 6
        assert c.get("/v2/trace/setting").json()["trace_count"] == "0"
        # As in Triton, a request that carries its caller's context is traced whatever the count.
        infer_http(server, headers={"traceparent": TRACEPARENT})
        assert len([s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]) == 4


def test_per_model_settings_over_grpc(server: RunningServer, spans: InMemorySpanExporter) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answer = client.update_trace_settings("add_twice", {"trace_level": ["OFF"]}, as_json=True)
    assert answer["settings"]["trace_level"]["value"] == ["OFF"]
    assert answer["settings"]["trace_rate"]["value"] == ["1"]  # copied from the global setting
    assert client.get_trace_settings(as_json=True)["settings"]["trace_level"]["value"] == ["TIMESTAMPS"]
    infer_http(server, "add_twice")
    infer_http(server)
    assert [s.name for s in spans.get_finished_spans() if s.parent is None] == ["add_sub"]
    # Cleared, the model follows the global setting again.
    client.update_trace_settings("add_twice", {"trace_level": None})
    spans.clear()
    infer_http(server, "add_twice")
    assert [s.name for s in spans.get_finished_spans() if s.parent is None] == ["add_twice"]


def test_tensors_level_records_names_types_and_shapes(server: RunningServer, spans: InMemorySpanExporter) -> None:
    with httpx.Client(base_url=f"http://{server.http_url}") as c:
        assert c.post("/v2/trace/setting", json={"trace_level": ["TIMESTAMPS", "TENSORS"]}).json()["trace_level"] == [
            "TIMESTAMPS",
            "TENSORS",
        ]
    infer_http(server)
    (root,) = [s for s in spans.get_finished_spans() if s.parent is None]
    events = [(e.name, dict(e.attributes or {})) for e in root.events]
    assert ("TENSOR_QUEUE_INPUT", {"name": "INPUT0", "datatype": "FP32", "shape": "1,16"}) in events
    assert ("TENSOR_BACKEND_OUTPUT", {"name": "OUTPUT1", "datatype": "FP32", "shape": "1,16"}) in events


def test_trace_setting_errors(server: RunningServer) -> None:
    with httpx.Client(base_url=f"http://{server.http_url}") as c:
        r = c.post("/v2/trace/setting", json={"trace_file": "/etc/passwd"})
        assert r.status_code == 501 and "network protocol" in r.json()["error"]
        r = c.post("/v2/trace/setting", json={"log_frequency": "5"})
        assert r.status_code == 501 and "triton" in r.json()["error"]
        r = c.post("/v2/trace/setting", json={"trace_rate": "many"})
        assert r.status_code == 400 and "Unable to parse 'trace_rate'" in r.json()["error"]
        r = c.post("/v2/trace/setting", json={"trace_level": ["OFF", "TENSORS"]})
        assert r.status_code == 400
        assert c.get("/v2/models/nope/trace/setting").status_code == 404
        assert c.get("/v2/trace/setting").json()["trace_level"] == ["TIMESTAMPS"]  # nothing changed


def test_trace_config_flag() -> None:
    config = parse_trace_config(
        [
            "mode=opentelemetry",
            "level=TIMESTAMPS",
            "rate=5",
            "count=-1",
            "opentelemetry,url=http://collector:4318/v1/traces",
            "opentelemetry,resource=service.name=edge",
            "opentelemetry,bsp_schedule_delay=100",
        ]
    )
    assert (config.level, config.rate, config.url, config.resource) == (
        ("TIMESTAMPS",),
        5,
        "http://collector:4318/v1/traces",
        {"service.name": "edge"},
    )
    assert config.bsp == {"bsp_schedule_delay": 100}
    assert parse_trace_config(["level=TIMESTAMPS", "level=OFF"]).level == ()
    for bad, words in [
        ("file=/tmp/t.json", "a setting of the triton mode"),
        ("mode=jaeger", "mode must be triton or opentelemetry"),
        ("triton,url=x", "the triton mode has no setting 'url'"),
        ("level=LOUD", "OFF, TIMESTAMPS or TENSORS"),
        ("rate=-1", "rate"),
        ("count=-2", "count"),
        ("opentelemetry,port=1", "no setting 'port'"),
        ("jaeger,url=x", "unknown trace mode 'jaeger'"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_trace_config([bad])


def test_tracing_off_imports_nothing_of_opentelemetry() -> None:
    code = (
        "import sys; from inferd.server import app, cli; from inferd.server.tracing import Tracer; "
        "t = Tracer(); assert not t.active; "
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- a real OTLP/HTTP receiver --------------------------------------------------------------------
class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[ExportTraceServiceRequest] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        if self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf":
            self.received.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_spans_reach_a_real_otlp_receiver(repo: Path) -> None:
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    config = parse_trace_config(
        [
            "mode=opentelemetry",
            "level=TIMESTAMPS",
            "rate=1",
            f"opentelemetry,url={url}",
            "opentelemetry,bsp_schedule_delay=50",
        ]
        + ["opentelemetry,resource=deployment.environment=test"]
    )
    running = start_server(test_settings(repo, trace=config, allow_grpc=False, allow_metrics=False))
    try:
        infer_http(running, headers={"traceparent": TRACEPARENT})
        deadline = time.monotonic() + 20
        while not _Receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        running.stop()  # flushes what is left
        receiver.shutdown()
    spans = [
        (rs.resource, span)
        for request in _Receiver.received
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    names = sorted(span.name for _, span in spans)
    assert names == ["add_sub", "compute_infer", "compute_input", "compute_output", "queue"], names
    resource = {a.key: a.value.string_value for a in spans[0][0].attributes}
    assert resource["service.name"] == "inferd" and resource["deployment.environment"] == "test"
    assert all(span.trace_id.hex() == TRACE_ID for _, span in spans)
