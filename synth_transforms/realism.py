"""Realism of synthetic label patches, measured against patches cut from real label maps.

Three modules, one job each: :mod:`~synth_transforms.realism_patches` makes the patch sets (real patches cut from
reference label maps, mapped to the bank's organs, centres drawn as synthesis draws them; synthetic and primitive
patches), :mod:`~synth_transforms.realism_stats` holds the per-patch statistics and the distances between two sets,
and this module runs the comparison (:func:`realism_report`) and prints it (:func:`format_realism`). The public names
of all three are importable from here. Command line: ``python -m synth_transforms validate --reference <label maps>
--class_map <json>``.

So that a number means something, the same distances are measured between real subjects: with ``K >= 2``
reference subjects, fold ``k`` compares subject ``k``'s patches with the pooled patches of the others (leave one
subject out, ``loso``), and the synthetic (or primitive) patches are compared in the same folds: their ``k``-th equal
share against the same pooled others (``synthetic``, ``primitives``). Synthesis from a bank built on the reference
subjects has seen every one of them, so ``holdout_banks=True`` adds the fair test: per fold, a bank rebuilt without
subject ``k`` makes the ``k``-th share, compared with subject ``k`` itself (``synthetic_holdout``), as the other
subjects' real patches are in ``loso``. Within a fold every comparison is summarised over the organs / pairs defined
in all of them (a held-out field of view without lungs has no lung pairs), and fold summaries are averaged over
``k``. The synthetic and primitive sets are also compared with all real patches at once (``*_all``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ._args import as_size3, check_bool, check_positive_int
from .bank import ShapeBank, load_bank
from .realism_patches import (
    CENTER_JITTER_FRACTION,
    _holdout_bank,
    draw_patch_center,
    reference_patches,
    synthetic_patches,
)
from .realism_stats import STATISTICS, PatchSet, _average_folds, _common_support, _pairs, compare, patch_statistics
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


def _shares(n: int, k: int) -> list[np.ndarray]:
    """``k`` contiguous, near-equal shares of ``range(n)``."""
    bounds = np.linspace(0, n, k + 1).round().astype(int)
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(k)]


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
