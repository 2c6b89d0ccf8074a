"""Building a shape bank from label maps: organ crops, contact, mirrored stand-ins and the build report.

:func:`build_fields` does the work of :meth:`ShapeBank.build <synth_transforms.bank.ShapeBank.build>`: each
subject's label map is read as a clean organ-index map (:mod:`synth_transforms.organ_maps`), every organ in it
cropped and measured, the organs' contact measured, left/right partners mirrored into each other, and what the
build did logged and kept in ``source["build_report"]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from ._args import check_fraction
from .io import read_class_map
from .organ_maps import _read_organ_map
from .organ_names import DEFAULT_ORGANS, check_mirror_pairs, check_relative_anchors
from .organ_shape import OrganShape

__all__ = ["build_fields", "subject_ids"]

#: The build's messages go to the bank's logger, whatever module writes them (``bank build`` shows its INFO lines).
logger = logging.getLogger("synth_transforms.bank")

#: An organ within this many voxels of the grid edge counts as cut by the field of view (resampling can add a
#: blank slice at the edge, so touching the very last voxel is too strict a test).
_EDGE_MARGIN = 2
#: A subject with more than this fraction of its organs cut by the field of view is reported.
_MOSTLY_CUT = 0.5


def build_fields(
    label_maps: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
    class_map: Mapping | str | os.PathLike,
    organs: Mapping[str, Sequence[str]] | Sequence[str] | None,
    spacing: float,
    mirror_pairs: Mapping[str, str] | Sequence[tuple[str, str]] | str | None,
    min_voxels: int,
    reader: str | None,
    contact_margin: int,
    relative_anchors: Mapping[str, str] | str | None,
    island_fraction: float,
) -> dict:
    """The fields of the :class:`~synth_transforms.bank.ShapeBank` built from these label maps, by name.

    The arguments and errors are those of :meth:`ShapeBank.build <synth_transforms.bank.ShapeBank.build>`.
    """
    if not isinstance(label_maps, Mapping):
        label_maps = subject_ids(list(label_maps))
    if not label_maps:
        raise ValueError("no label maps given: pass {subject: path} or a list of label-map files")
    island_fraction = check_fraction(island_fraction, "island_fraction", "ShapeBank.build")
    ids = read_class_map(class_map)
    default_organs = organs is None
    organs = DEFAULT_ORGANS if organs is None else organs
    if not isinstance(organs, Mapping):
        organs = {name: (name,) for name in organs}
    if not organs:
        raise ValueError("the organ set is empty: name at least one organ")
    organ_ids = _organ_class_ids(organs, ids, class_map, default_organs)
    organ_names = list(organs)
    pairs = check_mirror_pairs(mirror_pairs, organ_names)
    relative = check_relative_anchors(relative_anchors, organ_names)
    lut = np.zeros(max(ids) + 1, dtype=np.int16)
    for k, organ in enumerate(organ_names, start=1):
        lut[organ_ids[organ]] = k

    shapes: dict[str, list[OrganShape]] = {o: [] for o in organ_names}
    contact: dict[str, np.ndarray] = {}
    report: dict = {"voxel_mm": {}, "islands": {}, "smoothed": {}, "mostly_cut": {}}
    for subject, path in label_maps.items():
        subject = str(subject)
        organ_map = _read_organ_map(
            subject, path, ids, lut, organ_names, organ_ids, spacing, reader, island_fraction, report
        )
        found = _measure_subject(subject, organ_map, organ_names, spacing, min_voxels)
        for organ, shape in found.items():
            shapes[organ].append(shape)
        contact[subject] = _contact_fractions(organ_map, found, organ_names, contact_margin)
        _check_field_of_view(subject, path, found, len(organ_names), report)
        logger.info("bank: subject %s: %d of %d organs", subject, len(found), len(organ_names))
    absent = [o for o in organ_names if not shapes[o]]
    if absent:
        raise ValueError(
            f"organs {absent} are not present (>= {min_voxels} voxels) in any label map: check the organ set "
            "(organs=..., CLI --organs) against the label maps"
        )
    for left, right in pairs:
        mirrored_left = [_mirror(s, right) for s in shapes[left] if not s.mirrored]
        mirrored_right = [_mirror(s, left) for s in shapes[right] if not s.mirrored]
        shapes[right].extend(mirrored_left)
        shapes[left].extend(mirrored_right)
    source = {
        "label_maps": {str(k): str(v) for k, v in label_maps.items()},
        "organs": {o: list(p) for o, p in organs.items()},
        "mirror_pairs": [list(p) for p in pairs],
        "relative_anchors": relative,
        "contact_margin": contact_margin,
        "island_fraction": island_fraction,
        "build_report": report,
    }
    for line in _report_lines(pairs, relative, source):
        logger.info("bank:%s", line)
    _warn_islands(report["islands"])
    return {
        "organs": organ_names,
        "spacing": float(spacing),
        "subjects": [str(s) for s in label_maps],
        "shapes": shapes,
        "contact": contact,
        "source": source,
    }


def subject_ids(paths: list) -> dict[str, Path]:
    """``{subject: path}`` of label-map files: ids from their parent folders when those are unique, else from the
    file names (up to the first dot); raises ValueError when neither is unique."""
    paths = [Path(p) for p in paths]
    parents = [p.parent.name for p in paths]
    if len(set(parents)) == len(paths) and all(parents):
        return dict(zip(parents, paths, strict=True))
    names = [p.name.split(".")[0] for p in paths]
    if len(set(names)) != len(names):
        raise ValueError("cannot derive unique subject ids from the label-map paths: pass {subject: path}")
    return dict(zip(names, paths, strict=True))


def _organ_class_ids(
    organs: Mapping[str, Sequence[str]], ids: dict[int, str], class_map, default_organs: bool
) -> dict[str, list[int]]:
    """Class ids merged into each organ; one error names every organ whose classes the class map lacks."""
    name_to_id = {name: i for i, name in ids.items()}
    missing = {o: [p for p in parts if p not in name_to_id] for o, parts in organs.items()}
    missing = {o: m for o, m in missing.items() if m}
    if missing:
        which = "; ".join(f"organ {o!r}: the class map has no class named {m}" for o, m in missing.items())
        where = f" ({class_map})" if isinstance(class_map, str | os.PathLike) else ""
        hint = " (the default organ set uses TotalSegmentator v2 names)" if default_organs else ""
        raise ValueError(
            f"{which}. The class map{where} names: {', '.join(ids[i] for i in sorted(ids))}. Map each organ to the "
            f"class names merged into it with organs={{organ: [class names]}} (CLI: --organs, a JSON file of that "
            f"mapping or a list of class names){hint}"
        )
    return {o: [name_to_id[p] for p in parts] for o, parts in organs.items()}


def _check_field_of_view(subject: str, path, found: dict[str, OrganShape], n_organs: int, report: dict) -> None:
    """Warn about a subject whose field of view shows none or mostly cut organs (its shapes are incomplete)."""
    cut = sorted(o for o, s in found.items() if s.truncated)
    if not found:
        logger.warning("bank: subject %s (%s): none of the %d organs is present", subject, path, n_organs)
    elif len(cut) > _MOSTLY_CUT * len(found):
        report["mostly_cut"][subject] = {o: found[o].cut_face_names for o in cut}
        logger.warning(
            "bank: subject %s (%s): the field of view cuts %d of its %d organs (%s; cut faces in brackets): "
            "their shapes are incomplete, and only its whole organs place the subject in the anchor frame",
            subject,
            path,
            len(cut),
            len(found),
            ", ".join(f"{o} [{found[o].cut_face_names}]" for o in cut),
        )


def _report_lines(pairs, relative: Mapping[str, str], source: dict) -> list[str]:
    """What a build did, one topic a line (for :meth:`ShapeBank.info` and the build log)."""
    lines = [
        "  mirror pairs: " + (", ".join(f"{a} <-> {b}" for a, b in pairs) or "none"),
        "  relative anchors: " + (", ".join(f"{c} -> {p}" for c, p in relative.items()) or "none"),
    ]
    report = source.get("build_report") or {}
    islands = report.get("islands") or {}
    if islands:
        n = sum(v["islands"] for organs in islands.values() for v in organs.values())
        ml = sum(v["ml"] for organs in islands.values() for v in organs.values())
        lines.append(
            f"  stray islands dropped (components < {source.get('island_fraction')} of their class's largest): "
            f"{n} ({ml:.2f} ml) in {sum(len(o) for o in islands.values())} organ masks of {len(islands)} subjects"
        )
        for subject, organs in islands.items():
            for organ, v in organs.items():
                if v["box_mm_before"] != v["box_mm_after"]:
                    box = f"{_box_text(v['box_mm_before'])} -> {_box_text(v['box_mm_after'])}"
                    lines.append(
                        f"    {subject} {organ}: {_count(v['islands'], 'island')} ({v['voxels']} voxels), box {box} mm"
                    )
    for subject, v in (report.get("smoothed") or {}).items():
        voxel = " x ".join(f"{x:g}" for x in report["voxel_mm"][subject])
        lines.append(f"  smoothed coarse label map: {subject} ({voxel} mm voxels, along {v['axes']})")
    for subject, cut in (report.get("mostly_cut") or {}).items():
        lines.append(
            f"  mostly cut by the field of view: {subject} (" + ", ".join(f"{o} [{f}]" for o, f in cut.items()) + ")"
        )
    return lines


def _warn_islands(islands: dict[str, dict[str, dict]]) -> None:
    """One warning for the stray islands a build dropped, naming the crop they had stretched most."""
    rows = [(s, o, v) for s, organs in islands.items() for o, v in organs.items()]
    if not rows:
        return

    def stretch(row) -> float:
        return max(b - a for a, b in zip(row[2]["box_mm_after"], row[2]["box_mm_before"], strict=True))

    subject, organ, most = max(rows, key=stretch)
    change = (
        f"the largest change: {organ} of subject {subject}, box {_box_text(most['box_mm_before'])} -> "
        f"{_box_text(most['box_mm_after'])} mm"
        if stretch((subject, organ, most)) > 0
        else "no organ's box changed"
    )
    logger.warning(
        "bank: dropped %s (%d voxels) from %d organ masks; %s (ShapeBank.info() lists them)",
        _count(sum(r[2]["islands"] for r in rows), "stray island"),
        sum(r[2]["voxels"] for r in rows),
        len(rows),
        change,
    )


def _box_text(extent_mm) -> str:
    return "x".join(f"{e:g}" for e in extent_mm)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _measure_subject(
    subject: str, organ_map: np.ndarray, organs: list[str], spacing: float, min_voxels: int
) -> dict[str, OrganShape]:
    """Crop and measure every organ present in one subject's organ-index map."""
    found = {}
    objects = ndimage.find_objects(organ_map, max_label=len(organs))
    for k, box in enumerate(objects, start=1):
        if box is None:
            continue
        mask = organ_map[box] == k
        n = int(mask.sum())
        if n < min_voxels:
            continue
        offset = tuple(int(b.start) for b in box)
        cut = np.array(
            [[b.start < _EDGE_MARGIN, b.stop > dim - _EDGE_MARGIN] for b, dim in zip(box, organ_map.shape, strict=True)]
        )
        centroid = (np.argwhere(mask).mean(axis=0) + offset) * spacing
        found[organs[k - 1]] = OrganShape(
            organs[k - 1], subject, mask, offset, centroid, n * spacing**3 / 1000.0, bool(cut.any()), False, cut
        )
    return found


def _contact_fractions(
    organ_map: np.ndarray, found: dict[str, OrganShape], organs: list[str], margin: int = 1
) -> np.ndarray:
    """``out[a, b]``: fraction of organ a's outer shell, ``margin`` voxels thick (6-connected), lying in organ b."""
    n = len(organs)
    out = np.full((n, n), np.nan, dtype=np.float32)
    for organ, s in found.items():
        a = organs.index(organ)
        lo = [max(o - margin, 0) for o in s.offset_vox]
        hi = [min(o + m + margin, d) for o, m, d in zip(s.offset_vox, s.mask.shape, organ_map.shape, strict=True)]
        window = organ_map[tuple(slice(l_, h) for l_, h in zip(lo, hi, strict=True))]
        inside = window == a + 1
        shell = ndimage.binary_dilation(inside, iterations=margin) & ~inside
        neighbours = window[shell]
        counts = np.bincount(neighbours, minlength=n + 1)[1:]
        out[a] = counts / max(len(neighbours), 1)
    return out


def _mirror(shape: OrganShape, as_organ: str) -> OrganShape:
    """Left-right mirror of a shape, standing in for its partner organ (its left and right cut faces swap)."""
    faces = None
    if shape.cut_faces is not None:
        faces = shape.cut_faces.copy()
        faces[0] = faces[0, ::-1]
    return OrganShape(
        as_organ,
        shape.subject,
        shape.mask[::-1].copy(),
        shape.offset_vox,
        shape.centroid_mm.copy(),
        shape.volume_ml,
        shape.truncated,
        True,
        faces,
    )
