"""The transcript: every message header, label and size of a run.

"What exactly did the lab see?" has an exact answer: the entries whose receiver is the lab.
Payloads are not kept (they may be large and confidential); headers and byte counts are.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TranscriptEntry:
    sender: str
    receiver: str
    kind: str
    label: str
    round: int | None
    label_dependent: bool
    bytes: int
    # The payload crossed sealed end to end (vfl.core.sealing): whoever routed it (the
    # coordinator, a networked engine) saw the header and the size only.
    sealed: bool = False

    @classmethod
    def of(cls, message, size: int, *, sealed: bool = False) -> TranscriptEntry:
        """The entry of ``message`` (a :class:`~vfl.core.messages.Message`) that crossed as
        ``size`` bytes."""
        return cls(message.sender, message.receiver, message.kind, str(message.label),
                   message.round, message.label_dependent, size, sealed)


class Transcript:
    """An append-only list of :class:`TranscriptEntry`, with summaries."""

    def __init__(self) -> None:
        self.entries: list[TranscriptEntry] = []

    def record(self, entry: TranscriptEntry) -> None:
        self.entries.append(entry)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    def received_by(self, party: str) -> list[TranscriptEntry]:
        return [e for e in self.entries if e.receiver == party]

    def sent_by(self, party: str) -> list[TranscriptEntry]:
        return [e for e in self.entries if e.sender == party]

    def bytes_by_party(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = defaultdict(lambda: {"sent": 0, "received": 0})
        for e in self.entries:
            out[e.sender]["sent"] += e.bytes
            out[e.receiver]["received"] += e.bytes
        return {k: dict(v) for k, v in out.items()}

    def summary(self) -> list[dict]:
        """One row per (sender, receiver, kind, label, label_dependent): count and bytes."""
        groups: dict[tuple, list[int]] = {}
        for e in self.entries:
            key = (e.sender, e.receiver, e.kind, e.label, e.label_dependent)
            acc = groups.setdefault(key, [0, 0])
            acc[0] += 1
            acc[1] += e.bytes
        return [
            {
                "sender": s,
                "receiver": r,
                "kind": k,
                "label": lab,
                "label_dependent": dep,
                "count": c,
                "bytes": b,
            }
            for (s, r, k, lab, dep), (c, b) in groups.items()
        ]

    def what_each_party_saw(self) -> list[dict]:
        """Rows of the "what each party saw" table: per receiver, kind and label."""
        rows = [
            {
                "party": row["receiver"],
                "from": row["sender"],
                "kind": row["kind"],
                "label": row["label"],
                "label_dependent": row["label_dependent"],
                "messages": row["count"],
                "bytes": row["bytes"],
            }
            for row in self.summary()
        ]
        return sorted(rows, key=lambda r: (r["party"], r["from"], r["kind"]))

    def received_by_label(self) -> list[dict]:
        """Compact view: per receiver, label and label-dependence, the kinds and totals."""
        groups: dict[tuple, dict] = {}
        for e in self.entries:
            key = (e.receiver, e.label, e.label_dependent)
            g = groups.setdefault(key, {"kinds": {}, "messages": 0, "bytes": 0})
            g["kinds"][e.kind] = g["kinds"].get(e.kind, 0) + 1
            g["messages"] += 1
            g["bytes"] += e.bytes
        return [
            {
                "party": party,
                "label": label,
                "label_dependent": dep,
                "kinds": sorted(g["kinds"]),
                "messages": g["messages"],
                "bytes": g["bytes"],
            }
            for (party, label, dep), g in sorted(groups.items())
        ]

    def to_json(self) -> list[dict]:
        return [asdict(e) for e in self.entries]
