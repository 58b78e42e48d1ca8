"""Bad input, compression, heterogeneity, partitioners and robust aggregation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from test_horizontal_helpers import make_hospitals

from horizontal import (
    AllClientsDroppedError,
    ClientSchemaError,
    FedConfig,
    FederatedTrainer,
    HospitalClient,
    InvalidExampleCountError,
    NoClientsSampledError,
    NonFiniteUpdateError,
    SystemsConfig,
    UpdateShapeError,
)
from horizontal import partition as part
from horizontal.compression import ErrorFeedback, decode, encode
from horizontal.personalization import compare
from vfl.core.errors import VFLError
from vfl.core.table import PartyTable

SMALL = dict(hidden=(4,), rounds=2, batch_size=16, client_lr=0.1)


def corrupting(kind):
    """A client factory whose ``hospital_1`` corrupts its update in a given way."""

    class Corrupt(HospitalClient):
        def on_collect(self, msg):
            replies = super().on_collect(msg)
            if self.name != "hospital_1":
                return replies
            p = dict(replies[0].payload)
            if kind == "nan":
                v = np.array(p["update"]["v"])
                v[0] = np.nan
                p["update"] = {"scheme": "none", "v": v}
            elif kind == "shape":
                p["update"] = {"scheme": "none", "v": np.zeros(3, np.float32)}
            elif kind in ("zero", "negative"):
                p["num_examples"] = 0 if kind == "zero" else -5
            return [self.send(replies[0].receiver, replies[0].kind, replies[0].label, p,
                              round=msg.round, label_dependent=True)]

    return Corrupt


@pytest.mark.parametrize("kind,error", [("nan", NonFiniteUpdateError),
                                        ("shape", UpdateShapeError),
                                        ("zero", InvalidExampleCountError),
                                        ("negative", InvalidExampleCountError)])
def test_bad_update_is_named_and_dropped_or_raised(kind, error):
    tables = make_hospitals()
    clean = FederatedTrainer(tables, FedConfig(**SMALL))
    clean.setup()
    bad = FederatedTrainer(tables, FedConfig(**SMALL), client_factory=corrupting(kind))
    summary = bad.fit(progress=False)[0]
    assert set(summary["rejected"]) == {"hospital_1"}
    assert "hospital_1" in summary["rejected"]["hospital_1"]
    assert "hospital_1" not in summary["clients"] and len(summary["clients"]) == 3
    assert np.isfinite(bad.global_params()).all()
    strict = FederatedTrainer(tables, FedConfig(**SMALL, on_bad_update="raise"),
                              client_factory=corrupting(kind))
    strict.setup()
    before = strict.global_params()
    with pytest.raises(error, match="hospital_1") as info:
        strict.run_round(0)
    assert isinstance(info.value, VFLError) and info.value.client == "hospital_1"
    np.testing.assert_array_equal(strict.global_params(), before)  # never corrupted


def test_client_with_different_schema():
    tables = make_hospitals()
    t = tables["hospital_2"]
    tables["hospital_2"] = PartyTable.from_numpy(t.ids, t.features[:, ::-1],
                                                 list(t.columns[::-1]), labels=t.labels)
    trainer = FederatedTrainer(tables, FedConfig(**SMALL))
    trainer.fit(progress=False)
    assert "hospital_2" in trainer.excluded and "order differs" in trainer.excluded["hospital_2"]
    assert trainer.members == ["hospital_0", "hospital_1", "hospital_3"]
    with pytest.raises(ClientSchemaError, match="hospital_2"):
        FederatedTrainer(tables, FedConfig(**SMALL, on_bad_update="raise")).setup()


def test_fraction_that_samples_nobody():
    with pytest.raises(NoClientsSampledError, match="fraction"):
        FederatedTrainer(make_hospitals(), FedConfig(**SMALL, fraction=0.1)).setup()
    with pytest.raises(NoClientsSampledError):
        FedConfig(clients_per_round=0)


def test_every_client_dropping_out_skip_retry_raise():
    tables = make_hospitals()
    everyone = SystemsConfig(offline=tuple((n, 0, 0) for n in tables))
    skip = FederatedTrainer(tables, FedConfig(**SMALL, systems=everyone))
    skip.setup()
    w0 = skip.global_params()
    hist = skip.fit(progress=False, stop_after=0)
    assert hist[0]["skipped"] and sorted(hist[0]["dropped"]) == sorted(tables)
    np.testing.assert_array_equal(skip.global_params(), w0)
    with pytest.raises(AllClientsDroppedError, match="no usable update"):
        FederatedTrainer(tables, FedConfig(**SMALL, systems=everyone,
                                           on_empty_round="raise")).fit(progress=False)
    # retry: the first sample is offline; a re-sample reaches the others
    two_down = SystemsConfig(offline=(("hospital_0", 0, 0), ("hospital_1", 0, 0)))
    cfg = FedConfig(**SMALL, clients_per_round=2, systems=two_down, on_empty_round="retry")
    trainer = FederatedTrainer(tables, cfg)
    trainer.setup()
    first = trainer.server.config.sample_size(4)
    assert first == 2
    h = trainer.fit(progress=False)
    assert all(not x["skipped"] for x in h) and h[0]["clients"]
    assert not set(h[0]["clients"]) & {"hospital_0", "hospital_1"}


def test_dropped_clients_rejoin_and_stragglers_are_weighted_by_work():
    tables = make_hospitals()
    cfg = FedConfig(**dict(SMALL, rounds=6), systems=SystemsConfig(dropout_rate=0.4,
                                                                   straggler_rate=0.5))
    hist = FederatedTrainer(tables, cfg).fit(progress=False)
    dropped = {n for h in hist for n in h["dropped"]}
    assert dropped and all(any(n in h["clients"] for h in hist) for n in dropped)
    drop_partial = FedConfig(**SMALL, straggler_policy="drop",
                             systems=SystemsConfig(straggler_rate=1.0))
    h2 = FederatedTrainer(tables, drop_partial).fit(progress=False)
    assert all(h["skipped"] for h in h2)  # every update was partial and discarded


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.integers(1, 300),
              elements=st.floats(-1e3, 1e3, allow_nan=False, width=32)),
       st.sampled_from(["int8", "int4", "topk", "none"]))
def test_compression_roundtrip_bounds(v, scheme):
    payload = encode(v, scheme, seed_parts=(1, 2, "c"), topk_fraction=0.25)
    out = decode(payload, v.size)
    assert out.shape == v.shape and np.isfinite(out).all()
    if scheme == "none":
        np.testing.assert_array_equal(out, v)
    elif scheme in ("int8", "int4"):
        levels = 127 if scheme == "int8" else 7
        step = np.abs(v).max() / levels if np.abs(v).max() > 0 else 1.0
        assert np.all(np.abs(out - v) <= step * 1.0001 + 1e-6)
    else:
        k = int(np.ceil(0.25 * v.size))
        kept = np.flatnonzero(out)
        assert len(kept) <= k
        np.testing.assert_array_equal(out[kept], v[kept])


def test_error_feedback_transmits_everything_eventually():
    rng = np.random.default_rng(0)
    ef = ErrorFeedback(50)
    sent = np.zeros(50)
    total = np.zeros(50)
    for r in range(200):
        d = rng.normal(size=50).astype(np.float32)
        total += d
        sent += decode(ef.compress(d, "topk", seed_parts=(r,), topk_fraction=0.1), 50)
    # what was not yet sent is exactly the residual, and it stays bounded
    np.testing.assert_allclose(total - sent, ef.residual, atol=1e-3)
    assert np.abs(ef.residual).max() < 10


def test_compressed_training_close_and_smaller():
    tables = make_hospitals(sizes=(300, 200, 250))
    base = dict(hidden=(8,), rounds=8, batch_size=16, client_lr=0.1)
    ref = FederatedTrainer(tables, FedConfig(**base))
    href = ref.fit(progress=False)
    auc = ref.evaluate()["pooled"]["auc"]
    for scheme in ("int8", "int4", "topk"):
        t = FederatedTrainer(tables, FedConfig(**base, compression=scheme, topk_fraction=0.2))
        h = t.fit(progress=False)
        assert abs(t.evaluate()["pooled"]["auc"] - auc) < 0.01, scheme
        assert h[-1]["bytes_up"] < href[-1]["bytes_up"]


def test_decode_rejects_malformed_payloads():
    with pytest.raises(UpdateShapeError, match="'h9'"):
        decode({"scheme": "topk", "idx": np.array([99]), "val": np.array([1.0]), "n": 10},
               10, "h9")
    with pytest.raises(UpdateShapeError, match="cannot be decoded"):
        decode({"scheme": "zip"}, 10, "h9")


def test_robust_aggregators_resist_a_byzantine_client():
    tables = make_hospitals(sizes=(150, 150, 150, 150, 150))

    class Byzantine(HospitalClient):
        def on_collect(self, msg):
            replies = super().on_collect(msg)
            if self.name != "hospital_4":
                return replies
            p = dict(replies[0].payload)
            p["update"] = {"scheme": "none", "v": np.full_like(p["update"]["v"], 50.0)}
            return [self.send("server", "fit.update", replies[0].label, p, round=msg.round)]

    base = dict(hidden=(4,), rounds=8, batch_size=16, client_lr=0.2)
    clean = FederatedTrainer(tables, FedConfig(**base))
    clean.fit(progress=False)
    ref = clean.evaluate()["pooled"]["auc"]
    aucs = {}
    for agg in ("mean", "median", "trimmed_mean", "krum"):
        t = FederatedTrainer(tables, FedConfig(**base, aggregator=agg, trim_fraction=0.2),
                             client_factory=Byzantine)
        t.fit(progress=False)
        aucs[agg] = t.evaluate()["pooled"]["auc"]
        assert np.abs(t.global_params()).max() < (1e6 if agg == "mean" else 20)
    for agg in ("median", "trimmed_mean", "krum"):
        assert aucs[agg] > aucs["mean"] + 0.1 and aucs[agg] > ref - 0.05, (ref, aucs)


@pytest.mark.parametrize("server_optimizer", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_server_optimizers_learn(server_optimizer):
    tables = make_hospitals()
    lr = None if server_optimizer == "fedavgm" else 0.1
    t = FederatedTrainer(tables, FedConfig(**dict(SMALL, rounds=6), server_lr=lr,
                                           server_optimizer=server_optimizer))
    hist = t.fit(progress=False)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert t.evaluate()["pooled"]["auc"] > 0.65


def test_scaffold_and_personalization_run():
    tables = make_hospitals()
    t = FederatedTrainer(tables, FedConfig(**SMALL, algorithm="scaffold"))
    hist = t.fit(progress=False)
    assert hist[-1]["loss"] < hist[0]["loss"] and t.evaluate()["pooled"]["auc"] > 0.6
    fp = FederatedTrainer(tables, FedConfig(**SMALL, personalization="fedper"))
    hist = fp.fit(progress=False)
    result = compare(fp, finetune_epochs=1)
    assert set(result["per_client"]) == set(tables)
    assert {"global", "fedper", "finetuned"} <= set(result["mean"])
    # FedPer sends the body only
    assert hist[0]["bytes_up"] < FederatedTrainer(tables, FedConfig(**SMALL)).fit(
        progress=False)[0]["bytes_up"]


def test_partitioners_are_hash_based_and_reported():
    rng = np.random.default_rng(0)
    ids = np.array([f"p{i}" for i in range(2000)], dtype=object)
    y = (rng.random(2000) < 0.3).astype(int)
    skew = part.dirichlet_label_skew(ids, y, 5, 0.3, seed=1)
    assert sum(len(v) for v in skew.values()) == 2000
    rates = [s["positive_rate"] for s in part.stats(y, skew).values() if s["rows"] > 20]
    assert max(rates) - min(rates) > 0.2  # strong label skew at alpha 0.3
    # removing one patient moves nobody else
    keep = ids != "p7"
    again = part.dirichlet_label_skew(ids[keep], y[keep], 5, 0.3, seed=1)
    for name in skew:
        assert set(ids[keep][again[name]]) == set(ids[skew[name]]) - {"p7"}
    q = part.quantity_skew(ids, 4, 0.5, seed=2)
    assert len({len(v) for v in q.values()}) == 4
    nat = part.natural(np.array([1, 2, 2, 3]), {"a": [1], "b": [2, 3]})
    assert [list(v) for v in nat.values()] == [[0], [1, 2, 3]]
    with pytest.raises(VFLError, match="no client"):
        part.natural(np.array([1, 2, 9]), {"a": [1], "b": [2]})
    assert len(part.iid(ids, 3, 0)) == 3
