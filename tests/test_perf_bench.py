"""The benchmark harness: ``inferd perf bench`` lists and runs the registered benchmarks, one
runs end to end with tiny durations, and ``--baseline-ref``'s shim imports another tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from inferd.perf import baseline_ref
from inferd.perf.harness import benches

NAMES = {
    "backends",
    "batch",
    "batching",
    "cache",
    "ensemble",
    "generate",
    "http-vs-grpc",
    "kserve",
    "protocol",
    "rollout",
    "shm",
    "swap",
    "tools",
    "tracing",
    "tls",
    "triton",
}


def inferd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The ``inferd`` command, through the server CLI's sub-command dispatch."""
    return subprocess.run(
        [sys.executable, "-m", "inferd.server.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_list_names_every_benchmark() -> None:
    done = inferd("perf", "bench", "--list")
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
    assert listed == NAMES == set(benches())


def test_unknown_benchmark_is_a_usage_error() -> None:
    done = inferd("perf", "bench", "no-such-bench")
    assert done.returncode == 2 and "no benchmark 'no-such-bench'" in done.stderr


def test_every_benchmark_has_help() -> None:
    for name in NAMES:
        done = inferd("perf", "bench", name, "--help")
        assert done.returncode == 0 and f"inferd perf bench {name}" in done.stdout, (name, done.stderr)


@pytest.mark.slow
def test_protocol_benchmark_runs_end_to_end() -> None:
    """The Python load generator, so that it runs where perf_analyzer is not installed."""
    done = inferd(
        *("perf", "bench", "protocol", "--servers", "inferd", "baseline", "--concurrency", "1"),
        *("--duration", "0.3", "--warmup", "0.1", "--rounds", "1", "--load", "inferd", "--processes", "1"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [r.split("|")[1:-1] for r in done.stdout.splitlines() if r.startswith("| 1 x 1 ")]
    servers = [r[1].strip() for r in rows]
    assert servers == ["inferd", "baseline", "**inferd / baseline**"]
    assert all(float(r[2].replace(",", "")) > 0 for r in rows[:2])
    assert "the goal" in done.stdout


@pytest.mark.slow
def test_generate_benchmark_runs_end_to_end() -> None:
    done = inferd(
        *("perf", "bench", "generate", "--concurrency", "1", "--duration", "0.3", "--warmup", "0.1", "--grpc")
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: a goal not met on this machine
    rows = [r.split("|")[1:-1] for r in done.stdout.splitlines() if r.startswith(("| in-process ", "| served "))]
    assert [r[0].strip() for r in rows] == ["in-process", "in-process batched", "served", "served gRPC"]
    assert all(float(r[2].replace(",", "")) > 0 for r in rows)
    assert rows[2][-1].strip() == "0" and rows[3][-1].strip() == "0"
    assert "TTFT" in done.stdout


def test_batch_benchmark_runs_end_to_end() -> None:
    done = inferd(*("perf", "bench", "batch", "--lines", "300", "--rounds", "1", "--concurrency", "8"))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r.split("|")[1].strip(): r.split("|")[2].strip() for r in done.stdout.splitlines() if r.startswith("| ")}
    assert {"inferd batch, concurrency 8", "onnxruntime, 64 rows per call", "JSON only (no model)"} <= set(rows)
    assert all(float(v.replace(",", "")) > 0 for k, v in rows.items() if k != "scored by")


def test_shim_maps_inferd_packages_to_another_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for package in ("server", "clients"):
        (tree / package).mkdir(parents=True)
        (tree / package / "__init__.py").write_text(f"WHERE = 'old {package}'\n")
    baseline_ref.write_shim(tmp_path / "shim", tree, "a test tree")
    code = (
        "import inferd.server, inferd.clients; print(inferd.server.WHERE, inferd.clients.WHERE, inferd.server.__file__)"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "shim"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"old server old clients {tree / 'server' / '__init__.py'}")


@pytest.mark.skipif(not (baseline_ref.CHECKOUT / ".git").exists(), reason="not a git checkout")
def test_checkout_serves_the_ref_from_a_worktree_and_removes_it() -> None:
    with baseline_ref.checkout("HEAD") as build:
        assert build.name == "inferd@HEAD"
        code = "import inferd.server.app as a; print(a.__file__)"
        env = dict(os.environ, **build.env)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
        where = Path(done.stdout.strip())
        assert done.returncode == 0 and where.exists(), done.stderr
        assert baseline_ref.CHECKOUT not in where.parents
    assert not where.exists()
    worktrees = subprocess.run(
        ["git", "-C", str(baseline_ref.CHECKOUT), "worktree", "list"], capture_output=True, text=True
    )
    assert str(where.parents[2]) not in worktrees.stdout
