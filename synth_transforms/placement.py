"""Sequential, topology-checked placement of bank organs into a label patch.

Organs are inserted one after another, parents and large organs first. For each: a shape from a randomly chosen
subject, a random scale, rotation and smooth deformation, position = anchor + jitter. The candidate is rasterised
only inside its bounding box in the patch and checked against everything already placed; a candidate that breaks
the topology graph is retried with new jitter up to ``max_tries`` times, then skipped and recorded. Organs whose
anchor cannot reach the patch are not processed at all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ._args import as_size3, check_fraction, check_non_negative, check_positive_int, check_range
from .anchors import AnchorModel
from .bank import ShapeBank
from .placement_records import (
    DISJOINT_OVERLAP,
    OUTSIDE,
    Insertion,
    PlacedOrgan,
    PlacementRecord,
    SkippedOrgan,
    Violation,
)
from .topology import CODE_CARVE, CODE_DISJOINT, CODE_FREE, CODE_KEEP, CODE_OVERWRITE, TopologyGraph

__all__ = ["OrganPlacer", "PlacementRecord", "PlacedOrgan", "SkippedOrgan", "Violation", "Insertion", "random_rotation"]

_OUTSIDE = Violation.outside()


@dataclass
class _Shape:
    subject: str
    flat: torch.Tensor  # padded mask, flattened (bool)
    dims: np.ndarray  # padded mask shape
    centroid: np.ndarray  # centroid in padded-crop voxels


class OrganPlacer:
    """Places a bank's organs into a label patch under anchors and a topology graph.

    Args:
        bank: the shape bank.
        anchors: anchor model (default: derived from the bank).
        graph: topology graph (default: derived from the bank).
        organs: organs to place (default: all of the bank's). Class ids stay the bank's.
        patch_size: label patch size in voxels (at the bank's spacing).
        jitter_scale: multiplies each anchor's spread; 0 places every organ exactly at its anchor.
        scale_range: per-axis random scale factor range.
        rotation_deg: largest random rotation about each axis, in degrees.
        deform_mm: amplitude of the smooth random deformation, in mm (0 disables it).
        max_tries: candidates tried per organ before it is skipped.
        max_carve_fraction: largest fraction of a new organ that may overlap adjacent organs (and is carved).
        min_inside_fraction: smallest fraction of a child that must lie in its placed parent (``inside``).
        donor_prob: each patch draws a donor subject; each organ takes the donor's shape with this probability
            (else a random subject's) and is anchored at the donor's own position for it when measured there
            (else the bank mean). Layouts from one body collide less; 0 mixes subjects freely.
        observers: callables given an :class:`Insertion` after each accepted write (an audit, a test spy); the
            public list ``observers`` can be changed later. They must not write to the patch.
    """

    def __init__(
        self,
        bank: ShapeBank,
        anchors: AnchorModel | None = None,
        graph: TopologyGraph | None = None,
        organs: Sequence[str] | None = None,
        patch_size: Sequence[int] = (96, 96, 96),
        jitter_scale: float = 0.4,
        scale_range: tuple[float, float] = (0.93, 1.07),
        rotation_deg: float = 4.0,
        deform_mm: float = 2.0,
        max_tries: int = 6,
        max_carve_fraction: float = 0.3,
        min_inside_fraction: float = 0.5,
        donor_prob: float = 0.9,
        observers: Sequence[Callable[[Insertion], None]] = (),
    ):
        owner = "OrganPlacer"
        self.patch_size = as_size3(patch_size, owner=owner, max_voxels=512)
        self.scale_range = check_range(scale_range, "scale_range", owner, low=0.0, strict_low=True)
        self.jitter_scale = check_non_negative(jitter_scale, "jitter_scale", owner)
        self.rotation_rad = np.deg2rad(check_non_negative(rotation_deg, "rotation_deg", owner))
        deform_mm = check_non_negative(deform_mm, "deform_mm", owner)
        self.max_tries = check_positive_int(max_tries, "max_tries", owner)
        self.max_carve_fraction = check_fraction(max_carve_fraction, "max_carve_fraction", owner)
        self.min_inside_fraction = check_fraction(min_inside_fraction, "min_inside_fraction", owner)
        self.donor_prob = check_fraction(donor_prob, "donor_prob", owner)
        if len(bank.organs) > 255:  # the patch is uint8
            raise ValueError(f"{owner}: at most 255 organs are supported, the bank has {len(bank.organs)}")
        self.observers = list(observers)
        self.bank = bank
        self.anchors = anchors if anchors is not None else AnchorModel.from_bank(bank)
        self.graph = graph if graph is not None else TopologyGraph.from_bank(bank)
        if self.anchors.organs != bank.organs or self.graph.organs != bank.organs:
            raise ValueError("anchors and topology graph must cover the bank's organs in the bank's class order")
        organs = bank.check_organs(organs) if organs is not None else bank.organs
        self.order = self.graph.placement_order(bank.median_volume_ml, organs)
        self.deform_vox = deform_mm / bank.spacing
        self.table = torch.from_numpy(self.graph.code_table().astype(np.int64))
        self.writable = (self.table == CODE_FREE) | (self.table == CODE_OVERWRITE)
        self.parent_ids = {o: [bank.class_id(p) for p in self.graph.parents(o)] for o in self.order}
        prepared: dict[int, _Shape] = {}  # bank shapes are shared between the two views below: prepare once

        def prepare(shape) -> _Shape:
            if id(shape) not in prepared:
                prepared[id(shape)] = _prepare(shape)
            return prepared[id(shape)]

        self.shapes = {o: [prepare(s) for s in bank.usable_shapes(o)] for o in self.order}
        self.donor_shapes = {o: {s.subject: prepare(s) for s in bank.measured_shapes(o)} for o in self.order}
        # Largest distance from an organ's centroid to its crop corner (mm), at the largest scale.
        self.reach_mm = {
            o: max(
                float(np.linalg.norm(np.maximum(s.centroid, s.dims - s.centroid)))
                for s in self.shapes[o] + list(self.donor_shapes[o].values())
            )
            * bank.spacing
            * self.scale_range[1]
            + deform_mm
            for o in self.order
        }

    @property
    def extent_mm(self) -> np.ndarray:
        """Patch extent in mm."""
        return np.asarray(self.patch_size) * self.bank.spacing

    def __call__(
        self, rng: np.random.RandomState, center_mm: Sequence[float], donor: str | None = None
    ) -> tuple[torch.Tensor, PlacementRecord]:
        """Place organs into a patch centred at ``center_mm`` (frame coordinates).

        ``donor`` is the subject whose layout the patch follows (drawn from ``rng`` when None).

        Returns:
            ``(label, record)``: a ``(H, W, D)`` ``torch.uint8`` label patch (class ids of the bank) and the
            :class:`PlacementRecord`.
        """
        spacing = self.bank.spacing
        origin = np.asarray(center_mm, dtype=float) - (np.asarray(self.patch_size) - 1) / 2 * spacing
        canvas = torch.zeros(self.patch_size, dtype=torch.uint8)
        record = PlacementRecord(origin, spacing)
        placed_pos: dict[int, np.ndarray] = {}
        placed_ids: set[int] = set()
        if donor is None:
            donor = self.bank.subjects[rng.randint(len(self.bank.subjects))]
        elif donor not in self.bank.subjects:
            raise KeyError(f"donor subject {donor!r} is not in the shape bank; it has: {', '.join(self.bank.subjects)}")
        record.donor = donor
        for organ in self.order:
            cls_id = self.bank.class_id(organ)
            index = cls_id - 1
            expected = self.anchors.expected_position(index, placed_pos, donor)
            slack = self.reach_mm[organ] + np.linalg.norm(self.anchors.tolerance_mm(index, self.jitter_scale))
            if _box_distance(expected, origin, origin + (np.asarray(self.patch_size) - 1) * spacing) > slack:
                record.unreachable.append(organ)
                continue
            parents = [p for p in self.parent_ids[organ] if p in placed_ids]
            violation = None
            for tries in range(1, self.max_tries + 1):
                # each retry draws fresh jitter of shrinking amplitude (1, 1 - 1/max_tries, ...), so later
                # tries approach the anchor itself
                damping = 1.0 - (tries - 1) / self.max_tries
                shape = self._pick_shape(organ, donor, rng)
                subject = donor if shape.subject == donor else None  # the donor's shape sits where the donor's did
                pos, expected = self.anchors.sample(index, rng, self.jitter_scale * damping, placed_pos, subject)
                warp = self._draw_warp(shape, (pos - origin) / spacing, rng, damping)
                if warp is None:
                    violation = _OUTSIDE
                    break
                violation, carved, overwritten = self._try_insert(canvas, shape, warp, cls_id, parents)
                if violation is None:
                    placed_pos[index] = pos
                    placed_ids.add(cls_id)
                    tolerance = self.anchors.tolerance_mm(index, self.jitter_scale)
                    record.placed.append(
                        PlacedOrgan(organ, cls_id, shape.subject, pos, expected, tolerance, tries, carved, overwritten)
                    )
                if violation is None or violation.kind == OUTSIDE:
                    break
            if violation is not None and violation.kind == OUTSIDE:
                record.unreachable.append(organ)
            elif violation is not None:
                record.skipped.append(SkippedOrgan.from_violation(organ, self.max_tries, violation))
        counts = torch.bincount(canvas.flatten().long(), minlength=self.bank.num_classes)
        for p in record.placed:
            p.voxels = int(counts[p.class_id])
        return canvas, record

    def _pick_shape(self, organ: str, donor: str, rng: np.random.RandomState) -> _Shape:
        """The donor's own shape (truncated or not) with probability donor_prob, else a random usable shape."""
        own = self.donor_shapes[organ].get(donor)
        if own is not None and rng.uniform() < self.donor_prob:
            return own
        shapes = self.shapes[organ]
        return shapes[rng.randint(len(shapes))]

    # ------------------------------------------------------------------ one candidate
    def _draw_warp(
        self, shape: _Shape, pos_vox: np.ndarray, rng: np.random.RandomState, damping: float = 1.0
    ) -> _Warp | None:
        """Draw a random warp of ``shape`` centred at ``pos_vox``; None when it cannot touch the patch.

        ``damping`` in (0, 1] shrinks the random scale, rotation and deformation towards the identity.
        """
        scale = 1.0 + damping * (rng.uniform(*self.scale_range, size=3) - 1.0)
        forward = random_rotation(rng, damping * self.rotation_rad) * scale[None, :]  # crop voxel -> patch voxel
        inverse = np.linalg.inv(forward)
        # Scale and rotate about the organ point nearest the patch centre, not its centroid: a spine or aorta
        # turned 5 degrees about a centroid 20 cm away would sweep through its neighbours inside the patch.
        centre = (np.asarray(self.patch_size) - 1) / 2
        pivot_crop = np.clip(shape.centroid + centre - pos_vox, 0, shape.dims - 1)
        pivot_vox = pos_vox + pivot_crop - shape.centroid
        corners = np.array(np.meshgrid(*[[0.0, d - 1.0] for d in shape.dims], indexing="ij")).reshape(3, -1)
        mapped = forward @ (corners - pivot_crop[:, None]) + pivot_vox[:, None]
        margin = damping * self.deform_vox + 1
        lo = np.maximum(np.floor(mapped.min(axis=1) - margin), 0).astype(int)
        hi = np.minimum(np.ceil(mapped.max(axis=1) + margin) + 1, self.patch_size).astype(int)
        if np.any(hi <= lo):
            return None
        size = hi - lo
        # crop coordinate u = pivot + inverse @ (x - pivot') + bend(x) for each patch voxel x of the region; the
        # bend is a sum of smooth 1D curves, one per (crop axis, patch axis), so the warp stays separable and
        # costs no more than the affine part. +0.5 makes the integer conversion round to nearest.
        offset = pivot_crop + inverse @ (lo - pivot_vox) + 0.5
        # bend of crop axis k along patch axis m: amplitude[k, m] * sin(half period over the region + phase[k, m])
        amplitude = rng.uniform(-1.0, 1.0, size=(3, 3)) * damping * self.deform_vox
        phase = rng.uniform(0, np.pi, size=(3, 3))
        terms = []
        for m, n in enumerate(size):
            term = inverse[:, m : m + 1] * np.arange(n) + amplitude[:, m : m + 1] * np.sin(
                _half_period(n) + phase[:, m : m + 1]
            )
            if m == 0:
                term += offset[:, None]
            terms.append(torch.from_numpy(term.astype(np.float32)))
        return _Warp(lo, hi, terms)

    def _sample(self, shape: _Shape, warp: _Warp, step: int = 1) -> torch.Tensor:
        """Candidate mask on the warp's region, every ``step``-th voxel along each axis."""
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

    def _violation(
        self, existing: torch.Tensor, cls_id: int, n: int, parents: list[int]
    ) -> tuple[Violation | None, int, int]:
        """Check the labels a candidate of ``n`` voxels would cover (``existing``: the non-zero ones).

        Returns ``(violation or None, voxels to carve, voxels to overwrite)``.
        """
        codes = self.table[cls_id][existing]
        counts = torch.bincount(codes, minlength=5)
        if counts[CODE_DISJOINT] > 0:
            hit = torch.unique(existing[codes == CODE_DISJOINT]).tolist()
            return Violation.disjoint([self.bank.organs[h - 1] for h in hit]), 0, 0
        carved = int(counts[CODE_CARVE] + counts[CODE_KEEP])
        if carved > self.max_carve_fraction * n:
            return Violation.adjacent_overlap(carved / n, self.max_carve_fraction), 0, 0
        if parents:
            inside = int(sum((existing == p).sum() for p in parents))
            if inside < self.min_inside_fraction * n:
                return Violation.inside_fraction(inside / n), 0, 0
        return None, carved, int(counts[CODE_OVERWRITE])

    def _clearly_overcarved(self, existing: torch.Tensor, cls_id: int, n: int, min_voxels: int = 500) -> bool:
        """Coarse test: the adjacent overlap exceeds the limit by a safe margin on a well-sampled organ."""
        if n < min_voxels:
            return False
        codes = self.table[cls_id][existing]
        carved = int(((codes == CODE_CARVE) | (codes == CODE_KEEP)).sum())
        return carved > (self.max_carve_fraction + 0.1) * n

    def _try_insert(
        self, canvas: torch.Tensor, shape: _Shape, warp: _Warp, cls_id: int, parents: list[int]
    ) -> tuple[Violation | None, int, int]:
        """Check a candidate against the canvas and write it, then tell the observers.

        A coarse pass (every second voxel) rejects most violating candidates at an eighth of the cost; the full
        pass then checks and writes. Returns ``(None, voxels carved, voxels overwritten)`` on success, else
        ``(violation, 0, 0)``, an ``outside`` one when the warped shape covers no voxel of the patch.
        """
        view = canvas[warp.region]
        if not parents:  # an inside test needs the full resolution; a coarse one could wrongly reject
            coarse = self._sample(shape, warp, step=2)
            coarse_view = view[::2, ::2, ::2]
            coarse_hits = (coarse_view != 0) & coarse  # elementwise tests beat boolean-mask reads of a strided view
            if bool(coarse_hits.any()):
                existing = coarse_view[coarse_hits].long()
                n_coarse = int(coarse.sum())
                violation = self._violation(existing, cls_id, max(n_coarse, 1), parents)[0]
                # a disjoint hit is certain; an adjacent overlap estimated from every 8th voxel is trusted only
                # when it is clearly over the limit and the organ is large enough for the estimate to be tight
                if violation is not None and (
                    violation.kind == DISJOINT_OVERLAP or self._clearly_overcarved(existing, cls_id, n_coarse)
                ):
                    return violation, 0, 0
        cand = self._sample(shape, warp)
        n = int(cand.sum())
        if n == 0:
            return _OUTSIDE, 0, 0
        hits = (view != 0) & cand
        before = view.clone() if self.observers else None
        if not parents and not bool(hits.any()):  # a child on empty ground still fails its inside check
            view.masked_fill_(cand, cls_id)
            self._notify(cls_id, warp, before, view, cand, parents)
            return None, 0, 0
        existing = view[hits].long()
        violation, carved, overwritten = self._violation(existing, cls_id, n, parents)
        if violation is None:
            keep = torch.zeros_like(hits)
            keep[hits] = ~self.writable[cls_id][existing]
            view.masked_fill_(cand & ~keep, cls_id)
            self._notify(cls_id, warp, before, view, cand, parents)
        return violation, carved, overwritten

    def _notify(self, cls_id: int, warp: _Warp, before, after: torch.Tensor, mask: torch.Tensor, parents) -> None:
        if self.observers:
            insertion = Insertion(cls_id, warp.region, before, after, mask, tuple(parents))
            for observer in self.observers:
                observer(insertion)


@dataclass
class _Warp:
    """A drawn warp: the patch region it covers and the separable terms of the crop coordinates."""

    lo: np.ndarray
    hi: np.ndarray
    terms: list[torch.Tensor]  # terms[patch axis m]: (3, n_m), row k = crop axis k's term along patch axis m

    @property
    def region(self) -> tuple[slice, ...]:
        return tuple(slice(int(a), int(b)) for a, b in zip(self.lo, self.hi, strict=True))


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


def _prepare(shape) -> _Shape:
    """Pad a bank shape by one empty voxel (the clamping target of the lookup) and flatten it."""
    padded = np.pad(shape.mask, 1)
    n = padded.sum()
    profiles = [padded.sum(axis=tuple(a for a in range(3) if a != k)) for k in range(3)]  # voxels per slice
    centroid = np.array([(p * np.arange(p.size)).sum() / n for p in profiles])
    return _Shape(shape.subject, torch.from_numpy(padded.ravel().copy()), np.asarray(padded.shape), centroid)


def _box_distance(point: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Euclidean distance from a point to an axis-aligned box (0 inside)."""
    return float(np.linalg.norm(np.maximum(np.maximum(lo - point, point - hi), 0.0)))
