"""FedEraser-style approximate removal of a whole client vs an exact retrain."""

import dataclasses

import numpy as np
import pytest
from test_horizontal_helpers import make_hospitals

from horizontal import FedConfig
from horizontal.federaser import (
    compare_with_retrain,
    remove_client,
    remove_party,
    train_with_logs,
)
from horizontal.strategies import weighted_mean
from unlearning.errors import MethodUnavailableError

CONFIG = FedConfig(hidden=(8,), rounds=10, local_epochs=2, batch_size=16, client_lr=0.1, seed=3)


@pytest.fixture(scope="module")
def tables():
    return make_hospitals()


@pytest.fixture(scope="module")
def original(tables):
    return train_with_logs(tables, CONFIG)


def test_update_logs_at_clients_reconstruct_the_global_model(original):
    """The owners' logs hold exactly what the server aggregated (FedAvg, lr 1)."""
    assert not hasattr(original.server, "update_log")
    w = original.server.model.init.astype(np.float32).copy()
    for r in range(CONFIG.rounds):
        names = [n for n in original.members if r in original.clients[n].update_log.updates]
        ups = np.stack([original.clients[n].update_log.updates[r] for n in names])
        ns = [original.clients[n].update_log.examples[r] for n in names]
        w = (w + weighted_mean(ups, ns).astype(np.float32)).astype(np.float32)
    np.testing.assert_allclose(w, original.global_params(), atol=1e-5)


@pytest.mark.parametrize("leaving", ["hospital_2", "hospital_0"])
def test_federaser_close_to_retrain_and_cheaper(tables, original, leaving):
    rep = compare_with_retrain(tables, CONFIG, leaving, original=original, every=2,
                               calibration_fraction=0.5)
    assert rep["local_steps_unlearn"] < rep["local_steps_retrain"] / 2
    assert rep["dist_unlearned_retrain"] < rep["dist_original_retrain"]
    assert abs(rep["auc_unlearned"] - rep["auc_retrain"]) <= 0.05
    assert rep["calibration_rounds"] == 5 and rep["rounds"] == 10


def test_skip_variant_and_alias(original):
    out = remove_party(original, "hospital_1", every=2, between="skip")
    assert out["rounds"] == out["calibration_rounds"] == 5
    assert np.isfinite(out["params"]).all()


def test_unsupported_settings_raise(tables):
    cfg = dataclasses.replace(CONFIG, rounds=1, server_optimizer="fedadam")
    trainer = train_with_logs(tables, cfg)
    with pytest.raises(MethodUnavailableError, match="plain FedAvg"):
        remove_client(trainer, "hospital_0")
    with pytest.raises(MethodUnavailableError):
        remove_client(train_with_logs(tables, dataclasses.replace(CONFIG, rounds=1)), "nobody")
