"""Results of the transfer experiment: Dice per class from MONAI's metric files, one summary dictionary, and the
Markdown page (table per regime and arm, settings, wall time and command of every stage)."""

from __future__ import annotations

import csv
import dataclasses
import re
import statistics
from collections.abc import Sequence
from pathlib import Path

from experiments.runner import Stage, read_record, utc_now
from experiments.transfer.plan import ARMS, Settings
from synth_transforms.io import atomic_path, read_json, write_json_atomic
from synth_transforms.machine import device_name, machine_facts

NOT_CLASSES = ("filename", "mean", "cases")  # columns of a metric file, keys of read_dice: not classes


def read_dice(csv_path: Path) -> dict[str, float]:
    """Mean Dice per class over the cases of a ``val_mean_dice_raw.csv``, whose class columns are named by MONAI's
    ``MetricsSaver`` (``class0`` is label 1) or by class (``Anterior``, ``label2``)."""
    lines = Path(csv_path).read_text().splitlines()
    rows = list(csv.DictReader(lines, delimiter="\t" if "\t" in lines[0] else ","))
    if not rows:
        raise ValueError(f"{csv_path}: no evaluated cases")
    classes = [key for key in rows[0] if key not in NOT_CLASSES]
    per_class = {c: statistics.fmean(float(row[c]) for row in rows) for c in classes}
    return {**per_class, "mean": statistics.fmean(per_class.values()), "cases": len(rows)}


def few_shot_cases(out: Path, settings: Settings) -> list[str] | None:
    """Names of the few-shot training cases, as recorded by the first few-shot fine-tuning (None before it ran)."""
    record = out / "finetune" / f"few_shot_scratch_seed{settings.seeds[0]}" / "runs" / "train_cases.json"
    if not record.is_file():
        return None
    return [Path(case["image"]).name.removesuffix(".nii.gz") for case in read_json(record, "case record")["training"]]


def device_description(device: str) -> str:
    facts = machine_facts()
    return f"{device_name(device)}; Python {facts['python']}, torch {facts['torch']}, MONAI {facts['monai']}"


def summarise(settings: Settings, out: Path, stages: Sequence[Stage], labels: dict[str, str]) -> dict:
    """Collect every finished evaluation and stage record into one results dictionary."""
    records = {s.name: record for s in stages if (record := read_record(out, s.name)) is not None}
    results: dict[str, dict] = {}
    for regime in settings.regimes:
        for arm in ARMS:
            runs = {}
            for seed in settings.seeds:
                metrics = out / "evaluate" / f"{regime}_{arm}_seed{seed}" / "metrics" / "val_mean_dice_raw.csv"
                if metrics.is_file():
                    runs[seed] = read_dice(metrics)
            if runs:
                results.setdefault(regime, {})[arm] = runs
    return {
        "settings": dataclasses.asdict(settings),
        "few_shot_cases": few_shot_cases(out, settings),
        "class_names": labels,
        "results": results,
        "stages": records,
        "device": device_description(settings.device),
        "written": utc_now(),
    }


def mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def class_title(column: str, class_names: dict[str, str]) -> str:
    """The dataset's name of a metric column: ``class<i>`` (MONAI's numbering, background left out) is label i + 1,
    ``label<i>`` is label i, any other column is a name already."""
    number = re.fullmatch(r"(class|label)(\d+)", column)
    if number is None:
        return column
    label = int(number[2]) + (number[1] == "class")
    return class_names.get(str(label), column)


def results_table(summary: dict) -> list[str]:
    """Markdown rows per regime and arm: Dice per class and overall (mean ± std over seeds), change from scratch."""
    arms_by_regime = summary["results"]
    if not arms_by_regime:
        return []
    first_run = next(iter(next(iter(next(iter(arms_by_regime.values())).values())).values()))
    classes = [key for key in first_run if key not in NOT_CLASSES]
    names = [class_title(c, summary["class_names"]) for c in classes]
    header = ["regime", "arm", "seeds", *(f"Dice {name}" for name in names), "mean Dice", "Δ mean vs scratch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for regime, arms in arms_by_regime.items():
        scratch = arms.get("scratch")
        scratch_mean = statistics.fmean(run["mean"] for run in scratch.values()) if scratch else None
        for arm, runs in arms.items():
            means = [run["mean"] for run in runs.values()]
            delta = "" if arm == "scratch" or scratch_mean is None else f"{statistics.fmean(means) - scratch_mean:+.4f}"
            cells = [mean_std([run[c] for run in runs.values()]) for c in classes]
            seeds = ",".join(str(seed) for seed in runs)
            lines.append("| " + " | ".join([regime, arm, seeds, *cells, mean_std(means), delta]) + " |")
    return lines


def results_markdown(summary: dict) -> str:
    s = summary["settings"]
    lines = [
        "# Transfer experiment results",
        "",
        f"Written {summary['written']} by `scripts/run_transfer_experiment.py` on {summary['device']}.",
        "",
        "## Dice on the validation split (final fine-tuned weights)",
        "",
        *results_table(summary),
        "",
        "## Settings",
        "",
        f"- pre-training: SwinUNETR feature_size {s['feature_size']}, {s['pretrain_patch']}^3 patches, batch "
        f"{s['pretrain_batch']}, {s['pretrain_iterations']} iterations, AMP {s['amp_dtype']} on CUDA, "
        f"lr {s['learning_rate']}",
        f"- fine-tuning: {s['finetune_patch']}^3 patches, batch {s['finetune_batch']}, {s['finetune_iterations']} "
        f"iterations per arm, encoder transfer, seeds {s['seeds']}; few-shot = {s['few_shot_cases']} training cases "
        f"(subset seed {s['subset_seed']}: {', '.join(summary['few_shot_cases'] or ['not run yet'])}), "
        "all = the whole training split",
        f"- evaluation: {'all' if s['val_cases'] is None else s['val_cases']} validation cases, sliding window, "
        "Dice per class on the original grid",
        "",
        "## Stages",
        "",
        "| stage | iterations | wall s | finished |",
        "|---|---|---|---|",
    ]
    for name, record in summary["stages"].items():
        lines.append(f"| {name} | {record.get('iterations') or ''} | {record['wall_s']} | {record['finished']} |")
    lines += ["", "## Commands", ""]
    for name, record in summary["stages"].items():
        lines += [f"`{name}`:", "", "```", " ".join(record["command"]), "```", ""]
    return "\n".join(lines)


def write_results(summary: dict, out: Path, results_doc: str | None = None) -> None:
    """``results.json`` and ``results.md`` in ``out``, and the Markdown also to ``results_doc`` when given."""
    write_json_atomic(out / "results.json", summary)
    targets = [out / "results.md"] + ([Path(results_doc)] if results_doc else [])
    for target in targets:
        with atomic_path(target) as tmp:
            Path(tmp).write_text(results_markdown(summary))
