"""In-process ceilings: how fast a framework runs a model when called directly, the figure a
server's throughput is compared against. Timed in a child process pinned to the servers' CPU
with one framework thread, so that the ceiling and the server get the same resources.

Also the MLP the compute-bound benchmarks share, built with ``model_repository/build.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from .servers import pin_prefix

BACKENDS = ("onnxruntime", "pytorch", "tensorflow", "python")
# Big enough that a batch of 32 costs milliseconds of compute, so that a table compares the
# frameworks and the batching rather than only the fixed cost of a gRPC request.
SHAPE = {"features": 256, "hidden": 2048, "layers": 2, "classes": 16}
# One framework thread everywhere: the server and the ceilings each get a single CPU.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ORT_ONE_THREAD = (
    'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
    'parameters { key: "inter_op_thread_count" value { string_value: "1" } }\n'
)


def model_builders() -> ModuleType:
    """``model_repository/build.py`` (the bundled models' builders), loaded from its file."""
    path = Path(__file__).resolve().parent.parent / "model_repository" / "build.py"
    spec = importlib.util.spec_from_file_location("inferd_model_builders", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mlp_io(input_name: str = "INPUT", output_name: str = "PROBS") -> str:
    f, c = SHAPE["features"], SHAPE["classes"]
    return (
        f'input [ {{ name: "{input_name}" data_type: TYPE_FP32 dims: [ {f} ] }} ]\n'
        f'output [ {{ name: "{output_name}" data_type: TYPE_FP32 dims: [ {c} ] }} ]\n'
    )


def _runner(backend: str, folder: Path) -> Callable[[np.ndarray], object]:
    """A function batch -> output, calling the framework the way its backend does."""
    version = folder / "1"
    if backend == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(version / "model.onnx"), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(["PROBS"], {"INPUT": x})[0]
    if backend == "pytorch":
        import torch

        torch.set_num_threads(1)
        module = torch.jit.load(str(version / "model.pt"))

        def run_torch(x: np.ndarray) -> object:
            with torch.inference_mode():
                return module(torch.from_numpy(x)).numpy()

        return run_torch
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        fn = tf.saved_model.load(str(version / "model.savedmodel")).signatures["serving_default"]
        return lambda x: fn(INPUT=tf.constant(x))["PROBS"].numpy()
    spec = importlib.util.spec_from_file_location("bench_mlp_model", version / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    weights = module.load(str(version))
    return lambda x: module.mlp(weights, x)


def ceilings(backend: str, folder: Path, batches: Sequence[int], seconds: float, rounds: int) -> dict[int, float]:
    """Rows per second calling the framework directly at each batch size, after a warm-up:
    the median of ``rounds`` timings, taken in turns so that noise hits every batch size alike."""
    run = _runner(backend, folder)
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, SHAPE["features"]), dtype=np.float32) for b in batches}
    for x in inputs.values():
        for _ in range(10):
            run(x)
    timings: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(rounds):
        for b, x in inputs.items():
            calls, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds:
                run(x)
                calls += 1
            timings[b].append(calls * b / elapsed)
    return {b: statistics.median(t) for b, t in timings.items()}


def in_child(
    backend: str, folder: Path, batches: Sequence[int], seconds: float, rounds: int, cpus: Sequence[int] | None
) -> dict[int, float]:
    """:func:`ceilings` in a fresh process on ``cpus`` (the servers' CPUs) with one thread."""
    argv = [*pin_prefix(cpus), sys.executable, "-m", "inferd.perf.ceilings", backend, str(folder)]
    argv += ["--batch", *map(str, batches), "--seconds", str(seconds), "--rounds", str(rounds)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=dict(os.environ, **THREAD_ENV))
    if done.returncode != 0:
        raise RuntimeError(f"ceiling for {backend} failed:\n{done.stderr[-2000:]}")
    return {int(b): v for b, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inferd.perf.ceilings", description="one in-process ceiling, as JSON")
    p.add_argument("backend", choices=BACKENDS)
    p.add_argument("folder", type=Path, help="the model's folder (with 1/ inside)")
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--rounds", type=int, default=1)
    a = p.parse_args(argv)
    print(json.dumps(ceilings(a.backend, a.folder, a.batch, a.seconds, a.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
