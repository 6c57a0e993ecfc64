"""Offline batch scoring: ``inferd batch`` on the bundled ``dense`` model (64 features in, 10
probabilities out; ``dynamic_batching`` up to 64 rows, 500 µs delay), against the same rows
scored in-process.

A file of ``--lines`` request lines (one seeded row each) is scored by ``inferd batch`` at each
``--concurrency`` (lines in flight: 1 runs them one by one, 64 lets the batcher fill its largest
batch). Lines per second are the command's own count over its own time (model loading
excluded). The in-process rows run on the same CPU with one onnxruntime thread, as the server's
instance does:

* ``onnxruntime, 1 row per call``: every row its own ``session.run``, no JSON (the model's cost);
* ``onnxruntime, 64 rows per call``: the rows in batches of 64 (the batched ceiling);
* ``JSON only``: each line parsed and an answer of the same shape written, no model (what the
  file format alone costs in Python).

At concurrency 1 each line also waits out the model's 500 µs queue delay for a batch that
cannot come (Triton's batcher, with this config, does the same).

Rounds interleave the rows; tables show medians. ``inferd batch`` runs on CPU 0, as do the
in-process rows (``--no-pin`` to leave them unpinned). There is no goal: the table says where
the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .harness import Bench, markdown, median, module_main
from .servers import BUNDLED_REPOSITORY, pin_prefix

MODEL = "dense"
FEATURES = 64
_SUMMARY = re.compile(r"(\d+) request\(s\): (\d+) answered, (\d+) failed, in ([\d.]+) s")


def write_lines(path: Path, lines: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).random((lines, FEATURES), dtype=np.float32)
    with path.open("w") as f:
        for i, row in enumerate(rows):
            doc = {
                "id": str(i),
                "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, FEATURES], "data": row.tolist()}],
            }
            f.write(json.dumps(doc) + "\n")
    return rows


def run_cli(source: Path, concurrency: int, cpus: list[int] | None) -> float:
    """Lines per second of one ``inferd batch`` run, by its own summary."""
    argv = [*pin_prefix(cpus), sys.executable, "-m", "inferd.server.cli", "batch", "--model", MODEL]
    argv += ["--input", str(source), "--output", os.devnull, "--concurrency", str(concurrency)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    found = _SUMMARY.search(done.stderr)
    if done.returncode != 0 or found is None or found.group(3) != "0":
        raise RuntimeError(f"inferd batch failed (exit {done.returncode}): {done.stderr[-500:]}")
    return int(found.group(2)) / float(found.group(4))


def _session() -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    path = BUNDLED_REPOSITORY / MODEL / "1" / "model.onnx"
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def in_process(rows: np.ndarray, per_call: int) -> float:
    session = _session()
    name = session.get_inputs()[0].name  # type: ignore[attr-defined]
    start = time.perf_counter()
    for i in range(0, len(rows), per_call):
        session.run(None, {name: rows[i : i + per_call]})  # type: ignore[attr-defined]
    return len(rows) / (time.perf_counter() - start)


def json_only(source: Path) -> float:
    answer = np.zeros((1, 10), np.float32)
    start = time.perf_counter()
    n = 0
    with source.open("rb") as f:
        for line in f:
            doc = json.loads(line)
            np.asarray(doc["inputs"][0]["data"], np.float32)
            out = {"model_name": MODEL, "model_version": "1", "id": doc["id"], "outputs": [
                {"name": "PROBS", "datatype": "FP32", "shape": [1, 10], "data": answer.ravel().tolist()}]}  # fmt: skip
            json.dumps(out, separators=(",", ":"))
            n += 1
    return n / (time.perf_counter() - start)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lines", type=int, default=20_000, help="request lines in the file (default 20000)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 64], help="inferd batch's (default 1 64)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--no-pin", action="store_true", help="do not pin to CPU 0")


def run(a: argparse.Namespace) -> int:
    cpus = None if a.no_pin or len(os.sched_getaffinity(0)) < 2 else [0]
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="inferd-bench-batch-") as tmp:
        source = Path(tmp) / "lines.jsonl"
        rows = write_lines(source, a.lines)
        here = os.sched_getaffinity(0)
        measures: list[tuple[str, Callable[[], float]]] = [
            *((f"inferd batch, concurrency {c}", lambda c=c: run_cli(source, c, cpus)) for c in a.concurrency),
            ("onnxruntime, 1 row per call", lambda: in_process(rows, 1)),
            ("onnxruntime, 64 rows per call", lambda: in_process(rows, 64)),
            ("JSON only (no model)", lambda: json_only(source)),
        ]
        for r in range(a.rounds):
            for name, measure in measures[r % len(measures) :] + measures[: r % len(measures)]:
                if cpus is not None and not name.startswith("inferd"):
                    os.sched_setaffinity(0, set(cpus))
                try:
                    value = measure()
                finally:
                    os.sched_setaffinity(0, here)
                results.setdefault(name, []).append(value)
                print(f"# round {r + 1}/{a.rounds} {name}: {value:,.0f} lines/s", file=sys.stderr)
    ceiling = median(results["onnxruntime, 64 rows per call"])
    table = [[name, f"{median(values):,.0f}", f"{median(values) / ceiling:.0%}"] for name, values in results.items()]
    print(f"{a.lines:,} lines of 1 x {FEATURES} FP32 for '{MODEL}'; lines (rows) per second, medians of {a.rounds}\n")
    print(markdown(["scored by", "lines/s", "of the batched ceiling"], "lrr", table))
    return 0


BENCH = Bench("batch", "inferd batch against the same rows scored in-process", add_arguments, run, __doc__ or "")

if __name__ == "__main__":
    sys.exit(module_main(BENCH))
