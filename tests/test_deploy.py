"""The deployment code without Flower's processes: envelopes, sealing, the party host, the
Flower transport over an in-process grid (``deploy_fakes.FakeGrid``), and the vertical job
equal to the in-memory run. The real SuperLink/SuperNode runs are in test_deploy_flower.py.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr")

from deploy_fakes import FakeGrid  # noqa: E402

from vfl.core import wire  # noqa: E402
from vfl.core.errors import (  # noqa: E402
    DataFileError,
    PartyDropoutError,
    PartyUnavailableError,
    ProtocolError,
    TransportError,
    UnexpectedSenderError,
    UnknownPartyError,
)
from vfl.core.messages import COORDINATOR, Label, Message  # noqa: E402
from vfl.core.rounds import state_tree
from vfl.core.sealing import KeyPinningError, PinnedKeys, SealingError, SealingKey  # noqa: E402
from vfl.core.table import PartyTable  # noqa: E402
from vfl.core.tasks import Task  # noqa: E402, I001
from vfl.deploy import envelope  # noqa: E402
from vfl.deploy.host import PartyHost  # noqa: E402
from vfl.deploy.serverapp import execute  # noqa: E402
from vfl.deploy.transport import FlowerTransport, UnknownNodeError  # noqa: E402
from vfl.vertical import deployed  # noqa: E402
from vfl.vertical.config import SecurityPolicy, TrainConfig  # noqa: E402
from vfl.vertical.models import ModelConfig  # noqa: E402
from vfl.vertical.source_layer import plaintext_view  # noqa: E402
from vfl.vertical.trainer import SplitTrainer  # noqa: E402


def _keys(*names):
    keys = {n: SealingKey(n) for n in names}
    pinned = PinnedKeys()
    for n, k in keys.items():
        pinned.pin(n, k.public_bytes)
    return keys, pinned


# -- envelopes ------------------------------------------------------------------------------
def test_sealed_message_opens_only_at_its_receiver_with_its_header():
    keys, pinned = _keys("lab", "hospital", "pharmacy")
    payload = {"h": np.arange(6, dtype=np.float32).reshape(2, 3)}
    msg = Message("lab", "hospital", "train.embedding", Label.PLAINTEXT_BY_DESIGN, payload, 3)
    sealed = envelope.seal(msg, keys["lab"], pinned)
    assert set(sealed.payload) == {"sealed"}
    assert payload["h"].tobytes() not in sealed.to_bytes()
    opened = envelope.open_sealed(sealed, keys["hospital"], pinned)
    assert np.array_equal(opened.payload["h"], payload["h"])
    # Another receiver, another round, another kind, another label: refused.
    for bad in (
        Message("lab", "pharmacy", sealed.kind, sealed.label, sealed.payload, 3),
        Message("lab", "hospital", sealed.kind, sealed.label, sealed.payload, 4),
        Message("lab", "hospital", "train.enc_embedding", sealed.label, sealed.payload, 3),
        Message("lab", "hospital", sealed.kind, Label.CIPHERTEXT, sealed.payload, 3),
    ):
        receiver = keys[bad.receiver]
        with pytest.raises(SealingError):
            envelope.open_sealed(bad, receiver, pinned)
    with pytest.raises(TransportError, match="not sealed"):
        envelope.open_sealed(msg, keys["hospital"], pinned)


def test_remote_errors_come_back_as_their_own_class():
    data = envelope.encode_outcomes([UnexpectedSenderError("no"), [], ValueError("x")])
    a, b, c = envelope.decode_outcomes(data, 3)
    assert type(a) is UnexpectedSenderError and str(a) == "no"
    assert b == ([], [])
    assert isinstance(c, envelope.RemotePartyError) and "ValueError: x" in str(c)
    with pytest.raises(Exception, match="expected a list of 2"):
        envelope.decode_outcomes(data, 2)


# -- a federation on the fake grid -----------------------------------------------------------
@pytest.fixture(scope="module")
def actg_files(tmp_path_factory):
    from vfl import load_dataset

    ds = load_dataset("actg320")
    d = tmp_path_factory.mktemp("actg")
    files = {n: t.to_csv(d / f"{n}.csv") for n, t in ds.tables.items()}
    return ds, files


def _config(protocol="plain", **kw):
    model = (ModelConfig("linear", "mlp", embed_dim=4, top_hidden=(16,))
             if protocol == "paillier" else ModelConfig("mlp", "linear", hidden=(8,), embed_dim=4))
    base = dict(epochs=1, batch_size=256, learning_rate=0.5, optimizer="sgd", seed=3,
                test_fraction=0.35, protocol=protocol, key_bits=1024, insecure_test_key=True)
    return TrainConfig(Task("binary"), model, **(base | kw))


def _node_options(ds, files, name, tmp_path):
    return {"party": name, "data": str(files[name]), "id_column": "id",
            "label_column": ds.tables[name].label_name, "allow_insecure_test_key": True,
            "min_key_bits": 1024, "out": str(tmp_path / name)}


def _grid(ds, files, tmp_path, **host_kw):
    grid = FakeGrid()
    nodes = {}
    for name in ds.tables:
        party, save = deployed.make_party(_node_options(ds, files, name, tmp_path))
        nodes[name] = grid.add(PartyHost(party, out_dir=tmp_path / name, save=save,
                                         **host_kw.get(name, {})))
    return grid, nodes


PREDICT = 12  # patients scored after training (the first aligned ids)


def _in_memory(files, ds, config):
    tables = {n: PartyTable.from_file(files[n], "id", ds.tables[n].label_name) for n in files}
    trainer = SplitTrainer.from_tables(tables, ds.active, config,
                                       policy=SecurityPolicy.pinned(config))
    history = trainer.fit(progress=False)
    metrics = trainer.evaluate("test")["metrics"]
    ids = list(trainer.federation.parties[ds.active].aligned_ids[:PREDICT])
    metrics = dict(metrics, _predict=(ids, trainer.predict(ids).tolist()))
    states = {n: state_tree(p.snapshot()) for n, p in trainer.federation.parties.items()}
    return trainer, list(history.loss), metrics, states


def _assert_same_tree(a, b, path="state"):
    if isinstance(a, dict):
        assert set(map(str, a)) == set(map(str, b)), path
        bb = {str(k): v for k, v in b.items()}
        for k, v in a.items():
            _assert_same_tree(v, bb[str(k)], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        x, y = np.asarray(a), np.asarray(b)
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert x.tobytes() == y.tobytes(), f"{path} differs"
    else:
        assert a == b, path


@pytest.mark.parametrize("protocol", ["plain", "paillier"])
def test_vertical_job_over_the_flower_transport_equals_the_in_memory_run(
    actg_files, tmp_path, protocol
):
    ds, files = actg_files
    config = _config(protocol)
    _, losses, metrics, states = _in_memory(files, ds, config)

    grid, _ = _grid(ds, files, tmp_path)
    captured: list[bytes] = []
    transport = FlowerTransport(grid, capture=captured.append, poll_interval=0.001,
                                log=lambda s: None)
    try:
        transport.connect(list(ds.tables))
        ids, scores = metrics.pop("_predict")
        job = {"parties": list(ds.tables), "train": config.to_json(), "predict": ids}
        result = execute(deployed.run_job, transport, job, log=lambda s: None)
    finally:
        grid.close()
    assert result["losses"] == losses
    assert result["metrics"]["test"] == metrics
    assert result["predictions"] == {"ids": [str(i) for i in ids], "scores": scores}
    remote = {n: deployed.load_state(result["saved"][n]["file"]) for n in ds.tables}
    _assert_same_tree(plaintext_view(states), plaintext_view(remote))

    # At most one bundle per party per training round (plus one to finish the last round).
    n = result["rounds"]
    for name, node in _node_ids(transport).items():
        bundles = [b for dst, b in grid.pushed if dst == node
                   and any(m.kind in ("train.forward", "train.step", "train.enc_update",
                                      "train.cut_gradient")
                           for m in envelope.decode_bundle(b))]
        assert len(bundles) <= n + 1, (name, len(bundles), n)

    # The coordinator never held a party-to-party payload in plaintext: every one it received
    # was sealed, and no embedding or update the parties exchanged appears in its bytes.
    p2p = []
    for data in captured:
        for outcome in wire.loads(data):
            if outcome[0] == "ok":
                for raw in outcome[1]:
                    m = Message.from_bytes(raw)
                    if m.receiver != COORDINATOR:
                        p2p.append(m)
    assert p2p and all(set(m.payload) == {"sealed"} for m in p2p)
    assert all(e.sealed for e in transport.transcript
               if e.sender != COORDINATOR and e.receiver != COORDINATOR)


def _node_ids(transport):
    return {p: transport.node_of(p) for p in transport.parties}


def test_plaintext_embeddings_never_reach_the_coordinator(actg_files, tmp_path):
    """Plain split learning: the active party sees the lab's embeddings by design; the
    coordinator must not. The in-memory run (bitwise the same) tells what they are."""
    ds, files = actg_files
    config = _config("plain")
    tables = {n: PartyTable.from_file(files[n], "id", ds.tables[n].label_name) for n in files}
    trainer = SplitTrainer.from_tables(tables, ds.active, config)
    seen = []
    trainer.federation.transport.observers.append(
        lambda m: seen.append(np.asarray(m.payload["h"]).tobytes())
        if m.kind == "train.embedding" else None
    )
    trainer.fit(progress=False)
    assert seen

    grid, _ = _grid(ds, files, tmp_path)
    captured: list[bytes] = []
    transport = FlowerTransport(grid, capture=captured.append, poll_interval=0.001,
                                log=lambda s: None)
    try:
        transport.connect(list(ds.tables))
        deployed.run_job(transport, {"parties": list(ds.tables), "train": config.to_json()},
                         log=lambda s: None)
    finally:
        grid.close()
    blob = b"".join(captured) + b"".join(b for _, b in grid.pushed)
    for h in seen:
        assert h[:64] not in blob


# -- what goes wrong -------------------------------------------------------------------------
def test_a_node_serving_an_unknown_party_or_a_duplicate_is_refused(actg_files, tmp_path):
    ds, files = actg_files
    grid, _ = _grid(ds, files, tmp_path)
    try:
        with pytest.raises(UnknownPartyError, match="no connected node serves"):
            FlowerTransport(grid, log=lambda s: None).connect(["hospital", "lab", "radiology"],
                                                                wait=0.5)
        party, save = deployed.make_party(_node_options(ds, files, "lab", tmp_path))
        grid.add(PartyHost(party))
        with pytest.raises(TransportError, match="both serve party 'lab'"):
            FlowerTransport(grid, log=lambda s: None).connect(list(ds.tables))
    finally:
        grid.close()


def test_too_few_nodes_is_a_clear_error(actg_files, tmp_path):
    ds, files = actg_files
    grid = FakeGrid()
    with pytest.raises(PartyUnavailableError, match="start every organization"):
        FlowerTransport(grid, log=lambda s: None).connect(["hospital", "lab"], wait=0.3)


def test_a_reply_from_the_wrong_node_is_refused(actg_files, tmp_path):
    ds, files = actg_files
    grid, nodes = _grid(ds, files, tmp_path)
    try:
        transport = FlowerTransport(grid, log=lambda s: None)
        transport.connect(list(ds.tables))
        grid.reply_as[nodes["lab"]] = 4242
        with pytest.raises(UnknownNodeError, match="node 4242"):
            transport.deliver(Message(COORDINATOR, "lab", "deploy.hello", Label.PUBLIC, {}))
    finally:
        grid.close()


def test_a_node_that_stops_mid_run_aborts_the_vertical_protocol(actg_files, tmp_path):
    ds, files = actg_files
    grid, nodes = _grid(ds, files, tmp_path)
    try:
        transport = FlowerTransport(grid, reply_timeout=1.0, log=lambda s: None)
        transport.connect(list(ds.tables))
        grid.stop(nodes["pharmacy"])
        with pytest.raises(PartyDropoutError, match="pharmacy"):
            deployed.run_job(transport, {"parties": list(ds.tables),
                                         "train": _config().to_json()}, log=lambda s: None)
        assert not (tmp_path / "hospital" / deployed.STATE_FILE).exists()  # nothing saved
    finally:
        grid.close()


def test_a_silent_node_times_out(actg_files, tmp_path):
    ds, files = actg_files
    grid, nodes = _grid(ds, files, tmp_path)
    try:
        transport = FlowerTransport(grid, reply_timeout=0.5, log=lambda s: None)
        transport.connect(list(ds.tables))
        grid.silent.add(nodes["lab"])
        with pytest.raises(PartyUnavailableError, match="did not answer within"):
            transport.deliver(Message(COORDINATOR, "lab", "deploy.hello", Label.PUBLIC, {}))
    finally:
        grid.close()


def test_an_operator_pinned_key_that_the_coordinator_swaps_stops_the_run(actg_files, tmp_path):
    ds, files = actg_files
    wrong = SealingKey("lab").public_bytes
    grid, _ = _grid(ds, files, tmp_path, hospital={"peer_keys": {"lab": wrong}})
    try:
        with pytest.raises(KeyPinningError, match="not the one this operator pinned"):
            FlowerTransport(grid, log=lambda s: None).connect(list(ds.tables))
    finally:
        grid.close()


def test_a_party_refuses_unsealed_or_forged_party_messages(actg_files, tmp_path):
    ds, files = actg_files
    party, save = deployed.make_party(_node_options(ds, files, "hospital", tmp_path))
    host = PartyHost(party)
    lab = SealingKey("lab")
    host._pin({"hospital": host.key.public_bytes, "lab": lab.public_bytes})
    plain = Message("lab", "hospital", "train.embedding", Label.PLAINTEXT_BY_DESIGN,
                    {"h": np.zeros((2, 4), np.float32)}, 0)
    (out,) = envelope.decode_outcomes(host.handle_bundle(envelope.encode_bundle([plain])), 1)
    assert isinstance(out, TransportError) and "not sealed" in str(out)
    # Sealed by someone else who claims to be the lab: does not open with the lab's key.
    mallory = SealingKey("lab")
    pinned = PinnedKeys()
    pinned.pin("hospital", host.key.public_bytes)
    forged = envelope.seal(plain, mallory, pinned)
    (out,) = envelope.decode_outcomes(host.handle_bundle(envelope.encode_bundle([forged])), 1)
    assert isinstance(out, SealingError)
    # Setup messages come from the coordinator only.
    hello = Message("lab", "hospital", "deploy.save", Label.PUBLIC, {})
    (out,) = envelope.decode_outcomes(host.handle_bundle(envelope.encode_bundle([hello])), 1)
    assert isinstance(out, UnexpectedSenderError)


def test_a_missing_data_file_fails_before_anything_starts(tmp_path):
    with pytest.raises(DataFileError, match="does not exist"):
        deployed.make_party({"party": "lab", "data": str(tmp_path / "nope.csv"),
                             "id_column": "id"})


def test_pipelining_refuses_a_final_kind_that_answers_a_party():
    from vfl.core.coordinator import Coordinator
    from vfl.core.party import Party, handles
    from vfl.core.transport import InMemoryTransport

    class Chatty(Party):
        @handles("x")
        def on_x(self, msg):
            return [self.send("b", "y", Label.PUBLIC)]

    class Quiet(Party):
        @handles("y")
        def on_y(self, msg):
            return []

    t = InMemoryTransport()
    t.register(Chatty("a"))
    t.register(Quiet("b"))
    c = Coordinator(t)
    with pytest.raises(ProtocolError, match="declared final"):
        c.pipeline([[c.request("a", "x")]], final_kinds={"x"})


def test_an_erasure_reaches_every_node_and_the_replay_equals_a_retrain(actg_files, tmp_path):
    ds, files = actg_files
    config = _config("plain")
    hospital = PartyTable.from_file(files["hospital"], "id", ds.tables["hospital"].label_name)
    lab = PartyTable.from_file(files["lab"], "id", None)
    gone = sorted(set(map(str, hospital.ids)) & set(map(str, lab.ids)))[:7] + ["pt-nobody"]
    tables = {n: PartyTable.from_file(files[n], "id", ds.tables[n].label_name).without(gone)
              for n in files}
    trainer = SplitTrainer.from_tables(tables, ds.active, config)
    losses = list(trainer.fit(progress=False).loss)
    metrics = trainer.evaluate("test")["metrics"]

    grid, _ = _grid(ds, files, tmp_path)
    transport = FlowerTransport(grid, poll_interval=0.001, log=lambda s: None)
    try:
        transport.connect(list(ds.tables))
        result = deployed.run_job(transport, {"parties": list(ds.tables),
                                              "train": config.to_json(), "erase": gone},
                                  log=lambda s: None)
    finally:
        grid.close()
    assert result["erased"]["hospital"]["deleted"] == 7 and result["erased"]["lab"]["deleted"] == 7
    assert result["erased"]["hospital"]["rows_left"] == hospital.n_rows - 7
    assert result["losses"] == losses and result["metrics"]["test"] == metrics
    erase_entries = [e for e in transport.transcript if e.kind == "data.erase"]
    assert sorted(e.receiver for e in erase_entries) == sorted(ds.tables)


def test_the_clientapp_imports_no_jax_and_no_party_code():
    """Flower starts the ClientApp afresh for every message: it must stay a thin forwarder
    (no JAX import or compile, no key tables); the party lives in its host."""
    import subprocess
    import sys

    code = ("import sys, vfl.deploy.clientapp; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('jax', 'flax', 'optax', 'phe', 'gmpy2') or m.startswith('vfl.vertical')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_a_phase_computed_from_the_wave_it_joins():
    from vfl.core.coordinator import Coordinator
    from vfl.core.party import Party, handles
    from vfl.core.transport import InMemoryTransport

    class Worker(Party):
        def __init__(self, name):
            super().__init__(name)
            self.seen = []

        @handles("work")
        def on_work(self, msg):
            self.seen.append("work")
            return []

        @handles("collect")
        def on_collect(self, msg):
            self.seen.append("collect")
            return [self.send(COORDINATOR, "done", Label.PUBLIC)]

    t = InMemoryTransport()
    workers = {n: Worker(n) for n in ("a", "b", "c")}
    for w in workers.values():
        t.register(w)
    c = Coordinator(t)
    out = c.pipeline(
        [[c.request("a", "work"), c.request("c", "work")],
         lambda wave: [c.request(m.receiver, "collect") for m in wave]],
        final_kinds={"work"},
    )
    assert sorted(m.sender for m in out.back) == ["a", "c"]
    assert workers["a"].seen == ["work", "collect"] and workers["b"].seen == []
