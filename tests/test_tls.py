"""TLS on the gRPC, HTTP and metrics ports with certificates made at test time: tritonclient's
SSL options, mutual TLS (no, a wrong and an expired client certificate are refused), a
plaintext client against a TLS port, start-up errors that name the flag and the file, and
SIGHUP picking up rotated certificates without dropping an open connection."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import gevent.ssl
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from inferd.server.tls import TlsFiles
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, start_server, test_settings
from .models import bundled, write
from .serving import serve_argv
from .tls_certs import Certificates, make_certificates

ONES = np.ones((1, 16), np.float32)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls-repo")
    write(root, "add_sub", bundled.ADD_SUB_CONFIG, bundled.add_sub_model())
    return root


@pytest.fixture(scope="module")
def tls_server(repo: Path, certs: Certificates) -> Iterator[RunningServer]:
    """gRPC: TLS; HTTP: mutual TLS; metrics: TLS."""
    c = certs
    running = start_server(
        test_settings(
            repo,
            grpc_tls=TlsFiles("grpc", c.server.cert, c.server.key),
            http_tls=TlsFiles("http", c.server.cert, c.server.key, c.ca.path, mutual=True),
            metrics_tls=TlsFiles("metrics", c.server.cert, c.server.key),
        )
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def mutual_grpc(repo: Path, certs: Certificates) -> Iterator[RunningServer]:
    c = certs
    running = start_server(
        test_settings(
            repo,
            grpc_tls=TlsFiles("grpc", c.server.cert, c.server.key, c.ca.path, mutual=True),
            allow_http=False,
            allow_metrics=False,
        )
    )
    yield running
    running.stop()


def grpc_inputs() -> list[grpcclient.InferInput]:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        i = grpcclient.InferInput(name, [1, 16], "FP32")
        i.set_data_from_numpy(ONES)
        inputs.append(i)
    return inputs


def test_grpc_tls_with_tritonclient(tls_server: RunningServer, certs: Certificates) -> None:
    client = grpcclient.InferenceServerClient(tls_server.grpc_url, ssl=True, root_certificates=str(certs.ca.path))
    result = client.infer("add_sub", grpc_inputs())
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), ONES * 2)


def test_plaintext_grpc_client_against_tls_port_fails(tls_server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(tls_server.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.is_server_live(client_timeout=5)
    assert info.value.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"), info.value


@pytest.mark.parametrize("who", ["client", "none", "wrong_client", "expired_client"])
def test_grpc_mutual_tls(mutual_grpc: RunningServer, certs: Certificates, who: str) -> None:
    pair = getattr(certs, who, None)
    options = {"private_key": str(pair.key), "certificate_chain": str(pair.cert)} if pair is not None else {}
    client = grpcclient.InferenceServerClient(
        mutual_grpc.grpc_url, ssl=True, root_certificates=str(certs.ca.path), **options
    )
    if who == "client":
        result = client.infer("add_sub", grpc_inputs())
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), ONES * 0)
        return
    with pytest.raises(InferenceServerException) as info:
        client.is_server_live(client_timeout=5)
    assert info.value.status() == "StatusCode.UNAVAILABLE", info.value


def http_client(url: str, certs: Certificates, who: str | None) -> httpclient.InferenceServerClient:
    options: dict[str, str] = {"ca_certs": str(certs.ca.path)}
    if who is not None:
        pair = getattr(certs, who)
        options |= {"certfile": str(pair.cert), "keyfile": str(pair.key)}
    return httpclient.InferenceServerClient(
        url, ssl=True, ssl_options=options, ssl_context_factory=gevent.ssl.create_default_context
    )


def test_https_mutual_tls_with_tritonclient(tls_server: RunningServer, certs: Certificates) -> None:
    client = http_client(tls_server.http_url, certs, "client")
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        i = httpclient.InferInput(name, [1, 16], "FP32")
        i.set_data_from_numpy(ONES)
        inputs.append(i)
    assert client.is_server_ready()
    np.testing.assert_array_equal(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), ONES * 2)
    client.close()


@pytest.mark.parametrize("who", [None, "wrong_client", "expired_client"])
def test_https_refuses_missing_wrong_or_expired_client_certificates(
    tls_server: RunningServer, certs: Certificates, who: str | None
) -> None:
    context = ssl.create_default_context(cafile=str(certs.ca.path))
    if who is not None:
        pair = getattr(certs, who)
        context.load_cert_chain(str(pair.cert), str(pair.key))
    with httpx.Client(verify=context, timeout=5) as client, pytest.raises((httpx.HTTPError, ssl.SSLError)):
        client.get(f"https://{tls_server.http_url}/v2/health/ready")


def test_plaintext_http_client_against_tls_port_fails(tls_server: RunningServer) -> None:
    with httpx.Client(timeout=5) as client, pytest.raises(httpx.HTTPError):
        client.get(f"http://{tls_server.metrics_url}/metrics")


def test_metrics_over_https(tls_server: RunningServer, certs: Certificates) -> None:
    context = ssl.create_default_context(cafile=str(certs.ca.path))
    with httpx.Client(verify=context, timeout=5) as client:
        response = client.get(f"https://{tls_server.metrics_url}/metrics")
    assert response.status_code == 200 and "nv_inference_request_success" in response.text


def test_expired_server_certificate_is_refused_by_clients(repo: Path, certs: Certificates) -> None:
    pair = certs.expired_server
    running = start_server(
        test_settings(repo, http_tls=TlsFiles("http", pair.cert, pair.key), allow_grpc=False, allow_metrics=False)
    )
    try:
        context = ssl.create_default_context(cafile=str(certs.ca.path))
        with httpx.Client(verify=context, timeout=5) as client, pytest.raises(httpx.ConnectError, match="expired"):
            client.get(f"https://{running.http_url}/v2/health/live")
    finally:
        running.stop()


# --- start-up errors ----------------------------------------------------------------------------
def run_serve(repo: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        serve_argv("--model-repository", str(repo), "--model-control-mode", "none", *flags),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_startup_errors_name_the_flag_and_the_file(repo: Path, certs: Certificates, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    done = run_serve(
        repo, "--grpc-use-ssl=true", f"--grpc-server-cert={missing}", f"--grpc-server-key={certs.server.key}"
    )
    assert done.returncode == 2
    assert "--grpc-server-cert" in done.stderr and str(missing) in done.stderr and "Traceback" not in done.stderr

    # A key that is not the certificate's.
    done = run_serve(
        repo,
        "--http-use-ssl=true",
        f"--http-server-cert={certs.server.cert}",
        f"--http-server-key={certs.client.key}",
    )
    assert done.returncode == 2
    assert "--http-server-key" in done.stderr and "does not match" in done.stderr, done.stderr
    assert str(certs.client.key) in done.stderr and "Traceback" not in done.stderr

    # Mutual TLS without the CA to check clients against; a key without --*-use-ssl.
    done = run_serve(
        repo,
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={certs.server.cert}",
        f"--grpc-server-key={certs.server.key}",
    )
    assert done.returncode == 2 and "--grpc-root-cert" in done.stderr and "Traceback" not in done.stderr
    done = run_serve(repo, f"--metrics-server-key={certs.server.key}")
    assert done.returncode == 2 and "--metrics-use-ssl" in done.stderr and "Traceback" not in done.stderr


# --- SIGHUP rotation ----------------------------------------------------------------------------
def peer_common_name(address: str, ca: Path, alpn: list[str] | None = None) -> tuple[ssl.SSLSocket, str]:
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    if alpn:
        context.set_alpn_protocols(alpn)
    sock = context.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname=host)
    subject = dict(item[0] for item in sock.getpeercert()["subject"])
    return sock, subject["commonName"]


def grpc_name_becomes(address: str, ca: Path, name: str, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        sock, seen = peer_common_name(address, ca, ["h2"])
        sock.close()
        if seen == name or time.monotonic() > deadline:
            return seen == name
        time.sleep(0.2)


def http_get(sock: ssl.SSLSocket, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    return data.split(b"\r\n", 1)[0]


def test_sighup_reloads_rotated_certificates_without_dropping_connections(
    repo: Path, certs: Certificates, tmp_path: Path
) -> None:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(certs.server.cert, cert)
    shutil.copy(certs.server.key, key)
    tls = [
        f"--{p}-{f}={v}"
        for p in ("grpc", "http")
        for f, v in (("use-ssl", "true"), ("server-cert", cert), ("server-key", key))
    ]
    proc = subprocess.Popen(
        serve_argv("--model-repository", str(repo), "--model-control-mode", "none", "--allow-metrics=false", *tls),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reloaded = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "certificates reloaded" in line and "http" in line:
                reloaded.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("serving:" in line for line in lines):
            time.sleep(0.05)
        text = "".join(lines)
        grpc_url = re.search(r"gRPC \(KServe v2\) listening on ([\d.]+:\d+)", text).group(1)  # type: ignore[union-attr]
        http_url = re.search(r"HTTP \(KServe v2\) listening on ([\d.]+:\d+)", text).group(1)  # type: ignore[union-attr]

        before, name = peer_common_name(http_url, certs.ca.path)
        assert name == "server-a"
        assert http_get(before, "/v2/health/live") == b"HTTP/1.1 200 OK"
        grpc_client = grpcclient.InferenceServerClient(grpc_url, ssl=True, root_certificates=str(certs.ca.path))
        assert grpc_client.is_server_live()
        assert grpc_name_becomes(grpc_url, certs.ca.path, "server-a", timeout_s=0)

        shutil.copy(certs.server_b.cert, cert)
        shutil.copy(certs.server_b.key, key)
        proc.send_signal(signal.SIGHUP)
        assert reloaded.wait(20), "".join(lines)

        # New handshakes present B (grpc++ reads its copies again within a second); the
        # connections opened before keep working.
        after, name = peer_common_name(http_url, certs.ca.path)
        after.close()
        assert name == "server-b"
        assert grpc_name_becomes(grpc_url, certs.ca.path, "server-b")
        assert http_get(before, "/v2/health/live") == b"HTTP/1.1 200 OK"
        assert grpc_client.is_server_live()
        assert proc.poll() is None
        before.close()
        grpc_client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
