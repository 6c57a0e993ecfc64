"""Offline batch scoring, ``inferd batch`` (server/frontends/batch.py): the real command on real
model files, answers in input order, one error line per bad line, decoupled models, and that
concurrent lines reach the dynamic batcher together."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from inferd.server.frontends.batch import BatchRunner

from .conftest import RunningServer

FLOATS = 16


def _line(i: int, a: np.ndarray, b: np.ndarray) -> dict:  # type: ignore[type-arg]
    return {
        "id": f"r{i}",
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, FLOATS], "data": a.tolist()},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, FLOATS], "data": b.tolist()},
        ],
    }


def batch(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "inferd.server.cli", "batch", *args], input=stdin, capture_output=True, timeout=120
    )


def test_answers_in_order_with_an_error_line_per_bad_line(model_repo: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    pairs = [(rng.random(FLOATS, np.float32), rng.random(FLOATS, np.float32)) for _ in range(300)]
    lines = [json.dumps(_line(i, a, b)) for i, (a, b) in enumerate(pairs)]
    bad = {
        10: "{not json",
        20: json.dumps({"id": "shape", "inputs": [{**_line(0, *pairs[0])["inputs"][0], "shape": [1, 15]}]}),
        30: json.dumps({**_line(0, *pairs[0]), "id": "binary", "parameters": {"binary_data_output": True}}),
        50: json.dumps(
            {
                **_line(0, *pairs[0]),
                "id": "shm",
                "outputs": [
                    {"name": "OUTPUT0", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 64}}
                ],
            }
        ),
    }
    text = []
    for i, line in enumerate(lines):
        if i in bad:
            text.append(bad[i])
        text.append(line)
        if i == 40:
            text.append("   ")  # blank: skipped, no answer line
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(text) + "\n")
    out = tmp_path / "out.jsonl"
    done = batch("--model-repository", str(model_repo), "--model", "add_sub", "--input", str(source),
                 "--output", str(out), "--concurrency", "8")  # fmt: skip
    assert done.returncode == 1, done.stderr.decode()
    assert "304 request(s): 300 answered, 4 failed" in done.stderr.decode()
    answers = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(answers) == 304
    errors = [a for a in answers if "error" in a]
    assert [(e["line"], e["status"]) for e in errors] == [
        (11, "INVALID_ARGUMENT"),
        (22, "INVALID_ARGUMENT"),
        (33, "INVALID_ARGUMENT"),
        (55, "INVALID_ARGUMENT"),
    ]
    assert errors[0]["error"].startswith("malformed JSON")
    assert "shape" in errors[1]["error"] and errors[1]["id"] == "shape"
    assert "binary_data" in errors[2]["error"] and errors[2]["id"] == "binary"
    assert "shared_memory_region" in errors[3]["error"] and "--allow-client-shm" not in errors[3]["error"]
    good = [a for a in answers if "error" not in a]
    assert [a["id"] for a in good] == [f"r{i}" for i in range(300)]  # input order, whatever finished first
    for answer, (a, b) in zip(good, pairs):
        outputs = {o["name"]: np.array(o["data"], np.float32) for o in answer["outputs"]}
        np.testing.assert_array_equal(outputs["OUTPUT0"], a + b)
        np.testing.assert_array_equal(outputs["OUTPUT1"], a - b)
        assert answer["model_name"] == "add_sub" and answer["outputs"][0]["shape"] == [1, FLOATS]


def test_stdin_to_stdout_and_fp16_as_numbers(model_repo: Path) -> None:
    a, b = np.array([0.5, 1.25, -2, 65504], np.float16), np.array([0.25, 1, 1, 65504], np.float16)
    request = {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP16", "shape": [1, 4], "data": a.tolist()},
            {"name": "INPUT1", "datatype": "FP16", "shape": [1, 4], "data": b.tolist()},
        ]
    }
    done = batch("--model-repository", str(model_repo), "--model", "add_fp16", "--input", "-", "--output", "-",
                 stdin=(json.dumps(request) + "\n").encode())  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    (answer,) = [json.loads(x) for x in done.stdout.decode().splitlines()]
    (output,) = answer["outputs"]
    assert output["datatype"] == "FP16"
    with np.errstate(over="ignore"):
        expected = a + b  # 65504 + 65504 overflows FP16: inf, written as JSON's Infinity
    np.testing.assert_array_equal(np.array(output["data"], np.float32), expected.astype(np.float32))
    request["inputs"][0]["data"] = [1e5, 0, 0, 0]  # not an FP16 value: refused, not made inf
    done = batch("--model-repository", str(model_repo), "--model", "add_fp16", "--input", "-", "--output", "-",
                 stdin=(json.dumps(request) + "\n").encode())  # fmt: skip
    assert done.returncode == 1 and "does not fit FP16" in done.stdout.decode()


def test_decoupled_model_answers_every_response(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    prompts = ["ROMEO:", "JULIET:"]
    source.write_text(
        "".join(
            json.dumps(
                {
                    "id": p,
                    "inputs": [
                        {"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [p]},
                        {"name": "max_tokens", "datatype": "INT32", "shape": [1], "data": [24]},
                        {"name": "seed", "datatype": "INT64", "shape": [1], "data": [5]},
                    ],
                }
            )
            + "\n"
            for p in prompts
        )
    )
    done = batch("--model", "charlm", "--input", str(source), "--output", "-")  # the bundled repository
    assert done.returncode == 0, done.stderr.decode()
    answers = [json.loads(x) for x in done.stdout.decode().splitlines()]
    assert [a["id"] for a in answers] == prompts
    for answer in answers:
        texts = [o["data"][0] for r in answer["responses"] for o in r["outputs"] if o["name"] == "text_output"]
        assert len("".join(texts)) == 24 and len(texts) > 1  # streamed piece by piece, all kept
        last = {o["name"]: o["data"][0] for o in answer["responses"][-1]["outputs"]}
        assert last["finish_reason"] == "length" and last["completion_tokens"] == 24


def test_refusals_before_any_line(model_repo: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("{}\n")
    unknown = batch("--model-repository", str(model_repo), "--model", "nope", "--input", str(source), "--output", "-")
    assert unknown.returncode == 2 and "model 'nope' is not in the model repository" in unknown.stderr.decode()
    broken = batch(
        "--model-repository", str(model_repo), "--model", "bad_pbtxt", "--input", str(source), "--output", "-"
    )
    assert broken.returncode == 2 and "bad_pbtxt" in broken.stderr.decode() and "UNAVAILABLE" in broken.stderr.decode()
    missing = batch("--model-repository", str(model_repo), "--model", "add_sub", "--input", str(tmp_path / "none"),
                    "--output", "-")  # fmt: skip
    assert missing.returncode == 2 and "No such file" in missing.stderr.decode()
    flag = batch("--model", "add_sub", "--input", "-", "--output", "-", "--concurrency", "0")
    assert flag.returncode == 2 and "--concurrency must be at least 1" in flag.stderr.decode()


def test_a_line_too_long_is_an_error_not_memory(model_repo: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ok = json.dumps(_line(0, rng.random(FLOATS, np.float32), rng.random(FLOATS, np.float32)))
    source = tmp_path / "in.jsonl"
    source.write_text(ok + "\n" + '{"id": "' + "x" * 5000 + '"}\n' + ok + "\n")
    done = batch("--model-repository", str(model_repo), "--model", "add_sub", "--input", str(source),
                 "--output", "-", "--max-line-bytes", "2048")  # fmt: skip
    answers = [json.loads(x) for x in done.stdout.decode().splitlines()]
    assert len(answers) == 3 and "error" not in answers[0] and "error" not in answers[2]
    assert answers[1]["line"] == 2 and "longer than --max-line-bytes (2048 bytes)" in answers[1]["error"]


def test_concurrent_lines_are_batched(server: RunningServer) -> None:
    """In flight together, the lines meet in the model's dynamic batcher (dense: preferred
    batches up to 64, 500 µs delay): fewer executions than requests."""
    rng = np.random.default_rng(3)
    rows = rng.random((256, 64), np.float32)
    text = "".join(
        json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 64], "data": r.tolist()}]}) + "\n"
        for r in rows
    )
    core = server.server.core
    stats = core.model_statistics("dense")[0]
    executions, inferences = stats.execution_count, stats.inference_count
    sink = io.BytesIO()
    summary = server.call(BatchRunner(core, "dense", concurrency=64).run(io.BytesIO(text.encode()), sink))
    assert summary.answered == 256 and summary.failed == 0
    assert stats.inference_count - inferences == 256
    assert stats.execution_count - executions < 128, "no batches formed"
    answers = [json.loads(x) for x in sink.getvalue().splitlines()]
    probs = np.array([a["outputs"][0]["data"] for a in answers], np.float32)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("concurrency", [1, 7])
def test_order_holds_at_any_concurrency(server: RunningServer, concurrency: int) -> None:
    rng = np.random.default_rng(concurrency)
    pairs = [(rng.random(FLOATS, np.float32), rng.random(FLOATS, np.float32)) for _ in range(50)]
    text = "".join(json.dumps(_line(i, a, b)) + "\n" for i, (a, b) in enumerate(pairs))
    sink = io.BytesIO()
    runner = BatchRunner(server.server.core, "add_sub", concurrency=concurrency)
    server.call(runner.run(io.BytesIO(text.encode()), sink))
    assert [json.loads(x)["id"] for x in sink.getvalue().splitlines()] == [f"r{i}" for i in range(50)]
