"""Tests of the spatial anchors (synth_transforms.anchors): the shared frame, relative anchors, sampling, JSON."""

import json

import _synthetic_labels as syn
import numpy as np
import pytest

from synth_transforms import AnchorModel, ShapeBank, load_bank


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return syn.build_bank(tmp_path_factory.mktemp("synthetic"))[0]


@pytest.fixture(scope="module")
def default_bank():
    return load_bank()


@pytest.fixture(scope="module")
def default_anchors(default_bank):
    return AnchorModel.from_bank(default_bank)


def test_frame_removes_a_known_translation(bank):
    anchors = AnchorModel.from_bank(bank, relative={})
    # syn2's objects sit SHIFT_VOX = (4, 4, 3) voxels further along i, j, k of the LPS file: in RAS millimetres
    # that is (-3, -3, +7.5); the subjects' own centroids differ by exactly that
    shift_mm = np.array([-3.0, -3.0, 7.5])
    raw = {s.subject: s.centroid_mm for s in bank.measured_shapes("block_a")}
    np.testing.assert_allclose(raw["syn2"] - raw["syn1"], shift_mm, atol=1e-6)
    offsets = {s: np.asarray(v) for s, v in anchors.subject_offsets_mm.items()}
    np.testing.assert_allclose(offsets["syn2"] - offsets["syn1"], shift_mm, atol=1e-3)
    # in the frame both subjects agree on every organ, so the spread is the floor
    np.testing.assert_allclose(anchors.subject_positions_mm["syn1"], anchors.subject_positions_mm["syn2"], atol=1e-6)
    np.testing.assert_allclose(anchors.std_mm, 4.0)
    np.testing.assert_allclose(anchors.mean_mm, anchors.subject_positions_mm["syn1"], atol=1e-6)
    # the frame keeps the layout: relative positions are the measured ones
    a, b = bank.organs.index("block_a"), bank.organs.index("block_b")
    np.testing.assert_allclose(anchors.mean_mm[b] - anchors.mean_mm[a], [-12.0, 0.0, 0.0], atol=1e-6)


def test_frame_spread_reflects_real_variation(tmp_path):
    # a third subject whose core alone moves 6 mm: the core's spread grows, the rest stays aligned
    paths, class_map = syn.write_subjects(tmp_path, {"syn1": (0, 0, 0), "syn2": syn.SHIFT_VOX, "syn3": (0, 0, 0)})
    moved = syn.label_array()
    core = moved == syn.ID["core"]
    moved[core] = syn.ID["capsule"]
    moved[np.roll(core, 8, axis=1)] = syn.ID["core"]  # 8 x 0.75 mm = 6 mm along j (posterior)
    syn.write_nifti(paths["syn3"], moved)
    anchors = AnchorModel.from_bank(ShapeBank.build(paths, class_map, syn.ORGANS), relative={}, min_std_mm=0.5)
    spread = dict(zip(syn.ORGANS, anchors.std_mm[:, 1], strict=True))
    assert spread["core"] > 2.0 and spread["block_a"] < 1.0


def test_relative_anchor_follows_the_placed_parent(default_bank, default_anchors):
    child, parent = default_bank.class_id("gallbladder") - 1, default_bank.class_id("liver") - 1
    assert default_anchors.parent[child] == parent
    anchor = default_anchors.expected_position(child)
    np.testing.assert_allclose(anchor, default_anchors.mean_mm[parent] + default_anchors.offset_mean_mm[child])
    placed = default_anchors.mean_mm[parent] + np.array([7.0, -3.0, 11.0])
    moved = default_anchors.expected_position(child, {parent: placed})
    np.testing.assert_allclose(moved - anchor, [7.0, -3.0, 11.0])
    for subject in default_bank.subjects:  # a donor subject's own child-parent offset, from where the parent went
        own = default_anchors.expected_position(child, {parent: placed}, subject)
        positions = default_anchors.subject_positions_mm[subject]
        if not np.isnan(positions[child]).any():
            np.testing.assert_allclose(own, placed + positions[child] - positions[parent])
    rng = np.random.RandomState(0)
    draws = np.array([default_anchors.sample(child, rng, 1.0, {parent: placed})[0] for _ in range(200)])
    np.testing.assert_allclose(draws.mean(axis=0), moved, atol=3 * default_anchors.offset_std_mm[child].max())
    absolute = default_bank.class_id("spleen") - 1
    assert default_anchors.parent[absolute] == -1
    np.testing.assert_allclose(
        default_anchors.expected_position(absolute, {parent: placed}), default_anchors.mean_mm[absolute]
    )


def test_custom_relative_anchor(bank):
    anchors = AnchorModel.from_bank(bank, relative={"core": "capsule"})
    core, capsule = bank.organs.index("core"), bank.organs.index("capsule")
    assert anchors.parent.tolist() == [-1, -1, -1, -1, capsule, -1, -1]
    np.testing.assert_allclose(anchors.offset_mean_mm[core], 0.0, atol=1e-6)  # the core sits at the capsule's centre
    np.testing.assert_allclose(anchors.expected_position(core, {capsule: np.array([1.0, 2.0, 3.0])}), [1, 2, 3])
    with pytest.raises(KeyError, match="kidney"):
        AnchorModel.from_bank(bank, relative={"core": "kidney"})


@pytest.mark.parametrize("jitter_scale", [0.0, 0.5, 1.5])
def test_samples_stay_within_tolerance(default_bank, default_anchors, jitter_scale):
    rng = np.random.RandomState(1)
    for index in range(len(default_bank.organs)):
        tolerance = default_anchors.tolerance_mm(index, jitter_scale)
        np.testing.assert_allclose(tolerance, 2.0 * jitter_scale * default_anchors.spread(index))
        subject = default_bank.subjects[index % 5]
        draws = []
        for _ in range(300):
            position, expected = default_anchors.sample(index, rng, jitter_scale, subject=subject)
            np.testing.assert_array_equal(expected, default_anchors.expected_position(index, subject=subject))
            draws.append(position - expected)
        deviation = np.abs(np.array(draws))
        assert np.all(deviation <= tolerance + 1e-9), default_bank.organs[index]
        if jitter_scale > 0:  # the truncation is reached (clipped draws), and the jitter is not degenerate
            assert np.all(deviation.max(axis=0) > 0.99 * tolerance)
            assert np.all(np.array(draws).std(axis=0) > 0.3 * jitter_scale * default_anchors.spread(index))


def test_sampling_uses_only_the_given_generator(default_anchors):
    np.random.seed(0)
    a = default_anchors.sample(3, np.random.RandomState(7), 1.0)[0]
    np.random.seed(1)
    b = default_anchors.sample(3, np.random.RandomState(7), 1.0)[0]
    np.testing.assert_array_equal(a, b)


def test_json_round_trip(default_bank, default_anchors, tmp_path):
    path = tmp_path / "anchors.json"
    default_anchors.save(path)
    data = json.loads(path.read_text())
    assert list(data["organs"]) == default_bank.organs
    assert data["organs"]["gallbladder"]["parent"] == "liver"
    loaded = AnchorModel.load(path, default_bank.organs)
    assert loaded.organs == default_anchors.organs and loaded.max_sigma == default_anchors.max_sigma
    np.testing.assert_array_equal(loaded.parent, default_anchors.parent)
    for key in ["mean_mm", "std_mm", "offset_mean_mm", "offset_std_mm"]:
        np.testing.assert_allclose(getattr(loaded, key), getattr(default_anchors, key), atol=1e-3)
    assert loaded.subject_offsets_mm == default_anchors.subject_offsets_mm
    # a loaded model anchors organs where the saved one did, donor subjects included
    for index in range(len(default_bank.organs)):
        for subject in [None, *default_bank.subjects]:
            np.testing.assert_allclose(
                loaded.expected_position(index, subject=subject),
                default_anchors.expected_position(index, subject=subject),
                atol=2e-3,
            )


def test_hand_edited_json(default_bank, default_anchors, tmp_path):
    data = default_anchors.to_dict()
    data["organs"]["spleen"]["mean_mm"] = [1.0, 2.0, 3.0]
    data["organs"]["stomach"]["parent"] = "spleen"
    data.pop("subject_offsets_mm")
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    loaded = AnchorModel.load(path, default_bank.organs)
    spleen, stomach = default_bank.class_id("spleen") - 1, default_bank.class_id("stomach") - 1
    np.testing.assert_array_equal(loaded.mean_mm[spleen], [1.0, 2.0, 3.0])
    assert loaded.parent[stomach] == spleen


def _write_edited(default_anchors, path, edit):
    data = default_anchors.to_dict()
    edit(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["organs"].pop("liver"), r"missing \['liver'\]"),
        (lambda d: d["organs"].update(appendix=d["organs"]["liver"]), r"unknown \['appendix'\]"),
        (lambda d: d["organs"]["gallbladder"].update(parent="appendix"), "'gallbladder' has unknown parent 'appendix'"),
        (lambda d: d["organs"]["liver"].update(mean_mm=[1.0, 2.0]), "'mean_mm'"),
        (lambda d: d["organs"]["liver"].pop("std_mm"), "'std_mm'"),
        (lambda d: d.pop("organs"), "'organs'"),
    ],
    ids=["missing-organ", "unknown-organ", "unknown-parent", "short-vector", "missing-key", "no-organs"],
)
def test_load_errors(default_bank, default_anchors, tmp_path, edit, message):
    path = _write_edited(default_anchors, tmp_path / "bad_anchors.json", edit)
    with pytest.raises(ValueError, match=message) as info:
        AnchorModel.load(path, default_bank.organs)
    assert "bad_anchors.json" in str(info.value)


def test_load_errors_for_files(default_bank, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        AnchorModel.load(tmp_path / "absent.json", default_bank.organs)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="broken.json"):
        AnchorModel.load(broken, default_bank.organs)


def test_relative_anchor_needs_both_organs_somewhere(tmp_path):
    # core only in syn1, capsule only in syn2: no subject shows their offset
    paths, class_map = syn.write_subjects(tmp_path)
    for subject, drop in [("syn1", "capsule"), ("syn2", "core")]:
        labels = syn.label_array(syn.SHIFT_VOX if subject == "syn2" else (0, 0, 0))
        labels[labels == syn.ID[drop]] = 0
        syn.write_nifti(paths[subject], labels)
    bank = ShapeBank.build(paths, class_map, syn.ORGANS)
    with pytest.raises(ValueError, match="core -> capsule"):
        AnchorModel.from_bank(bank, relative={"core": "capsule"})


def test_foreign_organ_names_keep_relative_anchors(tmp_path):
    # an AMOS-style label set: "right adrenal gland" follows "kidney_R", "gall bladder" follows "liver"
    paths, class_map = syn.write_amos_subjects(tmp_path)
    organs = list(syn.AMOS_CLASS_MAP.values())
    anchors = AnchorModel.from_bank(ShapeBank.build(paths, class_map, organs))
    parents = {o: organs[p] for o, p in zip(organs, anchors.parent, strict=True) if p >= 0}
    assert parents == {"gall bladder": "liver", "left adrenal gland": "kidney_L", "right adrenal gland": "kidney_R"}
    # the adrenal sits on top of its kidney in both subjects: the measured offset, in mm
    child, parent = organs.index("left adrenal gland"), organs.index("kidney_L")
    np.testing.assert_allclose(anchors.offset_mean_mm[child], anchors.mean_mm[child] - anchors.mean_mm[parent])
    # anchors named at build time are the bank's; None there means absolute anchors only
    named = ShapeBank.build(paths, class_map, organs, relative_anchors={"colon": "liver"})
    assert AnchorModel.from_bank(named).parent.tolist() == [-1] * 6 + [0]
    absolute = ShapeBank.build(paths, class_map, organs, relative_anchors=None)
    assert (AnchorModel.from_bank(absolute).parent == -1).all()
    with pytest.raises(ValueError, match="cycle"):
        AnchorModel.from_bank(absolute, relative={"liver": "colon", "colon": "liver"})
