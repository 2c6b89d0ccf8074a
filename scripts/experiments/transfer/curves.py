"""Learning curves of the transfer experiment: the validation rounds that the bundles record in
``<run>/runs/validation_curve.jsonl`` (one JSON object per round: the iteration, the mean Dice and the Dice per
class), gathered per pre-training and per fine-tuning, averaged over seeds, and drawn as PNG figures.

The curves are reported only: no model is ever chosen on them (evaluation uses each run's final weights)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from synth_transforms.io import atomic_path

CURVE_FILE = "validation_curve.jsonl"
MEAN_KEYS = ("mean_dice", "val_mean_dice", "mean", "dice")  # the mean Dice of a round, by the first key present
FOREGROUND_KEY = "val_foreground_dice"  # the pre-training's foreground Dice of a round, when recorded (bundle >= 0.1.3)


def read_curve(path: Path) -> list[dict]:
    """The rounds of one ``validation_curve.jsonl`` as ``{"iteration", "mean"}`` (plus ``"per_class"`` and
    ``"foreground"`` when recorded), sorted by iteration; a round recorded twice (a resumed run) counts once, the
    later record."""
    rounds: dict[int, dict] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            mean = next(record[key] for key in MEAN_KEYS if key in record)
            point = {"iteration": int(record["iteration"]), "mean": float(mean)}
        except (json.JSONDecodeError, KeyError, StopIteration, TypeError, ValueError) as error:
            raise ValueError(
                f"{path}, line {number}: expected a JSON object with 'iteration' and one of {MEAN_KEYS} ({error!r})"
            ) from None
        per_class = record.get("per_class")
        if isinstance(per_class, Mapping):
            point["per_class"] = {str(k): float(v) for k, v in per_class.items()}
        if FOREGROUND_KEY in record:
            point["foreground"] = float(record[FOREGROUND_KEY])
        rounds[point["iteration"]] = point
    return [rounds[i] for i in sorted(rounds)]


def collect_curves(out: Path, regimes: Mapping[str, Sequence[int]], arms: Sequence[str], kinds: Sequence[str]) -> dict:
    """Every recorded curve under ``out``: ``{"pretrain": {kind: rounds}, "finetune": {regime: {arm: {seed:
    rounds}}}}``, leaving out runs without a curve file."""
    curves: dict = {"pretrain": {}, "finetune": {}}
    for kind in kinds:
        path = out / "pretrain" / kind / "runs" / CURVE_FILE
        if path.is_file():
            curves["pretrain"][kind] = read_curve(path)
    for regime, seeds in regimes.items():
        for arm in arms:
            for seed in seeds:
                path = out / "finetune" / f"{regime}_{arm}_seed{seed}" / "runs" / CURVE_FILE
                if path.is_file():
                    curves["finetune"].setdefault(regime, {}).setdefault(arm, {})[seed] = read_curve(path)
    return curves


def seed_average(runs: Mapping[int, Sequence[Mapping]]) -> list[tuple[int, float, float | None, int]]:
    """``(iteration, mean, std, n)`` over seeds at each iteration that the runs recorded (std None for one run)."""
    by_iteration: dict[int, list[float]] = {}
    for rounds in runs.values():
        for point in rounds:
            by_iteration.setdefault(point["iteration"], []).append(point["mean"])
    return [
        (i, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None, len(v))
        for i, v in sorted(by_iteration.items())
    ]


def panel_figure(count: int, width: float = 5.0):
    """A figure of ``count`` panels side by side (``width`` inches each) and its axes, or None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(width * count, 4), dpi=100, layout="tight")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, count, squeeze=False)[0]


def save_png(figure, path: Path) -> Path:
    """Write ``figure`` to the PNG ``path`` atomically (no half-written file is ever left)."""
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)


def write_curve_png(
    path: Path,
    panels: Mapping[str, Mapping[str, Sequence[tuple]]],
    ylabel: str,
    xlabel: str = "iteration",
    xticks: Mapping[float, str] | None = None,
) -> Path | None:
    """Draw one panel per title, one line per label (points ``(x, mean, std or None, ...)``; a band of +- std where
    given; ``xticks``: labels of the x positions, e.g. for categories) into the PNG ``path``, atomically. Returns the
    path, or None when matplotlib is missing."""
    panels = {title: lines for title, lines in panels.items() if lines}
    if not panels:
        raise ValueError(f"{path}: no curve to draw")
    if (made := panel_figure(len(panels))) is None:
        return None
    figure, all_axes = made
    for axes, (title, lines) in zip(all_axes, panels.items(), strict=True):
        for label, points in lines.items():
            x, y = [p[0] for p in points], [p[1] for p in points]
            axes.plot(x, y, marker="o", label=label)
            if all(p[2] is not None for p in points):
                axes.fill_between(x, [p[1] - p[2] for p in points], [p[1] + p[2] for p in points], alpha=0.2)
        axes.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=(0, 1))
        if xticks:
            axes.set_xticks(list(xticks), list(xticks.values()))
        axes.grid(alpha=0.3)
        axes.legend()
    return save_png(figure, path)
