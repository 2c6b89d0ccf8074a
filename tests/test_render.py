"""Tests of the label -> image rendering (synth_transforms.render)."""

import re

import numpy as np
import pytest
import torch
from scipy import ndimage

from synth_transforms import contour_shell, primitive_label_map, render_label

#: No blur, bias field or noise: the image is the bare shells / fills.
CLEAN = {"blur_sigma": (0.0, 0.0), "bias_strength": (0.0, 0.0), "noise_std": (0.0, 0.0)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cube(size=40, lo=10, hi=30, value=3) -> torch.Tensor:
    label = torch.zeros((size, size, size), dtype=torch.int64)
    label[lo:hi, lo:hi, lo:hi] = value
    return label


@pytest.fixture(scope="module")
def organs() -> torch.Tensor:
    """A crowded 48^3 label map of touching solids (classes 1-32)."""
    return primitive_label_map(np.random.RandomState(0), (48, 48, 48), num_shapes=12)


def _reference_shell(label: np.ndarray, thickness: int) -> np.ndarray:
    """Voxels of organs within ``thickness`` 6-connected steps of a label change, computed with scipy."""
    change = np.zeros(label.shape, dtype=bool)
    for axis in range(3):
        diff = np.diff(label, axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        change[tuple(lo)] |= diff
        change[tuple(hi)] |= diff
    if thickness > 1:
        change = ndimage.binary_dilation(change, ndimage.generate_binary_structure(3, 1), iterations=thickness - 1)
    return change & (label != 0)


@pytest.mark.parametrize("thickness", [1, 2, 3])
def test_contour_shell_matches_reference(organs, thickness):
    shell = contour_shell(organs, thickness)
    assert shell.dtype == torch.bool
    np.testing.assert_array_equal(shell.numpy(), _reference_shell(organs.numpy(), thickness))


def test_thickness_grows_the_shell(organs):
    shells = [contour_shell(organs, t) for t in (1, 2, 3, 4)]
    for thin, thick in zip(shells, shells[1:], strict=False):
        assert (thin & ~thick).sum() == 0 and thick.sum() > thin.sum()
    cube = _cube()
    # a 20^3 cube: its shell t voxels thick holds 20^3 - (20 - 2t)^3 voxels
    for t in (1, 2, 3):
        assert int(contour_shell(cube, t).sum()) == 20**3 - (20 - 2 * t) ** 3


@pytest.mark.parametrize("thickness", [1, 2])
def test_shell_mode_draws_only_organ_boundaries(organs, thickness):
    image = render_label(organs, np.random.RandomState(1), mode="shell", thickness=(thickness, thickness), **CLEAN)
    np.testing.assert_array_equal(image.numpy() > 0, _reference_shell(organs.numpy(), thickness))


def test_cube_interior_empty_in_shell_mode_filled_in_fill_mode():
    cube = _cube()
    interior = (slice(12, 28),) * 3
    shell = render_label(cube, np.random.RandomState(0), mode="shell", thickness=(2, 2), **CLEAN)
    assert float(shell[interior].abs().max()) == 0.0
    level = float(shell[10, 10, 10])
    assert 0.3 <= level <= 1.0 and torch.all(shell[contour_shell(cube, 2)] == level)
    fill = render_label(cube, np.random.RandomState(0), mode="fill", **CLEAN)
    assert torch.all(fill[cube == 3] == fill[20, 20, 20]) and float(fill[20, 20, 20]) >= 0.3
    mixed = render_label(cube, np.random.RandomState(0), mode="mixed", thickness=(1, 1), **CLEAN)
    core, wall = float(mixed[20, 20, 20]), float(mixed[10, 15, 15])
    assert torch.all(mixed[11:29, 11:29, 11:29] == core) and 0.0 <= core <= 0.3 * wall


def test_each_organ_has_one_intensity_in_fill_mode(organs):
    image = render_label(organs, np.random.RandomState(2), mode="fill", **CLEAN)
    levels = []
    for organ in torch.unique(organs).tolist()[1:]:
        values = torch.unique(image[organs == organ])
        assert values.numel() == 1
        levels.append(float(values))
    assert len(set(levels)) == len(levels)


@pytest.mark.parametrize("mode", ["shell", "fill", "mixed"])
def test_background_zero_without_noise_or_bias(organs, mode):
    image = render_label(organs, np.random.RandomState(3), mode=mode, **CLEAN)
    assert float(image[organs == 0].abs().max()) == 0.0


@pytest.mark.parametrize("mode", ["shell", "fill", "mixed"])
def test_float32_within_unit_range(organs, mode):
    strong = {"bias_strength": (1.0, 1.0), "noise_std": (0.5, 0.5), "blur_sigma": (1.0, 1.0)}
    for seed in range(3):
        for kwargs in ({}, strong):
            image = render_label(organs, np.random.RandomState(seed), mode=mode, **kwargs)
            assert image.dtype == torch.float32 and image.shape == organs.shape
            assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    noisy = render_label(organs, np.random.RandomState(0), mode=mode, **strong)
    assert float(noisy.min()) == 0.0 and float(noisy.max()) == 1.0  # clamped, not rescaled


def test_deterministic_per_seed(organs):
    a = render_label(organs, np.random.RandomState(4), mode="mixed")
    b = render_label(organs, np.random.RandomState(4), mode="mixed")
    c = render_label(organs, np.random.RandomState(5), mode="mixed")
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_noise_differs_between_samples(organs):
    noise_only = {"blur_sigma": (0.0, 0.0), "bias_strength": (0.0, 0.0), "noise_std": (0.1, 0.1)}
    background = organs == 0
    a = render_label(organs, np.random.RandomState(6), **noise_only)[background]
    b = render_label(organs, np.random.RandomState(7), **noise_only)[background]
    assert 0.02 < float(a.std()) and abs(float(np.corrcoef(a.numpy(), b.numpy())[0, 1])) < 0.1


def test_blur_and_bias_change_the_image(organs):
    clean = render_label(organs, np.random.RandomState(8), **CLEAN)
    blurred = render_label(organs, np.random.RandomState(8), **{**CLEAN, "blur_sigma": (1.0, 1.0)})
    assert float(blurred[organs == 0].max()) > 0.0  # blur spreads the shells into the background
    assert blurred.sum() == pytest.approx(float(clean.sum()), rel=0.05)  # and roughly keeps their mass


def test_any_integer_dtype_and_layout(organs):
    reference = render_label(organs, np.random.RandomState(9))
    for label in (organs.to(torch.uint8), organs.int(), organs.permute(2, 1, 0).contiguous().permute(2, 1, 0)):
        assert torch.equal(render_label(label, np.random.RandomState(9)), reference)
    transposed = organs.permute(2, 0, 1)  # a non-contiguous view
    expected = render_label(transposed.contiguous(), np.random.RandomState(9))
    assert torch.equal(render_label(transposed, np.random.RandomState(9)), expected)


def test_global_generators_untouched(organs):
    np.random.seed(0)
    torch.manual_seed(0)
    numpy_state, torch_state = np.random.get_state(), torch.get_rng_state()
    render_label(organs, np.random.RandomState(0), mode="mixed", noise_std=(0.1, 0.1), bias_strength=(0.2, 0.2))
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    assert torch.equal(torch.get_rng_state(), torch_state)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "outline"},
        {"intensity_range": (0.5, 1.5)},
        {"intensity_range": (0.8, 0.2)},
        {"fill_range": (-0.1, 0.2)},
        {"thickness": (0, 1)},
        {"thickness": (3, 2)},
        {"thickness": (1.0, 2)},
        {"blur_sigma": (-1.0, 1.0)},
        {"noise_std": 0.1},
    ],
    ids=lambda kw: f"{next(iter(kw))}={next(iter(kw.values()))}",
)
def test_bad_arguments(kwargs):
    name, value = next(iter(kwargs.items()))
    with pytest.raises(ValueError, match=rf"^render_label: {name} must be .*, got {re.escape(repr(value))}$"):
        render_label(_cube(), np.random.RandomState(0), **kwargs)


def test_one_thickness_is_a_fixed_range():
    a = render_label(_cube(), np.random.RandomState(3), thickness=2)
    b = render_label(_cube(), np.random.RandomState(3), thickness=(2, 2))
    assert torch.equal(a, b)


def test_bad_label_shape_and_thickness():
    with pytest.raises(ValueError, match="3D"):
        render_label(_cube()[None], np.random.RandomState(0))
    with pytest.raises(ValueError, match="thickness"):
        contour_shell(_cube(), 0)
