"""Results of the transfer experiment: Dice per class from MONAI's metric files, statistics over seeds, learning
curves, one summary dictionary, and the Markdown page (tables per regime and arm, paired differences with bootstrap
intervals, learning curves, settings, wall time and command of every stage)."""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import shutil
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from experiments.runner import Stage, in_partial_folder, read_record, utc_now
from experiments.transfer.curves import CURVE_FILE, collect_curves, seed_average, write_curve_png
from experiments.transfer.difference_plot import difference_panels, write_difference_png
from experiments.transfer.plan import ARMS, METRICS_FILE, PRETRAIN_CONFIG_FILES, Settings
from experiments.transfer.stats import regime_statistics
from synth_transforms.io import atomic_path, read_json, write_json_atomic
from synth_transforms.machine import device_name, machine_facts

SECTION_BEGIN = "<!-- section {name}: written by scripts/run_transfer_experiment.py; replaced on each run -->"
SECTION_END = "<!-- end of section {name} -->"
TRAIN_CASES_FILE = "train_cases.json"  # in a fine-tuning's runs/: the training cases the bundle drew
REPORT_INPUTS = (  # what the report reads from the stages' folders: published too, so the records alone rebuild it
    f"evaluate/*/{METRICS_FILE}",
    f"finetune/*/runs/{CURVE_FILE}",
    f"finetune/*/runs/{TRAIN_CASES_FILE}",
    f"pretrain/*/runs/{CURVE_FILE}",
)
PUBLISHED = (
    "results.json", "settings.json", "pretrain_check.json", "encoder_drift.json", "restored.json", "*.png",
    "stages/*.json", *REPORT_INPUTS,
)  # fmt: skip
SECTIONS = re.compile(r"<!-- section (\w+): .*?<!-- end of section \1 -->\n?", re.DOTALL)
NOT_CLASSES = ("filename", "mean", "cases")  # columns of a metric file, keys of read_dice: not classes
FIGURES = {  # written beside results.json: file name and alternative text of each figure
    "differences": ("paired_differences.png", "paired differences between arms"),
    "finetune": ("learning_curve.png", "finetune learning curve"),
    "pretrain": ("pretrain_curve.png", "pretrain learning curve"),
}


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
    seed = settings.regime_seeds("few_shot")[0]
    record = out / "finetune" / f"few_shot_scratch_seed{seed}" / "runs" / TRAIN_CASES_FILE
    if not record.is_file():
        return None
    return [Path(case["image"]).name.removesuffix(".nii.gz") for case in read_json(record, "case record")["training"]]


def device_description(device: str) -> str:
    facts = machine_facts()
    return f"{device_name(device)}; Python {facts['python']}, torch {facts['torch']}, MONAI {facts['monai']}"


def collect_dice(settings: Settings, out: Path) -> dict:
    """``{regime: {arm: {seed: read_dice(...)}}}`` of every finished evaluation."""
    results: dict[str, dict] = {}
    for regime in settings.regimes:
        for arm in ARMS:
            runs = {}
            for seed in settings.regime_seeds(regime):
                metrics = out / "evaluate" / f"{regime}_{arm}_seed{seed}" / METRICS_FILE
                if metrics.is_file():
                    runs[seed] = read_dice(metrics)
            if runs:
                results.setdefault(regime, {})[arm] = runs
    return results


def dice_classes(results: dict) -> list[str]:
    """The class columns of the first run in ``results`` (every run has the same)."""
    for arms in results.values():
        for runs in arms.values():
            for run in runs.values():
                return [key for key in run if key not in NOT_CLASSES]
    return []


def summarise(settings: Settings, out: Path, stages: Sequence[Stage], labels: dict[str, str]) -> dict:
    """Collect every finished evaluation, learning curve and stage record into one results dictionary, with the
    statistics over seeds (mean +- std per arm and class, paired differences with bootstrap intervals)."""
    records = {s.name: record for s in stages if (record := read_record(out, s.name)) is not None}
    results = collect_dice(settings, out)
    classes = dice_classes(results)
    regimes = {regime: settings.regime_seeds(regime) for regime in settings.regimes}
    return {
        "preset": settings.preset,
        "settings": dataclasses.asdict(settings),
        "few_shot_cases": few_shot_cases(out, settings),
        "class_names": labels,
        "results": results,
        "statistics": {regime: regime_statistics(arms, classes) for regime, arms in results.items()},
        "curves": collect_curves(out, regimes, ARMS, list(PRETRAIN_CONFIG_FILES)),
        "stages": records,
        "device": device_description(settings.device),
        "written": utc_now(),
    }


def fmt(value: float | None, sign: bool = False) -> str:
    return "" if value is None else f"{value:+.4f}" if sign else f"{value:.4f}"


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
    """Markdown rows per regime and arm: Dice per class and overall (mean ± std over seeds), and the change from
    scratch over the seeds both arms have (while a run goes on, an arm may have fewer seeds than scratch)."""
    arms_by_regime = summary["results"]
    if not arms_by_regime:
        return []
    classes = dice_classes(arms_by_regime)
    names = [class_title(c, summary["class_names"]) for c in classes]
    dice = [f"Dice {name}" for name in names]
    header = ["regime", "arm", "seeds", *dice, "mean Dice", "Δ mean vs scratch, same seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for regime, arms in arms_by_regime.items():
        scratch = arms.get("scratch", {})
        for arm, runs in arms.items():
            means = [run["mean"] for run in runs.values()]
            paired = [run["mean"] - scratch[seed]["mean"] for seed, run in runs.items() if seed in scratch]
            delta = f"{statistics.fmean(paired):+.4f}" if paired and arm != "scratch" else ""
            cells = [mean_std([run[c] for run in runs.values()]) for c in classes]
            seeds = ",".join(str(seed) for seed in runs)
            lines.append("| " + " | ".join([regime, arm, seeds, *cells, mean_std(means), delta]) + " |")
    return lines


def ci_text(difference: dict) -> str:
    return "n/a (one seed)" if difference["ci95"] is None else "[{:+.4f}, {:+.4f}]".format(*difference["ci95"])


def differences_table(summary: dict) -> list[str]:
    """Markdown rows per regime and comparison: the paired per-seed differences of the mean Dice (and per class),
    their mean ± std and 95 % bootstrap interval."""
    rows = []
    for regime, stats in summary.get("statistics", {}).items():
        for comparison, per_key in stats["differences"].items():
            mean = per_key["mean"]
            pairs = zip(mean["seeds"], mean["differences"], strict=True)
            per_seed = ", ".join(f"{seed}: {d:+.4f}" for seed, d in pairs)
            classes = "; ".join(
                f"{class_title(key, summary['class_names'])} {fmt(d['mean'], sign=True)} {ci_text(d)}"
                for key, d in per_key.items()
                if key != "mean" and d is not None
            )
            spread = "" if mean["std"] is None else f" ± {mean['std']:.4f}"
            cells = [regime, comparison, str(mean["n"]), per_seed, f"{mean['mean']:+.4f}{spread}", ci_text(mean)]
            cells.append(classes)
            rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return []
    header = ["regime", "difference", "seeds", "per seed", "mean ± std", "95 % bootstrap CI", "per class (CI)"]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows]


def mixed_machines(records: dict, regime: str) -> dict[int, dict[str, str]]:
    """``{seed: {arm: machine}}`` for the seeds of ``regime`` whose fine-tunings ran on more than one machine, as the
    stage records say (records that do not say are left out)."""
    by_seed: dict[int, dict[str, str]] = {}
    for name, record in records.items():
        match = re.fullmatch(rf"finetune_{regime}_(.+)_seed(\d+)", name)
        if match and record.get("machine"):
            by_seed.setdefault(int(match[2]), {})[match[1]] = record["machine"]
    return {seed: arms for seed, arms in sorted(by_seed.items()) if len(set(arms.values())) > 1}


def machine_note(summary: dict) -> str:
    """A warning naming each seed whose paired arms were fine-tuned on different machines; "" when there is none.
    The same fine-tuning on two CPU models ends at different Dice (by about 0.003 on MSD Hippocampus few-shot, see
    docs/results.md), so such a paired difference measures the change of machine too."""
    mixed = [
        f"{regime} seed {seed} (" + ", ".join(f"`{arm}` on {machine}" for arm, machine in arms.items()) + ")"
        for regime in summary.get("results", {})
        for seed, arms in mixed_machines(summary["stages"], regime).items()
    ]
    if not mixed:
        return ""
    return (
        "Fine-tunings of one seed ran on different machines: " + "; ".join(mixed) + ". CPU models differ in their "
        "last bits and a training run amplifies that, so these seeds' paired differences include a change of machine."
    )


def bootstrap_note(summary: dict) -> str:
    """What the intervals are, and how coarse they are with the seeds at hand."""
    statistics_ = summary.get("statistics", {}).values()
    sizes = sorted({d["mean"]["n"] for stats in statistics_ for d in stats["differences"].values()})
    if not sizes:
        return ""
    boot = next(iter(summary["statistics"].values()))["bootstrap"]
    note = (
        f"Differences are paired by fine-tuning seed (same seed: same subset, crops and initialisation of the "
        f"decoder). The interval is a percentile bootstrap of the mean difference over seeds ({boot['resamples']} "
        f"resamples, generator seed {boot['seed']})."
    )
    if sizes[0] < 10:
        note += (
            f" With {' or '.join(map(str, sizes))} seeds it is coarse: it resamples so few values that it understates "
            "the uncertainty, so an interval that excludes 0 is a hint, not proof."
        )
    return note


def curve_tables(summary: dict) -> list[str]:
    """Markdown tables of the learning curves: synthetic validation Dice of each pre-training, and validation Dice
    of the fine-tunings (mean ± std over seeds) at each recorded round."""
    curves, lines = summary.get("curves", {}), []
    if curves.get("pretrain"):
        lines += ["Pre-training, synthetic validation Dice (mean over the classes present; in brackets the foreground "
                  "Dice, every class against the background, where recorded):", ""]  # fmt: skip
        lines += ["| arm | iteration: Dice |", "|---|---|"]
        for kind, rounds in curves["pretrain"].items():
            points = [f"{p['iteration']}: {p['mean']:.3f}" + _foreground(p) for p in rounds]
            lines.append(f"| {kind} | " + ", ".join(points) + " |")
        lines.append("")
    for regime, arms in curves.get("finetune", {}).items():
        lines += [f"Fine-tuning ({regime}), Dice on the validation cases during training (reported only):", ""]
        lines += ["| arm | seeds | iteration: Dice mean ± std |", "|---|---|---|"]
        for arm, runs in arms.items():
            points = ", ".join(
                f"{i}: {m:.3f}" + ("" if sd is None else f" ± {sd:.3f}") for i, m, sd, _ in seed_average(runs)
            )
            lines.append(f"| {arm} | {','.join(map(str, runs))} | {points} |")
        lines.append("")
    return lines


def _foreground(point: dict) -> str:
    return f" ({point['foreground']:.3f})" if "foreground" in point else ""


def write_figures(summary: dict, out: Path) -> dict[str, str]:
    """The PNGs beside ``results.json``: the paired differences (one panel per regime), the fine-tuning learning
    curves (one panel per regime, one line per arm, mean ± std over seeds) and the pre-training curves (one line per
    arm). Returns ``{kind: file name}`` of those written (none without matplotlib)."""
    curves, written = summary.get("curves", {}), {}
    panels = {
        "finetune": {regime: {arm: seed_average(runs) for arm, runs in arms.items()}
                     for regime, arms in curves.get("finetune", {}).items()},
        "pretrain": {"synthetic pre-training": {kind: [(p["iteration"], p["mean"], None) for p in rounds]
                                                for kind, rounds in curves.get("pretrain", {}).items()}},
    }  # fmt: skip
    differences = difference_panels(summary.get("statistics", {}))
    if any(differences.values()) and write_difference_png(out / FIGURES["differences"][0], differences) is not None:
        written["differences"] = FIGURES["differences"][0]
    labels = {"finetune": "validation Dice (mean over seeds)", "pretrain": "synthetic validation Dice"}
    for kind, figure in panels.items():
        if any(figure.values()) and write_curve_png(out / FIGURES[kind][0], figure, labels[kind]) is not None:
            written[kind] = FIGURES[kind][0]
    return written


def settings_lines(summary: dict, pretrain_arms: str = "both arms alike") -> list[str]:
    s = summary["settings"]
    precision = "fp32" if s["device"] == "cpu" else f"AMP {s['amp_dtype']}"
    bank = "the default bank (1.5 mm)" if s["pretrain_spacing"] is None else f"a bank at {s['pretrain_spacing']} mm"
    side = s["pretrain_patch"] * (1.5 if s["pretrain_spacing"] is None else s["pretrain_spacing"])
    warmup = "10 %" if s["pretrain_warmup"] is None else s["pretrain_warmup"]
    fine_warmup = "10 %" if s["finetune_warmup"] is None else s["finetune_warmup"]
    all_seeds = s["seeds"] if s["all_seeds"] is None else s["all_seeds"]
    patch = "x".join(map(str, s["finetune_patch"]))
    return [
        f"- preset `{summary.get('preset', s.get('preset'))}`, device {s['device']}, {precision}, SwinUNETR "
        f"feature_size {s['feature_size']}",
        f"- pre-training ({pretrain_arms}): {s['pretrain_patch']}^3 patches from {bank} ({side:g} mm a side), batch "
        f"{s['pretrain_batch']}, {s['pretrain_iterations']} iterations, lr {s['pretrain_learning_rate']} (AdamW, "
        f"warm-up {warmup}, cosine), {s['pretrain_val_points']} synthetic validation rounds of "
        f"{s['pretrain_val_samples']} samples",
        f"- fine-tuning (every arm alike): {patch} patches, batch {s['finetune_batch']}, {s['finetune_iterations']} "
        f"iterations, lr {s['finetune_learning_rate']} (warm-up {fine_warmup}, cosine), encoder transfer; "
        f"few-shot = {s['few_shot_cases']} training cases (subset seed {s['subset_seed']}: "
        f"{', '.join(summary['few_shot_cases'] or ['not run yet'])}), seeds {list(s['seeds'])}; all = the whole "
        f"training split, seeds {list(all_seeds)}; {s['finetune_val_points']} validation rounds for the learning "
        "curve (reported only)",
        f"- evaluation: {'all' if s['val_cases'] is None else s['val_cases']} validation cases, final weights of "
        f"each run, sliding window ({patch}), Dice per class on the original grid",
    ]


def results_markdown(summary: dict, doc_dir: Path | None = None, figures_dir: Path | None = None) -> str:
    """The results page; figures are linked relative to ``doc_dir`` (the page's folder) from ``figures_dir``."""
    links = {}
    for kind, name in summary.get("figures", {}).items():
        target = Path(figures_dir or ".") / name
        link = os.path.relpath(target, doc_dir) if doc_dir and figures_dir else name
        links[kind] = [f"![{FIGURES[kind][1]}]({link})", ""]
    lines = [
        "# Transfer experiment results",
        "",
        f"Written {summary['written']} by `scripts/run_transfer_experiment.py` on {summary['device']}"
        + (f", code commit {summary['commit']}." if summary.get("commit") else ".")
        + (f" {stages_ran(summary['stages'])}" if summary["stages"] else ""),
        "",
        "## Dice on the validation split (final fine-tuned weights)",
        "",
        *results_table(summary),
        "",
        "## Paired differences between arms",
        "",
        *differences_table(summary),
        "",
        bootstrap_note(summary),
        *(["", note] if (note := machine_note(summary)) else []),
        "",
        *links.get("differences", []),
        "## Learning curves",
        "",
        *curve_tables(summary),
        *links.get("finetune", []),
        *links.get("pretrain", []),
        "## Settings",
        "",
        *settings_lines(summary),
        "",
        "## Stages",
        "",
        *stage_table(summary["stages"]),
        "",
        "## Commands",
        "",
        *stage_commands(summary["stages"]),
    ]
    return "\n".join(lines)


def short_commit(commit: str | None) -> str:
    """A git commit as its 7-character prefix in backticks; anything else (``unknown``, missing) as words."""
    if commit and re.fullmatch(r"[0-9a-f]{40}", commit):
        return f"`{commit[:7]}`"
    return commit or "not recorded"


def _stage_counts(values) -> str:
    """Each value with the number of stages that have it, most common first: ``a (30 stages), b (2 stages)``."""
    return ", ".join(f"{value} ({n} stage{'s' if n > 1 else ''})" for value, n in Counter(values).most_common())


def stage_commits(records: dict) -> str:
    """The code commits the stages ran at, most used first: ``abc1234 (30 stages), def5678 (2 stages)``."""
    return _stage_counts(short_commit(record.get("commit")) for record in records.values())


def stage_machine(record: dict) -> str:
    """The machine a stage ran on, as its record says (records written before 2026-12-07 do not say)."""
    return record.get("machine") or "not recorded"


def stage_machines(records: dict) -> str:
    """The machines the stages ran on, most used first: ``CPU: AMD EPYC, 2 cores (6 stages), ...``. Floating-point
    results differ between CPU models, so a comparison whose stages ran on different machines carries that too."""
    return _stage_counts(stage_machine(record) for record in records.values())


def stages_ran(records: dict) -> str:
    """One sentence: the commits and the machines the recorded stages ran at and on."""
    return f"The stages ran at commit {stage_commits(records)}, on {stage_machines(records)}."


def stage_table(records: dict) -> list[str]:
    """One row per recorded stage: iterations, wall seconds (over every segment of a resumed stage), when it
    finished, the commit it ran and the machine it ran on."""
    lines = ["| stage | iterations | wall s | finished | commit | machine |", "|---|---|---|---|---|---|"]
    for name, record in records.items():
        segments = record.get("segments", 1)
        wall = f"{record['wall_s']}" + (f" ({segments} segments)" if segments > 1 else "")
        cells = [name, str(record.get("iterations") or ""), wall, record["finished"]]
        lines.append("| " + " | ".join([*cells, short_commit(record.get("commit")), stage_machine(record)]) + " |")
    return lines


def stage_commands(records: dict) -> list[str]:
    """Each recorded stage's exact command line."""
    lines = []
    for name, record in records.items():
        lines += [f"`{name}`:", "", "```", " ".join(record["command"]), "```", ""]
    return lines


def write_results(summary: dict, out: Path, results_doc: str | None = None) -> None:
    """The learning-curve PNGs, ``results.json`` and ``results.md`` in ``out`` (the sections other commands wrote
    there, such as the ablation's, kept after it). With ``results_doc``, the same page also becomes the section
    ``results_<run folder>`` of that page, its headings one level down and its figure links relative to it: the
    rest of the page (the protocol's own text, other runs' sections) is left as it is."""
    summary["figures"] = write_figures(summary, out)
    write_json_atomic(out / "results.json", summary)
    target = out / "results.md"
    page = results_markdown(summary, out.resolve(), out.resolve())
    kept = [m[0] for m in SECTIONS.finditer(target.read_text())] if target.is_file() else []
    with atomic_path(target) as tmp:
        Path(tmp).write_text("\n".join([page, *kept]))
    if results_doc:
        records = publish_records(out, Path(results_doc))
        page = results_markdown(summary, Path(results_doc).resolve().parent, records)
        title, rest = demote_headings(page).split("\n", 1)
        write_section(Path(results_doc), run_section("results", out), f"{title} ({out.resolve().name})\n{rest}")


def publish_records(out: Path, results_doc: Path, extra: Sequence[str] = ()) -> Path:
    """Copy the run's small records (``PUBLISHED``: results, settings, stage records, the synthetic check, the
    encoder drift, the PNGs, and the files of finished stages that the report reads: per-case Dice, learning curves,
    training cases; ``extra``: more patterns) to ``records/<run folder>/`` beside the page ``results_doc``, to be
    committed with it, so that the page links nothing outside the repository, ``report`` rebuilds the results from
    that folder alone and ``restore`` puts the run back from it; returns that folder. Each file is written
    atomically."""
    dest = (results_doc.resolve().parent / "records" / out.resolve().name).resolve()
    for pattern in (*PUBLISHED, *extra):
        for source in sorted(out.glob(pattern)):
            if in_partial_folder(source.relative_to(out)):
                continue  # a stage still running (or killed): nothing of it is a record yet
            with atomic_path(dest / source.relative_to(out)) as tmp:
                shutil.copyfile(source, tmp)
    return dest


def run_section(kind: str, out: Path) -> str:
    """The name of the section of kind ``kind`` that the run ``out`` writes into a shared results page:
    ``<kind>_<run folder name>``, one per run folder, so that several runs' sections stand side by side."""
    return f"{kind}_" + re.sub(r"\W", "_", Path(out).resolve().name)


def demote_headings(markdown: str) -> str:
    """Every Markdown heading one level down (``# A`` -> ``## A``); fenced code blocks are left as they are."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#+ ", line):
            line = "#" + line
        lines.append(line)
    return "\n".join(lines)


def write_section(path: Path, name: str, markdown: str) -> None:
    """Write ``markdown`` as the section ``name`` of the page ``path`` (between its markers): replace the section
    where the page has it, else append it (a missing page is made); the rest of the page is left as it is."""
    block = f"{SECTION_BEGIN.format(name=name)}\n{markdown.rstrip()}\n{SECTION_END.format(name=name)}\n"
    text = Path(path).read_text() if Path(path).is_file() else ""
    current = next((m for m in SECTIONS.finditer(text) if m[1] == name), None)
    if current is not None:
        text = text[: current.start()] + block + text[current.end() :]
    else:
        text = f"{text.rstrip()}\n\n{block}" if text.strip() else block
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
