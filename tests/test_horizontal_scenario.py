"""The hospitals_fedavg scenario and the horizontal benchmark, end to end."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_hospitals_fedavg_quick_meets_targets(tmp_path):
    from scenarios import hospitals_fedavg

    out = tmp_path / "run"
    result = hospitals_fedavg.main(["--quick", "--no-progress", "--out", str(out), "--json",
                                    str(tmp_path / "r.json")])
    saved = json.loads((tmp_path / "r.json").read_text())
    m = saved["metrics"]
    for key in ("fedavg", "fedprox", "fedadam", "centralized", "local_only_mean",
                "personalized_mean"):
        assert 0.5 < m[key]["auc"] <= 1.0
    assert set(m["per_client_auc"]) == set(saved["partition"]["hospitals"])
    assert abs(m["fedavg"]["auc"] - m["centralized"]["auc"]) <= 0.02
    assert m["fedavg"]["per_client_mean_auc"] > m["local_only_mean"]["auc"]
    for scheme in ("int8", "int4", "topk"):
        assert abs(m["compressed"][scheme]["auc"] - m["fedavg"]["auc"]) <= 0.01
    b = saved["bytes_per_round"]
    assert b["int8"] < b["none"] and b["topk"] < b["none"]
    assert saved["dropout"]["rate"] == 0.2 and 0.5 < saved["dropout"]["auc"] <= 1.0
    assert saved["seconds"] < 60 and result["scenario"] == "hospitals_fedavg"
    for name in ("report.md", "auc_rounds.png", "hospitals.png", "bytes.png", "result.json"):
        assert (out / name).stat().st_size > 0


def test_benchmark_reports_speedup(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_horizontal",
                                                  ROOT / "benchmarks" / "horizontal.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--quick", "--clients", "4", "--json", str(tmp_path / "b.json")])
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["speedup_round"]["4"] > 0 and out["results"]["4"]["vectorized"][
        "client_updates_per_second"] > 0
