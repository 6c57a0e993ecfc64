"""Rollouts: what a traffic policy, shadow traffic and drift statistics cost the callers, on
the bundled element-wise model (add_sub, ONNX, FP32 [1, 16]).

One server serves four copies of add_sub, each with versions 1 and 2 (the same file):

* ``ew_plain``: no rollout parameters (the request path as without the feature);
* ``ew_policy``: ``traffic "1:100"`` (routing through the policy, per-version windows);
* ``ew_shadow``: ``traffic "1:100,shadow=2@1"`` (every request copied to version 2 after
  version 1 answered, compared there; one shadow worker, a queue of 64, the rest dropped);
* ``ew_drift``: ``drift "on"`` (per-tensor statistics of every request, reference = the first
  1000).

Each round drives each model in turn for ``--duration`` seconds at ``--concurrency`` clients
(default 16); rounds interleave the models so drifts of the machine hit them alike; the table
shows the median over rounds. Goals (the issue's): the caller's p99 with shadowing on within
10% of the same policy without it (``ew_shadow`` vs ``ew_policy``), and drift statistics
costing at most 5% of the throughput (``ew_drift`` vs ``ew_plain``).

Server on CPU 0, the Python load generator on the others (``--no-pin`` to share).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..clients.client import AsyncInferenceClient
from .harness import Bench, markdown, module_main
from .points import Cell, drive
from .servers import BUNDLED_REPOSITORY, split_cpus, start_inferd

MODELS = {
    "ew_plain": "",
    "ew_policy": 'parameters { key: "traffic" value: { string_value: "1:100" } }\n',
    "ew_shadow": 'parameters { key: "traffic" value: { string_value: "1:100,shadow=2@1" } }\n',
    "ew_drift": 'parameters { key: "drift" value: { string_value: "on" } }\n',
}


def build_repository(root: Path) -> None:
    source = BUNDLED_REPOSITORY / "add_sub"
    config = (source / "config.pbtxt").read_text()
    for name, extra in MODELS.items():
        for version in (1, 2):
            (root / name / str(version)).mkdir(parents=True)
            shutil.copyfile(source / "1" / "model.onnx", root / name / str(version) / "model.onnx")
        text = config.replace('name: "add_sub"', f'name: "{name}"')
        (root / name / "config.pbtxt").write_text(text + "version_policy { all { } }\n" + extra)


async def measure(url: str, concurrency: int, seconds: float, warmup: float, rounds: int) -> dict[str, list[Cell]]:
    cells: dict[str, list[Cell]] = {name: [] for name in MODELS}
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 16)).astype(np.float32)
    b = rng.standard_normal((1, 16)).astype(np.float32)
    async with AsyncInferenceClient(url) as client:
        for name in MODELS:
            if not await client.is_model_ready(name):
                raise SystemExit(f"model '{name}' is not ready on {url}")
        for r in range(rounds):
            order = list(MODELS) if r % 2 == 0 else list(reversed(MODELS))
            for name in order:

                async def send(model: str = name) -> None:
                    out = await client.infer(model, {"INPUT0": a, "INPUT1": b}, timeout=30)
                    if not np.allclose(out["OUTPUT0"], a + b):
                        raise AssertionError(f"{model}: a wrong answer")

                cell = await drive(send, concurrency, seconds, warmup, name)
                cells[name].append(cell)
                print(
                    f"# round {r + 1} {name} x{concurrency}: {cell.rate:,.0f}/s, p50 {cell.p50_us:,.0f} µs, "
                    f"p99 {cell.p99_us:,.0f} µs, errors {cell.errors}",
                    file=sys.stderr,
                )
    return cells


def _median(cells: list[Cell], field: str) -> float:
    return statistics.median(getattr(c, field) for c in cells)


def render(cells: dict[str, list[Cell]]) -> str:
    plain_rate = _median(cells["ew_plain"], "rate")
    policy_p99 = _median(cells["ew_policy"], "p99_us")
    body = []
    for name, runs in cells.items():
        rate, p99 = _median(runs, "rate"), _median(runs, "p99_us")
        body.append(
            [
                name,
                f"{rate:,.0f}",
                f"{_median(runs, 'p50_us'):,.0f}",
                f"{p99:,.0f}",
                f"{rate / plain_rate:.3f}",
                f"{p99 / policy_p99:.3f}",
                str(sum(c.errors for c in runs)),
            ]
        )
    header = ["model", "infer/s", "p50 (µs)", "p99 (µs)", "x plain infer/s", "x policy p99", "errors"]
    return markdown(header, "lrrrrrr", body)


def verdicts(cells: dict[str, list[Cell]]) -> tuple[list[str], bool]:
    shadow = _median(cells["ew_shadow"], "p99_us") / _median(cells["ew_policy"], "p99_us")
    drift = _median(cells["ew_drift"], "rate") / _median(cells["ew_plain"], "rate")
    policy = _median(cells["ew_policy"], "rate") / _median(cells["ew_plain"], "rate")
    errors = sum(c.errors for runs in cells.values() for c in runs)
    lines = [
        f"- caller p99 with shadowing on: {shadow:.3f}x off (goal <= 1.10): {'met' if shadow <= 1.10 else 'NOT met'}",
        f"- throughput with drift statistics: {drift:.3f}x without (goal >= 0.95): {'met' if drift >= 0.95 else 'NOT met'}",
        f"- throughput through a traffic policy: {policy:.3f}x without (no goal)",
        f"- failed requests: {errors}",
    ]
    return lines, shadow <= 1.10 and drift >= 0.95 and errors == 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=int, default=16, help="clients (default 16)")
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per cell (default 4)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the four models (default 3)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and the load generator apart")


def run(a: argparse.Namespace) -> int:
    server_cpus, ncpu = split_cpus(a.no_pin)
    print(
        f"# {ncpu} CPUs; " + ("server on CPU 0, load on the others" if server_cpus else "no pinning"), file=sys.stderr
    )
    with tempfile.TemporaryDirectory(prefix="inferd-bench-rollout-") as tmp:
        repo = Path(tmp)
        build_repository(repo)
        server = start_inferd("inferd", {}, server_cpus, repo, list(MODELS))
        try:
            cells = asyncio.run(measure(server.url, a.concurrency, a.duration, a.warmup, a.rounds))
        finally:
            server.stop()
    lines, ok = verdicts(cells)
    print(
        f"add_sub (ONNX, FP32 [1, 16]) at {a.concurrency} clients; median of {a.rounds} round(s) of {a.duration:g} s.\n"
    )
    print(render(cells))
    print()
    print("\n".join(lines))
    return 0 if ok else 1


BENCH = Bench(
    "rollout",
    "rollouts: caller p99 with shadow traffic on vs off, throughput with drift statistics, on the element-wise model",
    add_arguments,
    run,
    __doc__ or "",
)

if __name__ == "__main__":
    sys.exit(module_main(BENCH))
