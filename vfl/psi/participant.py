"""The party side of PSI: :class:`PSIParticipant` (the protocol is described in
:mod:`vfl.psi`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import gmpy2
import numpy as np

from vfl.core.errors import (
    AlignmentMismatchError,
    ProtocolError,
)
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.party import Party, handles
from vfl.psi.group import (
    _SESSION_BYTES,
    GROUP,
    P,
    PSIInputError,
    _aligned_digest,
    _check_element,
    _check_elements,
    _digest_key,
    _draw_exponent,
    _key_base,
    _pow_all,
    _secure_permutation,
    _wire,
    hash_to_group,
)


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


