"""TLS for the three ports: certificate files checked once at start-up, and reloaded on SIGHUP.

Each port that serves TLS has one :class:`TlsFiles` (the flags' paths) and, once started, one
:class:`TlsEndpoint` that holds what was read. A reload reads the same paths again and, when
they still form a valid pair, applies them to new handshakes only: connections already open
keep the certificate they were set up with, so nothing is dropped.

* gRPC on grpc.aio: ``grpc.dynamic_ssl_server_credentials`` asks ``fetch`` for a new
  configuration at each handshake; it hands one over once after a reload, ``None`` (no change)
  otherwise.
* gRPC on grpc++ (the native front end): grpc++ reads certificate files itself and reads them
  again every second. It gets inferd's own copies (``native_files``), in a private folder: the
  certificate chain and the key in one file, written in one rename with a modification time
  that differs from the previous one, so grpc++ never reads half of a rotation (it compares the
  file's time before and after reading). A reload rewrites them once it has checked the new
  pair, so new handshakes present it within about a second.
* HTTP and metrics (uvicorn): ``load_cert_chain`` on the live ``ssl.SSLContext`` changes what
  new handshakes present. A new root certificate is added to the trusted set (OpenSSL cannot
  drop one from a live context): a rotated CA is trusted beside the old one until a restart.

Errors name the flag and the file, and subclass ``OSError`` so that ``inferd serve`` reports
them in one line as it does a busy port.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("inferd")


class TlsError(OSError):
    """A certificate or key the flags name is missing, unreadable or does not fit."""


@dataclass(frozen=True)
class TlsFiles:
    """One port's TLS flags: ``--<port>-server-cert``, ``--<port>-server-key``,
    ``--<port>-root-cert`` and, with ``mutual``, client certificates signed by the root are required."""

    port: str  # "grpc", "http" or "metrics": names the flags in messages
    cert: Path
    key: Path
    root: Path | None = None
    mutual: bool = False

    def flag(self, what: str) -> str:
        return f"--{self.port}-{what}"


@dataclass(frozen=True)
class _Material:
    cert: bytes
    key: bytes
    root: bytes | None


def _read(files: TlsFiles, path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{files.flag(what)}: no such file: {path}") from None
    except OSError as e:
        raise TlsError(f"{files.flag(what)}: cannot read {path}: {e.strerror or e}") from None
    if b"-----BEGIN" not in data:
        raise TlsError(f"{files.flag(what)}: {path} is not a PEM file (no '-----BEGIN' line)")
    return data


def check_files(files: TlsFiles) -> None:
    """The flags alone: mutual TLS needs a root certificate to check clients against."""
    if files.mutual and files.root is None:
        raise TlsError(
            f"{files.flag('use-ssl-mutual')} needs {files.flag('root-cert')}: the CA that client certificates must chain to"
        )


def _load(files: TlsFiles, context: ssl.SSLContext) -> _Material:
    """Read the files and load them into ``context``, which checks that the key fits the cert."""
    check_files(files)
    cert = _read(files, files.cert, "server-cert")
    key = _read(files, files.key, "server-key")
    root = _read(files, files.root, "root-cert") if files.root is not None else None
    try:
        context.load_cert_chain(str(files.cert), str(files.key))
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e):
            raise TlsError(
                f"{files.flag('server-key')} {files.key} does not match the certificate of "
                f"{files.flag('server-cert')} {files.cert}"
            ) from None
        raise TlsError(
            f"{files.flag('server-cert')} {files.cert} / {files.flag('server-key')} {files.key}: "
            f"not a usable certificate and private key ({e.reason or e})"
        ) from None
    if files.root is not None:
        try:
            context.load_verify_locations(cafile=str(files.root))
        except ssl.SSLError as e:
            raise TlsError(
                f"{files.flag('root-cert')} {files.root}: not a usable CA certificate ({e.reason or e})"
            ) from None
    return _Material(cert, key, root)


def _server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED if files.mutual else ssl.CERT_NONE
    return context


IDENTITY_FILE, ROOT_FILE = "identity.pem", "root.pem"


def _write_native(folder: Path, material: _Material) -> None:
    """The files grpc++ reads: each written beside its final name and renamed over it, with a
    modification time (whole seconds, as grpc++ compares them) later than the one it replaces."""
    identity = material.cert.rstrip(b"\n") + b"\n" + material.key
    for name, data in ((IDENTITY_FILE, identity), (ROOT_FILE, material.root)):
        if data is None:
            continue
        final = folder / name
        try:
            previous = final.stat().st_mtime_ns
        except FileNotFoundError:
            previous = 0
        stamp = max(time.time_ns(), previous + 1_000_000_000) // 1_000_000_000 * 1_000_000_000
        part = folder / (name + ".part")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.utime(part, ns=(stamp, stamp))
        os.replace(part, final)


class TlsEndpoint:
    """What one port serves; built once at start-up (raising TlsError), reloaded on SIGHUP."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.ssl_context = _server_context(files)
        self._material = _load(files, self.ssl_context)
        self._pending: Any = None  # a grpc certificate configuration not yet handed over
        self._lock = threading.Lock()  # fetch() runs on grpc's threads
        self._native_dir: Path | None = None  # the copies grpc++ reads (native_files)

    def reload(self) -> None:
        """Read the files again; on success new handshakes use them (TlsError otherwise, and
        the certificate in use stays)."""
        _load(self.files, _server_context(self.files))  # check first: a bad pair changes nothing
        material = _load(self.files, self.ssl_context)
        with self._lock:
            self._material = material
            self._pending = self._grpc_config(material) if self.files.port == "grpc" else None
        if self._native_dir is not None:
            _write_native(self._native_dir, material)

    # --- gRPC on grpc++ -------------------------------------------------------------------
    def native_files(self) -> tuple[str, str]:
        """(identity, root) for grpc++: the files it reads, made on first call; root is "" when
        no root certificate was given. Removed by :meth:`close`."""
        if self._native_dir is None:
            self._native_dir = Path(tempfile.mkdtemp(prefix="inferd-grpc-tls-"))  # mode 0700
            # Also when the server never reaches its stop (a failed start): at exit at the latest.
            weakref.finalize(self, shutil.rmtree, self._native_dir, True)
            _write_native(self._native_dir, self._material)
        root = self._native_dir / ROOT_FILE if self._material.root is not None else None
        return str(self._native_dir / IDENTITY_FILE), str(root) if root is not None else ""

    def close(self) -> None:
        if self._native_dir is not None:
            shutil.rmtree(self._native_dir, ignore_errors=True)
            self._native_dir = None

    # --- gRPC -----------------------------------------------------------------------------
    def grpc_credentials(self) -> Any:
        import grpc

        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config(self._material), self.fetch, require_client_authentication=self.files.mutual
        )

    @staticmethod
    def _grpc_config(material: _Material) -> Any:
        import grpc

        return grpc.ssl_server_certificate_configuration([(material.key, material.cert)], material.root)

    def fetch(self) -> Any:
        """grpc's certificate fetcher: a new configuration once after a reload, else None."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending
