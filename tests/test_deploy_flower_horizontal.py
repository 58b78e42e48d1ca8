"""The horizontal federation on real Flower processes: a TLS SuperLink, three SuperNodes
(each with its hospital's party host), ``flwr run``; one node is stopped while the run is
under way, and the run goes on without it, equal to the in-memory run with that client
offline from the round it was lost in. Slow: every Flower round trip costs seconds.
"""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("flwr")

from test_deploy_horizontal import _in_memory, _same_run  # noqa: E402
from test_horizontal_helpers import hospital_files, make_hospitals  # noqa: E402

from horizontal import FedConfig, deployed  # noqa: E402
from vfl.deploy.local import LocalFederation  # noqa: E402

pytestmark = pytest.mark.slow


def _stop_when_logged(fed: LocalFederation, line: str, party: str, done: threading.Event):
    """Stop ``party``'s node as soon as the ServerApp's streamed log shows ``line``."""
    log = fed.workdir / "run-1.log"
    while not done.is_set():
        if log.is_file() and line in log.read_text(errors="replace"):
            fed.stop_node(party, hard=False)
            return
        time.sleep(0.05)


def test_horizontal_on_flower_with_a_node_stopped_mid_run(tmp_path):
    files, tables = hospital_files(tmp_path / "data", make_hospitals(sizes=(90, 60, 120), d=4))
    config = FedConfig(hidden=(8,), rounds=4, batch_size=16, client_lr=0.1, compression="int8",
                       seed=7)
    gone = "hospital_1"
    job = {"parties": list(files), "train": config.to_json(),
           "columns": list(tables[gone].columns)}

    done = threading.Event()
    with LocalFederation(tmp_path / "fed", tls=True) as fed:
        fed.start_superlink()
        for name, path in files.items():
            fed.start_node(name, path, "id", label_column="y", mode="horizontal")
        # Stopped once round 1 of 4 is done: SIGTERM, so its SuperNode leaves the SuperLink
        # (a node killed outright is noticed after reply_timeout instead).
        stopper = threading.Thread(target=_stop_when_logged,
                                   args=(fed, "] round 1/4", gone, done), daemon=True)
        stopper.start()
        try:
            result = fed.run("horizontal", job, reply_timeout=30, timeout=600)
        finally:
            done.set()
            stopper.join(30)

    # The round the node was lost in depends on when the log line reached this process (it
    # is streamed); the drop-out is recorded from then on, and the in-memory run with the
    # client offline from that round is the same run, bitwise.
    first = next(s["round"] for s in result["summaries"] if gone in s["dropped"])
    assert 1 <= first < config.rounds
    assert all(gone in s["dropped"] for s in result["summaries"][first:])
    assert not any(s["dropped"] for s in result["summaries"][:first])
    trainer, history, evaluation = _in_memory(tables, config, down_after=(gone, first - 1))
    _same_run(result, trainer, history, evaluation)
    assert gone not in result["metrics"]["test"]["per_client"]
    assert set(result["saved"]) == set(files) and "unavailable" in result["saved"][gone]
    for name in set(files) - {gone}:
        assert deployed.load_state(result["saved"][name]["file"])["extra"]["ef"] is not None
