"""Ignite handlers that the bundles wire into MONAI's trainers and evaluators.

- :class:`SyntheticEpochHandler`: at each epoch start, switches a :class:`~synth_transforms.SyntheticDataset` to that
  epoch's samples, so every epoch sees new synthetic volumes.
- :class:`WeightExportHandler`: when training completes, writes the whole network and its Swin encoder
  (see :mod:`synth_transforms.export`).
- :class:`TrainingProgressBar`: ignite's progress bar showing the running loss.
- :class:`CaseRecordSaver`: when training completes, writes which cases it used (``train_cases.json``).
- :class:`ClassMetricsSaver`: MONAI's ``MetricsSaver`` with the CSV columns named by class.
- :func:`every`: ignite's every-n-th-event filter, for ``StatsHandler(iteration_log=every(50))``.
- :func:`foreground_pairs`: the ``output_transform`` of a foreground Dice (``MeanDice`` of every class merged
  against the background: are the shapes found at all, whatever class they are given?).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from monai.handlers import MetricsSaver, from_engine
from monai.handlers.utils import write_metrics_reports
from monai.utils import string_list_all_gather

from .datalists import CaseList, write_case_record
from .export import ENCODER_FILENAME, NETWORK_FILENAME, export_weights

__all__ = [
    "SyntheticEpochHandler",
    "WeightExportHandler",
    "TrainingProgressBar",
    "CaseRecordSaver",
    "ClassMetricsSaver",
    "every",
    "foreground_pairs",
]

logger = logging.getLogger(__name__)


def every(n: int) -> Callable[[Engine, int], bool]:
    """Ignite's every-n-th-event filter, for ``iteration_log`` / ``epoch_log`` of MONAI handlers, with n checked."""
    if int(n) < 1:
        raise ValueError(f"every: n must be a positive integer, got {n!r}")
    return Events.every_event_filter(int(n))


def foreground_pairs(output) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``output_transform`` of a foreground Dice: the engine's one-hot ``pred`` and ``label`` of each item, with every
    class but the background (channel 0) merged into one foreground channel: ``(2, ...)`` tensors, background first.
    With ``MeanDice(include_background=False)`` it scores the foreground alone."""
    predictions, labels = from_engine(["pred", "label"])(output)
    return [_foreground(p) for p in predictions], [_foreground(label) for label in labels]


def _foreground(one_hot: torch.Tensor) -> torch.Tensor:
    if one_hot.ndim < 2 or one_hot.shape[0] < 2:
        raise ValueError(f"foreground_pairs: expected one-hot (C >= 2, ...) tensors, got shape {tuple(one_hot.shape)}")
    foreground = one_hot[1:].sum(0, keepdim=True) > 0
    return torch.cat([~foreground, foreground]).to(one_hot.dtype)


class SyntheticEpochHandler:
    """Call ``dataset.set_epoch(epoch - 1)`` when each ignite epoch starts (ignite counts epochs from 1).

    The DataLoader's iterator, and with it the worker processes that copy the dataset, is created after
    ``EPOCH_STARTED`` fires, so workers see the new epoch too (keep ``persistent_workers=False``, the default).

    The epoch comes from the trainer's state, so a run resumed from an epoch-end checkpoint (which restores that
    state, see :mod:`synth_transforms.checkpoint_resume`) sees the samples the uninterrupted run would have seen. A
    run resumed mid-epoch restarts the DataLoader: its remaining iterations see the epoch's first samples (logged).

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
        done = engine.state.iteration % engine.state.epoch_length if engine.state.epoch_length else 0
        if done:
            logger.warning(
                f"SyntheticEpochHandler: resuming mid-epoch (epoch {engine.state.epoch}, {done} of "
                f"{engine.state.epoch_length} iterations done): the rest of the epoch sees its first samples again"
            )


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


class CaseRecordSaver:
    """Write the record of the training cases when the engine completes (not when it fails).

    Writing it at completion, rather than when the config builds the datalist, means that a run that fails leaves no
    ``train_cases.json`` claiming cases were trained on. See :func:`~synth_transforms.datalists.write_case_record`.

    Args:
        cases: the :class:`~synth_transforms.datalists.CaseList` returned by ``load_decathlon_split``.
        record_path: the JSON file to write, e.g. ``<output_dir>/train_cases.json``.
    """

    def __init__(self, cases: CaseList, record_path: str | os.PathLike) -> None:
        if not isinstance(cases, CaseList):
            raise TypeError(
                f"CaseRecordSaver: cases must be the CaseList returned by load_decathlon_split, got {type(cases)}"
            )
        self.cases = cases
        self.record_path = record_path

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        write_case_record(self.record_path, self.cases)


class ClassMetricsSaver(MetricsSaver):
    """MONAI's ``MetricsSaver`` whose ``*_raw.csv`` and ``*_summary.csv`` name each class column by ``class_labels``.

    MONAI's handler numbers the columns ``class0``, ``class1``, ... by position, so with ``include_background=False``
    ``class0`` is class 1. MONAI's ``write_metrics_reports`` takes the names (``class_labels``) but its handler does
    not pass them on; this one does.

    Args:
        class_labels: one name per column of the metric details, e.g.
            :func:`~synth_transforms.datalists.decathlon_class_names`; None keeps MONAI's ``class<i>`` names.
        kwargs: the arguments of ``monai.handlers.MetricsSaver``.
    """

    def __init__(self, *args, class_labels: Sequence[str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.class_labels = None if class_labels is None else [str(label) for label in class_labels]

    def __call__(self, engine: Engine) -> None:
        # MetricsSaver.__call__ (MONAI 1.6) with class_labels passed to write_metrics_reports
        world_size = idist.get_world_size()
        if self.save_rank >= world_size:
            raise ValueError(f"ClassMetricsSaver: save_rank {self.save_rank} >= the world size {world_size}")
        images = string_list_all_gather(strings=self._filenames) if world_size > 1 else self._filenames
        if idist.get_rank() != self.save_rank:
            return
        metrics = {}
        if self.metrics is not None:
            metrics = {k: v for k, v in engine.state.metrics.items() if k in self.metrics or "*" in self.metrics}
        details = {}
        if self.metric_details is not None:
            all_details = getattr(engine.state, "metric_details", {}) or {}
            details = {k: v for k, v in all_details.items() if k in self.metric_details or "*" in self.metric_details}
        for name, values in details.items():
            columns = values.shape[1] if getattr(values, "ndim", 0) >= 2 else 1
            if self.class_labels is not None and columns != len(self.class_labels):
                raise ValueError(
                    f"ClassMetricsSaver: metric {name!r} has {columns} class column(s) but class_labels names "
                    f"{len(self.class_labels)}: {self.class_labels}"
                )
        write_metrics_reports(
            save_dir=self.save_dir,
            images=images or None,
            metrics=metrics,
            metric_details=details,
            summary_ops=self.summary_ops,
            deli=self.deli,
            output_type=self.output_type,
            class_labels=self.class_labels,
        )
