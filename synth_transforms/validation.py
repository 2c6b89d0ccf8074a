"""The validation run: generate anatomy label patches, measure how plausible they are, print the report.

:func:`plausibility_report` generates ``n`` patches with :class:`~synth_transforms.transforms.RandAnatomyLabel`
(patch ``i`` seeded like :class:`~synth_transforms.dataset.SyntheticDataset` at epoch 0, so the labels are those
that ``RandAnatomySynthd`` makes for the same seed), audits each placement with an
:class:`~synth_transforms.metrics.InsertAudit` observer, measures each patch with
:func:`~synth_transforms.metrics.sample_metrics` and aggregates them (:func:`~synth_transforms.metrics.aggregate`);
:func:`format_report` prints a report. ``python -m synth_transforms validate`` runs both.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence

from torch.utils.data import DataLoader, Dataset

from ._args import check_fraction, check_positive_int
from .bank import ShapeBank
from .dataset import sample_seed
from .metrics import InsertAudit, aggregate, sample_metrics
from .topology import RELATIONS
from .transforms import RandAnatomyLabel
from .transforms.options import options_dict

__all__ = ["plausibility_report", "format_report"]


# ---------------------------------------------------------------------------------------------- generation
def _label_maker(source) -> RandAnatomyLabel:
    """The :class:`RandAnatomyLabel` inside ``source`` (the transform itself, a dict form or a synth composite)."""
    inner = source
    for _ in range(3):  # RandAnatomySynthd -> RandAnatomySynth -> RandAnatomyLabel at most
        if isinstance(inner, RandAnatomyLabel):
            return inner
        # the composites' public accessor first, then the dictionary wrappers' inner transform
        accessor = getattr(inner, "label_maker", None)
        inner = accessor if accessor is not None else getattr(inner, "maker", None)
    raise TypeError(
        "plausibility_report: expected a shape bank, a bank path, None or an anatomy transform "
        f"(RandAnatomyLabel, RandAnatomyLabeld, RandAnatomySynth, RandAnatomySynthd), got {type(source).__name__}"
    )


class _AuditedSamples(Dataset):
    """Sample ``i``: the label maker seeded from ``(seed, 0, i)``, audited and measured; returns the metrics."""

    def __init__(self, label_maker: RandAnatomyLabel, seed: int, n: int):
        # A shallow copy has its own random state and last record, so the caller's transform is left as it was;
        # the placer is shared (placement only reads it), and the audit observes it only during a call.
        self.label_maker = copy.copy(label_maker)
        self.audit = InsertAudit(label_maker.placer.bank.num_classes)
        self.seed, self.n = int(seed), int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        maker, placer = self.label_maker, self.label_maker.placer
        maker.set_random_state(seed=sample_seed(self.seed, 0, index))
        self.audit.reset()
        placer.observers.append(self.audit)
        try:
            label = maker()
        finally:
            placer.observers.remove(self.audit)
        return sample_metrics(label, maker.last_record, placer.graph, self.audit.snapshot())


def _identity(item):
    """DataLoader collate of single samples: keep each as it is."""
    return item


def plausibility_report(
    source: RandAnatomyLabel | ShapeBank | str | os.PathLike | None = None,
    n: int = 1000,
    seed: int = 0,
    patch_size: Sequence[int] | int = 96,
    workers: int = 0,
    progress: bool = False,
    max_skip_rate: float | None = 0.05,
    **label_kwargs,
) -> dict:
    """Generate ``n`` anatomy label patches and report how plausible they are (see :func:`metrics.aggregate`).

    Args:
        source: a :class:`ShapeBank`, a bank file, None (default bank), or an anatomy transform
            (``RandAnatomyLabel``, ``RandAnatomyLabeld``, ``RandAnatomySynth``, ``RandAnatomySynthd``; its own
            patch size and options are used and ``patch_size`` / ``label_kwargs`` are ignored). A transform is
            left as it was (random state, last record).
        n: number of patches.
        seed: base seed; patch ``i`` is seeded from ``(seed, 0, i)`` as in ``SyntheticDataset``.
        patch_size: patch size in voxels (int or 3 ints) when ``source`` is a bank.
        workers: DataLoader worker processes (0: in this process).
        progress: show a tqdm progress bar.
        max_skip_rate: the report fails when an organ (attempted in at least ``metrics.MIN_ATTEMPTS`` patches) is
            skipped in more than this fraction of the patches that reach it; None: not checked.
        label_kwargs: further :class:`RandAnatomyLabel` arguments when ``source`` is a bank (``organs``,
            ``center_organs``, ``anchors``, ``topology``, ``placement_options``).

    Returns:
        The aggregated report plus ``settings`` (n, seed, patch size, organs, placer options).
    """
    n = check_positive_int(n, "n", "plausibility_report")
    workers = check_positive_int(workers, "workers", "plausibility_report", minimum=0)
    if max_skip_rate is not None:
        max_skip_rate = check_fraction(max_skip_rate, "max_skip_rate", "plausibility_report")
    if source is None or isinstance(source, (ShapeBank, str, os.PathLike)):
        maker = RandAnatomyLabel(source, patch_size=patch_size, **label_kwargs)
    else:
        maker = _label_maker(source)
    placer = maker.placer
    loader = DataLoader(_AuditedSamples(maker, seed, n), batch_size=None, num_workers=workers, collate_fn=_identity)
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, total=n, desc="validate", unit="patch")
    samples = list(loader)
    report = aggregate(
        samples,
        placer.bank.organs,
        placer.bank.spacing,
        placer.min_inside_fraction,
        max_skip_rate,
        placer.indent_fraction,
    )
    report["settings"] = {
        "n": n,
        "seed": int(seed),
        "patch_size": list(placer.patch_size),
        "placement_order": list(placer.order),
        "jitter_scale": placer.jitter_scale,
        "max_tries": placer.max_tries,
        "max_carve_fraction": placer.max_carve_fraction,
        "min_inside_fraction": placer.min_inside_fraction,
        "indent_fraction": placer.indent_fraction,
        "max_embed_fraction": placer.max_embed_fraction,
        "max_skip_rate": max_skip_rate,
        "placement_options": options_dict(maker.placement_options),  # all of them, the ablation switches included
    }
    return report


# ---------------------------------------------------------------------------------------------- text
def _skip_lines(skips: Mapping | None) -> list[str]:
    """The skip-rate limit and the organs over it; how often cut shapes were replaced and collisions moved."""
    if not skips:
        return []
    lines = [
        f"cut donor shapes replaced by complete stand-ins: {skips['stand_ins']}; colliding candidates moved to a free "
        f"spot: {skips['shifted']}"
    ]
    if skips["max_skip_rate"] is not None:
        limit = f"{100 * skips['max_skip_rate']:g}%"
        over = ", ".join(f"{o} {100 * r:.1f}%" for o, r in skips["over"].items())
        lines.append(
            f"skip rate limit {limit} (organs attempted in >= {skips['min_attempts']} patches): "
            + (f"FAIL, over it: {over}" if over else "ok, no organ over it")
        )
    return lines


def _fmt_volume(volume: dict | None) -> str:
    if volume is None:
        return "-"
    return f"{volume['median']:.1f} ({volume['q1']:.1f}-{volume['q3']:.1f})"


def format_report(report: Mapping) -> str:
    """A readable text form of a :func:`plausibility_report` / :func:`metrics.aggregate` report."""
    settings = report.get("settings", {})
    size = "x".join(str(s) for s in settings.get("patch_size", [])) or "?"
    lines = [
        f"Plausibility of {report['samples']} anatomy patches ({size} voxels at {report['spacing']:g} mm, "
        f"seed {settings.get('seed', '?')}, {report['num_classes']} classes): {'PASS' if report['ok'] else 'FAIL'}",
        "checks (each must be 0):",
    ]
    for name, check in report["checks"].items():
        value = "n/a" if check["value"] is None else check["value"]
        lines.append(f"  {'ok  ' if check['ok'] else 'FAIL'} {name:30s} {value!s:>8}   {check['what']}")
    overlap, contact, anchors, retries = report["overlap"], report["contact"], report["anchors"], report["retries"]
    lines += [
        f"allowed overlaps: adjacent voxels carved {overlap['adjacent_carved_voxels']}, "
        f"parent voxels covered by inside children {overlap['inside_overwritten_voxels']}, "
        f"adjacent voxels indented {overlap.get('adjacent_indented_voxels')} "
        f"({overlap.get('indents', 0)} indents, largest {overlap.get('largest_indent_fraction', 0.0):.1%} of an organ)",
        "contact in the label map (voxels with a 6-neighbour of that relation; information): "
        + ", ".join(
            f"{r} {contact[r]['voxels_total']} in {contact[r]['samples_with_contact']} patches" for r in RELATIONS
        ),
    ]
    if contact["disjoint"]["top_pairs_faces"]:
        pairs = ", ".join(f"{k} {v}" for k, v in list(contact["disjoint"]["top_pairs_faces"].items())[:5])
        lines.append(f"  most touching disjoint pairs (faces): {pairs}")
    for organ, row in report["inside"].items():
        lines.append(
            f"  inside: {organ} placed with its parent {row['placed_with_parent']} times, fraction taken from the "
            f"parent min {row['fraction_min']} median {row['fraction_median']}, enclosure median "
            f"{row['enclosure_median']}"
        )
    lines += [
        f"anchors: {anchors['placements']} placements, max deviation/tolerance {anchors['max_ratio']}, "
        f"median deviation {anchors['median_deviation_mm']} mm",
        f"retries: {retries['total']} rejected candidates, {retries['mean_per_sample']} per patch "
        f"(max {retries['max_per_sample']})",
        "organs per patch: median {median:g}, min {min}, max {max}; patches without any organ: {empty_patches}".format(
            **report["organs_per_sample"]
        ),
        *_skip_lines(report.get("skips")),
        f"  {'organ':30s} {'present':>7s} {'volume ml, median (IQR)':>26s} {'placed':>6s} {'skipped':>7s} "
        f"{'skip%':>6s} {'unreach':>7s}  main skip reason",
    ]
    for organ, row in report["organs"].items():
        skip = "-" if row["skip_rate"] is None else f"{100 * row['skip_rate']:.1f}"
        reason = next(iter(row["skip_reasons"]), "")
        lines.append(
            f"  {organ:30s} {100 * row['presence_rate']:6.1f}% {_fmt_volume(row['volume_ml']):>26s} "
            f"{row['placed']:6d} {row['skipped']:7d} {skip:>6s} {row['unreachable']:7d}  {reason}"
        )
    return "\n".join(lines)
