"""Resumable training checkpoints for the bundles: MONAI's checkpoint handlers, made safe for long interrupted runs.

- :func:`latest_checkpoint`, :func:`resume_checkpoint`: the checkpoint a resumed run starts from.
- :class:`TrainingCheckpointSaver`: MONAI's ``CheckpointSaver`` that saves the trainer too, writes atomically and
  writes the final file only when training completes (MONAI's also writes it when training fails).
- :class:`ResumeCheckpointLoader`: MONAI's ``CheckpointLoader`` that restores the trainer it is attached to.

Resume is exact at epoch boundaries: the checkpoints are written at epoch ends, and a run resumed from one sees the
samples the uninterrupted run would have seen (a :class:`~synth_transforms.SyntheticDataset` sample is a function
of ``(seed, epoch, index)``, and :class:`~synth_transforms.handlers.SyntheticEpochHandler` sets the epoch from the
restored trainer). A kill mid-epoch loses the iterations since the last epoch end.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

from ._args import check_bool

__all__ = ["latest_checkpoint", "resume_checkpoint", "TrainingCheckpointSaver", "ResumeCheckpointLoader"]

logger = logging.getLogger(__name__)

# what of a learning-rate scheduler's state says where it is on its schedule (the rest is the schedule itself)
_SCHEDULE_POSITION = ("last_epoch", "_step_count", "_last_lr")
_EPOCH_FILE = re.compile(r"(?:^|_)epoch=(\d+)\.pt$")


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The epoch checkpoint (``*epoch=<n>.pt``, as ``CheckpointSaver(save_interval=...)`` names it) with the largest
    epoch in ``checkpoint_dir``; None when there is none or the folder does not exist.

    The final checkpoint is not a candidate: after a deadline stop it holds a mid-epoch state, and after a completed
    run it equals the last epoch checkpoint.
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_file() and (m := _EPOCH_FILE.search(p.name))]
    return max(found)[1] if found else None


def resume_checkpoint(checkpoint_dir: str | os.PathLike, resume: bool) -> str | None:
    """The checkpoint a run resumes from: the latest of ``checkpoint_dir`` when ``resume`` is True, else None.

    With ``resume`` and no checkpoint, training starts from scratch, and the log says so.
    """
    if not check_bool(resume, "resume", "resume_checkpoint"):
        return None
    path = latest_checkpoint(checkpoint_dir)
    if path is None:
        logger.info(f"resume: no checkpoint in {checkpoint_dir}, training starts from scratch")
        return None
    logger.info(f"resume: training continues from {path}")
    return str(path)


class _AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` writing to a temporary file renamed into place, optionally under a fixed name."""

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None):
        super().__init__(dirname=str(dirname), atomic=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint, filename: str, metadata=None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def remove(self, filename: str) -> None:
        super().remove(self.filename or filename)


class TrainingCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` for resumable training (same arguments, plus ``save_engine``).

    Differences: (1) the final checkpoint (``save_final``) is written only when training completes (a deadline stop
    included), never when it fails, and a final file left in ``save_dir`` by an earlier run is removed when training
    starts, so a failed run leaves no final file that looks finished; (2) every file is written to a temporary name
    and renamed, so a kill while saving leaves the previous checkpoint intact; (3) ``save_engine="trainer"`` also
    saves the engine it is attached to (iteration, epoch), which a config cannot reference without a cycle;
    (4) ``n_saved`` also counts the epoch files of earlier (interrupted) runs in ``save_dir``: older ones go.

    Args:
        save_dir, save_dict, kwargs: as ``monai.handlers.CheckpointSaver``.
        save_engine: key under which the attached engine's state is saved; None saves no engine state.
    """

    def __init__(self, save_dir: str, save_dict: dict, save_engine: str | None = None, **kwargs) -> None:
        super().__init__(save_dir, dict(save_dict), **kwargs)
        self.save_engine = save_engine
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(save_dir, getattr(checkpoint.save_handler, "filename", None))

    def attach(self, engine: Engine) -> None:
        if self.save_engine is not None:
            self.save_dict[self.save_engine] = engine  # the same dict the ignite Checkpoint objects save
        # MONAI's attach also saves the final checkpoint on EXCEPTION_RAISED: attach without the final checkpoint,
        # then add its completion handler alone. (Removing the exception handler afterwards would leave ignite an
        # empty EXCEPTION_RAISED entry, and ignite then swallows exceptions.)
        final, self._final_checkpoint = self._final_checkpoint, None
        try:
            super().attach(engine)
        finally:
            self._final_checkpoint = final
        if final is not None:
            engine.add_event_handler(Events.STARTED, self._remove_stale_final)
            engine.add_event_handler(Events.COMPLETED, self.completed)

    def interval_completed(self, engine: Engine) -> None:
        super().interval_completed(engine)
        self._remove_older_epochs()

    def _remove_older_epochs(self) -> None:
        """Keep ``n_saved`` epoch files across resumed runs too (ignite only counts the files of its own run)."""
        checkpoint = self._interval_checkpoint
        kept = [Path(item.filename).name for item in checkpoint._saved]
        if checkpoint.n_saved is None or not kept or idist.get_rank() != 0:
            return
        oldest = min(int(_EPOCH_FILE.search(name).group(1)) for name in kept)
        prefixes = {_EPOCH_FILE.sub("", name) for name in kept}
        for path in Path(self.save_dir).iterdir():
            match = _EPOCH_FILE.search(path.name)
            if match and int(match.group(1)) < oldest and _EPOCH_FILE.sub("", path.name) in prefixes:
                path.unlink(missing_ok=True)

    def _remove_stale_final(self, engine: Engine) -> None:
        stale = Path(self.save_dir) / (self._final_filename or "")
        if self._final_filename is not None and idist.get_rank() == 0 and stale.is_file():
            stale.unlink(missing_ok=True)
            self.logger.info(f"Removed {stale}, left by an earlier run (a new one is written on completion)")


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that also restores the engine it is attached to from ``engine_key``.

    Loading the trainer state (iteration, epoch) makes ignite continue from there; ``max_epochs`` stays the
    config's, and so does the shape of a learning-rate schedule (its length, warm-up, base rates): only its position
    comes from the checkpoint. A run resumed with more iterations thus follows the longer schedule from the step it
    reached, instead of the checkpoint's shorter one. Attach it before the handlers that read the restored state at
    ``STARTED``.

    Args:
        load_path, load_dict, kwargs: as ``monai.handlers.CheckpointLoader``.
        engine_key: key of the engine state in the checkpoint (``TrainingCheckpointSaver(save_engine=...)``).
    """

    def __init__(self, load_path: str, load_dict: dict, engine_key: str = "trainer", **kwargs) -> None:
        super().__init__(load_path, dict(load_dict), **kwargs)
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        self.load_dict[self.engine_key] = engine
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        shapes = {
            key: {name: value for name, value in vars(obj).items() if name not in _SCHEDULE_POSITION}
            for key, obj in self.load_dict.items()
            if isinstance(obj, torch.optim.lr_scheduler.LRScheduler)
        }
        super().__call__(engine)
        for key, shape in shapes.items():  # a scheduler's state_dict holds its length too (e.g. t_total)
            vars(self.load_dict[key]).update(shape)
