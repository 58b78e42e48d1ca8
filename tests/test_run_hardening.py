"""Run directories under concurrent operators and tampering: the run lock, refusing a log
that does not verify, erased.json bound to the log, a corrupt rollback checkpoint, the
committed lineage, a read-only `vfl audit verify`, recovery cleaning up after itself,
`vfl check`, and the signed audit log."""

import json
import subprocess
import sys
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization

from scenarios.cli import main
from unlearning.audit_log import GENESIS, AuditLog, _canonical
from unlearning.errors import ErasureInterrupted, RunDirError
from unlearning.run import RunDir, train_run
from unlearning.service import ErasureRequest, ErasureService
from unlearning.store import sha256
from vfl.core.tasks import Task
from vfl.vertical.config import TrainConfig
from vfl.vertical.models import ModelConfig

CONFIG = TrainConfig(Task("binary"), ModelConfig("linear", "sum"), epochs=2, batch_size=32,
                     learning_rate=0.05, seed=3, protocol="plain")
DATA = {"factory": "tests.conftest:make_vertical_tables", "kwargs": {"n": 160},
        "active": "hospital"}


def small_spec(**extra) -> dict:
    """A small vertical run (three parties, 12 rounds, a checkpoint per round)."""
    return {"mode": "vertical", "dataset": DATA, "config": CONFIG.to_json(),
            "retention": {"every": 1}, "fsync": False, "arrival": {"waves": 3}} | extra


def late_patients(run, k=1) -> list[str]:
    """Training patients admitted in the last wave (replayed from a late checkpoint)."""
    lin = run.lineage
    train = run.adapter().split_ids()["train"]
    return sorted(train, key=lambda p: -lin.first_influence([p]).get("main", -1))[:k]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("hardening") / "base", small_spec())


def snapshot(path) -> dict:
    """Every file of the run directory but the lock file (whose holder notes its pid)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "run.lock"}


def lines_of(run):
    return (run.path / "audit.jsonl").read_text().splitlines(keepends=True)


# -- the run lock --------------------------------------------------------------------------
HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, json.dumps({"pid": os.getpid(), "command": "other-operator"}).encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_second_erase_is_refused_or_waits_for_the_lock(run, capsys):
    pid = late_patients(run)[0]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run.path / "run.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run.path)
        args = ["erase", "--run", str(run.path), "--patient", pid]
        assert main(args + ["--lock-timeout", "0"]) == 2
        err = capsys.readouterr().err
        assert "locked by pid" in err and "other-operator" in err and "refused" in err
        t0 = time.monotonic()
        assert main(args + ["--lock-timeout", "0.5"]) == 2
        assert time.monotonic() - t0 >= 0.5
        assert "gave up after 0.5 s" in capsys.readouterr().err
        assert snapshot(run.path) == before  # nothing was touched
    finally:
        holder.kill()
        holder.wait()
    assert main(["erase", "--run", str(run.path), "--patient", pid]) == 0


def test_a_waiting_erase_sees_what_the_holder_changed(run, capsys):
    """The second operator waits, then works on the state the first one left (the run is
    reloaded when the lock is taken), so the chain does not fork."""
    a, b = late_patients(run, 2)
    first = RunDir(run.path)
    second = RunDir(run.path)  # opened before the first erasure: stale unless reloaded
    taken = threading.Event()

    def hold_and_erase():
        with first.lock():
            taken.set()
            time.sleep(0.5)
            ErasureService(first).submit(ErasureRequest(a))

    t = threading.Thread(target=hold_and_erase, daemon=True)
    t.start()
    assert taken.wait(60), "the first operator could not take the run's lock"
    waits = []
    ErasureService(second, on_wait=waits.append).submit(ErasureRequest(b))
    t.join(120)
    assert waits and "waiting for run directory" in waits[0]
    final = RunDir(run.path)
    assert final.audit.verify().ok
    assert final.consistency() == []
    assert set(final.erased()) == {a, b}
    kinds = [e["kind"] for e in final.audit.entries()]
    assert kinds.count("erasure.certificate") == 2


def test_writes_outside_the_lock_are_refused(run):
    with pytest.raises(RunDirError, match="outside its lock"):
        run.record_erased(["x"], "er-x")
    with pytest.raises(RunDirError, match="outside its lock"):
        run.audit.append("note")
    with pytest.raises(RunDirError, match="outside its lock"):
        run.store.flush()
    with run.lock():
        run.audit.append("note", text="an operator's note")
    assert RunDir(run.path).audit.verify().ok


# -- refusing a log that does not verify; erased.json bound to the log -----------------------
def test_erase_refuses_a_log_that_does_not_verify(run, capsys):
    pid = late_patients(run)[0]
    log = run.path / "audit.jsonl"
    lines = lines_of(run)
    log.write_text("".join(lines[:3] + lines[4:]))  # an entry deleted
    before = snapshot(run.path)
    assert main(["erase", "--run", str(run.path), "--patient", pid]) == 1
    err = capsys.readouterr().err
    assert "does not verify" in err and "entry 3" in err
    assert snapshot(run.path) == before
    with pytest.raises(Exception, match="does not verify"):
        ErasureService(RunDir(run.path)).submit(ErasureRequest(pid))


def test_removing_a_patient_from_erased_json_is_detected(run, capsys):
    a, b = late_patients(run, 2)
    ErasureService(run).submit(ErasureRequest(a))
    assert RunDir(run.path).consistency() == []
    # an insider quietly puts the patient back into the training data
    (run.path / "erased.json").write_text("{}")
    problems = RunDir(run.path).consistency()
    assert any("missing from erased.json" in p for p in problems), problems
    assert main(["check", str(run.path)]) == 1
    assert "missing from erased.json" in capsys.readouterr().out
    # and serving the next request (which would retrain with the patient) is refused
    assert main(["erase", "--run", str(run.path), "--patient", b]) == 1
    assert "erased.json" in capsys.readouterr().err
    # a patient added behind the log's back is named too
    (run.path / "erased.json").write_text(json.dumps({a: "er-x", b: "er-forged"}))
    problems = RunDir(run.path).consistency()
    assert any("no audit entry records" in p for p in problems), problems


def test_the_log_names_no_patient(run):
    pid = late_patients(run)[0]
    ErasureService(run).submit(ErasureRequest(pid))
    text = (run.path / "audit.jsonl").read_text()
    assert pid not in text
    (deleted,) = [e for e in run.audit.entries() if e["kind"] == "erasure.data_deleted"]
    assert deleted["data"]["erased_ids"] == [run.erased_digest(pid)]


# -- a corrupt rollback checkpoint -------------------------------------------------------------
@pytest.mark.parametrize("how", ["earlier", "round0"])
def test_corrupt_rollback_checkpoint_falls_back(run, how):
    pid = late_patients(run)[0]
    rb = run.lineage.last_uninfluenced_checkpoint([pid], "main")
    assert rb is not None and rb > 0
    store = run.store
    doomed = [rb] if how == "earlier" else [r for r in store.rounds("main") if r <= rb]
    keep = {d for r in store.rounds("main") if r not in doomed
            for d in store.entry("main", r)["parties"].values()}
    for r in doomed:
        for d in store.entry("main", r)["parties"].values():
            if d not in keep:
                p = store._blob_path(d)
                data = bytearray(p.read_bytes())
                data[len(data) // 2] ^= 0xFF
                p.write_bytes(bytes(data))
    cert = ErasureService(RunDir(run.path), retrain=True).submit(ErasureRequest(pid))
    v = cert["verification"]
    assert v["max_abs_param_diff_vs_retrain"] <= 1e-6
    used = cert["rollback"]["main"]
    if how == "earlier":
        assert used is not None and used < rb
        assert "replayed from the earlier checkpoint" in cert["warnings"][0]
    else:
        assert used is None
        assert "replayed from round 0" in cert["warnings"][0]
    final = RunDir(run.path)
    (unlearned,) = [e for e in final.audit.entries() if e["kind"] == "erasure.unlearned"]
    assert unlearned["data"]["warnings"] == cert["warnings"]
    assert final.consistency() == []  # the corrupt objects were rewritten by the replay
    assert list((final.path / "store" / "quarantine").iterdir())


# -- `vfl lineage` shows committed state only ---------------------------------------------------
def test_lineage_reports_committed_state_only(run, capsys):
    pid = late_patients(run)[0]
    with pytest.raises(ErasureInterrupted):
        ErasureService(run, crash_at="data_deleted").submit(ErasureRequest(pid))
    assert pid in RunDir(run.path).erased()  # registered, but nothing committed yet
    assert main(["lineage", str(run.path), "--patient", pid]) == 0
    out = capsys.readouterr().out
    assert "was erased" not in out
    assert "not committed" in out and "main: setup=no, rounds" in out
    ErasureService(RunDir(run.path)).recover()
    assert main(["lineage", str(run.path), "--patient", pid]) == 0
    out = capsys.readouterr().out
    assert "was erased by request" in out and "note:" not in out


# -- `vfl audit verify` reads only and names a torn append -----------------------------------
def test_audit_verify_never_rewrites_and_names_a_torn_append(run, capsys):
    log = run.path / "audit.jsonl"
    with log.open("ab") as fh:
        fh.write(b'{"seq": 99, "kind": "erasure.rec')  # an append cut short by a crash
    before = snapshot(run.path)
    assert main(["audit", "verify", str(run.path)]) == 1
    out = capsys.readouterr().out
    assert "torn append" in out and "deleted" not in out
    assert snapshot(run.path) == before
    RunDir(run.path)  # opening the run does not repair it either
    assert snapshot(run.path) == before


def test_audit_verify_names_an_entry_appended_after_the_head(run, capsys):
    lines = lines_of(run)
    n = len(lines)
    prev = json.loads(lines[-2])
    (run.path / "audit.head").write_text(json.dumps({"seq": prev["seq"],
                                                      "hash": prev["hash"]}))
    before = snapshot(run.path)
    assert main(["audit", "verify", str(run.path)]) == 1
    out = capsys.readouterr().out
    assert f"entry {n - 1} was appended after the head was written" in out
    assert "deleted" not in out
    assert snapshot(run.path) == before
    # the next erasure finishes the interrupted append instead of refusing the run
    pid = late_patients(run)[0]
    assert main(["erase", "--run", str(run.path), "--patient", pid]) == 0
    assert "repaired: advanced audit.head" in capsys.readouterr().out
    assert RunDir(run.path).audit.verify().ok


# -- recovery cleans up ----------------------------------------------------------------------
def test_recovery_removes_stray_tmp_files_and_leftover_journals(run):
    pid = late_patients(run)[0]
    with pytest.raises(ErasureInterrupted):
        ErasureService(run, crash_at="unlearned").submit(ErasureRequest(pid))
    # what a crash in the middle of atomic writes leaves
    (run.path / "journal" / f".x.json.{pid}.tmp").write_text(json.dumps({"patients": [pid]}))
    (run.path / ".erased.json.abc123.tmp").write_text(json.dumps({pid: "er-x"}))
    (run.path / "store" / ".index.json.abc123.tmp").write_text("{}")
    assert RunDir(run.path).consistency()
    (cert,) = ErasureService(RunDir(run.path)).recover()
    final = RunDir(run.path)
    assert not [p for p in final.path.rglob("*.tmp")]
    assert not list((final.path / "journal").iterdir())
    assert final.consistency() == []
    repaired = [e for e in final.audit.entries() if e["kind"] == "run.repaired"]
    assert repaired and repaired[0]["data"]["stray_files"] == 3
    assert cert["request"]["patients"] == [pid]


def test_a_certified_request_left_with_its_journal_is_not_served_again(run):
    pid = late_patients(run)[0]
    saved = {}

    def keep_journal(step, info):
        if step == "verified":
            saved["journal"] = next((run.path / "journal").glob("*.json")).read_bytes()

    cert = ErasureService(run, on_step=keep_journal).submit(ErasureRequest(pid))
    rid = cert["request"]["request_id"]
    (run.path / "journal" / f"{rid}.json").write_bytes(saved["journal"])  # crash before unlink
    n = RunDir(run.path).audit.position
    assert ErasureService(RunDir(run.path)).recover() == [cert]
    final = RunDir(run.path)
    assert not list((final.path / "journal").iterdir())
    assert final.audit.position == n  # nothing served twice
    assert final.consistency() == []


# -- `vfl check` -------------------------------------------------------------------------------
def test_vfl_check(run, capsys):
    assert main(["check", str(run.path)]) == 0
    assert "consistent" in capsys.readouterr().out
    digest = run.store.entry("main", 3)["parties"]["lab"]
    run.store._blob_path(digest).unlink()
    assert main(["check", str(run.path)]) == 1
    out = capsys.readouterr().out
    assert "problem" in out and "missing" in out
    assert main(["check", str(run.path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["problems"]


# -- the signed audit log ----------------------------------------------------------------------
def private_keys(run, names=None) -> dict:
    out = {}
    for p in sorted((run.path / "keys" / "private").glob("*.key")):
        if p.stem != "erased-ids" and (names is None or p.stem in names):
            out[p.stem] = serialization.load_pem_private_key(p.read_bytes(), password=None)
    return out


def rewrite(run, start: int, edit, keys: dict) -> None:
    """An insider edits entry ``start`` and recomputes the chain after it, re-signing what
    ``keys`` (the private keys they hold) can sign and those parties' head records."""
    if keys:
        from unlearning.audit_log import _entry_message, _head_message
    entries = [json.loads(line) for line in lines_of(run)]
    edit(entries[start])
    prev = entries[start - 1]["hash"] if start else GENESIS
    for e in entries[start:]:
        e["prev"] = prev
        e["hash"] = sha256(_canonical(e))
        for name in e.get("by", []):
            if name in keys:
                e["sig"][name] = keys[name].sign(_entry_message(e["hash"])).hex()
        prev = e["hash"]
    (run.path / "audit.jsonl").write_text("".join(
        json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in entries))
    last = entries[-1]
    (run.path / "audit.head").write_text(json.dumps({"seq": last["seq"], "hash": last["hash"]}))
    for name, key in keys.items():
        sig = key.sign(_head_message(name, last["seq"], last["hash"])).hex()
        (run.path / "heads" / f"{name}.json").write_text(json.dumps(
            {"party": name, "seq": last["seq"], "hash": last["hash"], "sig": sig}))


@pytest.fixture
def erased_run(run):
    ErasureService(run).submit(ErasureRequest(late_patients(run)[0]))
    return RunDir(run.path)


def _index(run, kind):
    return next(i for i, e in enumerate(run.audit.entries()) if e["kind"] == kind)


def test_insider_recomputing_the_chain_fails_verification(erased_run, capsys):
    run = erased_run
    i = _index(run, "erasure.data_deleted")

    def edit(e):
        e["data"]["patients"] = 0

    rewrite(run, i, edit, keys={})
    result = AuditLog(run.path / "audit.jsonl").verify()
    assert not result.ok and result.first_bad == i and result.fault == "bad_signature"
    assert main(["audit", "verify", str(run.path)]) == 1
    assert "signature" in capsys.readouterr().out


def test_insider_holding_the_coordinators_key_cannot_rewrite_what_parties_signed(erased_run):
    run = erased_run
    i = _index(run, "erasure.verified")  # signed by the coordinator alone

    def edit(e):
        e["data"]["forget_accuracy"] = 0.5

    rewrite(run, i, edit, keys=private_keys(run, ["coordinator"]))
    result = RunDir(run.path).audit.verify()
    assert not result.ok
    # the next entry is the certificate, co-signed by the hospitals
    assert result.first_bad == i + 1 and result.fault == "bad_signature"
    assert "'hospital'" in result.reason


def test_insider_holding_every_private_key_passes(erased_run):
    """What the signatures do not protect against (see unlearning.audit_log)."""
    run = erased_run
    i = _index(run, "erasure.verified")

    def edit(e):
        e["data"]["forget_accuracy"] = 0.5

    rewrite(run, i, edit, keys=private_keys(run))
    assert RunDir(run.path).audit.verify().ok


def test_replaced_public_key_and_trusted_keys(erased_run, tmp_path, capsys):
    run = erased_run
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    for p in (run.path / "keys").glob("*.pub"):
        (trusted / p.name).write_bytes(p.read_bytes())
    assert main(["audit", "verify", str(run.path), "--keys", str(trusted)]) == 0
    capsys.readouterr()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from unlearning.keys import public_bytes

    other = Ed25519PrivateKey.generate()
    (run.path / "keys" / "lab.pub").write_text(public_bytes(other.public_key()).hex())
    result = RunDir(run.path).audit.verify()
    assert not result.ok and result.fault == "key_mismatch"
    assert main(["audit", "verify", str(run.path), "--keys", str(trusted)]) == 0
    capsys.readouterr()
    # a wholesale forgery with new keys from entry 0 fools a verifier that trusts the run
    # directory's keys, not one holding the public keys out of band
    new = {n: Ed25519PrivateKey.generate() for n in private_keys(run)}
    for n, k in new.items():
        (run.path / "keys" / f"{n}.pub").write_text(public_bytes(k.public_key()).hex())

    def swap_key(e):
        e["data"]["public_key"] = public_bytes(new["coordinator"].public_key()).hex()

    rewrite(run, 0, swap_key, keys=new)
    entries = run.audit.entries()
    for idx, e in enumerate(entries):
        if e["kind"] == "key.registered" and idx:
            rewrite(run, idx, lambda e: e["data"].__setitem__(
                "public_key", public_bytes(new[e["data"]["name"]].public_key()).hex()), keys=new)
    assert RunDir(run.path).audit.verify().ok
    assert main(["audit", "verify", str(run.path), "--keys", str(trusted)]) == 1
    assert "key_mismatch" in capsys.readouterr().out


def test_stripped_signatures_and_missing_head_records(erased_run):
    run = erased_run
    lines = lines_of(run)
    (run.path / "heads" / "lab.json").unlink()
    result = RunDir(run.path).audit.verify()
    assert not result.ok and result.fault == "head_record_missing"
    # every signature removed and the chain recomputed: a run with keys needs signatures
    entries, prev = [json.loads(line) for line in lines], GENESIS
    for e in entries:
        e.pop("by"), e.pop("sig")
        e["prev"], e["hash"] = prev, None
        e["hash"] = prev = sha256(_canonical(e))
    (run.path / "audit.jsonl").write_text("".join(
        json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in entries))
    (run.path / "audit.head").write_text(json.dumps({"seq": len(entries) - 1, "hash": prev}))
    result = RunDir(run.path).audit.verify()
    assert not result.ok and result.fault == "unsigned" and result.first_bad == 0


def test_a_run_written_before_signed_logs_still_serves(run):
    """An older run: unsigned log, no keys, head records or digest secret. It verifies on
    its chain, serves erasures, and signs from then on."""
    import shutil

    entries = [json.loads(line) for line in lines_of(run)]
    entries, prev = [e for e in entries if e["kind"] != "key.registered"], GENESIS
    for seq, e in enumerate(entries):
        e.pop("by"), e.pop("sig")
        e["seq"], e["prev"], e["hash"] = seq, prev, None
        e["hash"] = prev = sha256(_canonical(e))
    (run.path / "audit.jsonl").write_text("".join(
        json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in entries))
    (run.path / "audit.head").write_text(json.dumps({"seq": len(entries) - 1, "hash": prev}))
    shutil.rmtree(run.path / "keys")
    shutil.rmtree(run.path / "heads")
    old = RunDir(run.path)
    result = old.audit.verify()
    assert result.ok and not result.signed
    pid = late_patients(old)[0]
    ErasureService(old).submit(ErasureRequest(pid))
    final = RunDir(run.path)
    result = final.audit.verify()
    assert result.ok and result.signed
    assert final.consistency() == []


def test_unknown_receiving_party_is_refused(run):
    """Before: ``--party`` was recorded whatever it named."""
    from unlearning.errors import UnknownPartyNameError
    from unlearning.service import ErasureRequest, ErasureService

    pid = sorted(run.adapter().split_ids()["train"])[0]
    log = run.path / "audit.jsonl"
    before = log.read_bytes()
    with pytest.raises(UnknownPartyNameError, match="not a party of this run"):
        ErasureService(run).submit(ErasureRequest(pid, party="no-such-lab"))
    assert log.read_bytes() == before
