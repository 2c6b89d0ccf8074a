"""One subject's label map as a clean organ-index map at the bank spacing, for building a shape bank.

Stray islands far from an organ are dropped, the map is resampled to the bank spacing (nearest neighbour), and maps
coarser than the bank spacing (thick slices) are smoothed instead of upsampled into staircases.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from .io import read_label_map

#: The build's messages go to the bank's logger, whatever module writes them (``bank build`` shows its INFO lines).
logger = logging.getLogger("synth_transforms.bank")

#: A connected component of a class smaller than this fraction of the class's largest component is a stray island.
DEFAULT_ISLAND_FRACTION = 0.02
#: A label map whose voxels are this many times coarser than the bank spacing along an axis (thick slices) is
#: smoothed along the way: nearest-neighbour upsampling would leave a staircase of that step.
_COARSE_FACTOR = 2.0


def _read_organ_map(
    subject: str,
    path,
    ids: dict[int, str],
    lut: np.ndarray,
    organs: list[str],
    organ_ids: dict[str, list[int]],
    spacing: float,
    reader: str | None,
    island_fraction: float,
    report: dict,
) -> np.ndarray:
    """One subject's organ-index map at the bank spacing: islands dropped, resampled, coarse maps smoothed."""
    labels, voxel = read_label_map(path, spacing=None, reader=reader)
    voxel = np.asarray(voxel, dtype=float)
    unknown = sorted(set(np.unique(labels).tolist()) - set(ids) - {0})
    if unknown:
        raise ValueError(f"label map {path}: ids {unknown[:20]} are not in the class map")
    report["voxel_mm"][subject] = [round(float(v), 4) for v in voxel]
    if island_fraction > 0:
        islands = _drop_islands(labels, organ_ids, island_fraction, voxel)
        if islands:
            report["islands"][subject] = islands
            logger.info(
                "bank: subject %s: dropped stray islands from %s",
                subject,
                ", ".join(f"{o} ({v['islands']}, {v['voxels']} voxels)" for o, v in islands.items()),
            )
    organ_map = lut[labels]
    del labels
    factor = voxel / spacing
    if not np.allclose(factor, 1.0, rtol=0, atol=1e-3):
        organ_map = _resample_nearest(organ_map, voxel, spacing)
    coarse = factor >= _COARSE_FACTOR * (1 - 1e-3)
    if coarse.any():
        sigma = np.maximum(np.where(coarse, factor / 2, 0.0), 1.0)  # a step of f voxels needs sigma ~ f / 2
        organ_map = _smooth_masks(organ_map, len(organs), sigma)
        axes = "".join("xyz"[a] for a in np.flatnonzero(coarse))
        report["smoothed"][subject] = {"axes": axes, "sigma_vox": [round(float(s), 3) for s in sigma]}
        thick = voxel.max() / voxel.min() >= _COARSE_FACTOR
        kind = f"thick slices ({voxel.max() / voxel.min():.1f}x the in-plane spacing)" if thick else "coarse voxels"
        logger.warning(
            "bank: label map %s: voxels %s mm are %s, up to %.1fx coarser than the bank spacing %g mm along %s: "
            "organ masks are smoothed (Gaussian, sigma %s voxels, threshold 0.5) instead of upsampled into "
            "staircases; detail finer than the source voxels is interpolated, not measured",
            path,
            " x ".join(f"{v:g}" for v in voxel.round(3)),
            kind,
            factor.max(),
            spacing,
            axes,
            " x ".join(f"{v:g}" for v in sigma.round(2)),
        )
    return organ_map


def _drop_islands(
    labels: np.ndarray, organ_ids: dict[str, list[int]], fraction: float, voxel: np.ndarray
) -> dict[str, dict]:
    """Set stray islands of every organ class to 0 in ``labels`` (in place); per organ, what was dropped.

    A class's 26-connected components smaller than ``fraction`` of its largest one are islands. Returns
    ``{organ: {"islands", "voxels", "ml", "box_mm_before", "box_mm_after"}}`` for organs that lost any, the boxes
    being the organ's bounding-box extent (mm, source grid) with and without them.
    """
    present = [i for ids in organ_ids.values() for i in ids if i > 0]
    boxes = ndimage.find_objects(labels, max_label=max(present)) if present else []
    out = {}
    for organ, class_ids in organ_ids.items():
        before, after, islands, voxels = [], [], 0, 0
        for cid in class_ids:
            box = boxes[cid - 1] if 0 < cid <= len(boxes) else None
            if box is None:
                continue
            view = labels[box]
            mask = view == cid
            comp, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
            before.append(box)
            if n > 1:
                sizes = np.bincount(comp.ravel())[1:]
                keep = np.concatenate([[False], sizes >= fraction * sizes.max()])
                dropped = mask & ~keep[comp]
                if dropped.any():
                    view[dropped] = 0
                    islands += int((~keep[1:]).sum())
                    voxels += int(dropped.sum())
                    inner = ndimage.find_objects(keep[comp].astype(np.int8))[0]
                    box = tuple(slice(b.start + i.start, b.start + i.stop) for b, i in zip(box, inner, strict=True))
            after.append(box)
        if islands:
            out[organ] = {
                "islands": islands,
                "voxels": voxels,
                "ml": round(voxels * float(np.prod(voxel)) / 1000.0, 4),
                "box_mm_before": _extent_mm(before, voxel),
                "box_mm_after": _extent_mm(after, voxel),
            }
    return out


def _extent_mm(boxes: list[tuple[slice, ...]], voxel: np.ndarray) -> list[float]:
    lo = np.min([[b.start for b in box] for box in boxes], axis=0)
    hi = np.max([[b.stop for b in box] for box in boxes], axis=0)
    return [round(float(v), 1) for v in (hi - lo) * voxel]


def _resample_nearest(organ_map: np.ndarray, voxel: np.ndarray, spacing: float) -> np.ndarray:
    """Nearest-neighbour resampling to isotropic ``spacing`` with MONAI's ``Spacing`` (the grid of the map's voxels)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    affine = torch.diag(torch.tensor([*voxel, 1.0], dtype=torch.float64))
    img = MetaTensor(torch.from_numpy(organ_map[None].astype(np.float32)), affine=affine)
    out = Spacing(pixdim=(spacing,) * 3, mode="nearest", padding_mode="zeros")(img)
    return np.rint(np.asarray(out.array[0])).astype(organ_map.dtype)


def _smooth_masks(organ_map: np.ndarray, n_organs: int, sigma: np.ndarray) -> np.ndarray:
    """Each organ's mask blurred with a Gaussian (``sigma`` voxels per axis) and kept where above 0.5.

    Blurring the nearest-neighbour staircase of upsampled thick slices and thresholding at one half puts the
    surface through the middle of each step. Where two organs' blurred masks overlap the larger value wins.
    """
    out = np.zeros_like(organ_map)
    best = np.zeros(organ_map.shape, dtype=np.float32)
    pad = [int(np.ceil(3 * s)) + 1 for s in sigma]
    for k, box in enumerate(ndimage.find_objects(organ_map, max_label=n_organs), start=1):
        if box is None:
            continue
        window = tuple(
            slice(max(b.start - p, 0), min(b.stop + p, d)) for b, p, d in zip(box, pad, organ_map.shape, strict=True)
        )
        blurred = ndimage.gaussian_filter((organ_map[window] == k).astype(np.float32), sigma, mode="nearest")
        wins = (blurred >= 0.5) & (blurred > best[window])
        best[window][wins] = blurred[wins]
        out[window][wins] = k
    return out
