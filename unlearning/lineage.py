"""Lineage graph (networkx): data contributions -> setup/rounds -> checkpoints -> models.

Node names (patient ids are the parties' pseudonymous ids, nothing else):

* ``d|PARTY|PID`` a data contribution (a party's or client's row of patient PID);
* ``s|MODEL``     the model's setup (scalers fitted on the rows present at setup);
* ``r|MODEL|R``   round R of the model; ``s|MODEL -> r|MODEL|0 -> r|MODEL|1 -> ...``
  (the state after R depends on the state after R-1);
* ``c|MODEL|R``   the stored checkpoint of round R (its manifest digest);
* ``m|NAME``      a published model (a model's final round, or an ensemble of them);
* ``e|REQUEST``   an erasure certificate.

A contribution has an edge to the setup it influenced and to every round that used it;
"what did P influence" is the set of descendants of P's contribution nodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx

from unlearning.store import atomic_write


def contrib(party: str, pid: str) -> str:
    return f"d|{party}|{pid}"


def round_node(model: str, r: int) -> str:
    return f"r|{model}|{r}"


class Lineage:
    def __init__(self, graph: nx.DiGraph | None = None):
        self.g = graph if graph is not None else nx.DiGraph()

    # -- building --------------------------------------------------------------------------
    def _contrib(self, party: str, pid: str) -> str:
        node = contrib(party, pid)
        if node not in self.g:
            self.g.add_node(node, kind="contribution", party=party, pid=str(pid))
            parties = self.g.graph.setdefault("parties", [])
            if party not in parties:
                parties.append(party)
        return node

    def add_setup(self, model: str, setup_ids: dict[str, tuple[str, ...]]) -> None:
        s = f"s|{model}"
        self.g.add_node(s, kind="setup", model=model)
        for party, ids in setup_ids.items():
            for pid in ids:
                self.g.add_edge(self._contrib(party, pid), s)

    def add_round(self, model: str, r: int, ids_used: dict[str, tuple[str, ...]]) -> None:
        node = round_node(model, r)
        self.g.add_node(node, kind="round", model=model, round=r)
        self.g.add_edge(f"s|{model}" if r == 0 else round_node(model, r - 1), node)
        for party, ids in ids_used.items():
            for pid in ids:
                self.g.add_edge(self._contrib(party, pid), node)

    def add_checkpoint(self, model: str, r: int, digest: str) -> None:
        node = f"c|{model}|{r}"
        self.g.add_node(node, kind="checkpoint", model=model, round=r, digest=digest)
        self.g.add_edge(round_node(model, r), node)

    def publish(self, name: str, sources: list[str], **attrs) -> str:
        """A published model built from rounds (``r|...``) or other published models."""
        node = f"m|{name}"
        if node in self.g:
            self.g.remove_node(node)
        self.g.add_node(node, kind="model", name=name, **attrs)
        for src in sources:
            self.g.add_edge(src, node)
        return node

    def drop_model_from(self, model: str, first_round: int) -> None:
        """Forget rounds (and their checkpoints) of ``model`` from ``first_round`` on; with
        ``first_round <= 0`` also its setup (a replay from scratch rebuilds them)."""
        doomed = [
            n
            for n, a in self.g.nodes(data=True)
            if a.get("model") == model
            and a.get("kind") in ("round", "checkpoint")
            and a["round"] >= first_round
        ]
        if first_round <= 0:
            doomed.append(f"s|{model}")
        self.g.remove_nodes_from(doomed)

    def remove_patient(self, pids, request_id: str) -> int:
        """Delete the erased patients' contribution nodes; record the erasure."""
        nodes = [n for pid in pids for n in self.contributions(pid)]
        self.g.remove_nodes_from(nodes)
        self.g.add_node(f"e|{request_id}", kind="erasure", patients=len(list(pids)))
        return len(nodes)

    # -- queries ---------------------------------------------------------------------------
    def contributions(self, pid: str) -> list[str]:
        parties = self.g.graph.get("parties", [])
        return [contrib(p, pid) for p in parties if contrib(p, pid) in self.g]

    def holders(self, pid: str) -> list[str]:
        return sorted(self.g.nodes[n]["party"] for n in self.contributions(pid))

    def influenced(self, pids) -> dict:
        """Which setups, rounds, checkpoints and published models the patients influenced."""
        seen: set[str] = set()
        for pid in pids:
            for node in self.contributions(pid):
                seen |= nx.descendants(self.g, node)
        out = {"setup": [], "rounds": {}, "checkpoints": {}, "models": []}
        for n in seen:
            a = self.g.nodes[n]
            kind = a.get("kind")
            if kind == "setup":
                out["setup"].append(a["model"])
            elif kind == "round":
                out["rounds"].setdefault(a["model"], []).append(a["round"])
            elif kind == "checkpoint":
                out["checkpoints"].setdefault(a["model"], []).append(a["round"])
            elif kind == "model":
                out["models"].append(a["name"])
        out["setup"].sort()
        out["models"].sort()
        for d in (out["rounds"], out["checkpoints"]):
            for v in d.values():
                v.sort()
        return out

    def directly_used(self, pids) -> dict[str, list[int]]:
        """Per model, the rounds whose batches contained the patients' rows."""
        out: dict[str, set[int]] = {}
        for pid in pids:
            for node in self.contributions(pid):
                for succ in self.g.successors(node):
                    a = self.g.nodes[succ]
                    if a.get("kind") == "round":
                        out.setdefault(a["model"], set()).add(a["round"])
        return {m: sorted(v) for m, v in out.items()}

    def first_influence(self, pids) -> dict[str, int]:
        """Per influenced model: -1 if the patients influenced setup, else the first round."""
        inf = self.influenced(pids)
        out = {m: min(r) for m, r in inf["rounds"].items() if r}
        for m in inf["setup"]:
            out[m] = -1
        return out

    def last_uninfluenced_checkpoint(self, pids, model: str) -> int | None:
        """The latest stored checkpoint round of ``model`` the patients did not influence,
        None when they influenced setup or round 0 ("before round 0": replay from scratch),
        or the last checkpoint if they did not influence the model at all."""
        first = self.first_influence(pids).get(model)
        rounds = sorted(
            a["round"]
            for _, a in self.g.nodes(data=True)
            if a.get("kind") == "checkpoint" and a["model"] == model
        )
        if first is None:
            return rounds[-1] if rounds else None
        before = [r for r in rounds if r < first]
        return before[-1] if before else None

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path, *, fsync: bool = True) -> None:
        data = nx.node_link_data(self.g, edges="edges")
        atomic_write(Path(path), json.dumps(data, separators=(",", ":")), fsync=fsync)

    @classmethod
    def load(cls, path: str | Path) -> Lineage:
        path = Path(path)
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        return cls(nx.node_link_graph(data, directed=True, edges="edges"))
