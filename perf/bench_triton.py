"""inferd against NVIDIA's Triton Inference Server (2.51, from the ``nvidia-pytriton`` wheel,
installed on first use into its own virtual environment: ``triton_server.py``) on the same
models, written on the fly by ``triton_models.py``:

* ``add_sub``: Triton's python_backend example (FP32 [4], no batching), the same model.py on
  both servers but for the line importing the model API;
* ``mlp``: a Python model running an MLP 512 -> 1024 -> 1024 -> 1000 with onnxruntime (one
  thread), batching every request of an ``execute`` call, with dynamic batching;
* for inferd also ``inferd-onnx``: the same computations on inferd's onnxruntime backend (one
  intra-op thread; this Triton build has no ONNX backend);
* on the add_sub points also ``grpc-floor``: the bare grpc.aio servicer (``baseline_server.py``,
  with inferd's event loop and I/O thread policy) answering add_sub with numpy and nothing else:
  the least CPU a Python grpc.aio server spends per request here, the floor under inferd's own
  layers.

Points (``--points``): add_sub 1x1 and 16x1, mlp 1x1, 16x1 and 16x8 (clients x batch). Every
round measures every point on every server back to back (perf_analyzer, gRPC, ``--async``); the
table shows medians over the rounds. CPU ms/request is the server's whole process tree's user +
system CPU time (Triton's Python stubs are child processes), read from /proc right before and
after perf_analyzer runs, over the requests the server completed in between (ModelStatistics).
Requests/execution is success_count / execution_count (rows/execution too, for batches over
1). Before the first round, each server's models get ``--warmup`` seconds of unmeasured load.

Goal, per point, for inferd and inferd-onnx: at least Triton's throughput and a p99 no higher
than Triton's. Needs perf_analyzer and the ``onnx`` package (for writing the models); the
first run downloads about 450 MB into ``--triton-venv``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import baseline_ref, perf_analyzer, triton_models, triton_server
from .harness import (
    Bench,
    add_baseline_argument,
    add_load_arguments,
    exit_status,
    interleaved,
    markdown,
    median,
    module_main,
    ratio,
)
from .points import Load, Served, measure
from .servers import HTTP_READY_LINE, ServerProcess, baseline_argv, split_cpus, start, start_inferd
from .transport import RequestFailed

TRITON = "triton"
INFERD = "inferd"
INFERD_ONNX = "inferd-onnx"
FLOOR = "grpc-floor"
FLOOR_MODELS = ("add_sub",)  # the bare servicer answers add_sub only
PYTHON_MODELS = ("add_sub", "mlp")
ONNX_MODELS = tuple(f"{m}_onnx" for m in PYTHON_MODELS)


@dataclass(frozen=True)
class Point:
    model: str  # the Python model's name; inferd-onnx serves "<model>_onnx"
    concurrency: int
    batch: int


POINTS: dict[str, Point] = {
    "add_sub 1x1": Point("add_sub", 1, 1),
    "add_sub 16x1": Point("add_sub", 16, 1),
    "mlp 1x1": Point("mlp", 1, 1),
    "mlp 16x1": Point("mlp", 16, 1),
    "mlp 16x8": Point("mlp", 16, 8),
}


def model_for(server: str, point: Point) -> str:
    return f"{point.model}_onnx" if server == INFERD_ONNX else point.model


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_load_arguments(p, duration=5.0, rounds=3, load="perf_analyzer")
    p.add_argument(
        "--points",
        nargs="+",
        choices=list(POINTS),
        default=list(POINTS),
        metavar="POINT",
        help="the points to measure, each quoted: " + ", ".join(f"'{n}'" for n in POINTS) + " (default all)",
    )
    p.add_argument(
        "--triton-venv",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"Triton's virtual environment, created and installed on first use (default {triton_server.default_venv()})",
    )
    p.add_argument(
        "--protocol",
        choices=["grpc", "http"],
        default="grpc",
        help="perf_analyzer's protocol: gRPC (default) or KServe v2 HTTP with binary tensors (no grpc-floor row)",
    )
    add_baseline_argument(p)


def _cell(runs: list[Served], batch: int) -> list[str]:
    """infer/s, p50, p99, CPU ms/request and requests/execution: medians over the rounds."""
    per_exec = median(s.requests_per_execution for s in runs)
    return [
        f"{median(s.rows_per_s for s in runs):,.0f}",
        f"{median(s.p50_us for s in runs):,.0f}",
        f"{median(s.p99_us for s in runs):,.0f}",
        f"{median(s.server_cpu_ms for s in runs):.3f}",
        f"{per_exec:.2f}" + (f" ({median(s.avg_batch for s in runs):.1f} rows)" if batch > 1 else ""),
    ]


def _vs_triton(runs: list[Served], triton: list[Served]) -> str:
    """The median over the rounds of each round's own throughput and p99 ratios to Triton's."""
    pairs = list(zip(runs, triton))
    tp = median(ratio(a.rows_per_s, b.rows_per_s) for a, b in pairs)
    p99 = median(ratio(a.p99_us, b.p99_us) for a, b in pairs)
    return f"{tp:.2f}x, p99 {p99:.2f}x"


def serves(server: str, model: str) -> bool:
    """Whether ``server`` is measured on ``model`` (the floor answers add_sub only)."""
    return server != FLOOR or model in FLOOR_MODELS


def table(raw: dict[tuple[str, str], list[Served]], points: list[str], servers: list[str]) -> str:
    rows = []
    for name in points:
        for server in servers:
            if not serves(server, POINTS[name].model):
                continue
            runs = raw[(name, server)]
            errors = sum(s.errors for s in runs)
            label = server + (f" ({errors} errors)" if errors else "")
            vs = "reference" if server == TRITON else _vs_triton(runs, raw[(name, TRITON)])
            rows.append([name, label, *_cell(runs, POINTS[name].batch), vs])
    header = [
        "point",
        "server",
        "infer/s",
        "p50 µs",
        "p99 µs",
        "CPU ms/request",
        "requests/execution",
        "per-round ratio vs triton (median)",
    ]
    return markdown(header, "llrrrrrr", rows)


def goal_lines(raw: dict[tuple[str, str], list[Served]], points: list[str]) -> list[str]:
    """Per point, for inferd and inferd-onnx: throughput >= Triton's and p99 <= Triton's
    (ratios of the medians)."""
    lines = []
    for name in points:
        y = raw[(name, TRITON)]
        for server in (INFERD, INFERD_ONNX):
            x = raw[(name, server)]
            tp = ratio(median(s.rows_per_s for s in x), median(s.rows_per_s for s in y))
            p99 = ratio(median(s.p99_us for s in x), median(s.p99_us for s in y))
            ok = tp >= 1.0 and p99 <= 1.0
            lines.append(
                f"{name}: {server}/triton {tp:.2f}x throughput, p99 {p99:.2f}x "
                f"({'meets' if ok else 'misses'} the goal: >= 1.0x throughput, p99 <= 1.0x)"
            )
    return lines


def http_url(server: ServerProcess) -> str:
    """Where a server's HTTP front end listens (Triton's port is known; inferd logs its own)."""
    port = server.http_port or server.logged_port(HTTP_READY_LINE)
    if not port:
        raise RuntimeError(f"{server.name} logged no HTTP port")
    return f"127.0.0.1:{port}"


def _warm_up(
    binary: str,
    servers: dict[str, ServerProcess],
    urls: dict[str, str],
    points: list[str],
    seconds: float,
    protocol: str,
) -> None:
    """Unmeasured load on every server's models, at each model's heaviest point, so that the
    first round does not pay for first calls (sessions, arenas, threads)."""
    if seconds <= 0:
        return
    heaviest: dict[str, Point] = {}
    for pt in (POINTS[n] for n in points):
        best = heaviest.get(pt.model)
        if best is None or pt.concurrency * pt.batch > best.concurrency * best.batch:
            heaviest[pt.model] = pt
    for server in servers:
        for pt in heaviest.values():
            if not serves(server, pt.model):
                continue
            try:
                perf_analyzer.measure(
                    binary, urls[server], model_for(server, pt), pt.batch, pt.concurrency, seconds, protocol=protocol
                )
            except RuntimeError as e:
                print(f"# warm-up of {model_for(server, pt)} on {server} failed: {e}", file=sys.stderr)


def run(a: argparse.Namespace) -> int:
    if a.load == "inferd":
        print("inferd perf bench triton: measures with perf_analyzer only (--load perf_analyzer)", file=sys.stderr)
        return 2
    binary = perf_analyzer.for_load("perf_analyzer")
    assert binary is not None
    try:
        import onnx  # noqa: F401
    except ImportError:
        print("inferd perf bench triton: writing the models needs onnx (pip install onnx)", file=sys.stderr)
        return 2
    load = Load(binary, a.duration, a.warmup)
    server_cpus, ncpu = split_cpus(a.no_pin)
    install = triton_server.ensure(a.triton_venv)
    print(
        f"# {ncpu} CPUs; "
        + ("servers on CPU 0, load generator on CPUs 1.." if server_cpus else "no pinning")
        + f"; load: {load.label} over {a.protocol}; Triton: {triton_server.PYTRITON} in {install.venv}",
        file=sys.stderr,
    )
    points: list[str] = [n for n in POINTS if n in a.points]
    servers: dict[str, ServerProcess] = {}
    with (
        tempfile.TemporaryDirectory(prefix="inferd-bench-triton-") as tmp,
        baseline_ref.builds(a.baseline_ref) as builds,
    ):
        triton_repo = triton_models.build(Path(tmp) / TRITON, "triton")
        inferd_repo = triton_models.build(Path(tmp) / INFERD, "inferd")
        names = [TRITON, INFERD, INFERD_ONNX, *(b.name for b in builds[1:])]
        if a.protocol == "grpc" and any(serves(FLOOR, POINTS[n].model) for n in points):
            names.append(FLOOR)
        http = ["--allow-http", "true"] if a.protocol == "http" else []
        try:
            servers[TRITON] = triton_server.start(install, triton_repo, PYTHON_MODELS, server_cpus)
            servers[INFERD] = start_inferd(INFERD, builds[0].env, server_cpus, inferd_repo, PYTHON_MODELS, http)
            servers[INFERD_ONNX] = start_inferd(INFERD_ONNX, builds[0].env, server_cpus, inferd_repo, ONNX_MODELS, http)
            for build in builds[1:]:
                servers[build.name] = start_inferd(build.name, build.env, server_cpus, inferd_repo, PYTHON_MODELS, http)
            if FLOOR in names:
                tuned = ["--io-sched", "batch", "--event-loop", "uvloop"]
                servers[FLOOR] = start(FLOOR, [*baseline_argv(), *tuned], server_cpus)
            urls = {n: http_url(s) if a.protocol == "http" else s.url for n, s in servers.items()}
            _warm_up(binary, servers, urls, points, a.warmup, a.protocol)

            def one(key: tuple[str, str]) -> Served:
                name, server = key
                pt = POINTS[name]
                proc = servers[server]
                model = model_for(server, pt)
                try:
                    return measure(
                        load, urls[server], model, pt.batch, pt.concurrency, cpu=proc.cpu_s, protocol=a.protocol
                    )
                except (RuntimeError, RequestFailed) as e:  # perf_analyzer or the statistics failed
                    print(f"# {name} {server}: {e}", file=sys.stderr)
                    return Served(0.0, errors=1)

            keys = [(n, s) for n in points for s in names if serves(s, POINTS[n].model)]
            raw = interleaved(a.rounds, keys, one, lambda k: f"{k[0]} {k[1]}")
        finally:
            for s in servers.values():
                s.stop()
    print(
        f"load: {load.label} over {a.protocol}; points are clients x batch; infer/s in rows (inferences) per second\n"
    )
    print(table(raw, points, names))
    print("\n" + "\n".join(goal_lines(raw, points)))
    return exit_status(raw)


BENCH = Bench(
    "triton",
    "inferd against NVIDIA's Triton (pytriton's tritonserver) on the same Python and ONNX models",
    add_arguments,
    run,
    __doc__ or "",
)

if __name__ == "__main__":
    sys.exit(module_main(BENCH))
