"""Sequential, topology-checked placement of bank organs into a label patch.

Organs are inserted one after another, parents and large organs first. For each: a shape from a randomly chosen
subject, a patch-wide scale and rotation (shared by all organs, so their layout holds) with a small own part and a
smooth deformation, position = anchor + jitter. The candidate is rasterised only inside its bounding box in the patch
and checked against everything already placed; the few voxels it would put on (or flush against) disjoint organs are
clipped off. A donor shape cut by the field of view is used only where no voxel next to the cut face lands in the
patch; elsewhere a complete shape of another subject, aligned to the donor shape's uncut faces, stands in for it. A
candidate that breaks the topology graph is first moved: shifted copies within the anchor tolerance are tested in one
vectorised pass and the nearest free one is checked in full; failing that, a new candidate with new jitter is drawn,
up to ``max_tries`` times, then the organ is skipped and recorded. Organs whose anchor cannot reach the patch are
left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ._args import as_size3, check_bool, check_fraction, check_non_negative, check_positive_int, check_range
from .anchors import AnchorModel
from .bank import ShapeBank
from .placement_draw import CandidateDraw
from .placement_records import (
    ADJACENT_OVERLAP,
    CUT_FACE,
    DISJOINT_OVERLAP,
    INSIDE_FRACTION,
    OUTSIDE,
    Insertion,
    PlacedOrgan,
    PlacementRecord,
    SkippedOrgan,
    Violation,
)
from .placement_rules import InsertionRules
from .placement_search import (
    CUT_MARK,
    Candidate,
    PreparedShape,
    Warp,
    box_distance,
    dilate,
    draw_shared_warp,
    draw_warp_params,
    field_of_view_box,
    free_candidates,
    prepare_shape,
    random_rotation,
    reach_voxels,
    sample_shape,
    shift_grid,
    split,
    stand_in_offset,
)
from .topology import TopologyGraph

__all__ = ["OrganPlacer", "PlacementRecord", "PlacedOrgan", "SkippedOrgan", "Violation", "Insertion", "random_rotation"]

_OUTSIDE = Violation.outside()
_CUT = Violation.cut_face()
_COLLISIONS = (DISJOINT_OVERLAP, ADJACENT_OVERLAP, INSIDE_FRACTION)
# Shift search (on an organ's last try only: it costs time): at most this many candidate points, shifts checked in
# full, and the safety margin on the coarse estimates of the carve and inside fractions.
_SEARCH_POINTS, _SEARCH_CHECKS, _SEARCH_MARGIN, _SEARCH_TRIES = 512, 3, 0.05, 1
_FOV_MARGIN_MM = 15.0  # room kept by fit_center between patch and donor FOV edge: about what the warp moves a cut face
# Each organ's own scale and rotation, as a fraction of scale_range / rotation_deg, on top of the patch-wide warp
# (0: organs turn and scale only with the whole patch).
_OWN_WARP = 0.25
# A candidate covering disjoint organs with at most this fraction of its voxels loses them (if it stays whole) instead
# of being rejected; the coarse pass allows a margin over it for its sampling error.
_CLIP_FRACTION, _COARSE_MARGIN = 0.1, 0.05
_COARSE_TRUSTED = 500  # coarse voxels from which a coarse adjacent-overlap estimate is trusted


class OrganPlacer:
    """Places a bank's organs into a label patch under anchors and a topology graph.

    Args:
        bank: the shape bank.
        anchors: anchor model (default: derived from the bank).
        graph: topology graph (default: derived from the bank).
        organs: organs to place (default: all of the bank's). Class ids stay the bank's.
        patch_size: label patch size in voxels (at the bank's spacing).
        jitter_scale: multiplies each anchor's spread; 0 places every organ exactly at its anchor.
        scale_range: per-axis random scale factor range (patch-wide; each organ adds a quarter of it of its own).
        rotation_deg: largest random rotation about each axis, in degrees (patch-wide, plus a quarter per organ).
        deform_mm: amplitude of the smooth random deformation, in mm (0 disables it).
        max_tries: candidates tried per organ before it is skipped.
        max_carve_fraction: largest fraction of a new organ that may overlap adjacent organs (and is carved).
        min_inside_fraction: smallest fraction of a child that must lie in its placed parent (``inside``).
        indent_fraction: a new organ overlapping adjacent organs by more than ``max_carve_fraction`` of itself keeps
            the shared voxels if they are at most this fraction of each adjacent organ it overlaps (a gallbladder
            indents the liver instead of being skipped); 0: never.
        max_embed_fraction: largest fraction of an indenting organ that may lie in the organs it indents.
        donor_prob: each patch draws a donor subject; each organ takes the donor's shape with this probability
            (else a random subject's) and is anchored at the donor's own position for it when measured there
            (else the bank mean). Layouts from one body collide less; 0 mixes subjects freely.
        use_anchors: False: each candidate at a uniform random position in the patch (the ``no_anchors`` ablation).
        use_topology: False: no insertion checks, later organs overwrite earlier ones (the ``no_topology`` ablation).
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
        indent_fraction: float = 0.05,
        max_embed_fraction: float = 0.9,
        donor_prob: float = 0.9,
        use_anchors: bool = True,
        use_topology: bool = True,
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
        self.indent_fraction = check_fraction(indent_fraction, "indent_fraction", owner)
        self.max_embed_fraction = check_fraction(max_embed_fraction, "max_embed_fraction", owner)
        self.donor_prob = check_fraction(donor_prob, "donor_prob", owner)
        self.use_anchors = check_bool(use_anchors, "use_anchors", owner)
        self.use_topology = check_bool(use_topology, "use_topology", owner)
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
        limits = (self.max_carve_fraction, self.min_inside_fraction, self.indent_fraction, self.max_embed_fraction)
        self.rules = InsertionRules(self.graph, *limits, enforce=self.use_topology)
        self.parent_ids = {o: [bank.class_id(p) for p in self.rules.parents(o)] for o in self.order}
        prepared: dict[int, PreparedShape] = {}  # bank shapes are shared between the views below: prepare once

        def prepare(shape) -> PreparedShape:
            if id(shape) not in prepared:
                prepared[id(shape)] = prepare_shape(shape)
            return prepared[id(shape)]

        self.shapes = {o: [prepare(s) for s in bank.usable_shapes(o)] for o in self.order}
        self.donor_shapes = {o: {s.subject: prepare(s) for s in bank.measured_shapes(o)} for o in self.order}
        # complete shapes that can stand in for a donor's cut one (none: the organ is skipped where a cut shows)
        self.complete_shapes = {o: [s for s in self.shapes[o] if not s.cut] for o in self.order}
        how = (self.donor_prob, self.jitter_scale, self.use_anchors, self.patch_size)
        self.draw = CandidateDraw(bank, self.anchors, self.shapes, self.donor_shapes, *how)
        self.reach_mm = {o: self._reach_mm(o) + deform_mm for o in self.order}
        self.field_of_view = {subject: self._field_of_view(subject) for subject in bank.subjects}
        self._coarse: tuple[Warp | None, torch.Tensor | None] = (None, None)  # the last coarse candidate

    def _reach_mm(self, organ: str) -> float:
        """Largest distance (mm) from an organ's position to its crop corner, at the largest scale."""
        voxels = reach_voxels(self.shapes[organ] + list(self.donor_shapes[organ].values()), self.complete_shapes[organ])
        return voxels * self.bank.spacing * self.scale_range[1]

    def _field_of_view(self, subject: str) -> tuple[np.ndarray, np.ndarray]:
        pairs = [
            (s, self.anchors.subject_position(self.bank.class_id(o) - 1, subject))
            for o in self.bank.organs
            for s in self.bank.measured_shapes(o)
            if s.subject == subject
        ]
        return field_of_view_box([s for s, _ in pairs], [p for _, p in pairs], self.bank.spacing)

    @property
    def extent_mm(self) -> np.ndarray:
        """Patch extent in mm."""
        return np.asarray(self.patch_size) * self.bank.spacing

    def fit_center(self, center_mm: Sequence[float], donor: str) -> np.ndarray:
        """``center_mm`` moved (per axis, as little as needed) so that the patch lies in ``donor``'s field of view.

        Where the donor's field of view cut its organs, the patch keeps a margin from that edge, so the donor's cut
        shapes show no cut face and no organ beyond its field of view has to be made up; where the field of view is
        too short for the patch, the patch is centred on it (stand-ins then replace the cut shapes).
        """
        low, high = self.field_of_view[donor]
        half = (np.asarray(self.patch_size) - 1) / 2 * self.bank.spacing + _FOV_MARGIN_MM
        center = np.asarray(center_mm, dtype=float).copy()
        lowest, highest = low + half, high - half
        center = np.where(center < lowest, lowest, center)
        center = np.where(center > highest, highest, center)
        too_short = lowest > highest  # both ends are then finite
        middle = np.where(too_short, low + (high - low) / 2, 0.0) if too_short.any() else center
        return np.where(too_short, middle, center)

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
        placed_from: dict[int, tuple[str, np.ndarray]] = {}  # class id -> (subject of its shape, its centroid in mm)
        placed_ids: set[int] = set()
        if donor is None:
            donor = self.bank.subjects[rng.randint(len(self.bank.subjects))]
        elif donor not in self.bank.subjects:
            raise KeyError(f"donor subject {donor!r} is not in the shape bank; it has: {', '.join(self.bank.subjects)}")
        record.donor = donor
        shared = draw_shared_warp(rng, self.scale_range, self.rotation_rad)
        own_scale = tuple(1.0 + _OWN_WARP * (s - 1.0) for s in self.scale_range)
        own_rotation = _OWN_WARP * self.rotation_rad
        for organ in self.order:
            cls_id = self.bank.class_id(organ)
            index = cls_id - 1
            expected = self.anchors.expected_position(index, placed_pos, donor)
            tolerance = self.anchors.tolerance_mm(index, self.jitter_scale) if self.use_anchors else np.zeros(3)
            slack = self.reach_mm[organ] + np.linalg.norm(tolerance)
            far_corner = origin + (np.asarray(self.patch_size) - 1) * spacing
            if self.use_anchors and box_distance(expected, origin, far_corner) > slack:  # without anchors: anywhere
                record.unreachable.append(organ)
                continue
            parents = [p for p in self.parent_ids[organ] if p in placed_ids]
            violation, guide = None, None
            for tries in range(1, self.max_tries + 1):
                # each retry draws fresh jitter and warp of shrinking amplitude (1, ..., 0 at the last try), and
                # takes the donor's own shape where it has one: later tries approach the donor's layout, which fits.
                # After a collision, it follows the organ it collided with: that subject's shape where that subject
                # has it relative to the placed neighbour (a gallbladder fits the liver it was measured against).
                damping = 1.0 - (tries - 1) / max(self.max_tries - 1, 1)
                shape, pos, expected = self.draw(organ, donor, rng, tries > 1, damping, placed_pos, guide, origin)
                params = draw_warp_params(rng, own_scale, own_rotation, self.deform_vox, damping, shared)
                candidate = Candidate(cls_id, shape, (pos - origin) / spacing, params, parents)
                # integer shifts that keep the organ within its tolerance of the anchor
                room = (
                    np.ceil((expected - tolerance - pos) / spacing),
                    np.floor((expected + tolerance - pos) / spacing),
                )
                search = tries > self.max_tries - _SEARCH_TRIES  # only before giving up
                violation, carved, overwritten = self._place(canvas, candidate, room if search else None, rng)
                if violation is None:
                    pos = pos + candidate.shift_vox * spacing
                    placed_pos[index] = pos
                    placed_from[cls_id] = (candidate.shape.subject, pos + candidate.offset_vox * spacing)
                    placed_ids.add(cls_id)
                    record.placed.append(
                        PlacedOrgan(
                            organ, cls_id, candidate.shape.subject, pos, expected, tolerance, tries, carved, overwritten
                        )
                    )
                    if candidate.stand_in:
                        record.stand_ins.append(organ)
                    if candidate.shifted:
                        record.shifted.append(organ)
                if violation is None or violation.kind == OUTSIDE:
                    break
                if violation.neighbour is not None:
                    guide = self.draw.guide(organ, violation.neighbour, placed_from) or guide
            if violation is not None and violation.kind == OUTSIDE:
                record.unreachable.append(organ)
            elif violation is not None:
                record.skipped.append(SkippedOrgan.from_violation(organ, self.max_tries, violation))
        counts = torch.bincount(canvas.flatten(), minlength=self.bank.num_classes)  # uint8 counts 5x faster than int64
        for p in record.placed:
            p.voxels = int(counts[p.class_id])
        return canvas, record

    # ------------------------------------------------------------------ one candidate
    def _place(
        self, canvas: torch.Tensor, candidate: Candidate, room: tuple[np.ndarray, np.ndarray] | None, rng
    ) -> tuple[Violation | None, int, int]:
        """Insert one candidate: as drawn, else by a complete stand-in where a cut face shows, else shifted.

        ``room``: the lowest and highest voxel shift per axis that keep the organ within its anchor tolerance (None:
        no shift search).
        ``candidate`` is updated to what was finally tried (shape, stand-in offset, shift). Returns ``(violation or
        None, voxels carved, voxels overwritten)``.
        """
        warp = candidate.warp(self.patch_size)
        if warp is None:
            return _OUTSIDE, 0, 0
        result = self._try_insert(canvas, candidate.shape, warp, candidate.cls_id, candidate.parents)
        if result[0] is not None and result[0].kind == CUT_FACE:
            complete = self.complete_shapes[self.bank.organs[candidate.cls_id - 1]]
            if not complete:
                return result
            stand_in = complete[rng.randint(len(complete))]
            candidate.offset_vox = stand_in_offset(candidate.shape, stand_in)
            candidate.shape, candidate.stand_in = stand_in, True
            warp = candidate.warp(self.patch_size)
            if warp is None:
                return _OUTSIDE, 0, 0
            result = self._try_insert(canvas, stand_in, warp, candidate.cls_id, candidate.parents)
        if result[0] is None or result[0].kind not in _COLLISIONS:
            return result
        return (room is not None and self._shift(canvas, candidate, warp, room)) or result

    def _shift(
        self, canvas: torch.Tensor, candidate: Candidate, warp: Warp, room: tuple[np.ndarray, np.ndarray]
    ) -> tuple[None, int, int] | None:
        """Move a colliding candidate to the nearest free spot within its anchor tolerance, or None.

        Shifted copies of the coarse candidate, at its scale and shrunk to the smallest scale allowed, are tested
        against the patch in one gather; the nearest that pass (with a margin on the carve and inside fractions)
        are checked and written at full resolution.
        """
        coarse = self._coarse[1] if self._coarse[0] is warp else sample_shape(candidate.shape, warp, step=2) != 0
        points = torch.nonzero(coarse) * 2 + torch.from_numpy(warp.lo)
        shifts = shift_grid(np.minimum(room[0], 0), np.maximum(room[1], 0))
        if len(points) == 0:
            return None
        points = points[:: math.ceil(len(points) / _SEARCH_POINTS)]
        shrink = self.scale_range[0] / float(candidate.params.scale.min())
        factors = [1.0] + ([shrink] if shrink < 0.99 else [])
        pivot = torch.from_numpy(warp.pivot)
        copies = torch.stack([(pivot + f * (points - pivot)).round().long() for f in factors])  # (F, N, 3)
        offsets = torch.cat([torch.zeros((1, 3), dtype=torch.long), shifts])  # (K, 3): unshifted first
        max_carve = max(self.rules.max_carve_fraction - _SEARCH_MARGIN, 0.0)
        min_inside = min(self.rules.min_inside_fraction + _SEARCH_MARGIN, 1.0)
        table = self.rules.table[candidate.cls_id]
        free = free_candidates(canvas, copies, offsets, table, candidate.parents, max_carve, min_inside).flatten()
        free[0] = False  # the candidate as drawn has failed already
        # nearest first; a shrunk copy counts as a shift of two voxels
        cost = (offsets**2).sum(dim=1)[None, :] + 4 * torch.arange(len(factors))[:, None]
        order = torch.argsort(cost.flatten(), stable=True)
        start = candidate.params
        for k in order[free[order]][:_SEARCH_CHECKS].tolist():
            factor, offset = factors[k // len(offsets)], offsets[k % len(offsets)]
            candidate.shift_vox = offset.numpy().astype(float)
            candidate.params = start.shrunk(factor) if factor != 1.0 else start
            moved_warp = candidate.warp(self.patch_size)
            if moved_warp is None:
                continue
            result = self._try_insert(canvas, candidate.shape, moved_warp, candidate.cls_id, candidate.parents)
            if result[0] is None:
                candidate.shifted = True
                return result
        candidate.shift_vox, candidate.params = np.zeros(3), start
        return None

    def _try_insert(
        self, canvas: torch.Tensor, shape: PreparedShape, warp: Warp, cls_id: int, parents: list[int]
    ) -> tuple[Violation | None, int, int]:
        """Check a candidate against the canvas and write it, then tell the observers.

        A coarse pass (every second voxel) rejects most violating candidates at an eighth of the cost; the full
        pass then checks and writes. Returns ``(None, voxels carved, voxels overwritten)`` on success, else
        ``(violation, 0, 0)``: a ``cut_face`` one when a voxel next to a face the field of view cut lands in the
        patch, an ``outside`` one when the warped shape covers no voxel of the patch.
        """
        view = canvas[warp.region]

        def sizes() -> torch.Tensor:  # voxels per class in the patch, only wanted when an organ may indent others
            return torch.bincount(canvas.flatten(), minlength=self.bank.num_classes)

        if not parents:  # an inside test needs the full resolution; a coarse one could wrongly reject
            coarse = sample_shape(shape, warp, step=2)
            if shape.cut:
                if bool((coarse == CUT_MARK).any()):
                    return _CUT, 0, 0
                coarse = coarse != 0
            self._coarse = (warp, coarse)  # kept for the shift search should the candidate collide
            coarse_view = view[::2, ::2, ::2]
            coarse_hits = (coarse_view != 0) & coarse  # elementwise tests beat boolean-mask reads of a strided view
            if bool(coarse_hits.any()):
                existing = coarse_view[coarse_hits].long()
                n_coarse = max(int(torch.count_nonzero(coarse)), 1)
                violation = self.rules.check(
                    existing, cls_id, n_coarse, parents, _CLIP_FRACTION + _COARSE_MARGIN, lambda: sizes() / 8, 0.1
                ).violation
                # a disjoint overlap clearly over the clip limit is certain; an adjacent overlap estimated from every
                # 8th voxel (with a margin on its limits) is trusted only on an organ large enough to be tight
                if violation is not None and (violation.kind == DISJOINT_OVERLAP or n_coarse >= _COARSE_TRUSTED):
                    return violation, 0, 0
        cand = sample_shape(shape, warp)
        if shape.cut:
            if bool((cand == CUT_MARK).any()):
                return _CUT, 0, 0
            cand = cand != 0
        n = int(torch.count_nonzero(cand))
        if n == 0:
            return _OUTSIDE, 0, 0
        hits = (view != 0) & cand
        before = view.clone() if self.observers else None
        if not parents and not bool(hits.any()):  # a child on empty ground still fails its inside check
            view.masked_fill_(cand, cls_id)
            self._notify(cls_id, shape, warp, before, view, cand, parents)
            return None, 0, 0
        existing = view[hits].long()
        verdict = self.rules.check(existing, cls_id, n, parents, _CLIP_FRACTION, sizes)
        violation, carved, overwritten, _, protected, disjoint = verdict
        if violation is None:
            if not bool(protected.any()):  # only free or overwritable labels below: write the whole candidate
                view.masked_fill_(cand, cls_id)
                self._notify(cls_id, shape, warp, before, view, cand, parents)
                return violation, carved, overwritten
            keep = torch.zeros_like(hits)
            keep[hits] = protected
            if bool(disjoint.any()):  # give up the voxels of disjoint organs and one more (not to end flush against
                clipped = torch.zeros_like(hits)  # an organ it never touches), if few and the organ stays whole
                clipped[hits] = disjoint
                clipped = cand & dilate(clipped)
                if int(torch.count_nonzero(clipped)) > _CLIP_FRACTION * n or split(cand & ~clipped, cand):
                    return Violation.disjoint(self.rules.disjoint_hits(existing, cls_id)), 0, 0
                cand = cand & ~clipped
            view.masked_fill_(cand & ~keep, cls_id)
            self._notify(cls_id, shape, warp, before, view, cand, parents)
        return violation, carved, overwritten

    def _notify(self, cls_id: int, shape: PreparedShape, warp: Warp, before, after, mask, parents) -> None:
        if self.observers:
            crop_index = lambda: warp.crop_index(shape.dims) - 1  # noqa: E731  (unpadded mask indices)
            insertion = Insertion(cls_id, warp.region, before, after, mask, tuple(parents), shape.source, crop_index)
            for observer in self.observers:
                observer(insertion)
