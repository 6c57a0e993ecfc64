"""Triton's generate extension (/generate, /generate_stream) over HTTP, with httpx, against the
bundled charlm (decoupled and not), add_sub, and small Python models that fail on purpose."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from inferd.protocol.errors import InvalidArgument
from inferd.protocol.streaming import ResponseChannel
from inferd.protocol.types import InferResponse, TensorMetadata
from inferd.server.frontends.generate_convert import _shape, decode_generate, encode_generate

from .conftest import RunningServer, start_server, test_settings
from .text_models import build_repository


@pytest.fixture(scope="module")
def text_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(test_settings(build_repository(tmp_path_factory.mktemp("text-repo"))))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(text_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{text_server.http_url}", timeout=30) as client:
        yield client


def events(response: httpx.Response) -> list[dict]:
    """The JSON of every SSE event, checking the framing: 'data: ...' then a blank line."""
    body = response.read().decode()
    assert body.endswith("\n\n") or not body
    docs = []
    for event in body.split("\n\n")[:-1]:
        assert event.startswith("data: "), event
        docs.append(json.loads(event.removeprefix("data: ")))
    return docs


# --- /generate ----------------------------------------------------------------------------------
def test_generate_one_answer_from_a_model_that_is_not_decoupled(http: httpx.Client) -> None:
    r = http.post(
        "/v2/models/charlm_whole/generate",
        json={"id": "42", "text_input": "First Citizen:\n", "parameters": {"max_tokens": 20, "seed": 7}},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["id"] == "42" and doc["model_name"] == "charlm_whole" and doc["model_version"] == "1"
    assert len(doc["text_output"]) == 20 and doc["finish_reason"] == "length"
    assert doc["prompt_tokens"] == 15 and doc["completion_tokens"] == 20


def test_generate_is_deterministic_for_a_seed_and_not_an_echo(http: httpx.Client) -> None:
    body = {"text_input": "MENENIUS:\n", "max_tokens": 60, "temperature": 0.8, "seed": 3}
    first = http.post("/v2/models/charlm_whole/generate", json=body).json()["text_output"]
    again = http.post("/v2/models/charlm_whole/generate", json=body).json()["text_output"]
    other = http.post("/v2/models/charlm_whole/generate", json={**body, "seed": 4}).json()["text_output"]
    assert first == again and first != other
    assert "MENENIUS" not in first[:9] and len(set(first)) > 10  # text, not the prompt or one letter
    # Text-like: mostly letters and spaces, with words of ordinary length.
    words = first.split()
    assert sum(c.isalpha() or c.isspace() for c in first) / len(first) > 0.8
    assert 2 <= np.mean([len(w) for w in words]) <= 8


def test_generate_on_a_decoupled_model_with_stream_false(http: httpx.Client) -> None:
    """Triton's documented request: the model answers once when the 'stream' parameter is false."""
    r = http.post(
        "/v2/models/charlm/generate",
        json={"text_input": "x", "parameters": {"stream": False, "max_tokens": 8, "temperature": 0}},
    )
    assert r.status_code == 200 and len(r.json()["text_output"]) == 8


def test_generate_refuses_a_model_that_answers_more_than_once(http: httpx.Client) -> None:
    r = http.post("/v2/models/charlm/generate", json={"text_input": "x", "max_tokens": 3})
    assert r.status_code == 500
    assert r.json() == {
        "error": "generate expects model to produce exactly 1 response, use generate stream for model that generates various number of responses"
    }


def test_generate_maps_numeric_tensors_and_versions(http: httpx.Client) -> None:
    r = http.post(
        "/v2/models/add_sub/versions/1/generate", json={"INPUT0": list(range(16)), "parameters": {"INPUT1": [1] * 16}}
    )
    doc = r.json()
    assert r.status_code == 200 and doc["OUTPUT0"] == [float(i + 1) for i in range(16)]
    assert doc["OUTPUT1"] == [float(i - 1) for i in range(16)] and "id" not in doc


def test_generate_passes_other_keys_as_request_parameters(http: httpx.Client) -> None:
    """'stream' is not an input of charlm: it reaches the model as a request parameter."""
    r = http.post("/v2/models/charlm/generate", json={"text_input": "x", "max_tokens": 2, "stream": False})
    assert r.status_code == 200 and len(r.json()["text_output"]) == 2


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/nope/generate", {"text_input": "x"}, 404, "Request for unknown model: 'nope' is not found"),
        ("/v2/models/charlm/versions/7/generate", {"text_input": "x"}, 404, "'charlm' version 7 is not found"),
        ("/v2/models/charlm_whole/generate", {}, 400, "missing required input 'text_input'"),
        ("/v2/models/charlm_whole/generate", {"text_input": 5}, 400, "BYTES data must be strings"),
        (
            "/v2/models/charlm_whole/generate",
            {"text_input": "x", "max_tokens": "ten"},
            400,
            "INT32 data must be integers",
        ),
        (
            "/v2/models/charlm_whole/generate",
            {"text_input": "x", "max_tokens": 0},
            400,
            "max_tokens must be between 1 and 4096",
        ),
        (
            "/v2/models/charlm_whole/generate",
            {"text_input": ["a", "b"]},
            400,
            "The schema can not convert input 'text_input' to tensor with proper shape",
        ),
        (
            "/v2/models/charlm_whole/generate",
            {"text_input": "x", "parameters": [1]},
            400,
            "Expected JSON object for keyword: 'parameters'",
        ),
        (
            "/v2/models/charlm_whole/generate",
            {"text_input": "x", "odd": {"a": 1}},
            400,
            "parameter 'odd' has invalid type. It should be either 'int', 'bool', or 'string'.",
        ),
        ("/v2/models/charlm_whole/generate", {"text_input": "x", "id": 3}, 400, "'id' must be a string"),
        (
            "/v2/models/add_sub/generate",
            {"INPUT0": list(range(15)), "INPUT1": [1] * 16},
            400,
            "The schema can not convert input 'INPUT0'",
        ),
        (
            "/v2/models/nested_clash/generate",
            {"parameters": {"a": 1}},
            400,
            "Keyword 'parameters' for nested schema also given as input tensor name",
        ),
    ],
)
def test_generate_errors(http: httpx.Client, path: str, body: dict, status: int, message: str) -> None:
    for endpoint in ("generate", "generate_stream"):
        r = http.post(path.replace("/generate", f"/{endpoint}"), json=body)
        assert r.status_code == status, (endpoint, r.text)
        assert r.headers["content-type"] == "application/json" and message in r.json()["error"], (endpoint, r.text)


def test_generate_refuses_malformed_json_and_wrong_methods(http: httpx.Client) -> None:
    r = http.post("/v2/models/charlm/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    assert http.get("/v2/models/charlm/generate_stream").status_code == 405


# --- /generate_stream ---------------------------------------------------------------------------
def test_generate_stream_sends_one_event_per_piece(http: httpx.Client) -> None:
    with http.stream(
        "POST",
        "/v2/models/charlm/generate_stream",
        json={"id": "s1", "text_input": "First Citizen:\n", "max_tokens": 12, "seed": 7},
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream; charset=utf-8"
        docs = events(r)
    assert len(docs) == 12 and all(d["id"] == "s1" and d["model_name"] == "charlm" for d in docs)
    assert all(len(d["text_output"]) == 1 for d in docs)
    assert docs[-1]["finish_reason"] == "length" and docs[-1]["completion_tokens"] == 12
    assert "finish_reason" not in docs[0]
    # The same text as the model that answers once, for the same seed.
    whole = http.post(
        "/v2/models/charlm_whole/generate", json={"text_input": "First Citizen:\n", "max_tokens": 12, "seed": 7}
    ).json()
    assert "".join(d["text_output"] for d in docs) == whole["text_output"]


def test_generate_stream_holds_back_a_stop_string(http: httpx.Client) -> None:
    body = {"text_input": "First Citizen:\n", "max_tokens": 400, "seed": 7, "stop": ["\n"]}
    with http.stream("POST", "/v2/models/charlm/generate_stream", json=body) as r:
        docs = events(r)
    text = "".join(d["text_output"] for d in docs)
    assert "\n" not in text and docs[-1]["finish_reason"] == "stop"
    assert docs[-1]["completion_tokens"] == len(text) + 1


def test_generate_stream_on_an_ordinary_model_is_one_event(http: httpx.Client) -> None:
    with http.stream("POST", "/v2/models/add_sub/generate_stream", json={"INPUT0": [0] * 16, "INPUT1": [2] * 16}) as r:
        docs = events(r)
    assert len(docs) == 1 and docs[0]["OUTPUT0"] == [2.0] * 16


def test_generate_stream_error_mid_stream_is_an_event(http: httpx.Client) -> None:
    with http.stream("POST", "/v2/models/fails_midway/generate_stream", json={"text_input": "x"}) as r:
        assert r.status_code == 200
        docs = events(r)
    assert [d.get("text_output") for d in docs[:2]] == ["a", "b"]
    assert docs[2:] == [{"error": "the model broke"}]


def test_generate_stream_error_from_the_model_before_any_piece(http: httpx.Client) -> None:
    r = http.post("/v2/models/charlm/generate_stream", json={"text_input": "x", "top_p": 0})
    assert r.status_code == 400 and r.json() == {"error": "top_p must be greater than 0 and at most 1, got 0.0"}


def test_generate_stream_client_disconnect_cancels_the_model(http: httpx.Client) -> None:
    """A client that leaves after one event: the request's response channel goes away (the
    model saw is_cancelled and sent its final flag) and the server serves on."""
    before = ResponseChannel.alive()
    with http.stream("POST", "/v2/models/charlm/generate_stream", json={"text_input": "x", "max_tokens": 4096}) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 10
    while ResponseChannel.alive() > before and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert ResponseChannel.alive() <= before
    with http.stream("POST", "/v2/models/charlm/generate_stream", json={"text_input": "x", "max_tokens": 3}) as r:
        assert len(events(r)) == 3


# --- the converters -------------------------------------------------------------------------------
def test_shape_fills_variable_dimensions_as_triton_does() -> None:
    assert _shape("x", [-1, 4], 8) == [2, 4]
    assert _shape("x", [-1, -1], 6) == [1, 6]
    assert _shape("x", [1], 1) == [1]
    assert _shape("x", [-1], 0) == [0]
    with pytest.raises(InvalidArgument, match="can not convert input 'x'"):
        _shape("x", [4], 3)
    with pytest.raises(InvalidArgument, match="can not convert input 'x'"):
        _shape("x", [0], 3)


def test_decode_and_encode_round_trip() -> None:
    meta = {"text_input": TensorMetadata("text_input", "BYTES", [1]), "seed": TensorMetadata("seed", "INT64", [-1, 1])}
    request = decode_generate("m", "", {"id": "7", "text_input": "hé", "parameters": {"seed": 5, "flag": True}}, meta)
    assert request.id == "7" and dict(request.parameters) == {"flag": True}
    assert request.inputs["text_input"].tolist() == ["hé".encode()] and request.inputs["seed"].shape == (1, 1)
    doc = encode_generate(
        InferResponse(
            "m", "1", {"text_output": np.array([b"ok"], dtype=object), "model_name": np.array([1])}, "7", {"p": 1.5}
        )
    )
    assert doc == {"id": "7", "model_name": "m", "model_version": "1", "p": 1.5, "text_output": "ok"}


async def _raw_exchange(url: str) -> tuple[bytes, int, list[bytes], bytes]:
    from inferd.perf.sse_client import Connection, HttpError

    connection = Connection.to(url)
    try:
        live = await connection.get("/v2/health/live")
        with pytest.raises(HttpError) as refused:
            await connection.get("/v2/models/no_such_model")
        body = {"text_input": "a", "max_tokens": 3, "seed": 1}
        chunks = [c async for c in connection.stream("/v2/models/charlm/generate_stream", body)]
        again = await connection.get("/v2/health/live")
    finally:
        await connection.close()
    return live, refused.value.status, chunks, again


def test_the_bench_raw_client_reads_lengths_chunks_and_errors_on_one_connection(text_server: RunningServer) -> None:
    """perf/sse_client.py, which `bench generate` times streams with, against the real server."""
    import asyncio

    live, status, chunks, again = asyncio.run(_raw_exchange(text_server.http_url))
    assert live == b"" and again == b""
    assert status == 404
    stream = b"".join(chunks)
    assert stream.count(b"data: ") == 3 and stream.endswith(b"\n\n")
