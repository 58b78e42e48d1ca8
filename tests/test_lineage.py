"""Lineage graph: each contribution owns its ``uses`` (the LineageGraph invariant), the
saved form, uses and first-use edges against a plain model, and refusal of old formats."""

import json

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unlearning.errors import RunDirError
from unlearning.lineage import LINEAGE_FORMAT, Lineage, LineageGraph
from unlearning.store import INDEX_FORMAT, CheckpointStore

PARTIES = ("hospital", "lab", "pharmacy")


def vertical(rounds: int = 6) -> Lineage:
    """Every party uses the same rows each round (equal, distinct tuples), except that the
    pharmacy skips patient c in round 2."""
    lin = Lineage()
    lin.add_setup("m", {p: ("a", "b", "c", "d") for p in PARTIES})
    for r in range(rounds):
        ids = ("a", "b", "c") if r % 2 == 0 else ("b", "d")
        used = {p: tuple(ids) for p in PARTIES}
        if r == 2:
            used["pharmacy"] = ("a", "b")
        lin.add_round("m", r, used)
        lin.add_checkpoint("m", r, f"digest{r}")
    lin.publish("m", [f"r|m|{rounds - 1}"], version=1)
    return lin


def owned(g: nx.DiGraph) -> list[int]:
    """id() of every ``uses`` dict and round list of ``g``'s contributions."""
    return [id(x) for a in g._node.values() if "uses" in a
            for x in (a["uses"], *a["uses"].values())]


def assert_owned(*graphs: nx.DiGraph) -> None:
    ids = [i for g in graphs for i in owned(g)]
    assert ids and len(ids) == len(set(ids)), "a uses dict or list is shared"


def roundtrip(lin: Lineage) -> Lineage:
    return Lineage.from_json(json.loads(json.dumps(lin.to_json())))


# -- the LineageGraph invariant ------------------------------------------------------------
def test_each_contribution_owns_its_uses_after_build_load_and_copy():
    lin = vertical()
    assert type(lin.g) is LineageGraph
    assert_owned(lin.g)
    loaded = roundtrip(lin)
    assert type(loaded.g) is LineageGraph
    assert_owned(loaded.g)
    copy = lin.g.copy()
    assert type(copy) is LineageGraph
    assert_owned(lin.g, copy)  # nothing shared between a graph and its copy either
    assert nx.utils.graphs_equal(copy, lin.g)


def test_a_copy_records_without_touching_its_original():
    lin = vertical()
    before = json.dumps(lin.to_json())
    other = Lineage(lin.g.copy())
    other.add_round("m", 6, {p: ("a",) for p in PARTIES})
    other.drop_model_from("m", 3)
    other.add_round("m", 3, {p: ("d",) for p in PARTIES})
    assert other.directly_used(["a"])["m"] == [0, 2]
    assert json.dumps(lin.to_json()) == before


def test_a_plain_digraph_is_copied_not_converted():
    """A graph of another type is copied into a LineageGraph: the caller's graph keeps its
    class and its lists."""
    plain = nx.DiGraph(vertical().g)  # a DiGraph whose node attribute dicts are the same
    rounds = plain.nodes["d|lab|a"]["uses"]["m"]
    lin = Lineage(plain)
    assert type(plain) is nx.DiGraph and type(lin.g) is LineageGraph
    assert lin.g is not plain
    assert_owned(lin.g)
    lin.add_round("m", 6, {"lab": ("a",)})
    assert lin.directly_used(["a"])["m"] == [0, 2, 4, 6]
    assert rounds == [0, 2, 4]


def test_vertical_parties_are_recorded_each_on_its_own_contribution():
    lin = vertical()
    uses = {p: lin.g.nodes[f"d|{p}|c"]["uses"]["m"] for p in PARTIES}
    assert uses == {"hospital": [0, 2, 4], "lab": [0, 2, 4], "pharmacy": [0, 4]}
    lin.drop_model_from("m", 4)
    assert {p: lin.g.nodes[f"d|{p}|c"]["uses"]["m"] for p in PARTIES} == {
        "hospital": [0, 2], "lab": [0, 2], "pharmacy": [0]}


def test_add_round_records_the_ids_as_given_at_the_call():
    lin = Lineage()
    lin.add_setup("m", {})
    ids = ["a", "b"]
    used = {"x": ids}
    lin.add_round("m", 0, used)
    ids.append("c")  # changed before the pending rows are recorded
    used["y"] = ("a",)
    assert lin.directly_used(["a", "b", "c"]) == {"m": [0]}
    assert lin.contributions("c") == [] and lin.holders("a") == ["x"]


# -- the saved form ------------------------------------------------------------------------
#: the file the previous implementation wrote for ``small()`` (the format is unchanged)
SMALL_SAVED = (
    '{"format":"vfl-lineage/2","graph":{"parties":["x","y"]},"nodes":[["s|m",{"kind":"setup",'
    '"model":"m"}],["d|x|a",{"kind":"contribution","party":"x","pid":"a","uses":{"m":0}}],'
    '["d|x|b",{"kind":"contribution","party":"x","pid":"b","uses":{"m":1}}],["d|x|c",{"kind":'
    '"contribution","party":"x","pid":"c","uses":{"m":2}}],["d|y|a",{"kind":"contribution",'
    '"party":"y","pid":"a","uses":{"m":0}}],["d|y|b",{"kind":"contribution","party":"y","pid":'
    '"b","uses":{"m":3}}],["d|y|c",{"kind":"contribution","party":"y","pid":"c","uses":{"m":2}'
    '}],["r|m|0",{"kind":"round","model":"m","round":0}],["r|m|1",{"kind":"round","model":'
    '"m","round":1}],["r|m|2",{"kind":"round","model":"m","round":2}],["c|m|1",{"kind":'
    '"checkpoint","model":"m","round":1,"digest":"d1"}],["c|m|2",{"kind":"checkpoint","model":'
    '"m","round":2,"digest":"d2"}],["m|m",{"kind":"model","name":"m","version":1}]],"succ":[[7'
    '],[0,7],[0,7],[0,8],[0,7],[0,7],[0,8],[8],[9,10],[11,12],[],[],[]],"uses":[[0,2],[0,1],['
    '1,2],[0]],"edge_attrs":[]}'
)


def small() -> Lineage:
    lin = Lineage()
    lin.add_setup("m", {"x": ("a", "b", "c"), "y": ("a", "b", "c")})
    rows = [{"x": ("a", "b"), "y": ("a", "b")}, {"x": ("b", "c"), "y": ("c",)},
            {"x": ("a", "c"), "y": ("a", "c")}]
    for r, ids in enumerate(rows):
        lin.add_round("m", r, ids)
    lin.add_checkpoint("m", 1, "d1")
    lin.add_checkpoint("m", 2, "d2")
    lin.publish("m", ["r|m|2"], version=1)
    return lin


def test_saved_file_is_unchanged(tmp_path):
    lin = small()
    lin.save(tmp_path / "lineage.json", fsync=False)
    assert (tmp_path / "lineage.json").read_text() == SMALL_SAVED
    back = Lineage.load(tmp_path / "lineage.json")
    assert json.dumps(back.to_json(), separators=(",", ":")) == SMALL_SAVED
    assert back.influenced(["b"]) == lin.influenced(["b"]) == {
        "setup": ["m"], "rounds": {"m": [0, 1, 2]}, "checkpoints": {"m": [1, 2]},
        "models": ["m"]}
    assert back.directly_used(["b"]) == {"m": [0, 1]}


def test_influenced_is_the_union_of_the_contributions_descendants():
    lin = vertical()
    lin.add_setup("n", {"lab": ("e",)})
    lin.add_round("n", 0, {"lab": ("d",)})
    lin.publish("both", ["m|m", "r|n|0"])
    for pids in (["a"], ["d"], ["c", "e"], ["a", "b", "c", "d", "e"], ["zz"], []):
        seen = set()
        for pid in pids:
            for c in lin.contributions(pid):
                seen |= nx.descendants(lin.g, c)
        inf = lin.influenced(pids)
        assert sorted(inf["models"]) == sorted(
            lin.g.nodes[n]["name"] for n in seen if n.startswith("m|"))
        assert {m: set(r) for m, r in inf["rounds"].items()} == {
            m: {lin.g.nodes[n]["round"] for n in seen if n.startswith(f"r|{m}|")}
            for m in ("m", "n") if any(n.startswith(f"r|{m}|") for n in seen)}
        assert inf["setup"] == sorted(n[2:] for n in seen if n.startswith("s|"))


# -- uses and first-use edges against a plain model ----------------------------------------
ROWS = st.sets(st.sampled_from("abcd"), max_size=3).map(lambda s: tuple(sorted(s)))
STEP = st.one_of(
    st.tuples(st.just("round"), st.integers(0, 7), ROWS, ROWS, st.booleans()),
    st.tuples(st.just("drop"), st.integers(-1, 7)),
    st.tuples(st.just("reload")),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(STEP, max_size=14))
def test_uses_and_first_use_edges_match_a_plain_model(steps):
    """Rounds in any order (a rollback, a replay, out-of-order rounds), vertical groups
    (every party the same rows) and diverging parties: each contribution's ``uses`` are
    exactly its rounds, and its one edge into the round chain points at the first."""
    lin = Lineage()
    lin.add_setup("m", {})
    want: dict[tuple[str, str], set[int]] = {}
    for step in steps:
        if step[0] == "round":
            _, r, xz, y, vertical_round = step
            if lin.g.nodes.get(f"r|m|{r}", {}).get("kind") == "round":
                continue
            used = {"x": xz, "y": xz if vertical_round else y, "z": xz}
            lin.add_round("m", r, used)
            for party, ids in used.items():
                for pid in ids:
                    want.setdefault((party, pid), set()).add(r)
        elif step[0] == "drop":
            lin.drop_model_from("m", step[1])
            for rounds in want.values():
                rounds -= {r for r in rounds if r >= step[1]}
        else:
            lin = roundtrip(lin)
        assert_owned_or_empty(lin.g)
    for party in "xyz":
        for pid in "abcd":
            rounds = sorted(want.get((party, pid), ()))
            node = lin.g.nodes.get(f"d|{party}|{pid}")
            assert ((node or {}).get("uses") or {}).get("m", []) == rounds, (party, pid)
            edges = [v for v in lin.g.successors(f"d|{party}|{pid}") if v.startswith("r|")
                     ] if node else []
            assert edges == ([f"r|m|{rounds[0]}"] if rounds else []), (party, pid)


def assert_owned_or_empty(g: nx.DiGraph) -> None:
    ids = owned(g)
    assert len(ids) == len(set(ids)), "a uses dict or list is shared"


# -- old formats are refused ---------------------------------------------------------------
def old_node_link() -> dict:
    """A lineage as the first format saved it: a node_link graph with an edge per use."""
    g = nx.DiGraph(parties=["x"])
    g.add_node("s|m", kind="setup", model="m")
    g.add_node("d|x|a", kind="contribution", party="x", pid="a")
    for r in range(3):
        g.add_node(f"r|m|{r}", kind="round", model="m", round=r)
        g.add_edge("s|m" if r == 0 else f"r|m|{r - 1}", f"r|m|{r}")
        g.add_edge("d|x|a", f"r|m|{r}")
    return nx.node_link_data(g, edges="edges")


@pytest.mark.parametrize("data", [
    old_node_link(),
    {**old_node_link(), "format": "vfl-lineage/1"},
    {**small().to_json(), "format": "vfl-lineage/3"},
])
def test_a_lineage_of_another_format_is_refused(tmp_path, data):
    path = tmp_path / "lineage.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RunDirError, match="Retrain the run") as err:
        Lineage.load(path)
    assert str(path) in str(err.value) and LINEAGE_FORMAT in str(err.value)
    with pytest.raises(RunDirError, match="node_link"):
        Lineage.from_json(data)


def test_a_missing_lineage_file_is_an_empty_lineage(tmp_path):
    lin = Lineage.load(tmp_path / "lineage.json")
    assert lin.g.number_of_nodes() == 0 and lin.influenced(["a"])["models"] == []


def test_a_checkpoint_index_of_another_format_is_refused(tmp_path):
    root = tmp_path / "store"
    store = CheckpointStore(root, fsync=False)
    store.flush()
    assert CheckpointStore(root).index["format"] == INDEX_FORMAT
    (root / "index.json").write_text(json.dumps({"models": {}}))
    with pytest.raises(RunDirError, match="Retrain the run"):
        CheckpointStore(root)
    (root / "index.json").write_text(json.dumps({"format": "vfl-checkpoint-index/0",
                                                 "models": {}}))
    with pytest.raises(RunDirError, match="vfl-checkpoint-index/0"):
        store.reload()
