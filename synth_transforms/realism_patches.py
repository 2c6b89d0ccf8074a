"""Patch sets of the realism report (:mod:`synth_transforms.realism`): real patches cut from reference label maps,
synthetic and primitive patches, each reduced to its per-patch statistics (:class:`~.realism_stats.PatchSet`).

Real patches are cut from reference label maps (any ids, with their class map) after mapping their classes to the
bank's organs and class ids (by the bank's own merge rules, e.g. ``lung_right`` = its three lobes) and resampling
them to the bank's spacing. Their centres are drawn the way :class:`~synth_transforms.transforms.RandAnatomyLabel`
draws them: a centre organ uniformly among the subject's organs (of those compared), its centroid, plus uniform
jitter of up to a quarter of the patch per axis (:func:`draw_patch_center`). A window that reaches outside the field
of view is shifted back inside it (every voxel of a real patch is observed anatomy, never padding standing in for
the unknown); the fraction of shifted windows and their mean shift are reported. Only along an axis shorter than
the patch is the window padded with background, and the padded fraction is reported. ``outside="pad"`` keeps every
window where it was drawn instead and counts the unseen part as background.

The reference maps are used as they are (no island cleaning as in the bank build): they are the truth compared with.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from ._args import as_size3, check_choice, check_positive_int
from .bank import ShapeBank
from .bank_build import subject_ids
from .dataset import sample_seed
from .io import read_class_map, read_label_map
from .realism_stats import PatchSet, patch_statistics

__all__ = ["CENTER_JITTER_FRACTION", "draw_patch_center", "reference_patches", "synthetic_patches"]

#: Patch centres are jittered uniformly by up to this fraction of the patch extent per axis (as in RandAnatomyLabel).
CENTER_JITTER_FRACTION = 0.25
#: An organ with fewer voxels in a reference subject is not used as a patch centre (ShapeBank.build's min_voxels).
CENTER_MIN_VOXELS = 20
#: Build settings a bank records in ``source`` that a held-out bank is rebuilt with.
_BUILD_SETTINGS = ("mirror_pairs", "contact_margin", "relative_anchors", "island_fraction")
#: Seed-sequence tag of the real patches' centre stream (the synthetic stream is sample_seed(seed, 0, i)).
_REAL_STREAM = 1


# ---------------------------------------------------------------------------------------------- one patch
def draw_patch_center(rng: np.random.RandomState, centers_mm: Sequence, extent_mm: Sequence[float]) -> np.ndarray:
    """A patch centre: one of ``centers_mm`` drawn uniformly, plus uniform jitter of up to a quarter of the extent.

    This is the draw :class:`~synth_transforms.transforms.RandAnatomyLabel` makes after choosing its donor
    (``centers_mm`` = the donor's positions of its centre organs), with the same two calls on ``rng``.
    """
    center = np.asarray(centers_mm[rng.randint(len(centers_mm))], dtype=float)
    jitter = rng.uniform(-CENTER_JITTER_FRACTION, CENTER_JITTER_FRACTION, size=3)
    return center + jitter * np.asarray(extent_mm, dtype=float)


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
    files = dict(reference) if isinstance(reference, Mapping) else subject_ids(list(reference))
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
