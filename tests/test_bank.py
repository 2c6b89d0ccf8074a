"""Tests of the shape bank (synth_transforms.bank): building, measuring, mirroring, saving, loading, bad input."""

import json
import logging
import os
import time

import _synthetic_labels as syn
import numpy as np
import pytest
import torch

from synth_transforms import DEFAULT_BANK_PATH, DEFAULT_ORGANS, RandAnatomySynthd, ShapeBank, load_bank
from synth_transforms.io import read_label_map
from synth_transforms.organ_names import (
    check_mirror_pairs,
    check_relative_anchors,
    find_mirror_pairs,
    find_relative_anchors,
)

BTCV_ORGANS = [
    "spleen",
    "kidney_right",
    "kidney_left",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior_vena_cava",
    "portal_vein_and_splenic_vein",
    "pancreas",
    "adrenal_gland_right",
    "adrenal_gland_left",
]
EXTRA_ORGANS = [
    "duodenum",
    "small_bowel",
    "colon",
    "urinary_bladder",
    "heart",
    "lung_left",
    "lung_right",
    "spine",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``(bank, label paths, class map path)`` of the two synthetic subjects."""
    return syn.build_bank(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def bank(built):
    return built[0]


def _shape(bank, organ, subject="syn1"):
    (shape,) = [s for s in bank.measured_shapes(organ) if s.subject == subject]
    return shape


def _assert_banks_equal(a: ShapeBank, b: ShapeBank) -> None:
    assert a.organs == b.organs and a.subjects == b.subjects and a.spacing == b.spacing
    assert a.source == b.source
    for organ in a.organs:
        assert len(a.shapes[organ]) == len(b.shapes[organ])
        for s, t in zip(a.shapes[organ], b.shapes[organ], strict=True):
            assert t.mask.dtype == bool and np.array_equal(s.mask, t.mask)
            assert (s.organ, s.subject, tuple(s.offset_vox)) == (t.organ, t.subject, tuple(t.offset_vox))
            assert (s.volume_ml, s.truncated, s.mirrored) == (t.volume_ml, t.truncated, t.mirrored)
            assert (s.cut_faces is None) == (t.cut_faces is None) and np.array_equal(s.cut_face_mask, t.cut_face_mask)
            np.testing.assert_allclose(s.centroid_mm, t.centroid_mm, atol=1e-6)
    for subject in a.subjects:
        np.testing.assert_allclose(a.contact[subject], b.contact[subject], atol=1e-6)


# ------------------------------------------------------------------------------------------ build from own labels


def test_organs_classes_and_subjects(bank):
    assert bank.organs == list(syn.ORGANS)
    assert bank.num_classes == len(syn.ORGANS) + 1
    assert [bank.class_id(o) for o in bank.organs] == list(range(1, len(syn.ORGANS) + 1))
    assert bank.subjects == ["syn1", "syn2"] and bank.spacing == 1.5
    assert "table" not in bank.shapes  # in the class map but not in the organ set
    assert bank.source["organs"]["block_b"] == ["block_b_front", "block_b_back"]
    with pytest.raises(KeyError, match="'table'.*far_ball"):
        bank.class_id("table")
    with pytest.raises(KeyError, match="nope"):
        bank.check_organs(["core", "nope"])


def test_volumes_match_analytic(bank):
    for organ, expected in syn.EXPECTED_VOLUME_ML.items():
        for shape in bank.measured_shapes(organ):
            # boxes have edges in whole 1.5 mm steps and come out exact; the ball loses a little to voxelisation
            tolerance = 0.06 if organ == "far_ball" else 1e-6
            assert shape.volume_ml == pytest.approx(expected, rel=tolerance), (organ, shape.subject)
            assert shape.volume_ml == pytest.approx(shape.mask.sum() * 1.5**3 / 1000)
    # the merge rule joined both halves of block_b (one half alone would be 1.08 ml)
    assert _shape(bank, "block_b").volume_ml == pytest.approx(2 * 1.08)


def test_centroids_in_ras_millimetres(bank):
    ras_origin = syn.world_mm((syn.GRID[0] - 1, syn.GRID[1] - 1, 0))  # first voxel of the RAS-ordered grid
    for organ, center_vox in syn.EXPECTED_CENTER_VOX.items():
        expected = syn.world_mm(center_vox) - ras_origin
        # half a 0.75 mm voxel in-plane, half a 1 mm offset of the 1.5 mm samples across 2.5 mm slices
        np.testing.assert_allclose(_shape(bank, organ).centroid_mm, expected, atol=0.6, err_msg=organ)
    # block_b lies at larger i, i.e. further left in the LPS file: 12 mm lower x in RAS; same y and z
    delta = _shape(bank, "block_b").centroid_mm - _shape(bank, "block_a").centroid_mm
    np.testing.assert_allclose(delta, [-12.0, 0.0, 0.0], atol=1e-6)
    # anisotropic slices: the ball is 11.5 slices of 2.5 mm above the blocks' centre
    up = _shape(bank, "far_ball").centroid_mm[2] - _shape(bank, "block_a").centroid_mm[2]
    assert up == pytest.approx((18 - 6.5) * 2.5, abs=0.6)


def test_crops_are_tight_and_located(bank, built):
    _, paths, _ = built
    labels, spacing = read_label_map(paths["syn1"], spacing=1.5)
    assert spacing == pytest.approx((1.5, 1.5, 1.5))
    for organ, parts in syn.ORGANS.items():
        shape = _shape(bank, organ)
        assert shape.mask.dtype == bool
        for axis in range(3):  # every face of the crop touches the organ
            assert shape.mask.take(0, axis=axis).any() and shape.mask.take(-1, axis=axis).any()
        window = tuple(slice(o, o + n) for o, n in zip(shape.offset_vox, shape.mask.shape, strict=True))
        organ_voxels = np.isin(labels, [syn.ID[p] for p in parts])
        assert np.array_equal(organ_voxels[window], shape.mask), organ
        assert organ_voxels.sum() == shape.mask.sum(), organ
        centroid = (np.argwhere(shape.mask).mean(axis=0) + shape.offset_vox) * 1.5
        np.testing.assert_allclose(shape.centroid_mm, centroid)
        assert not shape.truncated and not shape.mirrored


def test_truncated_when_cut_by_the_field_of_view(tmp_path):
    paths, class_map = syn.write_subjects(tmp_path, {"whole": (0, 0, 0), "cut": (-8, 0, 0)})  # i = 0 edge
    bank = ShapeBank.build(paths, class_map, syn.ORGANS, mirror_pairs=None)
    cut = {o: _shape(bank, o, "cut").truncated for o in bank.organs}
    assert cut["block_a"] and cut["far_ball"]
    assert not any(v for o, v in cut.items() if o not in ("block_a", "far_ball"))
    assert not any(_shape(bank, o, "whole").truncated for o in bank.organs)
    assert [s.subject for s in bank.usable_shapes("block_a")] == ["whole"]
    # the file's i = 0 edge is its rightmost column (LPS): in the bank's RAS crops the right face is the cut one
    block_a = _shape(bank, "block_a", "cut")
    assert block_a.cut_faces.tolist() == [[False, True], [False, False], [False, False]]
    assert block_a.cut_face_names == "R" and _shape(bank, "block_a", "whole").cut_face_names == ""
    assert all(s.cut_faces.any() == s.truncated for shapes in bank.shapes.values() for s in shapes)


def test_mirror_pairs_add_flipped_partner_shapes(bank):
    for organ, partner in [("lobe_right", "lobe_left"), ("lobe_left", "lobe_right")]:
        real = bank.measured_shapes(organ)
        mirrored = [s for s in bank.shapes[organ] if s.mirrored]
        assert len(real) == len(mirrored) == 2 and not any(s.mirrored for s in real)
        for stand_in in mirrored:
            source = _shape(bank, partner, stand_in.subject)
            assert stand_in.organ == organ and stand_in.volume_ml == source.volume_ml
            assert np.array_equal(stand_in.mask, source.mask[::-1])  # flipped left-right (RAS x)
            assert not np.array_equal(stand_in.mask, _shape(bank, organ, stand_in.subject).mask)
    assert not any(s.mirrored for o in ["block_a", "core"] for s in bank.shapes[o])


def test_no_mirroring_when_disabled(built):
    _, paths, class_map = built
    bank = ShapeBank.build(paths, class_map, syn.ORGANS, mirror_pairs=None)
    assert not any(s.mirrored for shapes in bank.shapes.values() for s in shapes)


def test_list_inputs(built):
    _, paths, class_map = built
    bank = ShapeBank.build(list(paths.values()), class_map, ["core", "block_a"])
    assert bank.subjects == ["syn1", "syn2"]  # from the parent folders
    assert bank.organs == ["core", "block_a"] and bank.class_id("block_a") == 2
    assert _shape(bank, "core").volume_ml == pytest.approx(syn.EXPECTED_VOLUME_ML["core"])


def test_contact_fractions(bank):
    contact = bank.contact["syn1"]
    a, b, capsule, core = (bank.organs.index(o) for o in ["block_a", "block_b", "capsule", "core"])
    assert contact[core, capsule] == pytest.approx(1.0)  # the core's outer surface is all capsule
    assert 0.1 < contact[a, b] < 0.3 and 0.1 < contact[b, a] < 0.3  # one of six faces
    assert contact[capsule, core] < 0.2  # only the wall of the capsule's cavity touches the core
    assert contact[a, capsule] == 0.0 and contact[capsule, a] == 0.0
    np.testing.assert_array_equal(np.nansum(contact, axis=1) <= 1.0 + 1e-6, True)


# ------------------------------------------------------------------------------------------ foreign label sets


def _amos_bank(root, caplog=None, **kwargs):
    paths, class_map = syn.write_amos_subjects(root)
    if caplog is not None:
        caplog.set_level(logging.INFO, logger="synth_transforms.bank")
    return ShapeBank.build(paths, class_map, list(syn.AMOS_CLASS_MAP.values()), **kwargs)


def test_foreign_names_keep_pairs_and_anchors_and_drop_islands(tmp_path, caplog):
    bank = _amos_bank(tmp_path, caplog)
    # pairs and anchors found from the dataset's own names
    assert bank.mirror_pairs == [("kidney_L", "kidney_R"), ("left adrenal gland", "right adrenal gland")]
    assert bank.relative_anchors == {
        "right adrenal gland": "kidney_R",
        "left adrenal gland": "kidney_L",
        "gall bladder": "liver",
    }
    # the stray kidney_L voxel ~100 mm away is dropped: the crop is the kidney's own box, in both subjects
    kidney = _shape(bank, "kidney_L", "amos1")
    assert kidney.mask.shape == syn.amos_box_dims("kidney_L") == _shape(bank, "kidney_L", "amos2").mask.shape
    assert kidney.mask.sum() == 10 * 12 * 14 - 4 * 4 * 4
    (stand_in,) = [s for s in bank.shapes["kidney_R"] if s.mirrored and s.subject == "amos1"]
    assert np.array_equal(stand_in.mask, kidney.mask[::-1])
    islands = bank.source["build_report"]["islands"]
    assert list(islands) == ["amos1"] and list(islands["amos1"]) == ["kidney_L"]
    dropped = islands["amos1"]["kidney_L"]
    assert (dropped["islands"], dropped["voxels"]) == (1, 1)
    assert dropped["box_mm_after"] == [15.0, 18.0, 21.0] and dropped["box_mm_before"][0] > 70
    # an organ of parts that do not touch keeps both (the smaller is half the size of the larger, not an island)
    colon = _shape(bank, "colon", "amos1")
    assert colon.mask.shape == syn.amos_box_dims("colon") and colon.mask.sum() == 2 * 8 * 10 * 8
    # it says what it did: a warning for the islands, the pairs and anchors in the log and in info()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1 and "1 stray island (1 voxels)" in warnings[0] and "kidney_L of subject amos1" in warnings[0]
    )
    log = "\n".join(r.getMessage() for r in caplog.records)
    for text in ("kidney_L <-> kidney_R", "left adrenal gland -> kidney_L", "amos1 kidney_L: 1 island (1 voxels)"):
        assert text in log and text in bank.info()


def test_islands_kept_when_disabled(tmp_path):
    bank = _amos_bank(tmp_path, island_fraction=0)
    kidney = _shape(bank, "kidney_L", "amos1")
    corner = np.subtract(syn.AMOS_STRAY_VOXEL, kidney.offset_vox)
    assert kidney.mask.shape == (51, 37, 31) and kidney.mask[tuple(corner)]  # stretched to the stray voxel
    assert bank.source["build_report"]["islands"] == {}
    with pytest.raises(ValueError, match="island_fraction must be a number in"):
        _amos_bank(tmp_path, island_fraction=1.5)


@pytest.mark.parametrize(
    "names, pairs",
    [
        (["kidney_left", "liver", "kidney_right"], [("kidney_left", "kidney_right")]),
        (["Kidney_R", "Kidney_L", "lung-l", "lung-r"], [("Kidney_L", "Kidney_R"), ("lung-l", "lung-r")]),
        (["right adrenal gland", "Left Adrenal Gland"], [("Left Adrenal Gland", "right adrenal gland")]),
        (
            ["ovary (left)", "ovary (right)", "lung_left_upper", "lung_right_upper"],
            [("ovary (left)", "ovary (right)"), ("lung_left_upper", "lung_right_upper")],
        ),
        # not pairs: different stems, a side-like letter inside a name, no partner, an ambiguous stem
        (["lung_upper_lobe_left", "lung_lower_lobe_right", "vertebrae_L1", "vertebrae_R1"], []),
        (["l_x_r", "kidney_left", "kidney_l", "kidney_right"], []),
    ],
)
def test_mirror_pairs_found_by_name(names, pairs):
    assert find_mirror_pairs(names) == pairs


def test_default_organs_pair_and_anchor_as_before():
    assert find_mirror_pairs(list(DEFAULT_ORGANS)) == [
        ("kidney_left", "kidney_right"),
        ("adrenal_gland_left", "adrenal_gland_right"),
        ("lung_left", "lung_right"),
    ]
    from synth_transforms.anchors import DEFAULT_RELATIVE_ANCHORS

    assert find_relative_anchors(list(DEFAULT_ORGANS)) == DEFAULT_RELATIVE_ANCHORS


def test_mirror_pairs_and_anchors_named_by_hand(tmp_path):
    bank = _amos_bank(tmp_path, mirror_pairs={"kidney_R": "kidney_L"}, relative_anchors={"colon": "liver"})
    assert bank.mirror_pairs == [("kidney_R", "kidney_L")] and bank.relative_anchors == {"colon": "liver"}
    assert not any(s.mirrored for s in bank.shapes["left adrenal gland"])
    assert len([s for s in bank.shapes["kidney_L"] if s.mirrored]) == 2
    none = _amos_bank(tmp_path, mirror_pairs=None, relative_anchors=None)
    assert none.mirror_pairs == [] and none.relative_anchors == {}
    assert not any(s.mirrored for shapes in none.shapes.values() for s in shapes)


@pytest.mark.parametrize(
    "pairs, message",
    [
        ({"kidney_L": "kidney_right"}, r"\['kidney_right'\] are not organs of this bank; it has: liver"),
        ([("kidney_L", "kidney_R"), ("kidney_R", "colon")], "one pair"),
        ([("kidney_L", "kidney_L")], "one pair"),
        ([("kidney_L",)], "pairs of two organ names"),
        ("yes", "mirror_pairs must be 'auto'"),
    ],
)
def test_mirror_pair_errors(pairs, message):
    with pytest.raises(ValueError, match=message):
        check_mirror_pairs(pairs, list(syn.AMOS_CLASS_MAP.values()))


def test_relative_anchor_errors():
    organs = ["a", "b", "c"]
    assert check_relative_anchors({"a": "b", "b": "c"}, organs) == {"a": "b", "b": "c"}
    with pytest.raises(ValueError, match="cycle: a -> b -> c -> a"):
        check_relative_anchors({"a": "b", "b": "c", "c": "a"}, organs)
    with pytest.raises(ValueError, match="cycle: a -> a"):
        check_relative_anchors({"a": "a"}, organs)
    with pytest.raises(KeyError, match="d"):
        check_relative_anchors({"a": "d"}, organs)


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_thick_slices_warn_and_smooth(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="synth_transforms.bank")
    path = syn.write_blob(tmp_path / "thick" / "blob.nii.gz", voxel_mm=(0.75, 0.75, 5.0))
    bank = ShapeBank.build([path], {1: "blob"}, ["blob"])
    (warning,) = [r.getMessage() for r in caplog.records]
    assert str(path) in warning and "thick slices" in warning and "smoothed" in warning
    assert bank.source["build_report"]["smoothed"] == {"thick": {"axes": "z", "sigma_vox": [1.0, 1.0, 1.667]}}
    assert "smoothed coarse label map: thick (0.75 x 0.75 x 5 mm voxels, along z)" in bank.info()
    # against the true ellipsoid on the bank grid, the smoothed shape beats the nearest-neighbour staircase
    nearest = read_label_map(path, spacing=1.5)[0] == 1
    (shape,) = bank.shapes["blob"]
    smoothed = np.zeros_like(nearest)
    smoothed[tuple(slice(o, o + n) for o, n in zip(shape.offset_vox, shape.mask.shape, strict=True))] = shape.mask
    truth = syn.blob_mask(nearest.shape, (1.5, 1.5, 1.5))
    assert _dice(smoothed, truth) > _dice(nearest, truth) + 0.01
    assert smoothed.sum() == pytest.approx(truth.sum(), rel=0.03)

    # the staircase: along x, the organ's top surface (in the slice y = 20) follows the true one more closely
    def top(mask):
        return mask.shape[2] - np.argmax(mask[:, 20, ::-1], axis=1)

    inside = truth[:, 20].any(axis=1)
    error = {name: np.abs(top(m) - top(truth))[inside].mean() for name, m in [("near", nearest), ("smooth", smoothed)]}
    assert error["smooth"] < 0.75 * error["near"], error


def test_fine_or_matching_voxels_are_not_smoothed(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="synth_transforms.bank")
    path = syn.write_blob(tmp_path / "fine" / "blob.nii.gz", voxel_mm=(1.5, 1.5, 2.5))  # 1.7x: below the 2x bar
    bank = ShapeBank.build([path], {1: "blob"}, ["blob"])
    assert not caplog.records and bank.source["build_report"]["smoothed"] == {}
    assert bank.shapes["blob"][0].mask.sum() == (read_label_map(path, spacing=1.5)[0] == 1).sum()


def test_subject_mostly_cut_by_its_field_of_view(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="synth_transforms.bank")
    cut = syn.amos_array(stray=False)[12:50, :, 4:]  # cuts both kidneys and adrenals, the liver and the colon
    paths, class_map = syn.write_amos_subjects(tmp_path, {"whole": syn.amos_array(stray=False), "cut": cut})
    bank = ShapeBank.build(paths, class_map, list(syn.AMOS_CLASS_MAP.values()))
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "subject cut" in warning and "cuts 6 of its 7 organs" in warning and "kidney_L [L]" in warning
    faces = bank.source["build_report"]["mostly_cut"]["cut"]
    assert faces == {
        "colon": "I",
        "kidney_L": "L",
        "kidney_R": "RI",  # its box starts at z = 4, where the crop begins
        "left adrenal gland": "L",
        "liver": "R",
        "right adrenal gland": "R",
    }
    assert "mostly cut by the field of view: cut (colon [I]" in bank.info()
    # a mirrored stand-in is cut on the other side
    (stand_in,) = [s for s in bank.shapes["kidney_R"] if s.mirrored and s.subject == "cut"]
    assert stand_in.cut_face_names == "R" and _shape(bank, "kidney_L", "cut").cut_face_names == "L"


# ------------------------------------------------------------------------------------------------ save / load


def test_save_load_round_trip(bank, tmp_path):
    path = bank.save(tmp_path / "sub" / "bank.npz")
    assert path.is_file() and os.listdir(path.parent) == ["bank.npz"]
    loaded = ShapeBank.load(path)
    _assert_banks_equal(bank, loaded)
    assert loaded.info() == bank.info()
    assert load_bank(path).organs == bank.organs


def test_saved_bank_is_readable_by_others(bank, tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = bank.save(tmp_path / "bank.npz")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_save_leaves_no_file(bank, tmp_path, monkeypatch):
    def write_half_then_fail(file, **arrays):
        with open(file, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    target = tmp_path / "bank.npz"
    monkeypatch.setattr(np, "savez_compressed", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        bank.save(target)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_file(bank, tmp_path, monkeypatch):
    target = bank.save(tmp_path / "bank.npz")
    before = target.read_bytes()

    def fail(file, **arrays):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", fail)
    with pytest.raises(OSError):
        bank.save(target)
    assert target.read_bytes() == before and list(tmp_path.iterdir()) == [target]


# ------------------------------------------------------------------------------------------------ default bank


def test_old_bank_files_still_load(tmp_path):
    # a bank file written before cut faces, relative anchors and build reports were recorded
    paths, class_map = syn.write_amos_subjects(tmp_path)
    path = ShapeBank.build(paths, class_map, list(syn.AMOS_CLASS_MAP.values())).save(tmp_path / "bank.npz")
    with np.load(path) as f:
        arrays = dict(f)
    meta = json.loads(arrays["meta"].tobytes())
    for entry in meta["shapes"]:
        del entry["cut_faces"]
    for key in ("relative_anchors", "build_report", "island_fraction"):
        del meta["source"][key]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez_compressed(path, **arrays)
    old = ShapeBank.load(path)
    for shapes in old.shapes.values():
        for s in shapes:  # unknown faces follow the truncation flag
            assert s.cut_faces is None and np.array_equal(s.cut_face_mask, np.full((3, 2), s.truncated))
    # relative anchors come from the organ names, as AnchorModel.from_bank found them before
    assert (
        old.relative_anchors
        == find_relative_anchors(old.organs)
        == {"right adrenal gland": "kidney_R", "left adrenal gland": "kidney_L", "gall bladder": "liver"}
    )
    assert "stray islands" not in old.info() and "kidney_L <-> kidney_R" in old.info()


def test_default_bank():
    start = time.perf_counter()
    bank = ShapeBank.load(None)
    assert time.perf_counter() - start < 1.0
    assert DEFAULT_BANK_PATH.stat().st_size <= 10 * 2**20
    assert bank.organs == BTCV_ORGANS + EXTRA_ORGANS == list(DEFAULT_ORGANS)
    assert bank.num_classes == 22 and bank.spacing == 1.5 and len(bank.subjects) == 5
    assert [bank.class_id(o) for o in BTCV_ORGANS] == list(range(1, 14))
    for organ in bank.organs:
        assert bank.usable_shapes(organ), organ
        assert all(s.mask.any() for s in bank.shapes[organ])
    assert 800 < bank.median_volume_ml["liver"] < 2500 and 1 < bank.median_volume_ml["adrenal_gland_left"] < 10
    assert bank.mirror_pairs == [
        ("kidney_left", "kidney_right"),
        ("adrenal_gland_left", "adrenal_gland_right"),
        ("lung_left", "lung_right"),
    ]
    for shapes in bank.shapes.values():  # cut faces recorded, or (older file) following the truncation flag
        assert all(s.cut_face_mask.shape == (3, 2) and s.cut_face_mask.any() == s.truncated for s in shapes)
    assert load_bank() is load_bank()  # cached


# ---------------------------------------------------------------------------------------------------- bad input


def _write(path, array, affine=syn.AFFINE):
    return syn.write_nifti(path, array, affine)


def test_missing_label_file(built, tmp_path):
    _, paths, class_map = built
    missing = tmp_path / "absent" / "labels.nii.gz"
    with pytest.raises(FileNotFoundError, match="absent"):
        ShapeBank.build({"syn1": paths["syn1"], "ghost": missing}, class_map, syn.ORGANS)


def test_corrupt_label_file(built, tmp_path):
    _, _, class_map = built
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(np.random.RandomState(0).bytes(4096))
    with pytest.raises(ValueError, match="corrupt.nii.gz"):
        ShapeBank.build({"x": corrupt}, class_map, syn.ORGANS)


@pytest.mark.parametrize("shape", [(20, 20, 10, 2), (40, 40)], ids=["4d", "2d"])
def test_label_map_not_3d(built, tmp_path, shape):
    _, _, class_map = built
    path = _write(tmp_path / "odd.nii.gz", np.zeros(shape, np.uint8), np.eye(4))
    with pytest.raises(ValueError, match="odd.nii.gz.*3D"):
        ShapeBank.build({"x": path}, class_map, syn.ORGANS)


def test_non_integer_label_values(built, tmp_path):
    _, _, class_map = built
    path = _write(tmp_path / "float.nii.gz", syn.label_array().astype(np.float32) + 0.25)
    with pytest.raises(ValueError, match="float.nii.gz.*integer"):
        ShapeBank.build({"x": path}, class_map, syn.ORGANS)


def test_class_map_missing(built, tmp_path):
    _, paths, _ = built
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        ShapeBank.build(paths, tmp_path / "nothing.json", syn.ORGANS)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"x": "liver"}', '{"1": "a", "2": "a"}'])
def test_class_map_corrupt(built, tmp_path, text):
    _, paths, _ = built
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="broken.json"):
        ShapeBank.build(paths, path, syn.ORGANS)


def test_label_ids_missing_from_class_map(built, tmp_path):
    _, paths, _ = built
    partial = {k: v for k, v in syn.CLASS_MAP.items() if v != "table"}
    with pytest.raises(ValueError, match=r"labels.nii.gz: ids \[3\] are not in the class map"):
        ShapeBank.build(paths, syn.write_class_map(tmp_path / "partial.json", partial), syn.ORGANS)


def test_organ_part_missing_from_class_map(built):
    _, paths, class_map = built
    with pytest.raises(ValueError, match="'block_b'.*block_b_middle"):
        ShapeBank.build(paths, class_map, {"block_b": ["block_b_front", "block_b_middle"]})
    with pytest.raises(ValueError, match="'spleen'") as info:
        ShapeBank.build(paths, class_map)  # the default organ set uses TotalSegmentator names
    message = str(info.value)
    # every missing organ, the class map's own names, and how to name the organs
    assert all(f"organ {o!r}" in message for o in DEFAULT_ORGANS)
    assert "names: table, block_a, block_b_front" in message and str(class_map) in message
    assert "--organs" in message and "TotalSegmentator" in message


def test_missing_organs_are_all_named(built):
    _, paths, class_map = built
    organs = {"box": ["block_a"], "kidney": ["kidney_left"], "lungs": ["lung_left", "core", "lung_right"]}
    with pytest.raises(ValueError) as info:
        ShapeBank.build(paths, class_map, organs)
    message = str(info.value)
    assert message.startswith("organ 'kidney': the class map has no class named ['kidney_left']; organ 'lungs'")
    assert "['lung_left', 'lung_right']" in message and "'box'" not in message
    assert "lobe_right" in message and "TotalSegmentator" not in message


def test_organ_absent_from_every_subject(built, tmp_path):
    _, paths, _ = built
    class_map = syn.write_class_map(tmp_path / "more.json", {**syn.CLASS_MAP, "90": "ghost"})
    with pytest.raises(ValueError, match="ghost"):
        ShapeBank.build(paths, class_map, ["block_a", "ghost"])


@pytest.mark.parametrize("organs", [[], {}])
def test_empty_organ_set(built, organs):
    _, paths, class_map = built
    with pytest.raises(ValueError, match="empty"):
        ShapeBank.build(paths, class_map, organs)


def test_no_label_maps(built):
    with pytest.raises(ValueError, match="no label maps"):
        ShapeBank.build({}, built[2], syn.ORGANS)


def test_corrupt_bank_file(bank, tmp_path):
    random_bytes = tmp_path / "random.npz"
    random_bytes.write_bytes(np.random.RandomState(1).bytes(2048))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(bank.save(tmp_path / "whole.npz").read_bytes()[:500])
    not_a_bank = tmp_path / "other.npz"
    np.savez(not_a_bank, x=np.zeros(3))
    for path in (random_bytes, cut, not_a_bank):
        with pytest.raises(ValueError, match=path.name):
            ShapeBank.load(path)
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        ShapeBank.load(tmp_path / "absent.npz")


def test_bank_of_another_format_version(bank, tmp_path):
    path = bank.save(tmp_path / "bank.npz")
    with np.load(path) as f:
        arrays = dict(f)
    meta = json.loads(arrays["meta"].tobytes())
    meta["format_version"] = 99
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez_compressed(path, **arrays)
    with pytest.raises(ValueError, match="bank.npz.*version 99"):
        ShapeBank.load(path)


# ---------------------------------------------------------------------------------------------------- end to end


def test_own_bank_drives_the_synthesis(bank):
    synth = RandAnatomySynthd(bank=bank, patch_size=(48, 48, 48)).set_random_state(seed=3)
    assert synth.num_classes == 8
    recorder = synth.maker.label_maker
    seen = set()
    for _ in range(4):
        sample = synth({})
        image, label = sample["image"], sample["label"]
        assert image.shape == label.shape == (1, 48, 48, 48)
        assert image.dtype == torch.float32 and label.dtype == torch.int64
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        ids = set(torch.unique(label).tolist())
        assert ids <= set(range(8))
        placed = {p.class_id: p for p in recorder.last_record.placed}
        assert ids - {0} == {c for c, p in placed.items() if p.voxels > 0}
        for class_id, p in placed.items():
            assert bank.organs[class_id - 1] == p.organ
            assert int((label == class_id).sum()) == p.voxels
        seen |= ids
    assert seen == set(range(8))  # the 72 mm patch holds the whole 7-organ body
