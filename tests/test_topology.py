"""Tests of the topology graph (synth_transforms.topology): derivation, editing, placement order, codes, JSON."""

import json

import _synthetic_labels as syn
import numpy as np
import pytest

from synth_transforms import ADJACENT, DISJOINT, INSIDE, TopologyGraph, load_bank
from synth_transforms.topology import (
    CODE_CARVE,
    CODE_DISJOINT,
    CODE_FREE,
    CODE_KEEP,
    CODE_OVERWRITE,
    CODE_RELATIONS,
    CONTAINS,
    RELATION_CODES,
    RELATIONS,
)

ORGANS = ["a", "b", "c", "d", "e"]


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return syn.build_bank(tmp_path_factory.mktemp("synthetic"))[0]


@pytest.fixture
def graph():
    """a touches b, c lies in d, e is free of everything."""
    return TopologyGraph(ORGANS, [("a", ADJACENT, "b"), ("c", INSIDE, "d")])


# ---------------------------------------------------------------------------------------------------- derivation


def test_derived_from_contact(bank):
    graph = TopologyGraph.from_bank(bank)
    assert graph.edges() == [("block_a", ADJACENT, "block_b"), ("core", INSIDE, "capsule")]
    assert graph.relation("block_b", "block_a") == ADJACENT
    assert graph.relation("core", "capsule") == INSIDE and graph.relation("capsule", "core") == CONTAINS
    assert graph.parents("core") == ["capsule"] and graph.parents("capsule") == []
    for other in bank.organs:
        if other != "far_ball":
            assert graph.relation("far_ball", other) == DISJOINT
    assert graph.relation("lobe_left", "lobe_right") == DISJOINT


def test_derivation_does_not_depend_on_organ_order(bank, tmp_path):
    reversed_organs = dict(reversed(syn.ORGANS.items()))  # now the child (core) comes before its parent
    other = syn.build_bank(tmp_path, organs=reversed_organs)[0]
    assert other.organs == bank.organs[::-1]
    assert TopologyGraph.from_bank(other).edges() == TopologyGraph.from_bank(bank).edges()


def test_derivation_thresholds_and_overrides(bank):
    # block_a's contact with block_b is one face of six: above 0.1, below 0.3
    assert TopologyGraph.from_bank(bank, adjacent_contact=0.3).relation("block_a", "block_b") == DISJOINT
    assert TopologyGraph.from_bank(bank, inside_contact=1.01).relation("core", "capsule") == ADJACENT
    graph = TopologyGraph.from_bank(bank, overrides=[("block_a", DISJOINT, "block_b"), ("lobe_left", ADJACENT, "core")])
    assert graph.relation("block_a", "block_b") == DISJOINT and graph.relation("core", "lobe_left") == ADJACENT


def test_default_bank_graph_is_anatomical():
    graph = TopologyGraph.from_bank(load_bank())
    for pair in [("gallbladder", "liver"), ("kidney_right", "liver"), ("spleen", "stomach"), ("heart", "lung_left")]:
        assert graph.relation(*pair) == ADJACENT, pair
    for pair in [("spleen", "urinary_bladder"), ("kidney_left", "kidney_right"), ("heart", "urinary_bladder")]:
        assert graph.relation(*pair) == DISJOINT, pair


# ------------------------------------------------------------------------------------------------- edit and query


def test_relations_and_edges(graph):
    assert graph.relation("a", "b") == graph.relation("b", "a") == ADJACENT
    assert graph.relation("c", "d") == INSIDE and graph.relation("d", "c") == CONTAINS
    assert graph.relation("a", "e") == DISJOINT  # the default
    assert graph.edges() == [("a", ADJACENT, "b"), ("c", INSIDE, "d")]
    assert TopologyGraph(ORGANS, [("d", INSIDE, "c")]).edges() == [("d", INSIDE, "c")]
    assert graph.set("a", DISJOINT, "b") is graph and graph.relation("a", "b") == DISJOINT
    assert graph.set("d", INSIDE, "c").parents("d") == ["c"] and graph.parents("c") == []
    assert TopologyGraph(ORGANS, default=ADJACENT).relation("a", "e") == ADJACENT
    text = graph.describe()
    assert "d inside c" in text and "5 organs" in text


def test_edit_errors(graph):
    with pytest.raises(ValueError, match="unknown organ 'x'"):
        graph.set("a", ADJACENT, "x")
    with pytest.raises(ValueError, match="unknown relation 'touches'"):
        graph.set("a", "touches", "b")
    with pytest.raises(ValueError, match="itself"):
        graph.set("a", ADJACENT, "a")
    with pytest.raises(ValueError, match="default"):
        TopologyGraph(ORGANS, default=INSIDE)
    with pytest.raises(ValueError, match="empty"):
        TopologyGraph([])


def test_inside_cycle_is_refused_and_leaves_the_graph_unchanged():
    graph = TopologyGraph(ORGANS, [("a", INSIDE, "b"), ("b", INSIDE, "c")])
    before = graph.edges()
    with pytest.raises(ValueError, match="cycle"):
        graph.set("c", INSIDE, "a")
    assert graph.edges() == before
    assert graph.placement_order({}) == ["c", "b", "a", "d", "e"]  # still terminates: no cycle was kept


# ------------------------------------------------------------------------------------------------ placement order


def test_placement_order_large_first_parents_first(graph):
    volumes = {"a": 10.0, "b": 50.0, "c": 500.0, "d": 5.0, "e": 100.0}
    order = graph.placement_order(volumes)
    assert order == ["e", "b", "a", "d", "c"]  # c is the largest but must wait for its parent d
    chain = TopologyGraph(ORGANS, [("a", INSIDE, "b"), ("b", INSIDE, "c")])
    assert chain.placement_order({"a": 3.0, "b": 2.0, "c": 1.0}) == ["c", "b", "a", "d", "e"]
    # a parent outside the placed subset does not hold its child back
    assert graph.placement_order(volumes, ["c", "a"]) == ["c", "a"]


def test_placement_order_random_graphs():
    rng = np.random.RandomState(0)
    names = [f"o{i}" for i in range(12)]
    for _ in range(20):
        graph = TopologyGraph(names)
        for child in range(1, 12):  # each organ may lie in an earlier one: a forest, so never a cycle
            if rng.uniform() < 0.5:
                graph.set(names[child], INSIDE, names[rng.randint(child)])
        volumes = dict(zip(names, rng.uniform(1, 100, size=12), strict=True))
        order = graph.placement_order(volumes)
        assert sorted(order) == sorted(names)
        for organ in names:
            assert all(order.index(p) < order.index(organ) for p in graph.parents(organ))


# ------------------------------------------------------------------------------------------------------ code table


def test_code_table(graph):
    table = graph.code_table()
    assert table.shape == (6, 6) and table.dtype == np.int8
    cls = {o: i for i, o in enumerate(ORGANS, start=1)}
    assert (table[:, 0] == CODE_FREE).all() and (np.diag(table) == CODE_FREE).all()
    assert table[cls["a"], cls["b"]] == table[cls["b"], cls["a"]] == CODE_CARVE
    assert table[cls["c"], cls["d"]] == CODE_OVERWRITE  # a child is drawn over its parent
    assert table[cls["d"], cls["c"]] == CODE_KEEP  # a parent drawn later keeps the child
    assert table[cls["e"], cls["a"]] == table[cls["a"], cls["e"]] == CODE_DISJOINT
    assert table[cls["a"], cls["c"]] == CODE_DISJOINT
    lenient = TopologyGraph(ORGANS, [("a", DISJOINT, "b")], default=ADJACENT).code_table()
    assert lenient[cls["a"], cls["b"]] == CODE_DISJOINT and lenient[cls["a"], cls["e"]] == CODE_CARVE


def test_code_table_agrees_with_the_relation_names(graph):
    """Every cell of the table is the code of ``relation(row organ, column organ)``, and the names map back."""
    assert set(RELATION_CODES) == {*RELATIONS, CONTAINS}
    assert {CODE_RELATIONS[c]: c for c in CODE_RELATIONS} == RELATION_CODES
    assert CODE_FREE not in CODE_RELATIONS  # background and the organ itself have no relation
    table = graph.code_table()
    for i, a in enumerate(ORGANS, start=1):
        for j, b in enumerate(ORGANS, start=1):
            if i != j:
                assert CODE_RELATIONS[int(table[i, j])] == graph.relation(a, b), (a, b)


# ------------------------------------------------------------------------------------------------------------ JSON


def test_json_round_trip(bank, tmp_path):
    graph = TopologyGraph.from_bank(bank, overrides=[("lobe_left", ADJACENT, "lobe_right")])
    path = tmp_path / "topology.json"
    graph.save(path)
    data = json.loads(path.read_text())
    assert data["organs"] == bank.organs and data["default"] == DISJOINT
    assert {"a": "core", "relation": INSIDE, "b": "capsule"} in data["relations"]
    loaded = TopologyGraph.load(path, bank.organs)
    assert loaded.edges() == graph.edges() and loaded.default == graph.default
    np.testing.assert_array_equal(loaded.code_table(), graph.code_table())
    assert TopologyGraph.load(path).organs == bank.organs


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def _relations(*triples):
    return [{"a": a, "relation": r, "b": b} for a, r, b in triples]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"organs": ORGANS, "relations": _relations(("a", ADJACENT, "x"))}, "unknown organ 'x'"),
        ({"organs": ORGANS, "relations": _relations(("a", "near", "b"))}, "unknown relation 'near'"),
        (
            {"organs": ORGANS, "relations": _relations(("a", INSIDE, "b"), ("b", INSIDE, "c"), ("c", INSIDE, "a"))},
            "cycle",
        ),
        ({"organs": ORGANS, "relations": [{"a": "a", "relation": ADJACENT}]}, "relation #0 must have exactly"),
        ({"organs": ORGANS, "relations": [{"a": "a", "relation": ADJACENT, "b": "b", "c": "c"}]}, "relation #0"),
        ({"organs": ORGANS, "relations": [["a", ADJACENT, "b"]]}, "relation #0"),
        ({"organs": ORGANS, "relations": {"a": "b"}}, "'relations' must be a list"),
        ({"relations": []}, "'organs'"),
        ([1, 2], "'organs'"),
        ({"organs": ORGANS, "default": INSIDE}, "default relation"),
        ({"organs": ORGANS, "relations": _relations(("a", ADJACENT, "a"))}, "itself"),
    ],
    ids=[
        "unknown-organ",
        "unknown-relation",
        "inside-cycle",
        "missing-key",
        "extra-key",
        "not-an-object",
        "relations-not-list",
        "no-organs",
        "not-a-mapping",
        "bad-default",
        "self-relation",
    ],
)
def test_load_errors(tmp_path, data, message):
    path = _write(tmp_path / "bad_graph.json", data)
    with pytest.raises(ValueError, match=message) as info:
        TopologyGraph.load(path)
    assert "bad_graph.json" in str(info.value)


def test_load_checks_the_organs_match_the_bank(tmp_path):
    path = _write(tmp_path / "graph.json", {"organs": ORGANS, "relations": _relations(("a", ADJACENT, "b"))})
    TopologyGraph.load(path, ORGANS)
    for organs in (ORGANS[:-1], ORGANS[::-1], [*ORGANS, "f"]):
        with pytest.raises(ValueError, match="graph.json.*differ"):
            TopologyGraph.load(path, organs)


def test_load_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        TopologyGraph.load(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{'organs': ")
    with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
        TopologyGraph.load(broken)
