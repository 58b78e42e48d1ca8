"""End-to-end sealing of party-to-party payloads, so a router cannot read them.

Every party-to-party message travels through the coordinator, and in a deployment through
the engine's server (Flower's SuperLink and ServerApp). The protocols only ever allow the
*receiving party* to read such a payload: an embedding is plaintext to the active party,
not to whoever relays it. Sealing makes that true of the bytes on the way:

* each party holds a long-term X25519 key pair (:class:`SealingKey`) and publishes the
  public half at setup; every party pins the public keys it was given
  (:class:`PinnedKeys`) and refuses a later, different key for the same name;
* a payload from ``A`` to ``B`` is encrypted under a key derived by HKDF-SHA256 from the
  X25519 shared secret of ``A`` and ``B``, a fresh random 16-byte salt and the direction
  ``A -> B``, with ChaCha20-Poly1305; the message header (sender, receiver, kind, round) is
  the associated data, so a sealed payload cannot be replayed under another header,
  another direction or another round without the receiver noticing;
* the router sees the header, the length and the salt; the transcript labels such a
  payload ``sealed`` for every hop that is not its receiver.

All primitives come from ``cryptography``; randomness from :mod:`os.urandom` through it.
The key pair is static (no forward secrecy across a run): a party that loses its private
key exposes the payloads sent to it in runs that used that key, which is why keys are per
run unless an operator pins long-term ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vfl.core.errors import VFLError

#: Wire version of a sealed payload; a different first byte is refused.
VERSION = 1
_SALT_BYTES = 16
_NONCE = b"\x00" * 12  # every key is used once (fresh salt per payload), so a fixed nonce is safe
_INFO = b"vfl/seal/v1"
PUBLIC_KEY_BYTES = 32


class SealingError(VFLError):
    """A sealed payload could not be opened or a key could not be used."""


class KeyPinningError(SealingError):
    """A party presented a public key other than the one pinned for it at setup."""


def _header(sender: str, receiver: str, kind: str, round: int | None) -> bytes:
    # Length-prefixed fields: "a|bc" and "ab|c" never collide.
    parts = [sender, receiver, kind, "" if round is None else str(int(round))]
    out = bytearray()
    for p in parts:
        b = p.encode("utf-8")
        out += len(b).to_bytes(4, "big") + b
    return bytes(out)


def _key(shared: bytes, salt: bytes, sender: str, receiver: str) -> bytes:
    info = _INFO + _header(sender, receiver, "", None)
    return HKDF(hashes.SHA256(), 32, salt, info).derive(shared)


def public_key_from_bytes(data: bytes) -> X25519PublicKey:
    if not isinstance(data, bytes) or len(data) != PUBLIC_KEY_BYTES:
        raise SealingError(
            f"an X25519 public key is {PUBLIC_KEY_BYTES} raw bytes; got "
            f"{type(data).__name__} of length {len(data) if hasattr(data, '__len__') else '?'}"
        )
    return X25519PublicKey.from_public_bytes(data)


@dataclass
class SealingKey:
    """One party's X25519 key pair (the private half never leaves the party)."""

    name: str
    _private: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate, repr=False)

    @property
    def public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def _shared(self, other: bytes) -> bytes:
        return self._private.exchange(public_key_from_bytes(other))

    def seal(self, receiver: str, receiver_public: bytes, kind: str, round: int | None,
             plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` from this party to ``receiver`` under the given header."""
        salt = os.urandom(_SALT_BYTES)
        key = _key(self._shared(receiver_public), salt, self.name, receiver)
        aad = _header(self.name, receiver, kind, round)
        return bytes([VERSION]) + salt + ChaCha20Poly1305(key).encrypt(_NONCE, plaintext, aad)

    def open(self, sender: str, sender_public: bytes, kind: str, round: int | None,
             sealed: bytes) -> bytes:
        """Decrypt a payload ``sender`` sealed to this party; any change to the bytes, the
        header or the direction raises :class:`SealingError`."""
        if not isinstance(sealed, bytes) or len(sealed) < 1 + _SALT_BYTES + 16:
            raise SealingError(f"a sealed payload from {sender!r} is too short to open")
        if sealed[0] != VERSION:
            raise SealingError(f"sealed payload version {sealed[0]} from {sender!r}; expected "
                               f"{VERSION}")
        salt, body = sealed[1 : 1 + _SALT_BYTES], sealed[1 + _SALT_BYTES :]
        key = _key(self._shared(sender_public), salt, sender, self.name)
        try:
            return ChaCha20Poly1305(key).decrypt(_NONCE, body, _header(sender, self.name, kind,
                                                                         round))
        except InvalidTag:
            raise SealingError(
                f"the payload of {kind!r} from {sender!r} (round {round}) does not open with "
                "the pinned key: it was altered, replayed under another header, or sealed for "
                "another receiver"
            ) from None


class PinnedKeys:
    """The public keys a party accepted at setup, by party name; a name keeps its key."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}

    def pin(self, name: str, public: bytes) -> None:
        public_key_from_bytes(public)  # validates length and encoding
        known = self._keys.get(name)
        if known is not None and known != public:
            raise KeyPinningError(
                f"{name!r} presented a different public key than the one pinned at setup; "
                "refusing it (restart the run's setup if the party really changed its key)"
            )
        self._keys[name] = bytes(public)

    def __getitem__(self, name: str) -> bytes:
        try:
            return self._keys[name]
        except KeyError:
            raise KeyPinningError(
                f"no public key is pinned for {name!r}; it was not part of this run's setup"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._keys

    def names(self) -> list[str]:
        return sorted(self._keys)
