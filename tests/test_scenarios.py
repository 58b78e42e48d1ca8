"""The scenarios' --quick runs, as users run them, and the vfl command line."""

import json
import subprocess
import sys

import pytest

from scenarios.cli import main as vfl_main


def _run(module, tmp_path, *extra):
    out = tmp_path / "out"
    js = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", f"scenarios.{module}", "--quick", "--no-progress",
         "--out", str(out), "--json", str(js), *extra],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(js.read_text()), out, proc.stdout


def assert_leakage(leakage):
    """Every passive: the inversion attack finds nothing under paillier (<= 0.6) and
    everything under plain; the active's Gram recovery is reported for both, equal."""
    assert set(leakage) == {"paillier", "plain"}
    for name, rep in leakage["paillier"].items():
        assert rep["inversion_auc"] <= 0.6, (name, rep)
        assert leakage["plain"][name]["inversion_auc"] >= 0.9
        g_enc = rep["gram_recovery_error"]
        g_plain = leakage["plain"][name]["gram_recovery_error"]
        assert g_enc is not None and abs(g_enc - g_plain) <= 1e-3


@pytest.mark.slow
def test_hospital_lab_pharmacy_quick(tmp_path):
    result, out, stdout = _run("hospital_lab_pharmacy", tmp_path)
    for key in ("scenario", "protocol", "aligned_rows", "seconds", "parties", "metrics",
                "transcript"):
        assert key in result
    assert result["protocol"] == "paillier"  # the default: no party sees a gradient
    m = result["metrics"]
    # the bar on the held-out split
    assert m["vfl"]["auc"] >= m["local_only"]["auc"] + 0.05
    assert abs(m["vfl"]["auc"] - m["centralized"]["auc"]) <= 0.02
    # the same model as plain split learning, and what each side could learn
    assert abs(m["vfl"]["auc"] - m["vfl_plain"]["auc"]) <= 0.005
    assert_leakage(result["leakage"])
    assert set(result["parties"]) == {"hospital", "lab", "pharmacy"}
    for p in result["parties"].values():
        assert p["bytes_sent"] > 0 and p["bytes_received"] > 0 and p["rows"] > p["features"]
    row = result["transcript"][0]
    assert {"sender", "receiver", "kind", "label", "bytes", "count"} <= set(row)
    assert 0 < result["aligned_rows"] < min(p["rows"] for p in result["parties"].values())
    for f in ("report.md", "roc.png", "training.png", "bytes.png", "result.json"):
        assert (out / f).stat().st_size > 0
    assert "what each party received" in stdout


@pytest.mark.slow
def test_multiomics_quick(tmp_path):
    result, out, _ = _run("multiomics", tmp_path, "--protocol", "paillier")
    assert result["scenario"] == "multiomics" and result["protocol"] == "paillier"
    assert_leakage(result["leakage"])
    assert_leakage(result["synthetic"]["leakage"])
    syn = result["synthetic"]
    assert syn["metrics"]["vfl"]["auc"] > syn["metrics"]["local_only"]["auc"]
    # the generator's ground truth shows up: signal blocks add AUC, nuisance blocks do not
    signal = [syn["block_auc"][p] for p in syn["signal_blocks"]]
    noise = [v for p, v in syn["block_auc"].items() if p not in syn["signal_blocks"]]
    assert min(signal) > max(noise) + 0.05
    for f in ("report.md", "roc_gse7390.png", "roc_synthetic.png", "block_auc.png"):
        assert (out / f).stat().st_size > 0


def test_cli_lists_scenarios(capsys):
    assert vfl_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "hospital_lab_pharmacy" in out and "multiomics" in out


def test_cli_rejects_unknown_scenario(capsys):
    with pytest.raises(SystemExit):
        vfl_main(["run", "no_such_scenario"])
    assert "unknown scenario" in capsys.readouterr().err


def test_cli_run_help(capsys):
    assert vfl_main(["run", "hospital_lab_pharmacy", "--help"]) == 0
    assert "--quick" in capsys.readouterr().out


@pytest.mark.slow
def test_hospital_lab_pharmacy_plain_quick(tmp_path):
    result, out, _ = _run("hospital_lab_pharmacy", tmp_path, "--protocol", "plain")
    assert result["protocol"] == "plain"
    kinds = {(r["receiver"], r["kind"], r["label"]) for r in result["transcript"]}
    assert ("lab", "train.cut_gradient", "plaintext-by-design") in kinds
    assert result["leakage"]["plain"]["lab"]["inversion_auc"] >= 0.9


@pytest.mark.slow
def test_erasure_request_quick(tmp_path):
    result, out, _ = _run("erasure_request", tmp_path)
    assert result["scenario"] == "erasure_request"
    exact = [r for r in result["requests"] if r["method"] == "exact"]
    assert exact
    for r in exact:
        assert r["max_abs_param_diff_vs_retrain"] is not None
        assert r["max_abs_param_diff_vs_retrain"] <= 1e-6
        assert abs(r["mia_auc_erased"] - r["mia_auc_unseen"]) <= 0.05
        assert (out / "certificates").is_dir()
    assert result["audit_verified"] is True and result["tamper_detected"] is True
    assert result["sisa"]["auc"] >= result["sisa"]["auc_single_model"] - 0.02
    approx = result["approximate"]
    assert approx["local_steps_unlearn"] < approx["local_steps_retrain"]
