"""Per-party signing keys and the run's secret for keyed digests (``RUN_DIR/keys``).

Layout::

    keys/NAME.pub                 Ed25519 public key of party NAME (hex of the 32 raw bytes);
                                  what a verifier uses
    keys/private/NAME.key         its private key (PKCS#8 PEM, mode 0600)
    keys/private/erased-ids.key   the run's secret for keyed digests of erased patient ids

``NAME`` is a party of the run (a vertical party, a horizontal client) or ``coordinator``
(the operator that runs training and serves erasure requests). Keeping every private key
in the run directory is what a single-machine simulation can do; in a deployment each
party keeps its own ``private/NAME.key`` on its own machine (point :class:`Keyring` at it),
and only the public keys are shared. See :mod:`unlearning.audit_log` for what the
signatures do and do not protect against.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from unlearning.errors import AuditLogError
from vfl.core.fileio import atomic_write

COORDINATOR = "coordinator"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise AuditLogError(f"{name!r} cannot name a signing key (letters, digits, _ . -)")
    return name


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public(hex_text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_text.strip()))


def verify_signature(public_hex: str, message: bytes, signature_hex: str) -> bool:
    try:
        load_public(public_hex).verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


class Keyring:
    """The signing keys under ``root`` (``RUN_DIR/keys``)."""

    def __init__(self, root: str | Path, *, fsync: bool = True):
        self.root = Path(root)
        self.private_root = self.root / "private"
        self.fsync = fsync
        self._private: dict[str, Ed25519PrivateKey] = {}
        self._secret: bytes | None = None

    def public_path(self, name: str) -> Path:
        return self.root / f"{check_name(name)}.pub"

    def private_path(self, name: str) -> Path:
        return self.private_root / f"{check_name(name)}.key"

    # -- public keys (all a verifier needs) ----------------------------------------------
    def public_hex(self, name: str) -> str | None:
        p = self.public_path(name)
        return p.read_text().strip() if p.exists() else None

    def public_keys(self) -> dict[str, str]:
        """``{name: public key hex}`` of every ``NAME.pub`` here."""
        if not self.root.is_dir():
            return {}
        return {p.stem: p.read_text().strip() for p in sorted(self.root.glob("*.pub"))
                if _NAME.match(p.stem)}

    # -- private keys (signing) -----------------------------------------------------------
    def has_private(self, name: str) -> bool:
        return name in self._private or self.private_path(name).exists()

    def ensure(self, name: str) -> str:
        """The public key (hex) of ``name``, creating its key pair if it has none. The
        private key is written before the public one; a public file missing after a crash
        is rebuilt from the private key."""
        key = self._load_private(name)
        if key is None:
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            self._private_dir()
            atomic_write(self.private_path(name), pem, fsync=self.fsync)  # mode 0600
            self._private[name] = key
        pub = public_bytes(key.public_key()).hex()
        if self.public_hex(name) != pub:
            if self.public_hex(name) is not None:
                raise AuditLogError(
                    f"{self.public_path(name)} does not match the private key of {name!r}; "
                    "restore the key pair from a trusted copy"
                )
            atomic_write(self.public_path(name), pub + "\n", fsync=self.fsync)
        return pub

    def _private_dir(self) -> None:
        self.private_root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _load_private(self, name: str) -> Ed25519PrivateKey | None:
        key = self._private.get(name)
        if key is None:
            p = self.private_path(name)
            if not p.exists():
                return None
            key = serialization.load_pem_private_key(p.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise AuditLogError(f"{p} is not an Ed25519 private key")
            self._private[name] = key
        return key

    def sign(self, name: str, message: bytes) -> str:
        key = self._load_private(name)
        if key is None:
            raise AuditLogError(
                f"party {name!r} has no private key at {self.private_path(name)}; only the "
                "party itself can sign its audit entries"
            )
        return key.sign(message).hex()

    # -- the run's secret for keyed digests --------------------------------------------------
    @property
    def secret_path(self) -> Path:
        return self.private_root / "erased-ids.key"

    def secret(self, *, create: bool = False) -> bytes | None:
        if self._secret is None:
            p = self.secret_path
            if p.exists():
                self._secret = bytes.fromhex(p.read_text().strip())
            elif create:
                import secrets

                value = secrets.token_bytes(32)
                self._private_dir()
                atomic_write(p, value.hex() + "\n", fsync=self.fsync)  # mode 0600
                self._secret = value
        return self._secret

    def id_digest(self, pid: str, *, create: bool = False) -> str | None:
        """The keyed digest (HMAC-SHA256 under the run's secret) of a patient id: binds the
        deletion registry to the audit log without writing the id into the log (a plain
        hash of a pseudonymous id could be inverted by trying every id)."""
        secret = self.secret(create=create)
        if secret is None:
            return None
        return hmac.new(secret, str(pid).encode(), hashlib.sha256).hexdigest()
