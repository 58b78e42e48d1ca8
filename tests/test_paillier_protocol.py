"""The opt-in ``paillier-masked-gradient`` protocol: same model as plain split learning, a
clean transcript, and refusal where a passive could invert its aggregate gradient."""

import dataclasses

import numpy as np
import pytest

from tests.conftest import RecordingTransport, aligned_federation, make_vertical_tables
from vfl.core.errors import (
    ConfigError,
    InvertibleConfigurationError,
    PayloadShapeError,
    ReplayedMessageError,
    SecurityPolicyError,
)
from vfl.core.messages import Label, Message
from vfl.core.tasks import Task
from vfl.crypto import (
    FixedPointOverflowError,
    InsecureKeyError,
    InvalidCiphertextError,
    WrongKeyError,
    generate_keypair,
)
from vfl.crypto.ciphertext import EncryptedArray
from vfl.vertical.config import TrainConfig
from vfl.vertical.masked_gradient import DELTA_FRAC_BITS
from vfl.vertical.models import ModelConfig
from vfl.vertical.trainer import SplitTrainer

PLAIN = TrainConfig(Task("binary"), ModelConfig("linear", "sum"), epochs=2, batch_size=32,
                    learning_rate=0.05, seed=5, optimizer="adam", protocol="plain")
MLP = dataclasses.replace(PLAIN, model=ModelConfig("mlp", "mlp", hidden=(4,), embed_dim=2,
                                                   top_hidden=(4,)))


def paillier(config):
    return dataclasses.replace(config, protocol="paillier-masked-gradient", key_bits=1024,
                               insecure_test_key=True)


def trained(tables, config, transport=None, **fit):
    fed = aligned_federation(tables, transport)
    trainer = SplitTrainer(fed, config)
    trainer.fit(progress=False, **fit)
    return fed, trainer


def leaves(fed):
    import jax

    return {n: [np.asarray(x) for x in jax.tree.leaves(fed.parties[n].snapshot().params)]
            for n in fed.names}


# Tolerance: the paillier protocol computes J^T delta exactly on fixed-point values
# (delta at 2^-32, J at 2^-20) where plain uses float32 sums. The Jacobian's rounding error
# moves g by at most 2^-21 * sum|delta| per step; measured over a full run the parameters
# differ by ~1e-7 (linear) and ~6e-7 (MLP), well below this tolerance.
PARAM_TOL = 1e-4


@pytest.mark.parametrize("config", [PLAIN, MLP], ids=["linear", "mlp"])
def test_paillier_equals_plain(config):
    tables = make_vertical_tables(n=200, seed=2)
    fa, ta = trained(tables, config)
    fb, tb = trained(tables, paillier(config))
    la, lb = leaves(fa), leaves(fb)
    for name in la:
        for x, y in zip(la[name], lb[name]):
            np.testing.assert_allclose(x, y, atol=PARAM_TOL)
    ea, eb = ta.evaluate(with_scores=True), tb.evaluate(with_scores=True)
    assert abs(ea["metrics"]["auc"] - eb["metrics"]["auc"]) <= 0.005
    np.testing.assert_allclose(ea["scores"], eb["scores"], atol=1e-4)


def test_paillier_runs_are_bitwise_reproducible():
    tables = make_vertical_tables(n=160, seed=3)
    a, _ = trained(tables, paillier(PLAIN))
    b, _ = trained(tables, paillier(PLAIN))
    for name, xs in leaves(a).items():
        for x, y in zip(xs, leaves(b)[name]):
            assert x.tobytes() == y.tobytes()


def test_transcript_walk_paillier():
    tables = make_vertical_tables(n=160, seed=4)
    transport = RecordingTransport()
    fed, trainer = trained(tables, paillier(MLP), transport)
    trainer.evaluate()
    passives = set(fed.passives)
    for e in fed.transcript:
        if e.receiver in passives and e.label_dependent:
            # per-sample gradients arrive encrypted; the only other label-dependent thing is
            # the party's own masked aggregate, which it unmasks itself
            assert (e.kind, e.label) in {("train.enc_cut_gradient", "ciphertext"),
                                         ("train.masked_gradient_plain", "masked")}
        if e.receiver in passives:
            assert not (e.label == "plaintext-by-design" and e.label_dependent), e
        if e.receiver == "hospital" and e.sender in passives and e.kind.startswith("train."):
            assert (e.kind, e.label) in {("train.masked_gradient", "masked"),
                                         ("train.embedding", "plaintext-by-design")}
    kinds = {e.kind for e in fed.transcript}
    assert "train.cut_gradient" not in kinds
    assert {"train.enc_cut_gradient", "train.masked_gradient",
            "train.masked_gradient_plain"} <= kinds


@pytest.fixture
def mid_round():
    """A paillier federation stopped inside round 1: the lab has done its forward pass."""
    tables = make_vertical_tables(n=160, seed=6)
    fed, trainer = trained(tables, paillier(PLAIN), stop_after=0)
    c = fed.coordinator
    c.exchange([c.request("lab", "train.forward", round=1)])
    return fed


def _lab_state(fed):
    return [x.tobytes() for x in leaves(fed)["lab"]]


def _enc_delta_msg(fed, ct, round=1):
    return Message("hospital", "lab", "train.enc_cut_gradient", Label.CIPHERTEXT, {"ct": ct},
                   round=round, label_dependent=True)


def _valid_ct(fed, values=None):
    lab = fed.parties["lab"]
    rows = lab._pending[3]
    pk = lab._sealer.public_key
    vals = values if values is not None else [1 + pk.n] * rows
    return EncryptedArray(vals, (rows,), pk, DELTA_FRAC_BITS)


def test_tampered_ciphertext_rejected_without_state_change(mid_round):
    fed = mid_round
    before = _lab_state(fed)
    pk = fed.parties["lab"]._sealer.public_key
    good = _valid_ct(fed).to_bytes()
    width = pk.ciphertext_bytes
    for bad_value in (0, pk.nsquare, pk.nsquare + 5, pk.n):  # out of range, not a unit
        data = good[: len(good) - width] + int(bad_value % (1 << (8 * width))).to_bytes(
            width, "big")
        with pytest.raises(InvalidCiphertextError):
            fed.transport.deliver(_enc_delta_msg(fed, data))
    assert _lab_state(fed) == before


def test_wrong_key_rejected(mid_round):
    fed = mid_round
    other, _ = generate_keypair(1024, insecure_test_key=True)
    rows = fed.parties["lab"]._pending[3]
    ct = EncryptedArray([1 + other.n] * rows, (rows,), other, DELTA_FRAC_BITS).to_bytes()
    before = _lab_state(fed)
    with pytest.raises(WrongKeyError):
        fed.transport.deliver(_enc_delta_msg(fed, ct))
    assert _lab_state(fed) == before


def test_wrong_shape_rejected(mid_round):
    fed = mid_round
    pk = fed.parties["lab"]._sealer.public_key
    ct = EncryptedArray([1 + pk.n] * 3, (3,), pk, DELTA_FRAC_BITS).to_bytes()
    before = _lab_state(fed)
    with pytest.raises(PayloadShapeError, match="encrypted gradient values"):
        fed.transport.deliver(_enc_delta_msg(fed, ct))
    assert _lab_state(fed) == before


def test_replayed_round_rejected(mid_round):
    fed = mid_round
    ct = _valid_ct(fed).to_bytes()
    with pytest.raises(ReplayedMessageError):
        fed.transport.deliver(_enc_delta_msg(fed, ct, round=0))


def test_overflow_is_a_specific_error():
    from vfl.vertical.masked_gradient import ActiveKeyring

    keyring = ActiveKeyring(1024, insecure_test_key=True)
    with pytest.raises(FixedPointOverflowError):
        keyring.encrypt_delta(np.full((4, 1), 1e6))


def test_short_key_needs_the_test_flag():
    tables = make_vertical_tables(n=120, seed=7)
    config = dataclasses.replace(PLAIN, protocol="paillier-masked-gradient", key_bits=1024)
    with pytest.raises(InsecureKeyError):
        trained(tables, config)
    # the wire config's insecure_test_key does not override a party's own policy
    with pytest.raises(SecurityPolicyError):
        fed = aligned_federation(tables, policy=None)
        SplitTrainer(fed, paillier(PLAIN)).setup()


def test_invertible_configuration_is_refused():
    """A passive with at least batch rows x width parameters would solve for delta."""
    tables = make_vertical_tables(n=200, seed=9, widths=(4, 40, 6))
    with pytest.raises(InvertibleConfigurationError, match="protocol='paillier'"):
        trained(tables, dataclasses.replace(paillier(PLAIN), batch_size=32))


def test_tiny_last_batch_is_refused():
    tables = make_vertical_tables(n=120, seed=8)
    fed = aligned_federation(tables)
    n_train = None
    for b in range(9, 64):
        trainer = SplitTrainer(fed, dataclasses.replace(paillier(PLAIN), batch_size=b))
        try:
            trainer.setup()
        except ConfigError as err:
            assert "at least" in str(err)
            n_train = b
            break
    assert n_train is not None, "some batch size must leave a last batch below the minimum"
