"""The coordinator side of PSI: :func:`run_psi`, which routes the rounds, intersects the
fully blinded lists and checks the parties' digests. It holds no ids and no keys."""

from __future__ import annotations

import contextlib
import itertools
import secrets
import time
from collections.abc import Sequence

import numpy as np

from vfl.core.coordinator import Coordinator
from vfl.core.errors import (
    AlignmentMismatchError,
    EmptyIntersectionError,
    ProtocolError,
    VFLError,
)
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.wire import BigIntArray
from vfl.psi.group import _SESSION_BYTES, GROUP, PSIInputError, PSIResult


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

    # Commit every party in one wave (one network round trip). A party that drops out here
    # raises PartyDropoutError; the abort in run_psi then revokes the commits that were
    # delivered, so no party keeps an alignment from this run.
    acks = coordinator.exchange([
        coordinator.request(n, "psi.commit", {"session": session, "digest": digest})
        for n in names
    ])
    _collect(acks, "psi.ack", names, session, "sender")
    return len(common), digest
