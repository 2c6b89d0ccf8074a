"""An observer of :class:`~synth_transforms.placement.OrganPlacer` that audits every accepted insertion.

:class:`InsertAudit` compares each insertion's region before and after the write (which labels the new organ took
over) and counts the voxels it wrote from next to a face that the field of view cut off its bank shape
(:func:`cut_face_voxels`), independently of the placer's own bookkeeping. :mod:`synth_transforms.metrics` turns its
snapshots into per-sample metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .placement_records import Insertion
from .placement_search import CUT_BAND

__all__ = ["InsertAudit", "cut_face_voxels"]


class InsertAudit:
    """Records, for each organ an :class:`~synth_transforms.placement.OrganPlacer` inserts, which labels it took over.

    An observer of the placer (``OrganPlacer(..., observers=[audit])`` or ``placer.observers.append(audit)``): it
    compares the region of every accepted insertion before and after the write, which checks the placement
    independently of the placer's own bookkeeping. It also counts the written voxels that came from within
    :data:`~synth_transforms.placement_search.CUT_BAND` slices of a face its bank shape was cut at (mapped through the
    insertion's warp by its ``crop_index``). Call :meth:`reset` before each sample and :meth:`snapshot` after.

    Args:
        num_classes: classes including background (``bank.num_classes``).
    """

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.taken = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.taken_fraction = np.zeros((self.num_classes, self.num_classes))
        self.sizes = np.zeros(self.num_classes, dtype=np.int64)
        self.written: dict[int, int] = {}
        self.cut_face: dict[int, int] = {}

    def __call__(self, insertion: Insertion) -> None:
        """The observer call: record one accepted insertion."""
        self.record(insertion.before, insertion.after, insertion.cls_id)
        if insertion.shape is not None and insertion.crop_index is not None:
            cut = cut_face_voxels(insertion.shape.cut_face_mask, insertion.shape.mask.shape, insertion)
            self.cut_face[insertion.cls_id] = self.cut_face.get(insertion.cls_id, 0) + cut

    def reset(self) -> None:
        """Forget the insertions seen so far."""
        self.taken[:] = 0
        self.taken_fraction[:] = 0.0
        self.sizes[:] = 0
        self.written = {}
        self.cut_face = {}

    def record(self, before: torch.Tensor, after: torch.Tensor, cls_id: int) -> None:
        """Count what one accepted insertion of class ``cls_id`` changed in its region.

        Also keeps each class's voxels in the patch (the sum of all insertions so far), so that what an insertion took
        is known as a fraction of each organ it took from (``taken_fraction``, the largest over insertions).
        """
        changed = before != after
        old = before[changed].long()
        taken = torch.bincount(old, minlength=self.num_classes).numpy()
        self.taken[cls_id] += taken
        self.written[cls_id] = self.written.get(cls_id, 0) + int(old.numel())
        fraction = taken / np.maximum(self.sizes, 1)
        self.taken_fraction[cls_id] = np.maximum(self.taken_fraction[cls_id], fraction)
        self.sizes -= taken
        self.sizes[cls_id] += int(old.numel())

    def snapshot(self) -> dict:
        """``{"taken": (C, C) array [new class, old class] of voxels, "taken_fraction": (C, C) largest fraction of the
        old class taken by one insertion, "written": {class id: voxels}, "cut_face": {class id: voxels on cut faces}}``.
        """
        return {
            "taken": self.taken.copy(),
            "taken_fraction": self.taken_fraction.copy(),
            "written": dict(self.written),
            "cut_face": dict(self.cut_face),
        }


def cut_face_voxels(faces: np.ndarray, crop_shape: Sequence[int], insertion: Insertion) -> int:
    """Voxels an insertion wrote with its class that came from within ``CUT_BAND`` slices of a cut face of its shape.

    Args:
        faces: ``(3, 2)`` bool, the shape's faces cut by the field of view (``OrganShape.cut_face_mask``).
        crop_shape: the shape's mask shape.
        insertion: the accepted insertion (its ``crop_index`` maps each region voxel to the mask voxel it read).
    """
    faces = np.asarray(faces, dtype=bool)
    if not faces.any():
        return 0
    index = insertion.crop_index()
    written = insertion.mask & (insertion.after == insertion.cls_id)
    on_face = torch.zeros_like(written)
    for axis, side in np.argwhere(faces):
        k = index[axis]
        low = 0 if side == 0 else crop_shape[axis] - CUT_BAND
        on_face |= (k >= low) & (k < low + CUT_BAND)
    return int((written & on_face).sum())
