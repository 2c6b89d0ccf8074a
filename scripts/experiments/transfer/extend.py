"""Lengthening the pre-training of an existing run: ``run --extend True --pretrain_iterations N``.

A pre-training that has not learned its synthetic task by the end of its budget continues instead of starting over:
only ``pretrain_iterations`` (larger) and ``pretrain_val_points`` may change, the epoch length stays the same (the
bundle resumes from its last epoch checkpoint and keeps the longer ``max_epochs``), and the warm-up must be given
explicitly (a derived warm-up would move with the length). The learning-rate schedule is the longer one from the
step reached: extended early, it hardly changes; extended after the end, the rate jumps back up to where the longer
cosine has it (a warm restart). Stages that used the shorter encoders run again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from experiments.runner import Stage, reopen
from experiments.transfer.plan import Settings

EXTENDABLE = ("pretrain_iterations", "pretrain_val_points")


def check_extension(old: Settings, new: Settings) -> None:
    """Refuse an extension that changes more than the pre-training length, shortens it or moves epoch boundaries."""
    changed = [f.name for f in dataclasses.fields(Settings) if getattr(old, f.name) != getattr(new, f.name)]
    others = [name for name in changed if name not in EXTENDABLE]
    if others:
        raise ValueError(f"--extend lengthens the pre-training only ({', '.join(EXTENDABLE)}); also changed: {others}")
    if new.pretrain_iterations <= old.pretrain_iterations:
        raise ValueError(
            f"--extend: pretrain_iterations must grow beyond the run's {old.pretrain_iterations}, "
            f"got {new.pretrain_iterations}"
        )
    if old.pretrain_warmup is None:
        raise ValueError("--extend: the run's warm-up was derived from its length; it cannot be extended in place")
    epoch = old.pretrain_iterations // old.pretrain_val_points
    if new.pretrain_iterations // new.pretrain_val_points != epoch or new.pretrain_iterations % epoch:
        raise ValueError(
            f"--extend: keep the run's epoch of {epoch} iterations: pretrain_iterations must be a multiple of {epoch} "
            f"and pretrain_val_points = pretrain_iterations / {epoch}, got {new.pretrain_iterations} and "
            f"{new.pretrain_val_points}"
        )


def extend_pretraining(out: Path, stages: list[Stage]) -> list[str]:
    """Reopen every pre-training stage so that it continues to the new length; returns one line per stage."""
    lines = []
    for stage in stages:
        if stage.name.startswith("pretrain_"):
            done = reopen(out, stage)
            lines.append(f"{stage.name}: {done or 'not started yet'} (to {stage.iterations} iterations)")
    return lines
