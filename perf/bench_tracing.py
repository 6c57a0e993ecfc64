"""What tracing costs on the element-wise add_sub model, batch-1 gRPC requests.

Servers, measured in interleaved rounds:

* ``inferd@REF`` (``--baseline-ref``, default HEAD): the committed code, extracted with ``git
  archive`` (read-only: no worktree) and started through baseline_ref's PYTHONPATH shim;
* ``inferd``: the working tree with tracing off (every level OFF, the default);
* ``inferd-traced``: the working tree with ``--trace-config level=TIMESTAMPS,rate=1``: every
  request traced (five spans), exported by the SDK's batch processor over OTLP/HTTP to a
  receiver in this process that reads and discards each export;
* ``inferd-traced-file``: the same in Triton's ``triton`` mode: every request's timestamps
  written to a JSON trace file in a temporary folder.

Goals: tracing off costs nothing measurable (inferd / inferd@REF within noise); tracing on at
rate 1 costs at most 15% of throughput (inferd-traced / inferd >= 0.85, in either mode).
"""

from __future__ import annotations

import argparse
import http.server
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import baseline_ref
from .harness import (
    Bench,
    add_load_arguments,
    comparison,
    exit_status,
    interleaved,
    load_from_args,
    median,
    module_main,
    ratio,
)
from .points import Served, measure
from .servers import ServerProcess, split_cpus, start_inferd


@contextmanager
def archived(ref: str) -> Iterator[baseline_ref.InferdBuild]:
    """The build of ``ref`` from ``git archive`` (which changes nothing in the repository)."""
    tmp = Path(tempfile.mkdtemp(prefix="inferd-archive-"))
    try:
        tree = tmp / "tree"
        tree.mkdir()
        tar = subprocess.run(["git", "-C", str(baseline_ref.CHECKOUT), "archive", ref], capture_output=True)
        if tar.returncode != 0:
            raise SystemExit(f"git archive {ref}: {tar.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
            archive.extractall(tree, filter="data")
        baseline_ref.write_shim(tmp / "shim", tree, f"inferd as of {ref}, from git archive")
        env = {"PYTHONPATH": str(tmp / "shim")}
        baseline_ref.prepare(tree, env)
        yield baseline_ref.InferdBuild(f"inferd@{ref}", env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    exports = 0

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).exports += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_load_arguments(p, duration=3.0, rounds=3, load="inferd")
    p.add_argument("--concurrency", type=int, nargs="+", default=[8])
    p.add_argument("--processes", type=int, default=1, help="Python load generator processes (default 1)")
    p.add_argument("--baseline-ref", default="HEAD", help="the commit to compare tracing off with (default HEAD)")
    p.add_argument("--no-baseline", action="store_true", help="measure the working tree only")


def run(a: argparse.Namespace) -> int:
    load = load_from_args(a, a.processes)
    server_cpus, ncpu = split_cpus(a.no_pin)
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
    traced = ["--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1"]
    traced += ["--trace-config", "mode=opentelemetry", "--trace-config", f"opentelemetry,url={url}"]
    folder = tempfile.mkdtemp(prefix="inferd-trace-bench-")
    to_file = ["--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1"]
    to_file += ["--trace-config", f"triton,file={folder}/trace.json"]
    print(f"# {ncpu} CPUs; load: {load.label}; spans to {url}; trace file in {folder}", file=sys.stderr)
    points = [f"{c} x 1" for c in a.concurrency]
    servers: dict[str, ServerProcess] = {}
    with contextmanager(_builds)(a) as builds:
        try:
            for build in builds:
                servers[build.name] = start_inferd(build.name, build.env, server_cpus, None, ["add_sub"])
            servers["inferd-traced"] = start_inferd("inferd-traced", {}, server_cpus, None, ["add_sub"], traced)
            servers["inferd-traced-file"] = start_inferd(
                "inferd-traced-file", {}, server_cpus, None, ["add_sub"], to_file
            )

            def one(key: tuple[str, str]) -> Served:
                point, name = key
                return measure(load, servers[name].url, "add_sub", 1, int(point.split()[0]), True)

            names = list(servers)
            raw = interleaved(a.rounds, [(p, n) for p in points for n in names], one, lambda k: f"{k[0]} {k[1]}")
        finally:
            for s in servers.values():
                s.stop()
            sink.shutdown()
            shutil.rmtree(folder, ignore_errors=True)
    pairs = [("inferd-traced", "inferd"), ("inferd-traced-file", "inferd")] + [("inferd", b.name) for b in builds[1:]]
    print(f"load: {load.label}; OTLP exports received: {_Sink.exports}\n")
    print(comparison(raw, points, names, pairs))
    for point in points:
        for name, mode in (("inferd-traced", "OpenTelemetry"), ("inferd-traced-file", "trace file")):
            on = ratio(
                median(s.rows_per_s for s in raw[(point, name)]), median(s.rows_per_s for s in raw[(point, "inferd")])
            )
            print(
                f"\n{point}: tracing at rate 1 ({mode}) keeps {100 * on:.0f}% of throughput: "
                f"{'meets' if on >= 0.85 else 'misses'} the goal (>= 85%)"
            )
        for b in builds[1:]:
            off = ratio(
                median(s.rows_per_s for s in raw[(point, "inferd")]), median(s.rows_per_s for s in raw[(point, b.name)])
            )
            print(f"{point}: tracing off, working tree / {b.name}: {100 * off:.0f}% of throughput")
    return exit_status(raw)


def _builds(a: argparse.Namespace) -> Iterator[list[baseline_ref.InferdBuild]]:
    if a.no_baseline:
        yield [baseline_ref.CURRENT]
        return
    with archived(a.baseline_ref) as build:
        yield [baseline_ref.CURRENT, build]


BENCH = Bench(
    "tracing",
    "tracing off against the committed code, and every request traced, on add_sub",
    add_arguments,
    run,
    __doc__ or "",
)

if __name__ == "__main__":
    sys.exit(module_main(BENCH))
