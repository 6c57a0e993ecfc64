"""The HTTP front end's life inside the server: ports, connection handling, graceful stop."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import RunningServer, start_server, test_settings
from .models import bundled, write

SLOW_ADD_SUB = bundled.ADD_SUB_CONFIG.replace(
    "instance_group", "dynamic_batching { max_queue_delay_microseconds: 500000 }\ninstance_group"
)
DOC = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16} for n in ("INPUT0", "INPUT1")]}


def test_keep_alive_responses_are_not_delayed(server: RunningServer) -> None:
    # Without TCP_NODELAY, Nagle's algorithm and delayed ACKs cost ~40 ms per response on a
    # kept-alive connection; 20 sequential requests would take most of a second.
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=30) as c:
        c.get("/v2/models/add_sub/stats")
        started = time.monotonic()
        for _ in range(20):
            assert c.get("/v2/models/add_sub/stats").status_code == 200
        assert time.monotonic() - started < 0.4


def test_busy_port_is_an_error_and_nothing_is_left_running(model_repo: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{port}"):
            start_server(test_settings(model_repo, metrics_port=port))


def test_stop_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    write(tmp_path, "add_sub", SLOW_ADD_SUB, bundled.add_sub_model())
    running = start_server(test_settings(tmp_path))
    url = f"http://{running.http_url}/v2/models/add_sub/infer"
    result: dict[str, int] = {}

    def call() -> None:
        result["status"] = httpx.post(url, json=DOC, timeout=30).status_code

    thread = threading.Thread(target=call)
    thread.start()
    pending = 'nv_inference_pending_request_count{model="add_sub",version="1"} 1.0'
    deadline = time.monotonic() + 10
    while pending not in httpx.get(f"http://{running.metrics_url}/metrics").text:  # in the batcher's window
        assert time.monotonic() < deadline
        time.sleep(0.01)
    running.stop()
    thread.join(30)
    assert result == {"status": 200}
    with pytest.raises(httpx.ConnectError):
        httpx.post(url, json=DOC, timeout=5)


def test_big_json_is_converted_off_the_loop_and_others_keep_flowing(server: RunningServer) -> None:
    # A 3 MB JSON body is decoded on a worker thread; meanwhile small requests are answered.
    doc = {**DOC, "id": "x" * 3_000_000}
    base = f"http://{server.http_url}"
    result: dict[str, object] = {}

    def big() -> None:
        r = httpx.post(f"{base}/v2/models/add_sub/infer", json=doc, timeout=30)
        result["status"], result["id_length"] = r.status_code, len(r.json()["id"])

    thread = threading.Thread(target=big)
    thread.start()
    with httpx.Client(base_url=base, timeout=30) as c:
        for _ in range(5):
            assert c.get("/v2/health/live").status_code == 200
    thread.join(30)
    assert result == {"status": 200, "id_length": 3_000_000}
