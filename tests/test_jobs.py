"""Asynchronous jobs over HTTP (server/frontends/jobs.py, http_jobs.py): submit a JSON Lines
file, poll it, fetch its answers, cancel and delete it, with the real server and httpx."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import RunningServer, start_server, test_settings

FLOATS = 16


def _lines(n: int, seed: int = 0) -> tuple[bytes, list[tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    pairs = [(rng.random(FLOATS, np.float32), rng.random(FLOATS, np.float32)) for _ in range(n)]
    text = "".join(
        json.dumps(
            {
                "id": f"r{i}",
                "inputs": [
                    {"name": "INPUT0", "datatype": "FP32", "shape": [1, FLOATS], "data": a.tolist()},
                    {"name": "INPUT1", "datatype": "FP32", "shape": [1, FLOATS], "data": b.tolist()},
                ],
            }
        )
        + "\n"
        for i, (a, b) in enumerate(pairs)
    )
    return text.encode(), pairs


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=30) as client:
        yield client


def _wait(http: httpx.Client, job: str, until: set[str], timeout: float = 60) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        status = http.get(f"/v2/jobs/{job}").json()
        if status["status"] in until or time.monotonic() > deadline:
            return status
        time.sleep(0.02)


def test_submit_poll_fetch_delete(http: httpx.Client) -> None:
    body, pairs = _lines(200)
    body += b"{not json\n"
    submitted = http.post("/v2/models/add_sub/jobs", params={"concurrency": 8}, content=body)
    assert submitted.status_code == 202
    job = submitted.json()
    assert submitted.headers["location"] == f"/v2/jobs/{job['id']}"
    assert job["status"] in ("QUEUED", "RUNNING", "SUCCEEDED") and job["model_name"] == "add_sub"
    status = _wait(http, job["id"], {"SUCCEEDED", "FAILED"})
    assert status["status"] == "SUCCEEDED"
    assert (status["lines"], status["answered"], status["failed"]) == (201, 200, 1)
    assert {"created", "started", "finished"} <= set(status)
    assert any(j["id"] == job["id"] for j in http.get("/v2/jobs").json())
    results = http.get(f"/v2/jobs/{job['id']}/results")
    assert results.status_code == 200 and results.headers["content-type"].startswith("application/x-ndjson")
    answers = [json.loads(x) for x in results.text.splitlines()]
    assert [a.get("id") for a in answers[:200]] == [f"r{i}" for i in range(200)]
    for answer, (a, b) in zip(answers, pairs):
        np.testing.assert_array_equal(np.array(answer["outputs"][0]["data"], np.float32), a + b)
    assert answers[200]["line"] == 201 and answers[200]["status"] == "INVALID_ARGUMENT"
    deleted = http.delete(f"/v2/jobs/{job['id']}")
    assert deleted.status_code == 200 and deleted.json()["status"] == "SUCCEEDED"
    assert http.get(f"/v2/jobs/{job['id']}").status_code == 404
    assert http.get(f"/v2/jobs/{job['id']}/results").status_code == 404


def test_cancel_keeps_the_answers_so_far(http: httpx.Client) -> None:
    body, _ = _lines(20_000, seed=1)  # one at a time: long enough to be caught running
    job = http.post("/v2/models/add_sub/jobs", params={"concurrency": 1}, content=body).json()
    deadline = time.monotonic() + 60
    while (status := http.get(f"/v2/jobs/{job['id']}").json())["status"] in ("QUEUED", "RUNNING"):
        if status["answered"] >= 100 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert status["status"] == "RUNNING", "the job finished before it could be cancelled"
    early = http.get(f"/v2/jobs/{job['id']}/results")
    assert early.status_code == 503 and "is RUNNING" in early.json()["error"]
    cancelled = http.post(f"/v2/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    status = _wait(http, job["id"], {"CANCELLED"})
    assert status["status"] == "CANCELLED"
    answers = http.get(f"/v2/jobs/{job['id']}/results").text.splitlines()
    assert 0 < len(answers) < 20_000
    assert [json.loads(x)["id"] for x in answers] == [f"r{i}" for i in range(len(answers))]
    assert http.delete(f"/v2/jobs/{job['id']}").status_code == 200


def test_refusals(http: httpx.Client) -> None:
    body, _ = _lines(1)
    unknown = http.post("/v2/models/nope/jobs", content=body)
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    assert http.post("/v2/models/add_sub/jobs", params={"concurrency": 0}, content=body).status_code == 400
    assert http.post("/v2/models/add_sub/jobs", params={"concurrency": "x"}, content=body).status_code == 400
    other = http.post("/v2/models/add_sub/jobs", params={"priority": 1}, content=body)
    assert other.status_code == 400 and "priority" in other.json()["error"]
    assert http.get("/v2/jobs/nope").status_code == 404
    assert http.post("/v2/jobs/nope/cancel").status_code == 404


def test_jobs_are_bounded_and_removed_at_stop(model_repo: Path) -> None:
    running = start_server(test_settings(model_repo))
    try:
        with httpx.Client(base_url=f"http://{running.http_url}", timeout=30) as http:
            body, _ = _lines(2)
            ids = [http.post("/v2/models/add_sub/jobs", content=body).json()["id"] for _ in range(16)]
            full = http.post("/v2/models/add_sub/jobs", content=body)
            assert full.status_code == 503 and "at most 16 jobs" in full.json()["error"]
            assert http.delete(f"/v2/jobs/{ids[0]}").status_code == 200
            assert http.post("/v2/models/add_sub/jobs", content=body).status_code == 202
            folder = running.server.jobs._root
            assert folder is not None and folder.is_dir()
    finally:
        running.stop()
    assert not folder.exists()


def test_results_survive_a_delete_during_the_download(http: httpx.Client, server: RunningServer) -> None:
    body, _ = _lines(5_000, seed=2)
    job = http.post("/v2/models/add_sub/jobs", params={"concurrency": 64}, content=body).json()
    assert _wait(http, job["id"], {"SUCCEEDED"})["status"] == "SUCCEEDED"
    with httpx.Client(base_url=f"http://{server.http_url}", timeout=30) as other:
        with http.stream("GET", f"/v2/jobs/{job['id']}/results") as download:
            chunks = download.iter_bytes()
            first = next(chunks)
            assert other.delete(f"/v2/jobs/{job['id']}").status_code == 200  # the file's name goes now
            text = first + b"".join(chunks)
    lines = text.decode().splitlines()
    assert len(lines) == 5_000 and json.loads(lines[-1])["id"] == "r4999"


def test_jobs_files_stay_within_max_job_bytes(model_repo: Path) -> None:
    body, _ = _lines(50, seed=3)
    budget = len(body) + 4096  # the input and a few answer lines
    running = start_server(test_settings(model_repo, max_job_bytes=budget))
    try:
        with httpx.Client(base_url=f"http://{running.http_url}", timeout=30) as http:
            job = http.post("/v2/models/add_sub/jobs", content=body).json()
            status = _wait(http, job["id"], {"SUCCEEDED", "FAILED", "CANCELLED"})
            assert status["status"] == "FAILED" and "--max-job-bytes" in status["error"], status
            lines = http.get(f"/v2/jobs/{job['id']}/results").text.splitlines()
            assert 0 < len(lines) < 50 and f"stopped after {len(lines)} answer lines" in status["error"]
            assert [json.loads(line)["id"] for line in lines] == [f"r{i}" for i in range(len(lines))]  # whole lines
            assert running.server.jobs.used_bytes <= budget
            refused = http.post("/v2/models/add_sub/jobs", content=body)  # no room left for another input
            assert refused.status_code == 413 and "--max-job-bytes" in refused.json()["error"]
            assert http.delete(f"/v2/jobs/{job['id']}").status_code == 200
            assert running.server.jobs.used_bytes == 0
            assert http.post("/v2/models/add_sub/jobs", content=body).status_code == 202
    finally:
        running.stop()
