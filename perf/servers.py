"""Start servers as subprocesses for benchmarks: on port 0, reading the bound port back from
their log (never the bind-close-rebind "free port" trick), optionally pinned to CPUs; and read
a server's CPU time, child processes included, from /proc."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The line inferd logs once its HTTP front end listens (the port follows it).
HTTP_READY_LINE = "HTTP (KServe v2) listening on"
# "... listening on HOST:PORT", with inferd's " (TLS)" or " (TLS, client certificates required)".
_PORT = re.compile(r"listening on [\w.\-\[\]:]*?:(\d+)(?: \(TLS[^)]*\))?\s*$")


@dataclass
class ServerProcess:
    name: str
    proc: subprocess.Popen[str]
    port: int
    log: list[str] = field(default_factory=list)
    http_port: int = 0  # where a server's HTTP port is not ``port`` (Triton's: gRPC, HTTP and metrics apart)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def logged_port(self, ready_line: str) -> int | None:
        """The port on the first log line holding ``ready_line`` (inferd logs one per front end)."""
        for line in self.log:
            m = _PORT.search(line) if ready_line in line else None
            if m:
                return int(m.group(1))
        return None

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_s(self) -> float:
        """CPU seconds used so far by the server and its live child processes."""
        return process_tree_cpu_s(self.proc.pid)


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (field 3 onwards), or None when
    the process is gone. The name is in parentheses and may itself hold spaces or parentheses."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its live descendants, from /proc (Linux):
    a server's work may run in child processes (Triton's Python backend stubs, say). A child's
    time reaches its parent's counters only once it is reaped, so children that exited since
    are not counted; 0.0 where /proc is missing."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return 0.0
    for entry in proc.iterdir():
        if entry.name.isdigit() and (f := _stat_fields(entry.name)) is not None:
            children.setdefault(int(f[1]), []).append(int(entry.name))  # field 4: ppid
    ticks, todo = 0, [pid]
    while todo:
        p = todo.pop()
        f = _stat_fields(p)
        if f is None:
            continue
        ticks += int(f[11]) + int(f[12])  # fields 14 and 15: utime and stime, in clock ticks
        todo += children.get(p, [])
    return ticks / os.sysconf("SC_CLK_TCK")


def pin_prefix(cpus: Sequence[int] | None) -> list[str]:
    """``taskset -c ...`` when pinning is asked for and possible, else nothing."""
    if not cpus or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", ",".join(str(c) for c in cpus)]


def split_cpus(no_pin: bool) -> tuple[list[int] | None, int]:
    """Reserve CPU 0 for the servers and move this process (the load generator) to the others.
    Call it before any gRPC thread exists, so they all inherit the affinity. Returns the
    servers' CPUs (None when not pinning: asked not to, or a single CPU) and the CPU count."""
    ncpu = len(os.sched_getaffinity(0))
    if no_pin or ncpu < 2:
        return None, ncpu
    os.sched_setaffinity(0, set(range(1, ncpu)))
    return [0], ncpu


def start(
    name: str,
    argv: Sequence[str],
    cpus: Sequence[int] | None = None,
    timeout: float = 60,
    ready_line: str = "listening on",
    wait_for: str | None = None,
    env: Mapping[str, str] | None = None,
) -> ServerProcess:
    """Run ``argv`` (with ``env`` added to the environment); wait for the line announcing the
    port (and ``wait_for``, if given)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.Popen(
        [*pin_prefix(cpus), *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    port: int | None = None
    seen_wait = wait_for is None
    lines: list[str] = []
    done = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        while seen < len(lines):
            line = lines[seen]
            seen += 1
            m = _PORT.search(line) if ready_line in line else None
            if m and port is None:
                port = int(m.group(1))
            if wait_for is not None and wait_for in line:
                seen_wait = True
        if port is not None and seen_wait:
            return ServerProcess(name, proc, port, lines)
        if done.is_set() and seen >= len(lines):
            break
        time.sleep(0.05)
    proc.kill()
    tail = "\n".join(lines[-20:])
    raise RuntimeError(f"{name} did not start (exit code {proc.poll()}):\n{tail}")


BUNDLED_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
# What inferd logs once its gRPC port is bound, and once the start-up models are loaded.
INFERD_READY_LINE = "gRPC (KServe v2) listening on"
INFERD_LOADED = "model(s) requested"


def baseline_argv(python: str = sys.executable) -> list[str]:
    return [python, "-m", "inferd.perf.baseline_server", "--port", "0"]


def kserve_argv(python: str = sys.executable) -> list[str]:
    return [python, "-m", "inferd.perf.kserve_server", "--grpc-port", "0"]


def start_kserve(cpus: Sequence[int] | None = None, extra: Sequence[str] = ()) -> ServerProcess:
    # KServe imports FastAPI, ray's hooks and more before it listens: allow it time.
    return start("kserve", [*kserve_argv(), *extra], cpus, timeout=120, ready_line="kserve gRPC listening on")


def start_inferd(
    name: str,
    env: Mapping[str, str],
    cpus: Sequence[int] | None,
    repository: Path | None = None,
    models: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> ServerProcess:
    """``inferd serve`` (gRPC only) as its build (``env``) runs it, on the given repository or
    the current checkout's bundled one (also for an older build: the same models for both)."""
    argv = [*inferd_argv(repository or BUNDLED_REPOSITORY, models), *extra]
    return start(name, argv, cpus, ready_line=INFERD_READY_LINE, wait_for=INFERD_LOADED, env=env)


def inferd_argv(repository: Path | None = None, models: Sequence[str] = (), python: str = sys.executable) -> list[str]:
    """``inferd serve`` with gRPC only, on any free port; only ``models`` loaded when given
    (explicit mode), so that other models' frameworks do not share the CPU."""
    argv = [
        python,
        "-m",
        "inferd.server.cli",
        "serve",
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        "--metrics-port",
        "0",
        "--allow-http",
        "false",
        "--allow-metrics",
        "false",
    ]
    if models:
        argv += ["--model-control-mode", "explicit"]
        for m in models:
            argv += ["--load-model", m]
    else:
        argv += ["--model-control-mode", "none"]
    if repository is not None:
        argv += ["--model-repository", str(repository)]
    return argv
