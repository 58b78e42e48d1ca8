"""Unlearning for the horizontal (FedAvg) trainer: exact replay equals a retrain."""


import numpy as np
import pytest

from horizontal import FedConfig
from horizontal.checkpointing import HorizontalAdapter
from tests.unlearning_helpers import load_final, train_horizontal
from unlearning.run import RunDir
from unlearning.service import ErasureRequest, ErasureService
from unlearning.verification import max_param_diff

CONFIG = FedConfig(hidden=(4,), rounds=4, local_epochs=1, batch_size=16, client_lr=0.1,
                   seed=3)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return train_horizontal(tmp_path_factory, "hruns", CONFIG, retention={"every": 1})


def _final(run):
    return load_final(run)


def test_checkpoint_roundtrip_resume_is_bitwise(run):
    """Store -> FedRoundRecord -> resume continues exactly (checkpoint conversion)."""
    adapter = run.adapter()
    t = adapter.trainer("main")
    adapter.fit("main", t, None, run.store.load("main", 1))
    _, ref = _final(run)
    np.testing.assert_array_equal(t.global_params(), ref.global_params())
    assert max_param_diff(adapter.final_state(t), adapter.final_state(ref)) == 0.0


def test_lineage_every_training_patient_influenced_setup(run):
    train = run.adapter().split_ids()["train"]
    pid = train[0]
    assert run.lineage.first_influence([pid])["main"] == -1  # pooled scaler at setup
    assert run.lineage.last_uninfluenced_checkpoint([pid], "main") is None
    assert run.lineage.holders(pid) == [f"hospital_{pid[1]}"]
    assert run.lineage.directly_used([pid])["main"] == [0, 1, 2, 3]


def test_exact_erasure_equals_retrain_bitwise(run):
    pid = run.adapter().split_ids()["train"][5]
    cert = ErasureService(run, retrain=True).submit(ErasureRequest(pid))
    v = cert["verification"]
    assert cert["rollback"]["main"] is None
    assert v["max_abs_param_diff_vs_retrain"] == 0.0
    assert v["prediction_agreement"] == 1.0
    assert v["influenced_checkpoints_left"] == []
    fresh = RunDir(run.path)
    assert fresh.consistency() == []
    assert fresh.lineage.contributions(pid) == []
    # independent retrain without the patient, from the raw tables
    adapter, replayed = _final(fresh)
    assert pid not in {str(i) for t in adapter.tables.values() for i in t.ids}
    retrain = HorizontalAdapter(fresh.spec, fresh.aligned, {pid}).trainer("main")
    retrain.fit(progress=False)
    np.testing.assert_array_equal(replayed.global_params(), retrain.global_params())


def test_held_out_patient_replays_nothing(run):
    pid = run.adapter().split_ids()["test"][0]
    before = run.store.entry("main", 3)["digest"]
    cert = ErasureService(run, retrain=True).submit(ErasureRequest(pid))
    assert cert["rollback"] == {}  # no model was influenced: nothing replayed
    assert cert["verification"]["max_abs_param_diff_vs_retrain"] == 0.0
    assert RunDir(run.path).store.entry("main", 3)["digest"] == before
