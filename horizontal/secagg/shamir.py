"""t-of-m Shamir sharing of 32-byte secrets, on pycryptodome's GF(2^128) implementation.

What is shared, and why 32 bytes
--------------------------------
Each client shares two secrets with its holders (:mod:`horizontal.secagg.graph`): the seed
``b_u`` of its self-mask and the private X25519 key ``s_u^SK`` of its pairwise masks. Both
are 32 bytes (256 bits), the key size for which X25519 and ChaCha20 give ~128-bit security.

Why pycryptodome, and why two halves
------------------------------------
``Crypto.Protocol.SecretSharing.Shamir`` is a small, reviewed, widely deployed
implementation over the field GF(2^128) with fresh coefficients from the OS's CSPRNG; it
shares 16-byte secrets only. A 32-byte secret is therefore cut into two 16-byte halves,
each shared with its *own independent* random polynomial of degree ``t - 1``, at the same
x-coordinates (share index ``i`` for holder ``i``). Each half is perfectly hidden by any
``t - 1`` shares (Shamir's information-theoretic guarantee, per field element), and the two
polynomials are independent, so ``t - 1`` shares of the pair reveal nothing about the
32-byte secret either. A share is 32 bytes too: the two 16-byte evaluations.

Fewer than ``t`` shares are refused
-----------------------------------
Lagrange interpolation through fewer than ``t`` points does not fail, it returns a wrong
secret; pycryptodome cannot know ``t``. :func:`reconstruct` is told ``t`` and raises
:class:`~horizontal.secagg.errors.NotEnoughSharesError` below it, and interpolates through
exactly ``t`` shares (pycryptodome's documented contract), chosen by lowest index so the
result does not depend on the order shares arrived in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from Crypto.Protocol.SecretSharing import Shamir

from horizontal.secagg.errors import NotEnoughSharesError, SecretSharingError

SECRET_BYTES = 32
_HALF = 16
#: Share indices are encoded in two bytes; a holder set is a closed neighbourhood, far smaller.
MAX_SHARES = 0xFFFF
SHARE_WIRE_BYTES = 2 + SECRET_BYTES


@dataclass(frozen=True)
class Share:
    """One holder's share: its index (1-based x-coordinate) and the two 16-byte evaluations."""

    index: int
    value: bytes

    def __post_init__(self):
        if not isinstance(self.index, int) or isinstance(self.index, bool) or not (
            1 <= self.index <= MAX_SHARES
        ):
            raise SecretSharingError(f"share index must be in [1, {MAX_SHARES}], got "
                                     f"{self.index!r}")
        if not isinstance(self.value, bytes) or len(self.value) != SECRET_BYTES:
            raise SecretSharingError(f"a share value is {SECRET_BYTES} bytes")

    def to_bytes(self) -> bytes:
        return self.index.to_bytes(2, "big") + self.value

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if not isinstance(data, bytes) or len(data) != SHARE_WIRE_BYTES:
            raise SecretSharingError(f"an encoded share is {SHARE_WIRE_BYTES} bytes, got "
                                     f"{len(data) if isinstance(data, bytes) else type(data)}")
        return cls(int.from_bytes(data[:2], "big"), data[2:])


def _check_threshold(t: int, m: int) -> None:
    if not isinstance(t, int) or isinstance(t, bool) or not isinstance(m, int):
        raise SecretSharingError("threshold and share count must be integers")
    if not 1 <= t <= m <= MAX_SHARES:
        raise SecretSharingError(f"need 1 <= t <= m <= {MAX_SHARES}, got t={t}, m={m}")


def split(secret: bytes, t: int, m: int) -> list[Share]:
    """``m`` shares of a 32-byte ``secret``, any ``t`` of which rebuild it (indices 1..m)."""
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise SecretSharingError(f"the secret must be {SECRET_BYTES} bytes")
    _check_threshold(t, m)
    lo = Shamir.split(t, m, secret[:_HALF])
    hi = Shamir.split(t, m, secret[_HALF:])
    return [Share(i, a + b) for (i, a), (j, b) in zip(lo, hi, strict=True) if i == j]


def reconstruct(shares: Iterable[Share], t: int) -> bytes:
    """The secret from at least ``t`` shares with distinct indices (exactly ``t`` are used).

    Raises :class:`NotEnoughSharesError` with fewer than ``t``; a wrong or forged share gives a
    wrong secret (Shamir is not verifiable), which callers detect where they can (the mask
    key is checked against its advertised public key).
    """
    shares = list(shares)
    if not all(isinstance(s, Share) for s in shares):
        raise SecretSharingError("reconstruct takes Share objects")
    if not isinstance(t, int) or isinstance(t, bool) or t < 1:
        raise SecretSharingError(f"threshold must be a positive integer, got {t!r}")
    indices = [s.index for s in shares]
    if len(set(indices)) != len(indices):
        raise SecretSharingError(f"duplicate share indices: {sorted(indices)}")
    if len(shares) < t:
        raise NotEnoughSharesError(
            f"{len(shares)} share(s) given but the threshold is {t}: refusing to interpolate "
            "(it would return a wrong secret, not an error)"
        )
    use = sorted(shares, key=lambda s: s.index)[:t]
    lo = Shamir.combine([(s.index, s.value[:_HALF]) for s in use])
    hi = Shamir.combine([(s.index, s.value[_HALF:]) for s in use])
    return lo + hi
