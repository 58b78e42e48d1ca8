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
ascending; :meth:`Lineage.directly_used`). Each contribution owns its ``uses``: no dict or
list of it is shared with another node or another graph (:class:`LineageGraph`).

Cost. An edge per use would grow with parties x patients x epochs (hundreds of thousands
of edges for a small run at 64 epochs), and every erasure saves the graph. With first-use
edges the graph has about one edge per contribution and model, and the uses are plain
integer lists, appended to in one tight loop per round. The graph is saved in a compact
indexed JSON form (``vfl-lineage/2``: node list, successor indices and each distinct
``uses`` list once); a file of any other format (the older ``node_link`` files with an
edge per use) is refused with :class:`~unlearning.errors.RunDirError`: retrain the run.
Bulk builds run with the cyclic garbage collector paused: they allocate many acyclic
containers, which otherwise trigger full collections of the whole (JAX-sized) heap.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import json
from pathlib import Path

import networkx as nx

from unlearning.errors import RunDirError
from vfl.core.fileio import atomic_write

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


class LineageGraph(nx.DiGraph):
    """The lineage's graph: a ``DiGraph`` whose contributions own their ``uses``.

    Invariant: every ``uses`` dict, and every round list in it, belongs to one node of one
    graph; no other node, and no copy of the graph, holds the same object. :class:`Lineage`
    appends to these lists in place (a party's round is recorded on its own contribution
    only), so ``DiGraph.copy``, which copies node attributes one level deep, would leave a
    copy and its original appending to the same lists. :meth:`copy` and :meth:`of` copy
    them too, and build the copy from the adjacency dicts directly, without
    ``add_edges_from``'s per-edge bookkeeping (nodes, edges, node, edge and graph
    attributes otherwise copied one level deep, like ``DiGraph.copy``)."""

    @classmethod
    def of(cls, graph: nx.DiGraph) -> LineageGraph:
        """A :class:`LineageGraph` with ``graph``'s nodes, edges and attributes (copied)."""
        h = cls()
        with gc_paused():
            h.graph.update(
                {k: (list(v) if isinstance(v, list) else v) for k, v in graph.graph.items()}
            )
            h._node.update({n: _copy_attrs(d) for n, d in graph._node.items()})
            succ, pred = h._succ, h._pred
            for v in graph._pred:
                pred[v] = {}
            for u, nbrs in graph._succ.items():
                out = succ[u] = {}
                for v, dd in nbrs.items():
                    out[v] = pred[v][u] = dd.copy() if dd else {}
        return h

    def copy(self, as_view: bool = False):
        if as_view:
            return super().copy(as_view=True)
        return self.of(self)


def _copy_attrs(d: dict) -> dict:
    out = d.copy()
    uses = out.get("uses")
    if uses is not None:
        out["uses"] = {m: list(r) for m, r in uses.items()}
    return out


def _same_rows(ids_used: dict[str, tuple]) -> list[tuple[tuple, list[str]]]:
    """Group the parties that used the same ids in a round (every party of a vertical
    federation), in order of first appearance: ``[(ids, [party, ...]), ...]``."""
    groups: list[tuple[tuple, list[str]]] = []
    for party, ids in ids_used.items():
        for seen, members in groups:
            if seen == ids:
                members.append(party)
                break
        else:
            groups.append((ids, [party]))
    return groups


def contrib(party: str, pid: str) -> str:
    return f"d|{party}|{pid}"


def round_node(model: str, r: int) -> str:
    return f"r|{model}|{r}"


class Lineage:
    """The lineage graph ``g`` (a :class:`LineageGraph`) and its queries. :meth:`add_round`
    adds the round node at once and records the round's rows in bulk later (before anything
    reads ``g``: the per-row work then runs in one tight loop instead of between training
    rounds). A ``graph`` given that is not a :class:`LineageGraph` is copied into one."""

    def __init__(self, graph: nx.DiGraph | None = None):
        # rounds whose rows are not recorded yet: (model, round, its node, {party: ids})
        self._rows: list[tuple[str, int, str, dict[str, tuple]]] = []
        self._g = _lineage_graph(graph)

    @property
    def g(self) -> LineageGraph:
        if self._rows:
            self._record_rows()
        return self._g

    @g.setter
    def g(self, graph: nx.DiGraph) -> None:
        if self._rows:
            self._record_rows()
        self._g = _lineage_graph(graph)

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
        (recorded before ``g`` is next read, from a snapshot of ``ids_used`` taken now)."""
        node = round_node(model, r)
        g = self._g
        g.add_node(node, kind="round", model=model, round=r)
        g.add_edge(f"s|{model}" if r == 0 else round_node(model, r - 1), node)
        if ids_used:
            self._rows.append((model, r, node, {p: tuple(ids) for p, ids in ids_used.items()}))

    def _record_rows(self) -> None:
        rows, self._rows = self._rows, []
        with gc_paused():
            for model, r, node, ids_used in rows:
                for ids, parties in _same_rows(ids_used):
                    self._record_use(model, r, node, ids, parties)
        self._touched()

    def _record_use(self, model: str, r: int, node: str, ids, parties: list[str]) -> None:
        """Round ``r`` of ``model`` (node ``node``) used rows ``ids`` at every party in
        ``parties``: ``r`` joins each contribution's own ``uses[model]``, with an edge to
        ``node`` when it is the contribution's first round of ``model``. Row by row, then
        party by party: contributions first seen here are added in that order."""
        nodes = self._g._node
        for pid in ids:
            for party in parties:
                c = f"d|{party}|{pid}"
                try:
                    rounds = nodes[c]["uses"][model]
                except KeyError:
                    rounds = None
                if rounds and r > rounds[-1]:  # every use but the first, in a fit
                    rounds.append(r)
                else:
                    self._other_use(model, r, node, party, pid, rounds)

    def _other_use(self, model: str, r: int, node: str, party: str, pid, rounds) -> None:
        """A first use (``rounds`` None or empty: a new list and the first-use edge), a
        repeated one (nothing to do) or one out of order (a fit never does this)."""
        g = self._g
        c = f"d|{party}|{pid}"
        if not rounds:
            a = g._node.get(c)
            if a is None:
                self._contrib(party, pid)
                a = g._node[c]
            a.setdefault("uses", {})[model] = [r]
            self._link(c, node)
        elif r not in rounds:
            bisect.insort(rounds, r)
            if rounds[0] == r:
                first = round_node(model, rounds[1])
                if first in g._succ[c]:
                    g.remove_edge(c, first)
                self._link(c, node)

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
        """Which setups, rounds, checkpoints and published models the patients influenced:
        the descendants of their contributions (one traversal from all of them)."""
        g = self.g
        succ, nodes = g._succ, g._node
        seen: set[str] = set()
        todo = [c for pid in pids for c in self.contributions(pid)]
        while todo:
            for v in succ[todo.pop()]:
                if v not in seen:
                    seen.add(v)
                    todo.append(v)
        out = {"setup": [], "rounds": {}, "checkpoints": {}, "models": []}
        for n in seen:
            a = nodes[n]
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
        index of its round list in ``uses``, which holds each distinct list once (in a
        vertical federation every party's row of a patient is used in the same rounds);
        ``edge_attrs`` holds ``[i, j, attrs]`` for the (rare) edges that carry attributes.
        The result refers to the graph's own attribute values: serialise it before the
        lineage changes."""
        g = self.g
        index = {n: i for i, n in enumerate(g._node)}
        succ, edge_attrs, nodes = [], [], []
        table: list[list[int]] = []
        known: dict[tuple[int, ...], int] = {}
        # per patient and model, the last list stored and its index: a patient's other
        # parties mostly have an equal list, found by comparing instead of hashing a tuple
        last: dict[tuple[str, str], tuple[list[int], int]] = {}
        for n, a in g._node.items():
            nbrs = g._succ[n]
            succ.append([index[v] for v in nbrs])
            for v, d in nbrs.items():
                if d:
                    edge_attrs.append([index[n], index[v], d])
            uses = a.get("uses")
            if uses is not None:
                refs = {}
                pid = a.get("pid")
                for model, rounds in uses.items():
                    key = pid, model
                    seen = last.get(key)
                    if seen is not None and seen[0] == rounds:
                        refs[model] = seen[1]
                        continue
                    k = refs[model] = known.setdefault(tuple(rounds), len(table))
                    if k == len(table):
                        table.append(rounds)
                    last[key] = rounds, k
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
    def from_json(cls, data: dict, *, source: str = "the lineage data") -> Lineage:
        """The lineage :meth:`to_json` wrote; anything else (an older ``node_link`` graph
        with an edge per use included) is refused with :class:`RunDirError`."""
        fmt = data.get("format") if isinstance(data, dict) else None
        if fmt != LINEAGE_FORMAT:
            raise RunDirError(
                f"{source} is not a {LINEAGE_FORMAT!r} lineage graph (format {fmt!r}; a file "
                "without one is an older node_link graph with an edge per use, which is no "
                "longer read). Retrain the run into a new run directory (python -m "
                "scenarios.erasure_request --out DIR, or unlearning.run.train_run)"
            )
        g = LineageGraph()
        with gc_paused():
            g.graph.update(data.get("graph") or {})
            table = data.get("uses") or []
            names = []
            for n, a in data["nodes"]:
                refs = a.get("uses")
                if refs is not None:  # each contribution gets its own lists
                    a["uses"] = {m: list(table[k]) for m, k in refs.items()}
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
        return cls.from_json(data, source=str(path))


def _lineage_graph(graph: nx.DiGraph | None) -> LineageGraph:
    if graph is None:
        return LineageGraph()
    return graph if isinstance(graph, LineageGraph) else LineageGraph.of(graph)
