"""Lineage graph (networkx): data contributions -> setup/rounds -> checkpoints -> models.

Node names (patient ids are the parties' pseudonymous ids, nothing else):

* ``d|PARTY|PID`` a data contribution (a party's or client's row of patient PID);
* ``s|MODEL``     the model's setup (scalers fitted on the rows present at setup);
* ``r|MODEL|R``   round R of the model; ``s|MODEL -> r|MODEL|0 -> r|MODEL|1 -> ...``
  (the state after R depends on the state after R-1);
* ``c|MODEL|R``   the stored checkpoint of round R (its manifest digest);
* ``m|NAME``      a published model (a model's final round, or an ensemble of them);
* ``e|REQUEST``   an erasure certificate.

A contribution has an edge to the setup it influenced and to the first round of each model
that used it; "what did P influence" is the set of descendants of P's contribution nodes
(every later round of that model descends from the first through the round chain, so an
edge to each of them would add nothing to the query). Every round that used the
contribution, the first included, is kept on the node as ``uses`` (``{model: [round, ...]}``
ascending; :meth:`Lineage.directly_used`). The parties of one patient that were used in
the same rounds (every party of a vertical federation) share one list per model, so a round
is recorded once per patient rather than once per party.

Cost. An edge per use would grow with parties x patients x epochs (hundreds of thousands
of edges for a small run at 64 epochs), and every erasure copies the graph (the staged
lineage), saves it. With first-use edges the graph has
about one edge per contribution and model, and the uses are plain integer lists. The graph
is a :class:`LineageGraph` (a ``networkx.DiGraph`` whose ``copy`` copies the adjacency dicts
directly, and the ``uses`` lists, instead of re-adding every edge), saved in a compact
indexed JSON form (``vfl-lineage/2``: node list, successor indices and each distinct
``uses`` list once; older ``node_link`` files with an edge per use still load and are
converted), and these bulk builds run with the cyclic garbage collector paused: they
allocate many acyclic containers, which otherwise trigger full collections of the whole
(JAX-sized) heap.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import json
from pathlib import Path

import networkx as nx

from unlearning.store import atomic_write

LINEAGE_FORMAT = "vfl-lineage/2"


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic garbage collector around a bulk build of acyclic containers."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _copy_attrs(d: dict) -> dict:
    out = d.copy()
    uses = out.get("uses")
    if uses is not None:  # owned by the graph and appended to: never shared between copies
        out["uses"] = {m: list(r) for m, r in uses.items()}
    return out


class LineageGraph(nx.DiGraph):
    """A ``DiGraph`` with a structural :meth:`copy`: the same graph (nodes, edges, node,
    edge and graph attributes copied one level deep, like ``DiGraph.copy``, plus each
    contribution's ``uses`` lists) built by copying the adjacency dicts, without
    ``add_edges_from``'s per-edge bookkeeping."""

    def copy(self, as_view: bool = False):
        if as_view:
            return super().copy(as_view=True)
        h = self.__class__()
        with gc_paused():
            h.graph.update(
                {k: (list(v) if isinstance(v, list) else v) for k, v in self.graph.items()}
            )
            h._node.update({n: _copy_attrs(d) for n, d in self._node.items()})
            succ, pred = h._succ, h._pred
            for v in self._pred:
                pred[v] = {}
            for u, nbrs in self._succ.items():
                out = succ[u] = {}
                for v, dd in nbrs.items():
                    out[v] = pred[v][u] = dd.copy() if dd else {}
        return h


def _same_rows(ids_used: dict) -> list[tuple[object, list[str]]]:
    """Group parties whose ids in a round are the same (every party of a vertical
    federation): ``[(ids, [party, ...]), ...]``."""
    groups: list[tuple[object, list[str]]] = []
    for party, ids in ids_used.items():
        for seen, members in groups:
            if seen is ids or (len(seen) == len(ids) and all(
                    a == b for a, b in zip(seen, ids, strict=True))):
                members.append(party)
                break
        else:
            groups.append((ids, [party]))
    return groups


def _as_lineage_graph(graph: nx.DiGraph | None) -> nx.DiGraph:
    if graph is None:
        return LineageGraph()
    if type(graph) is nx.DiGraph:
        graph.__class__ = LineageGraph  # same data; its copies then own their ``uses``
    return graph


def contrib(party: str, pid: str) -> str:
    return f"d|{party}|{pid}"


def round_node(model: str, r: int) -> str:
    return f"r|{model}|{r}"


class Lineage:
    """The lineage graph ``g`` and its queries. :meth:`add_round` adds the round node at
    once and records the round's rows in bulk later (before anything reads ``g``: the
    per-row work then runs in one tight loop instead of between training rounds)."""

    def __init__(self, graph: nx.DiGraph | None = None):
        self._rows: list[tuple[str, int, str, dict]] = []  # rounds whose rows are pending
        self._g = _as_lineage_graph(graph)

    @property
    def g(self) -> nx.DiGraph:
        if self._rows:
            self._record_rows()
        return self._g

    @g.setter
    def g(self, graph: nx.DiGraph) -> None:
        if self._rows:
            self._record_rows()
        self._g = _as_lineage_graph(graph)

    # -- building --------------------------------------------------------------------------
    def _contrib(self, party: str, pid: str) -> str:
        node = contrib(party, pid)
        g = self._g
        if node not in g:
            g.add_node(node, kind="contribution", party=party, pid=str(pid))
            parties = g.graph.setdefault("parties", [])
            if party not in parties:
                parties.append(party)
        return node

    def _link(self, c: str, node: str) -> None:
        """Edge ``c -> node`` between existing nodes, without attributes: what ``add_edge``
        does, minus its per-edge checks (this runs for every id of every round)."""
        g = self._g
        out = g._succ[c]
        if node not in out:
            out[node] = g._pred[node][c] = {}

    def _touched(self) -> None:
        cache = getattr(self._g, "__networkx_cache__", None)
        if cache:
            cache.clear()

    def add_setup(self, model: str, setup_ids: dict[str, tuple[str, ...]]) -> None:
        s = f"s|{model}"
        self.g.add_node(s, kind="setup", model=model)
        nodes = self.g._node
        with gc_paused():
            for party, ids in setup_ids.items():
                for pid in ids:
                    c = f"d|{party}|{pid}"
                    if c not in nodes:
                        self._contrib(party, pid)
                    self._link(c, s)
        self._touched()

    def add_round(self, model: str, r: int, ids_used: dict[str, tuple[str, ...]]) -> None:
        """Round ``r`` of ``model`` used these rows: a ``uses`` entry on each contribution,
        and an edge from it to this round when it is the first round of ``model`` it used
        (recorded before ``g`` is next read)."""
        node = round_node(model, r)
        g = self._g
        g.add_node(node, kind="round", model=model, round=r)
        g.add_edge(f"s|{model}" if r == 0 else round_node(model, r - 1), node)
        if ids_used:
            self._rows.append((model, r, node, ids_used))

    def _record_rows(self) -> None:
        rows, self._rows = self._rows, []
        with gc_paused():
            for model, r, node, ids_used in rows:
                for ids, parties in _same_rows(ids_used):
                    self._record_use(model, r, node, ids, parties)
        self._touched()

    def _record_use(self, model: str, r: int, node: str, ids, parties: list[str]) -> None:
        """Round ``r`` used row ``pid`` at every party in ``parties`` (parties that used the
        same ids in this round: all of them in a vertical federation). The first party's
        contribution is updated; the others' share its ``uses`` list for ``model`` (they were
        used in exactly the same rounds), so for them only the first-use edge is added."""
        g = self._g
        nodes = g._node
        lead, rest = parties[0], parties[1:]
        others = [p for p in g.graph.get("parties", ()) if p not in parties]
        for pid in ids:
            if others:  # a party outside this group must not see these uses: unshare
                self._unshare(pid, model, others)
            rounds, first = self._use(lead, pid, model, r, node)
            for party in rest:
                a = nodes.get(f"d|{party}|{pid}")
                uses = None if a is None else a.get("uses")
                mine = None if uses is None else uses.get(model)
                if mine is rounds and rounds is not None:
                    if first:
                        self._link(f"d|{party}|{pid}", node)
                elif first and not mine and rounds is not None:
                    if a is None:
                        self._contrib(party, pid)
                        a = nodes[f"d|{party}|{pid}"]
                    if uses is None:
                        uses = a["uses"] = {}
                    uses[model] = rounds  # shared from now on (see drop_model_from)
                    self._link(f"d|{party}|{pid}", node)
                else:
                    self._use(party, pid, model, r, node)

    def _unshare(self, pid, model: str, parties: list[str]) -> None:
        nodes = self._g._node
        for party in parties:
            a = nodes.get(f"d|{party}|{pid}")
            uses = None if a is None else a.get("uses")
            if uses and model in uses:
                uses[model] = list(uses[model])

    def _use(self, party: str, pid, model: str, r: int, node: str) -> tuple[list | None, bool]:
        """Record one use; returns the contribution's round list (None after an out-of-order
        insertion, which is never shared) and whether ``r`` is its first use of ``model``."""
        g = self._g
        c = f"d|{party}|{pid}"
        a = g._node.get(c)
        if a is None:
            self._contrib(party, pid)
            a = g._node[c]
        uses = a.get("uses")
        if uses is None:
            uses = a["uses"] = {}
        rounds = uses.get(model)
        if not rounds:
            rounds = uses[model] = [r]
            self._link(c, node)
            return rounds, True
        if r > rounds[-1]:
            rounds.append(r)
            return rounds, False
        if r not in rounds:  # out of order (a fit never does this)
            bisect.insort(rounds, r)
            if rounds[0] == r:
                first = round_node(model, rounds[1])
                if first in g._succ[c]:
                    g.remove_edge(c, first)
                self._link(c, node)
        return None, False

    def add_checkpoint(self, model: str, r: int, digest: str) -> None:
        node = f"c|{model}|{r}"
        g = self._g  # rows of pending rounds need not be recorded for this
        g.add_node(node, kind="checkpoint", model=model, round=r, digest=digest)
        g.add_edge(round_node(model, r), node)

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
        # the contributions' uses of the dropped rounds go too (their first-use edges went
        # with the round nodes when the first use was dropped)
        for a in self.g._node.values():
            uses = a.get("uses")
            rounds = uses.get(model) if uses else None
            if rounds and rounds[-1] >= first_round:
                keep = bisect.bisect_left(rounds, first_round)
                if keep:
                    del rounds[keep:]
                else:
                    del uses[model]

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
                for model, rounds in (self.g.nodes[node].get("uses") or {}).items():
                    if rounds:
                        out.setdefault(model, set()).update(rounds)
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
    def to_json(self) -> dict:
        """``{"format", "graph", "nodes": [[name, attrs], ...], "succ": [[j, ...], ...],
        "uses": [[round, ...], ...], "edge_attrs": [...]}``: ``succ[i]`` lists the indices of
        node ``i``'s successors; a contribution's ``uses`` are stored as ``{model: k}``, the
        index of its round list in ``uses`` (lists are shared: in a vertical federation
        every party's row of a patient is used in the same rounds); ``edge_attrs`` holds
        ``[i, j, attrs]`` for the (rare) edges that carry attributes."""
        g = self.g
        index = {n: i for i, n in enumerate(g._node)}
        succ, edge_attrs, nodes = [], [], []
        table: list[list[int]] = []
        known: dict[tuple[int, ...], int] = {}
        by_object: dict[int, int] = {}  # id() of lists alive for the whole call
        for n, a in g._node.items():
            nbrs = g._succ[n]
            succ.append([index[v] for v in nbrs])
            edge_attrs += [[index[n], index[v], d] for v, d in nbrs.items() if d]
            uses = a.get("uses")
            if uses is not None:
                refs = {}
                for model, rounds in uses.items():
                    k = by_object.get(id(rounds))  # a list shared by a patient's parties
                    if k is None:
                        k = by_object[id(rounds)] = known.setdefault(tuple(rounds), len(table))
                        if k == len(table):
                            table.append(rounds)
                    refs[model] = k
                a = {**a, "uses": refs}
            nodes.append([n, a])
        return {
            "format": LINEAGE_FORMAT,
            "graph": g.graph,
            "nodes": nodes,
            "succ": succ,
            "uses": table,
            "edge_attrs": edge_attrs,
        }

    @classmethod
    def from_json(cls, data: dict) -> Lineage:
        if data.get("format") != LINEAGE_FORMAT:  # an older node_link file
            g = nx.node_link_graph(data, directed=True, edges="edges")
            h = LineageGraph()
            h.graph.update(g.graph)
            h.add_nodes_from(g.nodes(data=True))
            h.add_edges_from(g.edges(data=True))
            return cls(_first_use_edges(h))
        g = LineageGraph()
        with gc_paused():
            g.graph.update(data.get("graph") or {})
            table = data.get("uses") or []
            names = []
            shared: dict[tuple, list] = {}
            for n, a in data["nodes"]:
                refs = a.get("uses")
                if refs is not None:  # one list per patient and model, shared by its parties
                    pid = a.get("pid")
                    a["uses"] = {m: shared.setdefault((pid, m, k), list(table[k]))
                                 for m, k in refs.items()}
                g._node[n] = a
                names.append(n)
            succ, pred = g._succ, g._pred
            for n in names:
                pred[n] = {}
            for u, targets in zip(names, data["succ"]):
                nbrs = {}
                for j in targets:
                    v = names[j]
                    nbrs[v] = pred[v][u] = {}
                succ[u] = nbrs
            for i, j, attrs in data.get("edge_attrs", ()):
                succ[names[i]][names[j]].update(attrs)
        return cls(g)

    def save(self, path: str | Path, *, fsync: bool = True) -> None:
        with gc_paused():
            text = json.dumps(self.to_json(), separators=(",", ":"), check_circular=False)
        atomic_write(Path(path), text, fsync=fsync)

    @classmethod
    def load(cls, path: str | Path) -> Lineage:
        path = Path(path)
        if not path.exists():
            return cls()
        with gc_paused():
            data = json.loads(path.read_text())
        return cls.from_json(data)


def _first_use_edges(g: LineageGraph) -> LineageGraph:
    """Convert a graph with an edge per use (older files) to first-use edges plus ``uses``."""
    for c, a in g._node.items():
        if a.get("kind") != "contribution":
            continue
        used: dict[str, list[tuple[int, str]]] = {}
        for v in g._succ[c]:
            b = g._node[v]
            if b.get("kind") == "round":
                used.setdefault(b["model"], []).append((b["round"], v))
        if not used:
            continue
        uses = a.setdefault("uses", {})
        for model, rounds in used.items():
            rounds.sort()
            uses[model] = sorted(set(uses.get(model, ())) | {r for r, _ in rounds})
            for _, v in rounds[1:]:
                g.remove_edge(c, v)
    return g
