"""Differential privacy wired into horizontal training (FedConfig.dp): record-level DP-SGD
at each hospital and client-level DP-FedAvg, the accountant's epsilons per hospital and
overall, and the budget guard before and during a run."""

from __future__ import annotations

import numpy as np
import pytest
from test_horizontal_helpers import RecordingTable, make_hospitals

from horizontal import FedConfig, FederatedTrainer, HospitalClient
from horizontal.dp import accounting
from horizontal.dp.config import DPConfig
from horizontal.dp.errors import BudgetExhaustedError, DPConfigError, PlannedBudgetExceededError
from horizontal.dp.fedavg import (
    distributed_noise_multiplier,
    secure_client_vector,
    secure_server_mean,
)
from horizontal.dp.ledger import client_plan, simulation_secret
from horizontal.errors import FedConfigError
from horizontal.simulation import LocalExecutor
from vfl.core.keyed import local_batches
from vfl.core.messages import Label, Message
from vfl.core.table import PartyTable
from vfl.core.tasks import Task

DELTA = 1e-5
SMALL = dict(hidden=(4,), batch_size=16, client_lr=0.1)


def _fit(tables, config, **kw):
    trainer = FederatedTrainer(tables, config, **kw)
    history = trainer.fit(progress=False)
    return trainer, history


# -- config -------------------------------------------------------------------------------------
def test_dp_config_validates_and_round_trips():
    config = FedConfig(dp=DPConfig(level="client", clip="adaptive", epsilon=10.0))
    assert FedConfig.from_json(config.to_json()) == config
    assert "dp" not in FedConfig().to_json()  # configs without DP keep their digest
    with pytest.raises(DPConfigError, match="record-level"):
        DPConfig(level="client", sampling="fixed")
    with pytest.raises(DPConfigError, match="client-level"):
        DPConfig(clip="adaptive")
    with pytest.raises(DPConfigError, match="rdp"):
        DPConfig(sampling="fixed", accountant="pld")
    with pytest.raises(DPConfigError, match="sampling_probability"):
        DPConfig(sampling_probability=1.5)
    with pytest.raises(DPConfigError, match="unknown dp"):
        FedConfig.from_json(config.to_json() | {"dp": {"epsilonn": 1.0}})
    with pytest.raises(FedConfigError, match="aggregator='mean'"):
        FedConfig(aggregator="median", dp=DPConfig(level="client"))


# -- record level -------------------------------------------------------------------------------
def test_record_level_sigma_zero_huge_clip_equals_plain_training(monkeypatch):
    """σ = 0, a clip no gradient reaches and the batches of plain training: DP-SGD computes
    what FedAvg computes, to float tolerance (per-example gradients summed and divided by
    the batch size, against the gradient of the batch mean: another summation order, so not
    bitwise)."""
    tables = make_hospitals(sizes=(64, 96, 128))
    base = dict(SMALL, rounds=2, batch_size=32, test_fraction=0.0, seed=5)
    plain, hp = _fit(tables, FedConfig(**base))

    def plain_batches(self, r):  # full batches: every row count is a multiple of 32
        c = self.config
        return local_batches(self.row_hashes, c.seed, r, self.name, c.local_epochs,
                             c.batch_size)

    monkeypatch.setattr(HospitalClient, "_dp_batches", plain_batches)
    dp = DPConfig(noise_multiplier=0.0, clip_norm=1e9, sampling="fixed")
    private, hd = _fit(tables, FedConfig(**base, dp=dp))
    np.testing.assert_allclose(private.global_params(), plain.global_params(),
                               rtol=1e-5, atol=1e-6)
    assert np.isnan(hd[-1]["loss"]) and np.isfinite(hp[-1]["loss"])  # loss not released
    assert hd[-1]["privacy"]["epsilon"] == float("inf")  # no noise, no privacy


def test_record_level_dp_sgd_trains_in_both_engines():
    tables = make_hospitals(sizes=(150, 120, 180), shift=0.0)
    config = FedConfig(hidden=(), rounds=4, batch_size=16, client_lr=0.3,
                       dp=DPConfig(noise_multiplier=1.0, clip_norm=1.0))
    vec = FederatedTrainer(tables, config, mode="vectorized")
    vec.setup()
    before = vec.evaluate()["pooled"]["auc"]
    hv = vec.fit(progress=False)
    loop, hl = _fit(tables, config, mode="loop")
    after = vec.evaluate()["pooled"]["auc"]
    assert after > max(before, 0.5) + 0.1, (before, after)
    # the vmapped program and the per-client loop agree to float tolerance
    np.testing.assert_allclose(vec.global_params(), loop.global_params(), rtol=1e-4, atol=1e-5)
    assert hv[-1]["privacy"] == hl[-1]["privacy"]
    # Poisson batches: the rows a round used are those drawn, not every row
    record = vec.snapshot(hv[-1])
    assert 0 < len(record.ids_used["hospital_0"]) < 150


def test_per_example_clipping_bounds_one_enormous_example():
    """Inside a real client update (one hospital, one step over all its rows, σ = 0): a
    row with a label of 10^6 moves the update by at most 2·lr·C / L, where plain training
    is moved by ~10^6."""
    rng = np.random.default_rng(0)
    n, d, lr, clip = 40, 3, 0.1, 1.0
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d)

    def update(labels, dp):
        table = PartyTable.from_numpy([f"p{i:03d}" for i in range(n)], x,
                                      [f"x{j}" for j in range(d)], labels=labels,
                                      label_name="y")
        config = FedConfig(task=Task("regression"), hidden=(), rounds=1, batch_size=n,
                           client_lr=lr, test_fraction=0.0, dp=dp)
        trainer = FederatedTrainer({"h": table}, config)
        trainer.setup()
        w0 = trainer.global_params()
        trainer.fit(progress=False)
        return trainer.global_params() - w0

    enormous = y.copy()
    enormous[7] = 1e6
    dp = DPConfig(noise_multiplier=0.0, clip_norm=clip, sampling_probability=1.0)
    normal_dp, enormous_dp = update(y, dp), update(enormous, dp)
    bound = 2 * lr * clip / n  # L = q·n = n rows expected
    assert np.linalg.norm(enormous_dp - normal_dp) <= bound * (1 + 1e-5)
    assert np.linalg.norm(enormous_dp) <= lr * clip * (1 + 1e-5)  # n rows, each at most C
    plain = np.linalg.norm(update(enormous, None) - update(y, None))
    assert plain > 1e3 * bound


def test_same_seed_same_bits_and_the_secret_matters():
    tables = make_hospitals(sizes=(90, 60, 120))
    config = FedConfig(**SMALL, rounds=2, seed=3, dp=DPConfig(noise_multiplier=1.0))
    a, ha = _fit(tables, config)
    b, hb = _fit(tables, config)
    np.testing.assert_array_equal(a.global_params(), b.global_params())
    assert ha[-1]["privacy"] == hb[-1]["privacy"]
    # The simulation's secret is a hash of the seed and the name; a pinned one changes the
    # samples and the noise (and nothing else).
    assert a.clients["hospital_0"].dp_secret == simulation_secret(3, "hospital_0")

    def pinned(name, table, executor):
        return HospitalClient(name, table, executor, dp_secret=f"operator-secret-of-{name}")

    c, hc = _fit(tables, config, client_factory=pinned)
    assert not np.array_equal(a.global_params(), c.global_params())
    assert hc[-1]["privacy"] == ha[-1]["privacy"]  # the same plan spends the same epsilon
    # A client built without a secret draws one from os.urandom.
    fresh = HospitalClient("x", tables["hospital_0"], LocalExecutor("loop"))
    assert fresh.dp_secret != HospitalClient("x", tables["hospital_0"],
                                             LocalExecutor("loop")).dp_secret


def test_resume_continues_the_privacy_account():
    tables = make_hospitals(sizes=(90, 60, 120))
    config = FedConfig(**SMALL, rounds=3, dp=DPConfig(noise_multiplier=1.0))
    records = []
    full, hf = _fit(tables, config)
    part = FederatedTrainer(tables, config)
    part.fit(progress=False, stop_after=0, on_round_end=records.append)
    resumed = FederatedTrainer(tables, config)
    hr = resumed.fit(progress=False, resume_from=records[0])
    np.testing.assert_array_equal(resumed.global_params(), full.global_params())
    assert hr[-1]["privacy"]["per_hospital"] == hf[-1]["privacy"]["per_hospital"]


# -- accounting ---------------------------------------------------------------------------------
def test_reported_epsilon_equals_direct_accounting():
    tables = make_hospitals(sizes=(120, 80, 200))
    rounds, sigma, batch = 3, 1.1, 16
    config = FedConfig(**SMALL | {"batch_size": batch}, rounds=rounds,
                       dp=DPConfig(noise_multiplier=sigma))
    trainer, history = _fit(tables, config)
    spent = trainer.privacy_spent()
    for name in trainer.members:
        n_train = trainer.sizes[name]["n_train"]
        steps = int(np.ceil(n_train / batch)) * rounds
        event = accounting.gaussian_event(sigma, sampling_probability=batch / n_train,
                                          count=steps)
        assert spent["per_hospital"][name] == pytest.approx(accounting.epsilon(event, DELTA),
                                                            rel=1e-12)
    assert spent["epsilon"] == max(spent["per_hospital"].values())
    assert history[-1]["privacy"]["epsilon"] == spent["epsilon"]
    eps = [h["privacy"]["epsilon"] for h in history]
    assert eps == sorted(eps) and eps[0] > 0


def test_client_level_epsilon_and_five_hospitals():
    """Client level: q = clients per round / clients, one Gaussian per round; the README's
    number: 5 hospitals, σ = 1, 20 rounds (computed here from the plan) is about 30."""
    tables = make_hospitals(sizes=(60, 70, 80, 90, 100))
    dp = DPConfig(level="client", noise_multiplier=1.0, clip_norm=1.0)
    trainer, history = _fit(tables, FedConfig(**SMALL, rounds=2, dp=dp))
    direct = accounting.epsilon(accounting.dp_fedavg_event(
        noise_multiplier=1.0, rounds=2, clients_per_round=5, total_clients=5), DELTA)
    spent = trainer.privacy_spent()
    assert spent["epsilon"] == pytest.approx(direct, rel=1e-12)
    assert set(spent["per_hospital"].values()) == {spent["epsilon"]}
    twenty = accounting.epsilon(client_plan(dp, 5, 5).event(20), DELTA)
    print(f"client level, 5 hospitals, sigma=1, 20 rounds: eps={twenty:.2f} (rdp)")
    assert 25 < twenty < 40


# -- the budget guard ---------------------------------------------------------------------------
def test_guard_refuses_to_start_before_any_data_is_used():
    raw = make_hospitals(sizes=(80, 60))
    tables = {n: RecordingTable(t) for n, t in raw.items()}
    config = FedConfig(**SMALL, rounds=20, dp=DPConfig(noise_multiplier=0.8, epsilon=1.0))
    trainer = FederatedTrainer(tables, config)
    with pytest.raises(PlannedBudgetExceededError, match="refusing to start") as err:
        trainer.fit(progress=False)
    assert err.value.planned_epsilon > 1.0
    assert all(t.reads == [] for t in tables.values())  # no feature or label was read
    assert trainer.transport.transcript.entries == []  # nothing was even sent
    # A deployed hospital refuses the same plan itself when setup reaches it, before it
    # reads a row (it does not rely on the coordinator's check).
    client = HospitalClient("hospital_0", tables["hospital_0"], LocalExecutor("loop"))
    setup = Message("server", "hospital_0", "setup", Label.PUBLIC,
                    {"config": config.to_json(), "columns": list(raw["hospital_0"].columns)})
    with pytest.raises(PlannedBudgetExceededError, match="hospital_0"):
        client.handle(setup)
    assert tables["hospital_0"].reads == []
    # Client level: refused from the config and the invited hospitals alone.
    client_level = FedConfig(**SMALL, rounds=20, dp=DPConfig(level="client", epsilon=5.0))
    with pytest.raises(PlannedBudgetExceededError, match="federation"):
        FederatedTrainer(tables, client_level).fit(progress=False)
    assert all(t.reads == [] for t in tables.values())


def test_guard_stops_round_by_round_at_the_budget():
    tables = make_hospitals(sizes=(80, 60))
    base = dict(SMALL, rounds=3, dp=DPConfig(noise_multiplier=1.0))
    probe, _ = _fit(tables, FedConfig(**base))
    three = probe.privacy_spent()["epsilon"]
    config = FedConfig(**SMALL, rounds=3, dp=DPConfig(noise_multiplier=1.0, epsilon=three))
    trainer, history = _fit(tables, config)  # the plan fits exactly
    assert len(history) == 3 and history.stopped is None
    assert history[-1]["privacy"]["epsilon"] == pytest.approx(three)
    w = trainer.global_params()
    # Any further round would exceed the budget: refused before it runs, nothing changes.
    with pytest.raises(BudgetExhaustedError, match="budget exhausted") as err:
        trainer.run_round(3)
    assert err.value.spent_epsilon == pytest.approx(three) and err.value.next_epsilon > three
    np.testing.assert_array_equal(trainer.global_params(), w)
    assert trainer.privacy_spent()["epsilon"] == pytest.approx(three)
    again = trainer.fit(progress=False)  # a second fit stops before its first round
    assert len(again) == 0 and "budget exhausted" in again.stopped
    assert trainer.privacy_stop is not None
    np.testing.assert_array_equal(trainer.global_params(), w)


# -- client level -------------------------------------------------------------------------------
def test_client_level_fixed_clipping_bounds_the_global_step():
    tables = make_hospitals(sizes=(60, 70, 80, 90))
    clip = 0.05
    dp = DPConfig(level="client", noise_multiplier=0.0, clip_norm=clip)
    trainer = FederatedTrainer(tables, FedConfig(**SMALL | {"client_lr": 0.5}, rounds=2, dp=dp))
    trainer.setup()
    w0 = trainer.global_params()
    trainer.fit(progress=False, stop_after=0)
    # mean of 4 updates each clipped to C, divided by the 4 expected: at most C
    assert np.linalg.norm(trainer.global_params() - w0) <= clip * (1 + 1e-5)
    noisy = DPConfig(level="client", noise_multiplier=1.0, clip_norm=clip)
    t2, h2 = _fit(tables, FedConfig(**SMALL, rounds=2, dp=noisy))
    assert np.isfinite(t2.global_params()).all() and h2[-1]["privacy"]["epsilon"] > 0


def test_client_level_adaptive_clip_rises_when_most_updates_are_clipped():
    tables = make_hospitals(sizes=(60, 70, 80, 90))
    dp = DPConfig(level="client", clip="adaptive", noise_multiplier=0.5, clip_norm=1e-4,
                  clipped_count_stddev=1.0)
    trainer = FederatedTrainer(tables, FedConfig(**SMALL, rounds=6, dp=dp))
    bounds = []
    trainer.fit(progress=False, on_round_end=lambda rec: bounds.append(
        float(rec.states["server"].extra["dp_clip"])))
    assert bounds[-1] > 1e-4 * 1.3, bounds  # every update is clipped: the bound grows
    assert all(b > 0 for b in bounds)
    # the count noise must be able to carry its share of the budget
    with pytest.raises(DPConfigError, match="clipped_count_stddev"):
        FederatedTrainer(tables, FedConfig(**SMALL, rounds=2, dp=DPConfig(
            level="client", clip="adaptive", noise_multiplier=1.0))).fit(progress=False)


def test_distributed_noise_for_secure_aggregation():
    """The hook secure aggregation calls: each of m clients adds N(0, (σC)²/m), so the sum
    of all shares has the central noise; fewer shares leave less (σ·sqrt(k/m))."""
    dp = DPConfig(level="client", noise_multiplier=1.0, clip_norm=1.0)
    plan = client_plan(dp, 10, 10, secure=True)
    assert plan.noise_multiplier == 1.0  # all 10 shares assumed
    low = client_plan(DPConfig(level="client", min_clients=6), 10, 10, secure=True)
    assert low.noise_multiplier == pytest.approx(distributed_noise_multiplier(1.0, 10, 6))
    assert low.noise_multiplier == pytest.approx(np.sqrt(0.6))
    zero = np.zeros(20_000, np.float32)
    vectors = [secure_client_vector(zero, secret=f"s{i}", round=0, client=f"c{i}", plan=plan,
                                    clip_norm=0.5, adaptive=False) for i in range(10)]
    total = np.sum(vectors, axis=0)
    assert np.std(total) == pytest.approx(0.5, rel=0.03)  # σ·C with every share
    assert np.std(vectors[0]) == pytest.approx(0.5 / np.sqrt(10), rel=0.03)
    mean, _ = secure_server_mean(total, plan=plan, clip_state=None)
    np.testing.assert_allclose(mean, total / 10, rtol=1e-6)


def test_client_level_under_secure_aggregation():
    """With SecAgg+ the clients add the noise in shares and the server only divides the
    unmasked sum by the expected clients: at σ = 0 that is the central DP-FedAvg mean (to
    float tolerance: fixed point in the ring); the accountant is charged σ·sqrt(t/m) for
    secure aggregation's threshold t, the fewest shares a released sum can hold."""
    from horizontal.secagg.config import SecAggConfig

    tables = make_hospitals(sizes=(60, 45, 70, 50, 55, 65, 40), d=3)
    base = dict(SMALL, rounds=1)
    dp0 = DPConfig(level="client", noise_multiplier=0.0, clip_norm=0.05)
    central, _ = _fit(tables, FedConfig(**base, dp=dp0))
    secure, hs = _fit(tables, FedConfig(**base, dp=dp0, secure_aggregation=SecAggConfig()))
    np.testing.assert_allclose(secure.global_params(), central.global_params(), atol=1e-6)
    assert np.isnan(hs[-1]["loss"])
    dp = DPConfig(level="client", noise_multiplier=1.0, clip_norm=0.05)
    config = FedConfig(**base, dp=dp, secure_aggregation=SecAggConfig())
    t = SecAggConfig().parameters(7).t
    plan = FederatedTrainer(tables, config)._client_plan(7)
    assert plan.min_clients == t < 7
    assert plan.noise_multiplier == pytest.approx(np.sqrt(t / 7))
    with pytest.raises(FedConfigError, match="adaptive"):
        FedConfig(**base, secure_aggregation=SecAggConfig(),
                  dp=DPConfig(level="client", clip="adaptive"))
