"""Typed results of :class:`~synth_transforms.placement.OrganPlacer`: the contract between the placer and its readers.

- :class:`PlacementRecord`: what one placement did, with a :class:`PlacedOrgan` per placed organ and a
  :class:`SkippedOrgan` per organ given up (its ``reason_kind`` and reason text come from a :class:`Violation`);
- :class:`Insertion`: one accepted candidate as the placer's observers see it (what an audit of the placement needs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "PlacementRecord",
    "PlacedOrgan",
    "SkippedOrgan",
    "Violation",
    "Insertion",
    "REASON_KINDS",
    "DISJOINT_OVERLAP",
    "ADJACENT_OVERLAP",
    "INSIDE_FRACTION",
    "CUT_FACE",
    "OUTSIDE",
]

# Kinds of violation (``Violation.kind``, ``SkippedOrgan.reason_kind``).
DISJOINT_OVERLAP = "disjoint"  # the candidate covered an organ it must be disjoint from
ADJACENT_OVERLAP = "adjacent_overlap"  # it overlapped adjacent organs by more than max_carve_fraction of itself
INSIDE_FRACTION = "inside_fraction"  # less than min_inside_fraction of it lay in its placed parent
CUT_FACE = "cut_face"  # a face that the field of view cut lay inside the patch, and no complete shape could stand in
OUTSIDE = "outside"  # it covered no voxel of the patch: its organ is recorded as unreachable, never as skipped
REASON_KINDS = (DISJOINT_OVERLAP, ADJACENT_OVERLAP, INSIDE_FRACTION, CUT_FACE, OUTSIDE)


class Violation(NamedTuple):
    """Why a candidate was rejected.

    Attributes:
        kind: one of :data:`REASON_KINDS`.
        text: the reason for people, e.g. ``"adjacent overlap 41% > 30%"``.
        cause: ``text`` without its sample-specific measurement (``"adjacent overlap > 30%"``), so that equal causes
            count together in a report.
        neighbour: class id of the placed organ the candidate collided with most (None: not a collision).
    """

    kind: str
    text: str
    cause: str
    neighbour: int | None = None

    @classmethod
    def disjoint(cls, organs: Sequence[str], neighbour: int | None = None) -> Violation:
        """The candidate covered ``organs``, which it must be disjoint from (``neighbour``: the most covered one)."""
        text = "disjoint overlap with " + ", ".join(organs)
        return cls(DISJOINT_OVERLAP, text, text, neighbour)

    @classmethod
    def adjacent_overlap(cls, fraction: float, limit: float, neighbour: int | None = None) -> Violation:
        """A ``fraction`` of the candidate (most on ``neighbour``) overlapped adjacent organs, more than ``limit``."""
        return cls(
            ADJACENT_OVERLAP,
            f"adjacent overlap {fraction:.0%} > {limit:.0%}",
            f"adjacent overlap > {limit:.0%}",
            neighbour,
        )

    @classmethod
    def inside_fraction(cls, fraction: float) -> Violation:
        """Only a ``fraction`` of the candidate lay in its placed parent, too little."""
        return cls(INSIDE_FRACTION, f"only {fraction:.0%} inside its parent", "too little inside its parent")

    @classmethod
    def cut_face(cls) -> Violation:
        """A face of the shape that the subject's field of view cut lay inside the patch."""
        text = "cut face inside the patch"
        return cls(CUT_FACE, text, text)

    @classmethod
    def outside(cls) -> Violation:
        """The warped shape covered no voxel of the patch."""
        return cls(OUTSIDE, OUTSIDE, OUTSIDE)


@dataclass
class PlacedOrgan:
    """One placed organ.

    Attributes:
        organ: its name; ``class_id`` its bank class id; ``subject`` the subject whose shape was used.
        position_mm: where its centroid went before the patch-wide scale and rotation (about the patch centre) and its
            own scale, rotation and deformation (which pivot on the organ point nearest the patch centre); for a
            stand-in (:attr:`PlacementRecord.stand_ins`), where the
            centroid of the donor shape it replaced went.
        expected_mm: its anchor (for a retry that followed a neighbour it collided with, where that neighbour's
            subject has it relative to the neighbour); ``tolerance_mm`` the per-axis bound of the jitter around it.
        tries: candidates drawn, the accepted one included.
        carved: voxels of the candidate left to adjacent organs (and to its own children).
        overwritten: voxels it took from its parents.
        voxels: what it holds in the finished patch (after later organs); None until the patch is finished.
    """

    organ: str
    class_id: int
    subject: str
    position_mm: np.ndarray
    expected_mm: np.ndarray
    tolerance_mm: np.ndarray
    tries: int
    carved: int = 0
    overwritten: int = 0
    voxels: int | None = None

    def to_dict(self) -> dict:
        """JSON-friendly form, fields in order (arrays rounded to 0.01 mm; ``voxels`` only once known)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "voxels" or self.voxels is not None}
        return {k: np.asarray(v).round(2).tolist() if isinstance(v, np.ndarray) else v for k, v in out.items()}


@dataclass(frozen=True)
class SkippedOrgan:
    """One organ given up after ``tries`` violating candidates.

    Attributes:
        organ: its name.
        tries: candidates drawn (all rejected).
        reason_kind: the last violation's kind (one of :data:`REASON_KINDS`).
        reason: its text, for people.
        cause: its text without the sample-specific measurement (to count equal causes together).
    """

    organ: str
    tries: int
    reason_kind: str
    reason: str
    cause: str

    @classmethod
    def from_violation(cls, organ: str, tries: int, violation: Violation) -> SkippedOrgan:
        """The record of ``organ`` given up after ``tries`` candidates, the last one rejected for ``violation``."""
        return cls(organ, tries, violation.kind, violation.text, violation.cause)

    def to_dict(self) -> dict:
        """JSON-friendly form: ``organ``, ``tries``, ``reason`` (the text)."""
        return {"organ": self.organ, "tries": self.tries, "reason": self.reason}


@dataclass(frozen=True)
class Insertion:
    """An accepted candidate right after its write, as :class:`~synth_transforms.placement.OrganPlacer`'s observers
    see it. ``before``, ``after`` and ``mask`` cover ``region``, the candidate's bounding box in the patch.

    Attributes:
        cls_id: class id of the new organ.
        region: the patch slices of the candidate's bounding box.
        before: the region's labels before the write (a copy).
        after: the region's labels after it (a view of the patch being built: copy it to keep it).
        mask: the candidate's voxels in the region (bool), carved ones included.
        parents: class ids of the placed parents it had to lie inside.
        shape: the bank shape (:class:`~synth_transforms.bank.OrganShape`) it was drawn from, or None.
        crop_index: called with no argument, the ``(3, *region)`` int64 index of the ``shape.mask`` voxel each region
            voxel took its value from (-1 or the mask's size along an axis where it read beyond the crop), or None.
    """

    cls_id: int
    region: tuple[slice, ...]
    before: torch.Tensor
    after: torch.Tensor
    mask: torch.Tensor
    parents: tuple[int, ...]
    shape: object | None = None
    crop_index: Callable[[], torch.Tensor] | None = None


@dataclass
class PlacementRecord:
    """What one placement did.

    Attributes:
        origin_mm: frame position (mm) of the patch's first voxel.
        spacing: voxel size (mm).
        donor: the subject whose layout this patch follows.
        placed: the placed organs, in placement order.
        skipped: the organs given up after ``max_tries`` violating candidates.
        unreachable: organs not processed because their anchor cannot reach the patch.
        stand_ins: placed organs whose donor shape would have shown a face cut by the field of view inside the patch,
            replaced by a complete shape of another subject (``PlacedOrgan.subject``) aligned to its uncut faces.
        shifted: placed organs whose candidate collided and was moved (within the anchor tolerance) to a free spot.
    """

    origin_mm: np.ndarray
    spacing: float
    donor: str | None = None
    placed: list[PlacedOrgan] = field(default_factory=list)
    skipped: list[SkippedOrgan] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    stand_ins: list[str] = field(default_factory=list)
    shifted: list[str] = field(default_factory=list)

    @property
    def retries(self) -> int:
        """Total number of rejected candidates."""
        return sum(p.tries - 1 for p in self.placed) + sum(s.tries for s in self.skipped)

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {
            "origin_mm": np.asarray(self.origin_mm).round(2).tolist(),
            "spacing": self.spacing,
            "donor": self.donor,
            "placed": [p.to_dict() for p in self.placed],
            "skipped": [s.to_dict() for s in self.skipped],
            "unreachable": list(self.unreachable),
            "stand_ins": list(self.stand_ins),
            "shifted": list(self.shifted),
        }
