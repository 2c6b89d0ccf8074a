"""Spatial anchors: where each organ lies in a reference frame shared by all subjects of a bank.

Subjects have different fields of view, so their grid coordinates disagree by a translation. The frame removes
it from the anatomy itself: each subject's offset is the one that best aligns its complete organs' centroids to
the bank-wide mean positions (a translation-only Procrustes fit over all shared organs, not one landmark). An
organ's anchor is then the mean and spread of its centroid in that frame; a relative anchor positions a child
organ from where its parent was actually placed (adrenal gland from kidney, gallbladder from liver).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .bank import ShapeBank
from .io import read_json, write_json_atomic
from .organ_names import DEFAULT_RELATIVE_ANCHORS, check_relative_anchors

# DEFAULT_RELATIVE_ANCHORS lives in organ_names.py (a bank records its relative anchors when built); exported here too
__all__ = ["AnchorModel", "DEFAULT_RELATIVE_ANCHORS"]


@dataclass
class AnchorModel:
    """Per-organ position distributions in the shared frame (mm).

    Attributes:
        organs: organ names, in the bank's class order.
        mean_mm: ``(n, 3)`` mean centroid of each organ in the frame.
        std_mm: ``(n, 3)`` spread of each organ's centroid (floored at ``min_std_mm``).
        parent: ``(n,)`` index of the organ each one follows, or -1 for an absolute anchor.
        offset_mean_mm: ``(n, 3)`` mean child-minus-parent offset (zero for absolute anchors).
        offset_std_mm: ``(n, 3)`` spread of that offset (floored at ``min_std_mm``).
        max_sigma: jitter is drawn from a normal truncated at this many standard deviations.
        subject_offsets_mm: subject -> translation from the subject's grid to the frame.
        subject_positions_mm: subject -> ``(n, 3)`` frame centroid of each organ of that subject (NaN where
            absent): where that subject's own shape sits, used to draw a coherent layout from one donor subject.
    """

    organs: list[str]
    mean_mm: np.ndarray
    std_mm: np.ndarray
    parent: np.ndarray
    offset_mean_mm: np.ndarray
    offset_std_mm: np.ndarray
    max_sigma: float = 2.0
    subject_offsets_mm: dict[str, list[float]] | None = None
    subject_positions_mm: dict[str, np.ndarray] | None = None

    @classmethod
    def from_bank(
        cls,
        bank: ShapeBank,
        relative: Mapping[str, str] | None = None,
        reference_organs: Sequence[str] | None = None,
        min_std_mm: float = 4.0,
        max_sigma: float = 2.0,
        iterations: int = 20,
    ) -> AnchorModel:
        """Estimate anchors from a bank.

        Args:
            bank: the shape bank.
            relative: child -> parent relative anchors; default: the bank's own (:attr:`ShapeBank.relative_anchors`:
                those given to or found by :meth:`ShapeBank.build`, which matches :data:`DEFAULT_RELATIVE_ANCHORS`
                by name, e.g. ``"right adrenal gland" -> "Kidney_R"``). Pass ``{}`` for absolute anchors only.
            reference_organs: organs whose centroids define the frame (default: every organ).
            min_std_mm: floor on each spread, so organs seen in few subjects still move.
            max_sigma: truncation of the jitter in standard deviations (the anchor tolerance).
            iterations: alternating-fit iterations for the subject offsets.
        """
        organs = bank.organs
        relative = check_relative_anchors(bank.relative_anchors if relative is None else relative, organs)
        ref = bank.check_organs(reference_organs) if reference_organs is not None else organs
        n, subjects = len(organs), bank.subjects
        cent = np.full((len(subjects), n, 3), np.nan)
        complete = np.zeros((len(subjects), n), dtype=bool)
        for j, organ in enumerate(organs):
            for s in bank.measured_shapes(organ):
                i = subjects.index(s.subject)
                cent[i, j] = s.centroid_mm
                complete[i, j] = not s.truncated
        use = complete & np.isin(organs, ref)[None, :]
        lonely = [subjects[i] for i in range(len(subjects)) if not use[i].any()]
        if lonely:
            raise ValueError(f"subjects {lonely} have no complete reference organ: cannot place them in the frame")
        offsets = _fit_offsets(cent, use, iterations)
        frame = cent - offsets[:, None, :]
        mean, std = np.zeros((n, 3)), np.zeros((n, 3))
        for j in range(n):
            rows = complete[:, j] if complete[:, j].any() else ~np.isnan(cent[:, j, 0])
            mean[j] = frame[rows, j].mean(axis=0)
            std[j] = frame[rows, j].std(axis=0)
        parent = np.full(n, -1)
        off_mean, off_std = np.zeros((n, 3)), np.zeros((n, 3))
        for child, par in relative.items():
            c, p = organs.index(child), organs.index(par)
            both = ~np.isnan(cent[:, c, 0]) & ~np.isnan(cent[:, p, 0])
            if not both.any():
                raise ValueError(f"relative anchor {child} -> {par}: no subject has both organs")
            delta = cent[both, c] - cent[both, p]
            parent[c], off_mean[c], off_std[c] = p, delta.mean(axis=0), delta.std(axis=0)
        positions = {s: frame[i] for i, s in enumerate(subjects)}
        return cls(
            list(organs),
            mean,
            np.maximum(std, min_std_mm),
            parent,
            off_mean,
            np.maximum(off_std, min_std_mm),
            max_sigma,
            {s: offsets[i].round(3).tolist() for i, s in enumerate(subjects)},
            positions,
        )

    # ------------------------------------------------------------------ sampling
    def expected_position(
        self, index: int, placed: Mapping[int, np.ndarray] | None = None, subject: str | None = None
    ) -> np.ndarray:
        """Anchor of organ ``index``.

        Absolute anchors: the organ's position in ``subject`` when given and measured there, else the mean.
        Relative anchors: the parent's placed position (or, if the parent was not placed, the parent's anchor)
        plus the child's offset (``subject``'s own offset when both are measured there, else the mean offset).
        """
        own = self.subject_position(index, subject)
        p = int(self.parent[index])
        if p < 0:
            return own if own is not None else self.mean_mm[index]
        base = placed[p] if placed is not None and p in placed else self.expected_position(p, placed, subject)
        parent_own = self.subject_position(p, subject)
        if own is not None and parent_own is not None:
            return base + (own - parent_own)
        return base + self.offset_mean_mm[index]

    def subject_position(self, index: int, subject: str | None) -> np.ndarray | None:
        """Where ``subject`` has organ ``index`` in the frame, or None when unknown."""
        if subject is None or not self.subject_positions_mm or subject not in self.subject_positions_mm:
            return None
        pos = self.subject_positions_mm[subject][index]
        return None if np.isnan(pos).any() else pos

    def subject_offset(self, index: int, other: int, subject: str) -> np.ndarray | None:
        """Where ``subject`` has organ ``index`` relative to its organ ``other`` (mm); None when either is unknown."""
        own, base = self.subject_position(index, subject), self.subject_position(other, subject)
        return None if own is None or base is None else own - base

    def spread(self, index: int) -> np.ndarray:
        """Standard deviation used for organ ``index``'s jitter (offset spread for relative anchors)."""
        return self.offset_std_mm[index] if self.parent[index] >= 0 else self.std_mm[index]

    def tolerance_mm(self, index: int, jitter_scale: float = 1.0) -> np.ndarray:
        """Largest per-axis deviation from the anchor that sampling can produce."""
        return self.max_sigma * jitter_scale * self.spread(index)

    def sample(
        self,
        index: int,
        rng: np.random.RandomState,
        jitter_scale: float = 1.0,
        placed: Mapping[int, np.ndarray] | None = None,
        subject: str | None = None,
        expected: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw a position for organ ``index``: ``(position_mm, expected_mm)``, jitter truncated at max_sigma.

        ``expected``: the position to jitter about, instead of the anchor (e.g. from a placed neighbour).
        """
        if expected is None:
            expected = self.expected_position(index, placed, subject)
        z = np.clip(rng.standard_normal(3), -self.max_sigma, self.max_sigma)
        return expected + z * jitter_scale * self.spread(index), expected

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """JSON-serialisable form (for inspection or hand-editing)."""
        positions = {
            s: [None if np.isnan(p).any() else p.round(3).tolist() for p in pos]
            for s, pos in (self.subject_positions_mm or {}).items()
        }
        return {
            "max_sigma": self.max_sigma,
            "subject_offsets_mm": self.subject_offsets_mm,
            "subject_positions_mm": positions,
            "organs": {
                o: {
                    "mean_mm": self.mean_mm[i].round(3).tolist(),
                    "std_mm": self.std_mm[i].round(3).tolist(),
                    "parent": self.organs[self.parent[i]] if self.parent[i] >= 0 else None,
                    "offset_mean_mm": self.offset_mean_mm[i].round(3).tolist(),
                    "offset_std_mm": self.offset_std_mm[i].round(3).tolist(),
                }
                for i, o in enumerate(self.organs)
            },
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the anchors as JSON (atomically)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike, organs: Sequence[str]) -> AnchorModel:
        """Read anchors from JSON, checking they cover exactly ``organs`` (the bank's organs, in class order)."""
        data = read_json(path, "anchors")
        try:
            entries = data["organs"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"anchors {path}: expected JSON with an 'organs' object ({e})") from e
        missing, extra = set(organs) - set(entries), set(entries) - set(organs)
        if missing or extra:
            raise ValueError(f"anchors {path}: organs missing {sorted(missing)}, unknown {sorted(extra)}")
        organs = list(organs)

        def arr(key):
            try:
                out = np.array([entries[o][key] for o in organs], dtype=float)
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"anchors {path}: every organ needs a 3-vector {key!r} ({e})") from e
            if out.shape != (len(organs), 3):
                raise ValueError(f"anchors {path}: {key!r} must be a 3-vector per organ")
            return out

        parents = [entries[o].get("parent") for o in organs]
        for o, p in zip(organs, parents, strict=True):
            if p is not None and p not in organs:
                raise ValueError(f"anchors {path}: organ {o!r} has unknown parent {p!r}")
        parent = np.array([organs.index(p) if p is not None else -1 for p in parents])
        positions = {
            s: np.array([[np.nan] * 3 if p is None else p for p in pos], dtype=float)
            for s, pos in (data.get("subject_positions_mm") or {}).items()
        }
        for s, pos in positions.items():
            if pos.shape != (len(organs), 3):
                raise ValueError(f"anchors {path}: subject_positions_mm[{s!r}] needs a 3-vector (or null) per organ")
        return cls(
            organs,
            arr("mean_mm"),
            arr("std_mm"),
            parent,
            arr("offset_mean_mm"),
            arr("offset_std_mm"),
            float(data.get("max_sigma", 2.0)),
            data.get("subject_offsets_mm"),
            positions or None,
        )


def _fit_offsets(cent: np.ndarray, use: np.ndarray, iterations: int) -> np.ndarray:
    """Per-subject translations aligning organ centroids to their mean (alternating least squares)."""
    offsets = np.zeros((cent.shape[0], 3))
    for _ in range(iterations):
        aligned = np.where(use[..., None], cent - offsets[:, None, :], np.nan)
        counts = use.sum(axis=0)
        mean = np.where(counts[:, None] > 0, np.nansum(aligned, axis=0) / np.maximum(counts, 1)[:, None], 0.0)
        resid = np.where(use[..., None], cent - mean[None], 0.0)
        offsets = resid.sum(axis=1) / use.sum(axis=1)[:, None]
        offsets -= offsets.mean(axis=0)
    return offsets
