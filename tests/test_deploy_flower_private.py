"""SecAgg+ with record-level DP on real Flower processes: a TLS SuperLink and three
SuperNodes whose operators require secure aggregation and cap epsilon on their own command
lines (``vfl deploy node --require-secure-aggregation --max-epsilon``). A job without
SecAgg+ is refused by the hospitals; a job with it runs, equals the in-memory run with the
same DP secrets bitwise, and the ServerApp's capture holds no hospital's update in the
clear. Slow: every Flower round trip costs seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr")

from test_horizontal_helpers import hospital_files, make_hospitals  # noqa: E402

from horizontal import FedConfig, FederatedTrainer, HospitalClient, SecAggConfig  # noqa: E402
from horizontal.dp.config import DPConfig  # noqa: E402
from vfl.core import wire  # noqa: E402
from vfl.core.messages import COORDINATOR, Label, Message  # noqa: E402
from vfl.deploy.local import LocalFederation, read_capture  # noqa: E402
from vfl.deploy.preflight import DeploymentError  # noqa: E402

pytestmark = pytest.mark.slow


def test_secagg_with_dp_on_flower_under_the_hospitals_own_policy(tmp_path):
    data = tmp_path / "data"
    files, tables = hospital_files(data, make_hospitals(sizes=(90, 60, 120), d=4))
    secrets = {}
    for name in files:  # each operator pins its own DP secret (never sent anywhere)
        secrets[name] = data / f"{name}.secret"
        secrets[name].write_text(f"operator secret of {name}\n")
    columns = list(tables["hospital_0"].columns)
    base = dict(hidden=(8,), rounds=2, batch_size=16, client_lr=0.1, seed=3)
    private = FedConfig(**base, secure_aggregation=SecAggConfig(dropout=0.1, corruption=0.1),
                        dp=DPConfig(noise_multiplier=1.1, clip_norm=1.0))
    policy = ["--require-secure-aggregation", "--min-corruption", "0.1", "--max-epsilon", "20"]

    with LocalFederation(tmp_path / "fed", tls=True) as fed:
        fed.start_superlink()
        for name, path in files.items():
            fed.start_node(name, path, "id", label_column="y", mode="horizontal",
                           extra=policy + ["--dp-secret-file", str(secrets[name])])
        # The server's operator forgot SecAgg+: every hospital refuses at setup.
        with pytest.raises(DeploymentError, match="PrivacyPolicyError") as refused:
            fed.run("horizontal", {"parties": list(files), "train": FedConfig(**base).to_json(),
                                   "columns": columns}, reply_timeout=60, timeout=600)
        assert "requires secure aggregation" in str(refused.value)
        result = fed.run("horizontal", {"parties": list(files), "train": private.to_json(),
                                        "columns": columns},
                         reply_timeout=60, timeout=900, capture=True)

    # The in-memory run with the same pinned secrets is the same run, bitwise. It runs the
    # clients one by one, as the nodes do: DP-SGD's per-example sums are reduced over the
    # batch width, which the vectorized engine pads to the widest client's (equal within
    # float tolerance, not bitwise).
    trainer = FederatedTrainer(
        tables, private, mode="loop",
        client_factory=lambda n, t, e: HospitalClient(n, t, e,
                                                      dp_secret=secrets[n].read_text().strip()))
    history = trainer.fit(progress=False)
    w = trainer.global_params()
    assert np.asarray(result["global_params"], np.float32).tobytes() == w.tobytes()
    assert [s["participants"] for s in result["summaries"]] == [h["clients"] for h in history]
    assert result["metrics"]["test"]["pooled"] == trainer.evaluate()["pooled"]

    # What the ServerApp received from the hospitals: masked inputs, encrypted shares and
    # public keys; no update in the clear.
    got = [Message.from_bytes(raw) for blob in read_capture(result["capture"])
           for outcome in wire.loads(blob) if outcome[0] == "ok" for raw in outcome[1]]
    from_hospitals = [m for m in got if m.sender in files]
    kinds = {m.kind for m in from_hospitals}
    assert {"secagg.masked", "secagg.shares", "secagg.advertise"} <= kinds
    assert "fit.update" not in kinds
    assert all(m.label == Label.MASKED for m in from_hospitals if m.kind == "secagg.masked")
    assert all(m.receiver == COORDINATOR for m in from_hospitals)
