"""Which bank shape a candidate of :class:`~synth_transforms.placement.OrganPlacer` takes, and where it goes.

Each organ of a patch follows a donor subject: the donor's own shape (with probability ``donor_prob``, always on a
retry) at the donor's own position for it, jittered by the anchor's spread. After a collision, a retry follows the
organ it collided with instead (:meth:`CandidateDraw.guide`): that subject's shape, where that subject has it relative
to the placed neighbour, so that a gallbladder meets the liver it was measured against. With ``use_anchors=False``
(the ``no_anchors`` ablation) positions are uniform in the patch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .anchors import AnchorModel
from .bank import ShapeBank
from .placement_search import PreparedShape

__all__ = ["CandidateDraw", "Guide"]

#: A retry's guide: the shape to take and the position (mm) to jitter about.
Guide = tuple[PreparedShape, np.ndarray]


class CandidateDraw:
    """Draws the shape, position and expected position (mm, frame coordinates) of an organ's candidates.

    Args:
        bank: the shape bank; ``anchors`` its anchor model.
        shapes: organ -> the prepared shapes a random draw picks from.
        donor_shapes: organ -> {subject: that subject's own prepared shape}.
        donor_prob: probability that a first try takes the donor's own shape.
        jitter_scale: multiplies each anchor's spread.
        use_anchors: False: positions uniform in the patch.
        patch_size: patch size in voxels.
    """

    def __init__(
        self,
        bank: ShapeBank,
        anchors: AnchorModel,
        shapes: Mapping[str, list[PreparedShape]],
        donor_shapes: Mapping[str, Mapping[str, PreparedShape]],
        donor_prob: float,
        jitter_scale: float,
        use_anchors: bool,
        patch_size: Sequence[int],
    ):
        self.bank, self.anchors, self.shapes, self.donor_shapes = bank, anchors, shapes, donor_shapes
        self.donor_prob, self.jitter_scale, self.use_anchors = donor_prob, jitter_scale, use_anchors
        self.extent_mm = (np.asarray(patch_size) - 1) * bank.spacing

    def __call__(
        self,
        organ: str,
        donor: str,
        rng: np.random.RandomState,
        retry: bool,
        damping: float,
        placed_pos: Mapping[int, np.ndarray],
        guide: Guide | None,
        origin: np.ndarray,
    ) -> tuple[PreparedShape, np.ndarray, np.ndarray]:
        """``(shape, position, expected position)`` of one candidate; the jitter is shrunk by ``damping``."""
        index = self.bank.class_id(organ) - 1
        jitter = self.jitter_scale * damping
        if guide is not None:
            pos, expected = self.anchors.sample(index, rng, jitter, expected=guide[1])
            return guide[0], pos, expected
        shape = self.pick_shape(organ, donor, rng, retry)
        if not self.use_anchors:
            pos = origin + rng.uniform(size=3) * self.extent_mm
            return shape, pos, pos
        subject = donor if shape.subject == donor else None  # the donor's shape sits where the donor's did
        pos, expected = self.anchors.sample(index, rng, jitter, placed_pos, subject)
        return shape, pos, expected

    def pick_shape(self, organ: str, donor: str, rng: np.random.RandomState, retry: bool = False) -> PreparedShape:
        """The donor's own shape (cut or not) with probability donor_prob (always on a retry), else a random one."""
        own = self.donor_shapes[organ].get(donor)
        if own is not None and (rng.uniform() < self.donor_prob or retry):
            return own
        shapes = self.shapes[organ]
        return shapes[rng.randint(len(shapes))]

    def guide(self, organ: str, neighbour: int, placed_from: Mapping[int, tuple[str, np.ndarray]]) -> Guide | None:
        """``organ``'s shape and expected position in the subject of the placed ``neighbour``'s shape, or None.

        ``placed_from``: class id -> (subject of the placed shape, where its centroid went, mm).
        """
        if not self.use_anchors:
            return None
        subject, neighbour_mm = placed_from[neighbour]
        shape = self.donor_shapes[organ].get(subject)
        offset = self.anchors.subject_offset(self.bank.class_id(organ) - 1, neighbour - 1, subject)
        return None if shape is None or offset is None else (shape, neighbour_mm + offset)
