"""Checks before anything connects: is a SuperLink there, and does its certificate verify?

Flower's SuperNode retries a SuperLink that does not answer, and a TLS failure shows up
only in its log. An operator should learn at once, in words, that the address is wrong, the
port is closed, or the certificate was not signed by the CA they were given:
:func:`check_superlink` opens a TCP connection and (with a CA) a TLS handshake and raises
:class:`SuperLinkUnreachableError` or :class:`CertificateError` with what to do.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from vfl.core.errors import ConfigError, TransportError


class DeploymentError(TransportError):
    """A deployed run did not produce its result; the message quotes the log that says why."""


class SuperLinkUnreachableError(DeploymentError):
    """No SuperLink answered at the address given."""


class CertificateError(SuperLinkUnreachableError):
    """The SuperLink's certificate does not verify with the CA given (or not for its host)."""


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"SuperLink address {address!r}: expected HOST:PORT, e.g. "
                          "coordinator.example.org:8000")
    return host.strip("[]"), int(port)


def check_superlink(address: str, root_certificates: str | Path | None = None,
                    timeout: float = 5.0) -> None:
    """Raise unless a SuperLink accepts a connection at ``address`` (and, with
    ``root_certificates``, presents a certificate that CA signed for that host)."""
    host, port = split_address(address)
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise SuperLinkUnreachableError(
            f"no SuperLink answers at {address} ({exc.strerror or exc}); check the address, "
            "that `vfl deploy superlink` runs there, and that the port is open to this machine"
        ) from None
    with raw:
        if root_certificates is None:
            return
        ca = Path(root_certificates)
        if not ca.is_file():
            raise ConfigError(f"root certificates {ca}: no such file; copy the CA certificate "
                              "(ca.pem) the SuperLink's operator gave you")
        context = ssl.create_default_context(cafile=str(ca))
        try:
            with context.wrap_socket(raw, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as exc:
            raise CertificateError(
                f"the SuperLink at {address} presented a certificate that {ca} does not "
                f"verify ({exc.verify_message}); use the ca.pem of this SuperLink's operator, "
                "and a certificate issued for this host name or IP"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            raise CertificateError(
                f"TLS handshake with the SuperLink at {address} failed ({exc}); is it running "
                "with TLS (not --insecure)?"
            ) from None
