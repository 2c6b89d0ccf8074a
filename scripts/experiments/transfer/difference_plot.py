"""The paired differences between arms as a figure: one panel per regime, and per comparison (anatomy-scratch, ...)
the per-seed differences of the mean Dice as dots, their mean with its 95 % bootstrap interval as a bar, and zero as
a line, so that a reader sees at a glance whether an interval leaves out "no difference"."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from experiments.transfer.curves import panel_figure, save_png


def difference_panels(statistics: Mapping[str, Mapping]) -> dict[str, dict[str, dict]]:
    """``{regime: {comparison: paired difference of the mean Dice}}`` from the report's ``statistics``."""
    return {
        regime: {name: per_key["mean"] for name, per_key in stats["differences"].items() if per_key.get("mean")}
        for regime, stats in statistics.items()
    }


def write_difference_png(path: Path, panels: Mapping[str, Mapping[str, Mapping]]) -> Path | None:
    """Draw ``panels`` (:func:`difference_panels`) into the PNG ``path``, atomically. Returns the path, or None when
    matplotlib is missing; raises ValueError when there is no difference to draw."""
    panels = {regime: comparisons for regime, comparisons in panels.items() if comparisons}
    if not panels:
        raise ValueError(f"{path}: no paired difference to draw")
    width = 1.5 + 1.6 * max(len(comparisons) for comparisons in panels.values())
    if (made := panel_figure(len(panels), width)) is None:
        return None
    figure, all_axes = made
    for axes, (regime, comparisons) in zip(all_axes, panels.items(), strict=True):
        for x, difference in enumerate(comparisons.values()):
            seeds = difference["differences"]
            offsets = np.linspace(-0.2, 0.0, len(seeds)) if len(seeds) > 1 else [-0.1]
            axes.scatter(x + np.asarray(offsets), seeds, s=20, color="0.45", label=None if x else "one seed")
            mean, ci = difference["mean"], difference["ci95"]
            error = None if ci is None else [[mean - ci[0]], [ci[1] - mean]]
            label = None if x else "mean, 95 % bootstrap CI"
            axes.errorbar([x + 0.15], [mean], yerr=error, fmt="D", color="C3", capsize=5, label=label)
        axes.axhline(0.0, color="black", linewidth=0.8)
        axes.set_xticks(range(len(comparisons)), list(comparisons))
        axes.set_xlim(-0.6, len(comparisons) - 0.4)
        axes.set(title=regime, ylabel="difference of mean Dice, paired by seed")
        axes.grid(axis="y", alpha=0.3)
        axes.legend(fontsize="small")
    return save_png(figure, path)
