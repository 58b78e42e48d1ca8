"""Shadow-model membership inference (unlearning.shadow) on a deliberately overfit model."""

import numpy as np
import pytest

from unlearning.errors import ShadowAttackError
from unlearning.shadow import (
    attack_features,
    check_sizes,
    fit_logistic,
    shadow_adapter,
    shadow_attack,
)
from vfl.core.tasks import Task
from vfl.vertical.checkpointing import VerticalAdapter, load_tables
from vfl.vertical.config import TrainConfig
from vfl.vertical.models import ModelConfig

# 120 features for ~130 training rows and 60 epochs: the linear model nearly interpolates
# its training rows, so membership is visible in its outputs (the real ACTG model is not).
OVERFIT = TrainConfig(Task("binary"), ModelConfig("linear", "sum"), epochs=60, batch_size=32,
                      learning_rate=0.1, seed=3, test_fraction=0.6,
                      optimizer="adam", protocol="plain")
DATA = {"factory": "tests.conftest:make_vertical_tables",
        "kwargs": {"n": 400, "widths": [40, 40, 40], "overlap": 1.0}, "active": "hospital"}
SPEC = {"mode": "vertical", "dataset": DATA, "config": OVERFIT.to_json()}
N_ERASED = 40


@pytest.fixture(scope="module")
def target():
    """(adapter, trainers, erased): a model retrained without ``erased`` (exact unlearning)."""
    tables, active = load_tables(DATA)
    aligned = sorted(str(i) for i in tables[active].ids)
    erased = VerticalAdapter(SPEC, aligned).split_ids()["train"][:N_ERASED]
    adapter = VerticalAdapter(SPEC, aligned, set(erased))
    trainer = adapter.trainer("main")
    adapter.fit("main", trainer, None, None)
    return adapter, {"main": trainer}, erased


@pytest.fixture(scope="module")
def unlearned(target):
    adapter, trainers, erased = target
    return shadow_attack(adapter, trainers, erased, seed=0)


def test_attack_finds_members_of_an_overfit_model(unlearned):
    assert unlearned["auc_shadow"] > 0.7  # the shadows themselves leak membership
    assert unlearned["auc_members"] > 0.65
    assert unlearned["n_erased"] == N_ERASED and unlearned["shadow_models"] == 4


def test_never_seen_rows_and_exactly_erased_rows_look_alike(unlearned):
    # two samples of never-seen rows: the attack cannot tell them apart
    assert abs(unlearned["auc_unseen"] - 0.5) < 0.08
    # rows the model was retrained without look like never-seen rows, not like members
    assert abs(unlearned["auc_erased"] - 0.5) < 0.15
    assert unlearned["auc_erased"] < unlearned["auc_members"] - 0.1


def test_rows_still_in_the_model_are_flagged(target, unlearned):
    """A failed erasure (the rows are still trained on) shows up as a high erased AUC."""
    adapter, trainers, _ = target
    still_in = adapter.split_ids()["train"][:N_ERASED]
    failed = shadow_attack(adapter, trainers, still_in, seed=0)
    assert failed["auc_erased"] > 0.65
    assert failed["auc_erased"] > failed["auc_unseen"] + 0.1
    assert failed["auc_diff_ci95"][0] > 0


def test_deterministic_for_a_seed(target, unlearned):
    adapter, trainers, erased = target
    again = shadow_attack(adapter, trainers, erased, seed=0)
    keys = [k for k in unlearned if k != "seconds"]
    assert {k: unlearned[k] for k in keys} == {k: again[k] for k in keys}
    other = shadow_attack(adapter, trainers, erased, seed=1)
    assert other["auc_erased"] != unlearned["auc_erased"]


def test_shadow_trains_on_exactly_the_chosen_rows(target):
    adapter = target[0]
    chosen = adapter.split_ids()["test"][:25]
    shadow = shadow_adapter(adapter, chosen, seed=11)
    assert sorted(shadow.split_ids()["train"]) == sorted(chosen)
    assert shadow.split_ids()["test"] == []
    assert shadow.config.seed == 11


def test_too_few_never_seen_rows_is_a_clear_error(target):
    adapter, trainers, erased = target
    with pytest.raises(ShadowAttackError, match="too few never-seen rows.*test_fraction"):
        shadow_attack(adapter, trainers, erased, attacker_fraction=0.98)
    with pytest.raises(ShadowAttackError, match="too few never-seen rows"):
        check_sizes(30, 4, 0.5)
    with pytest.raises(ShadowAttackError, match="shadow_models"):
        check_sizes(300, 0, 0.5)
    with pytest.raises(ShadowAttackError, match="attacker_fraction"):
        check_sizes(300, 4, 1.0)
    assert check_sizes(300, 4, 0.5) == (150, 150)


def test_attack_features_and_logistic_fit():
    scores = np.array([0.9, 0.2, 0.5])
    feats = attack_features(scores, np.array([1, 1, 0]))
    assert np.allclose(feats[:, 0], [0.9, 0.2, 0.5])
    assert np.allclose(feats[:, 1], np.log([0.9, 0.2, 0.5]))
    assert np.argmax(feats[:, 2]) == 2  # 0.5/0.5 is the most uncertain
    with pytest.raises(ShadowAttackError, match="class labels"):
        attack_features(scores, np.array([0.3, 1.0, 0.0]))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] + 0.1 * rng.normal(size=400) > 0).astype(float)
    w = fit_logistic(x, y)
    assert w[1] > 2 and abs(w[1]) > 5 * abs(w[2])


def test_horizontal_runs_use_the_same_machinery():
    """The shadows go through the registered adapter contract, so a FedAvg run works too."""
    from horizontal import FedConfig
    from horizontal.checkpointing import HorizontalAdapter, horizontal_spec

    config = FedConfig(hidden=(4,), rounds=4, local_epochs=1, batch_size=16, client_lr=0.1,
                       seed=3)
    data = {"factory": "test_horizontal_helpers:make_hospitals",
            "kwargs": {"sizes": [60, 40, 80, 50]}}
    spec = horizontal_spec(data, config, fsync=False)
    adapter = HorizontalAdapter(spec, spec["aligned"])
    chosen = adapter.split_ids()["test"][:20]
    assert sorted(shadow_adapter(adapter, chosen, 5).split_ids()["train"]) == sorted(chosen)
    trainer = adapter.trainer("main")
    adapter.fit("main", trainer, None, None)
    out = shadow_attack(adapter, {"main": trainer}, adapter.split_ids()["train"][:20],
                        shadow_models=2)
    assert all(0.0 <= out[k] <= 1.0 for k in ("auc_erased", "auc_unseen", "auc_members"))
