"""The vertical federation on real Flower processes: a TLS SuperLink, three SuperNodes (each
with its party host), ``flwr run``: ACTG 320 (PSI, the encrypted protocol, evaluation)
bitwise equal to the in-memory run; an erasure through the same deployment equal to a
retrain; and what goes wrong before anything runs (no SuperLink, a wrong CA, a missing data
file). Slow: Flower's polling makes each round trip cost seconds. CI runs them.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("flwr")

from vfl.core import wire  # noqa: E402
from vfl.core.messages import COORDINATOR, Message  # noqa: E402
from vfl.core.rounds import state_tree
from vfl.core.table import PartyTable  # noqa: E402
from vfl.core.tasks import Task  # noqa: E402
from vfl.deploy.certs import make_test_certificates  # noqa: E402
from vfl.deploy.local import LocalFederation, free_port, read_capture  # noqa: E402
from vfl.deploy.preflight import (  # noqa: E402
    CertificateError,
    SuperLinkUnreachableError,
    check_superlink,
)
from vfl.vertical import deployed  # noqa: E402
from vfl.vertical.config import SecurityPolicy, TrainConfig  # noqa: E402
from vfl.vertical.models import ModelConfig  # noqa: E402
from vfl.vertical.source_layer import plaintext_view  # noqa: E402
from vfl.vertical.trainer import SplitTrainer  # noqa: E402

pytestmark = pytest.mark.slow

TEST_KEY = ["--allow-insecure-test-key", "--min-key-bits", "1024"]


def _config(protocol):
    model = (ModelConfig("linear", "mlp", embed_dim=4, top_hidden=(16,))
             if protocol == "paillier" else ModelConfig("mlp", "linear", hidden=(8,), embed_dim=4))
    return TrainConfig(Task("binary"), model, epochs=1, batch_size=256, learning_rate=0.5,
                       optimizer="sgd", seed=5, test_fraction=0.35, protocol=protocol,
                       key_bits=1024, insecure_test_key=True)


def _in_memory(tables, active, config):
    trainer = SplitTrainer.from_tables(tables, active, config,
                                       policy=SecurityPolicy.pinned(config))
    losses = list(trainer.fit(progress=False).loss)
    metrics = trainer.evaluate("test")["metrics"]
    states = {n: state_tree(p.snapshot()) for n, p in trainer.federation.parties.items()}
    return losses, metrics, states


def _same(a, b, path="state"):
    if isinstance(a, dict):
        bb = {str(k): v for k, v in b.items()}
        assert set(map(str, a)) == set(bb), path
        for k, v in a.items():
            _same(v, bb[str(k)], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def actg(tmp_path_factory):
    from vfl import load_dataset

    ds = load_dataset("actg320")
    d = tmp_path_factory.mktemp("actg-csv")
    files = {n: t.to_csv(d / f"{n}.csv") for n, t in ds.tables.items()}
    tables = {n: PartyTable.from_file(files[n], "id", ds.tables[n].label_name) for n in files}
    return ds, files, tables


def test_actg320_on_flower_with_tls_equals_the_in_memory_run(actg, tmp_path):
    ds, files, tables = actg
    paillier = _config("paillier")
    plain = _config("plain")
    gone = sorted(set(map(str, tables["hospital"].ids)) & set(map(str, tables["lab"].ids)))[:5]
    expected = _in_memory(tables, ds.active, paillier)
    after_erasure = _in_memory({n: t.without(gone) for n, t in tables.items()}, ds.active, plain)

    with LocalFederation(tmp_path / "fed", tls=True) as fed:
        fed.start_superlink()
        for name in ds.tables:
            fed.start_node(name, files[name], "id", label_column=ds.tables[name].label_name,
                           extra=TEST_KEY)
        result = fed.run("vertical", {"parties": list(ds.tables), "train": paillier.to_json()},
                         capture=True, timeout=900)
        states = {n: deployed.load_state(result["saved"][n]["file"]) for n in ds.tables}
        # The erasure reaches the same deployed parties; the replay runs through it too.
        erased = fed.run("vertical", {"parties": list(ds.tables), "train": plain.to_json(),
                                      "erase": gone}, timeout=900)

    losses, metrics, in_memory_states = expected
    assert result["losses"] == losses
    assert result["metrics"]["test"] == metrics  # AUC, accuracy, log loss: bitwise
    _same(plaintext_view(in_memory_states), plaintext_view(states))
    # One Flower round trip per party per training round: two waves (passives, active).
    assert result["deployment"]["round_trips"] <= 3 * result["rounds"] + 20

    # The ServerApp never held a party-to-party payload in plaintext.
    p2p = [Message.from_bytes(raw) for blob in read_capture(result["capture"])
           for outcome in wire.loads(blob) if outcome[0] == "ok" for raw in outcome[1]]
    p2p = [m for m in p2p if m.receiver != COORDINATOR]
    assert p2p and all(set(m.payload) == {"sealed"} for m in p2p)

    assert erased["erased"]["hospital"]["deleted"] == 5
    assert erased["erased"]["lab"]["deleted"] == 5
    assert erased["losses"] == after_erasure[0]
    assert erased["metrics"]["test"] == after_erasure[1]


def test_preflight_names_a_missing_superlink_and_a_wrong_certificate(tmp_path):
    with pytest.raises(SuperLinkUnreachableError, match="no SuperLink answers"):
        check_superlink(f"127.0.0.1:{free_port()}", None, timeout=2)
    with LocalFederation(tmp_path / "fed", tls=True) as fed:
        fed.start_superlink()
        check_superlink(fed.address, fed.certs.ca)  # the right CA verifies
        other = make_test_certificates(tmp_path / "other")
        with pytest.raises(CertificateError, match="does not verify"):
            check_superlink(fed.address, other.ca)
        # A node given the wrong CA says so and starts nothing.
        proc = subprocess.run(
            [sys.executable, "-m", "vfl.deploy.node", "--party", "lab", "--data",
             str(_csv(tmp_path)), "--id-column", "id", "--superlink", fed.address,
             "--root-certificates", str(other.ca)],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 2 and "CertificateError" in proc.stderr


def _csv(tmp_path):
    path = tmp_path / "lab.csv"
    path.write_text("id,cd4\na,1\nb,2\n")
    return path


def test_a_node_with_a_missing_data_file_starts_nothing(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vfl.deploy.node", "--party", "lab", "--data",
         str(tmp_path / "missing.csv"), "--id-column", "id", "--insecure"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "DataFileError" in proc.stderr and "does not exist" in proc.stderr


def test_a_run_against_no_superlink_fails_with_a_clear_error(tmp_path):
    fed = LocalFederation(tmp_path / "fed", tls=False)
    from vfl.deploy.local import write_connection

    write_connection(fed.home, "local", fed.address, None)
    with pytest.raises(SuperLinkUnreachableError, match="no SuperLink answers"):
        fed.run("vertical", {"parties": ["a"], "train": {}}, timeout=120)
