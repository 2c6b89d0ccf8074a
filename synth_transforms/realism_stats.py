"""Per-patch statistics of label patches and the distances between two sets of them (the realism report's
measures, :mod:`synth_transforms.realism`).

Statistics per patch set (:func:`patch_statistics` per patch): organ presence rate, organ volume in the patch (ml),
organs per patch, pairwise centroid offsets (mm, 3D, for pairs present together) and the contact rate of pairs
present together (at least one shared 6-neighbour face). Label-agnostic ones, which also apply to the primitive
baseline (its labels have no organ identity): labels per patch, label volume (pooled over labels), foreground
fraction, fraction of the co-present label pairs that touch, and centroid distance (pooled over pairs).

Distances (lower is closer): absolute difference of rates (the total variation distance of two Bernoulli laws),
1-D Wasserstein distance (``scipy.stats.wasserstein_distance``, W1) of scalar distributions, divided by the mean of
the two sets' mean volumes for volumes (organ volumes span four decades: absolute ml would rank only the large
organs; the symmetric scale lets either side be the reference), and for 3D
offsets the mean over the three axes of the per-axis Wasserstein distance (mm; it ignores the dependence between
axes but reads as a shift in mm, and costs nothing). Each statistic is summarised by its mean over organs or pairs
with at least ``min_samples`` values on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import wasserstein_distance

__all__ = ["STATISTICS", "patch_statistics", "PatchSet", "compare"]

#: statistic -> (what it compares, distance, applies to primitives). Organ-identity statistics come first.
STATISTICS: dict[str, tuple[str, str, bool]] = {
    "presence": ("organ presence rate", "mean |rate difference| over organs", False),
    "volume": ("organ volume in the patch", "mean over organs of W1 / mean volume", False),
    "organs_per_patch": ("organs (labels) per patch", "W1 (organs)", True),
    "centroid_offset": ("centroid offset of co-present pairs", "mean over pairs of per-axis W1 (mm)", False),
    "contact": ("contact rate of co-present pairs", "mean |rate difference| over pairs", False),
    "label_volume": ("label volume, pooled over labels", "W1 / mean volume", True),
    "foreground": ("foreground fraction of the patch", "W1 (fraction)", True),
    "touching_pairs": ("fraction of co-present pairs touching", "W1 (fraction)", True),
    "centroid_distance": ("centroid distance, pooled over pairs", "W1 (mm)", True),
}


# ---------------------------------------------------------------------------------------------- one patch
def patch_statistics(label, num_classes: int, spacing: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel counts, centroids and touching pairs of one label patch.

    Args:
        label: ``(H, W, D)`` (or ``(1, H, W, D)``) integer label map with values in ``0..num_classes - 1``.
        num_classes: number of classes including background.
        spacing: voxel size in mm (centroids are in mm from the patch's first voxel).

    Returns:
        ``(counts, centroids, touch)``: ``(C,)`` voxels per class, ``(C, 3)`` centroids (NaN for absent classes)
        and ``(C, C)`` bool, ``touch[a, b]`` for ``a < b`` when classes a and b (both > 0) share a 6-neighbour face.
    """
    lab = np.asarray(label.as_tensor() if hasattr(label, "as_tensor") else label)
    if lab.ndim == 4 and lab.shape[0] == 1:
        lab = lab[0]
    if lab.ndim != 3:
        raise ValueError(f"patch_statistics: expected a (H, W, D) label, got shape {lab.shape}")
    lab = lab.astype(np.int64, copy=False)
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(f"patch_statistics: label values must lie in 0..{num_classes - 1}")
    counts = np.bincount(lab.ravel(), minlength=num_classes)
    centroids = np.full((num_classes, 3), np.nan)
    present = counts > 0
    for axis, n in enumerate(lab.shape):
        index = np.arange(n).reshape([-1 if a == axis else 1 for a in range(3)])
        per_slice = np.bincount((lab * n + index).ravel(), minlength=num_classes * n).reshape(num_classes, n)
        centroids[present, axis] = per_slice[present] @ np.arange(n) / counts[present]
    faces = np.zeros(num_classes * num_classes, dtype=np.int64)
    for axis, n in enumerate(lab.shape):
        if n < 2:
            continue
        a = lab[tuple(slice(0, n - 1) if k == axis else slice(None) for k in range(3))]
        b = lab[tuple(slice(1, n) if k == axis else slice(None) for k in range(3))]
        faces += np.bincount((a * num_classes + b).ravel(), minlength=num_classes**2)
    faces = faces.reshape(num_classes, num_classes)
    faces = np.triu(faces + faces.T, 1)  # a|b and b|a faces both count for the pair a < b
    faces[0] = 0  # background is no organ
    return counts, centroids * spacing, faces > 0


# ---------------------------------------------------------------------------------------------- patch sets
@dataclass
class PatchSet:
    """Per-patch statistics of a set of label patches.

    Attributes:
        counts: ``(N, C)`` voxels per class.
        centroids: ``(N, C, 3)`` centroids in mm (NaN where absent).
        touch: ``(N, C, C)`` touching pairs (upper triangle).
        spacing: voxel size (mm).
        group: ``(N,)`` subject index of each patch (reference patches) or zeros.
    """

    counts: np.ndarray
    centroids: np.ndarray
    touch: np.ndarray
    spacing: float
    group: np.ndarray

    @classmethod
    def from_patches(cls, items: Sequence[tuple], spacing: float, group: Sequence[int] | None = None) -> PatchSet:
        """Stack :func:`patch_statistics` results."""
        if not items:
            raise ValueError("PatchSet: no patches")
        counts, centroids, touch = (np.stack(parts) for parts in zip(*items, strict=True))
        group = np.zeros(len(items), dtype=int) if group is None else np.asarray(group, dtype=int)
        return cls(counts, centroids, touch, float(spacing), group)

    def __len__(self) -> int:
        return len(self.counts)

    def subset(self, rows) -> PatchSet:
        """The patches at ``rows`` (indices or a boolean mask)."""
        return PatchSet(self.counts[rows], self.centroids[rows], self.touch[rows], self.spacing, self.group[rows])

    @property
    def present(self) -> np.ndarray:
        """``(N, C - 1)`` bool: each organ (class 1..C-1) has voxels in the patch."""
        return self.counts[:, 1:] > 0

    def volumes_ml(self, cls_id: int) -> np.ndarray:
        """Volumes (ml) of class ``cls_id`` in the patches that hold it."""
        c = self.counts[:, cls_id]
        return c[c > 0] * self.spacing**3 / 1000.0

    def co_present(self, a: int, b: int) -> np.ndarray:
        """Rows where classes ``a`` and ``b`` are both present."""
        return (self.counts[:, a] > 0) & (self.counts[:, b] > 0)

    def offsets_mm(self, a: int, b: int) -> np.ndarray:
        """``(m, 3)`` centroid of ``b`` minus centroid of ``a`` in the patches holding both."""
        rows = self.co_present(a, b)
        return self.centroids[rows, b] - self.centroids[rows, a]

    def touching(self, a: int, b: int) -> np.ndarray:
        """Whether ``a`` and ``b`` (``a < b``) touch, in the patches holding both."""
        return self.touch[self.co_present(a, b), a, b]

    # label-agnostic views (class identity ignored)
    def labels_per_patch(self) -> np.ndarray:
        return self.present.sum(axis=1)

    def label_volumes_ml(self) -> np.ndarray:
        c = self.counts[:, 1:]
        return c[c > 0] * self.spacing**3 / 1000.0

    def foreground(self) -> np.ndarray:
        return self.counts[:, 1:].sum(axis=1) / self.counts.sum(axis=1)

    def touching_pair_fraction(self) -> np.ndarray:
        """Per patch with >= 2 labels: touching pairs / co-present pairs."""
        n = self.labels_per_patch()
        pairs = n * (n - 1) / 2
        touching = self.touch.reshape(len(self), -1).sum(axis=1)
        keep = pairs > 0
        return touching[keep] / pairs[keep]

    def centroid_distances_mm(self) -> np.ndarray:
        """Distances between the centroids of every co-present label pair, pooled over patches."""
        out = []
        for row in range(len(self)):
            ids = np.nonzero(self.counts[row, 1:])[0] + 1
            if len(ids) > 1:
                c = self.centroids[row, ids]
                d = np.linalg.norm(c[:, None] - c[None], axis=-1)
                out.append(d[np.triu_indices(len(ids), 1)])
        return np.concatenate(out) if out else np.zeros(0)


# ---------------------------------------------------------------------------------------------- distances
def _w1(x: np.ndarray, y: np.ndarray, min_samples: int) -> float | None:
    if len(x) < min_samples or len(y) < min_samples:
        return None
    return float(wasserstein_distance(x, y))


def _relative_w1(x: np.ndarray, y: np.ndarray, min_samples: int) -> float | None:
    """W1 over the mean of the two sets' means: scale-free and symmetric (either side may be the reference)."""
    d = _w1(x, y, min_samples)
    scale = (x.mean() + y.mean()) / 2 if d is not None else 0.0
    return None if d is None or scale <= 0 else d / float(scale)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def compare(
    test: PatchSet, ref: PatchSet, organs: Mapping[str, int] | Sequence[str], min_samples: int = 10, agnostic=False
) -> dict:
    """Distances of ``test`` to ``ref`` per statistic: ``{stat: {"summary": float | None, "items": {name: d}}}``.

    Args:
        test, ref: patch sets with the same class ids.
        organs: the organs compared, ``{organ: class id}``, or names whose class ids are 1, 2, ...
        min_samples: fewest values on each side for a distribution distance.
        agnostic: compute only the label-agnostic statistics (for the primitive baseline).
    """
    ids = dict(organs) if isinstance(organs, Mapping) else {o: i for i, o in enumerate(organs, start=1)}
    out: dict[str, dict] = {}
    if not agnostic:
        presence = np.abs(test.present.mean(axis=0) - ref.present.mean(axis=0))
        out["presence"] = {"items": {o: float(presence[i - 1]) for o, i in ids.items()}}
        out["volume"] = {
            "items": {o: _relative_w1(test.volumes_ml(i), ref.volumes_ml(i), min_samples) for o, i in ids.items()}
        }
        offsets, contact = {}, {}
        for (name_a, a), (name_b, b) in _pairs(ids):
            t, r = test.offsets_mm(a, b), ref.offsets_mm(a, b)
            if len(t) >= min_samples and len(r) >= min_samples:
                name = f"{name_a}|{name_b}"
                offsets[name] = float(np.mean([wasserstein_distance(t[:, k], r[:, k]) for k in range(3)]))
                contact[name] = float(abs(test.touching(a, b).mean() - ref.touching(a, b).mean()))
        out["centroid_offset"] = {"items": offsets}
        out["contact"] = {"items": contact}
    out["organs_per_patch"] = {"items": {"all": _w1(test.labels_per_patch(), ref.labels_per_patch(), 1)}}
    out["label_volume"] = {"items": {"all": _relative_w1(test.label_volumes_ml(), ref.label_volumes_ml(), 1)}}
    out["foreground"] = {"items": {"all": _w1(test.foreground(), ref.foreground(), 1)}}
    out["touching_pairs"] = {"items": {"all": _w1(test.touching_pair_fraction(), ref.touching_pair_fraction(), 1)}}
    out["centroid_distance"] = {"items": {"all": _w1(test.centroid_distances_mm(), ref.centroid_distances_mm(), 1)}}
    for entry in out.values():
        entry["summary"] = _mean(entry["items"].values())
    return out


def _pairs(ids: Mapping[str, int]):
    """Organ pairs ``((name_a, id_a), (name_b, id_b))`` with ``id_a < id_b``."""
    ordered = sorted(ids.items(), key=lambda item: item[1])
    return ((x, y) for i, x in enumerate(ordered) for y in ordered[i + 1 :])


def _common_support(fold: dict[str, dict]) -> None:
    """Summarise every comparison of one fold over the organs / pairs defined in all of them (in place).

    The held-out subject may lack organs (a field of view without lungs); without this, its mean would run over
    fewer, different pairs than the synthetic one and the two numbers would not measure the same thing.
    """
    for stat in STATISTICS:
        entries = [c[stat] for c in fold.values() if stat in c]
        if not entries:
            continue
        common = set.intersection(*({k for k, v in e["items"].items() if v is not None} for e in entries))
        for entry in entries:
            entry["summary"] = _mean(entry["items"][name] for name in common)


def _average_folds(folds: list[dict]) -> dict:
    """Mean of each statistic's summary and items over folds (ignoring folds where it is undefined)."""
    out = {}
    for stat in folds[0]:
        names = {name for f in folds for name in f[stat]["items"]}
        items = {name: _mean(f[stat]["items"].get(name) for f in folds) for name in sorted(names)}
        out[stat] = {"summary": _mean(f[stat]["summary"] for f in folds), "items": items}
    return out
