"""Tests of sequential, topology-checked placement (synth_transforms.placement)."""

import dataclasses
import json

import _synthetic_labels as syn
import numpy as np
import pytest
import torch

from synth_transforms import ADJACENT, DISJOINT, INSIDE, AnchorModel, OrganPlacer, TopologyGraph, load_bank, placement
from synth_transforms.bank import OrganShape
from synth_transforms.insert_audit import InsertAudit
from synth_transforms.placement_records import (
    ADJACENT_OVERLAP,
    CUT_FACE,
    DISJOINT_OVERLAP,
    INSIDE_FRACTION,
    PlacedOrgan,
    SkippedOrgan,
    Violation,
)
from synth_transforms.placement_search import (
    CUT_BAND,
    CUT_MARK,
    build_warp,
    dilate,
    draw_shared_warp,
    draw_warp_params,
    free_candidates,
    prepare_shape,
    sample_shape,
    shift_grid,
    split,
    stand_in_offset,
)
from synth_transforms.topology import CODE_CARVE, CODE_DISJOINT, CODE_OVERWRITE

PATCH = (64, 64, 64)
#: Rigid placement: no scale, rotation or deformation, so a placed organ is an exact voxel copy of a bank shape.
RIGID = {"scale_range": (1.0, 1.0), "rotation_deg": 0.0, "deform_mm": 0.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bank():
    return load_bank()


@pytest.fixture(scope="module")
def anchors(bank):
    return AnchorModel.from_bank(bank)


@pytest.fixture(scope="module")
def graph(bank):
    return TopologyGraph.from_bank(bank)


@pytest.fixture(scope="module")
def placer(bank, anchors, graph):
    return OrganPlacer(bank, anchors, graph, patch_size=PATCH)


@pytest.fixture(scope="module")
def toy_bank(tmp_path_factory):
    return syn.build_bank(tmp_path_factory.mktemp("synthetic"))[0]


def _center(anchors, bank, organ):
    return anchors.mean_mm[bank.class_id(organ) - 1]


def _toy_center(bank):
    return AnchorModel.from_bank(bank).mean_mm.mean(axis=0)


def _crop(mask: np.ndarray) -> np.ndarray:
    nonzero = np.argwhere(mask)
    lo, hi = nonzero.min(axis=0), nonzero.max(axis=0) + 1
    return mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]


def _touches_border(mask: np.ndarray) -> bool:
    return any(mask.take(0, axis=a).any() or mask.take(-1, axis=a).any() for a in range(3))


# ------------------------------------------------------------------------------------------ topology, from outside


def test_disjoint_organs_never_overlap(toy_bank, monkeypatch):
    """Everything disjoint and rigid, no clipping: each placed organ must be an intact copy of a bank shape.

    Had a candidate been allowed onto an organ already placed, one of the two would have lost voxels to the other
    (carved or overwritten), which shows as a shape that no longer matches any bank crop.
    """
    monkeypatch.setattr(placement, "_CLIP_FRACTION", 0.0)
    graph = TopologyGraph(toy_bank.organs)  # every pair disjoint
    # one try per organ: a retry follows the organ it collided with, which resolves every collision of this toy bank
    placer = OrganPlacer(toy_bank, graph=graph, patch_size=PATCH, jitter_scale=1.0, max_tries=1, **RIGID)
    center = _toy_center(toy_bank)
    skipped = 0
    for seed in range(12):
        label, record = placer(np.random.RandomState(seed), center)
        label = label.numpy()
        for p in record.placed:
            mask = label == p.class_id
            assert mask.sum() == p.voxels > 0 and not _touches_border(mask)
            copies = [s.mask for s in toy_bank.shapes[p.organ]]
            crop = _crop(mask)
            assert any(c.shape == crop.shape and np.array_equal(c, crop) for c in copies), (seed, p.organ)
            assert p.carved == p.overwritten == 0
        placed = {p.organ for p in record.placed}
        for s in record.skipped:
            assert s.tries == placer.max_tries and not (label == toy_bank.class_id(s.organ)).any()
            assert s.reason_kind == DISJOINT_OVERLAP and s.cause == s.reason
            hit = s.reason.removeprefix("disjoint overlap with ")
            assert hit != s.reason and set(hit.split(", ")) <= placed, s
        skipped += len(record.skipped)
    assert skipped > 0  # the jitter made organs collide, so the check was exercised


def test_children_stay_inside_their_parents(toy_bank):
    """core inside capsule, rigid: the capsule is a box, so where the core landed can be measured against it."""
    graph = TopologyGraph.from_bank(toy_bank)
    assert graph.relation("core", "capsule") == INSIDE
    placer = OrganPlacer(toy_bank, graph=graph, patch_size=PATCH, jitter_scale=1.5, donor_prob=0.0, **RIGID)
    center = _toy_center(toy_bank)
    core, capsule = toy_bank.class_id("core"), toy_bank.class_id("capsule")
    placed_both = 0
    for seed in range(16):
        label, record = placer(np.random.RandomState(seed), center)
        label = label.numpy()
        names = [p.organ for p in record.placed]
        if "core" not in names:
            continue
        assert "capsule" in names and names.index("capsule") < names.index("core")
        placed_both += 1
        box = np.argwhere(label == capsule)
        lo, hi = box.min(axis=0), box.max(axis=0)
        core_voxels = np.argwhere(label == core)
        within = np.all((core_voxels >= lo) & (core_voxels <= hi), axis=1).mean()
        assert within >= placer.min_inside_fraction, (seed, within)
        core_record = record.placed[names.index("core")]
        assert core_record.overwritten >= placer.min_inside_fraction * core_record.voxels
    assert placed_both >= 8


@pytest.mark.parametrize("organ", ["liver", "kidney_left", "urinary_bladder"])
def test_every_accepted_candidate_respects_the_graph(bank, anchors, graph, organ):
    """Observe each accepted insertion and check it against the graph's relations (not the placer's code table).

    Replaying the observed writes must rebuild each patch exactly: nothing else (no rejected candidate, no write
    outside a candidate's region) changed it.
    """
    graph = TopologyGraph(bank.organs, graph.edges()).set("portal_vein_and_splenic_vein", INSIDE, "liver")
    events = []
    placer = OrganPlacer(
        bank,
        anchors,
        graph,
        patch_size=PATCH,
        jitter_scale=1.0,
        observers=[lambda i: events.append((i, i.after.clone()))],
    )
    relation = {
        (a, b): graph.relation(bank.organs[a - 1], bank.organs[b - 1])
        for a in range(1, bank.num_classes)
        for b in range(1, bank.num_classes)
        if a != b
    }
    accepted = inside_checked = indents = 0
    for seed in range(5):
        events.clear()
        label, record = placer(np.random.RandomState(seed), _center(anchors, bank, organ))
        replay = torch.zeros_like(label)
        for insertion, after in events:
            before, candidate, cls_id = insertion.before, insertion.mask, insertion.cls_id
            assert torch.equal(replay[insertion.region], before)  # nothing touched the patch since the last write
            under = before[candidate].numpy()
            others = under[under != 0]
            assert all(relation[cls_id, o] != DISJOINT for o in np.unique(others))
            kept = [o != 0 and relation[cls_id, o] != INSIDE for o in under]
            if sum(kept) > placer.max_carve_fraction * len(under):  # over the carve limit: it indents its neighbours
                adjacent = np.array([o != 0 and relation[cls_id, o] == ADJACENT for o in under])
                assert adjacent.sum() <= placer.max_embed_fraction * len(under)
                for o in np.unique(under[adjacent]):  # each keeps all but indent_fraction of its voxels
                    assert (under == o).sum() <= placer.indent_fraction * (replay == o).sum()
                kept = [k and not a for k, a in zip(kept, adjacent, strict=True)]
                indents += 1
            assert np.array_equal(after[candidate].numpy(), np.where(kept, under, cls_id))
            assert torch.equal(after[~candidate], before[~candidate])
            if insertion.parents:
                inside_checked += 1
                assert np.isin(under, insertion.parents).mean() >= placer.min_inside_fraction
            replay[insertion.region] = after
            accepted += 1
        assert torch.equal(replay, label)
        assert [i.cls_id for i, _ in events] == [p.class_id for p in record.placed]  # one write per placed organ
    assert accepted > 10
    if organ == "liver":
        assert inside_checked > 0
        assert indents > 0  # small organs met large ones and indented them, within the limits checked above


def test_observers_change_nothing_and_can_be_removed(bank, anchors, placer):
    center = _center(anchors, bank, "liver")
    plain, plain_record = placer(np.random.RandomState(3), center)
    seen = []
    placer.observers.append(seen.append)
    try:
        observed, observed_record = placer(np.random.RandomState(3), center)
    finally:
        placer.observers.remove(seen.append)
    assert torch.equal(plain, observed) and plain_record.to_dict() == observed_record.to_dict()
    assert [i.cls_id for i in seen] == [p.class_id for p in observed_record.placed]
    placer(np.random.RandomState(4), center)
    assert len(seen) == len(observed_record.placed) and placer.observers == []


# ------------------------------------------------------------------------------------------ records and label map


def test_record_partitions_the_organs_and_matches_the_label(bank, anchors, placer):
    for seed, organ in enumerate(["liver", "urinary_bladder", "heart", "kidney_right"]):
        label, record = placer(np.random.RandomState(seed), _center(anchors, bank, organ))
        assert label.shape == PATCH and label.dtype == torch.uint8
        placed = [p.organ for p in record.placed]
        skipped = [s.organ for s in record.skipped]
        assert sorted(placed + skipped + record.unreachable) == sorted(placer.order)
        counts = np.bincount(label.numpy().ravel(), minlength=bank.num_classes)
        for p in record.placed:
            assert p.class_id == bank.class_id(p.organ) and counts[p.class_id] == p.voxels
            assert np.all(np.abs(p.position_mm - p.expected_mm) <= p.tolerance_mm + 1e-9)
            assert 1 <= p.tries <= placer.max_tries and p.subject in bank.subjects
        for gone in skipped + record.unreachable:
            assert counts[bank.class_id(gone)] == 0, gone
        for s in record.skipped:
            assert s.reason and s.tries == placer.max_tries
        assert record.retries == sum(p.tries - 1 for p in record.placed) + sum(s.tries for s in record.skipped)
        assert record.donor in bank.subjects
        patch_centre = record.origin_mm + (np.array(PATCH) - 1) / 2 * bank.spacing
        np.testing.assert_allclose(patch_centre, _center(anchors, bank, organ))
        json.dumps(record.to_dict())


def test_unreachable_organs_are_absent(bank, anchors, placer):
    label, record = placer(np.random.RandomState(0), _center(anchors, bank, "urinary_bladder"))
    assert {"heart", "lung_left", "lung_right", "esophagus"} <= set(record.unreachable)
    present = set(np.unique(label.numpy()).tolist())
    assert not present & {bank.class_id(o) for o in record.unreachable}
    assert "urinary_bladder" not in record.unreachable
    assert present - {0} <= {p.class_id for p in record.placed}
    far = placer(np.random.RandomState(0), np.full(3, 1e4))[1]
    assert sorted(far.unreachable) == sorted(placer.order) and not far.placed


def test_skipped_organs_are_recorded_and_absent(bank, anchors):
    # strict graph, one try each: colliding organs are given up at once
    placer = OrganPlacer(bank, anchors, TopologyGraph(bank.organs), patch_size=PATCH, max_tries=1)
    skipped = 0
    for seed in range(4):
        label, record = placer(np.random.RandomState(seed), _center(anchors, bank, "liver"))
        present = set(np.unique(label.numpy()).tolist())
        for s in record.skipped:
            assert s.tries == 1 and s.reason_kind == DISJOINT_OVERLAP and s.reason.startswith("disjoint overlap with ")
            assert bank.class_id(s.organ) not in present
        skipped += len(record.skipped)
    assert skipped > 0


def test_zero_jitter_places_at_the_anchor(bank, anchors):
    placer = OrganPlacer(bank, anchors, patch_size=PATCH, jitter_scale=0.0, donor_prob=1.0, **RIGID)
    _, record = placer(np.random.RandomState(0), _center(anchors, bank, "liver"))
    assert record.placed
    for p in record.placed:
        np.testing.assert_array_equal(p.position_mm, p.expected_mm)
        np.testing.assert_array_equal(p.tolerance_mm, 0.0)


# ------------------------------------------------------------------------------------------------------ randomness


def test_same_seed_same_label(bank, anchors, placer):
    center = _center(anchors, bank, "pancreas")
    a, record_a = placer(np.random.RandomState(5), center)
    np.random.seed(1)
    torch.manual_seed(1)
    b, record_b = placer(np.random.RandomState(5), center)
    np.random.seed(2)
    torch.manual_seed(2)
    c, _ = placer(np.random.RandomState(6), center)
    assert torch.equal(a, b) and json.dumps(record_a.to_dict()) == json.dumps(record_b.to_dict())
    assert not torch.equal(a, c)


def test_global_generators_untouched(bank, anchors, placer):
    np.random.seed(3)
    torch.manual_seed(3)
    numpy_state, torch_state = np.random.get_state(), torch.get_rng_state()
    placer(np.random.RandomState(0), _center(anchors, bank, "liver"))
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    assert torch.equal(torch.get_rng_state(), torch_state)


# ------------------------------------------------------------------------------------------------------- arguments


def test_organ_subset(bank, anchors):
    organs = ["kidney_left", "liver", "spleen", "kidney_right"]
    placer = OrganPlacer(bank, anchors, patch_size=PATCH, organs=organs)
    assert sorted(placer.order) == sorted(organs) and placer.order[0] == "liver"  # largest first
    allowed = {0} | {bank.class_id(o) for o in organs}  # class ids stay the bank's
    for seed in range(3):
        label, record = placer(np.random.RandomState(seed), _center(anchors, bank, "kidney_left"))
        assert set(np.unique(label.numpy()).tolist()) <= allowed
        assert {p.organ for p in record.placed} <= set(organs)
        assert any(p.organ == "kidney_left" for p in record.placed)


def test_non_cubic_patch(bank, anchors):
    placer = OrganPlacer(bank, anchors, patch_size=(48, 32, 40))
    label, record = placer(np.random.RandomState(0), _center(anchors, bank, "liver"))
    assert label.shape == (48, 32, 40) and record.placed


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patch_size": (0, 64, 64)},
        {"patch_size": (64, 64)},
        {"patch_size": (64, 64, 600)},
        {"patch_size": (64.0, 64, 64)},
        {"scale_range": (0.0, 1.0)},
        {"scale_range": (1.2, 1.0)},
        {"jitter_scale": -0.1},
        {"rotation_deg": -1.0},
        {"deform_mm": -1.0},
        {"max_tries": 0},
        {"max_carve_fraction": 1.5},
        {"min_inside_fraction": -0.1},
        {"donor_prob": 2.0},
        {"organs": []},
    ],
    ids=lambda kw: next(iter(kw)),
)
def test_bad_arguments(bank, anchors, graph, kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match="organ list is empty" if name == "organs" else f"OrganPlacer: {name} must be"):
        OrganPlacer(bank, anchors, graph, **kwargs)


def test_mismatched_models(bank, anchors, graph, toy_bank):
    with pytest.raises(ValueError, match="class order"):
        OrganPlacer(bank, anchors, TopologyGraph(bank.organs[::-1]))
    with pytest.raises(ValueError, match="class order"):
        OrganPlacer(bank, AnchorModel.from_bank(toy_bank), graph)
    with pytest.raises(KeyError, match="appendix"):
        OrganPlacer(bank, anchors, graph, organs=["liver", "appendix"])


def test_adjacent_default_graph_carves_instead_of_rejecting(toy_bank):
    graph = TopologyGraph(toy_bank.organs, default=ADJACENT)
    placer = OrganPlacer(toy_bank, graph=graph, patch_size=PATCH, jitter_scale=1.0, max_tries=1, **RIGID)
    carved = 0
    for seed in range(8):
        _, record = placer(np.random.RandomState(seed), _toy_center(toy_bank))
        for s in record.skipped:
            assert s.reason_kind == ADJACENT_OVERLAP and s.reason.startswith("adjacent overlap")
        for p in record.placed:
            assert p.carved <= placer.max_carve_fraction * (p.voxels + p.carved)
            carved += p.carved
    assert carved > 0


# ------------------------------------------------------------------------------------------------- typed records


def test_violations_keep_kind_text_and_cause_apart():
    adjacent = Violation.adjacent_overlap(0.414, 0.3)
    assert adjacent == (ADJACENT_OVERLAP, "adjacent overlap 41% > 30%", "adjacent overlap > 30%", None)
    assert Violation.adjacent_overlap(0.414, 0.3, neighbour=7).neighbour == 7  # the organ it collided with most
    inside = Violation.inside_fraction(0.2)
    assert inside == (INSIDE_FRACTION, "only 20% inside its parent", "too little inside its parent", None)
    disjoint = Violation.disjoint(["liver", "spleen"])
    assert (
        disjoint.kind == DISJOINT_OVERLAP and disjoint.text == disjoint.cause == "disjoint overlap with liver, spleen"
    )
    skipped = SkippedOrgan.from_violation("gallbladder", 6, adjacent)
    assert (skipped.reason_kind, skipped.reason, skipped.cause) == adjacent[:3]
    assert skipped.to_dict() == {"organ": "gallbladder", "tries": 6, "reason": "adjacent overlap 41% > 30%"}


def test_placed_organ_to_dict_keeps_the_record_layout():
    vec = np.array([1.234, 2.345, 3.456])
    placed = PlacedOrgan("liver", 6, "s1", vec, vec + 1, np.ones(3), tries=2, carved=5, overwritten=1)
    keys = ["organ", "class_id", "subject", "position_mm", "expected_mm", "tolerance_mm", "tries", "carved"]
    assert list(placed.to_dict()) == [*keys, "overwritten"]  # no voxels before the patch is finished
    placed.voxels = 40
    data = placed.to_dict()
    assert list(data) == [*keys, "overwritten", "voxels"]
    assert data["position_mm"] == [1.23, 2.35, 3.46] and data["voxels"] == 40 and json.dumps(data)


def test_record_dict_of_a_real_placement(bank, anchors, placer):
    _, record = placer(np.random.RandomState(1), _center(anchors, bank, "stomach"))
    data = record.to_dict()
    assert [p["organ"] for p in data["placed"]] == [p.organ for p in record.placed]
    assert all(set(p) == {f for f in PlacedOrgan.__dataclass_fields__} for p in data["placed"])
    assert all(set(s) == {"organ", "tries", "reason"} for s in data["skipped"])


# ------------------------------------------------------------------------------------------------------ cut faces


def _shape(mask: np.ndarray, cut_faces=None, subject="s") -> OrganShape:
    faces = None if cut_faces is None else np.asarray(cut_faces, dtype=bool)
    truncated = bool(faces is not None and faces.any())
    return OrganShape("o", subject, mask, (0, 0, 0), np.zeros(3), 1.0, truncated, False, faces)


def test_prepared_shapes_mark_the_band_next_to_each_cut_face():
    mask = np.ones((4, 5, 6), dtype=bool)
    cut = np.zeros((3, 2), dtype=bool)
    cut[2, 1] = True  # superior face
    prepared = prepare_shape(_shape(mask, cut))
    assert prepared.cut and prepared.flat.dtype == torch.uint8
    padded = prepared.flat.view(*prepared.dims).numpy()
    inner = padded[1:-1, 1:-1, 1:-1]
    assert (inner[..., -CUT_BAND:] == CUT_MARK).all() and (inner[..., :-CUT_BAND] == 1).all()
    complete = prepare_shape(_shape(mask, np.zeros((3, 2))))
    assert not complete.cut and complete.flat.dtype == torch.bool
    assert prepare_shape(_shape(mask, None)).flat.dtype == torch.bool  # not truncated, faces unknown: no cut


def test_stand_in_shares_the_uncut_face_of_the_cut_shape():
    short = np.zeros((4, 4, 10), dtype=bool)
    short[1:3, 1:3, :] = True
    long = np.zeros((4, 4, 30), dtype=bool)
    long[1:3, 1:3, :] = True
    cut_top = np.zeros((3, 2), dtype=bool)
    cut_top[2, 1] = True
    cut, complete = prepare_shape(_shape(short, cut_top)), prepare_shape(_shape(long, np.zeros((3, 2))))
    offset = stand_in_offset(cut, complete)
    # the stand-in's first slice lands on the cut shape's first slice: centroid 14.5 - 4.5 = 10 voxels higher
    np.testing.assert_allclose(offset, [0, 0, 10])
    cut_bottom = cut_top[:, ::-1].copy()
    np.testing.assert_allclose(stand_in_offset(prepare_shape(_shape(short, cut_bottom)), complete), [0, 0, -10])


def test_no_cut_face_of_a_donor_shape_lands_in_the_patch(bank, anchors, graph):
    """Patches at the edge of s0001's field of view (its liver, spleen, stomach, aorta and spine are cut at the top):
    the audit finds no voxel of a placed organ next to a cut face, because complete stand-ins replaced the cut shapes.
    """
    audit = InsertAudit(bank.num_classes)
    placer = OrganPlacer(bank, anchors, graph, patch_size=PATCH, donor_prob=1.0, observers=[audit])
    top = placer.field_of_view["s0001"][1][2]
    assert np.isfinite(top)
    spine = anchors.subject_position(bank.class_id("spine") - 1, "s0001")
    center = np.array([spine[0], spine[1], top - 20.0])  # the field of view ends 20 mm above the patch centre
    stand_ins = 0
    for seed in range(4):
        audit.reset()
        label, record = placer(np.random.RandomState(seed), center, donor="s0001")
        assert sum(audit.snapshot()["cut_face"].values()) == 0
        by_organ = {p.organ: p for p in record.placed}
        for organ in record.stand_ins:
            shape = bank.shapes[organ]
            assert by_organ[organ].subject != "s0001" or organ in ("kidney_left", "kidney_right")
            assert any(not s.cut_face_mask.any() for s in shape)
        stand_ins += len(record.stand_ins)
    assert stand_ins > 0


def test_organs_without_complete_shapes_are_skipped_where_their_cut_shows(toy_bank):
    """A bank whose every shape is cut on all faces: any placed voxel would lie next to a cut face, so every organ
    that reaches the patch is skipped with reason_kind cut_face (and counted as skipped, not unreachable)."""
    cut_all = np.ones((3, 2), dtype=bool)  # truncated stays False, so the anchors still take the shapes as complete
    shapes = {o: [dataclasses.replace(s, cut_faces=cut_all) for s in ss] for o, ss in toy_bank.shapes.items()}
    bank = dataclasses.replace(toy_bank, shapes=shapes)
    placer = OrganPlacer(bank, graph=TopologyGraph(bank.organs), patch_size=PATCH, **RIGID)
    label, record = placer(np.random.RandomState(0), _toy_center(bank))
    assert not record.placed and record.skipped and not label.any()
    assert {s.reason_kind for s in record.skipped} == {CUT_FACE}


def test_fit_center_keeps_the_patch_inside_the_donors_field_of_view(bank, anchors):
    placer = OrganPlacer(bank, anchors, patch_size=PATCH)
    top = placer.field_of_view["s0001"][1][2]
    half = (PATCH[2] - 1) / 2 * bank.spacing
    moved = placer.fit_center([0.0, 0.0, top], "s0001")
    assert moved[2] + half < top - 10.0 and moved[:2].tolist() == [0.0, 0.0]
    inside = [1.0, 2.0, top - half - 100.0]
    np.testing.assert_array_equal(placer.fit_center(inside, "s0001"), inside)
    assert np.isinf(placer.field_of_view["s0004"]).all()  # nothing of s0004 is cut: any centre is kept
    np.testing.assert_array_equal(placer.fit_center([5.0, 6.0, 1e4], "s0004"), [5.0, 6.0, 1e4])


# ------------------------------------------------------------------------------------------------ collision search


def test_shift_grid_is_nearest_first_and_bounded():
    shifts = shift_grid(np.array([-3, 0, -1]), np.array([2, 0, 1]))
    assert shifts.shape[1] == 3 and not (shifts == 0).all(dim=1).any()
    assert (shifts[:, 0] >= -3).all() and (shifts[:, 0] <= 2).all() and (shifts[:, 1] == 0).all()
    norms = (shifts**2).sum(dim=1)
    assert torch.equal(norms, norms.sort().values)
    assert len(shift_grid(np.zeros(3), np.zeros(3))) == 0


def test_free_candidates_tells_free_copies_from_colliding_ones():
    codes = torch.tensor([0, CODE_DISJOINT, CODE_CARVE])  # label 1: disjoint, label 2: adjacent
    canvas = torch.zeros((10, 10, 10), dtype=torch.uint8)
    canvas[5:, :, :] = 1
    canvas[:, :, 8:] = 2
    points = torch.tensor([[[4, 4, 6], [4, 4, 7]]])  # one copy of a 2-voxel candidate next to both blocks
    offsets = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 0, 1]])
    free = free_candidates(canvas, points, offsets, codes, [], max_carve=0.3, min_inside=0.5)
    assert free.tolist() == [[True, False, False]]  # as is; on the disjoint block; half on the adjacent one
    assert free_candidates(canvas, points, offsets[2:], codes, [], max_carve=0.5, min_inside=0.5).tolist() == [[True]]
    inside = free_candidates(canvas, points, offsets, torch.tensor([0, CODE_OVERWRITE, CODE_CARVE]), [1], 0.3, 0.5)
    assert inside.tolist() == [[False, True, False]]  # a child must lie in its parent (label 1)
    off_patch = free_candidates(canvas, points - 20, offsets[:1], codes, [], 0.3, 0.5)
    assert off_patch.tolist() == [[False]]  # a copy entirely off the patch is no placement


def test_collision_search_places_more_organs_within_tolerance(bank, anchors, graph, monkeypatch):
    monkeypatch.setattr(placement, "_CLIP_FRACTION", 0.0)  # clipping would resolve most collisions before a search
    # one try per organ, so the search (on the last try) meets the collisions that retries would otherwise resolve
    placer = OrganPlacer(bank, anchors, graph, patch_size=PATCH, jitter_scale=1.0, max_tries=1)
    center = _center(anchors, bank, "kidney_right")
    with_search, shifted = 0, 0
    for seed in range(6):
        _, record = placer(np.random.RandomState(seed), center)
        with_search += len(record.skipped)
        shifted += len(record.shifted)
        for p in record.placed:  # a moved organ stays within its anchor tolerance
            assert np.all(np.abs(p.position_mm - p.expected_mm) <= p.tolerance_mm + 1e-9)
    placer._shift = lambda *args: None  # the search switched off (on this placer only)
    without = sum(len(placer(np.random.RandomState(seed), center)[1].skipped) for seed in range(6))
    assert shifted > 0 and with_search < without


def test_small_disjoint_overlaps_are_clipped_off_the_new_organ(toy_bank):
    """A candidate that covers a disjoint organ with a few of its voxels loses them instead of being skipped."""
    from scipy import ndimage

    graph = TopologyGraph(toy_bank.organs)  # every pair disjoint
    placer = OrganPlacer(toy_bank, graph=graph, patch_size=PATCH, jitter_scale=1.0, **RIGID)
    audit = InsertAudit(toy_bank.num_classes)
    placer.observers.append(audit)
    clipped = 0
    for seed in range(12):
        audit.reset()
        label, record = placer(np.random.RandomState(seed), _toy_center(toy_bank))
        assert audit.taken[:, 1:].sum() == 0  # no organ took a voxel of another (all pairs are disjoint)
        label = label.numpy()
        for p in record.placed:
            mask = label == p.class_id
            own = [int(s.mask.sum()) for s in toy_bank.shapes[p.organ] if s.subject == p.subject]
            if p.organ not in record.stand_ins and p.voxels < own[0]:  # clipped: at most _CLIP_FRACTION lost
                clipped += 1
                assert p.voxels >= (1 - placement._CLIP_FRACTION) * own[0], (seed, p.organ)
                assert ndimage.label(mask, np.ones((3, 3, 3)))[1] == 1, (seed, p.organ)  # still one piece
    assert clipped > 0


def test_clipping_keeps_a_one_voxel_gap_to_the_disjoint_organ():
    """What a clipped candidate gives up is the disjoint organ's voxels grown by one, so it never ends flush against
    an organ it must not touch (the validation report counts such contacts)."""
    mask = torch.zeros(7, 7, 7, dtype=torch.bool)
    mask[3, 3, 3] = True
    grown = dilate(mask)
    assert int(grown.sum()) == 27 and bool(grown[2:5, 2:5, 2:5].all()) and grown.shape == mask.shape
    edge = torch.zeros(4, 4, 4, dtype=torch.bool)
    edge[0, 0, 0] = True
    assert int(dilate(edge).sum()) == 8  # no wrap-around at the border


def test_split_agrees_with_counting_the_pieces():
    """The local shortcut of ``split`` answers as counting the 26-connected pieces in full does."""
    from scipy import ndimage

    structure = np.ones((3, 3, 3))
    rng = np.random.RandomState(0)
    answers = set()
    for _ in range(150):
        mask = ndimage.binary_dilation(rng.uniform(size=(14, 14, 14)) > 0.97, iterations=int(rng.randint(1, 3)))
        removed = ndimage.binary_dilation(rng.uniform(size=mask.shape) > 0.995, iterations=int(rng.randint(0, 3)))
        kept = mask & ~removed
        expected = ndimage.label(kept, structure)[1] > ndimage.label(mask, structure)[1]
        assert split(torch.from_numpy(kept), torch.from_numpy(mask)) == expected
        answers.add(expected)
    assert answers == {True, False}  # both outcomes were exercised
    rod = torch.zeros((3, 9, 3), dtype=torch.bool)
    rod[1, :, 1] = True
    cut = rod.clone()
    cut[1, 4, 1] = False
    assert split(cut, rod) and not split(rod, rod)


def test_shared_warp_moves_every_organ_as_part_of_one_layout():
    """Under a patch-wide warp alone, an organ's centroid lands where the warp about the patch centre sends it."""
    cube = prepare_shape(_shape(np.ones((5, 5, 5), dtype=bool)))
    rng = np.random.RandomState(0)
    shared = draw_shared_warp(rng, (0.9, 1.1), np.deg2rad(8.0))
    params = draw_warp_params(rng, (1.0, 1.0), 0.0, 0.0, shared=shared)
    centre = (np.asarray(PATCH) - 1) / 2
    for pos in ([10.0, 12.0, 31.5], [50.0, 40.0, 20.0]):
        warp = build_warp(cube, np.asarray(pos), params, PATCH)
        mask = sample_shape(cube, warp).numpy() != 0
        centroid = np.argwhere(mask).mean(axis=0) + warp.lo
        np.testing.assert_allclose(centroid, centre + shared @ (np.asarray(pos) - centre), atol=0.75)


# ------------------------------------------------------------------------------------------ retries and indents


def test_a_retry_follows_the_subject_of_the_organ_it_collided_with(bank, anchors, graph):
    """After a collision, the next candidate takes the neighbour's subject's shape, where that subject has it
    relative to the placed neighbour."""
    placer = OrganPlacer(bank, anchors, graph, patch_size=PATCH)
    liver = bank.class_id("liver")
    for subject in placer.donor_shapes["gallbladder"]:
        if subject not in placer.donor_shapes["liver"]:
            continue
        liver_mm = np.array([10.0, -20.0, 30.0])
        shape, expected = placer.draw.guide("gallbladder", liver, {liver: (subject, liver_mm)})
        assert shape is placer.donor_shapes["gallbladder"][subject]
        own = anchors.subject_position(bank.class_id("gallbladder") - 1, subject)
        np.testing.assert_allclose(expected - liver_mm, own - anchors.subject_position(liver - 1, subject))
    no_gallbladder = next(s for s in bank.subjects if s not in placer.donor_shapes["gallbladder"])
    assert placer.draw.guide("gallbladder", liver, {liver: (no_gallbladder, np.zeros(3))}) is None


def test_small_organs_indent_large_adjacent_ones_within_the_limits(toy_bank):
    """Over the carve limit, a new organ keeps the voxels it shares with an adjacent organ only if they are at most
    indent_fraction of that organ, and at most max_embed_fraction of itself."""
    graph = TopologyGraph(toy_bank.organs, default=ADJACENT)
    big, small = toy_bank.organs[0], toy_bank.organs[1]
    canvas = torch.zeros(PATCH, dtype=torch.uint8)
    canvas[10:40, 10:40, 10:40] = toy_bank.class_id(big)  # 27,000 voxels
    existing = torch.full((1000,), toy_bank.class_id(big), dtype=torch.long)  # a 1,000-voxel organ fully inside
    placer = OrganPlacer(toy_bank, graph=graph, patch_size=PATCH, indent_fraction=0.05, max_embed_fraction=1.0)
    sizes = lambda: torch.bincount(canvas.flatten(), minlength=toy_bank.num_classes)  # noqa: E731
    verdict = placer.rules.check(existing, toy_bank.class_id(small), 1000, [], sizes=sizes)
    assert verdict.violation is None and verdict.indents and verdict.overwritten == verdict.carved == 0
    assert bool(placer.rules.protected(existing, toy_bank.class_id(small), indents=True).any()) is False
    strict = OrganPlacer(toy_bank, graph=graph, patch_size=PATCH, indent_fraction=0.02, max_embed_fraction=1.0)
    refused = strict.rules.check(existing, toy_bank.class_id(small), 1000, [], sizes=sizes).violation
    assert refused.kind == ADJACENT_OVERLAP and refused.neighbour == toy_bank.class_id(big)  # 1000 > 2 % of 27,000
    shallow = OrganPlacer(toy_bank, graph=graph, patch_size=PATCH, indent_fraction=0.05, max_embed_fraction=0.9)
    assert shallow.rules.check(existing, toy_bank.class_id(small), 1000, [], sizes=sizes).violation is not None
    never = OrganPlacer(toy_bank, graph=graph, patch_size=PATCH, indent_fraction=0.0)
    assert never.rules.check(existing, toy_bank.class_id(small), 1000, [], sizes=sizes).violation is not None


def test_no_topology_lets_later_organs_overwrite_what_the_default_keeps(bank, anchors, graph):
    """``use_topology=False``: no candidate is rejected and disjoint organs overlap, which the default never does."""
    center = _center(anchors, bank, "kidney_right")
    taken = {}
    for use_topology in (True, False):
        audit = InsertAudit(bank.num_classes)
        placer = OrganPlacer(bank, anchors, graph, patch_size=PATCH, use_topology=use_topology, observers=[audit])
        disjoint, skipped = 0, 0
        codes = graph.code_table()
        for seed in range(4):
            audit.reset()
            _, record = placer(np.random.RandomState(seed), center)
            skipped += len(record.skipped)
            disjoint += int(audit.taken[1:, 1:][codes[1:, 1:] == CODE_DISJOINT].sum())
        taken[use_topology] = (disjoint, skipped)
    assert taken[True][0] == 0 and taken[False][0] > 0
    assert taken[False][1] == 0


def test_no_anchors_breaks_the_left_right_and_up_down_layout_that_anchors_keep(bank, anchors, graph):
    """``use_anchors=False`` places organs uniformly in the patch: organ pairs lie in any order along each axis,
    where the anchors keep the order of their mean positions (pairs more than 30 mm apart on that axis)."""
    center = _center(anchors, bank, "pancreas")
    agreement = {}
    for use_anchors in (True, False):
        placer = OrganPlacer(bank, anchors, graph, patch_size=(96, 96, 96), use_anchors=use_anchors)
        agree = total = 0
        for seed in range(8):
            _, record = placer(np.random.RandomState(seed), center)
            for a in record.placed:
                for b in record.placed:
                    apart = anchors.mean_mm[a.class_id - 1] - anchors.mean_mm[b.class_id - 1]
                    for axis in np.flatnonzero(apart > 30.0):
                        total += 1
                        agree += a.position_mm[axis] > b.position_mm[axis]
        agreement[use_anchors] = agree / total
    assert agreement[True] > 0.9 and agreement[False] < 0.7, agreement  # measured: 0.96 and 0.51
