"""A federation in one process: parties on an in-memory transport, plus a coordinator.

This is the simulation harness used by scenarios and tests. The parties and the
coordinator are the same objects a networked deployment would run; only the transport
differs.
"""

from __future__ import annotations

from collections.abc import Mapping

from vfl.core.coordinator import Coordinator
from vfl.core.errors import ConfigError
from vfl.core.table import PartyTable
from vfl.core.transport import InMemoryTransport
from vfl.psi import PSIResult, run_psi
from vfl.vertical.config import SecurityPolicy
from vfl.vertical.parties import ActiveParty, PassiveParty, TrainingParty


class AlignedParties:
    """Parties reached through one transport by a coordinator: their names (the active party
    first), the transcript, and private set intersection over all of them. Shared by the
    split-learning :class:`Federation` and the vertical Cox fit."""

    active: str
    passives: list[str]
    transport: InMemoryTransport
    coordinator: Coordinator
    alignment: PSIResult | None

    @property
    def names(self) -> list[str]:
        return [self.active, *self.passives]

    @property
    def transcript(self):
        return self.transport.transcript

    def align(self, *, progress: bool = False) -> PSIResult:
        """Private set intersection over every party; each party keeps the aligned order."""
        self.alignment = run_psi(self.coordinator, self.names, progress=progress)
        return self.alignment


class Federation(AlignedParties):
    def __init__(self, parties: list[TrainingParty], transport: InMemoryTransport | None = None):
        actives = [p for p in parties if isinstance(p, ActiveParty)]
        if len(actives) != 1:
            raise ConfigError(f"a federation needs exactly one active party, got {len(actives)}")
        self.transport = transport or InMemoryTransport()
        self.coordinator = Coordinator(self.transport)
        self.parties: dict[str, TrainingParty] = {}
        for p in parties:
            self.transport.register(p)
            self.parties[p.name] = p
        self.active = actives[0].name
        self.passives = [p.name for p in parties if p.name != self.active]
        self.alignment: PSIResult | None = None

    @classmethod
    def over(cls, transport, active: str, passives: list[str]) -> Federation:
        """A federation whose parties live elsewhere (a deployment: each on its own node),
        reached only through ``transport``. Party-local reads (snapshots, parameters) are
        not available here; each party saves its own model."""
        fed = cls.__new__(cls)
        fed.transport = transport
        fed.coordinator = Coordinator(transport)
        fed.parties = {}
        fed.active, fed.passives = active, list(passives)
        fed.alignment = None
        return fed

    @classmethod
    def from_tables(
        cls,
        tables: Mapping[str, PartyTable],
        active: str,
        *,
        policy: SecurityPolicy | None = None,
    ) -> Federation:
        """Parties built from their tables; ``policy`` is each party's own security policy
        (in a deployment every operator sets it for their own party)."""
        if active not in tables:
            raise ConfigError(f"active party {active!r} has no table; parties: {list(tables)}")
        parties: list[TrainingParty] = [ActiveParty(active, tables[active], policy=policy)]
        parties += [
            PassiveParty(n, t, policy=policy) for n, t in tables.items() if n != active
        ]
        return cls(parties)

    @classmethod
    def from_dataset(cls, dataset, *, policy: SecurityPolicy | None = None) -> Federation:
        return cls.from_tables(dataset.tables, dataset.active, policy=policy)

    def reuse_alignment(self, other: Federation) -> None:
        """Simulation shortcut: the same parties already ran PSI in ``other``; each party
        takes its own result from its counterpart (a party-local copy, nothing crosses)."""
        if set(other.names) != set(self.names):
            raise ConfigError("reuse_alignment needs a federation of the same parties")
        for name, party in self.parties.items():
            party.on_aligned(other.parties[name].aligned_ids)
        self.alignment = other.alignment

    def set_alignment(self, ids) -> None:
        """Local alignment for a single-party baseline (nothing crosses a boundary)."""
        if self.passives:
            raise ConfigError("use align() (PSI) when there is more than one party")
        self.parties[self.active].set_alignment(ids)
