"""A whole client leaves a horizontal federation: an approximate (FedEraser-style) removal
served as a journaled, audit-logged, certified request, through the service and `vfl erase`."""

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest

from horizontal import FedConfig
from horizontal import federaser as approximate
from horizontal.checkpointing import horizontal_spec
from horizontal.strategies import weighted_mean
from scenarios.cli import main
from tests.unlearning_helpers import HOSPITALS, load_final, train_horizontal
from unlearning import certificate as certs
from unlearning.audit_log import AuditLog
from unlearning.errors import ErasureInterrupted, MethodUnavailableError
from unlearning.methods.sisa import sisa_spec
from unlearning.run import RunDir, train_run
from unlearning.service import (
    STEPS,
    ClientRemovalRequest,
    ErasureRequest,
    ErasureService,
    UnknownClientError,
)

CONFIG = FedConfig(hidden=(4,), rounds=6, local_epochs=1, batch_size=16, client_lr=0.1,
                   seed=3)
CLIENTS = [f"hospital_{k}" for k in range(4)]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return train_horizontal(tmp_path_factory, "approx", CONFIG, retention={"every": 2})


def _global(run):
    return load_final(run)[1].global_params()


def _log_digests(run):
    return {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((run.path / approximate.OWNERS_DIR).glob("*/*.msgpack"))}


def _state(run):
    """What a refused request must leave untouched."""
    files = sorted(p.relative_to(run.path) for p in run.path.rglob("*") if p.is_file())
    return files, (run.path / "audit.jsonl").read_bytes()


def test_run_keeps_update_logs_at_their_owners(run):
    """Every client's own log sits in its folder (not in the store) and holds exactly the
    updates the server aggregated: they rebuild the published model (FedAvg, lr 1)."""
    assert sorted(_log_digests(run)) == CLIENTS
    adapter = run.adapter()
    t = adapter.trainer("main")
    t.setup()
    logs = adapter.load_owner_logs(run, "main", t.members, t.n_params)
    w = t.server.model.init.astype(np.float32).copy()
    for r in range(CONFIG.rounds):
        names = [n for n in sorted(logs) if r in logs[n].updates]
        ups = np.stack([logs[n].updates[r] for n in names])
        w = (w + weighted_mean(ups, [logs[n].examples[r] for n in names]).astype(
            np.float32)).astype(np.float32)
    np.testing.assert_allclose(w, _global(run), atol=1e-5)
    for r in run.store.rounds("main"):  # the server's checkpoints hold no client update
        assert set(run.store.load("main", r).states["server"]["params"]) == {"global"}


def test_client_removal_is_certified_and_close_to_retrain(run):
    steps = []
    service = ErasureService(run, retrain=True, on_step=lambda s, info: steps.append(s))
    before_logs = _log_digests(run)
    w_original = _global(run)
    cert = service.submit(ClientRemovalRequest("hospital_2", every=1, reason="leaves"))
    assert steps == list(STEPS)
    assert cert["method"] == "approx" and cert["request"]["client"] == "hospital_2"
    assert cert["guarantee"].startswith("approximate")
    cal = cert["calibration"]
    assert cal["every"] == 1 and cal["calibration_fraction"] == 0.5
    assert cal["calibration_rounds"] == CONFIG.rounds
    assert cal["remaining_clients"] == ["hospital_0", "hospital_1", "hospital_3"]
    v = cert["verification"]
    assert v["param_distance_vs_retrain"] < v["original_param_distance_vs_retrain"]
    assert v["local_steps_unlearn"] < v["local_steps_retrain"]
    assert abs(v["auc_diff_vs_retrain"]) <= 0.1 and abs(v["accuracy_diff_vs_retrain"]) <= 0.1
    assert v["retrain_seconds"] > 0 and v["influenced_checkpoints_left"] == []
    assert v["erased_training_rows"] > 0  # the client's rows are attacked by the MIA
    fresh = RunDir(run.path)
    assert fresh.consistency() == []
    assert AuditLog(fresh.path / "audit.jsonl").verify().ok
    assert certs.check(cert, fresh.audit.entries())
    # the client's rows and its own log are gone; the others' logs are untouched
    assert all(f"h2-{i:04d}" in fresh.erased() for i in range(80))
    assert not (fresh.path / approximate.OWNERS_DIR / "hospital_2").exists()
    assert _log_digests(fresh) == {k: d for k, d in before_logs.items() if k != "hospital_2"}
    assert "hospital_2" not in fresh.adapter().tables
    assert fresh.lineage.contributions("h2-0001") == []
    # one checkpoint replaces them all, and it is the published model
    assert fresh.store.rounds("main") == [CONFIG.rounds - 1]
    assert fresh.store.entry("main", CONFIG.rounds - 1)["meta"]["approximate"] is True
    assert fresh.spec["published"]["version"] == 2
    assert not np.array_equal(_global(fresh), w_original)


def test_repeated_removal_returns_the_earlier_certificate(run):
    cert = ErasureService(run).submit(ClientRemovalRequest("hospital_1"))
    n = len(RunDir(run.path).audit.entries())
    again = ErasureService(RunDir(run.path)).submit(ClientRemovalRequest("hospital_1",
                                                                         reason="again"))
    assert again == cert
    # a patient of the removed client asking later: already erased, same certificate
    patient = ErasureService(RunDir(run.path)).submit(ErasureRequest("h1-0003"))
    assert patient == cert
    assert len(RunDir(run.path).audit.entries()) == n


def test_exact_erasure_after_a_removal_is_exact(run):
    ErasureService(run).submit(ClientRemovalRequest("hospital_3"))
    fresh = RunDir(run.path)
    pid = fresh.adapter().split_ids()["train"][2]
    cert = ErasureService(fresh, retrain=True).submit(ErasureRequest(pid))
    assert cert["verification"]["max_abs_param_diff_vs_retrain"] <= 1e-6
    assert RunDir(run.path).consistency() == []
    assert sorted(_log_digests(RunDir(run.path))) == ["hospital_0", "hospital_1", "hospital_2"]


@pytest.mark.parametrize("crash_at", ["received", "data_deleted", "unlearned", "committed",
                                      "verified"])
def test_crash_mid_removal_recovers_to_the_same_model(run, tmp_path, crash_at):
    reference = RunDir(shutil.copytree(run.path, tmp_path / "reference"))
    ErasureService(reference).submit(ClientRemovalRequest("hospital_0"))
    with pytest.raises(ErasureInterrupted):
        ErasureService(run, crash_at=crash_at).submit(ClientRemovalRequest("hospital_0"))
    (cert,) = ErasureService(RunDir(run.path)).recover()
    fresh = RunDir(run.path)
    assert cert["method"] == "approx" and fresh.consistency() == []
    np.testing.assert_array_equal(_global(fresh), _global(RunDir(reference.path)))
    assert ErasureService(fresh).submit(ClientRemovalRequest("hospital_0")) == cert


def test_bad_requests_change_nothing(run):
    before = _state(run)
    service = ErasureService(run)
    with pytest.raises(UnknownClientError, match="no client named 'hospital_9'"):
        service.submit(ClientRemovalRequest("hospital_9"))
    with pytest.raises(MethodUnavailableError, match="whole client"):
        ErasureRequest("h0-0001", method="approx")
    with pytest.raises(MethodUnavailableError, match="erase its patients"):
        ClientRemovalRequest("hospital_0", method="exact")
    with pytest.raises(MethodUnavailableError, match="one at a time"):
        service.submit_many([ClientRemovalRequest("hospital_0")])
    with pytest.raises(ValueError, match="calibration"):
        ClientRemovalRequest("hospital_0", every=0)
    assert _state(run) == before


def test_runs_that_cannot_serve_approx_say_why(tmp_path):
    small = dataclasses.replace(CONFIG, rounds=1)
    base = horizontal_spec(HOSPITALS, small, fsync=False)
    cases = {
        "no_logs": (base | {"client_update_logs": False}, "update logs"),
        "sisa": (sisa_spec(base, 2), "SISA"),
        "fedadam": (horizontal_spec(HOSPITALS,
                                    dataclasses.replace(small, server_optimizer="fedadam"),
                                    fsync=False), "plain FedAvg"),
    }
    for name, (spec, message) in cases.items():
        r = train_run(tmp_path / name, spec)
        with pytest.raises(MethodUnavailableError, match=message):
            ErasureService(r).submit(ClientRemovalRequest("hospital_0"))
        assert not (r.path / "journal").exists() or not list((r.path / "journal").iterdir())


def test_vertical_run_refuses_approx(tmp_path):
    from vfl.core.tasks import Task
    from vfl.vertical.config import TrainConfig
    from vfl.vertical.models import ModelConfig

    cfg = TrainConfig(Task("binary"), ModelConfig("linear", "sum"), epochs=1, batch_size=32,
                      learning_rate=0.05, seed=3, optimizer="adam", protocol="plain")
    spec = {"mode": "vertical", "config": cfg.to_json(), "fsync": False,
            "dataset": {"factory": "tests.conftest:make_vertical_tables", "kwargs": {"n": 60},
                        "active": "hospital"}}
    r = train_run(tmp_path / "vertical", spec)
    with pytest.raises(MethodUnavailableError, match="horizontal"):
        ErasureService(r).submit(ClientRemovalRequest("pharmacy"))
    assert main(["erase", "--run", str(r.path), "--client", "pharmacy"]) == 2


def test_cli_client_removal(run, capsys):
    path = str(run.path)
    assert main(["erase", "--run", path, "--client", "hospital_1", "--method", "approx",
                 "--retrain", "--reason", "hospital leaves"]) == 0
    out = capsys.readouterr().out
    for step in STEPS:
        assert f"[{step}]" in out
    cert = json.loads(out.split("certificate:\n", 1)[1])
    assert cert["method"] == "approx" and cert["request"]["reason"] == "hospital leaves"
    assert "param_distance_vs_retrain" in cert["verification"]
    # idempotent: the same certificate, no new step
    assert main(["erase", "--run", path, "--client", "hospital_1"]) == 0
    out = capsys.readouterr().out
    assert "[received]" not in out and json.loads(out.split("certificate:\n", 1)[1]) == cert
    assert main(["audit", "verify", path]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["--patient", "h0-0001", "--method", "approx"], "whole client"),
    (["--client", "hospital_9"], "no client named"),
    (["--client", "hospital_0", "--method", "sisa"], "erase its patients"),
    (["--client", "hospital_0", "--party", "hospital_0"], "--party"),
])
def test_cli_bad_input(run, capsys, argv, message):
    before = _state(run)
    assert main(["erase", "--run", str(run.path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert _state(run) == before


def test_cli_needs_exactly_one_of_patient_or_client(run, capsys):
    for argv in ([], ["--patient", "h0-0001", "--client", "hospital_0"]):
        with pytest.raises(SystemExit) as exc:
            main(["erase", "--run", str(run.path), *argv])
        assert exc.value.code == 2
    assert "--client" in capsys.readouterr().err
