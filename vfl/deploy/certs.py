"""TLS certificates for a test federation, made with ``cryptography``.

:func:`make_test_certificates` writes a throwaway certificate authority and a SuperLink
certificate it signed, valid for the given host names and IP addresses (by default the
local machine). The SuperLink serves with ``server.pem`` / ``server.key`` and ``ca.pem``;
every SuperNode and the ``flwr`` CLI trust ``ca.pem``. For a real consortium, use
certificates from the consortium's own CA instead; these are for tests and demos.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vfl.core.fileio import atomic_write


@dataclass(frozen=True)
class TestCertificates:
    ca: Path  # the CA certificate: what clients trust
    cert: Path  # the SuperLink's certificate
    key: Path  # the SuperLink's private key (mode 0600)


def _name(common: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vfl test federation"),
        x509.NameAttribute(NameOID.COMMON_NAME, common),
    ])


def _alt_names(hosts) -> list:
    out = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def make_test_certificates(directory: str | Path, hosts=("127.0.0.1", "localhost"),
                           days: int = 30) -> TestCertificates:
    """A CA and a server certificate for ``hosts``, written under ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("vfl test CA"))
        .issuer_name(_name("vfl test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(str(hosts[0])))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = TestCertificates(directory / "ca.pem", directory / "server.pem",
                           directory / "server.key")
    atomic_write(out.ca, ca.public_bytes(serialization.Encoding.PEM))
    atomic_write(out.cert, cert.public_bytes(serialization.Encoding.PEM))
    atomic_write(out.key, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    out.key.chmod(0o600)
    return out
