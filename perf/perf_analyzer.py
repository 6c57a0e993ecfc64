"""NVIDIA's perf_analyzer as a load generator: finding a binary that runs, and one measured point.

Its C++ client costs a fraction of a Python grpc.aio client's CPU per request and turns a burst
of responses around at once, so where a benchmark asks what the *server* can do, its load
disturbs the server least (figures: reports/2026-12-04-tools-http-backends-lifecycle-ensembles.md;
install: ../shared/tools/).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "bash ../shared/tools/install-perf-analyzer.sh, or set $PERF_ANALYZER"


def find_perf_analyzer() -> str | None:
    """$PERF_ANALYZER, then PATH, then ~/.local/perf_analyzer/bin: the first that starts."""
    for c in (
        os.environ.get("PERF_ANALYZER"),
        shutil.which("perf_analyzer"),
        str(Path.home() / ".local" / "perf_analyzer" / "bin" / "perf_analyzer"),
    ):
        if c and os.access(c, os.X_OK) and _runs(c):
            return c
    return None


def for_load(load: str) -> str | None:
    """The binary for a benchmark's ``--load`` choice: none for "inferd" (the Python generator),
    the one found or none for "auto", and for "perf_analyzer" the one found or an exit with
    status 2 and the install hint."""
    if load == "inferd":
        return None
    found = find_perf_analyzer()
    if found is None and load == "perf_analyzer":
        print(f"perf_analyzer not found ({INSTALL_HINT})", file=sys.stderr)
        raise SystemExit(2)
    return found


def _runs(binary: str) -> bool:
    # tritonclient's wheel puts a CUDA build on a virtual environment's PATH that cannot start
    # without libcudart: skip binaries that do not run here.
    try:
        return subprocess.run([binary, "--version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    """perf_analyzer's ``-f`` CSV, rows keyed by their concurrency or request rate."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {r.get("Concurrency") or r.get("Request Rate") or "": r for r in rows}


@dataclass
class PaPoint:
    rows_per_s: float  # perf_analyzer's "inferences": requests x batch
    p50_us: float
    p99_us: float


LOAD_LABEL = "perf_analyzer (C++, --async)"


def measure(
    binary: str,
    url: str,
    model: str,
    batch: int,
    concurrency: int,
    duration_s: float,
    timeout_s: float = 300,
    extra: Sequence[str] = (),
    protocol: str = "grpc",
) -> PaPoint:
    """``concurrency`` requests in flight over ``protocol`` (grpc or http) for about ``duration_s``: the average of 3
    windows of a third each, at least 200 ms (stability is not asked for: ``-s 100`` accepts
    the first three). ``extra`` is appended to the command line (``--shared-memory system``)."""
    window_ms = max(int(duration_s * 1000 / 3), 200)
    with tempfile.TemporaryDirectory(prefix="inferd-pa-") as tmp:
        out = Path(tmp) / "pa.csv"
        argv = [
            binary,
            "-m",
            model,
            "-i",
            protocol,
            "-u",
            url,
            "-b",
            str(batch),
            "--async",
            "--concurrency-range",
            str(concurrency),
            "-p",
            str(window_ms),
            "-s",
            "100",
            "--max-trials",
            "10",
            "-f",
            str(out),
            *extra,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"perf_analyzer failed ({done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")
        row = read_csv(out)[str(concurrency)]
    return PaPoint(float(row["Inferences/Second"]), float(row["p50 latency"]), float(row["p99 latency"]))
