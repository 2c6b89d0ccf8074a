"""Rendering: label patch -> synthetic image.

Each organ is drawn as a contour shell (the voxels within ``thickness`` of a label change, on the organ's side)
at a random intensity per organ per sample. ``fill`` draws the whole organ instead (SynthSeg-like per-label
intensities), ``mixed`` draws shells plus a faint interior fill. Then Gaussian blur, a smooth multiplicative bias
field and Gaussian noise; the result is float32 in [0, 1]. Every operation is a few passes over the patch
(shifted comparisons and adds, separable terms), so rendering costs milliseconds on one CPU thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._args import check_choice, check_int_range, check_positive_int, check_range, fail

__all__ = ["render_label", "contour_shell", "validate_render_arguments", "RENDER_MODES"]

RENDER_MODES = ("shell", "fill", "mixed")
_OWNER = "render_label"


def contour_shell(label: torch.Tensor, thickness: int = 1) -> torch.Tensor:
    """Voxels of non-zero labels lying within ``thickness`` voxels (6-connected steps) of a label change.

    Args:
        label: ``(H, W, D)`` integer label map.
        thickness: shell thickness in voxels (>= 1).

    Returns:
        ``(H, W, D)`` boolean shell mask.
    """
    check_positive_int(thickness, "thickness", "contour_shell")
    edge = torch.zeros(label.shape, dtype=torch.bool)
    for axis in range(3):
        n = label.shape[axis]
        diff = label.narrow(axis, 1, n - 1) != label.narrow(axis, 0, n - 1)
        edge.narrow(axis, 1, n - 1).logical_or_(diff)
        edge.narrow(axis, 0, n - 1).logical_or_(diff)
    for _ in range(thickness - 1):
        grown = edge.clone()
        for axis in range(3):
            n = label.shape[axis]
            grown.narrow(axis, 1, n - 1).logical_or_(edge.narrow(axis, 0, n - 1))
            grown.narrow(axis, 0, n - 1).logical_or_(edge.narrow(axis, 1, n - 1))
        edge = grown
    return edge & (label != 0)


def render_label(
    label: torch.Tensor,
    rng: np.random.RandomState,
    num_classes: int | None = None,
    mode: str = "shell",
    thickness: tuple[int, int] = (1, 2),
    intensity_range: tuple[float, float] = (0.3, 1.0),
    fill_range: tuple[float, float] = (0.0, 0.3),
    blur_sigma: tuple[float, float] = (0.0, 1.0),
    bias_strength: tuple[float, float] = (0.0, 0.3),
    noise_std: tuple[float, float] = (0.0, 0.05),
) -> torch.Tensor:
    """Render a label patch as a synthetic image.

    Args:
        label: ``(H, W, D)`` integer label map (0 = background).
        rng: random state; every random draw of the call comes from it.
        num_classes: number of classes including background (default: ``label.max() + 1``).
        mode: ``"shell"`` (contours only), ``"fill"`` (whole organs) or ``"mixed"`` (contours + faint fill).
        thickness: inclusive range of the shell thickness in voxels (one value per sample; one integer: fixed).
        intensity_range: range of the per-organ intensities (shells in shell/mixed, organs in fill mode).
        fill_range: for ``mixed``, the interior fill as a fraction of the organ's own shell intensity.
        blur_sigma: range of the Gaussian blur sigma in voxels (0 = none).
        bias_strength: range of the bias field's amplitude (multiplicative, ``exp(+-strength)``).
        noise_std: range of the Gaussian noise standard deviation.

    Returns:
        ``(H, W, D)`` float32 image in [0, 1].

    Raises:
        ValueError: if an argument is out of range (naming it, what was expected and the value given).
    """
    thickness = validate_render_arguments(
        mode, thickness, intensity_range, fill_range, blur_sigma, bias_strength, noise_std
    )
    if label.ndim != 3:
        raise fail("label", "a 3D (H, W, D) map", tuple(label.shape), _OWNER)
    n = int(num_classes) if num_classes is not None else int(label.max()) + 1
    index = label.int().reshape(-1)  # reshape: a non-contiguous label (a permuted view) cannot be viewed flat
    low, high = (int(v) for v in torch.aminmax(index))
    if low < 0 or high >= n:
        raise fail("label", f"class ids in 0..{n - 1} (num_classes {n})", f"ids {low}..{high}", _OWNER)
    if label.dtype != torch.uint8 and n <= 256:
        label = label.to(torch.uint8)  # the shell's comparisons run twice as fast on bytes
    organ_level = torch.from_numpy(rng.uniform(*intensity_range, size=n).astype(np.float32))
    organ_level[0] = 0.0

    def per_voxel(levels: torch.Tensor) -> torch.Tensor:  # levels[label], via the fast int32 index_select
        return levels.index_select(0, index).view(label.shape)

    if mode == "fill":
        image = per_voxel(organ_level)
    else:
        shell = contour_shell(label, int(rng.randint(thickness[0], thickness[1] + 1)))
        image = per_voxel(organ_level) * shell
        if mode == "mixed":
            image += per_voxel(organ_level * float(rng.uniform(*fill_range))) * ~shell
    sigma = rng.uniform(*blur_sigma)
    if sigma > 0.2:
        image = _gaussian_blur(image, sigma)
    strength = rng.uniform(*bias_strength)
    if strength > 0:
        image *= _bias_field(label.shape, rng, strength)
    std = rng.uniform(*noise_std)
    if std > 0:
        image.add_(_gaussian_noise(image.shape, rng), alpha=float(std))
    return image.clamp_(0.0, 1.0)


def validate_render_arguments(
    mode, thickness, intensity_range, fill_range, blur_sigma, bias_strength, noise_std, owner: str = _OWNER
):
    """Refuse a bad argument of :func:`render_label` before any drawing; return the thickness range.

    Transforms call it at construction (with their own ``owner``) so a bad option fails there, not at the first
    sample.
    """
    check_choice(mode, "mode", RENDER_MODES, owner)
    thickness = check_int_range(thickness, "thickness", owner, minimum=1)
    for name, value in [("intensity_range", intensity_range), ("fill_range", fill_range)]:
        check_range(value, name, owner, low=0.0, high=1.0)
    for name, value in [("blur_sigma", blur_sigma), ("bias_strength", bias_strength), ("noise_std", noise_std)]:
        check_range(value, name, owner, low=0.0)
    return thickness


_NOISE_TABLE_SIZE = 1 << 22
_noise_table: torch.Tensor | None = None


def _gaussian_noise(shape: Sequence[int], rng: np.random.RandomState) -> torch.Tensor:
    """Standard normal noise of ``shape``: a random window of a fixed table (cheaper than drawing it each time).

    The table is drawn once per process from a fixed seed, so the result depends only on ``rng``. Patches larger
    than the table get freshly drawn noise.
    """
    global _noise_table
    n = int(np.prod(shape))
    if n > _NOISE_TABLE_SIZE:
        gen = torch.Generator().manual_seed(int(rng.randint(2**31)))
        return torch.randn(tuple(shape), generator=gen)
    if _noise_table is None:
        _noise_table = torch.randn(_NOISE_TABLE_SIZE, generator=torch.Generator().manual_seed(0))
    start = int(rng.randint(_NOISE_TABLE_SIZE - n + 1))
    return _noise_table[start : start + n].view(tuple(shape))  # read-only use: callers must not modify it


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with a kernel truncated at 2 sigma, edges replicated, done with shifted adds."""
    radius = max(1, int(np.ceil(2 * sigma)))
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    weights /= weights.sum()
    for axis in range(image.ndim):
        n = image.shape[axis]
        out = image * float(weights[radius])
        for d in range(1, radius + 1):
            if d >= n:
                break
            w = float(weights[radius + d])
            # neighbour at -d and +d, replicating the edge voxel beyond the border
            out.narrow(axis, d, n - d).add_(image.narrow(axis, 0, n - d), alpha=w)
            out.narrow(axis, 0, d).add_(image.narrow(axis, 0, 1), alpha=w)
            out.narrow(axis, 0, n - d).add_(image.narrow(axis, d, n - d), alpha=w)
            out.narrow(axis, n - d, d).add_(image.narrow(axis, n - 1, 1), alpha=w)
        image = out
    return image


def _bias_field(shape: Sequence[int], rng: np.random.RandomState, strength: float) -> torch.Tensor:
    """Smooth multiplicative field ``exp(f0(x) + f1(y) + f2(z))``, each ``f`` a random low-frequency cosine."""
    field = None
    for axis, n in enumerate(shape):
        freq, phase = rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(-strength, strength) / np.sqrt(3)
        f = torch.from_numpy(np.exp(amp * np.cos(np.pi * freq * np.linspace(0, 1, n) + phase)).astype(np.float32))
        view = [1, 1, 1]
        view[axis] = n
        field = f.view(view) if field is None else field * f.view(view)
    return field
