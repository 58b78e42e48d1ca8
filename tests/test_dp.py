"""Differential-privacy building blocks (horizontal.dp): accounting against published
numbers, the budget guard, per-example clipping in DP-SGD, adaptive clipping's direction."""

from __future__ import annotations

import math
from types import SimpleNamespace

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from horizontal.client_update import make_local_train
from horizontal.dp import accounting, clipping, dpsgd
from horizontal.dp.accounting import BudgetGuard, PrivacyBudget
from horizontal.dp.errors import (
    AccountingError,
    BatchCapacityError,
    BudgetExhaustedError,
    DPConfigError,
    PlannedBudgetExceededError,
)
from horizontal.flat_model import FlatModel
from vfl.core.errors import VFLError
from vfl.core.tasks import Task

DELTA = 1e-5


# -- accounting -------------------------------------------------------------------------------
def test_mnist_dpsgd_epsilon_matches_published_values():
    """Abadi et al.'s MNIST setting as TF Privacy / dp_accounting publish it: q = 256/60000,
    σ = 1.1, 60 epochs, δ = 1e-5 -> ε ≈ 2.60 (RDP) and ≈ 2.38 (PLD)."""
    steps = int(60 * 60000 / 256)
    event = accounting.dpsgd_event(noise_multiplier=1.1, steps=steps, dataset_size=60000,
                                   batch_size=256)
    # The event is what the run does: Poisson-sampled Gaussian, composed over the steps.
    assert isinstance(event, dp_accounting.SelfComposedDpEvent) and event.count == steps
    assert isinstance(event.event, dp_accounting.PoissonSampledDpEvent)
    assert event.event.sampling_probability == pytest.approx(256 / 60000)
    assert event.event.event == dp_accounting.GaussianDpEvent(1.1)

    eps = accounting.epsilons(event, DELTA)
    print(f"MNIST DP-SGD: RDP eps={eps['rdp']:.4f}, PLD eps={eps['pld']:.4f}")
    assert abs(eps["rdp"] - 2.60) <= 0.05
    assert abs(eps["pld"] - 2.38) <= 0.05
    assert eps["pld"] < eps["rdp"]  # PLD is the tighter of the two upper bounds


def test_client_level_dp_fedavg_five_hospitals():
    """5 hospitals, all in every round (q = 1), σ = 1, 20 rounds, δ = 1e-5: about 30."""
    event = accounting.dp_fedavg_event(noise_multiplier=1.0, rounds=20, clients_per_round=5,
                                       total_clients=5)
    # No sampling to amplify: 20 plain Gaussian mechanisms.
    assert event == dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.0), 20)
    eps = accounting.epsilons(event, DELTA)
    print(f"5 hospitals, client-level: RDP eps={eps['rdp']:.4f}, PLD eps={eps['pld']:.4f}")
    for value in eps.values():
        assert 20 < value < 45
    # 20 Gaussians of multiplier 1 are one Gaussian of multiplier 1/sqrt(20), whose exact
    # epsilon is known in closed form: the PLD accountant must agree with it.
    exact = dp_accounting.get_epsilon_gaussian(1 / math.sqrt(20), DELTA)
    assert eps["pld"] == pytest.approx(exact, abs=0.05)
    assert eps["rdp"] >= exact


def test_client_sampling_amplifies_and_fixed_size_is_rdp_only():
    full = accounting.epsilon(accounting.dp_fedavg_event(
        noise_multiplier=1.0, rounds=20, clients_per_round=100, total_clients=100), DELTA)
    sampled = accounting.epsilon(accounting.dp_fedavg_event(
        noise_multiplier=1.0, rounds=20, clients_per_round=10, total_clients=100), DELTA)
    assert sampled < full

    fixed = accounting.dpsgd_event(noise_multiplier=1.1, steps=100, dataset_size=60000,
                                   batch_size=256, sampling="fixed")
    assert isinstance(fixed.event, dp_accounting.SampledWithoutReplacementDpEvent)
    assert set(accounting.epsilons(fixed, DELTA)) == {"rdp"}
    with pytest.raises(AccountingError, match="rdp"):
        accounting.epsilon(fixed, DELTA, "pld")
    with pytest.raises(DPConfigError):
        accounting.gaussian_event(1.0, sampling_probability=1.5)
    with pytest.raises(DPConfigError):
        PrivacyBudget(epsilon=1.0, delta=1.0)


def test_adaptive_clipping_noise_split():
    sigma_b = 100 / 20
    sigma_d = accounting.adaptive_clipping_value_noise(1.0, sigma_b)
    assert sigma_d == pytest.approx((1.0 - (2 * sigma_b) ** -2) ** -0.5)
    assert sigma_d > 1.0  # the value noise is raised to pay for the count
    assert accounting.adaptive_clipping_noise_multiplier(sigma_d, sigma_b) == pytest.approx(1.0)
    ac = clipping.adaptive_clipping(expected_clients=100, noise_multiplier=1.0)
    assert ac.clipped_count_stddev == sigma_b
    assert ac.value_noise_multiplier == pytest.approx(sigma_d)
    # Five hospitals: sigma_b = 5/20 cannot carry noise multiplier 1 (needs 2 sigma_b > 1).
    with pytest.raises(DPConfigError, match="clipped_count_stddev"):
        clipping.adaptive_clipping(expected_clients=5, noise_multiplier=1.0)


# -- budget guard -----------------------------------------------------------------------------
class _Data:
    """Records whether training ever looked at it."""

    def __init__(self):
        self.touched = False

    def __getitem__(self, i):
        self.touched = True
        return i


def _run(guard: BudgetGuard, data: _Data, *, steps, q, sigma):
    state = guard.start(steps=steps, sampling_probability=q, noise_multiplier=sigma)
    for s in range(steps):
        state = guard.update(state, sampling_probability=q, noise_multiplier=sigma)
        data[s]
    return state


def test_guard_refuses_to_start_a_run_over_budget_before_using_data():
    guard = BudgetGuard(PrivacyBudget(epsilon=1.0, delta=DELTA))
    data = _Data()
    with pytest.raises(PlannedBudgetExceededError) as info:
        _run(guard, data, steps=14062, q=256 / 60000, sigma=1.1)
    assert not data.touched
    err = info.value
    assert isinstance(err, VFLError)
    assert err.planned_epsilon == pytest.approx(2.60, abs=0.05) and err.budget_epsilon == 1.0
    message = str(err)
    assert "raise the noise multiplier" in message and "lower the number" in message
    assert "sample fewer" in message
    # The suggested sigma does fit.
    sigma_fit = float(message.split("σ ≥ ")[1].split(";")[0])
    assert guard.planned_epsilon(steps=14062, sampling_probability=256 / 60000,
                                 noise_multiplier=sigma_fit) <= 1.0
    # A plan within budget starts, and returns its planned epsilon.
    assert guard.check_plan(steps=1000, sampling_probability=256 / 60000,
                            noise_multiplier=1.1) < 1.0


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_guard_stops_a_round_by_round_run_at_the_budget(kind):
    budget = PrivacyBudget(epsilon=10.0, delta=DELTA)
    guard = BudgetGuard(budget, accountant=kind)

    def eps_after(rounds):
        return accounting.epsilon(accounting.gaussian_event(1.0, count=rounds), DELTA, kind)

    state = guard.init()
    released = 0
    with pytest.raises(BudgetExhaustedError) as info:
        for _ in range(20):
            state = guard.update(state, sampling_probability=1.0, noise_multiplier=1.0)
            released += 1
    assert eps_after(released) <= budget.epsilon < eps_after(released + 1)
    assert state.steps == released and state.epsilon == pytest.approx(eps_after(released))
    err = info.value
    assert err.rounds == released and err.next_epsilon > budget.epsilon >= err.spent_epsilon
    assert "raise the noise multiplier" in str(err) and "fewer rounds" in str(err)


def test_guard_composes_rounds_that_differ():
    guard = BudgetGuard(PrivacyBudget(epsilon=50.0, delta=DELTA))
    state = guard.init()
    state = guard.update(state, sampling_probability=0.1, noise_multiplier=1.0, steps=3)
    state = guard.update(state, sampling_probability=0.1, noise_multiplier=1.0, steps=2)
    state = guard.update(state, sampling_probability=1.0, noise_multiplier=2.0)
    assert state.ledger == ((0.1, 1.0, 5), (1.0, 2.0, 1))
    composed = dp_accounting.ComposedDpEvent([
        accounting.gaussian_event(1.0, sampling_probability=0.1, count=5),
        accounting.gaussian_event(2.0),
    ])
    assert state.epsilon == pytest.approx(accounting.epsilon(composed, DELTA))


# -- DP-SGD -----------------------------------------------------------------------------------
def _linear_loss(w, xb, yb, mb):
    per_row = 0.5 * (xb @ w - yb) ** 2
    return jnp.sum(per_row * mb) / jnp.maximum(jnp.sum(mb), 1.0)


def test_per_example_clipping_bounds_every_examples_contribution():
    rng = np.random.default_rng(0)
    d, clip, L = 5, 1.0, 9.0
    x = rng.normal(size=(9, d)).astype(np.float32)
    y = rng.normal(size=9).astype(np.float32)
    x[4] *= 1e6  # one enormous example
    y[4] = 1e6
    w = jnp.asarray(rng.normal(size=d).astype(np.float32) * 0.1)
    with_big = np.ones(9, np.float32)
    without_big = with_big.copy()
    without_big[4] = 0.0

    dp_grad = jax.jit(dpsgd.make_dp_value_and_grad(_linear_loss, clip_norm=clip,
                                                   noise_multiplier=0.0))
    key = jax.random.key(0)
    _, g_with = dp_grad(w, x, y, with_big, key, L)
    _, g_without = dp_grad(w, x, y, without_big, key, L)
    # The clipped sum moves by at most C, whatever the example.
    assert np.linalg.norm(np.asarray(g_with - g_without) * L) <= clip * (1 + 1e-5)

    # With sigma = 0 the result is the hand-computed clipped mean.
    residual = x.astype(np.float64) @ np.asarray(w, np.float64) - y
    per_example = residual[:, None] * x
    norms = np.linalg.norm(per_example, axis=1)
    clipped = per_example * np.minimum(1.0, clip / norms)[:, None]
    np.testing.assert_allclose(np.asarray(g_with), clipped.sum(0) / L, rtol=1e-4, atol=1e-6)

    # With noise the same key adds the same noise, and the bound still holds.
    noisy = jax.jit(dpsgd.make_dp_value_and_grad(_linear_loss, clip_norm=clip,
                                                 noise_multiplier=1.0))
    _, n_with = noisy(w, x, y, with_big, key, L)
    _, n_without = noisy(w, x, y, without_big, key, L)
    assert np.linalg.norm(np.asarray(n_with - n_without) * L) <= clip * (1 + 1e-4)


def test_noise_has_the_scale_sigma_c_over_expected_batch():
    grads = jnp.zeros((4, 200_000))
    out = dpsgd.noisy_clipped_mean(grads, jnp.ones(4), clip_norm=0.5, noise_multiplier=2.0,
                                   expected_batch_size=8.0, key=jax.random.key(1))
    assert float(jnp.std(out)) == pytest.approx(2.0 * 0.5 / 8.0, rel=0.02)


def test_dp_local_train_is_a_drop_in_and_jits_and_vmaps():
    model = FlatModel(4, (8,), 1, seed=0)
    task = Task("binary")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    y = (rng.random(24) < 0.5).astype(np.float32)
    pos = np.arange(24, dtype=np.int32).reshape(3, 8)
    bmask = np.ones((3, 8), np.float32)
    active = np.ones(3, bool)
    w0 = jnp.asarray(model.init)
    zeros = jnp.zeros_like(w0)

    plain = jax.jit(make_local_train(model, task, "sgd", 0.5))
    dp = jax.jit(dpsgd.make_dp_local_train(model, task, "sgd", 0.5, clip_norm=1e6,
                                           noise_multiplier=0.0))
    w_plain, loss_plain = plain(w0, w0, zeros, 0.0, x, y, pos, bmask, active)
    w_dp, loss_dp = dp(w0, w0, zeros, 0.0, x, y, pos, bmask, active, jax.random.key(0), 8.0)
    np.testing.assert_allclose(np.asarray(w_dp), np.asarray(w_plain), rtol=1e-4, atol=1e-6)
    assert float(loss_dp) == pytest.approx(float(loss_plain), rel=1e-5)

    # Noisy, vmapped over two clients: deterministic per key, different across keys.
    noisy = jax.jit(jax.vmap(dpsgd.make_dp_local_train(model, task, "sgd", 0.5, clip_norm=1.0,
                                                       noise_multiplier=1.0)))
    stack = lambda a: jnp.stack([jnp.asarray(a)] * 2)  # noqa: E731
    keys = jnp.stack([dpsgd.noise_key(123, "round", 0), dpsgd.noise_key(456, "round", 0)])
    args = (stack(w0), stack(w0), stack(zeros), jnp.zeros(2), stack(x), stack(y), stack(pos),
            stack(bmask), stack(active))
    w1, _ = noisy(*args, keys, jnp.full(2, 8.0))
    w2, _ = noisy(*args, keys, jnp.full(2, 8.0))
    assert np.isfinite(np.asarray(w1)).all()
    np.testing.assert_array_equal(np.asarray(w1), np.asarray(w2))
    assert not np.allclose(np.asarray(w1[0]), np.asarray(w1[1]))


def test_poisson_batches_are_keyed_private_and_removal_stable():
    ids = [f"p{i}" for i in range(400)]
    hashes = dpsgd.dp_row_hashes(ids, secret=99)
    pos, mask = dpsgd.poisson_batches(hashes, 99, round=3, client="h1", steps=50,
                                      sampling_probability=0.1)
    assert pos.shape == mask.shape and pos.shape[0] == 50
    assert mask.sum() / (50 * 400) == pytest.approx(0.1, rel=0.1)
    again = dpsgd.poisson_batches(hashes, 99, 3, "h1", 50, 0.1)
    np.testing.assert_array_equal(pos, again[0])
    other = dpsgd.poisson_batches(dpsgd.dp_row_hashes(ids, 7), 7, 3, "h1", 50, 0.1)
    assert not np.array_equal(pos, other[0])

    # Removing a patient leaves every other patient's draws unchanged.
    def drawn(ids_, pos_, mask_):
        return [{ids_[p] for p, m in zip(pr, mr) if m} for pr, mr in zip(pos_, mask_)]

    kept = ids[:17] + ids[18:]
    p2, m2 = dpsgd.poisson_batches(dpsgd.dp_row_hashes(kept, 99), 99, 3, "h1", 50, 0.1)
    assert drawn(kept, p2, m2) == [s - {ids[17]} for s in drawn(ids, pos, mask)]

    with pytest.raises(BatchCapacityError, match="capacity"):
        dpsgd.poisson_batches(hashes, 99, 3, "h1", 50, 0.1, capacity=20)
    cap = dpsgd.poisson_capacity(400, 0.1)
    assert dpsgd.poisson_batches(hashes, 99, 3, "h1", 50, 0.1, capacity=cap)[0].shape[1] == cap

    fpos, fmask = dpsgd.fixed_size_batches(hashes, 99, 3, "h1", steps=5, batch_size=32)
    assert fpos.shape == (5, 32) and fmask.all()
    assert all(len(set(row)) == 32 for row in fpos)


# -- client-level clipping --------------------------------------------------------------------
def test_fixed_clipping_and_noisy_fedavg_mean():
    u = jnp.asarray([3.0, 4.0])
    clipped, norm = clipping.clip_update(u, 1.0)
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(np.asarray(clipped), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(clipping.clip_update(jnp.zeros(3), 1.0)[0]), 0.0)

    ups = jnp.asarray(np.random.default_rng(0).normal(size=(3, 100_000)) * 0.001)
    mask = jnp.asarray([1.0, 1.0, 0.0])
    exact = clipping.dp_fedavg_mean(ups, clip_norm=0.5, noise_multiplier=0.0, expected_clients=4,
                                    key=jax.random.key(0), mask=mask)
    np.testing.assert_allclose(np.asarray(exact), np.asarray(ups[:2].sum(0) / 4), rtol=1e-5)
    noisy = clipping.dp_fedavg_mean(ups, clip_norm=0.5, noise_multiplier=1.0, expected_clients=4,
                                    key=jax.random.key(0), mask=mask)
    assert float(jnp.std(noisy - exact)) == pytest.approx(0.5 / 4, rel=0.02)


def _updates(rng, n_clients, dim=16):
    """Client updates with norms spread around 1 (uniform on [0.8, 1.2])."""
    d = rng.normal(size=(n_clients, dim))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return jnp.asarray(d * rng.uniform(0.8, 1.2, size=(n_clients, 1)), jnp.float32)


def _run_adaptive(initial, rounds=40, clients=50):
    ac = clipping.adaptive_clipping(expected_clients=clients, initial_clip_norm=initial)
    clip_all = jax.jit(jax.vmap(ac.clip, in_axes=(0, None)))
    update = jax.jit(ac.update)
    rng = np.random.default_rng(0)
    state, trace = ac.init(), []
    for r in range(rounds):
        _, indicators = clip_all(_updates(rng, clients), state)
        state, _ = update(indicators, state, jax.random.key(r))
        trace.append(float(state.clip_norm))
    return np.asarray(trace)


def test_adaptive_clip_rises_when_most_updates_are_clipped():
    trace = _run_adaptive(initial=0.1)
    print("adaptive clip from 0.1:", np.round(trace[[0, 9, 19, 29, 39]], 3))
    assert np.all(np.diff(trace[:15]) > 0)  # all clipped: it grows every round
    assert 0.8 < trace[-1] < 1.25  # and settles at the median norm (1), not 0


def test_adaptive_clip_falls_when_few_updates_are_clipped():
    trace = _run_adaptive(initial=10.0)
    print("adaptive clip from 10:", np.round(trace[[0, 9, 19, 29, 39]], 3))
    assert np.all(np.diff(trace[:15]) < 0)
    assert 0.8 < trace[-1] < 1.25


def test_flowers_backwards_rule_collapses_where_ours_rises():
    """Flower's adaptive clipping (flwr 1.42) counts *clipped* updates and applies the rule
    meant for the unclipped fraction: from C = 0.1 with norms near 1 it shrinks."""
    dpc = pytest.importorskip("flwr.supercore.differential_privacy")
    strategy = pytest.importorskip("flwr.serverapp.strategy.dp_adaptive_clipping")
    base = getattr(strategy, "DifferentialPrivacyAdaptiveBase", None)
    # vfl[flower] pins flwr 1.42, whose adaptive-clipping base has this update rule.
    assert base is not None and hasattr(base, "_geometric_update"), (
        "flwr's DifferentialPrivacyAdaptiveBase._geometric_update is gone: update this test "
        "to the pinned Flower version")
    rng = np.random.default_rng(0)
    flower = SimpleNamespace(clipping_norm=0.1, clip_norm_lr=0.2, target_clipped_quantile=0.5)
    for _ in range(40):
        ups = np.asarray(_updates(rng, 50))
        bits = [dpc.adaptive_clip_inputs_inplace([u.copy()], flower.clipping_norm) for u in ups]
        base._geometric_update(flower, float(np.mean(bits)))  # noiseless, to isolate the rule
    assert flower.clipping_norm < 0.01  # collapsed
    assert _run_adaptive(initial=0.1)[-1] > 0.8  # ours rose to the median norm
