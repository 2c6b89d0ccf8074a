"""Budgeted training runs: a wall-clock budget, arms in lockstep and learning-curve records. Ignite handlers that
both bundles wire into MONAI's ``SupervisedTrainer`` (resumable checkpoints: :mod:`synth_transforms.checkpoint_resume`).
- :class:`TrainingBudget`: stops training cleanly after ``max_train_seconds``, keeps arms that share a ``pace_dir``
  in lockstep (all of them end with the same iteration count) and writes ``train_summary.json`` at completion.
- :class:`LockstepPacer`: the file protocol of the lockstep, without ignite.
- :class:`ValidationCurveWriter`: one JSON line per validation round (``validation_curve.jsonl``).

"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from ._args import check_positive, check_positive_int
from .io import atomic_path, write_json_atomic

__all__ = [
    "LockstepPacer",
    "TrainingBudget",
    "ValidationCurveWriter",
    "STOP_FILE",
]

logger = logging.getLogger(__name__)

STOP_FILE = "stop_at.json"


# ---------------------------------------------------------------------------------------------- lockstep
class LockstepPacer:
    """Arms that share ``pace_dir`` advance in lockstep and stop at the same iteration.

    Files in ``pace_dir`` (each written atomically):

    - ``<name>.json``: ``{"name", "iteration", "finished", "failed", "time"}``, one per arm, rewritten after every
      iteration and every second while the arm waits;
    - ``stop_at.json``: ``{"iteration", "by", "time"}``, created once, by the first arm past its deadline.

    An arm publishes iteration ``i``, then waits until every other arm has published ``i`` or finished before it
    starts ``i + 1``. The first arm whose deadline passes claims ``stop_at.json`` with its iteration *before*
    publishing it, so no arm can have started a later iteration, and every arm stops at exactly that iteration.
    Use one ``pace_dir`` per session: a ``stop_at.json`` left from an earlier one stops the arms at once.

    Args:
        pace_dir: folder shared by the arms.
        name: this arm's name (file ``<name>.json``).
        arms: number of arms expected; :meth:`register` waits until that many have registered. None: no barrier.
        timeout: seconds an arm waits for a peer whose file has not changed before treating it as gone (log
            warning), and for the ``arms`` barrier before failing. Make it longer than a validation round plus a
            checkpoint save, during which an arm writes nothing.
        poll: seconds between polls.
    """

    def __init__(
        self,
        pace_dir: str | os.PathLike,
        name: str,
        arms: int | None = None,
        timeout: float = 300.0,
        poll: float = 0.02,
    ) -> None:
        owner = "LockstepPacer"
        if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or name + ".json" == STOP_FILE:
            raise ValueError(f"{owner}: name must be a plain file name other than 'stop_at', got {name!r}")
        self.pace_dir = Path(pace_dir)
        self.name = name
        self.arms = None if arms is None else check_positive_int(arms, "pace_arms", owner)
        self.timeout = check_positive(timeout, "pace_timeout", owner)
        self.poll = check_positive(poll, "poll", owner)
        self.iteration = 0
        self._gone: set[str] = set()
        self._published = 0.0

    @property
    def own_file(self) -> Path:
        return self.pace_dir / f"{self.name}.json"

    def publish(self, iteration: int, finished: bool = False, failed: bool = False) -> None:
        """Write this arm's state."""
        self.iteration = int(iteration)
        state = {"name": self.name, "iteration": self.iteration, "finished": finished, "failed": failed}
        self._published = time.time()
        write_json_atomic(self.own_file, {**state, "time": self._published})

    def _heartbeat(self) -> None:
        """While waiting, rewrite this arm's file now and then, so that waiting peers do not take it for gone."""
        if time.time() - self._published > min(1.0, self.timeout / 4):
            self.publish(self.iteration)

    def register(self, iteration: int = 0) -> None:
        """Publish the starting iteration; with ``arms``, wait until that many arms have registered."""
        self.publish(iteration)
        if self.arms is None:
            return
        deadline = time.monotonic() + self.timeout
        while len(self._peers()) + 1 < self.arms:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.own_file}: waited {self.timeout:g} s for {self.arms} arms in {self.pace_dir}, "
                    f"found {len(self._peers()) + 1}"
                )
            self._heartbeat()
            time.sleep(self.poll)

    def stop_at(self) -> int | None:
        """The iteration all arms stop at, once an arm has claimed it."""
        content = _read_json(self.pace_dir / STOP_FILE)
        return None if content is None else int(content["iteration"])

    def claim_stop(self, iteration: int) -> int:
        """Create ``stop_at.json`` with ``iteration`` unless an arm did first; return the iteration that holds."""
        self.pace_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".stop.tmp", dir=self.pace_dir)
        with os.fdopen(fd, "w") as f:
            json.dump({"iteration": int(iteration), "by": self.name, "time": time.time()}, f)
        try:
            os.link(tmp, self.pace_dir / STOP_FILE)  # atomic and exclusive: the first arm wins, whole file or none
            logger.info(f"{self.name}: deadline passed, all arms in {self.pace_dir} stop at iteration {iteration}")
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        return self.stop_at()

    def wait_for_peers(self, iteration: int) -> None:
        """Return when every other arm has published ``iteration`` or finished, or a stop at or before it is set."""
        while True:
            stop = self.stop_at()
            if stop is not None and iteration >= stop:
                return
            behind = [p for p in self._peers().values() if not p["finished"] and p["iteration"] < iteration]
            if not behind:
                return
            self._heartbeat()
            time.sleep(self.poll)

    def _peers(self) -> dict[str, dict]:
        """The other arms' states, without arms gone silent for longer than ``timeout``."""
        peers = {}
        for path in self.pace_dir.glob("*.json"):
            if path.name.startswith(".") or path.name in (STOP_FILE, self.own_file.name):
                continue
            content = _read_json(path)
            if content is None or "iteration" not in content:
                continue
            name = path.stem
            if not content.get("finished") and time.time() - float(content.get("time", 0)) > self.timeout:
                if name not in self._gone:
                    logger.warning(f"{self.name}: arm {name} has not moved for {self.timeout:g} s; going on without")
                    self._gone.add(name)
                continue
            peers[name] = {"iteration": int(content["iteration"]), "finished": bool(content.get("finished"))}
        return peers


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------------------------------------- budget
class TrainingBudget:
    """Wall-clock budget, lockstep arms and the run summary of a trainer.

    - ``max_train_seconds``: after the first iteration that ends past it (counted from this run's ``STARTED``),
      the trainer stops cleanly (``engine.terminate()``): ``COMPLETED`` still fires, so the weight export and the
      final checkpoint happen as at a normal end.
    - ``pace_dir``: arms sharing it train in lockstep (:class:`LockstepPacer`); the first arm past its deadline
      sets the iteration at which every arm stops.
    - ``summary_path``: written atomically at completion, ``{"iterations", "epochs", "stopped_by": "deadline" |
      "iterations", "seconds", "start_iteration"}``; removed when training starts, so a failed run leaves none.
      ``epochs`` is the trainer's epoch counter (an epoch cut short by the deadline counts).

    Under DDP every rank must attach it (do not disable it on ranks > 0): rank 0 decides when to stop and
    broadcasts the decision, and only rank 0 writes files.

    Args:
        summary_path: the JSON summary file (e.g. ``<output_dir>/train_summary.json``); None writes none.
        max_train_seconds: the budget in seconds, or None for none.
        pace_dir: folder shared by lockstep arms, or None for no lockstep.
        pace_name: this arm's name in ``pace_dir`` (required with ``pace_dir``).
        pace_arms: number of arms to wait for when training starts (None: no barrier).
        pace_timeout: see :class:`LockstepPacer`.
    """

    def __init__(
        self,
        summary_path: str | os.PathLike | None = None,
        max_train_seconds: float | None = None,
        pace_dir: str | os.PathLike | None = None,
        pace_name: str | None = None,
        pace_arms: int | None = None,
        pace_timeout: float = 300.0,
    ) -> None:
        owner = "TrainingBudget"
        self.summary_path = None if summary_path is None else Path(summary_path)
        self.max_train_seconds = None
        if max_train_seconds is not None:
            self.max_train_seconds = check_positive(max_train_seconds, "max_train_seconds", owner)
        self.pacer = None
        if pace_dir is not None:
            self.pacer = LockstepPacer(pace_dir, pace_name, pace_arms, pace_timeout)
        self.stopped_by = "iterations"
        self._start = math.nan
        self._start_iteration = 0
        self._stop_at: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        if self.max_train_seconds is not None or self.pacer is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        if self.pacer is not None:
            engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)

    @staticmethod
    def _writer() -> bool:
        return idist.get_rank() == 0

    def _started(self, engine: Engine) -> None:
        self._start = time.monotonic()
        self._start_iteration = engine.state.iteration
        self.stopped_by, self._stop_at = "iterations", None
        if self._writer():
            if self.summary_path is not None:
                self.summary_path.unlink(missing_ok=True)
            if self.pacer is not None:
                self.pacer.register(engine.state.iteration)

    def _iteration_completed(self, engine: Engine) -> None:
        stop = self._should_stop(engine.state.iteration) if self._writer() else False
        if idist.get_world_size() > 1:
            stop = bool(idist.broadcast(int(stop), src=0))
        if stop:
            self.stopped_by = "deadline"
            engine.logger.info(f"Stopping at iteration {engine.state.iteration}: training budget reached")
            engine.terminate()

    def _should_stop(self, iteration: int) -> bool:
        past_deadline = self.max_train_seconds is not None and time.monotonic() - self._start > self.max_train_seconds
        if self.pacer is None:
            return past_deadline
        if past_deadline and self._stop_at is None:
            self._stop_at = self.pacer.claim_stop(iteration)  # before publishing: no arm can run past it
        self.pacer.publish(iteration)
        self.pacer.wait_for_peers(iteration)
        self._stop_at = self.pacer.stop_at()
        return self._stop_at is not None and iteration >= self._stop_at

    def _completed(self, engine: Engine) -> None:
        if not self._writer():
            return
        if self.pacer is not None:
            self.pacer.publish(engine.state.iteration, finished=True)
        if self.summary_path is not None:
            summary = {
                "iterations": engine.state.iteration,
                "epochs": engine.state.epoch,
                "stopped_by": self.stopped_by,
                "seconds": round(time.monotonic() - self._start, 3),
                "start_iteration": self._start_iteration,
            }
            write_json_atomic(self.summary_path, summary)

    def _failed(self, engine: Engine, e: Exception) -> None:
        if self._writer():
            self.pacer.publish(engine.state.iteration, finished=True, failed=True)
        raise e  # ignite swallows the exception unless a handler raises it again


# ---------------------------------------------------------------------------------------------- curves
class ValidationCurveWriter:
    """Append one JSON line per validation round to ``path``: ``{"iteration", "epoch", <metric>: value,
    "per_class": {name: value}, <other metric>: value, ...}``, the trainer's iteration and epoch at the time of the
    round; the other metrics are the evaluator's further scalar ones (e.g. its ``additional_metrics``).

    ``per_class`` is the mean over validation images of the metric's details (``save_details=True``, the default
    of MONAI's ``MeanDice``), ignoring images where a class is absent; a class absent from every image is left out.
    When training starts, lines past the (restored) iteration are dropped: a fresh run starts an empty curve and a
    resumed one drops the rounds it will repeat.

    Args:
        evaluator: the validation engine (``SupervisedEvaluator``) that the trainer runs.
        path: the JSON-lines file.
        metric_name: the metric to record; None takes the evaluator's key metric.
        class_names: names of the metric's class columns; None numbers them from ``first_class``.
        first_class: id of the first column (1 with ``include_background=False``).
    """

    def __init__(
        self,
        evaluator: Engine,
        path: str | os.PathLike,
        metric_name: str | None = None,
        class_names: list[str] | None = None,
        first_class: int = 1,
    ) -> None:
        self.evaluator = evaluator
        self.path = Path(path)
        self.metric_name = metric_name
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.first_class = int(first_class)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._keep_until)
        self.evaluator.add_event_handler(Events.COMPLETED, self._record, engine)

    def _keep_until(self, trainer: Engine) -> None:
        if not self.path.is_file():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["iteration"] <= trainer.state.iteration]
        if not kept:
            self.path.unlink()
        elif len(kept) < len(lines):
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept))

    def _record(self, evaluator: Engine, trainer: Engine) -> None:
        name = self.metric_name or getattr(evaluator.state, "key_metric_name", None)
        if name not in evaluator.state.metrics:
            raise KeyError(
                f"ValidationCurveWriter: the evaluator has no metric {name!r}: {sorted(evaluator.state.metrics)}"
            )
        line = {
            "iteration": trainer.state.iteration,
            "epoch": trainer.state.epoch,
            name: _number(evaluator.state.metrics[name]),
        }
        details = (getattr(evaluator.state, "metric_details", None) or {}).get(name)
        if details is not None:
            line["per_class"] = self._per_class(torch.as_tensor(details))
        for other, value in evaluator.state.metrics.items():
            if other not in line and torch.as_tensor(value).numel() == 1:
                line[other] = _number(value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")

    def _per_class(self, details: torch.Tensor) -> dict[str, float]:
        details = details.float().reshape(details.shape[0], -1) if details.ndim else details.reshape(1, 1)
        present = ~torch.isnan(details)
        means = torch.where(present, details, 0).sum(0) / present.sum(0).clamp(min=1)
        names = self.class_names or [str(self.first_class + i) for i in range(details.shape[1])]
        if len(names) != details.shape[1]:
            raise ValueError(
                f"ValidationCurveWriter: {details.shape[1]} class columns but {len(names)} class_names: {names}"
            )
        return {n: round(float(m), 6) for n, m, c in zip(names, means, present.any(0), strict=True) if bool(c)}


def _number(value) -> float:
    return round(float(torch.as_tensor(value).float().mean()), 6)
