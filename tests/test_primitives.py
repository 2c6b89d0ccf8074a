"""Tests of the primitive-shape FDSL baseline (synth_transforms.primitives)."""

import dataclasses

import numpy as np
import pytest
import torch

from synth_transforms.primitives import (
    _WAIST,
    NUM_PRIMITIVE_CLASSES,
    PRIMITIVE_CLASSES,
    PRIMITIVE_PROFILES,
    PRIMITIVE_SECTIONS,
    _ellipse_section,
    _place_primitives,
    _polygon_section,
    _random_rotation,
    _rasterise,
    _Solid,
    primitive_label_map,
    validate_arguments,
)

SMALL = (48, 48, 48)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _class_id(section: str, profile: str) -> int:
    return PRIMITIVE_CLASSES.index((section, profile)) + 1


def _axis_aligned_solid(section: str, profile: str, shape=(64, 64, 64), radius=12.0, half_length=20.0) -> _Solid:
    """A solid extruded along the last patch axis, centred in the patch."""
    rng = np.random.RandomState(3)
    params = _ellipse_section(rng) if section == "ellipse" else _polygon_section(rng, int(section[0]))
    center = (np.asarray(shape) - 1) / 2.0
    return _Solid(_class_id(section, profile), center, np.eye(3), radius, half_length, params)


def _slice_areas(solid: _Solid, shape=(64, 64, 64)) -> np.ndarray:
    """Voxel count of each slice across the extrusion axis (the last patch axis), over the whole patch."""
    box, mask = _rasterise(solid, shape)
    areas = np.zeros(shape[2], dtype=np.int64)
    areas[box[2]] = mask.sum(axis=(0, 1))
    return areas


def _section_area(section: str, params: np.ndarray) -> float:
    """Analytic area of a unit cross-section: pi a b for an ellipse, the shoelace formula for a polygon."""
    if section == "ellipse":
        return float(np.pi / np.prod(params[0]))
    # vertex k is where edge k-1 meets edge k: a_{k-1} . p = 1 and a_k . p = 1
    vertices = np.array([np.linalg.solve(np.stack([params[k - 1], params[k]]), np.ones(2)) for k in range(len(params))])
    x, y = vertices[:, 0], vertices[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


# ------------------------------------------------------------------------------------------------ class table


def test_class_table():
    assert NUM_PRIMITIVE_CLASSES == 32 == len(PRIMITIVE_CLASSES) == len(set(PRIMITIVE_CLASSES))
    assert len(PRIMITIVE_SECTIONS) == 8 and len(PRIMITIVE_PROFILES) == 4
    for k, (section, profile) in enumerate(PRIMITIVE_CLASSES):
        assert PRIMITIVE_SECTIONS[k // 4] == section and PRIMITIVE_PROFILES[k % 4] == profile
    assert PRIMITIVE_CLASSES[0] == ("ellipse", "concave") and PRIMITIVE_CLASSES[-1] == ("9-gon", "cone")


# ----------------------------------------------------------------------------------------------- output contract


@pytest.mark.parametrize("patch_size", [(48, 48, 48), (40, 32, 24), [16, 24, 20]])
def test_shape_and_dtype(patch_size):
    labels = primitive_label_map(np.random.RandomState(0), patch_size=patch_size, num_shapes=5)
    assert isinstance(labels, torch.Tensor)
    assert labels.shape == tuple(patch_size) and labels.dtype == torch.int64
    assert (labels > 0).any()


@pytest.mark.parametrize("num_classes", [1, 4, 9, 32])
def test_class_ids_in_range(num_classes):
    seen = set()
    for seed in range(6):
        labels = primitive_label_map(np.random.RandomState(seed), SMALL, num_shapes=8, num_classes=num_classes)
        seen |= set(torch.unique(labels).tolist())
    assert min(seen) == 0 and max(seen) <= num_classes
    if num_classes <= 4:
        assert seen == set(range(num_classes + 1))


def test_placed_classes_match_label_map():
    placement = _place_primitives(np.random.RandomState(5), SMALL, num_shapes=8, track_instances=True)
    lut = np.array([0] + placement.classes)
    np.testing.assert_array_equal(lut[placement.instances], placement.labels)


def test_number_of_solids():
    placed, distinct = [], []
    for seed in range(20):
        placement = _place_primitives(np.random.RandomState(seed), (64, 64, 64), num_shapes=20)
        placed.append(len(placement.classes))
        distinct.append(len(np.unique(placement.labels)) - 1)
    # the default overlap cap rarely drops a solid; 20 classes drawn from 32 give about 15 distinct ones, and a
    # few more vanish under later solids
    assert 18 <= np.mean(placed) <= 20 and max(placed) == 20
    assert 10 <= np.mean(distinct) <= 17 and max(distinct) <= 20


def test_num_shapes_range_is_inclusive():
    counts = {
        len(_place_primitives(np.random.RandomState(s), SMALL, (2, 4), max_overlap=1.0).classes) for s in range(30)
    }
    assert counts == {2, 3, 4}


def test_size_range_controls_volume():
    def mean_volume(size_range):
        volumes = [
            _place_primitives(np.random.RandomState(s), SMALL, 4, size_range=size_range).volumes for s in range(5)
        ]
        return np.mean(np.concatenate(volumes))

    small, large = mean_volume((0.15, 0.2)), mean_volume((0.4, 0.45))
    assert large > 8 * small


# ---------------------------------------------------------------------------------------------------- randomness


def test_same_seed_same_map_different_seed_different_map():
    a = primitive_label_map(np.random.RandomState(11))
    b = primitive_label_map(np.random.RandomState(11))
    c = primitive_label_map(np.random.RandomState(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_global_generators_untouched():
    np.random.seed(1)
    torch.manual_seed(1)
    numpy_state, torch_state = np.random.get_state(), torch.get_rng_state()
    primitive_label_map(np.random.RandomState(0), SMALL, num_shapes=4)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_random_rotation_is_proper():
    rng = np.random.RandomState(0)
    axes = np.stack([_random_rotation(rng)[:, 2] for _ in range(2000)])
    for rotation in (_random_rotation(rng) for _ in range(20)):
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rotation) == pytest.approx(1.0)
    # extrusion axes are uniform on the sphere: the mean is near 0 and each component squared averages 1/3
    assert np.all(np.abs(axes.mean(axis=0)) < 0.05)
    np.testing.assert_allclose((axes**2).mean(axis=0), 1 / 3, atol=0.03)


# ----------------------------------------------------------------------------------------------------- overlap


@pytest.mark.parametrize("seed", range(4))
def test_zero_overlap_keeps_every_solid_whole(seed):
    placement = _place_primitives(
        np.random.RandomState(seed), SMALL, num_shapes=12, max_overlap=0.0, track_instances=True
    )
    assert len(placement.volumes) >= 3
    counts = np.bincount(placement.instances.ravel(), minlength=len(placement.volumes) + 1)[1:]
    np.testing.assert_array_equal(counts, placement.volumes)  # no solid lost a voxel to a later one


def test_full_overlap_lets_later_solids_overwrite():
    """Counterpart of the zero-overlap test: without the cap, the same check does fail."""
    overwritten = 0
    for seed in range(4):
        placement = _place_primitives(np.random.RandomState(seed), SMALL, 12, max_overlap=1.0, track_instances=True)
        counts = np.bincount(placement.instances.ravel(), minlength=len(placement.volumes) + 1)[1:]
        assert np.all(counts <= placement.volumes)
        overwritten += int(np.sum(placement.volumes) - counts.sum())
    assert overwritten > 0


def test_zero_overlap_drops_solids_that_cannot_fit():
    # ten solids that each fill most of a tiny patch cannot all be placed without touching
    placement = _place_primitives(np.random.RandomState(0), (12, 12, 12), 10, max_overlap=0.0, size_range=(0.9, 1.0))
    assert 1 <= len(placement.classes) < 10


# ----------------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("section", ["ellipse", "3-gon", "6-gon", "9-gon"])
def test_pillar_slices_match_cross_section_area(section):
    solid = _axis_aligned_solid(section, "pillar")
    areas = _slice_areas(solid)
    occupied = areas[areas > 0]
    assert len(occupied) == pytest.approx(2 * solid.half_length, abs=1)
    assert np.all(occupied == occupied[0])  # constant along the axis
    expected = _section_area(section, solid.section) * solid.radius**2
    assert occupied[0] == pytest.approx(expected, rel=0.06)


@pytest.mark.parametrize("section", ["ellipse", "5-gon"])
def test_profiles_shape_the_area_along_the_axis(section):
    areas = {p: _slice_areas(_axis_aligned_solid(section, p)) for p in PRIMITIVE_PROFILES}
    middle = 32  # patch centre; the solid spans slices 12..51
    ends = (areas["pillar"] > 0).nonzero()[0][[0, -1]]
    near_ends = [ends[0] + 2, ends[1] - 2]

    cone = areas["cone"][ends[0] : ends[1] + 1]
    assert np.all(np.diff(cone) <= 0) and cone[0] > 10 * max(cone[-1], 1)  # shrinks to a tip
    assert areas["cone"][ends[0]] == pytest.approx(areas["pillar"][ends[0]], rel=0.1)  # full size at the base

    convex, concave = areas["convex"], areas["concave"]
    assert convex[middle] == pytest.approx(areas["pillar"][middle], rel=0.05)  # bulge: full size in the middle
    assert all(convex[middle] > 3 * convex[i] for i in near_ends)
    assert concave[ends[0]] == pytest.approx(areas["pillar"][ends[0]], rel=0.1)  # waist: full size at the ends
    assert all(concave[middle] * 3 < concave[i] for i in near_ends)
    for profile in ("convex", "concave"):  # symmetric about the middle
        a = areas[profile][ends[0] : ends[1] + 1]
        np.testing.assert_allclose(a, a[::-1], rtol=0.1, atol=3)


@pytest.mark.parametrize("profile", PRIMITIVE_PROFILES)
@pytest.mark.parametrize("section", ["ellipse", "4-gon"])
def test_rotated_solid_volume_matches_analytic_volume(section, profile):
    """Volume = section area * r^2 * h * integral of scale(t)^2 over t in [-1, 1]; also checks the bounding box."""
    w = 1.0 - _WAIST
    scale_sq_integral = {
        "pillar": 2.0,
        "cone": 2.0 / 3.0,
        "convex": 2.0 - 2.0 * w * 2.0 / 3.0 + w * w * 2.0 / 5.0,
        "concave": 2.0 * _WAIST**2 + 2.0 * _WAIST * w * 2.0 / 3.0 + w * w * 2.0 / 5.0,
    }[profile]
    rng = np.random.RandomState(7)
    for _ in range(3):
        solid = dataclasses.replace(_axis_aligned_solid(section, profile), axes=_random_rotation(rng))
        _, mask = _rasterise(solid, (64, 64, 64))
        area = _section_area(section, solid.section) * solid.radius**2
        expected = area * solid.half_length * scale_sq_integral
        assert mask.sum() == pytest.approx(expected, rel=0.05)


def test_every_solid_touches_the_patch():
    placement = _place_primitives(np.random.RandomState(2), (32, 32, 32), 30, max_overlap=1.0)
    assert len(placement.volumes) == 30 and min(placement.volumes) > 0


# ------------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"patch_size": (96, 96)}, "patch_size"),
        ({"patch_size": (96, 96, 0)}, "patch_size"),
        ({"patch_size": (96, -1, 96)}, "patch_size"),
        ({"patch_size": (96.0, 96, 96)}, "patch_size"),
        ({"patch_size": 96.0}, "patch_size"),
        ({"patch_size": "abc"}, "patch_size"),
        ({"num_shapes": 0}, "num_shapes"),
        ({"num_shapes": 2.5}, "num_shapes"),
        ({"num_shapes": (0, 3)}, "num_shapes"),
        ({"num_shapes": (5, 2)}, "num_shapes"),
        ({"num_shapes": (1, 2, 3)}, "num_shapes"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 33}, "num_classes"),
        ({"num_classes": 4.0}, "num_classes"),
        ({"max_overlap": -0.1}, "max_overlap"),
        ({"max_overlap": 1.5}, "max_overlap"),
        ({"max_overlap": float("nan")}, "max_overlap"),
        ({"size_range": (0.0, 0.5)}, "size_range"),
        ({"size_range": (0.5, 0.2)}, "size_range"),
        ({"size_range": (0.2, 1.5)}, "size_range"),
        ({"size_range": (0.2,)}, "size_range"),
        ({"max_tries": 0}, "max_tries"),
    ],
)
def test_bad_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=rf"^primitive_label_map: {name} must be .*, got "):
        primitive_label_map(np.random.RandomState(0), **kwargs)


def test_validate_arguments_normalises_without_drawing():
    shape, counts = validate_arguments(np.int64(8), num_shapes=(2, np.int64(5)), num_classes=np.int32(4))
    assert shape == (8, 8, 8) and counts == (2, 5)
    assert all(type(v) is int for v in (*shape, *counts))
    assert validate_arguments((8, 16, 24), num_shapes=3) == ((8, 16, 24), (3, 3))
    message = r"^RandPrimitiveLabel: size_range must be a pair \(low, high\) of fractions of the patch edge"
    with pytest.raises(ValueError, match=message):
        validate_arguments(size_range=(0.0, 0.5), owner="RandPrimitiveLabel")
    with pytest.raises(ValueError, match=r"num_classes must be an integer in 1\.\.32, got 33"):
        validate_arguments(num_classes=33)
