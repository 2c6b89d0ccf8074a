"""Realism of synthetic label patches, measured against patches cut from real label maps.

Real patches are cut from reference label maps (any ids, with their class map) after mapping their classes to the
bank's organs and class ids (by the bank's own merge rules, e.g. ``lung_right`` = its three lobes) and resampling
them to the bank's spacing. Their centres are drawn the way :class:`~synth_transforms.transforms.RandAnatomyLabel`
draws them: a centre organ uniformly among the subject's organs (of those compared), its centroid, plus uniform
jitter of up to a quarter of the patch per axis (:func:`draw_patch_center`). A window that reaches outside the field
of view is shifted back inside it (every voxel of a real patch is observed anatomy, never padding standing in for
the unknown); the fraction of shifted windows and their mean shift are reported. Only along an axis shorter than
the patch is the window padded with background, and the padded fraction is reported. ``outside="pad"`` keeps every
window where it was drawn instead and counts the unseen part as background.

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

So that a number means something, the same distances are measured between real subjects: with ``K >= 2``
reference subjects, fold ``k`` compares subject ``k``'s patches with the pooled patches of the others (leave one
subject out, ``loso``), and the synthetic (or primitive) patches are compared in the same folds: their ``k``-th equal
share against the same pooled others (``synthetic``, ``primitives``). Synthesis from a bank built on the reference
subjects has seen every one of them, so ``holdout_banks=True`` adds the fair test: per fold, a bank rebuilt without
subject ``k`` makes the ``k``-th share, compared with subject ``k`` itself (``synthetic_holdout``), as the other
subjects' real patches are in ``loso``. Within a fold every comparison is summarised over the organs / pairs defined
in all of them (a held-out field of view without lungs has no lung pairs), and fold summaries are averaged over
``k``. The synthetic and primitive sets are also compared with all real patches at once (``*_all``).

The reference maps are used as they are (no island cleaning as in the bank build): they are the truth compared with.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.stats import wasserstein_distance
from torch.utils.data import DataLoader, Dataset

from ._args import as_size3, check_bool, check_choice, check_positive_int
from .bank import ShapeBank, _subject_ids, load_bank
from .dataset import sample_seed
from .io import read_class_map, read_label_map
from .transforms import RandAnatomyLabel, RandPrimitiveLabel

__all__ = [
    "CENTER_JITTER_FRACTION",
    "draw_patch_center",
    "patch_statistics",
    "PatchSet",
    "reference_patches",
    "realism_report",
    "format_realism",
]

#: Patch centres are jittered uniformly by up to this fraction of the patch extent per axis (as in RandAnatomyLabel).
CENTER_JITTER_FRACTION = 0.25
#: An organ with fewer voxels in a reference subject is not used as a patch centre (ShapeBank.build's min_voxels).
CENTER_MIN_VOXELS = 20
#: Build settings a bank records in ``source`` that a held-out bank is rebuilt with.
_BUILD_SETTINGS = ("mirror_pairs", "contact_margin", "relative_anchors", "island_fraction")
#: Seed-sequence tag of the real patches' centre stream (the synthetic stream is sample_seed(seed, 0, i)).
_REAL_STREAM = 1

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
def draw_patch_center(rng: np.random.RandomState, centers_mm: Sequence, extent_mm: Sequence[float]) -> np.ndarray:
    """A patch centre: one of ``centers_mm`` drawn uniformly, plus uniform jitter of up to a quarter of the extent.

    This is the draw :class:`~synth_transforms.transforms.RandAnatomyLabel` makes after choosing its donor
    (``centers_mm`` = the donor's positions of its centre organs), with the same two calls on ``rng``.
    """
    center = np.asarray(centers_mm[rng.randint(len(centers_mm))], dtype=float)
    jitter = rng.uniform(-CENTER_JITTER_FRACTION, CENTER_JITTER_FRACTION, size=3)
    return center + jitter * np.asarray(extent_mm, dtype=float)


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


def _shares(n: int, k: int) -> list[np.ndarray]:
    """``k`` contiguous, near-equal shares of ``range(n)``."""
    bounds = np.linspace(0, n, k + 1).round().astype(int)
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(k)]


# ---------------------------------------------------------------------------------------------- reference patches
@dataclass
class _Subject:
    name: str
    organ_map: np.ndarray  # uint8/int16 bank class ids
    centers_mm: np.ndarray  # (m, 3) centroids of the centre organs present
    center_organs: list[str]


def _organ_lut(class_ids: Mapping[int, str], organ_classes: Mapping[str, Sequence[str]], bank: ShapeBank, source):
    """Lookup table class id of the reference -> bank class id (0 for classes outside the compared organs)."""
    name_to_id = {name: i for i, name in class_ids.items()}
    lut = np.zeros(max(class_ids) + 1, dtype=np.int16)
    for organ, parts in organ_classes.items():
        missing = [p for p in parts if p not in name_to_id]
        if missing:
            raise ValueError(
                f"{source}: organ {organ!r} is made of classes {missing} that it does not name; pass organ_classes "
                f"{{organ: [class names]}} for this class map, or leave the organ out with organs=..."
            )
        lut[[name_to_id[p] for p in parts]] = bank.class_id(organ)
    return lut


def _load_subject(name, path, lut, class_ids, organs, bank: ShapeBank, reader) -> _Subject:
    labels, _ = read_label_map(path, spacing=bank.spacing, reader=reader)
    unknown = sorted(set(np.unique(labels).tolist()) - set(class_ids) - {0})
    if unknown:
        raise ValueError(f"label map {path}: ids {unknown[:20]} are not in the class map")
    organ_map = lut[labels].astype(np.uint8 if bank.num_classes <= 256 else np.int16)
    del labels
    centers, names = [], []
    boxes = ndimage.find_objects(organ_map, max_label=bank.num_classes - 1)
    for organ in organs:
        k = bank.class_id(organ)
        box = boxes[k - 1]
        if box is None:
            continue
        points = np.argwhere(organ_map[box] == k)
        if len(points) < CENTER_MIN_VOXELS:
            continue
        centers.append((points.mean(axis=0) + [b.start for b in box]) * bank.spacing)
        names.append(organ)
    if not centers:
        raise ValueError(f"label map {path}: none of the organs {list(organs)} has {CENTER_MIN_VOXELS} voxels")
    return _Subject(str(name), organ_map, np.asarray(centers), names)


def _window(shape: Sequence[int], center_mm: np.ndarray, size: Sequence[int], spacing: float, outside: str = "shift"):
    """Start index of a window centred at ``center_mm`` and its shift (voxels) from the drawn position.

    ``outside="shift"`` moves the window inside the grid along every axis at least as long as the patch (along a
    shorter axis it covers the axis whole); ``"pad"`` keeps it where it was drawn.
    """
    wanted = np.rint(np.asarray(center_mm) / spacing - (np.asarray(size) - 1) / 2).astype(int)
    if outside == "pad":
        return wanted, np.zeros(3, dtype=int)
    shape, size = np.asarray(shape), np.asarray(size)
    low = np.minimum(0, shape - size)  # an axis shorter than the patch: the window covers it whole
    high = np.maximum(0, shape - size)
    start = np.clip(wanted, low, high)
    return start, start - wanted


def _cut(organ_map: np.ndarray, start: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, float]:
    """The window at ``start`` (background outside the grid) and the fraction of it outside the grid."""
    out = np.zeros(size, dtype=organ_map.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, organ_map.shape, strict=True):
        lo, hi = max(s, 0), min(s + n, dim)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = organ_map[tuple(src)]
    inside = np.prod([sl.stop - sl.start for sl in src])
    return out, 1.0 - inside / float(np.prod(size))


class _ReferenceWindows(Dataset):
    """Item ``j``: statistics of the ``j``-th pre-drawn window."""

    def __init__(self, subjects: list[_Subject], windows: list[tuple[int, np.ndarray]], size, num_classes, spacing):
        self.subjects, self.windows = subjects, windows
        self.size, self.num_classes, self.spacing = size, num_classes, spacing

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, j: int):
        subject, start = self.windows[j]
        patch, outside = _cut(self.subjects[subject].organ_map, start, self.size)
        return patch_statistics(patch, self.num_classes, self.spacing), outside


def reference_patches(
    reference: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
    class_map: Mapping | str | os.PathLike,
    bank: ShapeBank,
    n: int = 200,
    seed: int = 0,
    patch_size: Sequence[int] | int = 96,
    organs: Sequence[str] | None = None,
    organ_classes: Mapping[str, Sequence[str]] | None = None,
    workers: int = 0,
    progress: bool = False,
    reader: str | None = None,
    outside: str = "shift",
) -> tuple[PatchSet, dict]:
    """Cut ``n`` patches per reference label map, mapped to the bank's class ids, and measure them.

    Args:
        reference: ``{subject: path}`` or a list of label-map files (subject ids as in ``ShapeBank.build``).
        class_map: ``{id: name}`` or its JSON file, naming the reference's ids.
        bank: the bank whose organs, class ids and spacing the patches follow.
        n: patches per subject.
        seed: base seed of the centre draws.
        patch_size: patch size in voxels.
        organs: organs compared (default: the bank's); other classes become background.
        organ_classes: ``{organ: [class names]}`` merged into each organ (default: the bank's own rules).
        workers: DataLoader worker processes.
        progress: show a progress bar.
        reader: MONAI reader name to force.
        outside: a window reaching outside the grid is ``"shift"``-ed inside it (default: every voxel of a real
            patch is observed) or ``"pad"``-ded with background where it was drawn (outside counts as empty).

    Returns:
        ``(patches, info)``: the :class:`PatchSet` (``group`` = subject index) and ``info``: subjects, files, centre
        organs per subject, fraction of windows shifted into the field of view (overall and per axis) and their mean
        shift in mm, mean fraction of a patch outside the grid, and ``windows`` (``[subject index, x, y, z]`` start
        voxel of each patch).
    """
    owner = "realism"
    outside = check_choice(outside, "outside", ("shift", "pad"), owner)
    size = as_size3(patch_size, owner=owner)
    n = check_positive_int(n, "n_real", owner)
    files = dict(reference) if isinstance(reference, Mapping) else _subject_ids(list(reference))
    if not files:
        raise ValueError(f"{owner}: no reference label maps given")
    organs = bank.check_organs(organs) if organs is not None else list(bank.organs)
    rules = organ_classes if organ_classes is not None else bank.source.get("organs") or {o: [o] for o in organs}
    missing = [o for o in organs if o not in rules]
    if missing:
        raise ValueError(f"{owner}: organ_classes names no classes for organs {missing}")
    class_ids = read_class_map(class_map)
    source = f"class map {class_map}" if not isinstance(class_map, Mapping) else "class map"
    lut = _organ_lut(class_ids, {o: rules[o] for o in organs}, bank, source)
    extent = np.asarray(size) * bank.spacing
    subjects, windows, shifts = [], [], []
    for k, (name, path) in enumerate(files.items()):
        subject = _load_subject(name, path, lut, class_ids, organs, bank, reader)
        subjects.append(subject)
        rng = np.random.RandomState(np.random.SeedSequence([int(seed), _REAL_STREAM, k]).generate_state(1)[0])
        for _ in range(n):
            center = draw_patch_center(rng, subject.centers_mm, extent)
            start, shift = _window(subject.organ_map.shape, center, size, bank.spacing, outside)
            windows.append((k, start))
            shifts.append(np.abs(shift) * bank.spacing)
    loader = _loader(
        _ReferenceWindows(subjects, windows, size, bank.num_classes, bank.spacing), workers, progress, "real patches"
    )
    results = list(loader)
    patches = PatchSet.from_patches([r[0] for r in results], bank.spacing, [w[0] for w in windows])
    shifts = np.asarray(shifts)
    moved = shifts.max(axis=1) > 0
    info = {
        "subjects": [s.name for s in subjects],
        "files": {str(k): str(v) for k, v in files.items()},
        "patches_per_subject": n,
        "center_organs": {s.name: s.center_organs for s in subjects},
        "outside": outside,
        "shifted_into_fov_fraction": round(float(moved.mean()), 4),
        "shifted_into_fov_fraction_per_axis": (shifts > 0).mean(axis=0).round(4).tolist(),
        "mean_shift_mm": round(float(np.linalg.norm(shifts[moved], axis=1).mean()), 2) if moved.any() else 0.0,
        "outside_fov_fraction": round(float(np.mean([r[1] for r in results])), 4),
        "windows": [[k, *(int(v) for v in start)] for k, start in windows],
    }
    return patches, info


# ---------------------------------------------------------------------------------------------- synthetic patches
class _SyntheticStats(Dataset):
    """Item ``j``: statistics of the label ``maker`` makes when seeded from ``(seed, 0, indices[j])`` (as
    ``validate`` seeds patch ``indices[j]``)."""

    def __init__(self, maker, seed: int, indices: Sequence[int], num_classes: int, spacing: float):
        self.maker, self.seed, self.indices = maker, int(seed), [int(i) for i in indices]
        self.num_classes, self.spacing = num_classes, spacing

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        self.maker.set_random_state(seed=sample_seed(self.seed, 0, self.indices[j]))
        return patch_statistics(self.maker(), self.num_classes, self.spacing)


def _keep(item):
    return item


def _loader(dataset: Dataset, workers: int, progress: bool, what: str):
    loader = DataLoader(dataset, batch_size=None, num_workers=int(workers), collate_fn=_keep)
    if progress:
        from tqdm import tqdm

        return tqdm(loader, total=len(dataset), desc=what, unit="patch")
    return loader


def synthetic_patches(maker, indices, seed: int, num_classes: int, spacing: float, workers=0, progress=False):
    """Statistics of patches ``indices`` (an int ``n``: ``range(n)``) of a label transform (``RandAnatomyLabel``
    or ``RandPrimitiveLabel``), patch ``i`` seeded from ``sample_seed(seed, 0, i)``."""
    indices = range(indices) if isinstance(indices, (int, np.integer)) else indices
    dataset = _SyntheticStats(maker, seed, indices, num_classes, spacing)
    return PatchSet.from_patches(list(_loader(dataset, workers, progress, type(maker).__name__)), spacing)


def _holdout_bank(bank: ShapeBank, files: Mapping, class_map, organ_classes, reader, held_out: str) -> ShapeBank:
    """The bank rebuilt from ``files`` (the other subjects) with ``bank``'s organs, rules and build settings."""
    rules = organ_classes if organ_classes is not None else bank.source.get("organs") or {o: [o] for o in bank.organs}
    missing = [o for o in bank.organs if o not in rules]
    if missing:
        raise ValueError(f"realism: holdout banks need the classes of every organ of the bank; none for {missing}")
    settings = {k: bank.source[k] for k in _BUILD_SETTINGS if k in bank.source}
    if "mirror_pairs" in settings:
        settings["mirror_pairs"] = [tuple(p) for p in settings["mirror_pairs"]]
    organs = {o: list(rules[o]) for o in bank.organs}
    try:
        return ShapeBank.build(dict(files), class_map, organs=organs, spacing=bank.spacing, reader=reader, **settings)
    except ValueError as e:
        raise ValueError(f"realism: the bank without subject {held_out!r} cannot be built: {e}") from e


# ---------------------------------------------------------------------------------------------- the report
def realism_report(
    reference: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
    class_map: Mapping | str | os.PathLike,
    n: int = 1000,
    n_real: int = 200,
    seed: int = 0,
    patch_size: Sequence[int] | int = 96,
    bank: ShapeBank | str | os.PathLike | None = None,
    organs: Sequence[str] | None = None,
    organ_classes: Mapping[str, Sequence[str]] | None = None,
    primitives: bool = True,
    min_samples: int = 10,
    workers: int = 0,
    progress: bool = False,
    reader: str | None = None,
    outside: str = "shift",
    holdout_banks: bool = False,
) -> dict:
    """Compare synthetic label patches with patches of real label maps, statistic by statistic.

    Args:
        reference: real label maps: ``{subject: path}`` or a list of files.
        class_map: ``{id: name}`` or its JSON file, naming the reference's ids.
        n: synthetic patches (``RandAnatomyLabel``, patch ``i`` seeded from ``sample_seed(seed, 0, i)`` as in
            ``validate``), and as many primitive patches.
        n_real: real patches per reference subject (``n / subjects`` makes the fold comparisons equal-sized).
        seed: base seed.
        patch_size: patch size in voxels (at the bank's spacing).
        bank: a :class:`ShapeBank`, a bank file, or None for the default bank.
        organs: organs to place and compare (default: the bank's); class ids stay the bank's.
        organ_classes: ``{organ: [reference class names]}`` (default: the bank's merge rules).
        primitives: also measure the primitive baseline (label-agnostic statistics only).
        min_samples: fewest values on each side for a per-organ or per-pair distance.
        workers: DataLoader worker processes (0: in this process).
        progress: show progress bars.
        reader: MONAI reader name to force for the reference.
        outside: real windows reaching outside the field of view are ``"shift"``-ed inside it, or ``"pad"``-ded
            with background (see :func:`reference_patches`).
        holdout_banks: also, per fold, rebuild the bank from the other reference subjects (the bank's merge rules,
            spacing, mirror pairs and contact margin), make the fold's share of synthetic patches from it and compare
            them with the held-out subject (``synthetic_holdout``): synthesis that never saw that subject, against
            it, as the real LOSO baseline's other subjects are. Meant for a reference that is the bank's own
            subjects; costs one bank build per subject.

    Returns:
        A JSON-serialisable dict: ``settings``, ``reference`` (see :func:`reference_patches`), ``statistics``
        ``{stat: {"what", "distance", "primitives_apply", "loso", "synthetic", "synthetic_holdout", "synthetic_all",
        "primitives", "primitives_all"}}`` (summaries; None where undefined), ``organs`` and ``pairs`` (per-item
        values and distances), ``sets`` (descriptive values of each patch set) and ``seconds``.
    """
    owner = "realism"
    started = time.perf_counter()
    size = as_size3(patch_size, owner=owner)
    n = check_positive_int(n, "n", owner)
    min_samples = check_positive_int(min_samples, "min_samples", owner)
    workers = check_positive_int(workers, "workers", owner, minimum=0)
    primitives, progress = check_bool(primitives, "primitives", owner), check_bool(progress, "progress", owner)
    holdout_banks = check_bool(holdout_banks, "holdout_banks", owner)
    bank = bank if isinstance(bank, ShapeBank) else load_bank(None if bank is None else Path(str(bank)))
    organs = bank.check_organs(organs) if organs is not None else list(bank.organs)
    real, info = reference_patches(
        reference, class_map, bank, n_real, seed, size, organs, organ_classes, workers, progress, reader, outside
    )
    info.pop("windows")  # reproducible from the seed; too long for a report
    maker = RandAnatomyLabel(bank=bank, patch_size=size, organs=organs)
    synth = synthetic_patches(maker, n, seed, bank.num_classes, bank.spacing, workers, progress)
    prim = None
    if primitives:
        prim_maker = RandPrimitiveLabel(patch_size=size, spacing=bank.spacing)
        prim = synthetic_patches(prim_maker, n, seed, prim_maker.num_classes, bank.spacing, workers, progress)
    ids = {o: bank.class_id(o) for o in organs}
    results = {"synthetic_all": compare(synth, real, ids, min_samples)}
    if prim is not None:
        results["primitives_all"] = compare(prim, real, ids, min_samples, agnostic=True)
    k = len(info["subjects"])
    if k >= 2:
        folds: dict[str, list] = {key: [] for key in ("loso", "synthetic", "synthetic_holdout", "primitives")}
        for g, rows in enumerate(_shares(n, k)):
            ref, held_out = real.subset(real.group != g), real.subset(real.group == g)
            fold = {
                "loso": compare(held_out, ref, ids, min_samples),
                "synthetic": compare(synth.subset(rows), ref, ids, min_samples),
            }
            if holdout_banks:
                others = {s: f for s, f in info["files"].items() if s != info["subjects"][g]}
                bank_g = _holdout_bank(bank, others, class_map, organ_classes, reader, info["subjects"][g])
                maker_g = RandAnatomyLabel(bank=bank_g, patch_size=size, organs=organs)
                synth_g = synthetic_patches(maker_g, rows, seed, bank.num_classes, bank.spacing, workers, progress)
                fold["synthetic_holdout"] = compare(synth_g, held_out, ids, min_samples)
            if prim is not None:
                fold["primitives"] = compare(prim.subset(rows), ref, ids, min_samples, agnostic=True)
            _common_support(fold)
            for key, comparison in fold.items():
                folds[key].append(comparison)
        results.update({key: _average_folds(v) for key, v in folds.items() if v})
    report = {
        "settings": {
            "n": n,
            "n_real": info["patches_per_subject"],
            "seed": int(seed),
            "patch_size": list(size),
            "spacing": bank.spacing,
            "organs": organs,
            "min_samples": min_samples,
            "primitives": primitives,
            "outside": outside,
            "holdout_banks": holdout_banks,
        },
        "reference": info,
        "statistics": _summaries(results),
        "organs": _organ_rows(real, synth, ids, results),
        "pairs": _pair_rows(real, synth, ids, results, min_samples),
        "sets": {
            name: _describe(ps)
            for name, ps in (("real", real), ("synthetic", synth), ("primitives", prim))
            if ps is not None
        },
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


_COLUMNS = ("loso", "synthetic", "synthetic_holdout", "synthetic_all", "primitives", "primitives_all")
_HEADERS = ("real LOSO", "synthetic", "held-out", "synth all", "primitive", "prim all")


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def _median(values: np.ndarray) -> float | None:
    return _round(np.median(values), 2) if values.size else None


def _summaries(results: dict) -> dict:
    out = {}
    for stat, (what, distance, agnostic) in STATISTICS.items():
        row = {"what": what, "distance": distance, "primitives_apply": agnostic}
        for column in _COLUMNS:
            entry = results.get(column, {}).get(stat)
            row[column] = _round(entry["summary"]) if entry else None
        out[stat] = row
    return out


def _distances(results: dict, stats: Sequence[str], name: str) -> dict:
    """``{stat: {column: distance}}`` of one organ or pair (the fold and all-real columns)."""
    out = {}
    for stat in stats:
        out[stat] = {}
        for column in ("loso", "synthetic", "synthetic_holdout", "synthetic_all"):
            entry = results.get(column, {}).get(stat)
            out[stat][column] = _round(entry["items"].get(name)) if entry else None
    return out


def _organ_rows(real: PatchSet, synth: PatchSet, ids: Mapping[str, int], results) -> dict:
    """Per organ: presence rate and median volume (ml) of each set, and the distances."""
    rows = {}
    for organ, i in ids.items():
        rows[organ] = {
            "presence_rate": {
                "real": _round(real.present[:, i - 1].mean()),
                "synthetic": _round(synth.present[:, i - 1].mean()),
            },
            "volume_ml_median": {"real": _median(real.volumes_ml(i)), "synthetic": _median(synth.volumes_ml(i))},
            "distance": _distances(results, ("presence", "volume"), organ),
        }
    return rows


def _pair_rows(real: PatchSet, synth: PatchSet, ids: Mapping[str, int], results, min_samples: int) -> dict:
    """Per pair seen together in at least ``min_samples`` real patches: counts, contact rates and distances."""
    rows = {}
    for (name_a, a), (name_b, b) in _pairs(ids):
        seen = int(real.co_present(a, b).sum())
        if seen < min_samples:
            continue
        touch_s = synth.touching(a, b)
        rows[f"{name_a}|{name_b}"] = {
            "co_present": {"real": seen, "synthetic": int(synth.co_present(a, b).sum())},
            "contact_rate": {
                "real": _round(real.touching(a, b).mean()),
                "synthetic": _round(touch_s.mean()) if touch_s.size else None,
            },
            "distance": _distances(results, ("centroid_offset", "contact"), f"{name_a}|{name_b}"),
        }
    return rows


def _describe(ps: PatchSet) -> dict:
    labels, fg, touching = ps.labels_per_patch(), ps.foreground(), ps.touching_pair_fraction()
    return {
        "patches": len(ps),
        "labels_per_patch_mean": _round(labels.mean(), 2),
        "foreground_mean": _round(fg.mean()),
        "touching_pairs_mean": _round(touching.mean()) if touching.size else None,
        "label_volume_ml_median": _median(ps.label_volumes_ml()),
    }


# ---------------------------------------------------------------------------------------------- text
def _cell(value, width: int = 10) -> str:
    return f"{'-':>{width}s}" if value is None else f"{value:{width}.3f}"


def format_realism(report: Mapping, top: int = 8) -> str:
    """A readable text form of a :func:`realism_report` report: the summary table, then organs and worst pairs."""
    s, ref = report["settings"], report["reference"]
    size = "x".join(str(v) for v in s["patch_size"])
    lines = [
        f"Realism of {s['n']} synthetic patches against {s['n_real']} real patches from each of "
        f"{len(ref['subjects'])} subjects ({', '.join(ref['subjects'])}); {size} voxels at {s['spacing']:g} mm, "
        f"seed {s['seed']}",
        f"real windows reaching outside the field of view ({ref['outside']}): "
        f"{100 * ref['shifted_into_fov_fraction']:.1f}% shifted inside (x/y/z "
        + "/".join(f"{100 * v:.0f}%" for v in ref["shifted_into_fov_fraction_per_axis"])
        + f", mean shift {ref['mean_shift_mm']:.1f} mm); patch volume outside the grid "
        f"{100 * ref['outside_fov_fraction']:.2f}%",
        "distance to real patches, lower is closer. Fold columns, averaged over subjects k: real LOSO = subject k",
        "vs the other subjects; synthetic / primitive = the k-th share of those patches vs the same other subjects;",
        "held-out = synthetic patches from a bank rebuilt without subject k vs subject k. all = vs all real patches.",
        "Primitives: label-agnostic statistics only (their labels have no organ identity).",
        f"  {'statistic':38s} {'distance':37s}" + "".join(f"{h:>10s}" for h in _HEADERS),
    ]
    for row in report["statistics"].values():
        lines.append(f"  {row['what']:38s} {row['distance']:37s}" + "".join(_cell(row[c]) for c in _COLUMNS))
    sets = report["sets"]
    lines.append(
        "  sets: "
        + "; ".join(
            f"{name} {d['patches']} patches, {d['labels_per_patch_mean']:.1f} labels/patch, foreground "
            f"{100 * d['foreground_mean']:.0f}%"
            for name, d in sets.items()
        )
    )
    lines.append(
        f"  {'organ':30s} {'present real/synth':>19s} {'median ml real/synth':>21s}   "
        "distances LOSO/synthetic/held-out: |presence diff|, rel. volume W1"
    )
    folds = ("loso", "synthetic", "synthetic_holdout")
    for organ, row in report["organs"].items():
        rate, volume, d = row["presence_rate"], row["volume_ml_median"], row["distance"]
        lines.append(
            f"  {organ:30s} {100 * rate['real']:8.1f}%/{100 * rate['synthetic']:5.1f}% "
            f"{_slash(volume, ('real', 'synthetic'), 1):>21s}   {_slash(d['presence'], folds, 3):>17s}, "
            f"{_slash(d['volume'], folds, 3)}"
        )
    for stat, label in (("contact", "contact rate"), ("centroid_offset", "centroid offset, mm")):
        ranked = [p for p in report["pairs"].items() if p[1]["distance"][stat]["synthetic_all"] is not None]
        ranked.sort(key=lambda p: -p[1]["distance"][stat]["synthetic_all"])
        if not ranked:
            continue
        lines.append(f"  pairs farthest from real in {label} (synthetic vs all real; LOSO/synthetic/held-out folds):")
        for name, row in ranked[:top]:
            d = row["distance"][stat]
            extra = ""
            if stat == "contact":
                extra = f"contact real/synth {_slash(row['contact_rate'], ('real', 'synthetic'), 2)}; "
            lines.append(
                f"    {name:45s} together real/synth {_slash(row['co_present'], ('real', 'synthetic'), 0):>9s}; "
                f"{extra}distance {_fmt(d['synthetic_all'])} ({_slash(d, folds, 3)})"
            )
    lines.append(f"wall time {report['seconds']:.0f} s")
    return "\n".join(lines)


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _slash(values: Mapping, keys: Sequence[str], digits: int) -> str:
    return "/".join(_fmt(values[k], digits) for k in keys)
