"""Backends: one MLP, the same weights in every framework, served by inferd against the
framework's own in-process ceiling.

For each backend: the LoadModel time (cold: the first model of its framework, import included;
warm: unload and load again); throughput of 16 concurrent batch-1 gRPC clients with dynamic
batching against the framework's in-process throughput at batch 16 (the largest batch 16
clients can form); and of 2 clients sending batch-32 requests against the in-process batch-32
throughput. "Added" is how much longer an inference takes through inferd than in-process
(ceiling / inferd - 1).

The server and each in-process ceiling run alone on CPU 0 with one framework thread (BLAS
pools too), the load generator on CPU 1. Each round measures the two server points and then
both ceilings (in a fresh child) back to back; each ratio is the median of the rounds' own
ratios, so that a busy machine skews both sides of a ratio alike. TensorRT needs a GPU and is
left out.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..clients.client import AsyncInferenceClient
from . import ceilings
from .ceilings import BACKENDS, SHAPE, THREAD_ENV
from .harness import Bench, module_main
from .points import Load, Served, measure
from .servers import ServerProcess, split_cpus, start_inferd

MODEL = {"onnxruntime": "mlp_onnx", "pytorch": "mlp_torch", "tensorflow": "mlp_tf", "python": "mlp_python"}
MAX_BATCH = 32

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


def _config(name: str, kind: str, value: str, io: str) -> str:
    return (
        f'name: "{name}"\n{kind}: "{value}"\nmax_batch_size: {MAX_BATCH}\n{io}'
        "dynamic_batching { max_queue_delay_microseconds: 500 }\n"
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n" + ceilings.ORT_ONE_THREAD
    )


def build_repository(root: Path, backends: list[str]) -> None:
    """The MLP for each backend (same weights), configured alike."""
    b = ceilings.model_builders()
    io = ceilings.mlp_io()
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--duration", type=float, default=2.0, help="measured seconds per server point (default 2)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each server point")
    p.add_argument("--ceiling-seconds", type=float, default=1.5, help="seconds per in-process timing")
    p.add_argument("--rounds", type=int, default=3, help="measure every point this many times; report medians")
    p.add_argument("--no-pin", action="store_true", help="do not pin server/ceilings and generator to separate CPUs")


def run(a: argparse.Namespace) -> int:
    server_cpus, ncpu = split_cpus(a.no_pin)
    print(
        f"# {ncpu} CPUs; "
        + ("server and ceilings on CPU 0, load generator on CPUs 1.." if server_cpus else "no pinning"),
        file=sys.stderr,
    )
    load = Load(None, a.duration, a.warmup)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="inferd-bench-backends-") as tmp:
        repo = Path(tmp)
        build_repository(repo, a.backends)
        # Explicit mode with nothing loaded at start: each LoadModel below is timed.
        server: ServerProcess = start_inferd(
            "inferd", THREAD_ENV, server_cpus, repo, extra=["--model-control-mode", "explicit"]
        )
        try:
            for backend in a.backends:
                model = MODEL[backend]
                cold, warm = asyncio.run(load_times(server.url, model))
                row = Row(backend, cold, warm, [])
                for _ in range(a.rounds):
                    dyn = measure(load, server.url, model, 1, 16)
                    b32 = measure(load, server.url, model, 32, 2)
                    c = ceilings.in_child(backend, repo / model, [16, 32], a.ceiling_seconds, 1, server_cpus)
                    row.rounds.append(Round(c[16], dyn, c[32], b32))
                rows.append(row)
                print(f"# {backend}: {render(rows[-1:]).splitlines()[-1]}", file=sys.stderr)
        finally:
            server.stop()
    print(render(rows))
    return 0


BENCH = Bench(
    "backends",
    "one MLP in every framework, served by inferd against the framework's in-process ceiling",
    add_arguments,
    run,
    __doc__ or "",
)

if __name__ == "__main__":
    sys.exit(module_main(BENCH))
