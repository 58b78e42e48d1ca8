"""An erasure is a message: the coordinator asks each holding party to delete its rows
(``data.erase``) and the party answers ``data.erased``; only the coordinator may ask. The
adapters build parties from their full tables and let them delete; the erasure service's
"data deleted" step records the parties' answers. Also: the public API of ``unlearning``
loads lazily (no JAX on import)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import unlearning
from horizontal import FedConfig
from horizontal.checkpointing import HorizontalAdapter, horizontal_spec
from horizontal.client import HospitalClient
from horizontal.simulation import LocalExecutor
from tests.conftest import make_vertical_tables
from tests.test_horizontal_helpers import make_hospitals
from tests.unlearning_helpers import HOSPITALS, copy_run, train_horizontal
from unlearning.errors import MethodUnavailableError
from unlearning.run import RunDir, train_run
from unlearning.service import ClientRemovalRequest, ErasureRequest, ErasureService
from vfl.core.coordinator import Coordinator
from vfl.core.errors import ProtocolError, UnexpectedSenderError
from vfl.core.keyed import ids_digest
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.rounds import ERASE, ERASED, AdapterBase, request_erasure
from vfl.core.transport import InMemoryTransport
from vfl.vertical.federation import Federation

ROOT = Path(__file__).resolve().parents[1]
CONFIG = FedConfig(hidden=(4,), rounds=3, local_epochs=1, batch_size=16, client_lr=0.1,
                   seed=3)


def _vertical():
    tables = make_vertical_tables(n=60, seed=4)
    return tables, Federation.from_tables(tables, "hospital")


def _hospital(name="hospital_1"):
    tables = make_hospitals(sizes=[20, 30])
    transport = InMemoryTransport()
    client = HospitalClient(name, tables[name], LocalExecutor("loop"))
    transport.register(client)
    return tables[name], client, Coordinator(transport)


# -- the party side ---------------------------------------------------------------------------
def test_vertical_party_refuses_erase_from_anyone_but_the_coordinator():
    tables, fed = _vertical()
    victim = str(tables["lab"].ids[0])
    for sender in ("hospital", "pharmacy", "server"):
        forged = Message(sender, "lab", ERASE, Label.PUBLIC, {"ids": [victim]})
        with pytest.raises(UnexpectedSenderError, match="only the coordinator"):
            fed.transport.deliver(forged)
    assert fed.parties["lab"].table is tables["lab"]  # nothing deleted


def test_hospital_refuses_erase_from_anyone_but_the_coordinator():
    table, client, _ = _hospital()
    for sender in ("server", "hospital_0"):
        forged = Message(sender, client.name, ERASE, Label.PUBLIC, {"ids": [table.ids[0]]})
        with pytest.raises(UnexpectedSenderError):
            client.handle(forged)
    assert client.table is table


def test_malformed_erase_is_refused_by_field():
    tables, fed = _vertical()
    for bad in ({}, {"ids": "pt-4-00001"}, {"ids": [1, 2]}):
        with pytest.raises(ProtocolError, match="'ids' field"):
            fed.transport.deliver(Message(COORDINATOR, "lab", ERASE, Label.PUBLIC, bad))


def test_vertical_party_deletes_its_rows_and_says_how_many():
    tables, fed = _vertical()
    lab = fed.parties["lab"]
    full = tables["lab"]
    gone = [str(i) for i in full.ids[[2, 5, 11]]] + ["pt-not-held"]
    aligned = np.asarray(full.ids[:20], dtype=object)
    lab.on_aligned(aligned)
    lab.load_scoring_table(full)
    acks = request_erasure(fed.coordinator, {"lab": gone})
    keep = [i for i in full.ids if str(i) not in set(gone)]
    assert acks == {"lab": {"deleted": 3, "rows_left": len(keep),
                            "ids_digest": ids_digest(sorted(map(str, keep)))}}
    # exactly the rows (and order) the adapters kept before, by t.rows(keep)
    ref = full.rows(keep)
    assert list(lab.table.ids) == list(ref.ids)
    assert lab.table.features.tobytes() == ref.features.tobytes()
    assert not set(gone) & set(map(str, lab.psi_ids()))
    assert list(lab.aligned_ids) == [i for i in aligned if str(i) not in set(gone)]
    assert not set(gone) & set(map(str, lab._scoring.ids))
    # the exchange is on the transcript, both ways, public
    kinds = [(e.sender, e.receiver, e.kind, e.label) for e in fed.transcript.entries]
    assert kinds == [(COORDINATOR, "lab", ERASE, "public"), ("lab", COORDINATOR, ERASED, "public")]


def test_hospital_deletes_its_rows_and_says_how_many():
    table, client, coordinator = _hospital()
    gone = list(map(str, table.ids[:4]))
    acks = request_erasure(coordinator, {client.name: gone})
    keep = [str(i) for i in table.ids[4:]]
    assert acks[client.name] == {"deleted": 4, "rows_left": len(keep),
                                 "ids_digest": ids_digest(sorted(keep))}
    assert list(client.table.ids) == keep
    assert client.table.labels.tobytes() == table.rows(keep).labels.tobytes()
    again = request_erasure(coordinator, {client.name: gone})  # idempotent
    assert again[client.name]["deleted"] == 0 and client.table.n_rows == len(keep)


# -- the adapters build parties from the full tables; the parties delete -------------------
@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return train_horizontal(tmp_path_factory, "erase-msg", CONFIG, retention={"every": 1})


def test_an_erasure_is_a_message_on_the_transcript(base_run, tmp_path):
    run = copy_run(base_run, tmp_path)
    pids = sorted(run.adapter().split_ids()["train"])[:2]
    holders = {p: run.adapter().holders(p)[0] for p in pids}
    ErasureService(run).submit(ErasureRequest(tuple(pids)))
    fresh = RunDir(run.path)
    (entry,) = [e for e in fresh.audit.entries() if e["kind"] == "erasure.data_deleted"]
    acks = entry["data"]["acks"]
    assert sorted(acks) == sorted(set(holders.values())) == entry["data"]["parties"]
    full = fresh.adapter().full_tables
    for party, ack in acks.items():
        mine = [p for p in pids if holders[p] == party]
        assert ack["deleted"] == len(mine)
        assert ack["rows_left"] == full[party].n_rows - len(mine)
        assert len(ack["remaining_ids"]) == 64  # keyed, never the party's plain digest
    # a trainer of the run: its clients, built from their full tables, delete the rows
    # themselves, and the transcript shows it
    adapter = fresh.adapter()
    trainer = adapter.trainer("main")
    entries = trainer.transport.transcript.entries
    asked = sorted(e.receiver for e in entries if e.kind == ERASE)
    answered = sorted(e.sender for e in entries if e.kind == ERASED)
    assert asked == answered == sorted(set(holders.values()))
    assert all(e.sender == COORDINATOR for e in entries if e.kind == ERASE)
    for name, client in trainer.clients.items():
        assert not set(pids) & set(map(str, client.table.ids))
        keep = [i for i in full[name].ids if str(i) not in set(pids)]
        assert client.table.features.tobytes() == full[name].rows(keep).features.tobytes()
    # the data deletion of a new request, at the parties (nothing written)
    more = sorted(adapter.split_ids()["train"])[5]
    acks = adapter.erase_at_parties([more])
    assert list(acks) == adapter.holders(more) and acks[adapter.holders(more)[0]]["deleted"] == 1
    kinds = [(e.sender, e.kind) for e in adapter.erasure_transcript.entries]
    assert (COORDINATOR, ERASE) in kinds and (adapter.holders(more)[0], ERASED) in kinds


def test_vertical_trainer_parties_delete_their_own_rows(tmp_path):
    from tests.test_run_hardening import small_spec

    run = train_run(tmp_path / "v", small_spec())
    pid = sorted(run.adapter().split_ids()["train"])[3]
    ErasureService(run).submit(ErasureRequest(pid, party="lab"))
    adapter = RunDir(run.path).adapter()
    trainer = adapter.trainer("main")
    fed = trainer.federation
    erase = [e for e in fed.transcript.entries if e.kind in (ERASE, ERASED)]
    assert sorted(e.receiver for e in erase if e.kind == ERASE) == adapter.holders(pid)
    for name, party in fed.parties.items():
        full = adapter.full_tables[name]
        keep = [i for i in full.ids if str(i) != pid]
        assert list(party.table.ids) == keep
        assert party.table.features.tobytes() == full.rows(keep).features.tobytes()
    (entry,) = [e for e in RunDir(run.path).audit.entries()
                if e["kind"] == "erasure.data_deleted"]
    assert {p: a["deleted"] for p, a in entry["data"]["acks"].items()} == {
        p: 1 for p in adapter.holders(pid)}


class NoClientRemoval(HorizontalAdapter):
    """A horizontal adapter without the client-removal capability."""

    remove_client = None


def test_a_removal_the_adapter_cannot_serve_is_refused(tmp_path):
    spec = horizontal_spec(HOSPITALS, CONFIG, fsync=False,
                           adapter=f"{__name__}:NoClientRemoval")
    run = train_run(tmp_path / "run", spec)
    log = (run.path / "audit.jsonl").read_bytes()
    with pytest.raises(MethodUnavailableError, match="cannot remove a whole client"):
        ErasureService(run).submit(ClientRemovalRequest("hospital_1"))
    assert (run.path / "audit.jsonl").read_bytes() == log


def test_adapter_base_compares_states_as_they_are():
    states = {"a": {"params": {"w": np.ones(2)}}}

    class Minimal(AdapterBase):  # the one abstract hook, unused here
        def holding_parties(self):
            return None, {}

    assert Minimal().comparable_state(states) is states


# -- the public API ------------------------------------------------------------------------
def test_import_unlearning_is_lazy_and_loads_no_jax():
    code = (
        "import sys, unlearning\n"
        "assert 'jax' not in sys.modules\n"
        "unlearning.UnknownPatientError, unlearning.MethodUnavailableError\n"
        "unlearning.UnknownClientError\n"
        "assert 'jax' not in sys.modules, 'the errors loaded JAX'\n"
        "assert 'unlearning.service' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr


def test_public_names_resolve_to_their_modules():
    from unlearning import service
    from unlearning.audit_log import AuditLog
    from unlearning.lineage import Lineage
    from unlearning.store import Checkpoint, CheckpointStore

    assert unlearning.ErasureService is service.ErasureService
    assert unlearning.ErasureRequest is service.ErasureRequest
    assert unlearning.ClientRemovalRequest is service.ClientRemovalRequest
    assert unlearning.RunDir is RunDir and unlearning.train_run is train_run
    assert (unlearning.AuditLog, unlearning.Lineage) == (AuditLog, Lineage)
    assert (unlearning.CheckpointStore, unlearning.Checkpoint) == (CheckpointStore, Checkpoint)
    assert set(unlearning.__all__) <= set(dir(unlearning))
    with pytest.raises(AttributeError):
        unlearning.NotAName  # noqa: B018
