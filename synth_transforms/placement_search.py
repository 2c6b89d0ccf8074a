"""Candidate geometry of :class:`~synth_transforms.placement.OrganPlacer`: prepared shapes, warps, stand-ins, shifts.

- :func:`prepare_shape` pads a bank shape and marks the voxels next to the faces that the field of view cut
  (:data:`CUT_MARK`), so that a sampled candidate tells at no extra lookup whether a cut face lands in the patch;
- :func:`draw_warp_params` / :func:`build_warp` draw a random scale, rotation and smooth deformation once and map it
  to a patch region for any position (a shifted candidate keeps its warp); :func:`sample_shape` rasterises it;
- :func:`field_of_view_box` bounds a subject's field of view where it cut an organ, so that patches can be drawn
  inside it; :func:`stand_in_offset` aligns a complete shape of another subject to the uncut faces of a cut one;
- :func:`shift_grid` and :func:`free_candidates` test many shifted (and shrunk) copies of a coarse candidate
  against the patch in one vectorised gather, for a candidate that collided.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from .bank import OrganShape
from .topology import CODE_CARVE, CODE_DISJOINT, CODE_KEEP

__all__ = [
    "CUT_BAND",
    "box_distance",
    "dilate",
    "CUT_MARK",
    "Candidate",
    "PreparedShape",
    "Warp",
    "WarpParams",
    "build_warp",
    "draw_shared_warp",
    "draw_warp_params",
    "field_of_view_box",
    "prepare_shape",
    "random_rotation",
    "reach_voxels",
    "sample_shape",
    "shift_grid",
    "split",
    "stand_in_offset",
    "free_candidates",
]

#: Voxels of a cut shape within this many slices of a cut face count as lying on it: two slices, because a warp that
#: shrinks the shape can skip one slice in a column, which would leave the next one as a flat cut face.
CUT_BAND = 2
#: Value of a cut-face voxel in a prepared shape (other organ voxels are 1).
CUT_MARK = 2
_OFF_PATCH = 255  # label of the padding around the patch in the shift search (the patch holds at most 255 organs)


@dataclass
class PreparedShape:
    """A bank shape ready for sampling.

    Attributes:
        source: the bank shape.
        flat: the mask padded by one empty voxel, flattened: bool, or uint8 with :data:`CUT_MARK` on cut-face voxels.
        dims: the padded mask's shape.
        centroid: centroid in padded-crop voxels.
        cut: whether ``flat`` marks cut-face voxels.
    """

    source: OrganShape
    flat: torch.Tensor
    dims: np.ndarray
    centroid: np.ndarray
    cut: bool

    @property
    def subject(self) -> str:
        return self.source.subject


def prepare_shape(shape: OrganShape) -> PreparedShape:
    """Pad a bank shape by one empty voxel (the clamping target of the lookup), mark its cut faces, flatten it."""
    padded = np.pad(shape.mask, 1)
    n = padded.sum()
    profiles = [padded.sum(axis=tuple(a for a in range(3) if a != k)) for k in range(3)]  # voxels per slice
    centroid = np.array([(p * np.arange(p.size)).sum() / n for p in profiles])
    faces = np.argwhere(shape.cut_face_mask)
    if len(faces):
        marked = padded.astype(np.uint8)
        for axis, side in faces:
            band = slice(1, 1 + CUT_BAND) if side == 0 else slice(-1 - CUT_BAND, -1)
            index = tuple(band if a == axis else slice(None) for a in range(3))
            band_view = marked[index]  # a view: bands of two faces may overlap, so set rather than multiply
            band_view[band_view > 0] = CUT_MARK
        padded = marked
    return PreparedShape(
        shape, torch.from_numpy(padded.ravel().copy()), np.asarray(padded.shape), centroid, bool(len(faces))
    )


def stand_in_offset(cut: PreparedShape, complete: PreparedShape) -> np.ndarray:
    """Offset (crop voxels) from ``cut``'s centroid to where ``complete``'s centroid goes to stand in for it.

    Along an axis cut on one side only, the two shapes share their other (real) face; elsewhere, their centroid.
    """
    offset = np.zeros(3)
    faces = cut.source.cut_face_mask
    for axis in range(3):
        low_cut, high_cut = bool(faces[axis, 0]), bool(faces[axis, 1])
        if high_cut and not low_cut:  # both low faces at padded index 1
            offset[axis] = complete.centroid[axis] - cut.centroid[axis]
        elif low_cut and not high_cut:  # both high faces at padded index dims - 2
            offset[axis] = (cut.dims[axis] - cut.centroid[axis]) - (complete.dims[axis] - complete.centroid[axis])
    return offset


def reach_voxels(shapes, complete: list[PreparedShape]) -> float:
    """Largest distance (voxels, unscaled) from a shape's position to its crop's far corner, over ``shapes``.

    A cut shape's stand-ins (``complete``) sit off its centroid (:func:`stand_in_offset`): their reach counts too.
    """

    def corner(shape: PreparedShape, offset=np.zeros(3)) -> float:
        return float(np.linalg.norm(np.abs(offset) + np.maximum(shape.centroid, shape.dims - shape.centroid)))

    reach = max(corner(s) for s in shapes)
    for cut in (s for s in shapes if s.cut):
        reach = max([reach] + [corner(c, stand_in_offset(cut, c)) for c in complete])
    return reach


def field_of_view_box(shapes, positions_mm, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Frame box ``(low, high)`` (mm, ±inf where unknown) of one subject's field of view, from its cut shapes.

    Args:
        shapes: that subject's measured bank shapes.
        positions_mm: the frame position of each shape's centroid (None where unknown).
        spacing: voxel size (mm).

    Returns:
        Per axis, the outermost voxel centre of the shapes cut on that side (the field of view ends there).
    """
    low, high = np.full(3, -np.inf), np.full(3, np.inf)
    for shape, position in zip(shapes, positions_mm, strict=True):
        if position is None or not shape.cut_face_mask.any():
            continue
        first = np.asarray(position) - shape.centroid_vox_in_crop * spacing
        last = first + (np.asarray(shape.mask.shape) - 1) * spacing
        faces = shape.cut_face_mask
        low = np.where(faces[:, 0], np.maximum(low, first), low)
        high = np.where(faces[:, 1], np.minimum(high, last), high)
    return low, high


# ---------------------------------------------------------------------------------------------- warps
@dataclass(frozen=True)
class WarpParams:
    """A drawn scale + rotation (``forward``: crop voxel -> patch voxel, and its ``inverse``) and deformation."""

    forward: np.ndarray
    inverse: np.ndarray
    amplitude: np.ndarray  # (3, 3) voxels: bend of crop axis k along patch axis m
    phase: np.ndarray  # (3, 3)
    margin: float  # voxels added around the mapped box for the bend
    scale: np.ndarray  # the organ's own per-axis scale factors in ``forward``
    shared: np.ndarray | None = None  # the patch-wide linear map in ``forward``, about the patch centre

    def shrunk(self, factor: float) -> WarpParams:
        """The same warp with its scale multiplied by ``factor``."""
        return WarpParams(
            self.forward * factor,
            self.inverse / factor,
            self.amplitude,
            self.phase,
            self.margin,
            self.scale * factor,
            self.shared,
        )


@dataclass
class Warp:
    """A warp placed in the patch: the region it covers and the separable terms of the crop coordinates."""

    lo: np.ndarray
    hi: np.ndarray
    terms: list[torch.Tensor]  # terms[patch axis m]: (3, n_m), row k = crop axis k's term along patch axis m
    pivot: np.ndarray  # patch voxel that the scale and rotation keep in place

    @property
    def region(self) -> tuple[slice, ...]:
        return tuple(slice(int(a), int(b)) for a, b in zip(self.lo, self.hi, strict=True))

    def crop_index(self, dims: np.ndarray) -> torch.Tensor:
        """``(3, *region)`` int64: the padded-crop voxel each region voxel reads (``dims``: the padded shape)."""
        out = []
        for axis in range(3):
            t0, t1, t2 = (t[axis] for t in self.terms)
            u = (t0[:, None, None] + t1[None, :, None]) + t2[None, None, :]
            out.append(u.clamp_(0, float(dims[axis] - 1)).floor_().long())
        return torch.stack(out)


def draw_shared_warp(rng: np.random.RandomState, scale_range, rotation_rad: float) -> np.ndarray:
    """A patch-wide random scale and rotation (3 x 3), applied about the patch centre to every organ of a patch.

    Organs warped alike keep their mutual layout (the donor body seen turned and scaled), so they do not collide the
    way organs turned and scaled each on its own do.
    """
    scale = rng.uniform(*scale_range, size=3)
    return random_rotation(rng, rotation_rad) * scale[None, :]


def draw_warp_params(
    rng: np.random.RandomState,
    scale_range,
    rotation_rad: float,
    deform_vox: float,
    damping: float = 1.0,
    shared: np.ndarray | None = None,
) -> WarpParams:
    """Draw a random scale, rotation and deformation, shrunk towards the identity by ``damping`` in (0, 1].

    ``shared``: a patch-wide linear map (:func:`draw_shared_warp`) applied after them, about the patch centre.
    """
    scale = 1.0 + damping * (rng.uniform(*scale_range, size=3) - 1.0)
    forward = random_rotation(rng, damping * rotation_rad) * scale[None, :]
    if shared is not None:
        forward = shared @ forward
    amplitude = rng.uniform(-1.0, 1.0, size=(3, 3)) * damping * deform_vox
    phase = rng.uniform(0, np.pi, size=(3, 3))
    return WarpParams(forward, np.linalg.inv(forward), amplitude, phase, damping * deform_vox + 1, scale, shared)


def build_warp(shape: PreparedShape, pos_vox: np.ndarray, params: WarpParams, patch_size) -> Warp | None:
    """Place ``params`` for ``shape`` with its centroid at ``pos_vox``; None when it cannot touch the patch."""
    size_patch = np.asarray(patch_size)
    # Scale and rotate about the organ point nearest the patch centre, not its centroid: a spine or aorta turned
    # 5 degrees about a centroid 20 cm away would sweep through its neighbours inside the patch.
    centre = (size_patch - 1) / 2
    pivot_crop = np.clip(shape.centroid + centre - pos_vox, 0, shape.dims - 1)
    pivot_vox = pos_vox + pivot_crop - shape.centroid
    if params.shared is not None:  # the patch-wide map moves the organ as part of the whole layout
        pivot_vox = centre + params.shared @ (pivot_vox - centre)
    corners = np.array(np.meshgrid(*[[0.0, d - 1.0] for d in shape.dims], indexing="ij")).reshape(3, -1)
    mapped = params.forward @ (corners - pivot_crop[:, None]) + pivot_vox[:, None]
    lo = np.maximum(np.floor(mapped.min(axis=1) - params.margin), 0).astype(int)
    hi = np.minimum(np.ceil(mapped.max(axis=1) + params.margin) + 1, size_patch).astype(int)
    if np.any(hi <= lo):
        return None
    size = hi - lo
    # crop coordinate u = pivot + inverse @ (x - pivot') + bend(x) for each patch voxel x of the region; the bend is
    # a sum of smooth 1D curves, one per (crop axis, patch axis), so the warp stays separable and costs no more than
    # the affine part. +0.5 makes the integer conversion round to nearest.
    offset = pivot_crop + params.inverse @ (lo - pivot_vox) + 0.5
    terms = []
    for m, n in enumerate(size):
        term = params.inverse[:, m : m + 1] * np.arange(n) + params.amplitude[:, m : m + 1] * np.sin(
            _half_period(n) + params.phase[:, m : m + 1]
        )
        if m == 0:
            term += offset[:, None]
        terms.append(torch.from_numpy(term.astype(np.float32)))
    return Warp(lo, hi, terms, pivot_vox)


def sample_shape(shape: PreparedShape, warp: Warp, step: int = 1) -> torch.Tensor:
    """Candidate on the warp's region, every ``step``-th voxel per axis (values of ``shape.flat``)."""
    flat_index = None  # float32 is exact here: padded crops hold < 2**24 voxels
    stride = 1.0
    for axis in (2, 1, 0):
        t0, t1, t2 = (t[axis, ::step] for t in warp.terms)
        u = (t0[:, None, None] + t1[None, :, None]) + t2[None, None, :]
        # the padded crop's border is empty, so clamping sends every outside point to an empty voxel
        u.clamp_(0, float(shape.dims[axis] - 1)).floor_()
        if flat_index is None:
            flat_index = u
        else:
            flat_index.add_(u.mul_(stride))
        stride *= float(shape.dims[axis])
    # index_select with int32 indices is several times faster than advanced indexing with int64 here
    return shape.flat.index_select(0, flat_index.int().view(-1)).view(flat_index.shape)


@functools.lru_cache(maxsize=1024)
def _half_period(n: int) -> np.ndarray:
    """``n`` evenly spaced angles over [0, pi] (cached; region sizes repeat)."""
    out = np.linspace(0, np.pi, n)
    out.flags.writeable = False
    return out


def random_rotation(rng: np.random.RandomState, max_angle: float) -> np.ndarray:
    """Rotation matrix from three angles drawn uniformly in ``[-max_angle, max_angle]`` (radians)."""
    a, b, c = rng.uniform(-max_angle, max_angle, size=3)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


class Candidate:
    """One drawn candidate: the shape, its warp parameters and where its centroid goes (patch voxels).

    The centroid goes to ``position_vox + shift_vox + offset_vox``: the drawn organ position, the integer shift that
    moved a colliding candidate, and a stand-in's offset from the cut donor shape it replaces.
    """

    def __init__(self, cls_id: int, shape: PreparedShape, position_vox: np.ndarray, params: WarpParams, parents):
        self.cls_id, self.shape, self.params, self.parents = cls_id, shape, params, parents
        self.position_vox = position_vox
        self.shift_vox = np.zeros(3)
        self.offset_vox = np.zeros(3)
        self.stand_in = self.shifted = False

    def warp(self, patch_size) -> Warp | None:
        """The warp of the candidate where it now stands (None: it cannot touch the patch)."""
        return build_warp(self.shape, self.position_vox + self.shift_vox + self.offset_vox, self.params, patch_size)


# ---------------------------------------------------------------------------------------------- shifts
def shift_grid(low: np.ndarray, high: np.ndarray, per_axis: int = 5, limit: int = 124) -> torch.Tensor:
    """Integer voxel shifts in the box ``[low, high]`` (per axis, containing 0), nearest first, 0 itself excluded.

    At most ``per_axis`` values per axis (0 and both ends always among them) and ``limit`` shifts in all.
    """
    axes = []
    for a, b in zip(np.asarray(low, int), np.asarray(high, int), strict=True):
        values = {0, int(a), int(b)} | {int(round(v)) for v in np.linspace(a, b, per_axis)}
        axes.append(sorted(values))
    grid = np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).T
    grid = grid[np.any(grid != 0, axis=1)]
    order = np.argsort((grid**2).sum(axis=1), kind="stable")
    return torch.from_numpy(grid[order[:limit]].astype(np.int64))


def free_candidates(
    canvas: torch.Tensor,
    points: torch.Tensor,
    offsets: torch.Tensor,
    codes: torch.Tensor,
    parents: list[int],
    max_carve: float,
    min_inside: float,
) -> torch.Tensor:
    """Which shifted copies of a candidate break no relation: ``(F, K)`` bool, copy ``f`` shifted by ``offsets[k]``.

    Args:
        canvas: the ``(H, W, D)`` patch being built.
        points: ``(F, N, 3)`` int64 patch voxels of ``F`` copies of the candidate (subsamples; off-patch ones allowed).
        offsets: ``(K, 3)`` int64 voxel shifts applied to each copy.
        codes: the new organ's row of the placer's relation code table (indexed by the label it would cover).
        parents: class ids of the placed parents it must lie inside (empty: none).
        max_carve: largest fraction of its voxels on adjacent organs; ``min_inside``: smallest fraction in parents.
    """
    # Pad the patch with a label no organ has, so every shifted point reads a voxel and off-patch ones are told apart.
    low, high = int(points.min()), int((points - torch.tensor(canvas.shape)).max()) + 1
    reach = int(offsets.abs().max()) + max(-low, high, 0) + 1
    padded = torch.nn.functional.pad(canvas[None], (reach,) * 6, value=_OFF_PATCH)[0]
    strides = torch.tensor([padded.shape[1] * padded.shape[2], padded.shape[2], 1])
    base = ((points + reach) * strides).sum(dim=2)  # (F, N)
    step = (offsets * strides).sum(dim=1)  # (K,)
    index = (base[:, None, :] + step[None, :, None]).int()  # (F, K, N)
    labels = padded.view(-1).index_select(0, index.view(-1)).view(index.shape).long()
    table = torch.zeros(_OFF_PATCH + 1, dtype=codes.dtype)
    table[: len(codes)] = codes
    code = table[labels]
    n = (labels != _OFF_PATCH).sum(dim=2)
    ok = ~(code == CODE_DISJOINT).any(dim=2) & (n > 0)
    ok &= ((code == CODE_CARVE) | (code == CODE_KEEP)).sum(dim=2) <= max_carve * n
    if parents:
        ok &= torch.isin(labels, torch.tensor(parents)).sum(dim=2) >= min_inside * n
    return ok


def box_distance(point: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Euclidean distance from a point to an axis-aligned box (0 inside)."""
    return float(np.linalg.norm(np.maximum(np.maximum(lo - point, point - hi), 0.0)))


def _box(mask: torch.Tensor, grow: int = 0) -> tuple[slice, ...]:
    """Bounding box of ``mask``'s voxels grown by ``grow`` voxels (clipped to the array); ``mask`` must be non-empty."""
    points = mask.nonzero()
    low, high = points.amin(dim=0).tolist(), points.amax(dim=0).tolist()
    return tuple(slice(max(a - grow, 0), min(b + 1 + grow, n)) for a, b, n in zip(low, high, mask.shape, strict=True))


def dilate(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` grown by one voxel in every direction (26-neighbourhood), same shape.

    Only the bounding box of ``mask`` (plus one voxel) is pooled: the voxels to grow are usually few in a large region.
    """
    grown = torch.zeros_like(mask)
    if not bool(mask.any()):
        return grown
    box = _box(mask, grow=1)
    pooled = torch.nn.functional.max_pool3d(mask[box][None, None].to(torch.float32), 3, stride=1, padding=1)
    grown[box] = pooled[0, 0].bool()
    return grown


def split(clipped: torch.Tensor, mask: torch.Tensor) -> bool:
    """Whether ``clipped`` (a part of ``mask``) falls into more 26-connected pieces than ``mask``.

    Local test first: if the voxels of ``clipped`` next to the removed ones are connected near them, every path of
    ``mask`` through the removed voxels has a detour, so nothing split; only otherwise are both counted in full.
    """
    removed = mask & ~clipped
    if not bool(removed.any()):
        return False
    structure = np.ones((3, 3, 3), dtype=bool)
    near = _box(removed, grow=2)
    pieces, count = ndimage.label(clipped[near].numpy(), structure)
    if count <= 1:
        return False
    rim = (dilate(removed)[near] & clipped[near]).numpy()
    if len(np.unique(pieces[rim])) <= 1:
        return False
    box = _box(mask)  # both are counted on the mask's bounding box, not the whole warp region
    count = ndimage.label(clipped[box].numpy(), structure)[1]
    return count > 1 and count > ndimage.label(mask[box].numpy(), structure)[1]  # one piece never splits
