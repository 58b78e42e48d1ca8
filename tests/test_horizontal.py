"""Core horizontal contract: FedAvg maths, vectorized == looped, determinism, resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_horizontal_helpers import make_hospitals

from horizontal import FedConfig, FederatedTrainer, SystemsConfig
from horizontal.flat_model import FlatModel
from horizontal.strategies import coordinate_median, krum, trimmed_mean, weighted_mean
from vfl.core.keyed import epoch_order, id_hashes, sample_clients, split_test
from vfl.core.messages import Label
from vfl.core.tasks import Task


def _run(tables, config, mode="vectorized", **kw):
    trainer = FederatedTrainer(tables, config, mode=mode)
    history = trainer.fit(progress=False, **kw)
    return trainer, history


def test_one_client_one_step_equals_centralized_sgd():
    tables = make_hospitals(sizes=(90,))
    (name, table), = tables.items()
    config = FedConfig(hidden=(4,), rounds=1, batch_size=1000, client_lr=0.3, seed=3)
    trainer, _ = _run(tables, config)
    # Centralized SGD on the same training rows, standardized with their own statistics.
    test = split_test(table.ids, config.seed, config.test_fraction)
    X, y = table.features[~test], table.labels[~test].astype(np.float32)
    x = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    model = FlatModel(X.shape[1], (4,), 1, config.seed)
    task = Task("binary")
    grad = jax.grad(lambda w: task.loss(model.apply(w, x), y, jnp.ones(len(y))))(model.init)
    expected = model.init - 0.3 * np.asarray(grad)
    np.testing.assert_allclose(trainer.global_params(), expected, rtol=1e-5, atol=1e-6)


def test_vectorized_equals_loop():
    tables = make_hospitals()
    config = FedConfig(hidden=(8,), rounds=3, local_epochs=2, batch_size=16, client_lr=0.1,
                       mu=0.01, systems=SystemsConfig(straggler_rate=0.5))
    vec, hv = _run(tables, config, "vectorized")
    loop, hl = _run(tables, config, "loop")
    np.testing.assert_allclose(vec.global_params(), loop.global_params(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([h["loss"] for h in hv], [h["loss"] for h in hl], rtol=1e-5)
    # one compiled program per round (vectorized) vs one per client (loop)
    assert vec.executor.programs_run == 3 * -(-len(tables) // vec.executor.chunk)
    assert loop.executor.programs_run == 3 * len(tables)


def test_weighted_average_exact_hand_computed():
    u = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    np.testing.assert_array_equal(weighted_mean(u, [1, 1, 2]), [6.0, 1.5])
    np.testing.assert_array_equal(weighted_mean(u, [3, 0, 1]), [13 / 4, 6 / 4])
    np.testing.assert_array_equal(coordinate_median(u), [3.0, 2.0])
    np.testing.assert_array_equal(trimmed_mean(u, beta=0.34), [3.0, 2.0])
    honest = np.array([[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [1.0, 1.05], [100.0, -100.0]])
    assert np.abs(krum(honest, f=1) - 1.0).max() < 0.11


def test_server_applies_example_weighted_mean(monkeypatch):
    """End to end through messages: new global = old + sum n_k delta_k / sum n_k."""
    tables = make_hospitals(sizes=(40, 40, 40))
    config = FedConfig(hidden=(), rounds=1, batch_size=8)
    trainer = FederatedTrainer(tables, config)
    trainer.setup()
    w0 = trainer.global_params()
    deltas = {"hospital_0": 1.0, "hospital_1": 2.0, "hospital_2": 4.0}
    counts = {"hospital_0": 1, "hospital_1": 1, "hospital_2": 2}
    for name in tables:
        client = trainer.clients[name]

        def fake(msg, client=client, name=name):
            client._pending = None
            payload = {"update": {"scheme": "none", "v": np.full(w0.size, deltas[name],
                                                                  np.float32)},
                       "num_examples": counts[name], "steps": 1, "full_steps": 1, "loss": 0.5}
            return [client.send("server", "fit.update", Label.PLAINTEXT_BY_DESIGN, payload,
                                round=msg.round)]

        client._handlers["fit.collect"] = fake
    trainer.run_round(0)
    np.testing.assert_allclose(trainer.global_params(), w0 + (1 + 2 + 8) / 4, rtol=1e-6)


def test_fedprox_mu_zero_equals_fedavg_and_mu_matters():
    tables = make_hospitals()
    base = dict(hidden=(8,), rounds=2, local_epochs=2, batch_size=16, client_lr=0.2)
    avg, _ = _run(tables, FedConfig(**base))
    prox0, _ = _run(tables, FedConfig(**base, mu=0.0))
    prox, _ = _run(tables, FedConfig(**base, mu=1.0))
    np.testing.assert_array_equal(avg.global_params(), prox0.global_params())
    assert not np.allclose(avg.global_params(), prox.global_params())
    # with one local step the proximal gradient is zero (w == anchor): FedProx == FedAvg
    one = dict(base, local_epochs=1, batch_size=1000)
    a, _ = _run(tables, FedConfig(**one))
    p, _ = _run(tables, FedConfig(**one, mu=5.0))
    np.testing.assert_array_equal(a.global_params(), p.global_params())


def _rich_config(**kw):
    return FedConfig(
        hidden=(8,), rounds=5, local_epochs=1, batch_size=16, client_lr=0.1,
        fraction=0.75, compression="int8", algorithm="scaffold", server_optimizer="fedadam",
        systems=SystemsConfig(dropout_rate=0.2, straggler_rate=0.3), **kw,
    )


def test_round_contract_deterministic_bitwise():
    tables = make_hospitals()
    a, ha = _run(tables, _rich_config())
    b, hb = _run(tables, _rich_config())
    np.testing.assert_array_equal(a.global_params(), b.global_params())
    assert [h["bytes_up"] for h in ha] == [h["bytes_up"] for h in hb]
    assert [e.bytes for e in a.transport.transcript] == [e.bytes for e in b.transport.transcript]


@pytest.mark.parametrize("personalization", ["none", "fedper"])
def test_resume_from_checkpoint_equals_uninterrupted(personalization):
    tables = make_hospitals()
    config = _rich_config(personalization=personalization)
    records = []
    full, _ = _run(tables, config, on_round_end=records.append)
    assert [r.round for r in records] == list(range(config.rounds))
    resumed = FederatedTrainer(tables, config)
    resumed.fit(progress=False, resume_from=records[2])
    np.testing.assert_array_equal(full.global_params(), resumed.global_params())
    if personalization == "fedper":
        for name in tables:
            np.testing.assert_array_equal(full.clients[name].personal_head,
                                          resumed.clients[name].personal_head)


def test_records_name_the_rows_each_client_used():
    tables = make_hospitals(sizes=(50, 30))
    config = FedConfig(hidden=(), rounds=2, batch_size=8,
                       systems=SystemsConfig(straggler_rate=1.0, straggler_speed=(0.5, 0.5)))
    records = []
    _run(tables, config, on_round_end=records.append)
    for rec in records:
        for name, ids in rec.ids_used.items():
            table = tables[name]
            train = set(table.ids[~split_test(table.ids, config.seed, 0.3)])
            assert ids and set(ids) <= train
            assert len(ids) < len(train)  # stragglers at half speed use about half the rows
        assert rec.epoch == rec.round and rec.config_digest == config.digest()


def test_batches_are_keyed_hashes_stable_under_removal():
    ids = np.array([f"p{i}" for i in range(50)], dtype=object)
    h = id_hashes(ids, seed=7)
    order = ids[epoch_order(h, 7, 3, "hospital_1", 0)]
    keep = ids != "p17"
    order_without = ids[keep][epoch_order(h[keep], 7, 3, "hospital_1", 0)]
    assert list(order_without) == [i for i in order if i != "p17"]
    assert list(order) != list(ids[epoch_order(h, 7, 4, "hospital_1", 0)])  # new round


def test_client_sampling_depends_on_seed_round_and_names_only():
    clients = [f"c{i}" for i in range(20)]
    s = sample_clients(clients, 1, 5, 4)
    assert s == sample_clients(list(reversed(clients)), 1, 5, 4) and len(s) == 4
    assert s != sample_clients(clients, 1, 6, 4)


def test_transcript_labels_and_bytes():
    tables = make_hospitals(sizes=(40, 40))
    trainer, hist = _run(tables, FedConfig(hidden=(4,), rounds=1, batch_size=8))
    entries = trainer.transport.transcript.entries
    updates = [e for e in entries if e.kind == "fit.update"]
    assert {e.label for e in updates} == {"plaintext-by-design"}
    assert all(e.label_dependent for e in updates)
    assert {e.label for e in entries if e.kind == "fit"} == {"public"}
    assert hist[0]["bytes_up"] == sum(e.bytes for e in updates) > 4 * trainer.n_params * 2


def test_chunked_engine_bounds_memory_and_compiles_once():
    tables = make_hospitals()
    config = FedConfig(hidden=(8,), rounds=4, batch_size=16, client_lr=0.1,
                       systems=SystemsConfig(dropout_rate=0.3))
    ref, _ = _run(tables, config)
    small = FederatedTrainer(tables, config, max_chunk_bytes=5_000)
    small.fit(progress=False)
    assert small.executor.programs_run > ref.executor.programs_run
    np.testing.assert_allclose(small.global_params(), ref.global_params(), rtol=1e-5,
                               atol=1e-6)
    from horizontal.client_update import compiled

    batched = compiled(small.clients["hospital_0"].spec)[1]
    if hasattr(batched, "_cache_size"):
        before = batched._cache_size()
        again = FederatedTrainer(tables, config)  # rounds with 4, 3, 2 clients: same shape
        again.fit(progress=False)
        assert batched._cache_size() == before
