"""The vertical Cox fit deployed (``vfl deploy node --mode cox``, the ServerApp's ``cox``
job) over the Flower transport on an in-process grid: the same coefficients and held-out
metrics as in one process, every party-to-party payload sealed, each party's released
model on its own disk, and an erasure replayed through the deployment equal to a retrain.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("sksurv")

from deploy_fakes import FakeGrid  # noqa: E402

from vfl.core import wire  # noqa: E402
from vfl.core.messages import COORDINATOR, Message  # noqa: E402
from vfl.core.table import PartyTable  # noqa: E402
from vfl.datasets.clinical import load_whas500  # noqa: E402
from vfl.deploy.host import PartyHost  # noqa: E402
from vfl.deploy.serverapp import execute  # noqa: E402
from vfl.deploy.transport import FlowerTransport  # noqa: E402
from vfl.survival import (  # noqa: E402
    CoxConfig,
    VerticalCox,
    deployed,  # noqa: E402
)
from vfl.vertical.config import SecurityPolicy  # noqa: E402

BLOCKS = {"hospital": ("age", "hr"), "clinic": ("bmi",), "lab": ("sysbp", "diasbp")}
CONFIG = CoxConfig(protocol="paillier", key_bits=1024, insecure_test_key=True, seed=2,
                   test_fraction=0.25)


@pytest.fixture(scope="module")
def whas_files(tmp_path_factory):
    ds = load_whas500(label="survival", blocks=BLOCKS)
    d = tmp_path_factory.mktemp("whas")
    return ds, {n: t.to_csv(d / f"{n}.csv") for n, t in ds.tables.items()}


def _tables(ds, files, drop=()):
    tables = {n: PartyTable.from_file(files[n], "id", ds.tables[n].label_name)
              for n in files}
    return {n: t.without(set(drop)) for n, t in tables.items()}


def _deployed(ds, files, tmp_path, job_extra=None):
    grid = FakeGrid()
    for name in ds.tables:
        options = {"party": name, "data": str(files[name]), "id_column": "id",
                   "label_column": ds.tables[name].label_name, "min_key_bits": 1024,
                   "allow_insecure_test_key": True, "out": str(tmp_path / name)}
        party, save = deployed.make_party(options)
        grid.add(PartyHost(party, out_dir=tmp_path / name, save=save))
    captured: list[bytes] = []
    transport = FlowerTransport(grid, capture=captured.append, poll_interval=0.001,
                                log=lambda s: None)
    try:
        transport.connect(list(ds.tables))
        job = {"parties": list(ds.tables), "train": CONFIG.to_json()} | (job_extra or {})
        result = execute("cox", transport, job, log=lambda s: None)
    finally:
        grid.close()
    return result, captured, transport


def test_cox_job_over_the_flower_transport_equals_the_in_memory_fit(whas_files, tmp_path):
    ds, files = whas_files
    policy = SecurityPolicy(allow_insecure_test_key=True, min_key_bits=1024)
    local = VerticalCox(_tables(ds, files), ds.active, CONFIG, policy=policy)
    fit = local.fit(progress=False)
    metrics = local.evaluate("test")

    result, captured, transport = _deployed(ds, files, tmp_path)
    assert [c["coef"] for c in result["coefficients"]] == fit.coef().tolist()
    assert [c["se"] for c in result["coefficients"]] == [c.se for c in fit.coefficients]
    assert result["metrics"]["test"]["c_index"] == metrics["c_index"]
    assert result["rounds"] == fit.rounds
    # every party wrote its released model on its own disk
    for name in ds.tables:
        model = deployed.load_model(result["saved"][name]["file"])
        assert model["columns"] == list(ds.tables[name].columns)
        np.testing.assert_array_equal(model["coef"],
                                      [c.coef for c in fit.coefficients if c.party == name])
    assert "baseline" in deployed.load_model(result["saved"][ds.active]["file"])
    # the coordinator relayed party-to-party payloads sealed, never in the clear
    p2p = [m for data in captured for outcome in wire.loads(data) if outcome[0] == "ok"
           for m in map(Message.from_bytes, outcome[1]) if m.receiver != COORDINATOR]
    assert p2p and all(set(m.payload) == {"sealed"} for m in p2p)
    assert {m.kind for m in p2p} >= {"cox.embedding", "cox.update", "cox.unmask"}


def test_cox_erasure_through_the_deployment_equals_a_retrain(whas_files, tmp_path):
    ds, files = whas_files
    gone = sorted(map(str, ds.tables[ds.active].ids[:6]))
    result, _, _ = _deployed(ds, files, tmp_path, {"erase": gone})
    assert all(a["deleted"] >= 1 for a in result["erased"].values())
    policy = SecurityPolicy(allow_insecure_test_key=True, min_key_bits=1024)
    fresh = VerticalCox(_tables(ds, files, drop=gone), ds.active, CONFIG, policy=policy)
    fit = fresh.fit(progress=False)
    assert [c["coef"] for c in result["coefficients"]] == fit.coef().tolist()
