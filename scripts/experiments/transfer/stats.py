"""Statistics of the transfer experiment over fine-tuning seeds: mean and standard deviation per arm, and paired
per-seed differences between arms with a percentile bootstrap confidence interval of their mean (plain numpy, fixed
seed, so the same results give the same interval)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
COMPARISONS = (("anatomy", "scratch"), ("anatomy", "primitives"))  # (arm, baseline): difference arm - baseline


def mean_std(values: Sequence[float]) -> dict:
    """``{"n", "mean", "std"}`` of ``values``; std is the sample standard deviation (None for one value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std: no values")
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"n": len(values), "mean": statistics.fmean(values), "std": std}


def bootstrap_ci(
    values: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement, ``resamples`` times,
    from a generator seeded with ``seed``); None for fewer than two values, which have no spread to resample."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(arm: Mapping[int, float], baseline: Mapping[int, float], **bootstrap) -> dict | None:
    """Per-seed differences ``arm - baseline`` over the seeds both have, their mean and its bootstrap interval
    (keyword arguments go to :func:`bootstrap_ci`); None when no seed is shared."""
    seeds = sorted(set(arm) & set(baseline))
    if not seeds:
        return None
    differences = [float(arm[seed]) - float(baseline[seed]) for seed in seeds]
    ci = bootstrap_ci(differences, **bootstrap)
    return {
        "seeds": seeds,
        "differences": differences,
        **mean_std(differences),
        "ci95": None if ci is None else list(ci),
    }


def arm_statistics(runs: Mapping[int, Mapping[str, float]], classes: Sequence[str]) -> dict:
    """Mean and std over seeds of each class's Dice and of the mean Dice of one arm's runs."""
    return {key: mean_std([run[key] for run in runs.values()]) for key in [*classes, "mean"]}


def regime_statistics(
    arms: Mapping[str, Mapping[int, Mapping[str, float]]],
    classes: Sequence[str],
    comparisons: Sequence[tuple[str, str]] = COMPARISONS,
) -> dict:
    """Per arm: mean and std per class and overall; per ``(arm, baseline)`` of ``comparisons`` whose arms both ran:
    the paired per-seed difference arm - baseline of the mean Dice (and of each class) with its bootstrap interval."""
    differences = {}
    for arm, baseline in comparisons:
        if arm in arms and baseline in arms:
            per_key = {
                key: paired_difference(
                    {seed: run[key] for seed, run in arms[arm].items()},
                    {seed: run[key] for seed, run in arms[baseline].items()},
                )
                for key in ["mean", *classes]
            }
            if per_key["mean"] is not None:
                differences[f"{arm}-{baseline}"] = per_key
    return {
        "arms": {arm: arm_statistics(runs, classes) for arm, runs in arms.items()},
        "differences": differences,
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "confidence": CONFIDENCE},
    }
