"""Unlearning: store, lineage, audit log, exact replay, crash recovery, idempotence."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unlearning.audit_log import AuditLog
from unlearning.errors import (
    CheckpointCorruptedError,
    ErasureInterrupted,
    MethodUnavailableError,
    UnknownPatientError,
)
from unlearning.lineage import Lineage
from unlearning.run import RunDir, train_run
from unlearning.service import STEPS, ErasureRequest, ErasureService
from unlearning.store import Checkpoint, CheckpointStore, Retention
from unlearning.verification import max_param_diff
from vfl.core.tasks import Task
from vfl.vertical.config import TrainConfig
from vfl.vertical.models import ModelConfig

CONFIG = TrainConfig(Task("binary"), ModelConfig("linear", "sum"), epochs=2, batch_size=32,
                     learning_rate=0.05, seed=3, optimizer="adam", protocol="plain")
DATA = {"factory": "tests.conftest:make_vertical_tables", "kwargs": {"n": 160},
        "active": "hospital"}


def spec(**extra):
    return {"mode": "vertical", "dataset": DATA, "config": CONFIG.to_json(),
            "retention": {"every": 1}, "fsync": False} | extra


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("runs") / "base", spec(arrival={"waves": 3}))


def late_patient(run):
    """A training patient admitted in the last wave (replayed from its admission)."""
    lin = run.lineage
    train = run.adapter().split_ids()["train"]
    return max(train, key=lambda p: lin.first_influence([p]).get("main", -1))


def test_store_roundtrip_and_corruption_detected(tmp_path):
    import numpy as np

    store = CheckpointStore(tmp_path / "s", fsync=False)
    tree = {"params": {"w": np.arange(3.0)}, "opt_state": [np.int32(2)], "rng": np.zeros(2)}
    entry = store.write(Checkpoint("m", 0, {"a": tree}, {"a": ("p1",)}, 0.5))
    again = CheckpointStore(tmp_path / "s").load("m", 0)
    assert np.array_equal(again.states["a"]["params"]["w"], tree["params"]["w"])
    path = store._blob_path(entry["parties"]["a"])
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptedError):
        store.load("m", 0)
    assert store.verify()


def test_retention_policy():
    keep = Retention(every=3, boundaries=frozenset({4}))
    assert [r for r in range(10) if keep.keep(r, 9)] == [2, 4, 5, 8, 9]


def test_lineage_queries(run):
    pid = late_patient(run)
    first = run.lineage.first_influence([pid])["main"]
    assert first > 0
    inf = run.lineage.influenced([pid])
    assert inf["rounds"]["main"][0] == first and inf["models"] == ["model"]
    assert run.lineage.last_uninfluenced_checkpoint([pid], "main") == first - 1
    assert run.lineage.holders(pid) == ["hospital", "lab", "pharmacy"]
    # an early patient fitted the scalers: rollback is "before round 0"
    early = min(run.adapter().split_ids()["train"],
                key=lambda p: run.lineage.first_influence([p]).get("main", 99))
    assert run.lineage.first_influence([early])["main"] == -1
    assert run.lineage.last_uninfluenced_checkpoint([early], "main") is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sets(st.sampled_from("abcdef"), max_size=4),
                          st.sets(st.sampled_from("abcdef"), max_size=4)),
                min_size=1, max_size=8),
       st.integers(0, 7), st.booleans())
def test_lineage_uses_match_rounds_whatever_parties_share(rounds, drop_from, reload):
    """Parties used in the same rounds share a ``uses`` list; parties that diverge (here
    party y sometimes uses other rows than x and z) must still each get exactly their own
    rounds, through a save/load and a rollback (drop_model_from) in between."""
    def record(lin, items, start):
        for r, (xz, y) in enumerate(items, start):
            lin.add_round("m", r, {"x": tuple(sorted(xz)), "y": tuple(sorted(y)),
                                   "z": tuple(sorted(xz))})
    lin = Lineage()
    lin.add_setup("m", {})
    record(lin, rounds, 0)
    if reload:
        lin = Lineage.from_json(json.loads(json.dumps(lin.to_json())))
    cut = min(drop_from, len(rounds))
    lin.drop_model_from("m", cut)
    record(lin, rounds[cut:][::-1], cut)  # different rows after the rollback
    final = rounds[:cut] + rounds[cut:][::-1]
    for party, pick in (("x", 0), ("y", 1), ("z", 0)):
        for pid in "abcdef":
            want = [r for r, row in enumerate(final) if pid in row[pick]]
            node = lin.g.nodes.get(f"d|{party}|{pid}")
            got = (node or {}).get("uses", {}).get("m", [])
            assert got == want, (party, pid)
            if want:  # the first-use edge points at the first round used
                assert f"r|m|{want[0]}" in lin.g.successors(f"d|{party}|{pid}")


def test_exact_replay_equals_retrain_and_purges(run):
    pid = late_patient(run)
    old = {(m, r): run.store.entry(m, r)["digest"] for m in run.store.models()
           for r in run.store.rounds(m)}
    cert = ErasureService(run, retrain=True).submit(ErasureRequest(pid, party="lab"))
    v = cert["verification"]
    assert v["max_abs_param_diff_vs_retrain"] <= 1e-6
    assert v["prediction_agreement"] == 1.0
    assert cert["rollback"]["main"] >= 0
    assert v["influenced_checkpoints_left"] == []
    fresh = RunDir(run.path)
    assert fresh.consistency() == []
    assert fresh.lineage.contributions(pid) == []
    # checkpoints before the rollback point are kept unchanged; later ones replaced
    rb = cert["rollback"]["main"]
    for (m, r), d in old.items():
        if r <= rb:
            assert fresh.store.entry(m, r)["digest"] == d
        elif r in fresh.store.rounds(m):
            assert fresh.store.entry(m, r)["digest"] != d
    assert fresh.audit.verify().ok


def test_repeated_request_is_idempotent_and_unknown_changes_nothing(run):
    pid = late_patient(run)
    svc = ErasureService(run)
    cert = svc.submit(ErasureRequest(pid))
    n = run.audit.position
    assert svc.submit(ErasureRequest(pid)) == cert
    assert ErasureService(RunDir(run.path)).submit(ErasureRequest(pid, reason="again")) == cert
    assert run.audit.position == n
    before = (run.path / "store" / "index.json").read_bytes()
    with pytest.raises(UnknownPatientError, match="nothing was changed"):
        svc.submit(ErasureRequest("no-such-patient"))
    assert (run.path / "store" / "index.json").read_bytes() == before
    assert RunDir(run.path).audit.position == n
    with pytest.raises(MethodUnavailableError):
        svc.submit(ErasureRequest(late_patient(RunDir(run.path)), method="sisa"))


@pytest.mark.parametrize("step", STEPS[:-1])
def test_crash_mid_erasure_recovers(run, step):
    pid = late_patient(run)
    with pytest.raises(ErasureInterrupted):
        ErasureService(run, crash_at=step).submit(ErasureRequest(pid))
    reopened = RunDir(run.path)
    assert reopened.consistency()  # in flight: the journal says so
    (cert,) = ErasureService(reopened, retrain=True).recover()
    assert cert["verification"]["max_abs_param_diff_vs_retrain"] <= 1e-6
    final = RunDir(run.path)
    assert final.consistency() == []
    assert final.audit.verify().ok
    assert ErasureService(final).submit(ErasureRequest(pid)) == cert


def test_crash_recovered_in_the_same_process_sees_the_committed_lineage(run):
    """The staged lineage is built in the run's own graph: an interrupted request must leave
    the in-memory graph equal to the file on disk, so that recovery in the same process (the
    same RunDir object) replays from the committed lineage."""
    pid = late_patient(run)
    before = json.dumps(run.lineage.to_json(), sort_keys=True)
    with pytest.raises(ErasureInterrupted):
        ErasureService(run, crash_at="unlearned").submit(ErasureRequest(pid))
    assert json.dumps(run.lineage.to_json(), sort_keys=True) == before
    assert run.lineage.contributions(pid)  # nothing committed: the patient is still there
    (cert,) = ErasureService(run, retrain=True).recover()
    assert cert["verification"]["max_abs_param_diff_vs_retrain"] <= 1e-6
    assert run.lineage.contributions(pid) == []
    assert RunDir(run.path).consistency() == []


def test_batch_of_requests_served_together(run):
    train = run.adapter().split_ids()["train"]
    reqs = [ErasureRequest(p) for p in train[:5]]
    cert = ErasureService(run, retrain=True).submit_many(reqs)
    assert cert["verification"]["max_abs_param_diff_vs_retrain"] <= 1e-6
    assert cert["verification"]["erased_training_rows"] == 5
    assert ErasureService(run).submit(reqs[2]) == cert  # already erased in the batch


def _tamper(path, fn):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(fn(lines)))


@pytest.mark.parametrize("kind", ["edit", "delete", "reorder", "truncate"])
def test_audit_verify_catches_tampering(run, kind):
    log = run.path / "audit.jsonl"
    assert AuditLog(log).verify().ok

    def edit(lines):
        e = json.loads(lines[3])
        e["data"]["round"] = 999
        lines[3] = json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n"
        return lines

    fn = {
        "edit": edit,
        "delete": lambda ls: ls[:3] + ls[4:],
        "reorder": lambda ls: ls[:3] + [ls[4], ls[3]] + ls[5:],
        "truncate": lambda ls: ls[:-1],
    }[kind]
    _tamper(log, fn)
    result = AuditLog(log).verify()
    assert not result.ok
    assert result.first_bad == (3 if kind != "truncate" else len(log.read_text().splitlines()))


def test_cli_erase_lineage_audit(run, capsys):
    from scenarios.cli import main

    pid = late_patient(run)
    assert main(["lineage", str(run.path), "--patient", pid]) == 0
    assert "main" in capsys.readouterr().out
    assert main(["erase", "--run", str(run.path), "--patient", pid, "--reason", "test"]) == 0
    out = capsys.readouterr().out
    assert "certificate" in out
    assert main(["audit", "verify", str(run.path)]) == 0
    assert main(["erase", "--run", str(run.path), "--patient", "nobody"]) == 2
    _tamper(run.path / "audit.jsonl", lambda ls: ls[:2] + ls[3:])
    assert main(["audit", "verify", str(run.path)]) == 1


def test_sisa_erasure_touches_one_shard(tmp_path):
    from unlearning.methods.sisa import sisa_spec

    r = train_run(tmp_path / "sisa", sisa_spec(spec(), shards=3, slices=2))
    pid = r.adapter().split_ids()["train"][0]
    cert = ErasureService(r, retrain=True).submit(ErasureRequest(pid, method="sisa"))
    assert len(cert["rollback"]) == 1
    assert cert["verification"]["max_abs_param_diff_vs_retrain"] <= 1e-6
    assert RunDir(r.path).consistency() == []


def test_param_diff_helper():
    import numpy as np

    a = {"p": {"params": {"w": np.ones(2)}, "opt_state": [np.zeros(1)]}}
    b = {"p": {"params": {"w": np.array([1.0, 1.5])}, "opt_state": [np.zeros(1)]}}
    assert max_param_diff(a, b) == 0.5
