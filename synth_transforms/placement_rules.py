"""The insertion checks of :class:`~synth_transforms.placement.OrganPlacer`: what a candidate may cover.

:class:`InsertionRules` turns a :class:`~synth_transforms.topology.TopologyGraph` into a lookup table of relation codes
(``table[new, existing]``) and judges a candidate from the labels it would cover: a disjoint organ rejects it (beyond
a small fraction, clipped off), an adjacent organ may take at most ``max_carve_fraction`` of it, a child must lie at
least ``min_inside_fraction`` in its parent. ``enforce=False`` (the ``no_topology`` ablation) turns every relation into
"the later organ overwrites", so nothing is ever rejected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .placement_records import Violation
from .topology import CODE_CARVE, CODE_DISJOINT, CODE_FREE, CODE_KEEP, CODE_OVERWRITE, TopologyGraph

__all__ = ["InsertionRules", "Verdict"]


class Verdict(NamedTuple):
    """What the rules say of a candidate: its ``violation`` (None: accepted), the voxels it leaves to the organs
    below (``carved``), the voxels it takes from its parents (``overwritten``) and whether it ``indents`` its adjacent
    organs (keeps the voxels it shares with them) rather than being carved. An accepted candidate also gets, per
    covered label, whether that label stays (``protected``) and whether it belongs to a disjoint organ (``disjoint``),
    so that the write needs no second lookup of the relation codes."""

    violation: Violation | None
    carved: int = 0
    overwritten: int = 0
    indents: bool = False
    protected: torch.Tensor | None = None
    disjoint: torch.Tensor | None = None


class InsertionRules:
    """Relation checks of a new organ against the labels its candidate covers.

    Args:
        graph: the topology graph (its organs in the bank's class order).
        max_carve_fraction: largest fraction of a new organ that may overlap adjacent organs (carved off it).
        min_inside_fraction: smallest fraction of a child that must lie in its placed parent.
        indent_fraction: a new organ overlapping adjacent organs by more than ``max_carve_fraction`` of itself (but at
            most ``max_embed_fraction``) keeps the shared voxels instead, if they are at most this fraction of each
            adjacent organ it overlaps: a small organ (gallbladder, a vein) indents a large one (liver) rather than
            being skipped or cut into pieces. 0 disables it.
        max_embed_fraction: largest fraction of a new organ that may lie in adjacent organs it indents.
        enforce: False: no checks at all; a later organ overwrites whatever it covers (the ``no_topology`` ablation).
    """

    def __init__(
        self,
        graph: TopologyGraph,
        max_carve_fraction: float,
        min_inside_fraction: float,
        indent_fraction: float = 0.0,
        max_embed_fraction: float = 1.0,
        enforce: bool = True,
    ):
        self.graph = graph
        self.organs = list(graph.organs)
        self.enforce = bool(enforce)
        codes = torch.from_numpy(graph.code_table().astype("int64"))
        if not self.enforce:
            codes = torch.where(codes == CODE_FREE, codes, torch.full_like(codes, CODE_OVERWRITE))
        self.table = codes
        self.max_carve_fraction = float(max_carve_fraction) if self.enforce else 1.0
        self.min_inside_fraction = float(min_inside_fraction) if self.enforce else 0.0
        self.indent_fraction = float(indent_fraction)
        self.max_embed_fraction = float(max_embed_fraction)

    def parents(self, organ: str) -> list[str]:
        """The organs ``organ`` must lie inside (none when the rules are not enforced)."""
        return self.graph.parents(organ) if self.enforce else []

    def check(
        self,
        existing: torch.Tensor,
        cls_id: int,
        n: int,
        parents: list[int],
        clip: float = 0.0,
        sizes: Callable[[], torch.Tensor] | None = None,
        margin: float = 0.0,
    ) -> Verdict:
        """Judge a candidate of ``n`` voxels from the non-zero labels ``existing`` it would cover.

        Args:
            existing: the labels under the candidate's voxels that are not background.
            cls_id: the candidate's class id; ``parents`` the class ids of its placed parents.
            clip: largest fraction of the candidate on disjoint organs that is clipped off it rather than rejected.
            sizes: voxels of each class in the patch, on the same sampling as ``existing`` (None: no indenting).
            margin: added to the adjacent-overlap limits (a coarse estimate is trusted only clearly over them).

        A violation names the organ the candidate collided with most (``neighbour``) when there is one.
        """
        codes = self.table[cls_id][existing]
        counts = torch.bincount(codes, minlength=5)
        disjoint = codes == CODE_DISJOINT
        if counts[CODE_DISJOINT] > clip * n:
            neighbour = _most_common(existing, codes, CODE_DISJOINT)
            return Verdict(Violation.disjoint(self._names(existing[disjoint]), neighbour))
        n -= int(counts[CODE_DISJOINT])  # voxels clipped off are not the organ's
        carved, kept = int(counts[CODE_CARVE]), int(counts[CODE_KEEP])
        indents = False
        if carved + kept > (self.max_carve_fraction + margin) * n:
            indents = self._indents(existing, codes, carved, kept, n, sizes, margin)
            if not indents:
                neighbour = _most_common(existing, codes, CODE_CARVE, CODE_KEEP)
                return Verdict(Violation.adjacent_overlap((carved + kept) / n, self.max_carve_fraction, neighbour))
        if parents:
            inside = int(sum((existing == p).sum() for p in parents))
            if inside < self.min_inside_fraction * n:
                return Verdict(Violation.inside_fraction(inside / n))
        protected = self._protected(codes, indents)
        if indents:  # the audit counts the indented voxels
            return Verdict(None, kept, int(counts[CODE_OVERWRITE]), True, protected, disjoint)
        return Verdict(None, carved + kept, int(counts[CODE_OVERWRITE]), False, protected, disjoint)

    def _indents(self, existing, codes, carved: int, kept: int, n: int, sizes, margin: float) -> bool:
        """Whether the candidate may keep the voxels it shares with adjacent organs (see ``indent_fraction``)."""
        if sizes is None or self.indent_fraction <= 0 or kept > (self.max_carve_fraction + margin) * n:
            return False
        if carved > (self.max_embed_fraction + margin) * n:
            return False
        shared = torch.bincount(existing[codes == CODE_CARVE], minlength=len(self.organs) + 1)
        return bool((shared <= (self.indent_fraction + margin) * sizes()).all())

    def protected(self, existing: torch.Tensor, cls_id: int, indents: bool = False) -> torch.Tensor:
        """Which of the covered labels ``existing`` the new organ must leave as they are."""
        return self._protected(self.table[cls_id][existing], indents)

    @staticmethod
    def _protected(codes: torch.Tensor, indents: bool) -> torch.Tensor:
        if indents:  # adjacent organs give their shared voxels up; disjoint organs and inside children never do
            return (codes == CODE_DISJOINT) | (codes == CODE_KEEP)
        return (codes != CODE_FREE) & (codes != CODE_OVERWRITE)

    def disjoint_hits(self, existing: torch.Tensor, cls_id: int) -> list[str]:
        """Names of the organs among the labels ``existing`` that the new organ must avoid."""
        return self._names(existing[self.table[cls_id][existing] == CODE_DISJOINT])

    def _names(self, labels: torch.Tensor) -> list[str]:
        return [self.organs[h - 1] for h in torch.unique(labels).tolist()]


def _most_common(labels: torch.Tensor, codes: torch.Tensor, *wanted: int) -> int | None:
    """The most frequent label among ``labels`` whose code is one of ``wanted`` (None if there is none)."""
    mask = codes == wanted[0]
    for code in wanted[1:]:
        mask |= codes == code
    picked = labels[mask]
    return int(torch.bincount(picked).argmax()) if len(picked) else None
