"""Realism report: per-patch statistics, real patch windows, organ mapping, distances and the report itself."""

from __future__ import annotations

import json

import _synthetic_labels as syn
import numpy as np
import pytest

from synth_transforms import RandAnatomyLabel, ShapeBank
from synth_transforms.io import read_class_map, read_label_map
from synth_transforms.realism import (
    STATISTICS,
    PatchSet,
    _common_support,
    compare,
    draw_patch_center,
    format_realism,
    patch_statistics,
    realism_report,
    reference_patches,
)

SIZE = 16  # 24 mm patches in the 48 x 48 x 50 voxel grids of the synthetic subjects


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(bank, {subject: label path}, class map path)`` of the two synthetic subjects."""
    return syn.build_bank(tmp_path_factory.mktemp("realism"))


@pytest.fixture(scope="module")
def tiny_report(tiny):
    bank, paths, class_map = tiny
    return realism_report(paths, class_map, n=24, n_real=12, seed=3, patch_size=SIZE, bank=bank, min_samples=2)


# ---------------------------------------------------------------------------------------------- one patch
def test_patch_statistics_counts_centroids_and_face_contacts():
    label = np.zeros((6, 6, 6), dtype=np.uint8)
    label[0:2, 0:2, 0:2] = 1  # 8 voxels, centroid (0.5, 0.5, 0.5)
    label[2:4, 0:2, 0:2] = 2  # shares the face x = 1|2 with class 1
    label[5, 5, 5] = 3  # alone in the far corner
    label[4, 2, 2] = 4  # touches class 2 only along an edge (diagonal): no face contact
    counts, centroids, touch = patch_statistics(label, num_classes=6, spacing=2.0)
    assert counts.tolist() == [216 - 18, 8, 8, 1, 1, 0]
    np.testing.assert_allclose(centroids[1], [1.0, 1.0, 1.0])  # voxel 0.5 at 2 mm
    np.testing.assert_allclose(centroids[2], [5.0, 1.0, 1.0])
    assert np.isnan(centroids[5]).all() and not np.isnan(centroids[0]).any()
    assert {tuple(p) for p in np.argwhere(touch)} == {(1, 2)}  # background and diagonal neighbours excluded


def test_patch_statistics_accepts_a_channel_and_refuses_out_of_range_ids():
    label = np.zeros((1, 4, 4, 4), dtype=np.int64)
    label[0, 1, 1, 1] = 2
    assert patch_statistics(label, 3)[0].tolist() == [63, 0, 1]
    with pytest.raises(ValueError, match=r"0\.\.2"):
        patch_statistics(label + 3, 3)


def test_draw_patch_center_makes_the_draw_of_rand_anatomy_label(tiny):
    bank = tiny[0]
    maker = RandAnatomyLabel(bank=bank, patch_size=SIZE).set_random_state(11)
    maker.randomize()
    rng = np.random.RandomState(11)
    donor = bank.subjects[rng.randint(len(bank.subjects))]
    assert donor == maker._donor
    anchors = maker.placer.anchors
    centers = [anchors.expected_position(i, None, donor) for i in maker.center_ids[donor]]
    np.testing.assert_array_equal(draw_patch_center(rng, centers, maker.placer.extent_mm), maker._center)


def test_draw_patch_center_stays_within_a_quarter_patch_of_a_centre():
    rng = np.random.RandomState(0)
    centers = np.array([[0.0, 0.0, 0.0], [100.0, 100.0, 100.0]])
    drawn = np.array([draw_patch_center(rng, centers, [40.0, 80.0, 120.0]) for _ in range(200)])
    nearest = centers[(drawn[:, 0] > 50).astype(int)]
    assert np.all(np.abs(drawn - nearest) <= [10.0, 20.0, 30.0])
    assert len(np.unique(drawn[:, 0] > 50)) == 2  # both centres are drawn


# ---------------------------------------------------------------------------------------------- distances
def _patch_set(labels: list[np.ndarray], nc: int) -> PatchSet:
    return PatchSet.from_patches([patch_statistics(lab, nc) for lab in labels], spacing=1.0)


def test_compare_is_zero_against_itself_and_reads_rates_and_offsets():
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    a[0, 0, 0], a[0, 0, 1] = 1, 2  # 1 and 2 touch, 2 sits +1 voxel in z from 1
    b = np.zeros((4, 4, 4), dtype=np.uint8)
    b[0, 0, 0], b[0, 0, 3] = 1, 2  # apart, +3 voxels in z
    organs = ["one", "two", "three"]
    same = _patch_set([a, a, b], 4)
    for stat in compare(same, same, organs, min_samples=1).values():
        assert stat["summary"] in (0.0, None)
    result = compare(_patch_set([a, a], 4), _patch_set([b, b], 4), organs, min_samples=1)
    assert result["presence"]["items"] == {"one": 0.0, "two": 0.0, "three": 0.0}
    assert result["contact"]["items"] == {"one|two": 1.0}  # always touching vs never
    assert result["centroid_offset"]["items"]["one|two"] == pytest.approx(2.0 / 3.0)  # 2 mm on z, 0 on x and y
    assert result["organs_per_patch"]["summary"] == 0.0
    fewer = compare(_patch_set([a], 4), _patch_set([b, b], 4), organs, min_samples=2)
    assert fewer["centroid_offset"]["items"] == {} and fewer["volume"]["summary"] is None  # too few samples


def test_fold_summaries_use_the_items_defined_in_every_comparison():
    fold = {
        "loso": {"volume": {"items": {"liver": 0.2, "lung_left": None}}},
        "synthetic": {"volume": {"items": {"liver": 0.4, "lung_left": 0.9}}},
    }
    _common_support(fold)
    assert fold["loso"]["volume"]["summary"] == 0.2 and fold["synthetic"]["volume"]["summary"] == 0.4


def test_compare_agnostic_skips_organ_identity_statistics():
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    a[0, 0, 0] = 1
    result = compare(_patch_set([a], 3), _patch_set([a], 3), ["x", "y"], agnostic=True)
    assert set(result) == {name for name, (_, _, agnostic) in STATISTICS.items() if agnostic}


# ---------------------------------------------------------------------------------------------- real patches
def test_reference_patches_map_classes_by_the_bank_rules_and_keep_windows_inside(tiny):
    bank, paths, class_map = tiny
    patches, info = reference_patches(paths, class_map, bank, n=15, seed=1, patch_size=SIZE)
    assert len(patches) == 30 and sorted(set(patches.group.tolist())) == [0, 1]
    assert info["subjects"] == ["syn1", "syn2"] and info["outside_fov_fraction"] == 0.0
    assert patches.counts.shape[1] == bank.num_classes  # the table class is background, not an organ
    # every window keeps its centre organ: no patch is empty
    assert (patches.counts[:, 1:].sum(axis=1) > 0).all()
    ids = read_class_map(class_map)
    labels, _ = read_label_map(paths["syn1"], spacing=bank.spacing)
    block_b = np.isin(labels, [i for i, name in ids.items() if name.startswith("block_b")])
    for row, (_, x, y, z) in enumerate(info["windows"][:15]):
        window = (slice(x, x + SIZE), slice(y, y + SIZE), slice(z, z + SIZE))
        assert 0 <= min(x, y, z) and max(x + SIZE, y + SIZE, z + SIZE) <= min(labels.shape)
        assert patches.counts[row, bank.class_id("block_b")] == block_b[window].sum()  # front + back merged


def test_reference_patches_are_reproducible_and_follow_the_seed(tiny):
    bank, paths, class_map = tiny
    first = reference_patches(paths, class_map, bank, n=5, seed=4, patch_size=SIZE)[1]["windows"]
    again = reference_patches(paths, class_map, bank, n=5, seed=4, patch_size=SIZE)[1]["windows"]
    other = reference_patches(paths, class_map, bank, n=5, seed=5, patch_size=SIZE)[1]["windows"]
    assert first == again and first != other


def test_reference_patches_pad_a_patch_larger_than_the_grid(tiny):
    bank, paths, class_map = tiny
    depth = read_label_map(paths["syn1"], spacing=bank.spacing)[0].shape[2]
    assert depth < 64
    _, shifted = reference_patches({"syn1": paths["syn1"]}, class_map, bank, n=4, patch_size=(16, 16, 64))
    assert shifted["outside_fov_fraction"] == pytest.approx(1 - depth / 64, abs=1e-4)  # the window spans z whole
    _, padded = reference_patches(paths, class_map, bank, n=6, patch_size=24, outside="pad")
    assert padded["shifted_into_fov_fraction"] == 0.0 and padded["outside_fov_fraction"] > 0


def test_reference_patches_organ_subset_and_custom_merge_rules(tiny):
    bank, paths, class_map = tiny
    subset, _ = reference_patches(paths, class_map, bank, n=6, patch_size=SIZE, organs=["block_a", "block_b"])
    others = [bank.class_id(o) for o in bank.organs if o not in ("block_a", "block_b")]
    assert subset.counts[:, others].sum() == 0 and subset.counts[:, bank.class_id("block_a")].sum() > 0
    rules = {"block_a": ["block_a"], "block_b": ["block_b_front"]}  # the back half is left out
    front, info = reference_patches(
        paths, class_map, bank, n=6, patch_size=SIZE, organs=["block_a", "block_b"], organ_classes=rules
    )
    assert front.counts[:, bank.class_id("block_b")].sum() < subset.counts[:, bank.class_id("block_b")].sum()


def test_reference_patches_errors_name_the_problem(tiny, tmp_path):
    bank, paths, class_map = tiny
    renamed = {k: ("lobe_l" if v == "lobe_left" else v) for k, v in syn.CLASS_MAP.items()}
    with pytest.raises(ValueError, match=r"organ 'lobe_left' is made of classes \['lobe_left'\]"):
        reference_patches(paths, syn.write_class_map(tmp_path / "renamed.json", renamed), bank, n=2, patch_size=SIZE)
    short = {k: v for k, v in syn.CLASS_MAP.items() if v != "table"}
    with pytest.raises(ValueError, match=r"labels\.nii\.gz: ids \[3\] are not in the class map"):
        reference_patches(paths, short, bank, n=2, patch_size=SIZE)
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        reference_patches([tmp_path / "x" / "missing.nii.gz"], class_map, bank, n=2, patch_size=SIZE)
    with pytest.raises(KeyError, match="'liver' is not in this shape bank"):
        reference_patches(paths, class_map, bank, n=2, patch_size=SIZE, organs=["liver"])
    with pytest.raises(ValueError, match="outside must be one of"):
        reference_patches(paths, class_map, bank, n=2, patch_size=SIZE, outside="crop")


# ---------------------------------------------------------------------------------------------- the report
def test_realism_report_has_every_statistic_with_its_baselines(tiny_report):
    report = tiny_report
    assert report["settings"]["n"] == 24 and report["reference"]["subjects"] == ["syn1", "syn2"]
    assert "windows" not in report["reference"]
    assert list(report["statistics"]) == list(STATISTICS)
    for stat, row in report["statistics"].items():
        assert row["loso"] is not None and row["synthetic"] is not None and row["synthetic_all"] is not None
        applies = STATISTICS[stat][2]
        assert (row["primitives"] is not None) == applies and (row["primitives_all"] is not None) == applies
        assert all(row[c] >= 0 for c in ("loso", "synthetic", "synthetic_all"))
    assert set(report["organs"]) == set(syn.ORGANS)
    assert {"real", "synthetic", "primitives"} == set(report["sets"])
    assert report["sets"]["real"]["patches"] == 24
    json.dumps(report)  # JSON-serialisable


def test_realism_report_is_deterministic_and_loso_needs_two_subjects(tiny, tiny_report):
    bank, paths, class_map = tiny
    again = realism_report(paths, class_map, n=24, n_real=12, seed=3, patch_size=SIZE, bank=bank, min_samples=2)
    assert again["statistics"] == tiny_report["statistics"] and again["organs"] == tiny_report["organs"]
    one = realism_report(
        {"syn1": paths["syn1"]}, class_map, n=6, n_real=6, patch_size=SIZE, bank=bank, primitives=False
    )
    row = one["statistics"]["presence"]
    assert row["loso"] is None and row["synthetic"] is None and row["synthetic_all"] is not None
    assert "primitives" not in one["sets"]


def test_realism_report_organ_subset_compares_only_those_organs(tiny):
    bank, paths, class_map = tiny
    report = realism_report(
        paths, class_map, n=8, n_real=4, patch_size=SIZE, bank=bank, organs=["block_a", "block_b"], primitives=False
    )
    assert set(report["organs"]) == {"block_a", "block_b"} and set(report["pairs"]) <= {"block_a|block_b"}
    presence = [row["distance"]["presence"]["synthetic_all"] for row in report["organs"].values()]
    assert report["statistics"]["presence"]["synthetic_all"] == pytest.approx(np.mean(presence), abs=1e-4)


def test_realism_report_checks_its_arguments(tiny):
    bank, paths, class_map = tiny
    with pytest.raises(ValueError, match="realism: n must be an integer >= 1"):
        realism_report(paths, class_map, n=0, bank=bank)
    with pytest.raises(ValueError, match="realism: patch_size"):
        realism_report(paths, class_map, patch_size=(16, 16), bank=bank)
    with pytest.raises(ValueError, match="realism: primitives must be True or False"):
        realism_report(paths, class_map, primitives="false", bank=bank)


def test_format_realism_prints_the_table(tiny_report):
    text = format_realism(tiny_report)
    for what, distance, _ in STATISTICS.values():
        assert what in text and distance in text
    assert "real LOSO" in text and "syn1, syn2" in text
    for organ in syn.ORGANS:
        assert organ in text
    presence = tiny_report["statistics"]["presence"]
    line = next(line for line in text.splitlines() if line.strip().startswith("organ presence rate"))
    assert f"{presence['loso']:.3f}" in line and f"{presence['synthetic']:.3f}" in line


def test_real_subject_lungs_are_their_lobes_merged(shared_data_dir):
    """One real subject, few patches: the default bank's rules merge TotalSegmentator's lobes into the lungs."""
    from synth_transforms import load_bank

    root = shared_data_dir / "shape_bank_subjects"
    path = root / "s0004" / "label_total117.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    bank, class_map = load_bank(), root / "class_map_totalseg_v2_total.json"
    patches, info = reference_patches({"s0004": path}, class_map, bank, n=6, seed=0, patch_size=48)
    assert set(info["center_organs"]["s0004"]) == set(bank.organs)  # chest to pelvis: every organ is there
    labels, _ = read_label_map(path, spacing=bank.spacing)
    ids = {name: i for i, name in read_class_map(class_map).items()}
    lobes = [ids[c] for c in bank.source["organs"]["lung_right"]]
    assert len(lobes) == 3
    for row, (_, x, y, z) in enumerate(info["windows"]):
        window = labels[x : x + 48, y : y + 48, z : z + 48]
        assert patches.counts[row, bank.class_id("lung_right")] == np.isin(window, lobes).sum()
    assert (patches.counts[:, 1:].sum(axis=1) > 0).all()


def test_holdout_banks_compare_synthesis_without_a_subject_to_that_subject(tiny, tmp_path):
    bank, paths, class_map = tiny
    report = realism_report(
        paths,
        class_map,
        n=24,
        n_real=12,
        patch_size=SIZE,
        bank=bank,
        min_samples=2,
        primitives=False,
        holdout_banks=True,
    )
    for stat, row in report["statistics"].items():
        assert row["synthetic_holdout"] is not None, stat
    assert "held-out" in format_realism(report)
    no_ball = syn.label_array()
    no_ball[no_ball == syn.ID["far_ball"]] = 0
    lonely = {"syn1": paths["syn1"], "noball": syn.write_nifti(tmp_path / "noball" / "labels.nii.gz", no_ball)}
    full = ShapeBank.build(lonely, class_map, organs=syn.ORGANS, mirror_pairs=syn.MIRROR_PAIRS)
    with pytest.raises(ValueError, match="the bank without subject 'syn1' cannot be built"):
        realism_report(lonely, class_map, n=4, n_real=2, patch_size=SIZE, bank=full, holdout_banks=True)
