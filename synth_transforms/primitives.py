"""Primitive-shape FDSL baseline (PrimGeoSeg style): label maps made of random geometric solids.

Each solid is a 2D cross-section (an ellipse or a convex n-gon) extruded along an axis, its cross-section scaled
along the way by a profile (pillar, cone, convex bulge or concave waist), then rotated and placed at random in the
patch. Solids are inserted one after another with an overlap cap, and the label of a voxel is the class of the
latest solid covering it. Only the label map is made here; the image comes from the shared renderer
(:mod:`synth_transforms.render`), as for the anatomy-informed data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ._args import as_size3, check_fraction, check_int_range, check_positive_int, check_range

__all__ = [
    "NUM_PRIMITIVE_CLASSES",
    "PRIMITIVE_CLASSES",
    "PRIMITIVE_PROFILES",
    "PRIMITIVE_SECTIONS",
    "primitive_label_map",
    "validate_arguments",
]

PRIMITIVE_SECTIONS: tuple[str, ...] = ("ellipse",) + tuple(f"{n}-gon" for n in range(3, 10))
"""Cross-section kinds: an ellipse with random axes, or a convex polygon with 3 to 9 vertices."""

PRIMITIVE_PROFILES: tuple[str, ...] = ("concave", "convex", "pillar", "cone")
"""How the cross-section scale varies along the extrusion axis: waist, bulge, constant, linear to a tip."""

PRIMITIVE_CLASSES: tuple[tuple[str, str], ...] = tuple((s, p) for s in PRIMITIVE_SECTIONS for p in PRIMITIVE_PROFILES)
"""The 32 classes as ``(cross-section, profile)``, section-major: label ``k`` (1-based) is
``PRIMITIVE_CLASSES[k - 1]``, i.e. section ``(k - 1) // 4`` and profile ``(k - 1) % 4``. Label 0 is background.
With ``num_classes < 32`` only the first ``num_classes`` entries are used."""

NUM_PRIMITIVE_CLASSES: int = len(PRIMITIVE_CLASSES)

_WAIST = 0.35  # cross-section scale at the narrow end of the convex / concave profiles (1.0 at the wide end)
_ELLIPSE_MIN_RATIO = 0.5  # minor / major semi-axis ratio of an ellipse cross-section is drawn in [this, 1]
_VERTEX_MIN_RADIUS = 0.8  # polygon vertex radii are drawn in [this, 1]; > cos(2 pi / 9) keeps every 9-gon convex


@dataclass(frozen=True, eq=False)
class _Solid:
    """One posed primitive solid in voxel coordinates (voxel centres at integer positions).

    Attributes:
        class_id: label in 1..32, an index into ``PRIMITIVE_CLASSES`` plus one.
        center: (3,) centre of the solid.
        axes: (3, 3) rotation; columns are the local cross-section axes u, v and the extrusion axis w.
        radius: cross-section radius (voxels) at profile scale 1.
        half_length: half the extent along the extrusion axis (voxels).
        section: ellipse: (1, 2) inverse semi-axes in units of ``radius``; polygon: (n, 2) edge normals ``a_k``
            such that a cross-section point ``p`` (in units of ``radius``) is inside iff ``max_k a_k . p <= 1``.
    """

    class_id: int
    center: np.ndarray
    axes: np.ndarray
    radius: float
    half_length: float
    section: np.ndarray

    @property
    def section_kind(self) -> str:
        return PRIMITIVE_CLASSES[self.class_id - 1][0]

    @property
    def profile(self) -> str:
        return PRIMITIVE_CLASSES[self.class_id - 1][1]


@dataclass
class _Placement:
    """Result of sequential insertion: the label map plus per-solid bookkeeping (used by tests and tools).

    Attributes:
        labels: (H, W, D) uint8 class map.
        instances: (H, W, D) int32 map of the inserted solid's index plus one (0 = background), or ``None`` when
            not tracked.
        classes: class id of each inserted solid.
        volumes: voxel count of each inserted solid inside the patch, before later solids overwrote it.
    """

    labels: np.ndarray
    instances: np.ndarray | None
    classes: list[int]
    volumes: list[int]


def primitive_label_map(
    rng: np.random.RandomState,
    patch_size: int | Sequence[int] = (96, 96, 96),
    num_shapes: int | tuple[int, int] = 20,
    num_classes: int = 32,
    max_overlap: float = 0.7,
    size_range: tuple[float, float] = (0.15, 0.45),
    max_tries: int = 10,
) -> torch.Tensor:
    """Draw a label map of randomly posed primitive solids (the PrimGeoSeg-style FDSL baseline).

    Each solid gets a uniformly random rotation and a centre uniform in the patch, so it lies at least partly
    inside. Solids are inserted one after another. Each gets a class uniformly from ``1..num_classes``; a candidate
    whose voxels overlap the solids already placed by more than ``max_overlap`` of its own volume is redrawn
    (new shape, size and pose, same class) up to ``max_tries`` times, then dropped. Later solids overwrite
    earlier ones.

    Args:
        rng: source of all randomness; the same state gives the same map, bit for bit.
        patch_size: spatial shape ``(H, W, D)`` of the output (one integer: a cube).
        num_shapes: number of solids to insert, or an inclusive ``(low, high)`` range drawn per call.
        num_classes: number of classes used, 1..32 (the first ``num_classes`` of ``PRIMITIVE_CLASSES``).
        max_overlap: largest accepted fraction of a candidate's volume that lies on already placed solids.
        size_range: ``(low, high)`` bounds of a solid's length and diameter, as fractions of the shortest patch
            edge; each is drawn uniformly in this range.
        max_tries: draws per solid before it is dropped.

    Returns:
        ``(H, W, D)`` ``torch.int64`` tensor; 0 is background, ``k`` is class ``PRIMITIVE_CLASSES[k - 1]``.

    Raises:
        ValueError: if an argument is out of range.
    """
    placement = _place_primitives(rng, patch_size, num_shapes, num_classes, max_overlap, size_range, max_tries)
    return torch.from_numpy(placement.labels).long()


def _place_primitives(
    rng: np.random.RandomState,
    patch_size: int | Sequence[int] = (96, 96, 96),
    num_shapes: int | tuple[int, int] = 20,
    num_classes: int = 32,
    max_overlap: float = 0.7,
    size_range: tuple[float, float] = (0.15, 0.45),
    max_tries: int = 10,
    track_instances: bool = False,
) -> _Placement:
    """Validate the arguments and insert the solids; see :func:`primitive_label_map`.

    Args:
        track_instances: also fill ``_Placement.instances`` (costs an extra canvas); otherwise it is ``None``.
    """
    shape, (low, high) = validate_arguments(patch_size, num_shapes, num_classes, max_overlap, size_range, max_tries)
    size_range = (float(size_range[0]), float(size_range[1]))
    instances = np.zeros(shape, np.int32) if track_instances else None
    placement = _Placement(np.zeros(shape, np.uint8), instances, [], [])
    count = int(rng.randint(low, high + 1))
    for _ in range(count):
        class_id = int(rng.randint(1, num_classes + 1))
        for _ in range(max_tries):
            solid = _draw_solid(rng, class_id, shape, size_range)
            if _try_insert(placement, solid, float(max_overlap)):
                break
    return placement


def _try_insert(placement: _Placement, solid: _Solid, max_overlap: float) -> bool:
    """Paint ``solid`` into ``placement`` if it has voxels in the patch and respects the overlap cap."""
    raster = _rasterise(solid, placement.labels.shape)
    if raster is None:
        return False
    box, mask = raster
    volume = int(np.count_nonzero(mask))
    if volume == 0:
        return False
    labels = placement.labels[box]
    if max_overlap < 1.0 and np.count_nonzero(mask & (labels != 0)) > max_overlap * volume:
        return False
    np.copyto(labels, solid.class_id, where=mask)
    if placement.instances is not None:
        np.copyto(placement.instances[box], len(placement.volumes) + 1, where=mask)
    placement.classes.append(solid.class_id)
    placement.volumes.append(volume)
    return True


# ----------------------------------------------------------------------------------------------- random draws


def _draw_solid(
    rng: np.random.RandomState, class_id: int, shape: tuple[int, int, int], size_range: tuple[float, float]
) -> _Solid:
    """Draw the cross-section, size, rotation and position of one solid of class ``class_id``."""
    section_kind = PRIMITIVE_CLASSES[class_id - 1][0]
    section = _ellipse_section(rng) if section_kind == "ellipse" else _polygon_section(rng, int(section_kind[0]))
    edge = min(shape)
    length, diameter = rng.uniform(size_range[0], size_range[1], size=2) * edge
    axes = _random_rotation(rng)
    center = rng.uniform(0.0, 1.0, size=3) * (np.asarray(shape) - 1)
    return _Solid(class_id, center, axes, float(diameter) / 2, float(length) / 2, section)


def _random_rotation(rng: np.random.RandomState) -> np.ndarray:
    """Uniformly distributed 3D rotation matrix (from a normalised Gaussian quaternion)."""
    w, x, y, z = _unit_vector(rng.normal(size=4))
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _unit_vector(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-12 else np.eye(len(v))[0]


def _ellipse_section(rng: np.random.RandomState) -> np.ndarray:
    """Inverse semi-axes (1, 2) of an ellipse whose major semi-axis is 1 (either axis may be the major one)."""
    ratio = rng.uniform(_ELLIPSE_MIN_RATIO, 1.0)
    inverse = np.array([1.0, 1.0 / ratio])
    return inverse[rng.permutation(2)][None]


def _polygon_section(rng: np.random.RandomState, n: int) -> np.ndarray:
    """Edge normals (n, 2) of a convex n-gon with vertices at regular angles and random radii in [0.8, 1]."""
    angles = 2 * np.pi * (np.arange(n) + rng.uniform()) / n
    radii = rng.uniform(_VERTEX_MIN_RADIUS, 1.0, size=n)
    vertices = radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    edges = np.roll(vertices, -1, axis=0) - vertices
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)  # outward for counter-clockwise vertices
    offsets = np.sum(normals * vertices, axis=1)
    return normals / offsets[:, None]


# -------------------------------------------------------------------------------------------------- rasterising


def _rasterise(solid: _Solid, shape: Sequence[int]) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Inside-test of ``solid`` on the voxels of its bounding box clipped to the patch.

    Returns:
        ``(box, mask)``: the box as slices into the patch and a boolean mask of the box's shape; ``None`` if the
        box misses the patch.
    """
    box = _bounding_box(solid, shape)
    if box is None:
        return None
    fields = _linear_fields(box, solid.center, _field_coefficients(solid))
    t = fields[0].numpy()
    scale = _profile_scale(solid.profile, t)
    if solid.section_kind == "ellipse":
        u, v = fields[1].numpy(), fields[2].numpy()
        inside = u * u + v * v <= scale * scale
    else:
        inside = fields[1:].amax(dim=0).numpy() <= scale
    inside &= np.abs(t) <= 1.0
    return box, inside


def _bounding_box(solid: _Solid, shape: Sequence[int]) -> tuple[slice, ...] | None:
    """Voxel box enclosing the cylinder of radius ``r`` and half-length ``h`` around the solid, clipped to the patch.

    Every cross-section fits in the disc of radius ``r``, so the cylinder encloses the solid.
    """
    axis = solid.axes[:, 2]
    half_extent = solid.half_length * np.abs(axis) + solid.radius * np.sqrt(np.clip(1.0 - axis * axis, 0.0, 1.0))
    lower = np.maximum(np.ceil(solid.center - half_extent), 0).astype(int)
    upper = np.minimum(np.floor(solid.center + half_extent) + 1, shape).astype(int)
    if np.any(upper <= lower):
        return None
    return tuple(slice(int(lo), int(hi)) for lo, hi in zip(lower, upper, strict=True))


def _field_coefficients(solid: _Solid) -> np.ndarray:
    """World-space coefficients (3, m) of the linear fields needed by the inside-test.

    Column 0 is the normalised axial position ``t`` (-1 and 1 at the two ends). The other columns are the ellipse
    coordinates ``u / a`` and ``v / b`` (semi-axes ``a``, ``b`` in voxels), or one column per polygon edge, whose
    maximum is the polygon gauge (at most 1 inside the unscaled cross-section).
    """
    axial = solid.axes[:, 2:] / solid.half_length
    if solid.section_kind == "ellipse":
        section = solid.axes[:, :2] * (solid.section[0] / solid.radius)
    else:
        section = solid.axes[:, :2] @ solid.section.T / solid.radius
    return np.concatenate([axial, section], axis=1)


def _linear_fields(box: Sequence[slice], center: np.ndarray, coefficients: np.ndarray) -> torch.Tensor:
    """Evaluate ``sum_i coefficients[i, j] * (x_i - center_i)`` for every column ``j`` on the box voxels.

    Built by broadcasting per-axis 1D terms (torch: its broadcast add is several times faster than numpy's here).

    Returns:
        ``(m, nx, ny, nz)`` float32 tensor.
    """
    coef = torch.from_numpy(coefficients.astype(np.float32))
    ox, oy, oz = (
        torch.arange(s.start, s.stop, dtype=torch.float32) - float(c) for s, c in zip(box, center, strict=True)
    )
    x_term = coef[0][:, None] * ox
    yz_term = (coef[1][:, None] * oy)[:, :, None] + (coef[2][:, None] * oz)[:, None, :]
    return x_term[:, :, None, None] + yz_term[:, None]


def _profile_scale(profile: str, t: np.ndarray) -> np.ndarray | float:
    """Cross-section scale at normalised axial position ``t`` in [-1, 1] for the given profile."""
    if profile == "pillar":
        return 1.0
    if profile == "cone":
        return (1.0 - t) * np.float32(0.5)  # full size at t = -1, tip at t = 1
    if profile == "convex":
        return np.float32(1.0) - np.float32(1.0 - _WAIST) * (t * t)  # widest in the middle
    return np.float32(_WAIST) + np.float32(1.0 - _WAIST) * (t * t)  # concave: narrowest in the middle


# -------------------------------------------------------------------------------------------------- validation


def validate_arguments(
    patch_size: int | Sequence[int] = (96, 96, 96),
    num_shapes: int | tuple[int, int] = 20,
    num_classes: int = NUM_PRIMITIVE_CLASSES,
    max_overlap: float = 0.7,
    size_range: tuple[float, float] = (0.15, 0.45),
    max_tries: int = 10,
    owner: str | None = "primitive_label_map",
) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """Check the arguments of :func:`primitive_label_map` (defaults the same) without drawing anything.

    Args:
        owner: who the arguments belong to, in messages (a transform that passes them on names itself).

    Returns:
        The patch shape ``(H, W, D)`` and the inclusive shape-count range ``(low, high)``.

    Raises:
        ValueError: naming the argument, what was expected and the value given.
    """
    shape = as_size3(patch_size, "patch_size", owner)
    count_range = check_int_range(num_shapes, "num_shapes", owner)
    check_positive_int(num_classes, "num_classes", owner, maximum=NUM_PRIMITIVE_CLASSES)
    check_fraction(max_overlap, "max_overlap", owner)
    check_range(size_range, "size_range", owner, low=0.0, high=1.0, strict_low=True, of="fractions of the patch edge")
    check_positive_int(max_tries, "max_tries", owner)
    return shape, count_range
