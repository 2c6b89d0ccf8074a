"""The ablation of the transfer experiment (``run_transfer_experiment.py ablate``): which parts of the method matter?

Each ablation arm pre-trains the anatomy bundle with one component switched off by its overlay (``no_anchors.json``:
organs at random positions; ``no_topology.json``: no insertion checks; ``fill.json``: filled organs instead of
contour shells), and each data-volume arm with ``pool_size: N`` distinct training samples. Every arm gets exactly the
overrides of the main run's anatomy pre-training (its recorded settings, its bank file) and then the main run's
few-shot fine-tuning and evaluation per seed. The arms it is compared with, ``anatomy`` (the full method: the main
run's anatomy encoder) and ``scratch``, are fine-tuned and evaluated here too, with the same seeds, so that every
Dice of the comparison comes from the same machine and code (and the ablation needs only the main run's settings,
datalist, bank and anatomy encoder, not its evaluations). The report compares each arm with ``anatomy``, seed by seed,
and draws few-shot Dice against the pool size (``anatomy`` is the unlimited point).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

from experiments.runner import Stage, is_settled, read_record, utc_now
from experiments.transfer import plan, report
from experiments.transfer.curves import CURVE_FILE, read_curve, write_curve_png
from experiments.transfer.stats import regime_statistics
from synth_transforms._args import check_choice, check_positive_int, fail
from synth_transforms.cli_args import comma_items
from synth_transforms.io import atomic_path, read_json, write_json_atomic

OVERLAYS = {"no_anchors": "no_anchors.json", "no_topology": "no_topology.json", "fill": "fill.json"}
COMPONENTS = {  # what switching an arm's overlay on removes from the method
    "no_anchors": "Spatial anchors (organs at their anatomical positions; without them: uniform random positions)",
    "no_topology": "Topology-checked placement (without it: no insertion checks, later organs overwrite earlier ones)",
    "fill": "Contour-shell rendering (without it: filled organs)",
}
FULL, SCRATCH = "anatomy", "scratch"  # the reference arms every ablation arm is compared with
REGIME = "few_shot"
POOL_PREFIX = "pool"
FIGURE = "data_volume_curve.png"
PUBLISHED_ENCODERS = (f"pretrain/*/models/{plan.ENCODER}",)  # published with the records: no bundle releases the
# ablation arms' encoders, and a restored ablation fine-tunes its remaining seeds from them
SECTION = "ablation"  # the name of the section the ablation writes into a results page (see report.write_section)
OWNER = "ablation settings"


@dataclasses.dataclass(frozen=True)
class AblationSettings:
    """What the ablation adds to the main run it starts from; recorded in its ``settings.json``.

    Sequences given as text (``"100,1000"``) or lists are normalised to tuples, so a recorded file reads back equal.
    """

    main_run: str  # the main run's folder (absolute)
    arms: tuple[str, ...] = tuple(OVERLAYS)
    pool_sizes: tuple[int, ...] = (100, 1000)
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self):
        set_field = functools.partial(object.__setattr__, self)
        arms = _items(self.arms, "arms")
        for arm in arms:
            check_choice(arm, "arms", tuple(OVERLAYS), OWNER)
        set_field("arms", arms)
        pools = tuple(_pool_size(n) for n in _items(self.pool_sizes, "pool_sizes"))
        set_field("pool_sizes", pools)
        set_field("seeds", plan.parse_seeds(self.seeds, "seeds", OWNER))
        if not arms and not pools:
            raise fail("arms", "at least one arm or pool size", self.arms, OWNER)

    @property
    def pretrain_arms(self) -> list[str]:
        """Every arm pre-trained here: the overlays', then one per pool size."""
        return [*self.arms, *(f"{POOL_PREFIX}{n}" for n in self.pool_sizes)]


def _items(value, name: str) -> tuple:
    """A tuple from None (empty), a list, a tuple, a comma string or one value; duplicates refused."""
    items = tuple(comma_items(value))
    if len(set(items)) != len(items):
        raise fail(name, "distinct values", value, OWNER)
    return items


def _pool_size(value) -> int:
    number = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    return check_positive_int(number, "pool_sizes", OWNER)


def main_settings(main_run: Path) -> plan.Settings:
    """The main run's recorded settings (the ablation's recipe and budget); refused when it has none."""
    path = main_run / "settings.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --main_run must be the folder of a transfer experiment run (`run` writes its "
            "settings.json when it starts); the ablation takes its recipe and budget from it"
        )
    return plan.Settings(**read_json(path, "main run settings"))


def check_seeds(s: plan.Settings, a: AblationSettings) -> None:
    """The ablation's seeds must be few-shot seeds of the main run, to be paired with its anatomy and scratch arms."""
    missing = [seed for seed in a.seeds if seed not in s.regime_seeds(REGIME)]
    if missing:
        expected = f"few-shot seeds of the main run ({','.join(map(str, s.regime_seeds(REGIME)))})"
        raise fail("seeds", expected, ",".join(map(str, a.seeds)), OWNER)


def main_encoder(main_run: Path) -> Path:
    """The main run's anatomy encoder: the full method, fine-tuned in the ablation as its reference arm."""
    return main_run / "pretrain" / FULL / "models" / plan.ENCODER


def main_inputs(s: plan.Settings, main_run: Path) -> list[Path]:
    """The files of the main run that the ablation's stages read: its datalist, its bank (when it built one) and its
    anatomy encoder."""
    bank = plan.bank_path(s, main_run)
    return [main_run / "datalist.json", *([bank] if bank is not None else []), main_encoder(main_run)]


def ablation_stages(s: plan.Settings, a: AblationSettings, out: Path, dataset_dir: Path) -> list[Stage]:
    """The pre-training of every arm (the main run's anatomy overrides; the arm's overlay or pool size on top), then
    per seed the reference arms (``scratch``; ``anatomy`` from the main run's encoder) and every arm from its own
    encoder: a few-shot fine-tuning and its evaluation each, as the main run's few-shot arms."""
    main = Path(a.main_run)
    overrides = plan.pretrain_overrides(s, plan.bank_path(s, main))  # the main run's bank: not rebuilt here
    anatomy = plan.PRETRAIN_CONFIG_FILES[FULL]
    arms = {arm: ([*anatomy, OVERLAYS[arm]], overrides) for arm in a.arms}
    arms |= {f"{POOL_PREFIX}{n}": (anatomy, {**overrides, "pool_size": n}) for n in a.pool_sizes}
    stages: list[Stage] = [
        plan.pretrain_stage(s, arm, out / "pretrain" / arm, files, arm_overrides)
        for arm, (files, arm_overrides) in arms.items()
    ]
    datalist = main / "datalist.json"
    for seed in a.seeds:  # seed-major, as the main run: a run stopped part-way has paired seeds of every arm
        for arm, encoder in ((SCRATCH, None), (FULL, main_encoder(main))):
            stages += plan.finetune_pair(s, out, dataset_dir, datalist, REGIME, arm, seed, encoder)
        for arm in arms:
            encoder = out / "pretrain" / arm / "models" / plan.ENCODER
            stages += plan.finetune_pair(s, out, dataset_dir, datalist, REGIME, arm, seed, encoder, [f"pretrain_{arm}"])
    return stages


# ---------------------------------------------------------------------------------------------- results
def metrics_path(run: Path, arm: str, seed: int) -> Path:
    return run / "evaluate" / f"{REGIME}_{arm}_seed{seed}" / plan.METRICS_FILE


def collect_dice(a: AblationSettings, out: Path) -> dict[str, dict[int, dict]]:
    """``{arm: {seed: read_dice(...)}}`` of every finished few-shot evaluation of the ablation's seeds, in report
    order: the reference arms, then the ablation's."""
    results = {}
    for arm in (SCRATCH, FULL, *a.pretrain_arms):
        runs = {seed: report.read_dice(path) for seed in a.seeds if (path := metrics_path(out, arm, seed)).is_file()}
        if runs:
            results[arm] = runs
    return results


def pretrain_finals(a: AblationSettings, out: Path) -> dict[str, dict]:
    """Arm -> the last synthetic validation round of its pre-training (``iteration``, ``mean``) and the round count;
    the full method's is the main run's anatomy pre-training."""
    finals = {}
    for arm, run in ((FULL, Path(a.main_run)), *((arm, out) for arm in a.pretrain_arms)):
        path = run / "pretrain" / arm / "runs" / CURVE_FILE
        rounds = read_curve(path) if path.is_file() else []
        if rounds:
            finals[arm] = {**rounds[-1], "rounds": len(rounds)}
    return finals


def data_volume_curve(a: AblationSettings, results: dict) -> list[dict]:
    """Few-shot mean Dice (mean and std over seeds) per pool size, the main run's anatomy arm as ``unlimited``."""
    points = []
    for size, arm in [*((n, f"{POOL_PREFIX}{n}") for n in a.pool_sizes), (None, FULL)]:
        means = [run["mean"] for run in results.get(arm, {}).values()]
        if means:
            std = statistics.stdev(means) if len(means) > 1 else None
            points.append({"pool_size": size, "arm": arm, "n": len(means), "mean": statistics.fmean(means), "std": std})
    return points


def unfinished(out: Path, stages: Sequence[Stage]) -> list[str]:
    """The stages whose results the report lacks: those not settled (done, or intermediate: see ``is_settled``)."""
    return [stage.name for stage in stages if not is_settled(out, stage, stages)]


def summarise(
    s: plan.Settings, a: AblationSettings, out: Path, stages: Sequence[Stage], labels: dict[str, str], commit: str
) -> dict:
    """Every finished result of the ablation and of the reference arms it is compared with, in one dictionary."""
    results = collect_dice(a, out)
    classes = report.dice_classes({REGIME: results})
    comparisons = [(arm, FULL) for arm in results if arm != FULL]
    return {
        "preset": s.preset,
        "settings": dataclasses.asdict(s),
        "ablation": dataclasses.asdict(a),
        "few_shot_cases": report.few_shot_cases(out, dataclasses.replace(s, seeds=a.seeds)),
        "class_names": labels,
        "results": {REGIME: results} if results else {},
        "statistics": {REGIME: regime_statistics(results, classes, comparisons)} if results else {},
        "data_volume": data_volume_curve(a, results),
        "pretrain_final": pretrain_finals(a, out),
        "unfinished": unfinished(out, stages),
        "stages": {stage.name: record for stage in stages if (record := read_record(out, stage.name)) is not None},
        "commit": commit,
        "device": report.device_description(s.device),
        "written": utc_now(),
    }


def _pool_label(size: int | None) -> str:
    return "unlimited" if size is None else f"{size:,}"


def write_figure(summary: dict, out: Path) -> str | None:
    """The data-volume curve PNG beside ``results.json`` (few-shot Dice against the pool size, scratch as a flat
    reference line); its file name, or None when there is nothing to draw or no matplotlib."""
    points = summary["data_volume"]
    if not points:
        return None
    ticks = {k: _pool_label(p["pool_size"]) for k, p in enumerate(points)}
    lines = {"anatomy, few-shot": [(k, p["mean"], p["std"]) for k, p in enumerate(points)]}
    scratch = summary["statistics"].get(REGIME, {}).get("arms", {}).get(SCRATCH)
    if scratch is not None:
        mean, std = scratch["mean"]["mean"], scratch["mean"]["std"]
        lines["scratch (no pre-training)"] = [(k, mean, std) for k in ticks]
    panels = {"few-shot Dice against synthetic data volume": lines}
    ylabel = "validation Dice (mean over seeds)"
    written = write_curve_png(out / FIGURE, panels, ylabel, xlabel="distinct pre-training samples", xticks=ticks)
    return None if written is None else FIGURE


# ---------------------------------------------------------------------------------------------- Markdown
def verdict(difference: dict | None, removed: str, subject: str = "the component") -> str:
    """A plain reading of a paired difference ``arm - full method``: the arm is the method ``removed`` (e.g. "without
    it") and what it lacks is ``subject``."""
    if difference is None:
        return "no seed shared with the full method yet: no comparison"
    ci = difference["ci95"]
    text = f"paired difference {difference['mean']:+.4f} over {difference['n']} seed(s)"
    if ci is None:
        return f"{text}, one seed and no interval: no conclusion"
    text += f", 95 % CI [{ci[0]:+.4f}, {ci[1]:+.4f}]"
    if ci[1] < 0:
        return f"{text}: lower {removed}, so in this run {subject} helped"
    if ci[0] > 0:
        return f"{text}: higher {removed}, so in this run {subject} did not help at this budget"
    return f"{text}: the interval includes 0, so no difference is resolved at this budget and number of seeds"


def arm_mean(summary: dict, arm: str) -> float | None:
    arms = summary["statistics"].get(REGIME, {}).get("arms", {})
    return arms[arm]["mean"]["mean"] if arm in arms else None


def difference(summary: dict, arm: str) -> dict | None:
    differences = summary["statistics"].get(REGIME, {}).get("differences", {})
    return differences.get(f"{arm}-{FULL}", {}).get("mean")


def component_sentences(summary: dict) -> list[str]:
    """One sentence per component, from the numbers: Dice without it, with it, and the paired difference."""
    lines, full = [], arm_mean(summary, FULL)
    for arm in summary["ablation"]["arms"]:
        mean = arm_mean(summary, arm)
        if mean is None or full is None:
            lines.append(f"- {COMPONENTS[arm]}: not measured yet (`{arm}` or the full method has no evaluation).")
            continue
        lines.append(
            f"- {COMPONENTS[arm]}: few-shot Dice {mean:.4f} without it against {full:.4f} with it (`{arm}` - "
            f"`{FULL}`, {verdict(difference(summary, arm), 'without it')})."
        )
    points = summary["data_volume"]
    if points:
        curve = ", ".join(f"{p['mean']:.4f} with {_pool_label(p['pool_size'])}" for p in points)
        lines.append(f"- Data volume (distinct synthetic pre-training samples): few-shot Dice {curve}.")
        for size in summary["ablation"]["pool_sizes"]:
            arm = f"{POOL_PREFIX}{size}"
            if arm_mean(summary, arm) is not None and full is not None:
                reading = verdict(difference(summary, arm), "with fewer samples", "more synthetic data")
                lines.append(f"  - {size:,} samples against unlimited: {reading}.")
    return lines


def pretrain_table(summary: dict) -> list[str]:
    finals = summary["pretrain_final"]
    if not finals:
        return ["No pre-training has recorded a synthetic validation round yet."]
    lines = ["| arm | last round (iteration) | synthetic validation Dice | rounds |", "|---|---|---|---|"]
    lines += [f"| {arm} | {f['iteration']} | {f['mean']:.4f} | {f['rounds']} |" for arm, f in finals.items()]
    return lines + [
        "",
        "Each arm is validated on samples of its own synthesis (the validation set is made by the arm's transform), "
        "so this says how well each pre-training learned its own task, not which transfers better.",
    ]


def volume_table(summary: dict) -> list[str]:
    points = summary["data_volume"]
    if not points:
        return ["No data-volume arm has been evaluated yet."]
    lines = ["| distinct samples | arm | seeds | few-shot Dice mean ± std |", "|---|---|---|---|"]
    for p in points:
        spread = "" if p["std"] is None else f" ± {p['std']:.4f}"
        lines.append(f"| {_pool_label(p['pool_size'])} | {p['arm']} | {p['n']} | {p['mean']:.4f}{spread} |")
    return lines


def ablation_markdown(summary: dict, doc_dir: Path | None = None, figures_dir: Path | None = None) -> str:
    """The ablation section (``##`` headings); the figure linked relative to ``doc_dir`` from ``figures_dir``."""
    a, figure = summary["ablation"], summary.get("figure")
    link = []
    if figure:
        target = Path(figures_dir or ".") / figure
        link = ["", f"![data-volume curve]({os.path.relpath(target, doc_dir) if doc_dir and figures_dir else figure})"]
    arms = ", ".join(f"`{arm}` ({OVERLAYS[arm]})" for arm in a["arms"])
    pools = ", ".join(f"`{POOL_PREFIX}{n}` (pool_size {n})" for n in a["pool_sizes"])
    missing = summary["unfinished"]
    lines = [
        "## Ablation: which parts of the method matter",
        "",
        f"Written {summary['written']} by `scripts/run_transfer_experiment.py ablate` on {summary['device']}, code "
        f"commit {summary['commit']}; main run `{a['main_run']}` (preset `{summary['preset']}`), seeds "
        f"{','.join(map(str, a['seeds']))}. Arms: {arms or 'none'}; data volume: {pools or 'none'}; each pre-trained "
        f"with the main run's anatomy recipe and budget, then fine-tuned few-shot like its arms and compared with "
        f"`{FULL}` (the full method: the main run's anatomy encoder) and `{SCRATCH}`, fine-tuned here with the same "
        "seeds.",
        *(["", report.stages_ran(summary["stages"])] if summary["stages"] else []),
        "",
        "### Few-shot Dice per arm (validation split, final fine-tuned weights)",
        "",
        *(report.results_table(summary) or ["No evaluation has finished yet."]),
        "",
        f"### Paired differences to the full method (`arm - {FULL}`)",
        "",
        *(report.differences_table(summary) or ["No arm shares a finished seed with the full method yet."]),
        "",
        report.bootstrap_note(summary),
        *(["", note] if (note := report.machine_note(summary)) else []),
        "",
        "### What each component does",
        "",
        *component_sentences(summary),
        "",
        "### Data volume",
        "",
        *volume_table(summary),
        *link,
        "",
        "### Synthetic validation Dice at the end of each pre-training",
        "",
        *pretrain_table(summary),
        "",
        "### Not finished yet",
        "",
        *([f"- {name}" for name in missing] or ["Every stage has finished."]),
        "",
        "### Settings (the main run's, for every arm)",
        "",
        *report.settings_lines(summary, "every arm alike, the main run's anatomy arm included"),
        "",
        "### Stages",
        "",
        *report.stage_table(summary["stages"]),
        "",
        "Commands:",
        "",
        *report.stage_commands(summary["stages"]),
    ]
    return "\n".join(lines)


def write_results(summary: dict, out: Path, results_doc: str | None = None) -> None:
    """The PNG, ``results.json`` and ``results.md`` in ``out``; with ``results_doc``, the section in that page (its
    ablation section replaced, or appended to a page that has none)."""
    summary["figure"] = write_figure(summary, out)
    write_json_atomic(out / "results.json", summary)
    with atomic_path(out / "results.md") as tmp:
        Path(tmp).write_text(ablation_markdown(summary, out.resolve(), out.resolve()) + "\n")
    if results_doc:
        target = Path(results_doc)
        records = report.publish_records(out, target, PUBLISHED_ENCODERS)
        section = ablation_markdown(summary, target.resolve().parent, records)
        report.write_section(target, SECTION, section)
