"""Tests of the plausibility metrics (synth_transforms.metrics)."""

import numpy as np
import pytest
import torch

from synth_transforms import OrganPlacer, TopologyGraph, load_bank
from synth_transforms.metrics import InsertAudit, aggregate, contact_counts, sample_metrics
from synth_transforms.placement_records import PlacedOrgan, PlacementRecord, SkippedOrgan, Violation

ORGANS = ["a", "b", "c"]  # class ids 1, 2, 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def graph():
    """a-b adjacent, c inside a, b-c disjoint (the default)."""
    return TopologyGraph(ORGANS, [("a", "adjacent", "b"), ("c", "inside", "a")])


def _placed(organ, class_id, voxels, position=(0, 0, 0), expected=(0, 0, 0), tolerance=(5, 5, 5)):
    vectors = (np.asarray(v, float) for v in (position, expected, tolerance))
    return PlacedOrgan(organ, class_id, "s", *vectors, tries=1, voxels=voxels)


def _record(*placed, skipped=(), unreachable=()):
    return PlacementRecord(np.zeros(3), 1.5, "s", list(placed), list(skipped), list(unreachable))


def _two_blocks(first: int, second: int) -> torch.Tensor:
    """An 8^3 map: ``first`` in x 1..3, ``second`` in x 4..6 (a 3x3 face of 9 voxel pairs between them)."""
    label = torch.zeros((8, 8, 8), dtype=torch.int64)
    label[1:4, 2:5, 2:5] = first
    label[4:7, 2:5, 2:5] = second
    return label


def test_touching_disjoint_organs_count_as_contact_not_violation(graph):
    label = _two_blocks(2, 3)  # b and c are disjoint: they may touch, never overlap
    m = sample_metrics(label, _record(_placed("b", 2, 27), _placed("c", 3, 27)), graph)
    assert m["contact_voxels"] == {"disjoint": 18, "adjacent": 0, "inside": 0}  # 9 voxels on each side of the face
    assert m["disjoint_contact_faces"] == {"b|c": 9}
    assert m["labels"] == {"integer": True, "invalid_ids": [], "unrecorded_ids": [], "voxel_mismatch": []}
    assert m["voxels"] == {"b": 27, "c": 27}
    report = aggregate([m], ORGANS, 1.5)
    assert report["ok"] and report["contact"]["disjoint"]["voxels_total"] == 18


def test_adjacent_and_inside_contacts_are_told_apart(graph):
    m = sample_metrics(_two_blocks(1, 2), _record(_placed("a", 1, 27), _placed("b", 2, 27)), graph)
    assert m["contact_voxels"] == {"disjoint": 0, "adjacent": 18, "inside": 0}
    label = torch.zeros((8, 8, 8), dtype=torch.int64)
    label[1:7, 1:7, 1:7] = 1
    label[3:5, 3:5, 3:5] = 3  # c fully inside a
    m = sample_metrics(label, _record(_placed("a", 1, 208), _placed("c", 3, 8)), graph)
    assert m["contact_voxels"]["inside"] == 8 + 24  # the 8 voxels of c and the 24 voxels of a facing them
    assert m["inside"] == [{"organ": "c", "fraction": None, "enclosure": 1.0}]


def test_wrong_class_ids_are_flagged(graph):
    label = _two_blocks(1, 7)  # 7 is no class id of a 3-organ graph (ids 0..3)
    label[0, 0, 0] = 2  # b is in the patch but not in the record
    m = sample_metrics(label, _record(_placed("a", 1, 20)), graph)
    assert m["labels"]["invalid_ids"] == [7]
    assert m["labels"]["unrecorded_ids"] == [2]
    assert m["labels"]["voxel_mismatch"] == ["a"]  # recorded 20, the map holds 27
    report = aggregate([m], ORGANS, 1.5)
    assert not report["ok"]
    assert report["invalid_ids"] == [7]
    for name in ("samples_with_invalid_ids", "samples_with_unrecorded_ids", "samples_with_voxel_mismatch"):
        assert report["checks"][name] == {**report["checks"][name], "value": 1, "ok": False}


def test_float_labels_are_flagged(graph):
    m = sample_metrics(_two_blocks(1, 2).float() * 0.5, _record(), graph)
    assert not m["labels"]["integer"] and m["labels"]["invalid_ids"] == [0.5]


def test_anchor_tolerance_is_checked_per_axis(graph):
    inside = _placed("a", 1, 27, position=(5, -5, 0), tolerance=(5, 5, 1))  # exactly on the bound: allowed
    outside = _placed("b", 2, 27, position=(0, 0, 1.5), tolerance=(5, 5, 1))  # z beyond 1 mm
    m = sample_metrics(_two_blocks(1, 2), _record(inside, outside), graph)
    by_organ = {a["organ"]: a for a in m["anchors"]}
    assert not by_organ["a"]["outside"] and by_organ["a"]["ratio"] == pytest.approx(1.0)
    assert by_organ["b"]["outside"] and by_organ["b"]["ratio"] == pytest.approx(1.5)
    report = aggregate([m], ORGANS, 1.5)
    assert report["checks"]["organs_outside_tolerance"]["value"] == 1 and not report["ok"]
    assert report["anchors"]["per_organ"]["b"]["outside_tolerance"] == 1


def test_audited_overlaps_are_split_by_relation(graph):
    taken = np.zeros((4, 4), dtype=np.int64)
    taken[3, 2] = 5  # c took voxels of b: disjoint
    taken[2, 1] = 4  # b took voxels of a: adjacent organs must be carved instead
    taken[1, 3] = 3  # a (parent) took voxels of c (its child)
    taken[3, 1] = 6  # c took voxels of a: allowed, c lies inside a
    taken[1, 0] = 50  # background: free
    fraction = np.zeros((4, 4))
    fraction[2, 1] = 0.15  # b took 15 % of a (adjacent): over an indent limit of 10 %
    audit = {"taken": taken, "taken_fraction": fraction, "written": {1: 53, 2: 4, 3: 11}}
    m = sample_metrics(_two_blocks(1, 3), _record(_placed("a", 1, 27), _placed("c", 3, 27)), graph, audit)
    assert m["violations"] == {"disjoint": 5, "adjacent": 4, "contains": 3, "inside": 6}
    assert m["indents"] == [0.15]  # only the adjacent pair counts as an indent
    assert m["inside"][0]["fraction"] == pytest.approx(6 / 11)
    report = aggregate([m], ORGANS, 1.5, min_inside_fraction=0.6, indent_fraction=0.1)
    values = {k: c["value"] for k, c in report["checks"].items()}
    assert values["disjoint_overlap_voxels"] == 5
    assert values["adjacent_indents_over_limit"] == 1 and report["overlap"]["adjacent_indented_voxels"] == 4
    lenient = aggregate([m], ORGANS, 1.5, indent_fraction=0.2)["checks"]["adjacent_indents_over_limit"]["value"]
    assert lenient == 0
    assert values["parent_over_child_voxels"] == 3
    assert values["children_below_min_inside"] == 1  # 6/11 < 0.6


def test_without_audit_overlap_checks_are_not_applicable(graph):
    report = aggregate([sample_metrics(_two_blocks(1, 2), _record(), graph)], ORGANS, 1.5)
    assert report["checks"]["disjoint_overlap_voxels"]["value"] is None
    assert report["overlap"]["audited"] is False


def test_contact_counts_faces_are_symmetric(graph):
    label = _two_blocks(1, 2)
    _, faces = contact_counts(label, graph.code_table())
    assert faces[1, 2] == faces[2, 1] == 9
    assert faces[1, 0] == 6 * 9 - 9  # a's other faces touch background


def test_skips_presence_and_volumes_are_aggregated(graph):
    rec1 = _record(
        _placed("a", 1, 27), skipped=[SkippedOrgan.from_violation("b", 6, Violation.adjacent_overlap(0.41, 0.3))]
    )
    rec2 = _record(_placed("a", 1, 27), _placed("b", 2, 27), unreachable=["c"])
    label1 = _two_blocks(1, 0)
    samples = [sample_metrics(label1, rec1, graph), sample_metrics(_two_blocks(1, 2), rec2, graph)]
    report = aggregate(samples, ORGANS, 2.0)
    a, b, c = (report["organs"][o] for o in ORGANS)
    assert a["presence_rate"] == 1.0 and a["volume_ml"]["median"] == pytest.approx(27 * 8 / 1000)
    assert b["presence_rate"] == 0.5 and b["skip_rate"] == 0.5 and b["skip_reasons"] == {"adjacent overlap > 30%": 1}
    assert samples[0]["skipped"] == [
        {
            "organ": "b",
            "reason_kind": "adjacent_overlap",
            "reason": "adjacent overlap 41% > 30%",
            "cause": "adjacent overlap > 30%",
        }
    ]
    assert c["unreachable"] == 1 and c["skip_rate"] is None and c["volume_ml"] is None
    assert report["retries"]["total"] == 6


def test_skip_reasons_are_grouped_by_cause_not_by_measurement(graph):
    skips = [Violation.inside_fraction(0.2), Violation.inside_fraction(0.35), Violation.adjacent_overlap(0.5, 0.3)]
    records = [_record(skipped=[SkippedOrgan.from_violation("c", 6, v)]) for v in skips]
    report = aggregate([sample_metrics(_two_blocks(0, 0), r, graph) for r in records], ORGANS, 1.5)
    assert report["organs"]["c"]["skip_reasons"] == {"too little inside its parent": 2, "adjacent overlap > 30%": 1}


def test_metadata_tensors_are_unwrapped(graph):
    from monai.data import MetaTensor

    record = _record(_placed("a", 1, 27), _placed("b", 2, 27))
    plain = sample_metrics(_two_blocks(1, 2), record, graph)
    assert sample_metrics(MetaTensor(_two_blocks(1, 2)[None]), record, graph) == plain
    assert sample_metrics(_two_blocks(1, 2).numpy(), record, graph) == plain


def test_insert_audit_observes_a_placer():
    """As a placer's observer, the audit counts what each new organ took over: background and, for a child, its
    parent; never an organ it must be disjoint from."""
    bank = load_bank()
    graph = TopologyGraph.from_bank(bank, overrides=[("portal_vein_and_splenic_vein", "inside", "liver")])
    audit = InsertAudit(bank.num_classes)
    placer = OrganPlacer(bank, graph=graph, organs=["liver", "portal_vein_and_splenic_vein"], patch_size=48)
    placer.observers.append(audit)
    liver, vein = bank.class_id("liver"), bank.class_id("portal_vein_and_splenic_vein")
    center = placer.anchors.mean_mm[vein - 1]
    vein_placed = 0
    for seed in range(6):
        audit.reset()
        label, record = placer(np.random.RandomState(seed), center)
        snap = audit.snapshot()
        placed = {p.class_id: p for p in record.placed}
        assert set(snap["written"]) == set(placed)
        for cls_id, p in placed.items():
            assert snap["written"][cls_id] == snap["taken"][cls_id].sum() >= p.voxels
        if vein in placed:  # the vein took its overwritten voxels from the liver and the rest from background
            vein_placed += 1
            assert snap["taken"][vein, liver] == placed[vein].overwritten > 0
            assert snap["taken"][vein].sum() == snap["taken"][vein, [0, liver]].sum()
        assert snap["taken"][liver, 1:].sum() == 0  # placed first, the liver took only background
    assert vein_placed > 0


def _cut_insertion(after_value: int = 3):
    """A 4x4x6 shape cut at its top (z high) written into a 4x4x6 region as it is (crop index = region index)."""
    from synth_transforms.bank import OrganShape
    from synth_transforms.placement_records import Insertion

    faces = np.zeros((3, 2), dtype=bool)
    faces[2, 1] = True
    shape = OrganShape("c", "s", np.ones((4, 4, 6), dtype=bool), (0, 0, 0), np.zeros(3), 1.0, True, False, faces)
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in (4, 4, 6)), indexing="ij"))
    region = tuple(slice(0, n) for n in (4, 4, 6))
    before = torch.zeros((4, 4, 6), dtype=torch.uint8)
    after = torch.full((4, 4, 6), after_value, dtype=torch.uint8)
    after[:, :, -1] = 1  # the top slice carved (kept by an adjacent organ): not the new organ's voxels
    mask = torch.ones((4, 4, 6), dtype=torch.bool)
    return Insertion(3, region, before, after, mask, (), shape, lambda: grid)


def test_audit_counts_voxels_written_next_to_a_cut_face():
    audit = InsertAudit(4)
    audit(_cut_insertion())
    # the band is the two top slices; the carved top slice is not the new organ's: 4 x 4 voxels remain
    assert audit.snapshot()["cut_face"] == {3: 16}
    audit.reset()
    assert audit.snapshot()["cut_face"] == {}


def test_cut_face_and_skip_rate_checks(graph):
    audit = {"taken": np.zeros((4, 4), dtype=np.int64), "written": {}, "cut_face": {1: 5}}
    m = sample_metrics(_two_blocks(1, 0), _record(_placed("a", 1, 27)), graph, audit)
    assert m["cut_face_voxels"] == 5
    report = aggregate([m], ORGANS, 1.5)
    assert report["checks"]["cut_face_voxels"] == {**report["checks"]["cut_face_voxels"], "value": 5, "ok": False}
    assert report["checks"]["organs_over_max_skip_rate"]["value"] is None  # not asked for
    # b skipped in 3 of 30 patches that reach it (10 %), c in 1 of 2 (too few to judge)
    skip_b = SkippedOrgan.from_violation("b", 6, Violation.disjoint(["c"]))
    skip_c = SkippedOrgan.from_violation("c", 6, Violation.cut_face())
    records = [_record(_placed("a", 1, 27), skipped=[skip_b]) for _ in range(3)]
    records += [_record(_placed("a", 1, 27), _placed("b", 2, 0)) for _ in range(27)]
    records[0].skipped.append(skip_c)
    records[1].placed.append(_placed("c", 3, 0))
    samples = [sample_metrics(_two_blocks(1, 0), r, graph) for r in records]
    strict = aggregate(samples, ORGANS, 1.5, max_skip_rate=0.05)
    assert strict["checks"]["organs_over_max_skip_rate"]["value"] == 1 and not strict["ok"]
    assert strict["skips"]["over"] == {"b": 0.1} and strict["organs"]["c"]["skip_rate"] == 0.5
    assert strict["organs"]["c"]["skip_reasons"] == {"cut face inside the patch": 1}
    assert aggregate(samples, ORGANS, 1.5, max_skip_rate=0.1)["ok"]
    assert strict["checks"]["cut_face_voxels"]["value"] is None  # no audit: not measured
