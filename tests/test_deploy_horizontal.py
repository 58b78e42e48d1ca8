"""The horizontal job over the Flower transport without Flower's processes (FakeGrid: real
party hosts on their sockets), equal to the in-memory run bitwise: FedAvg with client
sampling and int8 update compression; a node that stops mid-run, recorded as a drop-out
exactly as an offline client in memory; a missing data file. The real SuperLink/SuperNode
run is in test_deploy_flower_horizontal.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("flwr")

from deploy_fakes import FakeGrid  # noqa: E402
from test_horizontal_helpers import hospital_files, make_hospitals  # noqa: E402

from horizontal import FedConfig, FederatedTrainer, SystemsConfig, deployed  # noqa: E402
from vfl.core.errors import DataFileError  # noqa: E402
from vfl.core.transport import InMemoryTransport  # noqa: E402
from vfl.deploy.host import PartyHost  # noqa: E402
from vfl.deploy.serverapp import execute  # noqa: E402
from vfl.deploy.transport import FlowerTransport  # noqa: E402


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory):
    # Both runs read the same files (the CSV round trip is exact, but that is not the point).
    return hospital_files(tmp_path_factory.mktemp("hospitals"),
                          make_hospitals(sizes=(90, 60, 120, 50), d=4))


def _config(**kw):
    base = dict(hidden=(8,), rounds=4, batch_size=16, client_lr=0.1, clients_per_round=3,
                compression="int8", seed=7)
    return FedConfig(**(base | kw))


class _Down(InMemoryTransport):
    """In memory: the clients in ``down`` are offline whatever the simulated world says."""

    def __init__(self):
        super().__init__()
        self.down: set[str] = set()

    def set_offline(self, name, offline=True):
        super().set_offline(name, offline or name in self.down)


def _in_memory(tables, config, *, down_after=None):
    transport = _Down()
    trainer = FederatedTrainer(tables, config, transport=transport)

    def round_end(record):
        if down_after is not None and record.round == down_after[1]:
            transport.down.add(down_after[0])
            transport.set_offline(down_after[0])

    history = trainer.fit(progress=False, on_round_end=round_end)
    return trainer, history, trainer.evaluate()


def _deployed(files, columns, config, tmp_path, *, stop_after=None, reply_timeout=120.0,
              erase=None):
    grid = FakeGrid()
    nodes = {}
    for name, path in files.items():
        options = {"party": name, "data": str(path), "id_column": "id", "label_column": "y",
                   "out": str(tmp_path / name)}
        client, save = deployed.make_client(options)
        nodes[name] = grid.add(PartyHost(client, out_dir=tmp_path / name, save=save))
    logged: list[str] = []

    def log(text):
        logged.append(text)
        if stop_after is not None and text.startswith(f"round {stop_after[1] + 1}/"):
            grid.stop(nodes[stop_after[0]])

    transport = FlowerTransport(grid, reply_timeout=reply_timeout, poll_interval=0.001,
                                log=lambda s: None)
    try:
        transport.connect(list(files))
        job = {"parties": list(files), "train": config.to_json(), "columns": list(columns)}
        if erase:
            job["erase"] = erase
        result = execute(deployed.run_job, transport, job, log=log)
    finally:
        grid.close()
    # What the ServerApp writes: the result survives JSON as it is.
    return json.loads(json.dumps(result)), logged


def _same_run(result, trainer, history, evaluation):
    w = trainer.global_params()
    got = np.asarray(result["global_params"], np.float32)
    assert got.tobytes() == w.tobytes()
    assert result["global_sha256"] == deployed.hashlib.sha256(w.tobytes()).hexdigest()
    assert result["losses"] == list(history.loss)
    for s, h in zip(result["summaries"], history):
        assert s["participants"] == h["clients"] and s["dropped"] == h["dropped"]
        assert s["bytes_up"] == h["bytes_up"]
    assert result["metrics"]["test"]["pooled"] == evaluation["pooled"]
    assert result["metrics"]["test"]["per_client"] == evaluation["per_client"]


def test_fedavg_with_sampling_and_compression_equals_the_in_memory_run(hospitals, tmp_path):
    files, tables = hospitals
    # The simulated world too: seeded drop-outs and stragglers, as in memory.
    config = _config(systems=SystemsConfig(dropout_rate=0.2, straggler_rate=0.3))
    trainer, history, evaluation = _in_memory(tables, config)
    result, logged = _deployed(files, tables["hospital_0"].columns, config, tmp_path)

    _same_run(result, trainer, history, evaluation)
    # One network round trip per hospital per round: fit and fit.collect in one bundle.
    first, last = result["train_waves"]
    assert last - first + 1 == config.rounds
    assert len({tuple(s["participants"]) for s in result["summaries"]}) > 1  # sampled
    assert any(s["dropped"] for s in result["summaries"])  # a simulated drop-out
    assert [line for line in logged if line.startswith("round ")][-1].startswith("round 4/4")
    # Each client kept its own state (the error-feedback residual of int8 compression).
    for name in files:
        state = deployed.load_state(result["saved"][name]["file"])
        residual = np.asarray(state["extra"]["ef"])
        assert residual.tobytes() == trainer.clients[name].ef.residual.tobytes()


def test_a_node_stopped_mid_run_is_a_recorded_dropout(hospitals, tmp_path):
    files, tables = hospitals
    config = _config(clients_per_round=None, rounds=4)
    gone, after = "hospital_2", 1  # stops once round 1 (0-based) is done
    trainer, history, evaluation = _in_memory(tables, config, down_after=(gone, after))
    result, _ = _deployed(files, tables["hospital_0"].columns, config, tmp_path,
                          stop_after=(gone, after), reply_timeout=0.5)

    _same_run(result, trainer, history, evaluation)
    dropped = [s["dropped"] for s in result["summaries"]]
    assert dropped == [[], [], [gone], [gone]]
    assert all(gone not in s["participants"] for s in result["summaries"][after + 1:])
    assert gone not in result["metrics"]["test"]["per_client"]
    assert "unavailable" in result["saved"][gone]


def test_an_erasure_reaches_every_hospital_and_the_replay_equals_a_retrain(hospitals,
                                                                             tmp_path):
    files, tables = hospitals
    config = _config()
    gone = [str(tables["hospital_0"].ids[3]), str(tables["hospital_2"].ids[0]),
            str(tables["hospital_2"].ids[7]), "nobody"]
    trainer, history, evaluation = _in_memory(
        {n: t.without(gone) for n, t in tables.items()}, config)
    result, _ = _deployed(files, tables["hospital_0"].columns, config, tmp_path, erase=gone)
    assert {n: a["deleted"] for n, a in result["erased"].items()} == {
        "hospital_0": 1, "hospital_1": 0, "hospital_2": 2, "hospital_3": 0}
    _same_run(result, trainer, history, evaluation)


def test_a_missing_data_file_fails_before_anything_starts(tmp_path):
    with pytest.raises(DataFileError, match="does not exist"):
        deployed.make_client({"party": "hospital_0", "data": str(tmp_path / "nope.csv"),
                              "id_column": "id", "label_column": "y"})
