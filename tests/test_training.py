"""Split training: determinism, resume, leakage boundaries and bad protocol input."""

import dataclasses

import numpy as np
import pytest

from scenarios.vertical_runs import pooled_table, single_party_trainer
from tests.conftest import RecordingTransport, aligned_federation, make_vertical_tables
from vfl.core.errors import (
    CheckpointError,
    PayloadShapeError,
    ReplayedMessageError,
    SchemaMismatchError,
)
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.tasks import Task
from vfl.vertical.config import TrainConfig
from vfl.vertical.models import ModelConfig
from vfl.vertical.trainer import SplitTrainer

CONFIG = TrainConfig(Task("binary"), ModelConfig("linear", "sum"), epochs=3, batch_size=32,
                     learning_rate=0.05, seed=3, optimizer="adam", protocol="plain")
MLP = dataclasses.replace(CONFIG, model=ModelConfig("mlp", "mlp", hidden=(8,), embed_dim=3,
                                                    top_hidden=(4,)))


federation = aligned_federation


def final_params(fed):
    out = {}
    for name in fed.names:
        state = fed.parties[name].snapshot()
        leaves = []

        def walk(t, leaves=leaves):
            if isinstance(t, dict):
                for k in sorted(t):
                    walk(t[k])
            else:
                leaves.append(np.asarray(t))

        walk(state.params)
        out[name] = leaves + [np.asarray(x) for x in state.opt_state]
    return out


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert len(a[name]) == len(b[name])
        for x, y in zip(a[name], b[name]):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name


@pytest.mark.parametrize("config", [CONFIG, MLP], ids=["linear", "mlp"])
def test_same_seed_is_bitwise_equal(vertical_tables, config):
    runs = []
    for _ in range(2):
        fed = federation(vertical_tables)
        trainer = SplitTrainer(fed, config)
        hist = trainer.fit(progress=False)
        runs.append((final_params(fed), hist.loss, trainer.evaluate()["metrics"]))
    assert_bitwise_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert runs[0][2] == runs[1][2]


@pytest.mark.parametrize("config", [CONFIG, MLP], ids=["linear", "mlp"])
def test_resume_from_checkpoint_equals_uninterrupted(vertical_tables, config):
    fed = federation(vertical_tables)
    full = SplitTrainer(fed, config)
    records = []
    full.fit(progress=False, on_round_end=records.append)
    expected = final_params(fed)
    assert [r.round for r in records] == list(range(full.n_rounds))
    assert all(set(r.states) == {"hospital", "lab", "pharmacy"} for r in records)
    # every round reports the ids it used, identical at every party
    assert all(len({r.ids_used[p] for p in r.ids_used}) == 1 for r in records)

    cut = full.n_rounds // 2
    fed2 = federation(vertical_tables)
    interrupted = SplitTrainer(fed2, config)
    saved = []
    interrupted.fit(progress=False, stop_after=cut, on_round_end=saved.append)
    fed3 = federation(vertical_tables)  # a fresh process: new parties, same data
    resumed = SplitTrainer(fed3, config)
    resumed.fit(progress=False, resume_from=saved[-1])
    assert_bitwise_equal(final_params(fed3), expected)


def test_resume_rejects_other_config(vertical_tables):
    fed = federation(vertical_tables)
    saved = []
    SplitTrainer(fed, CONFIG).fit(progress=False, stop_after=1, on_round_end=saved.append)
    other = SplitTrainer(federation(vertical_tables), dataclasses.replace(CONFIG, seed=99))
    with pytest.raises(CheckpointError):
        other.fit(progress=False, resume_from=saved[-1])


def _run_recorded(tables, config=CONFIG):
    transport = RecordingTransport()
    fed = federation(tables, transport)
    trainer = SplitTrainer(fed, config)
    trainer.fit(progress=False)
    trainer.evaluate("test")
    return fed, transport


def test_passive_parties_never_receive_labels(vertical_tables):
    fed, transport = _run_recorded(vertical_tables)
    hospital = fed.parties["hospital"]
    passives = set(fed.passives)
    inbound = [data for _, receiver, _, data in transport.wire if receiver in passives]
    # 1. no batch's label vector, in any dtype, appears in bytes sent to a passive party
    for r in range(hospital.schedule.n_rounds):
        y = hospital.y_train[hospital.schedule.positions(r)]
        for dtype in (np.float32, np.float64, np.int32, np.int64, np.bool_):
            form = y.astype(dtype).tobytes()
            assert not any(form in data for data in inbound), (r, dtype)
    # 2. the only label-dependent payloads passives get are the documented plaintext
    #    cut-layer gradients of the plain protocol
    dep = {(e.kind, e.label) for e in fed.transcript if e.receiver in passives
           and e.label_dependent}
    assert dep == {("train.cut_gradient", str(Label.PLAINTEXT_BY_DESIGN))}


def test_label_dependence_flags_are_honest(vertical_tables):
    """Flip the labels: every message *to a passive party* that changes must be flagged."""
    flipped = dict(vertical_tables)
    h = vertical_tables["hospital"]
    flipped["hospital"] = dataclasses.replace(h, labels=1 - h.labels)
    fa, a = _run_recorded(vertical_tables)
    _, b = _run_recorded(flipped)
    assert len(a.wire) == len(b.wire)
    changed_to_passive = {
        (x[1], x[2]) for x, y in zip(a.wire, b.wire)
        if x[3] != y[3] and x[1] in fa.passives and not x[2].startswith("psi.")
    }
    flagged = {(e.receiver, e.kind) for e in fa.transcript if e.label_dependent}
    assert changed_to_passive, "labels must reach the passives somehow in plain split learning"
    assert changed_to_passive <= flagged


def test_no_party_receives_another_partys_features():
    tables = make_vertical_tables(widths=(6, 7, 8))
    fed, transport = _run_recorded(tables)
    for owner in fed.names:
        party = fed.parties[owner]
        forms = [party.x_train.astype(np.float32), party.x_train.astype(np.float64),
                 party.table.features, party.table.features.astype(np.float32)]
        for _sender, receiver, kind, data in transport.wire:
            if receiver == owner:
                continue
            for x in forms:
                for row in x[:50]:
                    assert row.tobytes() not in data, (owner, receiver, kind)
                for col in x.T:
                    assert col[:8].tobytes() not in data, (owner, receiver, kind)


def test_vertical_linear_model_equals_centralized(vertical_tables):
    fed = federation(vertical_tables)
    vfl = SplitTrainer(fed, CONFIG)
    vfl.fit(progress=False)
    ids = fed.parties["hospital"].aligned_ids
    central = single_party_trainer(pooled_table(vertical_tables, "hospital", ids), "hospital",
                                   ids, CONFIG)
    central.fit(progress=False)
    a = vfl.evaluate(with_scores=True)
    b = central.evaluate(with_scores=True)
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
    assert abs(a["metrics"]["auc"] - b["metrics"]["auc"]) < 1e-6


def test_replayed_round_is_rejected_without_state_change(vertical_tables):
    fed = federation(vertical_tables)
    trainer = SplitTrainer(fed, CONFIG)
    trainer.fit(progress=False, stop_after=2)
    lab = fed.parties["lab"]
    before = final_params(fed)
    old = Message(COORDINATOR, "lab", "train.forward", Label.PUBLIC, {}, round=1)
    with pytest.raises(ReplayedMessageError, match="round 1"):
        fed.transport.deliver(old)
    assert_bitwise_equal(final_params(fed), before)
    assert lab.completed_round == 2


def test_wrong_gradient_shape_is_rejected_without_state_change(vertical_tables):
    fed = federation(vertical_tables)
    trainer = SplitTrainer(fed, CONFIG)
    trainer.fit(progress=False, stop_after=0)
    c = fed.coordinator
    c.exchange([c.request("lab", "train.forward", round=1)])
    before = final_params(fed)
    bad = Message("hospital", "lab", "train.cut_gradient", Label.PLAINTEXT_BY_DESIGN,
                  {"g": np.zeros((3, 5), np.float32)}, round=1, label_dependent=True)
    with pytest.raises(PayloadShapeError, match="expected a cut-layer gradient"):
        fed.transport.deliver(bad)
    assert_bitwise_equal(final_params(fed), before)


def test_prediction_schema_mismatch(vertical_tables):
    fed = federation(vertical_tables)
    lab = fed.parties["lab"]
    other = make_vertical_tables(widths=(4, 3, 6))["lab"]  # lab with fewer columns
    with pytest.raises(SchemaMismatchError):
        lab.load_scoring_table(other)


def test_predict_uses_only_embeddings(vertical_tables):
    fed = federation(vertical_tables)
    trainer = SplitTrainer(fed, CONFIG)
    trainer.fit(progress=False)
    ids = list(fed.parties["hospital"].test_rows.ids[:10])
    before = len(fed.transcript)
    scores = trainer.predict(ids)
    assert scores.shape == (10,) and np.all((scores >= 0) & (scores <= 1))
    new = fed.transcript.entries[before:]
    to_active = {(e.kind, e.label) for e in new if e.receiver == "hospital"}
    assert ("predict.embedding", "plaintext-by-design") in to_active
    ev = trainer.evaluate(with_scores=True)
    test_ids = list(fed.parties["hospital"].test_rows.ids)
    np.testing.assert_allclose(trainer.predict(test_ids), ev["scores"], atol=1e-6)


@pytest.mark.parametrize("task", [Task("multiclass", 3), Task("regression")])
def test_other_tasks_train(task):
    tables = make_vertical_tables(n=500)
    h = tables["hospital"]
    rng = np.random.default_rng(0)
    if task.kind == "multiclass":
        labels = (h.features[:, 0] > 0).astype(int) + (h.features[:, 1] > 0.5)
    else:
        labels = h.features[:, 0] * 2.0 + rng.normal(size=h.n_rows) * 0.1
    tables["hospital"] = dataclasses.replace(h, labels=labels)
    fed = federation(tables)
    trainer = SplitTrainer(fed, dataclasses.replace(CONFIG, task=task, epochs=15))
    hist = trainer.fit(progress=False)
    assert hist.loss[-1] < hist.loss[0]
    metrics = trainer.evaluate()["metrics"]
    if task.kind == "multiclass":
        assert metrics["accuracy"] > 0.6
    else:
        assert metrics["rmse"] < np.std(labels)
