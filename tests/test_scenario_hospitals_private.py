"""The hospitals_private scenario (SecAgg+ and DP on the flchain hospitals), --quick, end to end."""

import json
import math
import subprocess
import sys

import pytest

from scenarios.cli import main as vfl_main

KEYS = {"auc", "epsilon", "delta", "seconds_per_round", "bytes_per_round", "mia_auc"}


@pytest.fixture(scope="module")
def private_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hospitals_private")
    out, js = tmp / "out", tmp / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "scenarios.hospitals_private", "--quick", "--no-progress",
         "--out", str(out), "--json", str(js)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(js.read_text()), out, proc.stdout


def test_private_metrics_have_every_setting_and_key(private_run):
    result, _, _ = private_run
    m = result["metrics"]
    assert result["scenario"] == "hospitals_private"
    for name, setting in m.items():
        assert set(setting) >= KEYS, name
        assert 0.5 < setting["auc"] <= 1.0, name
        assert 0.0 <= setting["mia_auc"] <= 1.0, name
        assert setting["seconds_per_round"] > 0 and setting["bytes_per_round"] > 0, name
    kinds = [(s["kind"], s["level"]) for s in m.values()]
    # every kind of setting, also in --quick
    assert ("none", None) in kinds and ("secagg", None) in kinds
    assert kinds.count(("dp", "record")) >= 2
    assert ("secagg+dp", "record") in kinds and ("secagg+dp", "client") in kinds
    assert result["seconds"] < 90  # --quick: under a minute on 2 idle cores


def test_private_epsilons_within_budget_and_none_without_dp(private_run):
    result, _, _ = private_run
    for name, s in result["metrics"].items():
        if s["kind"] in ("none", "secagg"):
            assert s["epsilon"] is None and s["delta"] is None, name
            continue
        assert math.isfinite(s["epsilon"]) and 0 < s["epsilon"] <= s["budget_epsilon"], name
        assert s["delta"] == pytest.approx(1e-5)
        per = s["epsilon_per_hospital"]
        assert set(per) == set(result["train_rows"])
        assert max(per.values()) == pytest.approx(s["epsilon"])
        # the accountant calibrated σ to land near the budget, not far below it
        assert s["epsilon"] >= 0.9 * s["budget_epsilon"], name
    record = sorted((s for s in result["metrics"].values() if s["kind"] == "dp"),
                    key=lambda s: s["budget_epsilon"])
    sigmas = [s["noise_multiplier"] for s in record]
    assert sigmas == sorted(sigmas, reverse=True)  # a smaller budget takes more noise


def test_private_secagg_alone_is_fedavg_up_to_quantization(private_run):
    result, _, _ = private_run
    m = result["metrics"]
    assert abs(m["secagg"]["auc"] - m["fedavg"]["auc"]) <= 1e-3
    assert result["secagg_max_param_difference"] < 1e-4
    assert m["secagg"]["bytes_per_round"] > m["fedavg"]["bytes_per_round"]


def test_private_client_level_reference_and_files(private_run):
    result, out, stdout = private_run
    ref = result["client_level_reference"]
    assert (ref["hospitals"], ref["rounds"], ref["noise_multiplier"]) == (5, 20, 1.0)
    assert ref["epsilon_rdp"] == pytest.approx(30.1, abs=0.1)
    assert ref["epsilon_pld"] == pytest.approx(28.4, abs=0.1)
    assert ref["record_level_epsilon_rdp"] < ref["epsilon_rdp"] / 2
    report = (out / "report.md").read_text()
    assert f"ε = {ref['epsilon_rdp']:.1f} (RDP) / {ref['epsilon_pld']:.1f} (PLD)" in report
    for name in ("report.md", "auc_epsilon.png", "cost.png", "result.json"):
        assert (out / name).stat().st_size > 0
    assert "SecAgg+" in stdout and "ε per hospital" in stdout


def test_private_scenario_is_listed(capsys):
    assert vfl_main(["list"]) == 0
    assert "hospitals_private" in capsys.readouterr().out
