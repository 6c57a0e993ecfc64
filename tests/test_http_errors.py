"""Bad HTTP requests sent as raw bytes (httpx, no client library): each one gets its documented
status and a JSON {"error": ...}, and the server stays up for the next request."""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from .conftest import RunningServer, start_server, test_settings

ONES = [1.0] * 16


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=30) as c:
        yield c


@pytest.fixture(autouse=True)
def _server_stays_up(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    c = request.getfixturevalue("client") if "client" in request.fixturenames else None
    if c is not None:
        assert c.get("/v2/health/live").status_code == 200
        ok = c.post("/v2/models/add_sub/infer", json=infer_doc())
        assert ok.status_code == 200, ok.text


def infer_doc(**changes: Any) -> dict[str, Any]:
    inputs = [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": ONES} for n in ("INPUT0", "INPUT1")]
    for k, v in changes.items():
        inputs[0][k] = v
    return {"inputs": inputs}


def binary_body(
    sizes: tuple[int, int], payload: bytes, header_length: str | None = None
) -> tuple[bytes, dict[str, str]]:
    doc = {
        "inputs": [
            {"name": n, "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": s}}
            for n, s in zip(("INPUT0", "INPUT1"), sizes)
        ]
    }
    header = json.dumps(doc).encode()
    return header + payload, {"Inference-Header-Content-Length": header_length or str(len(header))}


def expect(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for w in words:
        assert w in message, message


INFER = "/v2/models/add_sub/infer"


def test_malformed_json(client: httpx.Client) -> None:
    expect(client.post(INFER, content=b'{"inputs": [}'), 400, "malformed JSON")
    expect(client.post(INFER, content=b""), 400, "malformed JSON")
    expect(client.post(INFER, content=b"\xff\xfe{"), 400)
    expect(client.post(INFER, content=b"[1, 2]"), 400, "JSON object")
    expect(client.post(INFER, json={"inputs": {"name": "INPUT0"}}), 400, "'inputs' must be a list")
    expect(
        client.post(INFER, json={"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16]}]}),
        400,
        "neither 'data'",
    )
    expect(client.post(INFER, json={**infer_doc(), "parameters": {"priority": {"x": 1}}}), 400, "'priority'")


def test_wrong_data_length(client: httpx.Client) -> None:
    expect(client.post(INFER, json=infer_doc(data=[1.0] * 15)), 400, "15 elements", "needs 16")
    expect(client.post(INFER, json=infer_doc(data=[[1.0] * 8, [1.0] * 8, [1.0]])), 400, "24 elements")
    expect(client.post(INFER, json=infer_doc(data=[[1.0] * 8, [1.0] * 7 + [[1.0]]])), 400, "regular")
    # A huge declared shape is refused from the data's length, before anything is allocated.
    expect(client.post(INFER, json=infer_doc(shape=[10**6, 10**6])), 400, "needs")
    expect(client.post(INFER, json=infer_doc(shape=[10**12, 10**12])), 400, "larger than any tensor")
    expect(client.post(INFER, json=infer_doc(shape=[1, -16])), 400, "negative")


def test_bad_datatypes_and_values(client: httpx.Client) -> None:
    expect(client.post(INFER, json=infer_doc(datatype="FP33")), 400, "unknown datatype 'FP33'")
    expect(client.post(INFER, json=infer_doc(datatype="INT64", data=[1] * 16)), 400, "INT64", "FP32")
    expect(client.post(INFER, json=infer_doc(data=["1"] * 16)), 400, "must be numbers", "strings")
    expect(client.post(INFER, json=infer_doc(data=[None] * 16)), 400, "must be numbers")
    int_doc = {
        "inputs": [
            {"name": n, "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 2**70]} for n in ("INPUT0", "INPUT1")
        ]
    }
    expect(client.post("/v2/models/add_int64/infer", json=int_doc), 400)
    int_doc["inputs"][0]["data"] = [1.5, 2, 3, 4]
    expect(client.post("/v2/models/add_int64/infer", json=int_doc), 400, "must be integers")
    fp16 = {
        "inputs": [{"name": n, "shape": [1, 4], "datatype": "FP16", "data": [1.0] * 4} for n in ("INPUT0", "INPUT1")]
    }
    expect(client.post("/v2/models/add_fp16/infer", json=fp16), 400, "binary")


def test_binary_data_size_beyond_the_body(client: httpx.Client) -> None:
    body, headers = binary_body((64, 64), b"\0" * 100)
    expect(client.post(INFER, content=body, headers=headers), 400, "binary_data_size 64", "36 bytes")
    body, headers = binary_body((64, 2**62), b"\0" * 128)
    expect(client.post(INFER, content=body, headers=headers), 400, "binary_data_size")
    body, headers = binary_body((64, 64), b"\0" * 130)
    expect(client.post(INFER, content=body, headers=headers), 400, "2 bytes of binary data")
    body, headers = binary_body((64, -1), b"\0" * 128)
    expect(client.post(INFER, content=body, headers=headers), 400, "non-negative")
    body, headers = binary_body((60, 68), b"\0" * 128)
    expect(client.post(INFER, content=body, headers=headers), 400, "60 bytes")


def test_bytes_binary_count_checked_before_allocating(client: httpx.Client) -> None:
    doc = {
        "inputs": [{"name": "INPUT0", "shape": [1, 10**11], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}]
    }
    header = json.dumps(doc).encode()
    r = client.post(
        "/v2/models/strings/infer",
        content=header + struct.pack("<I", 4) + b"abcd",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    expect(r, 400, "cannot hold")


@pytest.mark.parametrize("value", ["abc", "-1", "1e3", "12a", "0x10", "١٢"])
def test_non_numeric_header_length(client: httpx.Client, value: str) -> None:
    body, headers = binary_body((64, 64), b"\0" * 128, header_length=value)
    expect(
        client.post(INFER, content=body, headers={k: v.encode() for k, v in headers.items()}),
        400,
        "Inference-Header-Content-Length",
    )


@pytest.mark.parametrize("value", ["99999999999999999999999999", "100000"])
def test_oversized_header_length(client: httpx.Client, value: str) -> None:
    body, headers = binary_body((64, 64), b"\0" * 128, header_length=value)
    expect(client.post(INFER, content=body, headers=headers), 400, "larger than the request body")


def test_header_length_inside_the_json(client: httpx.Client) -> None:
    body, headers = binary_body((64, 64), b"\0" * 128)
    headers["Inference-Header-Content-Length"] = "10"
    expect(client.post(INFER, content=body, headers=headers), 400, "malformed JSON")


def test_deep_nesting(client: httpx.Client) -> None:
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    expect(client.post(INFER, content=deep), 400, "nesting")
    deep_object = b'{"a":' * 5000 + b"1" + b"}" * 5000
    expect(client.post(INFER, content=deep_object), 400, "nesting")
    # Brackets inside strings are text, not nesting.
    doc = infer_doc()
    doc["id"] = "[" * 1000
    assert client.post(INFER, json=doc).status_code == 200
    # Nested data at a sane depth is fine.
    assert client.post(INFER, json=infer_doc(data=[[[[[1.0] * 4] * 4]]])).status_code == 200


def test_unsupported_features(client: httpx.Client) -> None:
    doc = infer_doc(parameters={"shared_memory_region": "r", "shared_memory_byte_size": 64})
    del doc["inputs"][0]["data"]
    expect(client.post(INFER, json=doc), 501, "shared memory")
    expect(client.get("/v2/systemsharedmemory/status"), 501)
    expect(client.post("/v2/cudasharedmemory/region/x/register", json={}), 501)
    # The log file is set at start-up only: never a path a client chooses.
    expect(client.post("/v2/logging", json={"log_file": "/etc/passwd"}), 400, "log_file")
    expect(client.post(INFER, content=b"{}", headers={"Content-Encoding": "br"}), 400, "Content-Encoding")


def test_routing_errors(client: httpx.Client) -> None:
    expect(client.get("/v2/nothing/here"), 404)
    expect(client.get(INFER), 405)
    expect(client.post("/v2/models/no_such_model/infer", json=infer_doc()), 404, "no_such_model")
    expect(client.post("/v2/models/add_sub/versions/9/infer", json=infer_doc()), 404)
    expect(client.post("/v2/models/missing_file/infer", json=infer_doc()), 503)
    expect(client.get("/v2/models/no_such_model/config"), 404)
    expect(client.get("/v2/models/no_such_model/stats"), 404)
    expect(client.post("/v2/repository/index", json={"ready": "yes"}), 400)
    assert client.get("/v2/models/no_such_model/ready").status_code == 400
    assert client.post("/v2/repository/index", json={"ready": True}).status_code == 200


# --- size limits on a server with a small body limit ------------------------------------------
LIMIT = 4096


@pytest.fixture(scope="module")
def small(model_repo) -> Iterator[tuple[RunningServer, httpx.Client]]:  # type: ignore[no-untyped-def]
    running = start_server(test_settings(model_repo, http_max_body_bytes=LIMIT, allow_grpc=False, allow_metrics=False))
    with httpx.Client(base_url=f"http://{running.http_url}", timeout=30) as c:
        yield running, c
    running.stop()


def _still_serving(c: httpx.Client) -> None:
    assert c.post(INFER, json=infer_doc()).status_code == 200


def test_body_over_the_limit(small: tuple[RunningServer, httpx.Client]) -> None:
    _, c = small
    big = json.dumps({**infer_doc(), "id": "x" * LIMIT}).encode()
    expect(c.post(INFER, content=big), 413, "exceeds the limit of 4096 bytes")
    _still_serving(c)


def test_chunked_body_over_the_limit(small: tuple[RunningServer, httpx.Client]) -> None:
    _, c = small

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for _ in range(64):
            yield b" " * 1024

    expect(c.post(INFER, content=chunks()), 413, "exceeds the limit")
    _still_serving(c)


def test_decompressed_body_over_the_limit(small: tuple[RunningServer, httpx.Client]) -> None:
    _, c = small
    bomb = gzip.compress(json.dumps({**infer_doc(), "id": "x" * 1_000_000}).encode())
    assert len(bomb) < LIMIT
    expect(c.post(INFER, content=bomb, headers={"Content-Encoding": "gzip"}), 413, "decompressed")
    expect(c.post(INFER, content=b"not gzip", headers={"Content-Encoding": "gzip"}), 400, "gzip")
    expect(c.post(INFER, content=gzip.compress(b"{}")[:-6], headers={"Content-Encoding": "gzip"}), 400, "truncated")
    ok = gzip.compress(json.dumps(infer_doc()).encode())
    assert c.post(INFER, content=ok, headers={"Content-Encoding": "gzip"}).status_code == 200


def test_binary_body_at_the_limit_is_fine(small: tuple[RunningServer, httpx.Client]) -> None:
    _, c = small
    data = np.arange(16, dtype=np.float32).tobytes()
    body, headers = binary_body((64, 64), data + data)
    r = c.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [2.0 * i for i in range(16)]


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ([1] * 65 + [16], ("INPUT0", "66 dimensions", "at most")),
        ([2**62, 2**62], ("INPUT0", "larger than any tensor")),
        ([0, 2**62, 16], ("INPUT0", "larger than any tensor")),
        ([2**70, 16], ("INPUT0", "larger than any tensor")),
    ],
)
def test_shapes_numpy_cannot_hold_are_bad_requests(client: httpx.Client, shape: list[int], words: tuple[str]) -> None:
    doc = infer_doc()
    doc["inputs"][0]["shape"] = shape
    r = client.post(INFER, json=doc)
    expect(r, 400, *words)
    assert "numpy" not in r.text and "Traceback" not in r.text


@pytest.mark.parametrize("version", ["²", "١", "１"])
def test_versions_of_non_ascii_digits_are_bad_requests(client: httpx.Client, version: str) -> None:
    expect(client.post(f"/v2/models/add_sub/versions/{version}/infer", json=infer_doc()), 400)
