"""Web pages cannot drive the server: requests carrying a browser's Origin are refused unless the
origin is allowed, and POST bodies must be JSON or binary tensors. Real server, raw httpx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import RunningServer, start_server, test_settings

INFER = "/v2/models/add_sub/infer"
DOC = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16} for n in ("INPUT0", "INPUT1")]}
ALLOWED = "https://tools.example.com"


@pytest.fixture(scope="module")
def guarded(model_repo: Path) -> Iterator[httpx.Client]:
    settings = test_settings(
        model_repo, http_allow_origins=(ALLOWED,), model_control_mode="explicit", load_models=["add_sub"]
    )
    running: RunningServer = start_server(settings)
    try:
        with httpx.Client(base_url=f"http://{running.http_url}", timeout=30) as c:
            yield c
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/repository/models/add_sub/unload"),
        ("POST", "/v2/repository/models/add_sub/load"),
        ("POST", INFER),
        ("GET", "/v2/models/add_sub/config"),
    ],
)
def test_a_page_of_another_origin_is_refused_before_anything_runs(
    guarded: httpx.Client, method: str, path: str
) -> None:
    # What a page's fetch(..., {method: "POST", mode: "no-cors", body: "{}"}) sends.
    r = guarded.request(
        method, path, content=b"{}", headers={"Origin": "https://evil.example", "Content-Type": "text/plain"}
    )
    assert r.status_code == 403, r.text
    assert "evil.example" in r.json()["error"] and "--http-allow-origin" in r.json()["error"]
    assert "access-control-allow-origin" not in r.headers
    assert guarded.get("/v2/models/add_sub/ready").status_code == 200  # nothing was unloaded


def test_an_allowed_origin_gets_cors_and_preflight(guarded: httpx.Client) -> None:
    pre = guarded.options(
        INFER,
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "Content-Type" in pre.headers["access-control-allow-headers"]
    r = guarded.post(INFER, json=DOC, headers={"Origin": ALLOWED})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ALLOWED and r.headers["vary"] == "Origin"
    assert len(r.json()["outputs"]) == 2


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8", "multipart/form-data; boundary=x"])
def test_post_bodies_must_be_json_or_binary(guarded: httpx.Client, content_type: str) -> None:
    import json

    r = guarded.post(INFER, content=json.dumps(DOC).encode(), headers={"Content-Type": content_type})
    assert r.status_code == 415, r.text
    assert content_type in r.json()["error"] and "application/json" in r.json()["error"]


def test_programs_without_origin_or_content_type_are_served(guarded: httpx.Client) -> None:
    import json

    body = json.dumps(DOC).encode()
    assert guarded.post(INFER, content=body).status_code == 200  # no Content-Type: taken as JSON
    for typed in ("application/json; charset=utf-8", "application/x-www-form-urlencoded"):  # curl -d, urllib
        ok = guarded.post(INFER, content=body, headers={"Content-Type": typed})
        assert ok.status_code == 200, (typed, ok.text)


def test_tritonclient_http_is_unaffected(guarded: httpx.Client) -> None:
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(str(guarded.base_url).removeprefix("http://"))
    x = np.ones((1, 16), np.float32)
    inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for i in inputs:
        i.set_data_from_numpy(x, binary_data=True)
    np.testing.assert_array_equal(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), x + x)
    client.unload_model("add_sub")
    client.load_model("add_sub")
    assert client.is_model_ready("add_sub")
