import numpy as np
import pytest

from tests.unlearning_helpers import copy_run
from vfl.core.table import PartyTable
from vfl.core.transport import InMemoryTransport


class RecordingTransport(InMemoryTransport):
    """Keeps the exact bytes of every message, for tests that inspect payloads."""

    def __init__(self):
        super().__init__()
        self.wire: list[tuple[str, str, str, bytes]] = []

    def encode(self, message):
        data = super().encode(message)
        self.wire.append((message.sender, message.receiver, message.kind, data))
        return data


def make_vertical_tables(n=240, seed=0, overlap=0.85, widths=(4, 5, 6)):
    """Three parties with partly overlapping patients and a linear-logistic label."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"pt-{seed}-{i:05d}" for i in range(n)], dtype=object)
    blocks = [rng.normal(size=(n, w)) for w in widths]
    w = [rng.normal(size=b.shape[1]) for b in blocks]
    logit = sum(b @ wi for b, wi in zip(blocks, w)) * 0.7
    y = (logit + rng.logistic(size=n) > 0).astype(int)
    names = ["hospital", "lab", "pharmacy"][: len(widths)]
    tables = {}
    for k, (name, block) in enumerate(zip(names, blocks)):
        keep = rng.random(n) < (1.0 if k == 0 else overlap)
        order = rng.permutation(np.flatnonzero(keep))
        tables[name] = PartyTable.from_numpy(
            ids[order],
            block[order],
            [f"{name[:3]}{j}" for j in range(block.shape[1])],
            labels=y[order] if k == 0 else None,
            label_name="y" if k == 0 else None,
        )
    return tables


def insecure_policy():
    from vfl.vertical.config import SecurityPolicy

    return SecurityPolicy(min_key_bits=512, allow_insecure_test_key=True)


def aligned_federation(tables, transport=None, active="hospital", policy="test"):
    """A federation over ``tables`` (optionally on a given transport), aligned by PSI.
    ``policy="test"``: every party allows short test keys (its own setting)."""
    from vfl.vertical.federation import Federation
    from vfl.vertical.parties import ActiveParty, PassiveParty

    policy = insecure_policy() if policy == "test" else policy
    parties = [ActiveParty(active, tables[active], policy=policy)]
    parties += [PassiveParty(n, t, policy=policy) for n, t in tables.items() if n != active]
    fed = Federation(parties, transport)
    fed.align()
    return fed


@pytest.fixture
def vertical_tables():
    return make_vertical_tables()


@pytest.fixture
def run(base_run, tmp_path):
    """A private copy of the module's trained ``base_run`` that a test may erase from freely
    (for the unlearning modules that define a module-scoped ``base_run``)."""
    return copy_run(base_run, tmp_path)


@pytest.fixture
def serial_default_pool(monkeypatch):
    """Keep the Paillier engine's default pool serial in unit tests (process start-up would
    dominate); the parallel paths have their own tests."""
    from vfl.crypto import WorkerPool, parallel

    monkeypatch.setattr(parallel, "_DEFAULT", WorkerPool(1))
