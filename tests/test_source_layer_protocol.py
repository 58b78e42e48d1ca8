"""The ``paillier`` protocol (federated source layer): no passive ever sees a gradient.

Equality with plain split learning is checked on decrypted values (decrypted here, in the
test, with the active party's key: never by a protocol message).
"""

import dataclasses

import numpy as np
import pytest

from tests.conftest import RecordingTransport, aligned_federation, make_vertical_tables
from tests.test_paillier_protocol import trained as run
from vfl.attacks.label_leakage import aggregate_inversion_auc
from vfl.core.errors import (
    CheckpointError,
    PayloadShapeError,
    ProtocolError,
    SecurityPolicyError,
    UnsupportedAtPassiveError,
)
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.tasks import Task
from vfl.crypto import EncryptedArray, FixedPointOverflowError, encrypt_array, pack_encrypted
from vfl.vertical.config import SecurityPolicy, TrainConfig
from vfl.vertical.models import ModelConfig
from vfl.vertical.source_layer import (
    COEF_FRAC_BITS,
    EMBED_BOUND_BITS,
    embedding_layout,
    embedding_scale,
    plaintext_view,
)
from vfl.vertical.trainer import SplitTrainer

MLP_TOP = ModelConfig("linear", "mlp", embed_dim=2, top_hidden=(4,))
BASE = TrainConfig(Task("binary"), MLP_TOP, epochs=2, batch_size=32, learning_rate=0.2,
                   optimizer="sgd", seed=5, key_bits=512, insecure_test_key=True)
PARAM_TOL = 1e-5


def plain_params(fed):
    """Every party's parameters as float arrays (plain, or decrypted source layers)."""
    import jax

    states = {n: {"params": fed.parties[n].snapshot().params} for n in fed.names}
    out = {}
    for name, st in plaintext_view(states).items():
        p = st["params"]
        if "W" in p:  # primal: W = U + V
            out[name] = p["W"]
        elif "P" in p:  # dual: W = W0 + X^T P
            x = fed.parties[name].x_train.astype(np.float64)
            out[name] = p["W0"] + x.T @ p["P"]
        elif "linear" in p:  # a plain passive
            out[name] = np.asarray(p["linear"]["kernel"])
        else:  # the active party: its bottom and top
            leaves = jax.tree.leaves({"bottom": p["bottom"], "top": p["top"]})
            out[name] = np.concatenate([np.ravel(np.asarray(x)) for x in leaves])
    return out


def assert_same_model(fa, ta, fb, tb):
    pa, pb = plain_params(fa), plain_params(fb)
    for name in pa:
        np.testing.assert_allclose(pa[name], pb[name], atol=PARAM_TOL, err_msg=name)
    ea, eb = ta.evaluate(with_scores=True), tb.evaluate(with_scores=True)
    assert abs(ea["metrics"]["auc"] - eb["metrics"]["auc"]) <= 0.005
    np.testing.assert_allclose(ea["scores"], eb["scores"], atol=1e-4)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_paillier_equals_plain(optimizer):
    tables = make_vertical_tables(n=200, seed=2)
    config = dataclasses.replace(BASE, optimizer=optimizer)
    fa, ta = run(tables, dataclasses.replace(config, protocol="plain"))
    fb, tb = run(tables, config)
    assert {fb.parties[p].source.form for p in fb.passives} == {"primal"}
    assert_same_model(fa, ta, fb, tb)


def test_dual_form_for_a_wide_party_equals_plain():
    # the lab has more features (60) than training rows (~45): auto picks the dual form
    tables = make_vertical_tables(n=70, seed=3, widths=(3, 60, 4))
    config = dataclasses.replace(BASE, batch_size=16, optimizer="momentum")
    fa, ta = run(tables, dataclasses.replace(config, protocol="plain"))
    fb, tb = run(tables, config)
    assert fb.parties["lab"].source.form == "dual"
    assert fb.parties["pharmacy"].source.form == "primal"
    assert_same_model(fa, ta, fb, tb)


def test_adam_at_the_active_party_with_sgd_at_passives():
    tables = make_vertical_tables(n=160, seed=4)
    config = dataclasses.replace(BASE, optimizer="adam", passive_optimizer="sgd",
                                 learning_rate=0.05)
    fa, ta = run(tables, dataclasses.replace(config, protocol="plain"))
    fb, tb = run(tables, config)
    assert_same_model(fa, ta, fb, tb)


def test_no_passive_receives_label_dependent_plaintext():
    tables = make_vertical_tables(n=160, seed=4)
    transport = RecordingTransport()
    fed, trainer = run(tables, dataclasses.replace(BASE, optimizer="momentum"), transport)
    trainer.evaluate()
    trainer.predict(list(fed.parties["hospital"].test_rows.ids[:5]))
    passives = set(fed.passives)
    seen = set()
    for e in fed.transcript:
        if e.receiver in passives:
            seen.add((e.kind, e.label))
            if e.label_dependent:
                assert e.label == "ciphertext", e
            else:
                assert e.label in ("public", "masked") or e.kind == "psi.positions", e
        if e.receiver == "hospital" and e.sender in passives:
            assert (e.kind, e.label) in {
                ("train.enc_embedding", "plaintext-by-design"),
                ("predict.enc_embedding", "plaintext-by-design"),
                ("psi.blind", "masked"),
                ("psi.positions", "plaintext-by-design"),
            }, e
    assert ("train.enc_update", "ciphertext") in seen
    kinds = {e.kind for e in fed.transcript}
    assert not kinds & {"train.cut_gradient", "train.enc_cut_gradient",
                        "train.masked_gradient_plain", "train.embedding"}
    # what the bytes say too: every update payload parses as ciphertexts at 2^-40
    pk = fed.parties["lab"].source.public_key
    for _sender, receiver, kind, data in transport.wire:
        if kind == "train.enc_update" and receiver == "lab":
            msg = Message.from_bytes(data)
            enc = EncryptedArray.from_bytes(msg.payload["ct"], pk)
            assert enc.scale_bits == COEF_FRAC_BITS


def test_inversion_attack_finds_nothing_in_ciphertexts():
    from scenarios.vertical_runs import audit_passives

    tables = make_vertical_tables(n=200, seed=6)
    fed = aligned_federation(tables)
    from vfl.attacks.label_leakage import capture_received

    views = {p: capture_received(fed.transport, p) for p in fed.passives}
    SplitTrainer(fed, BASE).fit(progress=False)
    reports = audit_passives(fed, views)
    for name, rep in reports.items():
        assert rep.inversion_auc <= 0.6, (name, rep.inversion_auc)


def test_inversion_attack_recovers_labels_from_an_invertible_aggregate():
    """Least squares against the party's own Jacobian inverts the masked protocol's
    aggregate gradient when params >= rows x width; the same attack is blind under
    paillier (above)."""
    rng = np.random.default_rng(0)
    ids = [f"r{i}" for i in range(64)]
    y = rng.integers(0, 2, size=64)
    labels = dict(zip(ids, y.tolist()))
    obs = []
    for start in range(0, 64, 16):
        rows = ids[start:start + 16]
        delta = (rng.uniform(0.1, 0.9, size=16) - y[start:start + 16])[:, None]  # width 1
        jac_t = rng.normal(size=(40, 16))  # 40 params >= 16 rows x 1
        obs.append((rows, jac_t, jac_t @ delta.ravel()))
    assert aggregate_inversion_auc(obs, labels, 1) == 1.0


# --- bad input -------------------------------------------------------------------------------
def test_mlp_bottom_at_a_passive_is_refused():
    with pytest.raises(UnsupportedAtPassiveError, match="bottom='linear'"):
        dataclasses.replace(BASE, model=ModelConfig("mlp", "mlp"))


def test_adam_at_a_passive_is_refused():
    with pytest.raises(UnsupportedAtPassiveError, match="passive_optimizer='sgd'"):
        dataclasses.replace(BASE, optimizer="adam")
    with pytest.raises(UnsupportedAtPassiveError):
        dataclasses.replace(BASE, passive_optimizer="adam")
    with pytest.raises(UnsupportedAtPassiveError, match="weight_decay"):
        dataclasses.replace(BASE, weight_decay=1e-3)


@pytest.fixture(scope="module")
def trained():
    tables = make_vertical_tables(n=160, seed=7)
    return run(tables, BASE)


def _embedding_msg(fed, ct, round=None, kind="train.enc_embedding"):
    from vfl.core.keyed import ids_digest

    active = fed.parties["hospital"]
    r = active.completed_round + 1 if round is None else round
    pos, _, _, digest = active._batch(r)
    payload = {"ct": ct, "batch_digest": digest}
    return Message("lab", "hospital", kind, Label.PLAINTEXT_BY_DESIGN, payload, round=r,
                   label_dependent=True), len(pos), ids_digest


def test_wrong_ciphertext_count_or_layout_is_refused(trained):
    fed, _ = trained
    pk = fed.parties["lab"].source.public_key
    msg, rows, _ = _embedding_msg(fed, b"")
    layout = embedding_layout("primal")
    count = layout.packed_count(rows * 2, pk)
    too_many = EncryptedArray([1 + pk.n] * (count + 1), (count + 1,), pk,
                              embedding_scale("primal")).to_bytes()
    with pytest.raises(PayloadShapeError, match="count and layout fixed at setup"):
        fed.transport.deliver(dataclasses.replace(msg, payload=msg.payload | {"ct": too_many}))
    wrong_scale = EncryptedArray([1 + pk.n] * count, (count,), pk, 40).to_bytes()
    with pytest.raises(PayloadShapeError, match="count and layout fixed at setup"):
        fed.transport.deliver(dataclasses.replace(msg, payload=msg.payload | {"ct": wrong_scale}))


def test_out_of_bound_embedding_is_refused(trained):
    fed, _ = trained
    pk = fed.parties["lab"].source.public_key
    msg, rows, _ = _embedding_msg(fed, b"")
    scale = embedding_scale("primal")
    values = np.zeros(rows * 2, dtype=object)
    values[:] = 0
    values[3] = 1 << (scale + EMBED_BOUND_BITS + 2)  # beyond the public bound, inside a slot
    enc = encrypt_array(pk, values, scale_bits=scale)
    packed = pack_encrypted(enc, embedding_layout("primal"))
    with pytest.raises(FixedPointOverflowError, match="public bound"):
        fed.transport.deliver(dataclasses.replace(msg, payload=msg.payload | {
            "ct": packed.to_bytes()}))


# --- malicious parties (threat model checks) -------------------------------------------------
def test_a_passive_cannot_send_setup(trained):
    fed, _ = trained
    forged = Message("lab", "hospital", "train.setup", Label.PUBLIC,
                     {"config": dataclasses.replace(BASE, protocol="plain").to_json(),
                      "active": "hospital", "passives": ["lab", "pharmacy"]})
    with pytest.raises(ProtocolError, match="refuses 'train.setup' from 'lab'"):
        fed.transport.deliver(forged)


def test_a_peer_passive_cannot_inject_updates(trained):
    fed, _ = trained
    forged = Message("pharmacy", "lab", "train.enc_update", Label.CIPHERTEXT, {"ct": b""},
                     round=10_000, label_dependent=True)
    with pytest.raises(ProtocolError, match="refuses 'train.enc_update' from 'pharmacy'"):
        fed.transport.deliver(forged)


def test_downgrade_to_plain_is_refused_by_the_partys_own_policy():
    tables = make_vertical_tables(n=120, seed=8)
    pinned = SecurityPolicy(protocols=("paillier",), min_key_bits=512,
                            allow_insecure_test_key=True)
    fed = aligned_federation(tables, policy=pinned)
    with pytest.raises(SecurityPolicyError, match="allows only"):
        SplitTrainer(fed, dataclasses.replace(BASE, protocol="plain")).setup()


def test_short_key_is_refused_whatever_the_wire_says():
    tables = make_vertical_tables(n=120, seed=8)
    fed = aligned_federation(tables, policy=SecurityPolicy())  # production policy
    with pytest.raises(SecurityPolicyError, match="512-bit"):
        SplitTrainer(fed, BASE).setup()  # BASE says insecure_test_key=True on the wire


# --- checkpoints and unlearning --------------------------------------------------------------
def test_resume_from_a_checkpoint_equals_an_uninterrupted_run():
    tables = make_vertical_tables(n=160, seed=9)
    config = dataclasses.replace(BASE, optimizer="momentum")
    records = []
    fa, ta = run(tables, config, on_round_end=records.append)
    mid = records[len(records) // 2]
    fb = aligned_federation(tables)
    tb = SplitTrainer(fb, config)
    tb.fit(progress=False, resume_from=mid)
    assert_same_model(fa, ta, fb, tb)
    # a checkpoint without the source-layer state cannot restore an encrypted run
    broken = dataclasses.replace(mid, states=dict(mid.states))
    hospital = broken.states["hospital"]
    broken.states["hospital"] = dataclasses.replace(
        hospital, params={k: v for k, v in hospital.params.items() if k != "key"})
    with pytest.raises(CheckpointError):
        SplitTrainer(aligned_federation(tables), config).fit(progress=False,
                                                             resume_from=broken)


def test_exact_erasure_equals_retrain_under_paillier(tmp_path):
    from unlearning.run import train_run
    from unlearning.service import ErasureRequest, ErasureService

    config = dataclasses.replace(BASE, epochs=2, batch_size=32)
    spec = {"mode": "vertical", "config": config.to_json(), "retention": {"every": 1},
            "fsync": False, "dataset": {"factory": "tests.conftest:make_vertical_tables",
                                        "kwargs": {"n": 120}, "active": "hospital"}}
    run_dir = train_run(tmp_path / "run", spec)
    train = run_dir.adapter().split_ids()["train"]
    pid = sorted(train)[len(train) // 2]
    cert = ErasureService(run_dir, retrain=True).submit(ErasureRequest(pid, party="lab"))
    assert cert["verification"]["max_abs_param_diff_vs_retrain"] <= PARAM_TOL


def test_coordinator_only_requests(trained):
    fed, _ = trained
    forged = Message("lab", "hospital", "train.step", Label.PUBLIC, {}, round=10_000)
    with pytest.raises(ProtocolError):
        fed.transport.deliver(forged)
    ok = Message(COORDINATOR, "hospital", "train.layout", Label.PUBLIC,
                 {"passives": {"lab": {"form": "primal"}, "pharmacy": {"form": "primal"}}})
    with pytest.raises(ProtocolError, match="already fixed"):
        fed.transport.deliver(ok)


def test_same_seed_same_decrypted_bits():
    """Ciphertexts and the random share U differ between runs (fresh randomness from
    secrets); the model they hold does not, to the bit."""
    tables = make_vertical_tables(n=120, seed=10)
    config = dataclasses.replace(BASE, optimizer="momentum", epochs=1)
    (fa, _), (fb, _) = run(tables, config), run(tables, config)
    pa, pb = plain_params(fa), plain_params(fb)
    for name in pa:
        assert pa[name].tobytes() == pb[name].tobytes(), name
    assert fa.parties["lab"].source.export()["state"] != fb.parties["lab"].source.export()["state"]


def test_malformed_payload_fields_are_refused_by_name(trained):
    fed, _ = trained
    msg, _, _ = _embedding_msg(fed, "not bytes")
    with pytest.raises(PayloadShapeError, match="'ct' field"):
        fed.transport.deliver(msg)
    no_digest = dataclasses.replace(msg, payload={"ct": b""})
    with pytest.raises(PayloadShapeError, match="'batch_digest' field"):
        fed.transport.deliver(no_digest)
