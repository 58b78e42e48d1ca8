"""Hardening of vertical training: malicious senders, downgrades, short keys, non-finite
updates, tiny overlaps and packing overflow each get a specific refusal, and nothing
changes at the party that refused."""

import dataclasses

import numpy as np
import pytest

from tests.conftest import aligned_federation, make_vertical_tables
from vfl import crypto as vc
from vfl.core.errors import ConfigError, PayloadShapeError, ProtocolError, SecurityPolicyError
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.tasks import Task
from vfl.vertical.config import SecurityPolicy, TrainConfig
from vfl.vertical.models import ModelConfig
from vfl.vertical.trainer import SplitTrainer

PLAIN = TrainConfig(Task("binary"), ModelConfig("linear", "sum"), epochs=1, batch_size=32,
                    learning_rate=0.05, seed=1, protocol="plain")


@pytest.fixture
def plain_run():
    fed = aligned_federation(make_vertical_tables(n=160, seed=11))
    trainer = SplitTrainer(fed, PLAIN)
    trainer.fit(progress=False, stop_after=0)
    return fed, trainer


def _lab_kernel(fed):
    return np.asarray(fed.parties["lab"].params["linear"]["kernel"][...]).copy()


def test_passive_cannot_downgrade_the_active_party(plain_run):
    """Before: a passive's forged train.setup with protocol='plain' was accepted."""
    fed, _ = plain_run
    forged = Message("lab", "hospital", "train.setup", Label.PUBLIC,
                     {"config": PLAIN.to_json(), "active": "hospital",
                      "passives": ["lab", "pharmacy"]})
    with pytest.raises(ProtocolError, match="only \\['coordinator'\\]"):
        fed.transport.deliver(forged)


def test_peer_passive_cannot_inject_a_cut_gradient(plain_run):
    """Before: the pharmacy could push a gradient into the lab's model."""
    fed, _ = plain_run
    c = fed.coordinator
    c.exchange([c.request("lab", "train.forward", round=1)])
    before = _lab_kernel(fed)
    forged = Message("pharmacy", "lab", "train.cut_gradient", Label.PLAINTEXT_BY_DESIGN,
                     {"g": np.ones((32, 1), np.float32)}, round=1)
    with pytest.raises(ProtocolError, match="from 'pharmacy'"):
        fed.transport.deliver(forged)
    assert np.array_equal(before, _lab_kernel(fed))


def test_gradient_that_makes_parameters_infinite_is_refused(plain_run):
    fed, _ = plain_run
    c = fed.coordinator
    c.exchange([c.request("lab", "train.forward", round=1)])
    before = _lab_kernel(fed)
    rows = fed.parties["lab"]._pending[3]
    huge = Message("hospital", "lab", "train.cut_gradient", Label.PLAINTEXT_BY_DESIGN,
                   {"g": np.full((rows, 1), 3e38, np.float32)}, round=1)
    with pytest.raises(PayloadShapeError, match="non-finite"):
        fed.transport.deliver(huge)
    assert np.array_equal(before, _lab_kernel(fed))


def test_wire_config_cannot_lower_the_key_length():
    """Before: a passive accepted a 256-bit key because the wire said insecure_test_key."""
    tables = make_vertical_tables(n=120, seed=12)
    config = TrainConfig(Task("binary"), ModelConfig("linear", "sum"), epochs=1,
                         batch_size=32, key_bits=256, insecure_test_key=True)
    fed = aligned_federation(tables, policy=SecurityPolicy())
    with pytest.raises(SecurityPolicyError, match="256-bit"):
        SplitTrainer(fed, config).setup()


def test_policy_pins_the_protocol():
    tables = make_vertical_tables(n=120, seed=12)
    fed = aligned_federation(tables, policy=SecurityPolicy(protocols=("paillier",)))
    with pytest.raises(SecurityPolicyError, match="downgrade"):
        SplitTrainer(fed, PLAIN).setup()


def test_tiny_overlap_is_refused_instead_of_nan_metrics():
    """Before: a 3-row overlap trained and reported NaN metrics on 0 test rows."""
    tables = make_vertical_tables(n=200, seed=13)
    keep = list(tables["lab"].ids[:3])
    tables = {n: t.rows([i for i in keep if i in set(t.ids)]) if n != "hospital" else t
              for n, t in tables.items()}
    fed = aligned_federation(tables)
    trainer = SplitTrainer(fed, dataclasses.replace(PLAIN, test_fraction=0.3))
    with pytest.raises(ConfigError, match="too few to train"):
        trainer.setup()


def test_no_held_out_rows_is_refused():
    tables = make_vertical_tables(n=40, seed=14)
    fed = aligned_federation(tables)
    trainer = SplitTrainer(fed, dataclasses.replace(PLAIN, test_fraction=1e-9))
    with pytest.raises(ConfigError, match="none held out"):
        trainer.setup()


def test_packed_slot_overflow_is_detected():
    """Before: a slot that overflowed carried into its neighbour and decoded silently."""
    pk, sk = vc.generate_keypair(512, insecure_test_key=True)
    layout = vc.PackingLayout(magnitude_bits=16)
    values = np.array([1 << 17, 5, -7], dtype=object)  # slot 0 leaves its 16 bits
    enc = vc.encrypt_array(pk, values)
    packed = vc.pack_encrypted(enc, layout)
    with pytest.raises(vc.FixedPointOverflowError, match="guard bits"):
        vc.decrypt_packed(sk, packed, layout, 3)
    ok = vc.pack_encrypted(vc.encrypt_array(pk, np.array([123, -5, 7], dtype=object)), layout)
    assert list(vc.decrypt_packed(sk, ok, layout, 3)) == [123, -5, 7]


def test_requests_only_from_the_coordinator(plain_run):
    fed, _ = plain_run
    for kind in ("train.forward", "predict.forward"):
        with pytest.raises(ProtocolError):
            fed.transport.deliver(Message("pharmacy", "lab", kind, Label.PUBLIC, {}, round=5))
    ok = Message(COORDINATOR, "lab", "train.forward", Label.PUBLIC, {}, round=1)
    assert fed.transport.deliver(ok)
