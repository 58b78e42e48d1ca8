"""Each client's two X25519 key pairs, the keys derived from them, and encrypted shares.

Two key pairs, as in Bonawitz et al. (CCS 2017) and Bell et al. (CCS 2020)
--------------------------------------------------------------------------
* ``c`` -- for *encrypting* the shares a client sends to each holder through the server:
  the server relays them but must not read them (it would otherwise hold every share).
* ``s`` -- for the *pairwise masks*: ``u`` and ``v`` agree on ``X25519(s_u^SK, s_v^PK)``.
  When ``u`` drops out, its holders hand the server shares of ``s_u^SK`` and the server
  recomputes ``u``'s masks with its surviving neighbours to cancel them.

They must be separate: rebuilding ``s_u^SK`` for a dropped client must not also open the
share ciphertexts addressed to ``u`` (which hold other clients' secrets). Both pairs are
fresh for every aggregation: a rebuilt ``s_u^SK`` exposes all of ``u``'s masks *of that
aggregation*, so reusing it in the next one would expose that one too.

Derivations (HKDF-SHA256, RFC 5869)
-----------------------------------
A raw X25519 output is not a uniform key, so every key goes through HKDF with a label and
the context in ``info``: the purpose, the session (e.g. the run id) and the aggregation
round, and the two names. The pairwise *mask seed* is symmetric (both ends must derive the
same seed: the names are put in sorted order); the share *encryption key* is directional
(sender, then receiver), so ``u -> v`` and ``v -> u`` never share a key.

Encrypted shares (ChaCha20-Poly1305, RFC 8439)
-----------------------------------------------
A fresh random 96-bit nonce per ciphertext; the associated data binds the purpose, session,
round, sender and receiver, so the server cannot pass a ciphertext off as coming from
another client, going to another client or belonging to another round, and any flipped bit
fails authentication (:class:`~horizontal.secagg.errors.ShareDecryptionError`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from horizontal.secagg.errors import KeyAgreementError, ShareDecryptionError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_LABEL = b"vfl/secagg/v1/"


def _fields(*parts: str | int | bytes) -> bytes:
    """Length-prefixed concatenation: ``("a|b", "c")`` and ``("a", "b|c")`` never collide."""
    out = bytearray()
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode("utf-8")
        out += len(b).to_bytes(4, "big") + b
    return bytes(out)


@dataclass(frozen=True)
class Context:
    """What every derivation and every associated datum is bound to: the session (a run id)
    and the aggregation round, so nothing carries over from one aggregation to the next."""

    session: str = ""
    round: int = 0

    def encode(self) -> bytes:
        return _encode_context(self.session, int(self.round))


@functools.lru_cache(maxsize=64)
def _encode_context(session: str, round: int) -> bytes:  # public values, asked once per key
    return _fields(session, round)


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair as raw bytes (32 + 32); the private half never leaves the client
    except as Shamir shares of ``s`` when the client drops out."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        key = X25519PrivateKey.generate()
        return cls(key.private_bytes_raw(), key.public_key().public_bytes_raw())

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        return cls(private, public_from_private(private))

    def __repr__(self) -> str:  # never print a private key
        return f"KeyPair(public={self.public.hex()[:16]}...)"


@dataclass(frozen=True)
class ClientKeys:
    """A client's two key pairs for one aggregation: ``c`` (share encryption), ``s`` (masks)."""

    c: KeyPair
    s: KeyPair

    @classmethod
    def generate(cls) -> ClientKeys:
        return cls(KeyPair.generate(), KeyPair.generate())

    def public(self) -> dict:
        """The round-0 advertisement payload."""
        return {"c_pk": self.c.public, "s_pk": self.s.public}


def _check_key(data, what: str) -> bytes:
    if not isinstance(data, bytes) or len(data) != KEY_BYTES:
        raise KeyAgreementError(f"{what} must be {KEY_BYTES} raw bytes")
    return data


def public_from_private(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(_check_key(private, "an X25519 private key"))
    return key.public_key().public_bytes_raw()


def agree(private: bytes, peer_public: bytes) -> bytes:
    """The raw X25519 shared secret; a low-order peer key (all-zero output) is refused."""
    return agree_many(private, [peer_public])[0]


def agree_many(private: bytes, peer_publics) -> list[bytes]:
    """:func:`agree` with each of ``peer_publics`` (the private key is loaded once: loading
    it derives its public key, as long as one agreement)."""
    priv = X25519PrivateKey.from_private_bytes(_check_key(private, "an X25519 private key"))
    out = []
    for peer_public in peer_publics:
        pub = X25519PublicKey.from_public_bytes(_check_key(peer_public, "an X25519 public key"))
        try:
            shared = priv.exchange(pub)
        except ValueError as exc:  # OpenSSL refuses low-order points
            raise KeyAgreementError(f"degenerate X25519 public key: {exc}") from None
        if shared == bytes(KEY_BYTES):
            raise KeyAgreementError("degenerate X25519 public key (all-zero shared secret)")
        out.append(shared)
    return out


def _hkdf(shared: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), KEY_BYTES, None, info).derive(shared)


def _mask_info(me: str, peer: str, context: Context) -> bytes:
    lo, hi = sorted((me, peer))
    return _LABEL + b"mask" + context.encode() + _fields(lo, hi)


def _share_info(sender: str, receiver: str, context: Context) -> bytes:
    return _LABEL + b"share-key" + context.encode() + _fields(sender, receiver)


def mask_seed(s_private: bytes, peer_s_public: bytes, me: str, peer: str,
              context: Context) -> bytes:
    """The 32-byte seed of the pairwise mask between ``me`` and ``peer`` (symmetric: both
    derive the same seed; the server derives it too from a rebuilt ``s_private``)."""
    return _hkdf(agree(s_private, peer_s_public), _mask_info(me, peer, context))


def mask_seeds(s_private: bytes, peers: Mapping[str, bytes], me: str,
               context: Context) -> dict[str, bytes]:
    """:func:`mask_seed` with each ``peer -> its s public key`` (one key load)."""
    names = list(peers)
    shared = agree_many(s_private, [peers[v] for v in names])
    return {v: _hkdf(z, _mask_info(me, v, context)) for v, z in zip(names, shared, strict=True)}


def share_key(c_private: bytes, peer_c_public: bytes, sender: str, receiver: str,
              context: Context) -> bytes:
    """The directional ChaCha20-Poly1305 key for shares from ``sender`` to ``receiver``."""
    return _hkdf(agree(c_private, peer_c_public), _share_info(sender, receiver, context))


def share_keys(c_private: bytes, peers: Mapping[str, bytes], me: str,
               context: Context) -> dict[str, tuple[bytes, bytes]]:
    """For each ``peer -> its c public key``: ``(key me -> peer, key peer -> me)``, the two
    :func:`share_key` directions from one agreement (the raw secret is the same; HKDF's
    ``info`` separates them)."""
    names = list(peers)
    shared = agree_many(c_private, [peers[v] for v in names])
    return {v: (_hkdf(z, _share_info(me, v, context)), _hkdf(z, _share_info(v, me, context)))
            for v, z in zip(names, shared, strict=True)}


def _associated_data(sender: str, receiver: str, context: Context) -> bytes:
    return _LABEL + b"share" + context.encode() + _fields(sender, receiver)


def encrypt_share(key: bytes, plaintext: bytes, sender: str, receiver: str,
                  context: Context) -> bytes:
    """``nonce || ciphertext || tag`` of ``plaintext`` for ``receiver``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(
        nonce, plaintext, _associated_data(sender, receiver, context))


def decrypt_share(key: bytes, blob: bytes, sender: str, receiver: str,
                  context: Context) -> bytes:
    """The plaintext, or :class:`ShareDecryptionError` if anything was changed or rebound."""
    if not isinstance(blob, bytes) or len(blob) < NONCE_BYTES + TAG_BYTES:
        raise ShareDecryptionError(f"encrypted share from {sender!r} to {receiver!r} is "
                                   "truncated or not bytes")
    try:
        return ChaCha20Poly1305(key).decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], _associated_data(sender, receiver, context))
    except InvalidTag:
        raise ShareDecryptionError(
            f"encrypted share from {sender!r} to {receiver!r} does not authenticate: it was "
            "altered, or belongs to another sender, receiver, session or round"
        ) from None
