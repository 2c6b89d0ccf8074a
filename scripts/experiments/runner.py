"""A resumable scheduler of subprocess stages, for experiments made of long runs that each fill one folder.

A stage runs in ``<root>.partial`` and is renamed to ``<root>`` when its process exits 0 and left every file it must
leave, so a failed or killed stage leaves nothing that looks finished. Each run is recorded in
``<out>/stages/<name>.json`` (command, exit status, wall time, start, finish) and logged to ``<out>/logs/<name>.log``
(a resumed stage appends to it). A stage's wall time counts every segment of a resumed run: the runner keeps it in
the stage's folder (``stage_time.json``, updated every minute while it runs).
The runner's ``facts`` (e.g. the code's commit) are added to every record it writes. A stage is done when its
record says it succeeded, its files exist and no prerequisite finished after it started;
``StageRunner.run`` skips done stages, so running the same plan again resumes after the last stage that finished.
A stage whose files are gone but whose record says it succeeded is an intermediate one (make's sense): it is run
again only for a stage that needs it and is not done, so a run folder restored from its published records (which keep
no network weights: ``experiments/transfer/restore.py``) does not redo the fine-tunings of its finished evaluations.
A ``resumable`` stage (a training that continues from its own checkpoints) keeps the ``.partial`` folder of a killed
run when it is started again with the same command and the same prerequisites, so it continues instead of
restarting; any other change starts it afresh.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import fnmatch
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from synth_transforms.cli_args import comma_items
from synth_transforms.io import read_json, write_json_atomic

PARTIAL_SUFFIX = ".partial"  # a stage's folder while it runs: <root>.partial
RESUME_KEY = "stage_key.json"  # in a partial folder: the command and prerequisites it was started with
TIME_FILE = "stage_time.json"  # in a stage's folder: its wall seconds over every segment of a resumed run
HEARTBEAT_S = 60.0  # how often a running stage's time file is updated (what a killed segment can leave uncounted)


@dataclasses.dataclass
class Stage(abc.ABC):
    """One subprocess: the folder it fills, the files that prove it finished, the stages it needs first.

    Subclasses say what to run in :meth:`command`.
    """

    name: str
    root: Path
    outputs: list[str] = dataclasses.field(default_factory=list)
    needs: list[str] = dataclasses.field(default_factory=list)
    iterations: int | None = None  # recorded with the wall time, for reports
    resumable: bool = False  # its command continues from what a killed run left in its partial folder

    @abc.abstractmethod
    def command(self, root: Path | None = None) -> list[str]:
        """The command filling ``root`` (default: the stage's folder)."""


def only_patterns(only: str | Sequence[str]) -> list[str]:
    """The name patterns of ``--only``: a list (fire makes one of ``a,b``) or a comma string (``'bank,pretrain_*'``)."""
    return [str(pattern) for pattern in comma_items(only)]


def select_stages(stages: Sequence[Stage], only: str | Sequence[str]) -> list[Stage]:
    """The stages whose names match one of the ``--only`` patterns, in plan order; none matching is an error."""
    patterns = only_patterns(only)
    selected = [stage for stage in stages if any(fnmatch.fnmatch(stage.name, p) for p in patterns)]
    if not selected:
        raise ValueError(f"--only {patterns} matches no stage; stages are {[s.name for s in stages]}")
    return selected


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_path(out: Path, name: str) -> Path:
    """Where the record of stage ``name`` is written."""
    return out / "stages" / f"{name}.json"


def read_record(out: Path, name: str) -> dict | None:
    """The record of stage ``name``, or None before it first ran."""
    path = record_path(out, name)
    return read_json(path, f"record of stage {name}") if path.is_file() else None


def succeeded(out: Path, stage: Stage) -> bool:
    """Its record says it succeeded and no prerequisite was re-run after it (its files are not looked at)."""
    record = read_record(out, stage.name)
    if record is None or not record.get("ok"):
        return False
    needs = [read_record(out, need) for need in stage.needs]
    return all(need is not None and need["finished"] <= record["started"] for need in needs)


def is_done(out: Path, stage: Stage) -> bool:
    """Done: its record says it succeeded, the files it must leave exist, and no prerequisite was re-run after it."""
    return succeeded(out, stage) and all((stage.root / name).is_file() for name in stage.outputs)


def is_settled(out: Path, stage: Stage, stages: Sequence[Stage]) -> bool:
    """Nothing left to run for it: done, or an intermediate stage of the plan ``stages`` (it succeeded, its files are
    gone, and every stage that needs it is done, e.g. a fine-tuning whose weights were dropped after its evaluation)."""
    if is_done(out, stage):
        return True
    dependants = [other for other in stages if stage.name in other.needs]
    return bool(dependants) and succeeded(out, stage) and all(is_done(out, other) for other in dependants)


def partial_path(stage: Stage) -> Path:
    """The folder a stage fills while it runs."""
    return stage.root.with_name(stage.root.name + PARTIAL_SUFFIX)


def in_partial_folder(relative: Path) -> bool:
    """Whether a path (relative to the run folder) lies in a stage's partial folder: part of no finished stage."""
    return any(part.endswith(PARTIAL_SUFFIX) for part in relative.parts)


def resume_key(out: Path, stage: Stage) -> dict:
    """What a resumable stage's partial folder must have been started with for a rerun to continue it."""
    return {"command": stage.command(partial_path(stage)), "needs": {n: read_record(out, n) for n in stage.needs}}


def reopen(out: Path, stage: Stage) -> str | None:
    """Let a resumable stage continue under its current command (e.g. more iterations), keeping what it did so far.

    A finished stage's folder goes back to its partial folder and its record is removed (so it runs again, and so do
    the stages that need it); the partial folder's resume key is set to the current command. Returns what was done
    (None: the stage had not started).
    """
    if not stage.resumable:
        raise ValueError(f"stage {stage.name} is not resumable: it cannot be continued, only rerun")
    partial = partial_path(stage)
    done = None
    if stage.root.is_dir():
        if partial.exists():
            raise RuntimeError(f"stage {stage.name} has both {stage.root} and {partial}: remove the one not wanted")
        stage.root.rename(partial)
        record_path(out, stage.name).unlink(missing_ok=True)
        done = "reopened"
    elif partial.is_dir():
        done = "continued"
    if done is not None:
        write_json_atomic(partial / RESUME_KEY, resume_key(out, stage))
    return done


def earlier_time(partial: Path) -> dict:
    """The wall time that earlier segments of a resumed stage spent in ``partial``: ``{"seconds", "segments"}``."""
    path = partial / TIME_FILE
    return read_json(path, "stage time") if path.is_file() else {"seconds": 0.0, "segments": 0}


@dataclasses.dataclass
class RunningStage:
    """A stage started by :class:`StageRunner`: its process, the folder it fills, when it started and the time its
    earlier segments spent (a resumed stage)."""

    stage: Stage
    process: subprocess.Popen
    partial: Path
    earlier: dict  # earlier_time(partial)
    started: float = dataclasses.field(default_factory=time.perf_counter)
    started_at: str = dataclasses.field(default_factory=utc_now)
    beat: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def segment_s(self) -> float:
        return time.perf_counter() - self.started

    def write_time(self) -> dict:
        """Record the stage's wall time so far (earlier segments and this one) in its partial folder."""
        self.beat = time.perf_counter()
        total = {
            "seconds": round(self.earlier["seconds"] + self.segment_s, 1),
            "segments": self.earlier["segments"] + 1,
        }
        write_json_atomic(self.partial / TIME_FILE, total)
        return total


class StageRunner:
    """Runs stages as subprocesses in ``out``, ``jobs`` at a time, each once its prerequisites are done.

    Args:
        out: the experiment's folder (``logs/`` and ``stages/`` are made in it; the processes run there).
        jobs: stages running at once.
        env: the processes' environment (default: this one's).
        facts: added to every stage record (e.g. ``{"commit": ...}``, the code the stages ran).
    """

    def __init__(self, out: Path, jobs: int = 1, env: dict | None = None, facts: dict | None = None):
        self.out, self.jobs, self.env, self.facts = out, max(1, int(jobs)), env, dict(facts or {})
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "stages").mkdir(parents=True, exist_ok=True)

    def log_path(self, stage: Stage) -> Path:
        return self.out / "logs" / f"{stage.name}.log"

    def start(self, stage: Stage) -> RunningStage:
        partial = partial_path(stage)
        key = resume_key(self.out, stage)
        key_file = partial / RESUME_KEY
        resuming = stage.resumable and key_file.is_file() and read_json(key_file, "resume key") == key
        if not resuming:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            write_json_atomic(key_file, key)
        print(f"[{utc_now()}] {'resume' if resuming else 'start'} {stage.name}", flush=True)
        with open(self.log_path(stage), "a" if resuming else "w") as log:  # a resumed stage keeps its earlier logs
            if resuming:
                log.write(f"\n[{utc_now()}] resumed {stage.name} in {partial}\n")
                log.flush()
            process = subprocess.Popen(
                stage.command(partial), stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.out
            )
        return RunningStage(stage, process, partial, earlier_time(partial))  # a fresh partial folder has none

    def finish(self, run: RunningStage) -> None:
        """Rename the partial folder of a stage that succeeded, record the run; raise if it failed."""
        stage, process, partial = run.stage, run.process, run.partial
        wall = run.segment_s
        total = run.write_time()  # kept in the stage's folder, so that a reopened stage goes on counting
        missing = [name for name in stage.outputs if not (partial / name).is_file()]
        ok = process.returncode == 0 and not missing
        if ok:
            shutil.rmtree(stage.root, ignore_errors=True)
            partial.rename(stage.root)
        record = {
            "stage": stage.name, "ok": ok, "returncode": process.returncode, "missing_outputs": missing,
            "wall_s": total["seconds"], "segments": total["segments"], "segment_s": round(wall, 1),
            "iterations": stage.iterations, "started": run.started_at, "finished": utc_now(),
            "command": stage.command(), **self.facts,
        }  # fmt: skip
        write_json_atomic(record_path(self.out, stage.name), record)
        if not ok:
            log = self.log_path(stage)
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"stage {stage.name} failed (exit {process.returncode}, missing outputs {missing}); "
                f"its partial folder {partial} is kept for inspection, full log {log}:\n{tail}"
            )
        resumed = f" ({total['seconds']:.1f} s over {total['segments']} segments)" if total["segments"] > 1 else ""
        print(f"[{utc_now()}] done  {stage.name} in {wall:.1f} s{resumed}", flush=True)

    def run(self, stages: Sequence[Stage], selected: Sequence[Stage]) -> None:
        """Run ``selected`` in order, skipping those settled (done, or intermediate: see :func:`is_settled`) unless
        a prerequisite runs again before them; prerequisites outside the selection must be done."""
        by_name = {stage.name: stage for stage in stages}
        todo: list[Stage] = []
        pending: set[str] = set()  # names of the stages to run that have not finished yet
        for stage in selected:
            if is_settled(self.out, stage, stages) and not pending.intersection(stage.needs):
                how = "done" if is_done(self.out, stage) else "done, its files dropped after its dependants ran"
                print(f"[{utc_now()}] skip  {stage.name} ({how}: {record_path(self.out, stage.name)})", flush=True)
                continue
            todo.append(stage)
            pending.add(stage.name)
        for stage in todo:
            for need in stage.needs:
                if need not in pending and not is_done(self.out, by_name[need]):
                    raise RuntimeError(f"stage {stage.name} needs stage {need} first: run it (--only '{need}')")
        running: list[RunningStage] = []
        try:
            while todo or running:
                ready = [s for s in todo if not pending.intersection(s.needs)]
                while ready and len(running) < self.jobs:
                    stage = ready.pop(0)
                    todo.remove(stage)
                    running.append(self.start(stage))
                if not running:
                    raise RuntimeError(f"stages {[s.name for s in todo]} wait on prerequisites that cannot finish")
                time.sleep(0.2)
                for run in [run for run in running if time.perf_counter() - run.beat >= HEARTBEAT_S]:
                    run.write_time()
                for run in [run for run in running if run.process.poll() is not None]:
                    running.remove(run)
                    self.finish(run)
                    pending.discard(run.stage.name)
        finally:
            for run in running:
                run.process.kill()
                run.process.wait()
