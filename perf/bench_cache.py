"""The response cache: a model that computes for ``--compute-ms`` (default 2 ms) per request,
served from the cache (hits) against the same model without one, and the cache's hit count
against the workload's.

One server (``--cache-config local,size=64 MiB``) serves two copies of a Python model that
spins numpy work for the given time and answers Y = 2X: ``compute_cached`` (``response_cache
{ enable: true }``) and ``compute_plain``. Workloads, each at every ``--concurrency``:

* ``uncached``: ``compute_plain`` over a cycle of ``--distinct`` inputs (every request runs);
* ``hits``: ``compute_cached`` over the same cycle (after the first pass every request hits);
* ``half unique``: ``compute_cached``, every other request a never-seen input (a miss).

The client keeps every input it sent, so it knows how many requests must hit (the rest are
each a first sending of an input, which must miss); the server's ModelStatistics ``cache_hit``
and ``cache_miss`` counts, differenced over the cell, must equal them exactly. Goal: hit-path
throughput >= 2x uncached at every concurrency, and exact hit counts.

Server on CPU 0, the Python load generator on the others (``--no-pin`` to share).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..clients.client import AsyncInferenceClient
from .harness import Bench, markdown, module_main
from .points import Cell, drive
from .servers import split_cpus, start_inferd

CACHE_BYTES = 64 << 20
MODEL_PY = """\
import json
import time

import numpy as np

import inferd.backends.python_api as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.seconds = float(parameters["compute_ms"]["string_value"]) / 1000
        self.a = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            end = time.perf_counter() + self.seconds
            while time.perf_counter() < end:  # numpy work (the GIL released) for the set time
                np.dot(self.a, self.a)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
        return responses
"""
CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 16 ] }} ]
parameters {{ key: "compute_ms" value {{ string_value: "{ms}" }} }}
{extra}"""
CACHED, PLAIN = "compute_cached", "compute_plain"
WORKLOADS = ("uncached", "hits", "half unique")


def build_repository(root: Path, compute_ms: float) -> None:
    for name, extra in ((CACHED, "response_cache { enable: true }\n"), (PLAIN, "")):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(CONFIG.format(name=name, ms=compute_ms, extra=extra))
        (root / name / "1" / "model.py").write_text(MODEL_PY)


@dataclass
class Row:
    workload: str
    cell: Cell
    sent: int
    hits: int  # the server's cache_hit count over the cell
    misses: int
    expected_hits: int  # from what the client sent
    expected_misses: int

    @property
    def exact(self) -> bool:
        return (self.hits, self.misses) == (self.expected_hits, self.expected_misses)


class Inputs:
    """The requests of one workload, and which of them the server has seen before."""

    def __init__(
        self, distinct: int, unique_every: int, seen: set[bytes], fresh: itertools.count[int], seed: int
    ) -> None:
        rng = np.random.default_rng(seed)
        self.cycle = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(distinct)]
        self.unique_every = unique_every  # every n-th request a never-seen input; 0 = never
        self.seen = seen
        self.counter = itertools.count()
        self.fresh = fresh  # shared by the cells: an input never sent before, whatever cell sent what
        self.sent = self.first = 0

    def next(self) -> np.ndarray:
        i = next(self.counter)
        if self.unique_every and i % self.unique_every == 0:
            x = np.full((1, 16), float(next(self.fresh)), np.float32) * np.float32(1e-3) + self.cycle[0]
        else:
            x = self.cycle[i % len(self.cycle)]
        key = x.tobytes()
        self.sent += 1
        if key not in self.seen:
            self.seen.add(key)
            self.first += 1
        return x


async def _cache_counts(client: AsyncInferenceClient, model: str) -> tuple[int, int]:
    s = (await client.model_statistics(model)).model_stats[0].inference_stats
    return s.cache_hit.count, s.cache_miss.count


async def measure(
    url: str, concurrency: list[int], seconds: float, warmup: float, distinct: int, seed: int
) -> list[Row]:
    rows: list[Row] = []
    seen: dict[str, set[bytes]] = {CACHED: set(), PLAIN: set()}
    fresh = itertools.count(1)
    plans: dict[str, tuple[str, int]] = {"uncached": (PLAIN, 0), "hits": (CACHED, 0), "half unique": (CACHED, 2)}
    async with AsyncInferenceClient(url) as client:
        for model in (CACHED, PLAIN):
            if not await client.is_model_ready(model):
                raise SystemExit(f"model '{model}' is not ready on {url}")
        for c in concurrency:
            for workload in WORKLOADS:
                model, unique_every = plans[workload]
                inputs = Inputs(distinct, unique_every, seen[model], fresh, seed)
                send = _sender(client, model, inputs.next)
                before = await _cache_counts(client, model)
                cell = await drive(send, c, seconds, warmup, workload)
                after = await _cache_counts(client, model)
                hits, misses = after[0] - before[0], after[1] - before[1]
                expected_misses = inputs.first if model == CACHED else 0
                expected_hits = inputs.sent - inputs.first if model == CACHED else 0
                row = Row(workload, cell, inputs.sent, hits, misses, expected_hits, expected_misses)
                rows.append(row)
                print(
                    f"# {workload} x{c}: {cell.rate:,.0f}/s, p50 {cell.p50_us:,.0f} µs, "
                    f"hits {hits}/{expected_hits}, misses {misses}/{expected_misses}",
                    file=sys.stderr,
                )
    return rows


def _sender(client: AsyncInferenceClient, model: str, next_input: Callable[[], np.ndarray]):  # type: ignore[no-untyped-def]
    async def send() -> None:
        x = next_input()
        y = (await client.infer(model, {"X": x}, timeout=30))["Y"]
        if not np.array_equal(y, x * 2):
            raise AssertionError(f"{model}: a wrong answer")

    return send


def render(rows: list[Row]) -> str:
    uncached = {r.cell.concurrency: r.cell.rate for r in rows if r.workload == "uncached"}
    body = []
    for r in rows:
        base = uncached.get(r.cell.concurrency, 0.0)
        rate = r.hits / (r.hits + r.misses) if r.hits + r.misses else 0.0
        body.append(
            [
                r.workload,
                str(r.cell.concurrency),
                f"{r.cell.rate:,.0f}",
                f"{r.cell.p50_us:,.0f}",
                f"{r.cell.p99_us:,.0f}",
                f"{r.cell.rate / base:.2f}" if base else "-",
                str(r.sent),
                f"{r.hits} / {r.expected_hits}",
                f"{r.misses} / {r.expected_misses}",
                f"{rate:.1%}" if r.workload != "uncached" else "-",
                "yes" if r.exact else "NO",
                str(r.cell.errors),
            ]
        )
    header = [
        "workload",
        "clients",
        "infer/s",
        "p50 (µs)",
        "p99 (µs)",
        "x uncached",
        "sent",
        "hits / expected",
        "misses / expected",
        "hit rate",
        "exact",
        "errors",
    ]
    return markdown(header, "lrrrrrrrrrll", body)


def verdicts(rows: list[Row]) -> tuple[list[str], bool]:
    lines, ok = [], True
    uncached = {r.cell.concurrency: r.cell.rate for r in rows if r.workload == "uncached"}
    for r in rows:
        if r.workload == "hits":
            x = r.cell.rate / uncached[r.cell.concurrency] if uncached.get(r.cell.concurrency) else 0.0
            met = x >= 2.0
            ok &= met
            lines.append(
                f"- {r.cell.concurrency} client(s): hit path {x:.2f}x uncached (goal >= 2x): {'met' if met else 'NOT met'}"
            )
        if not r.exact or r.cell.errors:
            ok = False
    exact = all(r.exact for r in rows)
    lines.append(f"- hit and miss counts equal the workload's exactly: {'yes' if exact else 'NO'}")
    return lines, ok


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compute-ms", type=float, default=2.0, help="the model's compute per request (default 2)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4], help="clients (default 1 4)")
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per cell (default 4)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)")
    p.add_argument("--distinct", type=int, default=16, help="inputs in the repeated cycle (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and the load generator apart")


def run(a: argparse.Namespace) -> int:
    server_cpus, ncpu = split_cpus(a.no_pin)
    print(
        f"# {ncpu} CPUs; " + ("server on CPU 0, load on the others" if server_cpus else "no pinning"), file=sys.stderr
    )
    with tempfile.TemporaryDirectory(prefix="inferd-bench-cache-") as tmp:
        repo = Path(tmp)
        build_repository(repo, a.compute_ms)
        server = start_inferd(
            "inferd", {}, server_cpus, repo, [CACHED, PLAIN], extra=["--cache-config", f"local,size={CACHE_BYTES}"]
        )
        try:
            rows = asyncio.run(measure(server.url, a.concurrency, a.duration, a.warmup, a.distinct, a.seed))
        finally:
            server.stop()
    lines, ok = verdicts(rows)
    print(f"Model computing {a.compute_ms:g} ms per request; {a.distinct} distinct inputs cycled; one round.\n")
    print(render(rows))
    print()
    print("\n".join(lines))
    return 0 if ok else 1


BENCH = Bench(
    "cache",
    "the response cache: hit-path throughput against the uncached path on a model computing 2 ms, exact hit counts",
    add_arguments,
    run,
    __doc__ or "",
)

if __name__ == "__main__":
    sys.exit(module_main(BENCH))
