"""Multi-party DH private set intersection (vfl.psi)."""

from __future__ import annotations

import dataclasses
import hashlib

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfl.core.coordinator import Coordinator
from vfl.core.errors import (
    AlignmentError,
    AlignmentMismatchError,
    EmptyIntersectionError,
    PartyDropoutError,
)
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.party import Party
from vfl.core.transport import InMemoryTransport
from vfl.core.wire import BigIntArray
from vfl.psi import GROUP, P, PSIInputError, PSIParticipant, Q, hash_to_group, run_psi
from vfl.psi.group import _pow_all

FAST = settings(max_examples=15, deadline=None)
NAMES = ["hospital", "lab", "pharmacy", "insurer"]


class WireTransport(InMemoryTransport):
    """Keeps the exact bytes of every message, for tests that inspect payloads."""

    def __init__(self):
        super().__init__()
        self.wire: list[bytes] = []

    def encode(self, message):
        data = super().encode(message)
        self.wire.append(data)
        return data


def pid(i: int) -> str:
    return f"pt-{i:07d}"


def federation(id_sets, cls=PSIParticipant, transport=None):
    transport = transport or WireTransport()
    parties = {}
    for name, ids in zip(NAMES, id_sets):
        party = cls(name, ids=np.array([pid(i) for i in ids], dtype=object))
        transport.register(party)
        parties[name] = party
    return transport, Coordinator(transport), parties


def big_values(payload):
    """Every integer too big for a plain msgpack int (group elements) in a payload."""
    if isinstance(payload, BigIntArray):
        yield from payload.values
    elif isinstance(payload, dict):
        for v in payload.values():
            yield from big_values(v)
    elif isinstance(payload, list | tuple):
        for v in payload:
            yield from big_values(v)
    elif isinstance(payload, int) and not isinstance(payload, bool) and payload >= 2**64:
        yield payload


def psi_messages(transport):
    return [Message.from_bytes(b) for b in transport.wire if b"psi." in b]


def assert_nobody_aligned(parties):
    for p in parties.values():
        assert p.aligned_ids is None
        assert p._psi_state is None  # secrets dropped by psi.abort


party_sets = st.lists(st.sets(st.integers(0, 14), min_size=1, max_size=10), min_size=2, max_size=4)


@FAST
@given(party_sets, st.sets(st.integers(100, 104), min_size=1, max_size=3))
def test_psi_equals_set_intersection(sets, shared):
    sets = [s | shared for s in sets]  # a non-empty intersection
    transport, coord, parties = federation(sets)
    result = run_psi(coord, list(parties))
    expected = sorted(pid(i) for i in set.intersection(*sets))
    assert result.size == len(expected)
    assert result.group == GROUP
    for p in parties.values():
        assert list(p.aligned_ids) == expected  # same ids, same order at every party
        assert p._psi_state is None


@pytest.mark.parametrize("n_parties", [2, 3, 4])
def test_psi_each_party_count(n_parties):
    sets = [set(range(k, 30 + k)) for k in range(n_parties)]
    _, coord, parties = federation(sets)
    result = run_psi(coord, list(parties))
    expected = [pid(i) for i in range(n_parties - 1, 30)]
    assert result.size == len(expected)
    assert all(list(p.aligned_ids) == expected for p in parties.values())


@FAST
@given(party_sets, st.sets(st.integers(100, 104), min_size=1, max_size=3))
def test_transcript_carries_only_blinded_values(sets, shared):
    sets = [s | shared for s in sets]
    transport, coord, parties = federation(sets)
    run_psi(coord, list(parties))
    messages = psi_messages(transport)
    session = next(m.payload["session"] for m in messages if m.kind == "psi.start")
    all_ids = [pid(i) for s in sets for i in s]
    unblinded = {int(hash_to_group(x, session)) for x in all_ids}

    for m in messages:
        elements = list(big_values(m.payload))
        if elements:
            assert m.label == Label.MASKED, m.kind
            assert m.kind in {"psi.blind", "psi.blinded"}
        assert not unblinded & set(elements), "an unblinded H(id) crossed the boundary"
        if m.kind == "psi.positions":
            assert m.label == Label.PLAINTEXT_BY_DESIGN
            assert m.receiver != COORDINATOR
        elif m.kind not in {"psi.blind", "psi.blinded"}:
            assert m.label == Label.PUBLIC
    for entry in transport.transcript:
        assert entry.kind.startswith("psi.")

    blob = b"\n".join(transport.wire)
    for x in all_ids:
        raw = x.encode()
        assert raw not in blob
        assert hashlib.sha256(raw).digest() not in blob
        assert hashlib.sha256(raw).hexdigest().encode() not in blob


def test_empty_intersection_raises_and_commits_nothing():
    _, coord, parties = federation([{1, 2, 3}, {4, 5, 6}, {1, 5, 7}])
    with pytest.raises(EmptyIntersectionError, match="same identifier scheme"):
        run_psi(coord, list(parties))
    assert_nobody_aligned(parties)


class Recording(PSIParticipant):
    def __init__(self, name, ids=None):
        super().__init__(name, ids=ids)
        self.events = []

    def on_aligned(self, aligned_ids):
        super().on_aligned(aligned_ids)
        self.events.append("aligned")

    def on_alignment_revoked(self):
        super().on_alignment_revoked()
        self.events.append("revoked")


class DropsAfter(PSIParticipant):
    """Goes offline right after it has handled a message of kind ``drop_after``."""

    drop_after = "psi.start"

    def __init__(self, name, ids=None, transport=None):
        super().__init__(name, ids=ids)
        self.transport = transport

    def handle(self, message):
        replies = super().handle(message)
        if message.kind == self.drop_after:
            self.transport.set_offline(self.name)
        return replies


@pytest.mark.parametrize("kind", ["psi.start", "psi.round", "psi.blind", "psi.positions"])
def test_dropout_commits_nothing(kind):
    transport = WireTransport()
    sets = [{1, 2, 3, 4}, {2, 3, 4}, {3, 4, 5}]
    _, coord, parties = federation(sets, cls=Recording, transport=transport)
    dropper = DropsAfter("dropper", ids=[pid(3), pid(4)], transport=transport)
    dropper.drop_after = kind
    transport.register(dropper)
    parties["dropper"] = dropper
    # The dropper is last in the ring: with "psi.positions" the other parties are already
    # committed when its commit fails, and the abort must revoke their alignment.
    with pytest.raises(PartyDropoutError, match="dropper"):
        run_psi(coord, list(parties))
    for name, p in parties.items():
        assert p.aligned_ids is None
        if name != "dropper":
            assert p._psi_state is None
            expected = ["aligned", "revoked"] if kind == "psi.positions" else []
            assert p.events == expected


def test_offline_before_run():
    transport, coord, parties = federation([{1, 2}, {2, 3}, {2, 4}])
    transport.set_offline("lab")
    with pytest.raises(PartyDropoutError):
        run_psi(coord, list(parties))
    assert all(p.aligned_ids is None for p in parties.values())
    transport.set_offline("lab", False)  # back: a fresh run works
    assert run_psi(coord, list(parties)).size == 1
    assert all(list(p.aligned_ids) == [pid(2)] for p in parties.values())


class LiesAboutDigest(PSIParticipant):
    def handle(self, message):
        replies = super().handle(message)
        return [
            dataclasses.replace(r, payload={**r.payload, "digest": "0" * 64})
            if r.kind == "psi.digest"
            else r
            for r in replies
        ]


def test_digest_mismatch_commits_nothing():
    _, coord, parties = federation([{1, 2, 3}, {2, 3}])
    transport = coord.transport
    liar = LiesAboutDigest("liar", ids=[pid(2), pid(3)])
    transport.register(liar)
    parties["liar"] = liar
    with pytest.raises(AlignmentMismatchError):
        run_psi(coord, list(parties))
    assert_nobody_aligned(parties)


def test_fresh_secrets_every_run_same_result():
    sets = [set(range(0, 20)), set(range(5, 25)), set(range(3, 18))]
    transport, coord, parties = federation(sets)
    first = run_psi(coord, list(parties))
    ids_first = {n: list(p.aligned_ids) for n, p in parties.items()}
    wire_first = len(transport.wire)
    second = run_psi(coord, list(parties))
    ids_second = {n: list(p.aligned_ids) for n, p in parties.items()}

    def elements(msgs):
        return {
            v for m in msgs if m.kind in {"psi.blind", "psi.blinded"} for v in big_values(m.payload)
        }

    msgs = [Message.from_bytes(b) for b in transport.wire]
    run1, run2 = elements(msgs[:wire_first]), elements(msgs[wire_first:])
    assert run1 and run2 and not run1 & run2
    assert first.size == second.size == 13
    assert ids_first == ids_second
    assert first.digest != second.digest  # keyed by the run's shared key


def test_input_errors():
    transport, coord, parties = federation([{1, 2}, {2}])
    with pytest.raises(PSIInputError, match="at least 2 parties"):
        run_psi(coord, ["hospital"])
    with pytest.raises(PSIInputError, match="unique"):
        run_psi(coord, ["hospital", "hospital"])
    with pytest.raises(PSIInputError):
        run_psi(coord, ["hospital", "lab"], workers=0)

    empty = PSIParticipant("empty")
    transport.register(empty)
    parties["empty"] = empty
    with pytest.raises(PSIInputError, match="no identifiers") as info:
        run_psi(coord, list(parties))
    assert isinstance(info.value, AlignmentError)
    assert_nobody_aligned(parties)

    dup = PSIParticipant("dup", ids=[pid(1), pid(1), pid(2)])
    transport.register(dup)
    with pytest.raises(PSIInputError, match="duplicate"):
        run_psi(coord, ["hospital", "dup"])
    assert parties["hospital"].aligned_ids is None


def test_cooperative_multiple_inheritance():
    class Tagged(Party):
        def __init__(self, name, tag="x", **kwargs):
            super().__init__(name, **kwargs)
            self.tag = tag

    class Active(PSIParticipant, Tagged):
        def __init__(self, name, ids):
            super().__init__(name, ids=ids, tag="active")
            self.seen = []

        def psi_ids(self):
            return np.array(["b", "a", "c"], dtype=object)

        def on_aligned(self, aligned_ids):
            self.seen.append(list(aligned_ids))

    transport = InMemoryTransport()
    a = Active("a", ids=None)
    b = PSIParticipant("b", ids=["c", "a", "z"])
    transport.register(a)
    transport.register(b)
    run_psi(Coordinator(transport), ["a", "b"])
    assert a.tag == "active"
    assert a.seen == [["a", "c"]]
    assert list(b.aligned_ids) == ["a", "c"]


def test_hash_to_group_lands_in_qr_subgroup():
    s1, s2 = b"\x01" * 16, b"\x02" * 16
    h = hash_to_group("pt-1", s1)
    assert 1 < h < P and gmpy2.powmod(h, Q, P) == 1
    assert h == hash_to_group("pt-1", s1)
    assert h != hash_to_group("pt-1", s2)
    assert h != hash_to_group("pt-2", s1)
    assert P == 2 * Q + 1 and P.bit_length() == 2048


def test_parallel_exponentiation_matches_serial():
    values = [hash_to_group(pid(i), b"\x03" * 16) for i in range(40)]
    e = 0xC0FFEE
    serial = _pow_all(values, e)
    parallel = _pow_all(values, e, workers=2, parallel_min=1)
    assert [int(v) for v in serial] == [int(v) for v in parallel]
    assert serial[0] == gmpy2.powmod(values[0], e, P)
