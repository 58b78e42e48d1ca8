"""Fault injection on erasures: a kill at every durable write, and concurrent operators.

Every durable change the unlearning code makes passes a write point
(:func:`vfl.core.fileio.write_point`: atomic writes, audit appends, renames, removals). An
uninterrupted erasure on a small run is traced once (``reference``); then, for every write
point k, the same erasure is "killed" at k (:class:`vfl.core.fileio.SimulatedKill` there and at
every later point, leaving the temporary file or the half-appended line a ``kill -9``
leaves), the run is reopened as a new process would, and ``vfl erase``'s path runs:
recovery, then the request again. The run must end consistent, with a verifying (signed)
audit log, no stray files or journals, nothing of the earlier log lost, and exactly the
store, registry, lineage and published model of the uninterrupted erasure.

Concurrency: two ``vfl erase`` processes on one run, first forced to interleave (the first
pauses inside its erasure until the second has finished or is waiting for the lock), then
(``slow``) 20 pairs started together.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.test_run_hardening import late_patients, small_spec
from tests.unlearning_helpers import copy_run
from unlearning.run import RunDir, train_run
from unlearning.service import ErasureRequest, ErasureService
from vfl.core import fileio
from vfl.core.fileio import SimulatedKill

#: the write points of an erasure on the small run (the reference fixture counts them and
#: test_write_points_are_counted checks this number, so every point is killed exactly once)
WRITE_POINTS = 70
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("faults") / "base", small_spec())


def outcome(run: RunDir) -> dict:
    """What an erasure must produce, whatever interrupted it."""
    g = run.lineage.g
    return {
        "index_sha256": run.store.index_digest(),
        "erased": run.erased(),
        "published": run.spec["published"],
        "lineage_nodes": sorted(json.dumps([n, a], sort_keys=True) for n, a in g.nodes(data=True)),
        "lineage_edges": sorted(g.edges()),
        "certificates": sorted(p.name for p in run.cert_dir.glob("*.json")),
        "objects": sorted(run.store.blob_digests()),
    }


def cert_outcome(cert: dict) -> dict:
    v = {k: x for k, x in cert["verification"].items() if "second" not in k}
    return {"request": {k: x for k, x in cert["request"].items() if k != "time"},
            "rollback": cert["rollback"],
            # (purged_objects counts one pass: a purge a kill cut short is finished later;
            # the objects left are compared in outcome())
            "index_sha256": cert["checkpoints"]["index_sha256"],
            "models": {m: {k: x for k, x in s.items() if k != "seconds"}
                       for m, s in cert["models"].items()},
            "verification": v}


@pytest.fixture(scope="module")
def reference(base_run, tmp_path_factory):
    run = copy_run(base_run, tmp_path_factory.mktemp("reference"))
    pid = late_patients(run)[0]
    trace, lock = [], threading.Lock()

    def record(op, path):
        with lock:
            trace.append((op, str(path.relative_to(run.path))))

    with fileio.fault_hook(record):
        cert = ErasureService(run).submit(ErasureRequest(pid))
    return {"pid": pid, "trace": trace, "outcome": outcome(RunDir(run.path)),
            "cert": cert_outcome(cert)}


class Killer:
    """Kills the "process" at write point ``k`` and at every later one."""

    def __init__(self, k: int):
        self.k, self.n, self.at = k, 0, None
        self.lock = threading.Lock()

    def __call__(self, op, path):
        with self.lock:
            i, self.n = self.n, self.n + 1
            if i == self.k:
                self.at = (op, path)
            if i >= self.k:
                raise SimulatedKill(f"killed at write point {self.k} ({op} {path})")


def restart_and_finish(path: Path, pid: str) -> dict:
    """What `vfl erase --patient PID` does in a new process: recovery, then the request."""
    service = ErasureService(RunDir(path))
    with service.session():
        service.recover()
        return service.submit(ErasureRequest(pid))


def check_recovered(path: Path, base: RunDir, reference: dict, cert: dict) -> None:
    final = RunDir(path)
    assert final.consistency() == []
    result = final.audit.verify()
    assert result.ok and result.signed, result.reason
    assert not [p for p in path.rglob("*.tmp")]
    assert not list((path / "journal").glob("*"))
    assert not (path / "lineage.staged.json").exists()
    assert outcome(final) == reference["outcome"]
    assert cert_outcome(cert) == reference["cert"]
    # nothing of the log before the erasure is lost
    before = (base.path / "audit.jsonl").read_bytes()
    assert (path / "audit.jsonl").read_bytes().startswith(before)


def test_write_points_are_counted(reference):
    trace = reference["trace"]
    ops = {op for op, _ in trace}
    assert {"write", "append", "replace", "remove"} <= ops
    # every kind of file an erasure changes is among the points
    for name in ("journal/", "audit.jsonl", "audit.head", "heads/", "erased.json",
                 "store/objects/", "store/index.json", "lineage.staged.json", "lineage.json",
                 "run.json", "certificates/"):
        assert any(p.startswith(name) for _, p in trace), name
    assert len(trace) == WRITE_POINTS, (
        f"an erasure now has {len(trace)} write points; set WRITE_POINTS = {len(trace)} so "
        "each is killed once")


@pytest.mark.parametrize("k", range(WRITE_POINTS))
def test_kill_at_write_point_then_recover(base_run, reference, tmp_path, k):
    trace = reference["trace"]
    assert k < len(trace), f"the erasure has {len(trace)} write points, not {WRITE_POINTS}"
    run = copy_run(base_run, tmp_path)
    killer = Killer(k)
    with fileio.fault_hook(killer), pytest.raises(SimulatedKill):
        ErasureService(run).submit(ErasureRequest(reference["pid"]))
    op, path = killer.at
    assert (op, str(path.relative_to(run.path))) == trace[k]  # the same write, every time
    cert = restart_and_finish(run.path, reference["pid"])
    check_recovered(run.path, base_run, reference, cert)


@pytest.mark.parametrize(("first", "second"), [(0.1, 0.0), (0.3, 0.5), (0.55, 0.2),
                                               (0.7, 0.9), (0.95, 0.0)])
def test_kill_during_recovery_too(base_run, reference, tmp_path, first, second):
    """A crash, then a crash while recovering from it, then a clean recovery."""
    n = len(reference["trace"])
    run = copy_run(base_run, tmp_path)
    with fileio.fault_hook(Killer(int(first * n))), pytest.raises(SimulatedKill):
        ErasureService(run).submit(ErasureRequest(reference["pid"]))
    count = []
    probe = copy_run(run, tmp_path / "probe")  # how many write points recovery has
    with fileio.fault_hook(lambda op, p: count.append(op)):
        restart_and_finish(probe.path, reference["pid"])
    with fileio.fault_hook(Killer(int(second * len(count)))), pytest.raises(SimulatedKill):
        restart_and_finish(run.path, reference["pid"])
    cert = restart_and_finish(run.path, reference["pid"])
    check_recovered(run.path, base_run, reference, cert)


# -- concurrent operators ------------------------------------------------------------------
PAUSING_ERASE = """
import json, os, sys, time
from pathlib import Path
from unlearning.audit_log import AuditLog
from scenarios.cli import main

marker, release = Path(sys.argv[1]), Path(sys.argv[2])
append = AuditLog.append

def pausing_append(self, kind, **kw):
    entry = append(self, kind, **kw)
    if kind == "erasure.located" and not marker.exists():
        marker.write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return entry

AuditLog.append = pausing_append
sys.exit(main(sys.argv[3:]))
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _erase_cmd(run, pid):
    return ["erase", "--run", str(run.path), "--patient", pid]


def check_after_concurrent(path: Path, pids) -> None:
    final = RunDir(path)
    result = final.audit.verify()
    assert result.ok and result.signed, result.reason
    assert final.consistency() == []
    assert set(final.erased()) == set(pids)
    kinds = [e["kind"] for e in final.audit.entries()]
    assert kinds.count("erasure.certificate") == len(set(pids))
    for pid in pids:
        assert not final.lineage.contributions(pid)


def test_two_concurrent_erasures_interleaved(run, tmp_path):
    """The first erasure pauses after locating its patient; the second starts then. Without
    the run lock the second finished meanwhile and the first appended on a stale chain (a
    forked log); with it the second waits, then serves on the first one's result."""
    a, b = late_patients(run, 2)
    marker, release = tmp_path / "paused", tmp_path / "release"
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    first = second = None
    with open(log_a, "w") as out_a, open(log_b, "w") as out_b:
        try:
            first = subprocess.Popen(
                [sys.executable, "-c", PAUSING_ERASE, str(marker), str(release),
                 *_erase_cmd(run, a)], cwd=REPO, env=_env(), stdout=out_a,
                stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 180
            while not marker.exists():
                assert first.poll() is None, log_a.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            second = subprocess.Popen([sys.executable, "-m", "scenarios.cli", *_erase_cmd(run, b)],
                                      cwd=REPO, env=_env(), stdout=out_b,
                                      stderr=subprocess.STDOUT)
            while second.poll() is None and "waiting for run directory" not in (
                    log_b.read_text()):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            waited = second.poll() is None
            release.touch()
            assert first.wait(180) == 0, log_a.read_text()
            assert second.wait(180) == 0, log_b.read_text()
        finally:
            for p in (first, second):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
    assert waited, "the second erasure did not wait for the first one's lock"
    check_after_concurrent(run.path, [a, b])


@pytest.mark.slow
def test_twenty_concurrent_pairs_of_vfl_erase(base_run, tmp_path):
    """20 trials: two `vfl erase` processes started together on one run (different
    patients), then a third erasure on the same run; every log verifies and every store is
    consistent."""
    patients = late_patients(base_run, 3)
    results = []
    for trial in range(20):
        run = copy_run(base_run, tmp_path / f"t{trial}")
        procs = [subprocess.Popen([sys.executable, "-m", "scenarios.cli", *_erase_cmd(run, pid)],
                                  cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
                 for pid in patients[:2]]
        outs = [p.communicate(timeout=600)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        check_after_concurrent(run.path, patients[:2])
        # the run still serves later erasures
        ErasureService(RunDir(run.path)).submit(ErasureRequest(patients[2]))
        check_after_concurrent(run.path, patients)
        results.append(sum("waiting for run directory" in o for o in outs))
    assert len(results) == 20
    print(f"20 concurrent pairs: the second waited for the lock in {sum(results)} of them")


@pytest.mark.slow
def test_kill_at_every_write_point_of_a_client_removal(tmp_path_factory, tmp_path):
    """The same for a hospital leaving a horizontal federation (approximate removal: the
    client's own update log is deleted, the others' are replayed), every point in turn."""
    import hashlib

    from horizontal import FedConfig
    from tests.unlearning_helpers import train_horizontal
    from unlearning.service import ClientRemovalRequest

    config = FedConfig(hidden=(4,), rounds=6, local_epochs=1, batch_size=16, client_lr=0.1,
                       seed=3)
    base = train_horizontal(tmp_path_factory, "faults-h", config, retention={"every": 2})
    request = ClientRemovalRequest("hospital_1")

    def state(run):
        owners = {str(p.relative_to(run.path)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted((run.path / "owners").rglob("*")) if p.is_file()}
        return outcome(run) | {"owners": owners}

    ref_run = copy_run(base, tmp_path / "ref")
    trace = []
    with fileio.fault_hook(lambda op, p: trace.append((op, p))):
        ErasureService(ref_run).submit(request)
    reference = state(RunDir(ref_run.path))
    assert any(op == "remove" and "owners" in str(p) for op, p in trace)
    for k in range(len(trace)):
        run = copy_run(base, tmp_path / f"k{k}")
        with fileio.fault_hook(Killer(k)), pytest.raises(SimulatedKill):
            ErasureService(run).submit(request)
        service = ErasureService(RunDir(run.path))
        with service.session():
            service.recover()
            service.submit(request)
        final = RunDir(run.path)
        assert final.consistency() == [], k
        assert final.audit.verify().ok, k
        assert not [p for p in run.path.rglob("*.tmp")], k
        assert state(final) == reference, k
    print(f"client removal: {len(trace)} write points, each killed and recovered")
