"""Backends benchmark: one MLP, the same weights in every framework, served by inferd against
the framework's own in-process ceiling.

    python -m inferd.perf.bench_backends [--rounds 3] [--duration 2] [--backends onnxruntime pytorch ...]

For each backend: the LoadModel time (cold: the first model of its framework, import included;
warm: unload and load again); throughput of 16 concurrent batch-1 gRPC clients with dynamic
batching against the framework's in-process throughput at batch 16 (the largest batch 16
clients can form); and of 2 clients sending batch-32 requests against the in-process batch-32
throughput. "Added" is how much longer an inference takes through inferd than in-process
(ceiling / inferd - 1).

Fair on two cores: the server and each in-process ceiling run alone on CPU 0 (taskset) with one
framework thread (BLAS pools too), the load generator on CPU 1. Each round measures the two
server points and then both ceilings (in a fresh child) back to back; the table shows medians over
``--rounds``, and each ratio is the median of the rounds' own ratios, so that a busy machine skews
both sides of a ratio alike. TensorRT needs a GPU and is left out here. Bounded: per backend,
rounds x (2 x (warm-up + duration) + 2 x ceiling-seconds + the child's start) plus the loads,
about 45 s with the defaults (a little more for TensorFlow's import).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..clients.client import AsyncInferenceClient
from .inputs import DataOptions, ModelInfo, build_requests
from .loadgen import LoadGenerator
from .servers import ServerProcess, inferd_argv, pin_prefix, split_cpus, start
from .stats import ServerCounters, percentile
from .transport import make_transport

BACKENDS = ("onnxruntime", "pytorch", "tensorflow", "python")
MODEL = {"onnxruntime": "mlp_onnx", "pytorch": "mlp_torch", "tensorflow": "mlp_tf", "python": "mlp_python"}
# Big enough that a batch of 32 costs milliseconds of compute, so the table compares backends
# rather than only the fixed cost of a gRPC request.
SHAPE = {"features": 256, "hidden": 2048, "layers": 2, "classes": 16}
MAX_BATCH = 32
# One framework thread everywhere: the server and the ceilings each get a single CPU.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

PY_MLP = """\
import os

import numpy as np

import inferd.backends.python_api as pb_utils


def load(folder):
    data = np.load(os.path.join(folder, "weights.npz"))
    return [(data[f"w{i}"], data[f"b{i}"]) for i in range(len(data.files) // 2)]


def mlp(weights, x):
    for w, b in weights[:-1]:
        x = np.maximum(x @ w + b, 0)
    z = x @ weights[-1][0] + weights[-1][1]
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class TritonPythonModel:
    def initialize(self, args):
        self.weights = load(os.path.join(args["model_repository"], args["model_version"]))

    def execute(self, requests):
        xs = [r.get_input_tensor_by_name("INPUT").as_numpy() for r in requests]
        probs = mlp(self.weights, np.concatenate(xs) if len(xs) > 1 else xs[0])
        responses, start = [], 0
        for x in xs:
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PROBS", probs[start:start + len(x)])]))
            start += len(x)
        return responses
"""


def _builders() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "model_repository" / "build.py"
    spec = importlib.util.spec_from_file_location("inferd_model_builders", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(name: str, kind: str, value: str, io: str) -> str:
    return (
        f'name: "{name}"\n{kind}: "{value}"\nmax_batch_size: {MAX_BATCH}\n{io}'
        "dynamic_batching { max_queue_delay_microseconds: 500 }\n"
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
        'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
        'parameters { key: "inter_op_thread_count" value { string_value: "1" } }\n'
    )


def build_repository(root: Path, backends: list[str]) -> None:
    """The MLP for each backend (same weights), configured alike."""
    b = _builders()
    f, c = SHAPE["features"], SHAPE["classes"]
    io = (
        f'input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {f} ] }} ]\n'
        f'output [ {{ name: "PROBS" data_type: TYPE_FP32 dims: [ {c} ] }} ]\n'
    )
    for backend in backends:
        folder = root / MODEL[backend]
        (folder / "1").mkdir(parents=True)
        if backend == "onnxruntime":
            b._save(b.dense_model(**SHAPE), folder / "1" / "model.onnx")
            text = _config(MODEL[backend], "platform", "onnxruntime_onnx", io)
        elif backend == "pytorch":
            b.save_torchscript(b.torch_mlp(**SHAPE), folder / "1" / "model.pt")
            torch_io = io.replace('"INPUT"', '"INPUT__0"').replace('"PROBS"', '"OUTPUT__0"')
            text = _config(MODEL[backend], "platform", "pytorch_libtorch", torch_io)
        elif backend == "tensorflow":
            b.save_savedmodel(b.tf_mlp(**SHAPE), folder / "1" / "model.savedmodel")
            text = _config(MODEL[backend], "platform", "tensorflow_savedmodel", "")
        else:
            pairs = b.mlp_weights(**SHAPE)
            arrays = {f"{k}{i}": a for i, (w, bias) in enumerate(pairs) for k, a in (("w", w), ("b", bias))}
            np.savez(folder / "1" / "weights.npz", **arrays)  # type: ignore[arg-type]
            (folder / "1" / "model.py").write_text(PY_MLP)
            text = _config(MODEL[backend], "backend", "python", io)
        (folder / "config.pbtxt").write_text(text)


# --- the in-process ceiling (run in a pinned child process) -----------------------------------
def _runner(backend: str, folder: Path) -> Any:
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

        def run_torch(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]

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


def ceilings(backend: str, folder: Path, batches: list[int], seconds: float, rounds: int) -> dict[int, float]:
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


def _ceilings_in_child(
    backend: str, folder: Path, batches: list[int], seconds: float, rounds: int, cpus: list[int] | None
) -> dict[int, float]:
    argv = [*pin_prefix(cpus), sys.executable, "-m", "inferd.perf.bench_backends", "--ceiling", backend]
    argv += ["--folder", str(folder), "--batch", *map(str, batches)]
    argv += ["--ceiling-seconds", str(seconds), "--rounds", str(rounds)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=dict(os.environ, **THREAD_ENV))
    if done.returncode != 0:
        raise RuntimeError(f"ceiling for {backend} failed:\n{done.stderr[-2000:]}")
    return {int(b): v for b, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


# --- through the server ------------------------------------------------------------------------
@dataclass
class Served:
    rows_per_s: float
    avg_batch: float
    errors: int
    p50_us: float = 0.0
    p99_us: float = 0.0
    queue_us: float = 0.0  # server-side, per request
    compute_us: float = 0.0  # server-side compute input + infer + output, per request


async def serve_point(url: str, model: str, batch: int, concurrency: int, warmup: float, duration: float) -> Served:
    transport = make_transport("grpc", url)
    try:
        info: ModelInfo = await transport.model_info(model, "")
        transport.prepare(info, build_requests(info, DataOptions(batch_size=batch, input_data="random")))
        gen = LoadGenerator(transport)
        await gen.start_concurrency(concurrency)
        await asyncio.sleep(warmup)
        before = await transport.statistics(model, "")
        start = time.monotonic_ns()
        await gen.collect(start)
        await asyncio.sleep(duration)
        end = time.monotonic_ns()
        records, _ = await gen.collect(end)
        after = await transport.statistics(model, "")
        await gen.stop()
    finally:
        await transport.close()
    ok = sum(1 for r in records if r.ok)
    lat = sorted(r.latency_ns for r in records if r.ok)
    return served(
        ok * batch / ((end - start) / 1e9),
        len(records) - ok,
        percentile(lat, 50) / 1000 if lat else 0.0,
        percentile(lat, 99) / 1000 if lat else 0.0,
        after - before,
    )


def served(rows_per_s: float, errors: int, p50_us: float, p99_us: float, d: ServerCounters) -> Served:
    """A point's client figures joined with the server's statistics over it (``d``)."""
    executions, requests = d.execution_count, max(d.success_count, 1)
    return Served(
        rows_per_s,
        d.inference_count / executions if executions else 0.0,
        errors,
        p50_us,
        p99_us,
        d.queue_ns / requests / 1000,
        (d.compute_input_ns + d.compute_infer_ns + d.compute_output_ns) / requests / 1000,
    )


async def load_times(url: str, model: str) -> tuple[float, float]:
    """(cold, warm) LoadModel seconds: the first load imports the framework in the server."""
    async with AsyncInferenceClient(url) as client:
        t0 = time.perf_counter()
        await client.load_model(model)
        cold = time.perf_counter() - t0
        await client.unload_model(model)
        while await client.is_model_ready(model):
            await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        await client.load_model(model)
        return cold, time.perf_counter() - t0


@dataclass
class Round:
    """One round's four figures, taken back to back so that they share the machine's noise."""

    ceiling16: float
    dyn: Served
    ceiling32: float
    b32: Served


@dataclass
class Row:
    backend: str
    cold_s: float
    warm_s: float
    rounds: list[Round]

    def median(self, value: Any) -> float:
        return float(statistics.median(value(r) for r in self.rounds))


def render(rows: list[Row]) -> str:
    """Medians over rounds; the two ratios are medians of each round's own ratio."""
    lines = [
        "| backend | load cold / warm (s) | in-process b16 (infer/s) | inferd 16 x b1, dyn. batching (infer/s) "
        "| of ceiling | avg batch | in-process b32 (infer/s) | inferd b32, 2 clients (infer/s) | added at b32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        errors = sum(x.dyn.errors + x.b32.errors for x in r.rounds)
        err = f" ({errors} errors)" if errors else ""
        share = r.median(lambda x: x.dyn.rows_per_s / x.ceiling16)
        added = r.median(lambda x: x.ceiling32 / x.b32.rows_per_s - 1 if x.b32.rows_per_s else float("inf"))
        lines.append(
            f"| {r.backend}{err} | {r.cold_s:.2f} / {r.warm_s:.2f} | {r.median(lambda x: x.ceiling16):.0f} "
            f"| {r.median(lambda x: x.dyn.rows_per_s):.0f} | {100 * share:.0f}% | {r.median(lambda x: x.dyn.avg_batch):.1f} "
            f"| {r.median(lambda x: x.ceiling32):.0f} | {r.median(lambda x: x.b32.rows_per_s):.0f} | {100 * added:+.0f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inferd.perf.bench_backends", description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--duration", type=float, default=2.0, help="measured seconds per server point (default 2)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each server point")
    p.add_argument("--ceiling-seconds", type=float, default=1.5, help="seconds per in-process timing")
    p.add_argument("--rounds", type=int, default=3, help="measure every point this many times; report medians")
    p.add_argument("--no-pin", action="store_true", help="do not pin server/ceilings and generator to separate CPUs")
    # Internal: one in-process ceiling, printed as JSON (run in a pinned child process).
    p.add_argument("--ceiling", choices=BACKENDS, help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, nargs="+", default=[1], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.ceiling:
        print(json.dumps(ceilings(a.ceiling, a.folder, a.batch, a.ceiling_seconds, a.rounds)))
        return 0

    server_cpus, ncpu = split_cpus(a.no_pin)
    pin = server_cpus is not None
    print(
        f"# {ncpu} CPUs; " + ("server and ceilings on CPU 0, load generator on CPUs 1.." if pin else "no pinning"),
        file=sys.stderr,
    )
    os.environ.update(THREAD_ENV)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="inferd-bench-backends-") as tmp:
        repo = Path(tmp)
        build_repository(repo, a.backends)
        # Explicit mode with nothing loaded at start: each LoadModel below is timed.
        argv_ = [*inferd_argv(repo), "--model-control-mode", "explicit"]
        server: ServerProcess = start(
            "inferd", argv_, server_cpus, ready_line="gRPC (KServe v2) listening on", wait_for="model(s) requested"
        )
        try:
            for backend in a.backends:
                model = MODEL[backend]
                cold, warm = asyncio.run(load_times(server.url, model))
                row = Row(backend, cold, warm, [])
                for _ in range(a.rounds):
                    dyn = asyncio.run(serve_point(server.url, model, 1, 16, a.warmup, a.duration))
                    b32 = asyncio.run(serve_point(server.url, model, 32, 2, a.warmup, a.duration))
                    c = _ceilings_in_child(backend, repo / model, [16, 32], a.ceiling_seconds, 1, server_cpus)
                    row.rounds.append(Round(c[16], dyn, c[32], b32))
                rows.append(row)
                print(f"# {backend}: {render(rows[-1:]).splitlines()[-1]}", file=sys.stderr)
        finally:
            server.stop()
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
