"""Private set intersection (PSI) for entity alignment: multi-party Diffie-Hellman over a
well-known group (DESIGN section 3).

Protocol
--------
Group: the RFC 3526 2048-bit MODP group (group 14). ``p`` is a safe prime, ``p = 2q + 1``;
all values live in the subgroup of quadratic residues, which has prime order ``q``.

``H(x)`` hashes an identifier into that subgroup: SHA-256 in counter mode over a
domain-separated, length-prefixed encoding of (per-run public session salt, identifier),
expanded to 2048 + 128 bits, reduced mod ``p`` (statistical distance ~2^-128 from uniform)
and squared mod ``p`` (a quadratic residue). Because of the session salt, ``H`` values and
everything derived from them are useless in any other run.

With parties ``P_0 .. P_{n-1}`` arranged in a ring (the order given to :func:`run_psi`):

1. ``psi.start`` (coordinator -> each party, public: session salt, ring). ``P_i`` draws a
   secret exponent ``a_i`` from :mod:`secrets`, computes ``H(x)^{a_i}`` for each of its ids,
   and shuffles the list with a secret permutation ``pi_i`` (also from :mod:`secrets`). It
   answers ``psi.ready`` with its set size.
2. ``psi.round`` (coordinator -> each party): ``P_i`` sends its list to ``P_{i+1}``
   (``psi.blind``, masked). Every party that receives a list raises each element to its own
   exponent, keeps the order, and passes it on to its successor; the party that completes
   the ring (the list is then ``H(x)^{a_0 a_1 ... a_{n-1}}``) sends it to the coordinator
   (``psi.blinded``, masked). Exponentiation commutes, so an identifier held by several
   parties gives the same fully blinded value in each of their lists.
3. The coordinator, which holds no ids and no keys, intersects the fully blinded lists and
   tells each party which positions of *its own* list are in the intersection
   (``psi.positions``, plaintext-by-design: the intersection is the intended output).
4. Each party maps positions back through ``pi_i`` to its ids, sorts them by identifier
   string (so all parties get the same row order) and sends a digest of the sorted list
   (``psi.digest``, public). The coordinator checks that all digests agree
   (:class:`~vfl.core.errors.AlignmentMismatchError` otherwise) and sends ``psi.commit``. A party
   sets its aligned ids (:meth:`PSIParticipant.on_aligned`) only on commit. On any failure the
   coordinator sends ``psi.abort`` to every party it can reach: each drops its secrets and,
   if it had already committed in this run (a drop-out during the commit phase), revokes
   the alignment (:meth:`PSIParticipant.on_alignment_revoked`). So an aborted run (drop-out,
   empty intersection, mismatch) leaves no party with an alignment from that run.

The digest is keyed: next to its id list each party sends a "key share" ``G^{a_i}``
(``G`` = hash of the session salt under its own domain) around the same ring; it is
exponentiated by each relay, and the party that completes it keeps ``K = G^{a_0...a_{n-1}}``
instead of forwarding it (group Diffie-Hellman key agreement, as in Steiner-Tsudik-Waidner).
Every party ends up with the same ``K``; the coordinator only sees partial products. The
digest is ``HMAC-SHA256(SHA-256(domain, salt, K), sorted ids)``, so the coordinator cannot
confirm a guess of the intersection by hashing candidate ids (a plain hash of a small
intersection would be open to a dictionary attack). Digests are therefore different in every
run, even for the same result.

Exponents are short: 256-bit exponents drawn uniformly by :mod:`secrets`, in the prime-order
subgroup. Security rests on DDH in that subgroup with short exponents (the short-exponent
discrete-log assumption, Koshiba-Kurosawa 2004; with ``q`` prime there is no Pohlig-Hellman
shortcut, and the best known attack on a 256-bit exponent, Pollard's lambda, costs ~2^128,
above the ~112-bit strength of the 2048-bit group itself). Full-size exponents would be ~7x
slower for no gain in the overall security level.

Threat model
------------
Semi-honest (honest-but-curious) parties and coordinator, and no collusion between the
coordinator and any party. Hashing is modelled as a random oracle; blinded values are
pseudorandom under the decisional Diffie-Hellman assumption in the QR subgroup.

* **Each party learns**: which of its own ids are in the intersection (the output, so also
  the intersection size), and the set sizes of the other parties (the lengths of the lists
  it relays). It learns nothing about ids outside the intersection: the lists it relays are
  shuffled and blinded under keys it does not hold, so they are pseudorandom.
* **The coordinator learns**: every party's set size and, because it sees all fully blinded
  lists, the cardinality of the intersection of every subset of parties (how many elements
  exactly parties {A, B} share, and so on: the "Venn diagram" counts). It never learns an
  identifier or a hash of one that it could test guesses against: all values it sees
  (including the partially blinded lists it routes between parties in a deployment) are
  under at least one key it does not hold, and no two partially blinded lists of different
  origin share the same key set, so routing adds nothing to the above. The digests are keyed
  with ``K``, which it does not know.
* **A relaying party** sees other parties' lists only shuffled and blinded: it learns their
  sizes only.
* **Collusion (not covered)**: if the coordinator colludes with party ``P_j``, together they
  learn, for each of ``P_j``'s own ids, exactly which other parties hold it (element-level
  pairwise and subset intersections, not only the full intersection), and they can check
  guesses of the intersection against the digests (``P_j`` knows ``K``). Ids held by no one
  in the coalition stay hidden (testing a guess needs every party's exponent). Malicious
  behaviour (a party inputting a huge set of guessed ids, or a coordinator lying about
  positions) is out of scope; the digest check catches inconsistent outputs, not a lying
  coordinator that tells every party the same wrong thing.

Identifiers are compared as ``str(id)`` (UTF-8). Each party must use the same identifier
scheme (for example the same salted hash of a national id); otherwise the intersection is
empty, which :func:`run_psi` reports with :class:`~vfl.core.errors.EmptyIntersectionError`.

Performance: exponentiation runs in chunks with ``gmpy2``; ``workers`` > 1 spreads large
lists over a local :class:`~concurrent.futures.ProcessPoolExecutor` (``spawn`` processes, so
scripts that use it need the usual ``if __name__ == "__main__":`` guard). A transient
``rich`` progress bar is shown for lists above :data:`PROGRESS_THRESHOLD` when
``progress=True`` (and stderr is a terminal).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import multiprocessing
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import gmpy2
import numpy as np

from vfl.core.coordinator import Coordinator
from vfl.core.errors import (
    AlignmentError,
    AlignmentMismatchError,
    EmptyIntersectionError,
    ProtocolError,
    VFLError,
)
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.party import Party, handles
from vfl.core.progress import progress_bar
from vfl.core.wire import BigIntArray

__all__ = [
    "GROUP",
    "P",
    "Q",
    "EXPONENT_BITS",
    "PSIInputError",
    "PSIParticipant",
    "PSIResult",
    "hash_to_group",
    "run_psi",
]

# RFC 3526, section 3: the 2048-bit MODP group (id 14), generator 2.
# p = 2^2048 - 2^1984 - 1 + 2^64 * ( [2^1918 pi] + 124476 ); a safe prime.
_RFC3526_MODP_2048 = """
    FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
    29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
    EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
    E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
    EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
    C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
    83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
    670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
    E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
    DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
    15728E5A 8AACAA68 FFFFFFFF FFFFFFFF
"""
P = gmpy2.mpz(int("".join(_RFC3526_MODP_2048.split()), 16))
Q = (P - 1) // 2  # prime order of the quadratic-residue subgroup
GROUP = "rfc3526-modp2048-qr"  # name sent in psi.start and reported in PSIResult
ELEMENT_BYTES = 256  # fixed wire width of a group element
EXPONENT_BITS = 256  # short exponents; see the module docstring for the assumption

PROGRESS_THRESHOLD = 5000  # show a progress bar only for lists larger than this
PARALLEL_MIN = 2048  # use the process pool (if workers > 1) only from this list size
CHUNK = 256  # values per exponentiation chunk (progress granularity, pool task size)

_EXPAND_BYTES = (2048 + 128) // 8  # 272 bytes before reduction mod p
_DST_ID = b"vfl/psi/v1/hash-to-group/id"
_DST_KEY_BASE = b"vfl/psi/v1/hash-to-group/key-agreement"
_DST_DIGEST_KEY = b"vfl/psi/v1/digest-key"
_DST_DIGEST = b"vfl/psi/v1/aligned-ids"
_SESSION_BYTES = 16


class PSIInputError(AlignmentError, ValueError):
    """PSI cannot start with these inputs (too few parties, a party without identifiers...)."""


@dataclass(frozen=True)
class PSIResult:
    """What the coordinator knows after a successful run (all public)."""

    size: int  # number of aligned rows
    digest: str  # keyed digest every party agreed on (differs from run to run)
    seconds: float
    group: str


# --- group arithmetic -----------------------------------------------------------------------
def _expand(dst: bytes, session: bytes, data: bytes) -> int:
    prefix = b"".join(
        (
            len(dst).to_bytes(2, "big"),
            dst,
            len(session).to_bytes(2, "big"),
            session,
            len(data).to_bytes(4, "big"),
            data,
        )
    )
    base = hashlib.sha256(prefix)
    out = bytearray()
    counter = 0
    while len(out) < _EXPAND_BYTES:
        h = base.copy()
        h.update(counter.to_bytes(4, "big"))
        out += h.digest()
        counter += 1
    return int.from_bytes(bytes(out[:_EXPAND_BYTES]), "big")


def _to_group(value: int) -> gmpy2.mpz:
    x = gmpy2.mpz(value) % P
    y = x * x % P
    if y <= 1:  # x in {0, 1, p-1}: probability ~2^-2046
        raise ProtocolError("hash to group hit a degenerate value; use another session salt")
    return y


def hash_to_group(identifier: Any, session: bytes) -> gmpy2.mpz:
    """Hash ``str(identifier)`` into the QR subgroup, domain-separated by ``session``."""
    return _to_group(_expand(_DST_ID, bytes(session), str(identifier).encode("utf-8")))


def _key_base(session: bytes) -> gmpy2.mpz:
    return _to_group(_expand(_DST_KEY_BASE, bytes(session), b""))


def _draw_exponent() -> gmpy2.mpz:
    # Uniform in [2, 2^256); q > 2^256, so it is a non-zero exponent of the subgroup.
    return gmpy2.mpz(secrets.randbelow((1 << EXPONENT_BITS) - 2) + 2)


def _secure_permutation(n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` (Fisher-Yates with :mod:`secrets`)."""
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = secrets.randbelow(i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return np.asarray(perm, dtype=np.int64)


def _powmod_chunk(values: list, exponent, modulus) -> list:
    """``[v^exponent mod modulus for v in values]`` (module level: runs in pool workers)."""
    return list(gmpy2.powmod_base_list(list(values), gmpy2.mpz(exponent), gmpy2.mpz(modulus)))


def _pow_all(
    values: Sequence,
    exponent,
    *,
    workers: int | None = None,
    show_progress: bool = False,
    description: str = "PSI",
    parallel_min: int = PARALLEL_MIN,
) -> list:
    """Raise every value to ``exponent`` mod ``P``, in chunks, optionally in processes."""
    n = len(values)
    chunks = [list(values[i : i + CHUNK]) for i in range(0, n, CHUNK)]
    out: list = []
    enabled = show_progress and n > PROGRESS_THRESHOLD
    with progress_bar(description, n, enabled=enabled) as bar:
        if workers is not None and workers > 1 and n >= parallel_min:
            ctx = multiprocessing.get_context("spawn")  # no fork of a multithreaded process
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                results = pool.map(
                    _powmod_chunk, chunks, itertools.repeat(int(exponent)), itertools.repeat(int(P))
                )
                for res in results:
                    out.extend(res)
                    bar.advance(len(res))
        else:
            for chunk in chunks:
                out.extend(_powmod_chunk(chunk, exponent, P))
                bar.advance(len(chunk))
    return out


def _check_element(value, what: str) -> gmpy2.mpz:
    v = gmpy2.mpz(value)
    if not (1 < v < P - 1) or gmpy2.jacobi(v, P) != 1:
        raise ProtocolError(f"{what} is not an element of the PSI group; the sender is faulty")
    return v


def _check_elements(arr, what: str) -> list:
    if not isinstance(arr, BigIntArray) or arr.width != ELEMENT_BYTES:
        raise ProtocolError(f"{what}: expected a vector of {ELEMENT_BYTES}-byte group elements")
    return [_check_element(v, what) for v in arr.values]


def _wire(values) -> BigIntArray:
    return BigIntArray.of(values, width=ELEMENT_BYTES)


def _digest_key(shared: gmpy2.mpz, session: bytes) -> bytes:
    material = _DST_DIGEST_KEY + bytes(session) + int(shared).to_bytes(ELEMENT_BYTES, "big")
    return hashlib.sha256(material).digest()


def _aligned_digest(sorted_ids: Sequence, key: bytes) -> str:
    mac = hmac.new(key, _DST_DIGEST, hashlib.sha256)
    mac.update(len(sorted_ids).to_bytes(8, "big"))
    for ident in sorted_ids:
        b = str(ident).encode("utf-8")
        mac.update(len(b).to_bytes(4, "big"))
        mac.update(b)
    return mac.hexdigest()


# --- the party side -------------------------------------------------------------------------
@dataclass
class _PSIState:
    """A party's private state during one run (never leaves the party)."""

    session: bytes
    ring: list[str]
    exponent: gmpy2.mpz
    ids: np.ndarray  # own identifiers (original objects)
    perm: np.ndarray  # own list position -> index into ids
    blinded: list | None  # own list, blinded and shuffled, until sent
    key_share: gmpy2.mpz
    workers: int | None
    progress: bool
    relayed: set[str] = field(default_factory=set)
    digest_key: bytes | None = None
    pending: np.ndarray | None = None
    digest: str | None = None


def _own_ids(ids, party: str) -> tuple[np.ndarray, list[str]]:
    arr = np.asarray(ids if ids is not None else [], dtype=object)
    if arr.ndim != 1:
        raise PSIInputError(f"party {party!r}: PSI identifiers must be a 1-D array")
    if len(arr) == 0:
        raise PSIInputError(
            f"party {party!r} has no identifiers to align; give it a table with an id column "
            "or leave it out of the alignment"
        )
    keys = []
    for v in arr:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            raise PSIInputError(
                f"party {party!r} has rows without an identifier; drop or fix them before PSI"
            )
        keys.append(str(v))
    dups = len(keys) - len(set(keys))
    if dups:
        raise PSIInputError(
            f"party {party!r} has {dups} duplicate identifier(s); deduplicate before PSI"
        )
    return arr, keys


class PSIParticipant(Party):
    """Mixin base: a party that can take part in PSI.

    Subclasses either pass ``ids`` to ``__init__`` or override :meth:`psi_ids`; they may
    override :meth:`on_aligned` (called once, on commit) and :meth:`on_alignment_revoked`.
    """

    def __init__(self, name: str, ids=None, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self._psi_ids = None if ids is None else np.asarray(ids, dtype=object).copy()
        self.aligned_ids: np.ndarray | None = None
        self._psi_state: _PSIState | None = None
        self._psi_committed: bytes | None = None  # session of the last commit

    # -- hooks ------------------------------------------------------------------------------
    def psi_ids(self) -> np.ndarray:
        """This party's own identifiers (compared as ``str``)."""
        if self._psi_ids is None:
            return np.empty(0, dtype=object)
        return self._psi_ids

    def on_aligned(self, aligned_ids: np.ndarray) -> None:
        """Called once when the coordinator commits the alignment."""
        self.aligned_ids = aligned_ids

    def on_alignment_revoked(self) -> None:
        """Called if the run is aborted after this party committed (drop-out at commit)."""
        self.aligned_ids = None

    # -- helpers ----------------------------------------------------------------------------
    def _psi_from_coordinator(self, msg: Message) -> None:
        if msg.sender != COORDINATOR:
            raise ProtocolError(f"{self.name!r}: {msg.kind!r} must come from the coordinator")

    def _psi_current(self, msg: Message) -> _PSIState:
        state = self._psi_state
        session = msg.payload.get("session")
        if state is None or not isinstance(session, bytes) or session != state.session:
            raise ProtocolError(
                f"{self.name!r} got {msg.kind!r} for a PSI session it is not running; "
                "restart the alignment"
            )
        return state

    # -- handlers ---------------------------------------------------------------------------
    @handles("psi.start")
    def _psi_on_start(self, msg: Message) -> list[Message]:
        self._psi_from_coordinator(msg)
        p = msg.payload
        session, ring = p.get("session"), list(p.get("ring") or [])
        if p.get("group") != GROUP:
            raise ProtocolError(f"{self.name!r} does not support PSI group {p.get('group')!r}")
        if not isinstance(session, bytes) or len(session) < _SESSION_BYTES:
            raise ProtocolError(f"{self.name!r}: PSI start without a valid session salt")
        if self.name not in ring or len(set(ring)) != len(ring) or len(ring) < 2:
            raise ProtocolError(f"{self.name!r}: invalid PSI ring {ring}")
        ids, keys = _own_ids(self.psi_ids(), self.name)
        workers = p.get("workers")
        workers = workers if isinstance(workers, int) and workers > 1 else None
        show = bool(p.get("progress"))
        exponent = _draw_exponent()
        perm = _secure_permutation(len(ids))
        hashed = [hash_to_group(keys[i], session) for i in perm]
        blinded = _pow_all(
            hashed,
            exponent,
            workers=workers,
            show_progress=show,
            description=f"PSI {self.name}: blinding own ids",
        )
        self._psi_state = _PSIState(
            session=session,
            ring=ring,
            exponent=exponent,
            ids=ids,
            perm=perm,
            blinded=blinded,
            key_share=gmpy2.powmod(_key_base(session), exponent, P),
            workers=workers,
            progress=show,
        )
        return [
            self.send(
                COORDINATOR, "psi.ready", Label.PUBLIC, {"session": session, "size": len(ids)}
            )
        ]

    @handles("psi.round")
    def _psi_on_round(self, msg: Message) -> list[Message]:
        self._psi_from_coordinator(msg)
        state = self._psi_current(msg)
        if state.blinded is None:
            raise ProtocolError(f"{self.name!r} already sent its PSI list in this session")
        ring = state.ring
        succ = ring[(ring.index(self.name) + 1) % len(ring)]
        payload = {
            "session": state.session,
            "origin": self.name,
            "hops": 1,
            "values": _wire(state.blinded),
            "key": int(state.key_share),
        }
        state.blinded = None
        return [self.send(succ, "psi.blind", Label.MASKED, payload)]

    @handles("psi.blind")
    def _psi_on_blind(self, msg: Message) -> list[Message]:
        state = self._psi_current(msg)
        p, ring, n = msg.payload, state.ring, len(state.ring)
        me = ring.index(self.name)
        origin, hops = p.get("origin"), p.get("hops")
        if msg.sender != ring[(me - 1) % n]:
            raise ProtocolError(f"{self.name!r} got a PSI list from {msg.sender!r} out of turn")
        if origin not in ring or origin == self.name or origin in state.relayed:
            raise ProtocolError(f"{self.name!r} got an unexpected PSI list of origin {origin!r}")
        if hops != (me - ring.index(origin)) % n:
            raise ProtocolError(f"{self.name!r} got a PSI list with an inconsistent hop count")
        values = _check_elements(p.get("values"), f"PSI list from {msg.sender!r}")
        key = _check_element(p.get("key"), f"PSI key share from {msg.sender!r}")
        out = _pow_all(
            values,
            state.exponent,
            workers=state.workers,
            show_progress=state.progress,
            description=f"PSI {self.name}: blinding list of {origin}",
        )
        key = gmpy2.powmod(key, state.exponent, P)
        state.relayed.add(origin)
        if hops + 1 == n:  # the ring is complete: the list goes to the coordinator
            state.digest_key = _digest_key(key, state.session)  # K stays here
            payload = {"session": state.session, "origin": origin, "values": _wire(out)}
            return [self.send(COORDINATOR, "psi.blinded", Label.MASKED, payload)]
        payload = {
            "session": state.session,
            "origin": origin,
            "hops": hops + 1,
            "values": _wire(out),
            "key": int(key),
        }
        return [self.send(ring[(me + 1) % n], "psi.blind", Label.MASKED, payload)]

    @handles("psi.positions")
    def _psi_on_positions(self, msg: Message) -> list[Message]:
        self._psi_from_coordinator(msg)
        state = self._psi_current(msg)
        if state.digest_key is None:
            raise ProtocolError(f"{self.name!r} got PSI positions before the ring completed")
        pos = np.asarray(msg.payload.get("positions"))
        n = len(state.ids)
        if (
            pos.ndim != 1
            or pos.dtype.kind not in "iu"
            or (pos.size and (pos.min() < 0 or pos.max() >= n))
            or len(np.unique(pos)) != len(pos)
        ):
            raise ProtocolError(f"{self.name!r} got invalid PSI positions from the coordinator")
        chosen = state.ids[state.perm[pos.astype(np.int64)]]
        aligned = np.asarray(sorted(chosen, key=str), dtype=object)
        state.pending = aligned
        state.digest = _aligned_digest(aligned, state.digest_key)
        payload = {"session": state.session, "digest": state.digest, "size": len(aligned)}
        return [self.send(COORDINATOR, "psi.digest", Label.PUBLIC, payload)]

    @handles("psi.commit")
    def _psi_on_commit(self, msg: Message) -> list[Message]:
        self._psi_from_coordinator(msg)
        state = self._psi_current(msg)
        if state.pending is None or msg.payload.get("digest") != state.digest:
            raise AlignmentMismatchError(
                f"{self.name!r} was asked to commit an alignment it did not compute; "
                "nothing was committed, restart the alignment"
            )
        aligned = state.pending
        self._psi_state = None  # drop the exponent and permutation
        self._psi_committed = state.session
        self.on_aligned(aligned)
        return [
            self.send(
                COORDINATOR,
                "psi.ack",
                Label.PUBLIC,
                {"session": state.session, "digest": state.digest},
            )
        ]

    @handles("psi.abort")
    def _psi_on_abort(self, msg: Message) -> list[Message]:
        self._psi_from_coordinator(msg)
        session = msg.payload.get("session")
        if self._psi_state is not None and self._psi_state.session == session:
            self._psi_state = None
        if self._psi_committed is not None and self._psi_committed == session:
            self._psi_committed = None
            self.on_alignment_revoked()
        return []


# --- the coordinator side -------------------------------------------------------------------
def _check_parties(parties: Sequence[str]) -> list[str]:
    if isinstance(parties, str):
        raise PSIInputError("run_psi needs a sequence of party names, not one string")
    names = list(parties)
    if len(names) < 2:
        raise PSIInputError(
            f"PSI needs at least 2 parties, got {len(names)}; a single party has nothing to "
            "align (use its own ids directly)"
        )
    if len(set(names)) != len(names):
        raise PSIInputError(f"party names must be unique, got {names}")
    if COORDINATOR in names or not all(isinstance(n, str) and n for n in names):
        raise PSIInputError(f"invalid party names for PSI: {names}")
    return names


def _collect(messages: list[Message], kind: str, names: list[str], session: bytes, key: str):
    """One reply of ``kind`` per expected key value, each for this session."""
    out: dict[str, dict] = {}
    for m in messages:
        who = m.payload.get(key) if key != "sender" else m.sender
        if m.kind != kind or m.payload.get("session") != session or who not in names:
            raise ProtocolError(f"unexpected {m.kind!r} reply from {m.sender!r} during {kind!r}")
        if who in out:
            raise ProtocolError(f"duplicate {kind!r} for {who!r}")
        out[who] = m.payload
    missing = [n for n in names if n not in out]
    if missing:
        raise ProtocolError(f"no {kind!r} for {missing}; restart the alignment")
    return out


def _abort(coordinator: Coordinator, names: list[str], session: bytes) -> None:
    """Best effort: tell every reachable party to drop its secrets and revoke a commit."""
    for name in names:
        msg = Message(COORDINATOR, name, "psi.abort", Label.PUBLIC, {"session": session})
        with contextlib.suppress(VFLError):
            coordinator.exchange([msg])


def _empty_message(names: list[str], lists: dict[str, list], sizes: dict[str, int]) -> str:
    sets = {n: set(lists[n]) for n in names}
    pairs = ", ".join(
        f"{a}&{b}: {len(sets[a] & sets[b])}" for a, b in itertools.combinations(names, 2)
    )
    return (
        "the parties share no identifiers, so there is nothing to align "
        f"(set sizes: {sizes}; pairwise overlaps: {pairs}). Check that every party uses the "
        "same identifier scheme: the same pseudonymisation/salting of the patient id and the "
        "same formatting (case, leading zeros, whitespace). Nothing was committed."
    )


def run_psi(
    coordinator: Coordinator,
    parties: Sequence[str],
    *,
    progress: bool = False,
    workers: int | None = None,
) -> PSIResult:
    """Run multi-party DH-PSI among ``parties`` (names registered on the coordinator's
    transport, each a :class:`PSIParticipant`). On success every party's
    :meth:`~PSIParticipant.on_aligned` has been called with the same sorted id list.

    Raises :class:`PSIInputError` (bad inputs), :class:`~vfl.core.errors.EmptyIntersectionError`,
    :class:`~vfl.core.errors.PartyDropoutError` or :class:`~vfl.core.errors.AlignmentMismatchError`;
    in every failure case no party keeps an alignment from this run.
    """
    names = _check_parties(parties)
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise PSIInputError(f"workers must be a positive integer or None, got {workers!r}")
    t0 = time.perf_counter()
    session = secrets.token_bytes(_SESSION_BYTES)  # public salt, fresh per run
    try:
        size, digest = _run(coordinator, names, session, progress, workers)
    except Exception:
        _abort(coordinator, names, session)
        raise
    return PSIResult(size, digest, time.perf_counter() - t0, GROUP)


def _run(coordinator, names, session, progress, workers) -> tuple[int, str]:
    start = {"session": session, "ring": names, "group": GROUP}
    start |= {"progress": bool(progress), "workers": workers}
    ready = coordinator.exchange([coordinator.request(n, "psi.start", start) for n in names])
    ready_by = _collect(ready, "psi.ready", names, session, "sender")
    sizes = {n: int(p["size"]) for n, p in ready_by.items()}

    tick = {"session": session}
    blinded = coordinator.exchange([coordinator.request(n, "psi.round", tick) for n in names])
    got = _collect(blinded, "psi.blinded", names, session, "origin")
    lists: dict[str, list] = {}
    for n in names:
        arr = got[n].get("values")
        if not isinstance(arr, BigIntArray) or len(arr) != sizes[n]:
            raise ProtocolError(f"the blinded list of {n!r} does not match its announced size")
        if len(set(arr.values)) != len(arr):
            raise ProtocolError(f"the blinded list of {n!r} has repeated values")
        lists[n] = list(arr.values)

    common = set(lists[names[0]])
    for n in names[1:]:
        common &= set(lists[n])
    if not common:
        raise EmptyIntersectionError(_empty_message(names, lists, sizes))

    out = []
    for n in names:
        pos = np.fromiter((i for i, v in enumerate(lists[n]) if v in common), dtype=np.int64)
        payload = {"session": session, "positions": pos}
        out.append(Message(COORDINATOR, n, "psi.positions", Label.PLAINTEXT_BY_DESIGN, payload))
    replies = _collect(coordinator.exchange(out), "psi.digest", names, session, "sender")
    digests = {n: replies[n].get("digest") for n in names}
    if len(set(digests.values())) != 1 or any(
        int(replies[n].get("size", -1)) != len(common) for n in names
    ):
        raise AlignmentMismatchError(
            f"parties disagree on the aligned rows (digests: {digests}); a party's identifiers "
            "or sort order differ. Nothing was committed; check the parties' id columns."
        )
    digest = digests[names[0]]

    # Commit one party at a time, so a drop-out is noticed before the next commit; the abort
    # in run_psi revokes the commits that were already delivered.
    acks = []
    for n in names:
        msg = coordinator.request(n, "psi.commit", {"session": session, "digest": digest})
        acks += coordinator.exchange([msg])
    _collect(acks, "psi.ack", names, session, "sender")
    return len(common), digest
