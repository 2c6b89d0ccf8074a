"""Plausibility metrics of anatomy-informed synthetic label patches (pure functions of label, record and graph).

Per sample (:func:`sample_metrics`), from the label patch, its
:class:`~synth_transforms.placement_records.PlacementRecord` and the topology graph, and optionally an
:class:`InsertAudit` of the placement:

- **label values**: every value is one of the documented class ids ``0..num_classes - 1``, every organ in the
  patch was recorded as placed, and the recorded voxel counts match the patch;
- **overlap violations per relation** (audit): voxels a newly inserted organ took from an organ it must be
  disjoint from, from an adjacent organ (adjacent overlap must be carved out of the new organ instead), or from
  its own child (a parent must never cover its child). All three must be 0. The allowed overlaps are counted as
  well: adjacent voxels carved (record) and parent voxels covered by an ``inside`` child (record and audit);
- **contact** in the label map (information): voxels with a 6-neighbour of an organ they are disjoint from,
  adjacent to, or inside / containing. Disjoint organs may touch; they may not overlap;
- **inside**: for each child placed with its parent, the fraction of the voxels it took that were its parent's
  (audit) and the fraction of its outer surface that faces its parent (label map);
- **anchors**: each placed organ's deviation from its expected position against its tolerance (per axis);
  an organ outside its tolerance is a violation;
- **cut faces** (audit): voxels of an inserted organ lying within :data:`~synth_transforms.placement_search.CUT_BAND`
  slices of a face that the field of view cut off its bank shape (a flat face no real organ has). Must be 0;
- **presence, volume, skips, retries**: organ voxel counts, skipped organs and the reasons (an organ skipped in more
  than ``max_skip_rate`` of the patches that reach it fails the report), rejected candidates, stand-ins for cut
  shapes and candidates moved off a collision.

:func:`aggregate` turns per-sample metrics into a JSON-serialisable report with pass/fail ``checks``. The run that
generates the samples and prints the report is :mod:`synth_transforms.validation`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .insert_audit import InsertAudit, cut_face_voxels
from .placement_records import PlacementRecord
from .topology import (
    ADJACENT,
    CODE_CARVE,
    CODE_DISJOINT,
    CODE_KEEP,
    CODE_OVERWRITE,
    CODE_RELATIONS,
    CONTAINS,
    DISJOINT,
    INSIDE,
    RELATIONS,
    TopologyGraph,
)

__all__ = ["InsertAudit", "sample_metrics", "aggregate", "contact_counts", "cut_face_voxels", "CHECKS", "MIN_ATTEMPTS"]

#: Checks of the aggregated report: name -> what it counts (each must be 0).
CHECKS = {
    "disjoint_overlap_voxels": "voxels a new organ took from an organ it must be disjoint from",
    "adjacent_indents_over_limit": "insertions taking more than indent_fraction of an adjacent organ's voxels",
    "parent_over_child_voxels": "voxels a parent organ took from its inside child",
    "children_below_min_inside": "children placed with less than min_inside_fraction of their voxels in the parent",
    "organs_outside_tolerance": "placed organs farther from their anchor than the tolerance, on some axis",
    "samples_with_invalid_ids": "patches holding values outside the class ids 0..num_classes-1 (or not integers)",
    "samples_with_unrecorded_ids": "patches holding an organ that the placement record does not list",
    "samples_with_voxel_mismatch": "patches whose recorded organ voxel counts differ from the label map",
    "cut_face_voxels": "voxels of placed organs on a face that the field of view cut off their shape, in the patch",
    "organs_over_max_skip_rate": "organs skipped in more than max_skip_rate of the patches that reach them",
}
#: Organs attempted in fewer patches than this are not judged by the skip-rate check (too few to measure a rate).
MIN_ATTEMPTS = 20
_TOLERANCE_SLACK_MM = 1e-6


# ---------------------------------------------------------------------------------------------- one sample
def contact_counts(label: torch.Tensor, codes: np.ndarray) -> tuple[dict[str, int], np.ndarray]:
    """Contacts between different labels across the 6-neighbour faces of a label map.

    Args:
        label: ``(H, W, D)`` integer label map with values in ``0..C-1``.
        codes: ``(C, C)`` relation code table of the topology graph (``TopologyGraph.code_table()``).

    Returns:
        ``(voxels, faces)``: ``voxels[relation]`` counts organ voxels having a 6-neighbour of an organ they are
        ``disjoint`` from, ``adjacent`` to, or ``inside`` / containing (``"inside"`` covers both directions);
        ``faces`` is the ``(C, C)`` symmetric count of faces between each pair of labels (background included).
    """
    label = torch.as_tensor(label).long()
    nc = codes.shape[0]
    bits = np.where(codes > 0, np.left_shift(1, codes.astype(np.int64)), 0)  # relation code k -> bit k
    bits[0, :] = 0  # background voxels touch nothing
    bit_of = torch.from_numpy(bits.astype(np.uint8)).view(-1)
    touch = torch.zeros(label.shape, dtype=torch.uint8)  # bit k set: touches an organ of relation code k
    faces = torch.zeros(nc * nc, dtype=torch.int64)
    for axis in range(3):
        n = label.shape[axis]
        if n < 2:
            continue
        a, b = label.narrow(axis, 0, n - 1), label.narrow(axis, 1, n - 1)
        pair_ab, pair_ba = (a * nc + b).view(-1), (b * nc + a).view(-1)
        faces += torch.bincount(pair_ab, minlength=nc * nc)
        touch.narrow(axis, 0, n - 1).bitwise_or_(bit_of[pair_ab].view(a.shape))
        touch.narrow(axis, 1, n - 1).bitwise_or_(bit_of[pair_ba].view(b.shape))
    voxels = {
        DISJOINT: int((touch & (1 << CODE_DISJOINT)).count_nonzero()),
        ADJACENT: int((touch & (1 << CODE_CARVE)).count_nonzero()),
        INSIDE: int((touch & ((1 << CODE_OVERWRITE) | (1 << CODE_KEEP))).count_nonzero()),
    }
    faces = faces.view(nc, nc).numpy()
    np.fill_diagonal(faces, 0)  # a voxel facing its own label is no contact
    return voxels, faces + faces.T


def _check_label_values(label: torch.Tensor, record: PlacementRecord, organs: Sequence[str]) -> tuple[dict, np.ndarray]:
    """Class-id checks of one patch; returns them and the voxel count of each valid class id."""
    nc = len(organs) + 1
    integer = not (torch.is_floating_point(label) or torch.is_complex(label))
    ids = label.long()
    bad = (ids < 0) | (ids >= nc)
    if not integer:
        bad |= label != ids
    invalid = sorted(v.item() for v in torch.unique(label[bad])) if bad.any() else []
    counts = torch.bincount(ids[~bad], minlength=nc)[:nc].numpy()
    recorded = {p.class_id: p for p in record.placed}
    present = [k for k in range(1, nc) if counts[k] > 0]
    checks = {
        "integer": bool(integer),
        "invalid_ids": invalid,
        "unrecorded_ids": [k for k in present if k not in recorded],
        "voxel_mismatch": [p.organ for k, p in recorded.items() if p.voxels is not None and p.voxels != counts[k]],
    }
    return checks, counts


def _anchor_deviations(record: PlacementRecord) -> list[dict]:
    """Deviation of each placed organ from its expected position, absolute and relative to its tolerance."""
    out = []
    for p in record.placed:
        deviation = np.abs(np.asarray(p.position_mm, float) - np.asarray(p.expected_mm, float))
        tolerance = np.asarray(p.tolerance_mm, float)
        ratio = float(np.max(deviation / np.maximum(tolerance, 1e-9)))
        outside = bool(np.any(deviation > tolerance + _TOLERANCE_SLACK_MM))
        out.append(
            {"organ": p.organ, "deviation_mm": float(np.linalg.norm(deviation)), "ratio": ratio, "outside": outside}
        )
    return out


def _inside_metrics(record: PlacementRecord, graph: TopologyGraph, faces: np.ndarray, audit: Mapping | None) -> list:
    """For each placed child whose parent is placed: fraction taken from the parent, enclosure by the parent."""
    placed = {p.organ: p.class_id for p in record.placed}
    out = []
    for organ, cls_id in placed.items():
        parents = [placed[p] for p in graph.parents(organ) if p in placed]
        if not parents:
            continue
        fraction = None
        if audit is not None and audit["written"].get(cls_id):
            fraction = float(audit["taken"][cls_id, parents].sum() / audit["written"][cls_id])
        surface = faces[cls_id].sum()
        enclosure = float(faces[cls_id, parents].sum() / surface) if surface else None
        out.append({"organ": organ, "fraction": fraction, "enclosure": enclosure})
    return out


def _audit_violations(audit: Mapping, codes: np.ndarray) -> dict[str, int]:
    """Voxels taken over per relation of the new organ to the old one (``inside``: allowed, the rest: violations)."""
    taken_from_organs = np.asarray(audit["taken"])[:, 1:]
    code = codes[:, 1:]
    return {
        CODE_RELATIONS[c]: int(taken_from_organs[code == c].sum())
        for c in (CODE_DISJOINT, CODE_CARVE, CODE_KEEP, CODE_OVERWRITE)
    }


def _audit_indents(audit: Mapping, codes: np.ndarray) -> list[float]:
    """For each (new organ, adjacent old organ) pair where the new one took voxels: the largest fraction it took."""
    fraction = np.asarray(audit["taken_fraction"])[:, 1:]
    taken = np.asarray(audit["taken"])[:, 1:]
    return [float(f) for f in fraction[(codes[:, 1:] == CODE_CARVE) & (taken > 0)]]


def sample_metrics(
    label: torch.Tensor | np.ndarray,
    record: PlacementRecord,
    graph: TopologyGraph,
    audit: Mapping | None = None,
) -> dict:
    """Plausibility metrics of one label patch (see the module docstring).

    Args:
        label: ``(H, W, D)`` or ``(1, H, W, D)`` label patch whose class ids are the graph's organs (``organs[i]``
            has id ``i + 1``).
        record: the :class:`PlacementRecord` that made it.
        graph: the topology graph it was placed under.
        audit: :meth:`InsertAudit.snapshot` of the placement, or None (overlap violations are then not measured).

    Returns:
        A JSON-serialisable dict: ``labels`` (id checks), ``voxels`` (organ -> voxels in the patch),
        ``violations`` (audit: voxels taken per relation; None without audit), ``cut_face_voxels`` (audit; None
        without), ``carved`` / ``overwritten`` (record), ``contact_voxels``, ``disjoint_contact_faces``, ``inside``,
        ``anchors``, ``skipped``, ``unreachable``, ``stand_ins``, ``shifted``, ``retries``.
    """
    as_tensor = getattr(label, "as_tensor", None)  # a MetaTensor: unwrap it, plain tensors are faster
    label = as_tensor() if callable(as_tensor) else torch.as_tensor(label)
    if label.ndim == 4 and label.shape[0] == 1:
        label = label[0]
    if label.ndim != 3:
        raise ValueError(f"sample_metrics: expected a (H, W, D) or (1, H, W, D) label, got {tuple(label.shape)}")
    organs = graph.organs
    nc = len(organs) + 1
    codes = graph.code_table().astype(np.int64)
    checks, counts = _check_label_values(label, record, organs)
    clean = label.long()
    if checks["invalid_ids"]:
        clean = torch.where((clean >= 0) & (clean < nc), clean, torch.zeros_like(clean))
    contact, faces = contact_counts(clean, codes)
    disjoint_faces = {
        f"{organs[a - 1]}|{organs[b - 1]}": int(faces[a, b])
        for a in range(1, nc)
        for b in range(a + 1, nc)
        if faces[a, b] and codes[a, b] == CODE_DISJOINT
    }
    return {
        "labels": checks,
        "voxels": {organs[k - 1]: int(counts[k]) for k in range(1, nc) if counts[k] > 0},
        "violations": _audit_violations(audit, codes) if audit is not None else None,
        "indents": _audit_indents(audit, codes) if audit is not None and "taken_fraction" in audit else None,
        "cut_face_voxels": int(sum(audit["cut_face"].values())) if audit is not None and "cut_face" in audit else None,
        "carved": int(sum(p.carved for p in record.placed)),
        "overwritten": int(sum(p.overwritten for p in record.placed)),
        "contact_voxels": contact,
        "disjoint_contact_faces": disjoint_faces,
        "inside": _inside_metrics(record, graph, faces, audit),
        "anchors": _anchor_deviations(record),
        "placed": [p.organ for p in record.placed],
        "skipped": [
            {"organ": s.organ, "reason_kind": s.reason_kind, "reason": s.reason, "cause": s.cause}
            for s in record.skipped
        ],
        "unreachable": list(record.unreachable),
        "stand_ins": list(getattr(record, "stand_ins", ())),
        "shifted": list(getattr(record, "shifted", ())),
        "retries": int(record.retries),
    }


# ---------------------------------------------------------------------------------------------- aggregation
def _quartiles(values: Sequence[float]) -> dict | None:
    if not len(values):
        return None
    q1, median, q3 = np.percentile(np.asarray(values, float), [25, 50, 75])
    return {"median": round(float(median), 3), "q1": round(float(q1), 3), "q3": round(float(q3), 3)}


def _organ_table(samples: Sequence[dict], organs: Sequence[str], spacing: float) -> dict:
    n = len(samples)
    ml_per_voxel = spacing**3 / 1000.0
    volumes, placed, skipped, unreachable = defaultdict(list), Counter(), Counter(), Counter()
    reasons: dict[str, Counter] = defaultdict(Counter)
    for s in samples:
        for organ, voxels in s["voxels"].items():
            volumes[organ].append(voxels * ml_per_voxel)
        placed.update(s["placed"])
        unreachable.update(s["unreachable"])
        for sk in s["skipped"]:
            skipped[sk["organ"]] += 1
            reasons[sk["organ"]][sk["cause"]] += 1
    table = {}
    for organ in organs:
        attempted = placed[organ] + skipped[organ]
        table[organ] = {
            "presence_rate": round(len(volumes[organ]) / n, 4),
            "volume_ml": _quartiles(volumes[organ]),
            "placed": placed[organ],
            "skipped": skipped[organ],
            "unreachable": unreachable[organ],
            "skip_rate": round(skipped[organ] / attempted, 4) if attempted else None,
            "skip_reasons": dict(reasons[organ].most_common()),
        }
    return table


def _anchor_summary(samples: Sequence[dict], organs: Sequence[str]) -> dict:
    per_organ = defaultdict(list)
    for s in samples:
        for a in s["anchors"]:
            per_organ[a["organ"]].append(a)
    ratios = [a["ratio"] for rows in per_organ.values() for a in rows]
    deviations = [a["deviation_mm"] for rows in per_organ.values() for a in rows]
    return {
        "placements": len(ratios),
        "outside_tolerance": sum(a["outside"] for rows in per_organ.values() for a in rows),
        "max_ratio": round(max(ratios), 4) if ratios else None,
        "median_deviation_mm": round(float(np.median(deviations)), 3) if deviations else None,
        "per_organ": {
            o: {
                "median_deviation_mm": round(float(np.median([a["deviation_mm"] for a in per_organ[o]])), 3),
                "max_ratio": round(max(a["ratio"] for a in per_organ[o]), 4),
                "outside_tolerance": sum(a["outside"] for a in per_organ[o]),
            }
            for o in organs
            if per_organ[o]
        },
    }


def _contact_summary(samples: Sequence[dict]) -> dict:
    out = {}
    for relation in RELATIONS:
        voxels = [s["contact_voxels"][relation] for s in samples]
        out[relation] = {"voxels_total": int(sum(voxels)), "samples_with_contact": int(sum(v > 0 for v in voxels))}
    pairs = Counter()
    for s in samples:
        pairs.update(s["disjoint_contact_faces"])
    out[DISJOINT]["top_pairs_faces"] = dict(pairs.most_common(10))
    return out


def _inside_summary(samples: Sequence[dict], min_inside_fraction: float | None) -> tuple[dict, int]:
    rows = defaultdict(list)
    for s in samples:
        for row in s["inside"]:
            rows[row["organ"]].append(row)
    below = 0
    summary = {}
    for organ, entries in rows.items():
        fractions = [r["fraction"] for r in entries if r["fraction"] is not None]
        enclosures = [r["enclosure"] for r in entries if r["enclosure"] is not None]
        if min_inside_fraction is not None:
            below += sum(f < min_inside_fraction - 1e-9 for f in fractions)
        summary[organ] = {
            "placed_with_parent": len(entries),
            "fraction_min": round(min(fractions), 4) if fractions else None,
            "fraction_median": round(float(np.median(fractions)), 4) if fractions else None,
            "enclosure_median": round(float(np.median(enclosures)), 4) if enclosures else None,
        }
    return summary, below


def aggregate(
    samples: Sequence[dict],
    organs: Sequence[str],
    spacing: float,
    min_inside_fraction: float | None = None,
    max_skip_rate: float | None = None,
    indent_fraction: float | None = None,
) -> dict:
    """Aggregate :func:`sample_metrics` results of many patches into a JSON-serialisable report.

    Args:
        samples: per-sample metrics.
        organs: the bank's organs (class ids 1..n).
        spacing: voxel size in mm (for volumes).
        min_inside_fraction: the placer's threshold; children below it are counted as violations.
        indent_fraction: the placer's limit on what a new organ takes of an adjacent one; None: not checked.
        max_skip_rate: largest skip rate allowed per organ (over the patches that reach it, for organs attempted in
            at least :data:`MIN_ATTEMPTS` patches); None: not checked.

    Returns:
        ``{"samples", "num_classes", "checks": {name: {"value", "ok", "what"}}, "ok", "overlap", "contact",
        "inside", "anchors", "retries", "organs_per_sample", "skips", "organs": {organ: presence, volume, skips}}``.
    """
    if not samples:
        raise ValueError("aggregate: no samples to report on")
    audited = all(s["violations"] is not None for s in samples)
    violations = Counter()
    for s in samples:
        violations.update(s["violations"] or {})
    inside, below = _inside_summary(samples, min_inside_fraction)
    anchors = _anchor_summary(samples, organs)
    table = _organ_table(samples, organs, spacing)
    over = {
        o: row["skip_rate"]
        for o, row in table.items()
        if max_skip_rate is not None
        and row["placed"] + row["skipped"] >= MIN_ATTEMPTS
        and row["skip_rate"] > max_skip_rate + 1e-12
    }
    cut_faces = [s.get("cut_face_voxels") for s in samples]
    indents = [f for s in samples for f in (s.get("indents") or ())]
    indents_checked = indent_fraction is not None and all(s.get("indents") is not None for s in samples)
    values = {
        "disjoint_overlap_voxels": violations[DISJOINT] if audited else None,
        "adjacent_indents_over_limit": sum(f > indent_fraction + 1e-9 for f in indents) if indents_checked else None,
        "parent_over_child_voxels": violations[CONTAINS] if audited else None,
        "children_below_min_inside": below if audited and min_inside_fraction is not None else None,
        "organs_outside_tolerance": anchors["outside_tolerance"],
        "samples_with_invalid_ids": sum(
            bool(s["labels"]["invalid_ids"] or not s["labels"]["integer"]) for s in samples
        ),
        "samples_with_unrecorded_ids": sum(bool(s["labels"]["unrecorded_ids"]) for s in samples),
        "samples_with_voxel_mismatch": sum(bool(s["labels"]["voxel_mismatch"]) for s in samples),
        "cut_face_voxels": None if None in cut_faces else int(sum(cut_faces)),
        "organs_over_max_skip_rate": None if max_skip_rate is None else len(over),
    }
    checks = {k: {"value": v, "ok": v is None or v == 0, "what": CHECKS[k]} for k, v in values.items()}
    retries = [s["retries"] for s in samples]
    placed_counts = [len(s["voxels"]) for s in samples]
    return {
        "samples": len(samples),
        "num_classes": len(organs) + 1,
        "spacing": float(spacing),
        "ok": all(c["ok"] for c in checks.values()),
        "checks": checks,
        "invalid_ids": sorted({v for s in samples for v in s["labels"]["invalid_ids"]}),
        "overlap": {
            "adjacent_carved_voxels": int(sum(s["carved"] for s in samples)),
            "inside_overwritten_voxels": int(sum(s["overwritten"] for s in samples)),
            "adjacent_indented_voxels": violations[ADJACENT] if audited else None,
            "indents": len(indents),
            "largest_indent_fraction": round(max(indents), 4) if indents else 0.0,
            "audited": audited,
        },
        "contact": _contact_summary(samples),
        "inside": inside,
        "anchors": anchors,
        "retries": {
            "total": int(sum(retries)),
            "mean_per_sample": round(float(np.mean(retries)), 3),
            "max_per_sample": int(max(retries)),
        },
        "organs_per_sample": {
            "median": float(np.median(placed_counts)),
            "min": int(min(placed_counts)),
            "max": int(max(placed_counts)),
            "empty_patches": int(sum(c == 0 for c in placed_counts)),
        },
        "skips": {
            "max_skip_rate": max_skip_rate,
            "min_attempts": MIN_ATTEMPTS,
            "over": over,
            "stand_ins": int(sum(len(s.get("stand_ins", ())) for s in samples)),
            "shifted": int(sum(len(s.get("shifted", ())) for s in samples)),
        },
        "organs": table,
    }
