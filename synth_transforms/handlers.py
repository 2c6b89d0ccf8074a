"""Ignite handlers that the pre-training bundle wires into MONAI's ``SupervisedTrainer``.

- :class:`SyntheticEpochHandler`: at each epoch start, switches a :class:`~synth_transforms.SyntheticDataset` to that
  epoch's samples, so every epoch sees new synthetic volumes.
- :class:`WeightExportHandler`: when training completes, writes the whole network and its Swin encoder
  (see :mod:`synth_transforms.export`).
- :class:`TrainingProgressBar`: ignite's progress bar showing the running loss.
- :func:`every`: ignite's every-n-th-event filter, for ``StatsHandler(iteration_log=every(50))``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

from .export import ENCODER_FILENAME, NETWORK_FILENAME, export_weights

__all__ = ["SyntheticEpochHandler", "WeightExportHandler", "TrainingProgressBar", "every"]

logger = logging.getLogger(__name__)


def every(n: int) -> Callable[[Engine, int], bool]:
    """Ignite's every-n-th-event filter, for ``iteration_log`` / ``epoch_log`` of MONAI handlers, with n checked."""
    if int(n) < 1:
        raise ValueError(f"every: n must be a positive integer, got {n!r}")
    return Events.every_event_filter(int(n))


class SyntheticEpochHandler:
    """Call ``dataset.set_epoch(epoch - 1)`` when each ignite epoch starts (ignite counts epochs from 1).

    The DataLoader's iterator, and with it the worker processes that copy the dataset, is created after
    ``EPOCH_STARTED`` fires, so workers see the new epoch too (keep ``persistent_workers=False``, the default).

    Args:
        dataset: an object with ``set_epoch(int)``, usually a :class:`~synth_transforms.SyntheticDataset`.
    """

    def __init__(self, dataset) -> None:
        if not callable(getattr(dataset, "set_epoch", None)):
            raise TypeError(f"SyntheticEpochHandler: dataset must have a set_epoch(epoch) method, got {type(dataset)}")
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.dataset.set_epoch(engine.state.epoch - 1)


class WeightExportHandler:
    """Export the whole network and its Swin encoder when the engine completes (not when it fails).

    Args:
        network: the trained SwinUNETR (DDP / compiled wrappers are removed).
        output_dir: folder of the two files, usually the bundle's ``models/``.
        encoder_filename: name of the encoder file (default ``model_swinvit.pt``).
        network_filename: name of the whole-network file (default ``model.pt``).
        encoder_dtype: floating-point type of the encoder file (``"float16"`` halves it); None keeps the network's.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        output_dir: str | os.PathLike,
        encoder_filename: str = ENCODER_FILENAME,
        network_filename: str = NETWORK_FILENAME,
        encoder_dtype: torch.dtype | str | None = None,
    ) -> None:
        self.network = network
        self.output_dir = output_dir
        self.encoder_filename = encoder_filename
        self.network_filename = network_filename
        self.encoder_dtype = encoder_dtype
        self.paths: dict | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.paths = export_weights(
            self.network, self.output_dir, self.encoder_filename, self.network_filename, self.encoder_dtype
        )


class TrainingProgressBar(ProgressBar):
    """Ignite's ``ProgressBar``, attached to show the loss of the last iteration.

    Args:
        loss_key: key of the loss in a MONAI trainer's output (``engine.state.output[0][loss_key]``).
        tqdm_kwargs: passed to ``ProgressBar`` (``persist``, ``desc``, ``ncols``, ...).
    """

    def __init__(self, loss_key: str = "loss", **tqdm_kwargs) -> None:
        super().__init__(**tqdm_kwargs)
        self.loss_key = loss_key

    def _loss(self, output) -> dict[str, float]:
        first = output[0] if isinstance(output, (list, tuple)) and output else output
        value = first.get(self.loss_key) if isinstance(first, dict) else None
        return {} if value is None else {self.loss_key: float(value)}

    def attach(self, engine: Engine, **kwargs) -> None:  # type: ignore[override]
        kwargs.setdefault("output_transform", self._loss)
        super().attach(engine, **kwargs)
