"""gRPC with TLS: inferd on each of its gRPC front ends against NVIDIA's Triton, all serving
Triton's python_backend ``add_sub`` example on a TLS port with certificates made at run time.

Rows per point (clients x batch 1): ``triton`` (pytriton's tritonserver, as ``bench triton``
installs it, with ``--grpc-use-ssl``), ``inferd`` (``--grpc-frontend native``: grpc++ reading
inferd's copies of the certificates) and ``inferd-aio`` (``--grpc-frontend aio``: grpc.aio with
its certificate fetcher). The load is NVIDIA's perf_analyzer with ``--ssl-grpc-use-ssl`` and the
test CA as its root; servers on CPU 0, the load on the other CPUs (``--no-pin`` to share). Each
round measures every row back to back, starting one row later each round; tables give medians
and each row's ratio to Triton.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from . import perf_analyzer, triton_models, triton_server
from .harness import Bench, comparison, exit_status, interleaved, median, module_main, ratio
from .points import Served
from .servers import INFERD_LOADED, INFERD_READY_LINE, ServerProcess, inferd_argv, pin_prefix, split_cpus, start

TRITON, INFERD, INFERD_AIO = "triton", "inferd", "inferd-aio"
MODEL = "add_sub"
READY_TIMEOUT_S = 120.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="clients (default 1 16)")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per point (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="measure every point this many times (default 3)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the servers and the load apart")
    p.add_argument("--triton-venv", type=Path, default=None, metavar="PATH", help="Triton's virtual environment")


def certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(CA, server certificate, server key) for 127.0.0.1, made with openssl."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = folder / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=inferd-bench-ca"],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext],
    ]  # fmt: skip
    for argv in steps:
        try:
            subprocess.run([str(a) for a in argv], check=True, capture_output=True)
        except FileNotFoundError:
            raise SystemExit("inferd perf bench tls: needs the openssl command to make its certificates") from None
    return ca, cert, key


def wait_ready_tls(url: str, ca: Path, proc: subprocess.Popen[str], timeout: float) -> bool:
    """ServerReady and ModelReady of add_sub over TLS (Triton's readiness check is plaintext)."""
    from ..protocol.pb import grpc_service_pb2 as pb
    from ..protocol.pb import grpc_service_pb2_grpc as pb_grpc

    deadline = time.monotonic() + timeout
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    with grpc.secure_channel(url, credentials) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if (
                    stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready
                    and stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=1).ready
                ):
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return False


def start_triton(
    install: triton_server.TritonInstall, repo: Path, tls: list[str], ca: Path, cpus: list[int] | None
) -> ServerProcess:
    port = triton_server.free_port()
    argv = [
        *pin_prefix(cpus),
        *install.argv(repo, port, triton_server.free_port(), triton_server.free_port()),
        *tls,
        "--model-control-mode=explicit",
        f"--load-model={MODEL}",
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, **install.env())
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())

    threading.Thread(target=pump, daemon=True).start()
    server = ServerProcess(TRITON, proc, port, lines)
    if not wait_ready_tls(server.url, ca, proc, READY_TIMEOUT_S):
        server.stop(timeout=5)
        raise RuntimeError(f"{TRITON} did not become ready over TLS:\n" + "\n".join(lines[-30:]))
    return server


def run(a: argparse.Namespace) -> int:
    binary = perf_analyzer.for_load("perf_analyzer")
    if binary is None:
        print("inferd perf bench tls: needs perf_analyzer (make perf-analyzer)", file=sys.stderr)
        return 2
    server_cpus, ncpu = split_cpus(a.no_pin)
    install = triton_server.ensure(a.triton_venv)
    print(f"# {ncpu} CPUs; Triton: {triton_server.PYTRITON}", file=sys.stderr)
    servers: dict[str, ServerProcess] = {}
    with tempfile.TemporaryDirectory(prefix="inferd-bench-tls-") as tmp:
        ca, cert, key = certificates(Path(tmp) / "certs")
        tls = ["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]
        pa_tls = ["--ssl-grpc-use-ssl", f"--ssl-grpc-root-certifications-file={ca}"]
        triton_repo = triton_models.build(Path(tmp) / TRITON, "triton")
        inferd_repo = triton_models.build(Path(tmp) / INFERD, "inferd")
        try:
            servers[TRITON] = start_triton(install, triton_repo, tls, ca, server_cpus)
            for name, frontend in ((INFERD, "native"), (INFERD_AIO, "aio")):
                argv = [*inferd_argv(inferd_repo, [MODEL]), "--grpc-frontend", frontend, *tls]
                servers[name] = start(
                    name, argv, server_cpus, ready_line=INFERD_READY_LINE, wait_for=INFERD_LOADED, env={}
                )

            def one(key: tuple[int, str]) -> Served:
                concurrency, name = key
                try:
                    pt = perf_analyzer.measure(
                        binary, servers[name].url, MODEL, 1, concurrency, a.duration, extra=pa_tls
                    )
                except RuntimeError as e:
                    print(f"# {concurrency} clients {name}: {e}", file=sys.stderr)
                    return Served(0.0, errors=1)
                return Served(pt.rows_per_s, p50_us=pt.p50_us, p99_us=pt.p99_us)

            for name in servers:  # unmeasured: first calls, sessions, handshakes
                one((max(a.concurrency), name))
            keys = [(c, n) for c in a.concurrency for n in servers]
            raw = interleaved(a.rounds, keys, one, lambda k: f"{k[0]} clients {k[1]}")
        finally:
            for s in servers.values():
                s.stop()
    table = {(f"add_sub {c}x1 TLS", n): runs for (c, n), runs in raw.items()}
    points = [f"add_sub {c}x1 TLS" for c in a.concurrency]
    print(f"load: {perf_analyzer.LOAD_LABEL} over gRPC with TLS; medians of {a.rounds} round(s) of {a.duration:g} s\n")
    print(comparison(table, points, [TRITON, INFERD, INFERD_AIO], [(INFERD, TRITON), (INFERD_AIO, TRITON)]))
    for pt in points:
        vs = ratio(median(s.rows_per_s for s in table[(pt, INFERD)]), median(s.rows_per_s for s in table[(pt, TRITON)]))
        print(f"{pt}: inferd {vs:.2f}x Triton's throughput")
    return exit_status(table)


BENCH = Bench(
    "tls",
    "gRPC with TLS: inferd's grpc++ and grpc.aio front ends against Triton on add_sub",
    add_arguments,
    run,
    __doc__ or "",
)

if __name__ == "__main__":
    sys.exit(module_main(BENCH))
