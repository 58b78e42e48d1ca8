import json

import numpy as np
import pytest

from vfl.attacks.label_leakage import (
    VIEW_ENCRYPTED,
    VIEW_PLAIN,
    LeakageReport,
    PassiveView,
    audit_label_leakage,
    capture_received,
    direction_scoring_auc,
    norm_scoring_auc,
)
from vfl.core.messages import Label, Message
from vfl.core.party import Party, handles
from vfl.core.transport import InMemoryTransport


def split_learning_grads(n=2000, width=4, pos_rate=0.1, seed=0):
    """Cut-layer gradients of a logistic top model: dL/dh = (sigmoid(z) - y) * w."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < pos_rate).astype(int)
    # a partly trained model: positives mostly score low (they are rare), so |p - y| is
    # large for positives and small for negatives
    z = rng.normal(-2.0, 1.0, size=n) + 1.0 * y
    p = 1.0 / (1.0 + np.exp(-z))
    w = rng.normal(size=width)
    noise = 0.01 * rng.normal(size=(n, width))
    return (p - y)[:, None] * w[None, :] + noise, y


def test_attacks_recover_labels_from_plain_gradients():
    g, y = split_learning_grads()
    assert norm_scoring_auc(g, y) > 0.95
    assert direction_scoring_auc(g, y) > 0.95


def test_attacks_are_chance_on_label_independent_gradients():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(4000, 4))
    y = (rng.random(4000) < 0.1).astype(int)
    assert abs(norm_scoring_auc(g, y) - 0.5) < 0.05
    assert abs(direction_scoring_auc(g, y) - 0.5) < 0.05


def test_direction_reference_index_and_exclusion():
    g = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [-0.8, 0.2], [1.0, 0.05]])
    y = np.array([1, 1, 0, 0, 0])
    # reference = sample 0 (first positive); scored: positive 1 vs negatives 2, 3, 4.
    # cos(1, ref) = 0.994 beats 2 and 3 (negative) but loses to 4 (0.9988): AUC = 2/3
    assert direction_scoring_auc(g, y) == pytest.approx(2 / 3)
    assert direction_scoring_auc(g, y, reference_index=1) == pytest.approx(
        direction_scoring_auc(g[[1, 0, 2, 3, 4]], y[[1, 0, 2, 3, 4]])
    )
    with pytest.raises(ValueError, match="negative example"):
        direction_scoring_auc(g, y, reference_index=2)


@pytest.mark.parametrize(
    ("grads", "labels", "match"),
    [
        (np.ones((3, 2)), [0, 1], "3 gradients but 2 labels"),
        (np.ones((3, 2)), [0, 0, 0], "no positive labels"),
        (np.ones((3, 2)), [1, 1, 1], "no negative labels"),
        (np.ones((3, 2)), [0, 1, 2], "binary"),
        (np.ones((3, 2, 2)), [0, 1, 0], "shape"),
        (np.array([[np.nan], [1.0], [2.0]]), [0, 1, 0], "NaN"),
    ],
)
def test_bad_inputs_raise(grads, labels, match):
    with pytest.raises(ValueError, match=match):
        norm_scoring_auc(grads, labels)
    with pytest.raises(ValueError, match=match):
        direction_scoring_auc(grads, labels)


def test_direction_needs_both_classes_after_removing_reference():
    with pytest.raises(ValueError, match="only one class"):
        direction_scoring_auc(np.eye(3), [1, 0, 0])  # the only positive is the reference


# --- transport capture and the full audit ----------------------------------------------------
class Sink(Party):
    def __init__(self, name):
        super().__init__(name)
        self.seen = []

    @handles("train.cut_gradient")
    def on_grad(self, msg):
        self.seen.append(msg.round)
        return []

    @handles("train.enc_cut_gradient")
    def on_enc(self, msg):
        return []

    @handles("train.masked_gradient_plain")
    def on_masked(self, msg):
        return []


def _plain_run(n_rounds=20, batch=64, seed=0):
    g, y = split_learning_grads(n=n_rounds * batch, seed=seed)
    ids = [f"row-{i}" for i in range(len(y))]
    labels = dict(zip(ids, y.tolist(), strict=True))

    def batch_ids(r):
        return ids[r * batch : (r + 1) * batch]

    transport = InMemoryTransport()
    transport.register(Sink("lab"))
    transport.register(Sink("pharmacy"))
    received = capture_received(transport, "lab")
    for r in range(n_rounds):
        rows = slice(r * batch, (r + 1) * batch)
        for name in ("lab", "pharmacy"):
            transport.deliver(
                Message(
                    "hospital",
                    name,
                    "train.cut_gradient",
                    Label.PLAINTEXT_BY_DESIGN,
                    {"g": g[rows].astype(np.float32)},
                    r,
                    True,
                )
            )
    return transport, received, batch_ids, labels


def test_capture_received_keeps_only_that_partys_messages():
    transport, received, _, _ = _plain_run(n_rounds=3)
    assert len(received) == 3
    assert all(m.receiver == "lab" and m.kind == "train.cut_gradient" for m in received)
    assert [m.round for m in received] == [0, 1, 2]
    assert isinstance(received[0].payload["g"], np.ndarray)  # decoded, as the receiver sees it
    view = PassiveView("pharmacy").attach(transport)
    view.detach(transport)
    assert view not in transport.observers


def test_audit_plain_protocol_reports_leak():
    _, received, batch_ids, labels = _plain_run()
    report = audit_label_leakage(received, batch_ids, labels)
    assert isinstance(report, LeakageReport)
    assert report.party == "lab"
    assert report.protocol_view == VIEW_PLAIN
    assert report.n_samples == 20 * 64 and report.n_rounds == 20
    assert report.norm_auc > 0.9 and report.direction_auc > 0.9
    js = report.to_json()
    assert json.loads(json.dumps(js))["norm_auc"] == pytest.approx(report.norm_auc)


def test_audit_plain_mismatched_batch_ids_raise():
    _, received, batch_ids, labels = _plain_run(n_rounds=2)
    with pytest.raises(ValueError, match="batch ids"):
        audit_label_leakage(received, lambda r: batch_ids(r)[:-1], labels)
    with pytest.raises(ValueError, match="no label for row id"):
        audit_label_leakage(received, batch_ids, {})


def test_audit_paillier_view_has_no_per_sample_plaintext():
    rng = np.random.default_rng(3)
    batch, n_rounds = 32, 12
    ids = [f"r{i}" for i in range(batch * n_rounds)]
    y = (rng.random(len(ids)) < 0.2).astype(int)
    labels = dict(zip(ids, y.tolist(), strict=True))

    def batch_ids(r):
        return ids[r * batch : (r + 1) * batch]

    transport = InMemoryTransport()
    transport.register(Sink("lab"))
    received = capture_received(transport, "lab")
    aggregates = {}
    for r in range(n_rounds):
        transport.deliver(
            Message(
                "hospital",
                "lab",
                "train.enc_cut_gradient",
                Label.CIPHERTEXT,
                {"ct": b"\x00" * 64},
                r,
                True,
            )
        )
        transport.deliver(
            Message(
                "hospital",
                "lab",
                "train.masked_gradient_plain",
                Label.MASKED,
                {"values": [int(v) for v in rng.integers(0, 2**40, size=5)]},
                r,
                True,
            )
        )
        aggregates[r] = np.full(5, float(sum(labels[i] for i in batch_ids(r))))
    report = audit_label_leakage(received, batch_ids, labels)
    assert report.protocol_view == VIEW_ENCRYPTED
    # no per-sample values to score: the attacks are not run and report NaN, not a number
    assert np.isnan(report.norm_auc) and np.isnan(report.direction_auc)
    assert "no per-sample plaintext" in report.reason
    assert report.n_samples == batch * n_rounds and report.batch_norm_auc is None
    # with the unmasked aggregates (the passive computes them itself) a batch-level score
    with_agg = audit_label_leakage(received, batch_ids, labels, aggregate_gradients=aggregates)
    assert with_agg.batch_norm_auc == pytest.approx(1.0)  # norm grows with positives here
    assert "median" in with_agg.batch_norm_meaning
    assert json.dumps(with_agg.to_json())


def test_audit_without_gradients_and_mixed_views():
    report = audit_label_leakage([], lambda r: [], {}, party="lab")
    assert report.n_samples == 0 and report.norm_auc == 0.5
    mixed = [
        Message(
            "h", "lab", "train.cut_gradient", Label.PLAINTEXT_BY_DESIGN, {"g": np.zeros((1, 1))}, 0
        ),
        Message("h", "lab", "train.enc_cut_gradient", Label.CIPHERTEXT, {}, 1),
    ]
    with pytest.raises(ValueError, match="mix"):
        audit_label_leakage(mixed, lambda r: ["a"], {"a": 1})
