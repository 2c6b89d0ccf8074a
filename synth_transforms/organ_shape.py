"""OrganShape: one organ of one subject in a shape bank (cropped mask, position, volume, cut faces)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FACE_NAMES", "OrganShape"]

#: Names of the crop faces, ``FACE_NAMES[axis][side]`` (side 0: low index), in the bank's RAS voxel order.
FACE_NAMES = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class OrganShape:
    """One organ of one subject.

    Attributes:
        organ: organ name.
        subject: subject id.
        mask: boolean mask ``(X, Y, Z)`` cropped to the organ's bounding box, RAS voxel order.
        offset_vox: index of the crop's first voxel in the subject grid.
        centroid_mm: centroid in the subject grid, in mm from the grid's first voxel.
        volume_ml: organ volume in millilitres.
        truncated: the organ touches the edge of the subject's field of view (its shape is incomplete).
        mirrored: the shape is the left-right mirror of the partner organ (it carries no position information).
        cut_faces: ``(3, 2)`` bool, ``cut_faces[axis, side]``: the field of view cut the crop's face on that side
            (side 0: low index; names in :data:`FACE_NAMES`); None where unknown (banks saved before it was
            recorded): :attr:`cut_face_mask` then falls back on ``truncated``.
    """

    organ: str
    subject: str
    mask: np.ndarray
    offset_vox: tuple[int, int, int]
    centroid_mm: np.ndarray
    volume_ml: float
    truncated: bool
    mirrored: bool = False
    cut_faces: np.ndarray | None = None

    @property
    def centroid_vox_in_crop(self) -> np.ndarray:
        """Centroid of the mask in crop voxel coordinates."""
        return np.argwhere(self.mask).mean(axis=0)

    @property
    def cut_face_mask(self) -> np.ndarray:
        """``(3, 2)`` bool faces cut by the field of view; where unknown, every face is cut iff ``truncated``."""
        if self.cut_faces is not None:
            return self.cut_faces
        return np.full((3, 2), bool(self.truncated))

    @property
    def cut_face_names(self) -> str:
        """The cut faces as letters (``"IS"``: inferior and superior), ``"?"`` when unknown for a truncated shape."""
        if self.cut_faces is None and self.truncated:
            return "?"
        return "".join(FACE_NAMES[a][s] for a, s in np.argwhere(self.cut_face_mask))
