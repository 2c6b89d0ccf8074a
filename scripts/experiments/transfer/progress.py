"""Where a run stands (``status``): every stage of a ``run`` or ``ablate`` folder done, failed, started or waiting;
how far a started training got (its last validation round); and the wall time left, estimated as the dry run
estimates it (at the measured pace of the run's finished stages where it has some; a started training at its own
pace up to its last validation round) and scheduled as the stage runner runs the stages. Reads the folder only: it
starts nothing, so it can be asked while the run goes on, or between sessions of a run that resumes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

from experiments.runner import (
    TIME_FILE,
    Stage,
    earlier_time,
    is_settled,
    partial_path,
    read_record,
    select_stages,
)
from experiments.transfer import ablation
from experiments.transfer.curves import CURVE_FILE, read_curve
from experiments.transfer.estimate import (
    Pace,
    estimate_seconds,
    format_duration,
    measured_pace,
    pace_note,
    schedule,
    stage_threads,
)
from experiments.transfer.plan import Settings, case_counts, plan_stages
from synth_transforms.io import read_json


@dataclasses.dataclass(frozen=True)
class StageProgress:
    """One stage's state: ``done``, ``failed``, ``started`` (a partial folder: running, or stopped and resumable)
    or ``waiting``; for a started training, the iteration and Dice of its last validation round; ``wall_s``: the
    time spent (a started stage: so far, as its runner last recorded it)."""

    name: str
    state: str
    iterations: int | None = None
    done_iterations: int | None = None
    last_dice: float | None = None
    wall_s: float | None = None
    finished: str | None = None
    validated_s: float | None = None  # a started training: its wall time when it ran its last validation round

    @property
    def own_pace(self) -> float | None:
        """A started training's seconds per iteration up to its last validation round (None without one)."""
        if self.state != "started" or not (self.iterations and self.done_iterations and self.validated_s):
            return None
        return self.validated_s / self.done_iterations

    @property
    def own_seconds_left(self) -> float | None:
        """A started training's time left at its own pace: the iterations after its last validation round."""
        pace = self.own_pace
        return None if pace is None else pace * max(0, self.iterations - self.done_iterations)

    @property
    def fraction_left(self) -> float:
        if self.state == "done":
            return 0.0
        if self.iterations and self.done_iterations:
            return max(0.0, 1.0 - self.done_iterations / self.iterations)
        return 1.0


def run_plan(out: Path, dataset_dir: Path) -> tuple[Settings, ablation.AblationSettings | None, list[Stage]]:
    """The recorded plan of the run in ``out``, from its ``settings.json``: the (main run's) settings, the ablation's
    choices (None for a ``run`` folder) and the stages."""
    path = out / "settings.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --out must be a folder that `run` or `ablate` has started")
    recorded = read_json(path, "run settings")
    if "ablation" in recorded:
        settings = Settings(**recorded["main_settings"])
        choices = ablation.AblationSettings(**recorded["ablation"])
        return settings, choices, ablation.ablation_stages(settings, choices, out, dataset_dir)
    settings = Settings(**recorded)
    return settings, None, plan_stages(settings, out, dataset_dir, out / "datalist.json")


def last_validation(folder: Path) -> dict | None:
    """The last round (``iteration``, ``mean``) of the bundle's ``runs/validation_curve.jsonl`` in ``folder``."""
    path = folder / "runs" / CURVE_FILE
    rounds = read_curve(path) if path.is_file() else []
    return rounds[-1] if rounds else None


def validated_seconds(partial: Path, spent: float | None) -> float | None:
    """A started training's wall time at its last validation round: the time its runner last recorded (``spent``,
    at the time file's modification) less what passed between that round (the curve file's modification) and then."""
    curve, clock = partial / "runs" / CURVE_FILE, partial / TIME_FILE
    if not spent or not curve.is_file() or not clock.is_file():
        return None
    at_round = spent - max(0.0, clock.stat().st_mtime - curve.stat().st_mtime)
    return at_round if at_round > 0 else None


def stage_progress(out: Path, stage: Stage, stages: Sequence[Stage]) -> StageProgress:
    """The state of one stage of the plan ``stages``, from its record and its (partial) folder (``done`` counts an
    intermediate stage whose files were dropped after its dependants ran, as the runner does)."""
    record = read_record(out, stage.name)
    if is_settled(out, stage, stages):
        return StageProgress(stage.name, "done", stage.iterations, stage.iterations, None, record["wall_s"],
                             record["finished"])  # fmt: skip
    if record is not None and not record.get("ok"):
        return StageProgress(stage.name, "failed", stage.iterations, finished=record.get("finished"))
    partial = partial_path(stage)
    if partial.is_dir():
        last, spent = last_validation(partial) or {}, earlier_time(partial)["seconds"] or None
        return StageProgress(stage.name, "started", stage.iterations, last.get("iteration"), last.get("mean"), spent,
                             validated_s=validated_seconds(partial, spent))  # fmt: skip
    return StageProgress(stage.name, "waiting", stage.iterations)


def pace_sources(out: Path, choices: ablation.AblationSettings | None) -> list[Path]:
    """The run folders whose finished stages give the pace of ``out``'s: its own, and an ablation's main run."""
    return [out, *([Path(choices.main_run)] if choices is not None else [])]


def time_left(
    stages: Sequence[Stage],
    progress: dict[str, StageProgress],
    s: Settings,
    jobs: int,
    cpu_count: int,
    sizes: dict,
    pace: dict[str, Pace] | None = None,
) -> float | None:
    """Estimated wall seconds until every stage is done (``jobs`` at a time; a started training counts for what it
    has left after its last validation round, at its own pace when it has one); None where neither a measured
    ``pace`` nor a step time exists (CUDA)."""
    threads = stage_threads(s.device, jobs, cpu_count)
    todo = [stage for stage in stages if progress[stage.name].state != "done"]
    seconds = {}
    for stage in todo:
        own = progress[stage.name].own_seconds_left
        if own is not None:
            seconds[stage.name] = own
            continue
        estimate = estimate_seconds(stage, s, threads, **sizes, pace=pace)
        if estimate is None:
            return None
        seconds[stage.name] = estimate * progress[stage.name].fraction_left
    times = schedule(todo, seconds, jobs)
    return max((finish for _, finish in times.values()), default=0.0)


def describe(p: StageProgress) -> str:
    """The detail column of one stage's line."""
    if p.state == "done":
        return f"{format_duration(p.wall_s or 0)}, finished {p.finished}"
    if p.state == "failed":
        return f"failed {p.finished} (its log: logs/{p.name}.log; the next `run` starts it again)"
    spent = f", {format_duration(p.wall_s)} so far" if p.wall_s else ""
    if p.state == "started" and p.done_iterations:
        dice = "" if p.last_dice is None else f", validation Dice {p.last_dice:.3f}"
        return f"{p.done_iterations} of {p.iterations} iterations validated{dice}{spent}"
    if p.state == "started":
        return f"started, no validation round yet{spent}"
    return ""


def own_pace_note(states: Iterable[StageProgress]) -> str:
    """The started trainings counted at their own pace, with that pace."""
    own = [p for p in states if p.own_pace is not None]
    paces = ", ".join(f"{p.name} {p.own_pace:.1f} s/it" for p in own)
    return f"; started trainings at their own pace: {paces}" if own else ""


def status_lines(
    out: Path, dataset_dir: Path, jobs: int, cpu_count: int, only: str | Sequence[str] = "*"
) -> tuple[list[str], dict]:
    """The printout of ``status`` and its data: one line per stage (those matching ``only``, as ``run --only``
    selects them), the counts and the time left to finish them."""
    settings, choices, plan = run_plan(out, dataset_dir)
    stages = select_stages(plan, only)
    progress = {stage.name: stage_progress(out, stage, plan) for stage in stages}
    counts = {state: sum(p.state == state for p in progress.values()) for state in ("done", "started", "failed")}
    counts["waiting"] = len(stages) - sum(counts.values())
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    lines = [f"{out} (preset {settings.preset}): {len(stages)} stages: {summary}"]
    width = max(len(stage.name) for stage in stages)
    lines += [f"  {p.state:<8} {p.name:<{width}}  {describe(p)}".rstrip() for p in progress.values()]
    sizes = case_counts(dataset_dir, settings.val_cases)
    pace = measured_pace(pace_sources(out, choices))
    left = time_left(stages, progress, settings, jobs, cpu_count, sizes, pace)
    if left is None:
        lines.append(f"time left: no estimate on {settings.device} (no finished stage, and step times were measured "
                     "on the CPU only)")  # fmt: skip
    else:
        lines.append(
            f"time left: about {format_duration(left)} with {jobs} stage(s) at a time on {cpu_count} core(s) "
            f"({pace_note(pace, stages)}{own_pace_note(progress.values())})"
        )
    data = {"stages": [dataclasses.asdict(p) for p in progress.values()], "counts": counts, "time_left_s": left}
    return lines, data
