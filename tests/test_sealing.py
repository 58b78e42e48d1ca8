"""End-to-end sealing of party-to-party payloads (vfl.core.sealing)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfl.core.sealing import KeyPinningError, PinnedKeys, SealingError, SealingKey

LAB, HOSPITAL, PHARMACY = SealingKey("lab"), SealingKey("hospital"), SealingKey("pharmacy")


@settings(max_examples=40, deadline=None)
@given(payload=st.binary(max_size=4096), kind=st.text(max_size=20),
       round=st.one_of(st.none(), st.integers(0, 2**31)))
def test_the_receiver_opens_exactly_what_was_sealed(payload, kind, round):
    sealed = LAB.seal("hospital", HOSPITAL.public_bytes, kind, round, payload)
    assert HOSPITAL.open("lab", LAB.public_bytes, kind, round, sealed) == payload
    # the router sees only the version byte, the salt and ciphertext + tag: nothing of payload
    assert len(sealed) == 1 + 16 + len(payload) + 16
    if len(payload) >= 16:
        assert payload not in sealed


def test_fresh_salt_makes_every_sealing_different():
    a = LAB.seal("hospital", HOSPITAL.public_bytes, "train.embedding", 3, b"same bytes")
    b = LAB.seal("hospital", HOSPITAL.public_bytes, "train.embedding", 3, b"same bytes")
    assert a != b


@pytest.mark.parametrize("change", ["kind", "round", "sender", "receiver", "byte", "version"])
def test_any_change_is_refused(change):
    sealed = LAB.seal("hospital", HOSPITAL.public_bytes, "train.embedding", 3, b"embedding")
    kind, round, sender, opener = "train.embedding", 3, "lab", HOSPITAL
    if change == "kind":
        kind = "train.cut_gradient"
    elif change == "round":
        round = 4
    elif change == "sender":
        sender = "pharmacy"  # claims another origin (with the lab's key: direction differs)
    elif change == "receiver":
        opener = SealingKey("hospital")  # someone else holding the name, not the key
    elif change == "byte":
        sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
    elif change == "version":
        sealed = bytes([2]) + sealed[1:]
    with pytest.raises(SealingError):
        opener.open(sender, LAB.public_bytes, kind, round, sealed)


def test_a_third_party_cannot_open_it():
    sealed = LAB.seal("hospital", HOSPITAL.public_bytes, "train.embedding", 0, b"h")
    with pytest.raises(SealingError, match="does not open"):
        PHARMACY.open("lab", LAB.public_bytes, "train.embedding", 0, sealed)


def test_truncated_payload_is_refused():
    with pytest.raises(SealingError, match="too short"):
        HOSPITAL.open("lab", LAB.public_bytes, "k", 0, b"\x01" + b"\x00" * 10)


def test_keys_are_pinned_at_setup():
    pins = PinnedKeys()
    pins.pin("lab", LAB.public_bytes)
    pins.pin("lab", LAB.public_bytes)  # the same key again is fine
    assert pins["lab"] == LAB.public_bytes and "lab" in pins and pins.names() == ["lab"]
    with pytest.raises(KeyPinningError, match="different public key"):
        pins.pin("lab", SealingKey("lab").public_bytes)
    with pytest.raises(KeyPinningError, match="no public key is pinned"):
        pins["pharmacy"]
    with pytest.raises(SealingError, match="32 raw bytes"):
        pins.pin("pharmacy", b"short")
