"""The survival_cox scenario (vertical Cox on ACTG 320): --quick end to end as users run it
(slow), and its trial and adjusted-model parts in process under the plain protocol."""

import argparse
import json
import subprocess
import sys

import pytest

pytest.importorskip("sksurv")

from scenarios import survival_cox  # noqa: E402
from scenarios.cli import main as vfl_main  # noqa: E402
from vfl.datasets.clinical import load_actg320  # noqa: E402

C_INDEX_KEYS = {"vfl.c_index", "centralized.c_index", "local_only.c_index"}


def _check_trial(trial):
    assert {"estimate", "ci_low", "ci_high", "published", "scikit_survival"} <= set(trial)
    assert set(trial["published"]) >= {"estimate", "ci_low", "ci_high", "source"}
    assert (trial["published"]["estimate"], trial["published"]["ci_low"],
            trial["published"]["ci_high"]) == (0.50, 0.33, 0.76)
    assert abs(trial["estimate"] - trial["scikit_survival"]["estimate"]) < 0.01
    assert trial["ci_low"] < trial["estimate"] < trial["ci_high"]
    assert trial["n"] == 1151  # coverage 1.0: every trial patient aligned


def _check_metrics(metrics):
    assert set(metrics) >= C_INDEX_KEYS
    assert abs(metrics["vfl.c_index"] - metrics["centralized.c_index"]) < 0.005
    assert metrics["vfl.c_index"] > metrics["local_only.c_index"]


@pytest.mark.slow
def test_survival_cox_quick_end_to_end(tmp_path):
    out, js = tmp_path / "out", tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "scenarios.survival_cox", "--quick", "--no-progress",
         "--out", str(out), "--json", str(js)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(js.read_text())
    for f in ("report.md", "km_vs_predicted.png", "hazard_ratios.png", "result.json"):
        assert (out / f).stat().st_size > 0
    assert result["protocol"] == "paillier"
    assert result["key_bits"] == 1024 and result["insecure_test_key"] is True
    _check_trial(result["trial_hazard_ratio"])
    _check_metrics(result["metrics"])
    assert result["erasure"]["erased"] == 5 and result["erasure"]["equal_to_retrain"] is True
    assert result["collinearity"]["refused"] is True
    assert "txgrp" in result["collinearity"]["message"]
    # under paillier a passive receives label-dependent values only as ciphertexts, and its
    # own release under its masks
    view = result["transcript"]
    assert view["label_dependent_only_ciphertext"] is True
    for rows in view["parties"].values():
        dependent = {(r["kind"], r["label"]) for r in rows if r["label_dependent"]}
        assert dependent == {("cox.update", "ciphertext"), ("cox.release_factor", "ciphertext"),
                             ("cox.unmasked", "masked")}
    assert set(result["rounds"]) >= {"trial", "adjusted"} and result["rounds"]["trial"] <= 2
    assert "1. trial hazard ratio" in proc.stdout
    assert "0.50" in (out / "report.md").read_text()


def test_survival_cox_trial_and_adjusted_model_plain_in_process():
    args = argparse.Namespace(protocol="plain", key_bits=None, quick=True, seed=0)
    fields, policy = survival_cox._settings(args)
    assert fields["insecure_test_key"] is False
    full = load_actg320(0, label="survival", coverage=1.0)
    trial, run = survival_cox.trial_hazard_ratio(full, fields, policy, False)
    _check_trial(trial)
    assert run["rounds"] <= 2  # one column at one passive: exact after 2 rounds
    adj = survival_cox.adjusted_model(full, fields, policy, False)
    _check_metrics(adj["metrics"])
    assert adj["max_abs_coef_diff"] < 1e-5
    assert [r["party"] for r in adj["coefficients"]["vfl"]] == (
        ["hospital"] * 5 + ["lab"] * 2 + ["pharmacy"] * 2)
    # under plain the passives do receive label-dependent values in the clear
    view = survival_cox.passive_view(adj["fed"])
    assert view["label_dependent_only_ciphertext"] is False
    assert view["label_dependent_plaintext_received"]["lab"] == ["cox.release_factor",
                                                                 "cox.update"]


def test_survival_cox_is_listed_by_the_cli(capsys):
    assert vfl_main(["list"]) == 0
    assert "survival_cox" in capsys.readouterr().out
