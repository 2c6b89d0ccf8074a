"""Wall-time estimate of a planned run (``run --dry_run``, ``status``): per stage from CPU step times measured on the
2-core development machine, scaled by voxels x batch, and the whole plan scheduled as the stage runner runs it (in
order, ``jobs`` at a time, each once its prerequisites are done). Where a run has finished stages of a kind (its own,
or an ablation's main run), their measured pace replaces the step times for that kind (:func:`measured_pace`).

The step times are the CPU seconds a one-thread process spent per step while the machine was shared with other jobs
(docs/results.md, "CPU protocol"): about the wall time of the same step on an otherwise idle machine. On CUDA nothing
was measured here and the estimate says so instead of guessing.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from experiments.runner import Stage
from experiments.transfer.plan import BankStage, BundleStage, Settings, curve_points
from synth_transforms.io import read_json


@dataclasses.dataclass(frozen=True)
class StepTime:
    """Seconds per training iteration measured at ``voxels`` per sample and ``batch`` samples, ``threads`` threads
    (fwd + bwd + AdamW with the bundle's data pipeline, feature_size 12, fp32)."""

    seconds: float
    voxels: int
    batch: int
    threads: int

    def scaled(self, voxels: int, batch: int, threads: int) -> float:
        """Seconds per iteration at another size (linear in voxels x batch) and thread count (1 or 2)."""
        seconds = self.seconds * (voxels * batch) / (self.voxels * self.batch)
        return seconds * THREAD_SPEEDUP ** (min(self.threads, 2) - min(threads, 2))


# Measured 2026-12-01 on the 2-core development machine, one thread, feature_size 12, fp32 (docs/results.md, "CPU
# protocol", has the commands): CPU seconds per step, from the bundles' own logs and the processes' CPU time.
PRETRAIN_STEP = StepTime(seconds=8.2, voxels=64**3, batch=2, threads=1)  # anatomy synthesis (2.25 mm) + 64^3 step
FINETUNE_STEP = StepTime(seconds=4.1, voxels=32 * 64 * 32, batch=4, threads=1)  # cached Hippocampus crops + step
THREAD_SPEEDUP = 8.2 / 6.5  # one thread (above) against two (DESIGN.md section 6: 64^3 batch 2, 6.5 s)
PRETRAIN_VAL_SAMPLE_S = 2.1  # one synthetic validation sample, 64^3: synthesis and forward pass
EVAL_CASE_S = 2.5  # one Hippocampus case: sliding window over 32x64x32 windows (a validation round's cost per case)
STARTUP_S = 20.0  # one bundle process: imports, config parsing, network build
CACHE_CASE_S = 0.05  # loading and caching one Hippocampus case
BANK_BUILD_S = 60.0  # the 2.25 mm bank built from the five subjects (under a minute)


def stage_threads(device: str, jobs: int, cpu_count: int) -> int:
    """Threads per stage as ``command.stage_environment`` gives them."""
    return max(1, cpu_count // max(1, jobs)) if device == "cpu" else 0


@dataclasses.dataclass(frozen=True)
class Pace:
    """The measured wall time of one kind of stage: the median over a run's finished stages of that kind, in seconds
    per iteration for trainings and per stage otherwise. It holds whatever the machine did meanwhile (validation
    rounds, startups, stages side by side, other work): a forecast of the same conditions, not of an idle machine."""

    seconds: float
    per_iteration: bool
    stages: int

    def describe(self, kind: str) -> str:
        value = f"{self.seconds:.1f} s/it" if self.per_iteration else format_duration(self.seconds)
        return f"{kind} {value} ({self.stages} stage{'s' if self.stages > 1 else ''})"


def stage_kind(name: str) -> str:
    """``pretrain``, ``finetune``, ``evaluate`` or ``bank``: the first word of a stage's name."""
    return name.split("_", 1)[0]


def measured_pace(runs: Sequence[Path]) -> dict[str, Pace]:
    """The pace of each kind of stage over the successful stage records (``stages/*.json``) of the run folders
    ``runs`` (missing folders are skipped); a kind with no finished stage is left out."""
    seconds: dict[tuple[str, bool], list[float]] = {}
    for run in runs:
        for path in sorted((run / "stages").glob("*.json")):
            record = read_json(path, "stage record")
            if not record.get("ok") or not record.get("wall_s"):
                continue
            iterations = record.get("iterations") or 0
            key = (stage_kind(record["stage"]), iterations > 0)
            seconds.setdefault(key, []).append(record["wall_s"] / max(1, iterations))
    return {kind: Pace(statistics.median(values), per_iteration, len(values))
            for (kind, per_iteration), values in seconds.items()}  # fmt: skip


def pace_note(pace: dict[str, Pace], stages: Sequence[Stage]) -> str:
    """How the estimate of ``stages`` was made, for its printout."""
    kinds = sorted({stage_kind(stage.name) for stage in stages})
    measured = [pace[kind].describe(kind) for kind in kinds if kind in pace]
    if not measured:
        return "from one-thread step times on the 2-core development machine"
    rest = "; other stages from one-thread step times" if len(measured) < len(kinds) else ""
    return f"at the pace of finished stages: {', '.join(measured)}{rest}"


def estimate_seconds(
    stage: Stage, s: Settings, threads: int, train_cases: int, val_cases: int, pace: dict[str, Pace] | None = None
) -> float | None:
    """Estimated wall seconds of one stage: at the measured ``pace`` of its kind when there is one, else from the
    step times; None where neither exists (CUDA without finished stages)."""
    measured = (pace or {}).get(stage_kind(stage.name))
    if measured is not None and measured.per_iteration == bool(stage.iterations):
        return measured.seconds * (stage.iterations or 1)
    if isinstance(stage, BankStage):
        return BANK_BUILD_S
    if s.device != "cpu" or not isinstance(stage, BundleStage):
        return None
    patch = math.prod(s.finetune_patch)
    if stage.name.startswith("pretrain_"):
        train = s.pretrain_iterations * PRETRAIN_STEP.scaled(s.pretrain_patch**3, s.pretrain_batch, threads)
        samples = s.pretrain_val_points * s.pretrain_val_samples
        val = samples * PRETRAIN_VAL_SAMPLE_S * s.pretrain_patch**3 / 64**3
        return STARTUP_S + train + val
    case_s = EVAL_CASE_S * patch / (32 * 64 * 32)
    if stage.name.startswith("evaluate_"):
        return STARTUP_S + val_cases * (case_s + CACHE_CASE_S)
    cases = stage.overrides.get("num_train_cases") or train_cases
    train = s.finetune_iterations * FINETUNE_STEP.scaled(patch, s.finetune_batch, threads)
    rounds = len(curve_points(s.finetune_iterations, s.finetune_val_points))
    caching = (cases + (val_cases if rounds else 0)) * CACHE_CASE_S * s.cache_rate
    return STARTUP_S + caching + train + rounds * val_cases * case_s


def schedule(stages: Sequence[Stage], seconds: dict[str, float], jobs: int) -> dict[str, tuple[float, float]]:
    """(start, finish) of every stage as :class:`experiments.runner.StageRunner` runs them: ``jobs`` at a time, each
    free slot taking the first stage in plan order whose prerequisites have finished."""
    todo, pending = list(stages), {stage.name for stage in stages}
    running: dict[str, float] = {}  # name -> finish time
    times: dict[str, tuple[float, float]] = {}
    clock = 0.0
    while todo or running:
        ready = [stage for stage in todo if not pending.intersection(stage.needs)]
        while ready and len(running) < max(1, jobs):
            stage = ready.pop(0)
            todo.remove(stage)
            times[stage.name] = (clock, clock + seconds[stage.name])
            running[stage.name] = times[stage.name][1]
        if not running:
            raise ValueError(f"stages {[stage.name for stage in todo]} wait on prerequisites outside the plan")
        name = min(running, key=running.get)
        clock = running.pop(name)
        pending.discard(name)
    return times


def format_duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def plan_lines(
    stages: Sequence[Stage],
    s: Settings,
    jobs: int,
    cpu_count: int,
    train_cases: int,
    val_cases: int,
    pace: dict[str, Pace] | None = None,
):
    """The dry run's printout: one line per stage (iterations, estimate, start and finish), then the total."""
    threads = stage_threads(s.device, jobs, cpu_count)
    estimates = {stage.name: estimate_seconds(stage, s, threads, train_cases, val_cases, pace) for stage in stages}
    where = f"{threads} thread(s) per stage" if s.device == "cpu" else s.device
    lines = [f"plan: preset {s.preset}, {len(stages)} stages, {jobs} at a time, {where}"]
    if any(value is None for value in estimates.values()):
        lines += [f"  {stage.name}  ({stage.iterations or '-'} iterations)" for stage in stages]
        lines.append(f"no step time was measured on {s.device}: no wall-time estimate (the CPU preset has one)")
        return lines
    times = schedule(stages, estimates, jobs)
    width = max(len(stage.name) for stage in stages)
    for stage in stages:
        start, finish = times[stage.name]
        iterations = f"{stage.iterations} it" if stage.iterations else ""
        lines.append(
            f"  {stage.name:<{width}}  {iterations:>8}  ~{format_duration(estimates[stage.name]):>7}"
            f"  (from {format_duration(start)} to {format_duration(finish)})"
        )
    total = max(finish for _, finish in times.values())
    lines.append(f"estimated wall time: {format_duration(total)} ({pace_note(pace or {}, stages)})")
    return lines
