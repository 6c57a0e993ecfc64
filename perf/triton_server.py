"""NVIDIA's Triton Inference Server, the real one, for benchmarks: installed on demand from the
PyPI wheel of PyTriton (``nvidia-pytriton``, which carries ``tritonserver`` 2.51 with its Python
backend), laid out as PyTriton lays it out and started as a subprocess.

The wheel pins numpy < 2, so it goes into a virtual environment of its own (by default
``${XDG_CACHE_HOME:-~/.cache}/inferd/pytriton-0.5.14``), never into inferd's. Installing is
idempotent: a stamp file in that environment records what was installed and laid out.

Two things the Python backend's stub needs from its environment: the stub embeds Python and
finds its ``sys.prefix`` by looking for ``python3`` on PATH (it ignores PYTHONPATH), so the
environment's ``bin`` goes first on PATH and the stub then sees that environment's site-packages
(numpy, onnxruntime); and the stub is linked to ``libpython3.X.so``, taken from the
environment's own interpreter where it has one rather than from whatever the system holds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from ..protocol.pb import grpc_service_pb2 as pb
from ..protocol.pb import grpc_service_pb2_grpc as pb_grpc
from .servers import ServerProcess, pin_prefix

PYTRITON = "nvidia-pytriton==0.5.14"
# onnxruntime for the Python models that run ONNX graphs; it runs on the wheel's numpy 1.26.
PACKAGES = (PYTRITON, "onnxruntime")
STAMP = ".inferd-installed"
LAYOUT = "tritonserver"  # the laid-out server, inside the environment
READY_TIMEOUT_S = 60.0

# What the environment's interpreter reports about itself, for the layout and the server's env.
_PROBE = (
    "import json, sys, sysconfig; print(json.dumps({"
    "'site_packages': sysconfig.get_paths()['purelib'], "
    "'python': f'{sys.version_info[0]}.{sys.version_info[1]}', "
    "'libdir': sysconfig.get_config_var('LIBDIR') if sysconfig.get_config_var('Py_ENABLE_SHARED') else None}))"
)


def default_venv() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "inferd" / f"pytriton-{PYTRITON.split('==')[1]}"


@dataclass(frozen=True)
class TritonInstall:
    """A laid-out Triton: its environment, that environment's site-packages and interpreter
    version, the folder holding ``bin``, ``backends`` and ``caches``, and the interpreter's
    shared-library folder (None when it has no libpython)."""

    venv: Path
    site_packages: Path
    python: str
    folder: Path
    libdir: str | None = None

    @property
    def binary(self) -> Path:
        return self.folder / "bin" / "tritonserver"

    def env(self) -> dict[str, str]:
        """What the server's process adds to the environment (see the module's docstring)."""
        libs = [str(self.site_packages / "nvidia_pytriton.libs"), *([self.libdir] if self.libdir else [])]
        if os.environ.get("LD_LIBRARY_PATH"):
            libs.append(os.environ["LD_LIBRARY_PATH"])
        return {
            "LD_LIBRARY_PATH": ":".join(libs),
            "PYTHONPATH": str(self.site_packages),
            "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}",
        }

    def argv(self, repository: Path, grpc_port: int, http_port: int, metrics_port: int) -> list[str]:
        return [
            str(self.binary),
            f"--model-repository={repository}",
            f"--backend-directory={self.folder / 'backends'}",
            f"--cache-directory={self.folder / 'caches'}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            "--allow-gpu-metrics=false",
            f"--grpc-port={grpc_port}",
            f"--http-port={http_port}",
            f"--metrics-port={metrics_port}",
            "--exit-timeout-secs=5",
        ]


def _say(message: str) -> None:
    print(f"# triton: {message}", file=sys.stderr, flush=True)


def _run(argv: Sequence[str], what: str) -> str:
    """Run a step of the installation; on failure, exit 2 saying what failed and why."""
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-2000:]
        print(
            f"inferd perf bench triton: {what} failed (exit code {done.returncode}); "
            f"is the package index reachable?\n{tail}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return done.stdout


def _layout(venv: Path, site_packages: Path, python: str) -> Path:
    """Copy the wheel's server into ``venv/tritonserver`` as PyTriton does, with the Python
    backend's stub for this interpreter version."""
    dist = site_packages / "pytriton" / "tritonserver"
    stub = dist / "python_backend_stubs" / python / "triton_python_backend_stub"
    if not stub.exists():
        print(f"inferd perf bench triton: {PYTRITON} has no Python backend stub for Python {python}", file=sys.stderr)
        raise SystemExit(2)
    folder = venv / LAYOUT
    shutil.rmtree(folder, ignore_errors=True)
    for part in ("bin", "backends", "caches"):
        shutil.copytree(dist / part, folder / part)
    shutil.copy2(stub, folder / "backends" / "python" / "triton_python_backend_stub")
    return folder


def ensure(venv: Path | None = None) -> TritonInstall:
    """The Triton in ``venv`` (default: ``default_venv()``), installed and laid out first when the
    stamp says it is not; says what it does on stderr. Exits 2 when pip fails (offline, say)."""
    venv = (venv or default_venv()).expanduser().resolve()
    stamp = venv / STAMP
    if stamp.exists():
        recorded = json.loads(stamp.read_text())
        if recorded.get("packages") == list(PACKAGES) and (Path(recorded["folder"]) / "bin" / "tritonserver").exists():
            return TritonInstall(
                venv,
                Path(recorded["site_packages"]),
                recorded["python"],
                Path(recorded["folder"]),
                recorded.get("libdir"),
            )
    python = venv / "bin" / "python"
    if not python.exists():
        _say(f"creating a virtual environment at {venv} (first run only)")
        _run([sys.executable, "-m", "venv", str(venv)], f"python -m venv {venv}")
    _say(f"installing {' '.join(PACKAGES)} into {venv} (about 450 MB, first run only)")
    _run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *PACKAGES],
        f"pip install {' '.join(PACKAGES)}",
    )
    info = json.loads(_run([str(python), "-c", _PROBE], "probing the environment's Python"))
    site_packages = Path(info["site_packages"])
    _say(f"laying out tritonserver in {venv / LAYOUT}")
    folder = _layout(venv, site_packages, info["python"])
    install = TritonInstall(venv, site_packages, info["python"], folder, info["libdir"])
    stamp.write_text(
        json.dumps(
            {
                "packages": list(PACKAGES),
                "site_packages": str(site_packages),
                "python": install.python,
                "folder": str(folder),
                "libdir": install.libdir,
            },
            indent=1,
        )
        + "\n"
    )
    return install


def free_port() -> int:
    """A port that was free a moment ago. Triton cannot listen on port 0 and report the port it
    got (it logs the port it was asked for), so unlike the other servers it is given a port that
    the OS just handed out to a socket that is closed again. Another process may take it in
    between; ``start`` then retries once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, models: Sequence[str], proc: subprocess.Popen[str], timeout: float) -> bool:
    """Poll gRPC ServerReady and ModelReady of every model until all are ready (True), the
    process exits or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready and all(
                    stub.ModelReady(pb.ModelReadyRequest(name=m), timeout=1).ready for m in models
                ):
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return False


def _bind_failed(lines: Sequence[str]) -> bool:
    """Whether Triton's log says a port was taken ("Socket '127.0.0.1:N' already in use")."""
    return any("already in use" in line for line in lines)


def start(
    install: TritonInstall,
    repository: Path,
    models: Sequence[str],
    cpus: Sequence[int] | None = None,
    name: str = "triton",
    timeout: float = READY_TIMEOUT_S,
) -> ServerProcess:
    """``tritonserver`` on ``repository`` (pinned to ``cpus``; its Python stubs, its children,
    inherit the affinity), once ServerReady and ``models`` are ready; its ``port`` is gRPC's,
    ``http_port`` HTTP's."""
    env = dict(os.environ, **install.env())
    for attempt in (1, 2):
        grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
        argv = [*pin_prefix(cpus), *install.argv(repository, grpc_port, http_port, metrics_port)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        lines: list[str] = []

        def pump(proc: subprocess.Popen[str] = proc, lines: list[str] = lines) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip())

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        server = ServerProcess(name, proc, grpc_port, lines, http_port)
        if wait_ready(server.url, models, proc, timeout):
            return server
        server.stop(timeout=5)
        reader.join(timeout=2)  # the log's last lines, which say why it stopped
        if attempt == 1 and _bind_failed(lines):
            _say("a port was taken before Triton bound it; retrying with other ports")
            continue
        tail = "\n".join(lines[-30:])
        raise RuntimeError(f"{name} did not become ready in {timeout:g} s (exit code {proc.poll()}):\n{tail}")
    raise AssertionError("unreachable")
