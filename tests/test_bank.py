"""Tests of the shape bank (synth_transforms.bank): building, measuring, mirroring, saving, loading, bad input."""

import json
import os
import time

import _synthetic_labels as syn
import numpy as np
import pytest
import torch

from synth_transforms import DEFAULT_BANK_PATH, DEFAULT_ORGANS, RandAnatomySynthd, ShapeBank, load_bank
from synth_transforms.io import read_label_map

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
    with pytest.raises(ValueError, match="'spleen'"):
        ShapeBank.build(paths, class_map)  # the default organ set uses TotalSegmentator names


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
        placed = {p["class_id"]: p for p in recorder.last_record.placed}
        assert ids - {0} == {c for c, p in placed.items() if p["voxels"] > 0}
        for class_id, p in placed.items():
            assert bank.organs[class_id - 1] == p["organ"]
            assert int((label == class_id).sum()) == p["voxels"]
        seen |= ids
    assert seen == set(range(8))  # the 72 mm patch holds the whole 7-organ body
