"""Certificates made at test time with the ``cryptography`` package: a CA, server certificates
for 127.0.0.1/localhost, client certificates, an expired one and one from another CA."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)


@dataclass
class Pair:
    cert: Path
    key: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()


@dataclass
class Authority:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    path: Path

    @property
    def pem(self) -> bytes:
        return self.path.read_bytes()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def authority(folder: Path, name: str) -> Authority:
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(name, key, cert, path)


def issue(ca: Authority, folder: Path, name: str, *, server: bool, expired: bool = False) -> Pair:
    """A certificate ``name`` signed by ``ca``: for a server (127.0.0.1 and localhost) or a client."""
    key = _key()
    start, end = (
        (NOW - datetime.timedelta(days=10), NOW - datetime.timedelta(days=1))
        if expired
        else (
            NOW - datetime.timedelta(days=1),
            NOW + datetime.timedelta(days=30),
        )
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    pair = Pair(folder / f"{name}.crt", folder / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pair.key)
    return pair


@dataclass
class Certificates:
    ca: Authority
    other_ca: Authority
    server: Pair  # for 127.0.0.1 and localhost, signed by ca
    server_b: Pair  # a second one (rotation), CN "server-b"
    client: Pair  # signed by ca
    expired_client: Pair  # signed by ca, no longer valid
    wrong_client: Pair  # signed by other_ca
    expired_server: Pair


def make_certificates(folder: Path) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    ca = authority(folder, "test-ca")
    other = authority(folder, "other-ca")
    return Certificates(
        ca=ca,
        other_ca=other,
        server=issue(ca, folder, "server-a", server=True),
        server_b=issue(ca, folder, "server-b", server=True),
        client=issue(ca, folder, "client", server=False),
        expired_client=issue(ca, folder, "expired-client", server=False, expired=True),
        wrong_client=issue(other, folder, "wrong-client", server=False),
        expired_server=issue(ca, folder, "expired-server", server=True, expired=True),
    )
