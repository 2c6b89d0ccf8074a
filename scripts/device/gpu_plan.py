"""The plan of the one GPU call (``scripts/device/gpu_call.py``): the recipe's settings, the wall-clock budget of
every stage inside one global budget, what a budget buys (pre-training iterations, the batch the GPU memory holds),
the learning-rate schedule as the bundle builds it, and the size of what travels to the machine and comes back.

Pure functions and one settings class; nothing here starts a process (``gpu_call.py plan`` prints it)."""

from __future__ import annotations

import dataclasses
import math
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import _bundles

from synth_transforms._args import as_size3, check_non_negative, check_positive, check_positive_int, fail

OWNER = "gpu_call"
# The limit for the whole call, the machine's install step included: the device tool stops a command at
# 600 s, and the files must be packed into $OUT before that.
MAX_BUDGET_S = 510.0
# The stages in the order they run; "install" is scripts/device/device_env.sh, before the Python process starts. The
# torchrun smoke test runs early: a hang there is killed at its deadline and cannot cost the results.
STAGES = ("install", "throughput", "smoke", "pretrain", "finetune", "evaluate", "pack")
PRETRAIN_ARMS = ("anatomy", "primitives")
REGIMES = ("few_shot", "all")
# The device tool's limits on what travels there (working tree + carried paths) and what comes back from $OUT.
CARRY_LIMIT_MIB = 64.0
RETURN_FILES = 8
RETURN_FILE_MIB = 16.0
RETURN_TOTAL_MIB = 64.0
CARRIED = (".whl", ".data")  # ignored folders the call needs (wheels, the Hippocampus copy)
# Sizes of the carried folders when they are not made yet (docs/gpu_runs.md): wheels, the MSD Hippocampus subset.
NOMINAL_CARRY_MIB = {".whl": 5.2, ".data": 15.0}
DATA_SOURCE = _bundles.REPO.parent / "shared" / "data" / "msd_hippocampus"


@dataclasses.dataclass(frozen=True)
class CallSettings:
    """Everything the one call does, with the defaults sized for one H200 (139 GiB, 16 cores) and 8.5 minutes.

    Budgets are wall-clock seconds per stage; they must sum to at most ``budget_s``. Each stage may use the time the
    stages before it left over: its deadline is the call's end minus the budgets of the stages after it.
    """

    budget_s: float = 510.0
    install_s: float = 25.0  # device_env.sh: pip install of the wheels, import check
    throughput_s: float = 75.0
    smoke_s: float = 35.0
    pretrain_s: float = 195.0
    finetune_s: float = 100.0
    evaluate_s: float = 60.0
    pack_s: float = 10.0
    # Of a training stage's time, what is not training: process start, network, workers, export after the deadline.
    pretrain_startup_s: float = 45.0
    finetune_startup_s: float = 40.0
    pretrain_train_cap_s: float | None = None  # None: the pre-trainings train for all the time their stage has left
    cpu_cores: int = 16
    # pre-training: SwinUNETR fs48 on 96^3 synthetic patches, bf16 autocast, no activation checkpointing
    feature_size: int = 48
    pretrain_patch: int = 96
    pretrain_batch: int = 4  # shrunk by the throughput table's peak memory when two arms would not fit
    pretrain_iterations: int | None = None  # None: what the throughput table says the training time buys
    fallback_pretrain_iterations: int = 600  # without a throughput table, or a bundle without a deadline
    pace_share: float = 0.45  # of one arm's measured it/s, what each of the two arms side by side reaches
    pace_timeout_s: float = 60.0  # lockstep: how long an arm waits for a silent peer (and for all to start)
    pretrain_lr: float = 1e-3  # the CPU evidence: 1e-3 learns, 1e-4 learns next to nothing in a short budget
    pretrain_warmup: int = 50  # at most a tenth of the iterations
    validation_rounds: int = 5  # synthetic validation rounds during a pre-training (validation_curve.jsonl)
    pretrain_val_samples: int = 16
    amp_dtype: str = "bfloat16"
    cudnn_benchmark: bool | None = None  # None: on when the throughput table shows cuDNN autotuning faster
    gpu_memory_fraction: float = 0.85  # of the GPU's memory the two pre-trainings may reserve together
    # throughput table: a few dozen steps per variant
    throughput_variants: tuple[str, ...] = ("fp32", "bf16", "bf16_cudnn")
    throughput_warmup: int = 3
    throughput_iterations: int = 20
    # fine-tuning: 3 arms x regimes x seeds side by side on MSD Hippocampus, then their evaluations
    finetune_patch: tuple[int, int, int] = (64, 64, 64)
    finetune_batch: int = 2
    finetune_iterations: int = 400
    finetune_lr: float = 1e-3
    finetune_warmup: int = 25
    few_shot_cases: int = 10
    subset_seed: int = 0
    seeds: tuple[int, ...] = (0, 1)
    regimes: tuple[str, ...] = REGIMES
    val_cases: int | None = None  # None: the whole validation split (40 cases)
    cache_rate: float = 1.0
    smoke_iterations: int = 6  # torchrun --nproc_per_node=1, nccl, fp16 autocast

    @property
    def device(self) -> str:
        return "cuda"

    def budgets(self) -> dict[str, float]:
        """Stage name -> seconds, in run order."""
        return {stage: float(getattr(self, f"{stage}_s")) for stage in STAGES}

    @property
    def finetune_runs(self) -> int:
        """Fine-tunings side by side: 3 arms x regimes x seeds."""
        return 3 * len(self.regimes) * len(self.seeds)


@dataclasses.dataclass(frozen=True)
class QuickSettings(CallSettings):
    """``run --quick``: the same stages on the CPU at toy size (the bundles' ``cpu_smoke.json``) with short deadlines.

    The pre-training's iteration count is far beyond what its deadline allows, so the deadline (and the lockstep of
    the two arms) is what stops it, as on the GPU."""

    # Budgets are deadlines, not waits: on an idle 2-core machine the rehearsal takes about 2 minutes; the slack is
    # for a loaded one, where a CPU iteration can take tens of seconds (a deadline is checked after each iteration).
    budget_s: float = 400.0
    install_s: float = 0.0  # nothing installed on the CPU
    throughput_s: float = 90.0
    smoke_s: float = 5.0  # skipped on a CPU, with the reason recorded
    pretrain_s: float = 100.0
    finetune_s: float = 100.0
    evaluate_s: float = 90.0
    pack_s: float = 15.0
    pretrain_startup_s: float = 60.0
    finetune_startup_s: float = 60.0  # the fine-tunings stop after their 2 iterations, not at the deadline
    pretrain_train_cap_s: float | None = 20.0  # the deadline, not the 1000 iterations, stops the pre-trainings
    cpu_cores: int = 2
    feature_size: int = 12
    pretrain_patch: int = 64
    pretrain_batch: int = 1
    pretrain_iterations: int | None = 1000
    pace_timeout_s: float = 120.0
    fallback_pretrain_iterations: int = 2
    pretrain_warmup: int = 50
    validation_rounds: int = 1000  # a validation round after every iteration
    pretrain_val_samples: int = 1
    amp_dtype: str = "float16"  # AMP is CUDA-only in MONAI's trainer: off on the CPU
    cudnn_benchmark: bool | None = True  # the `run` override path of the GPU call, harmless on a CPU
    throughput_warmup: int = 0
    throughput_iterations: int = 1
    finetune_patch: tuple[int, int, int] = (32, 64, 32)  # fits the Hippocampus volumes (about 35x50x36 voxels)
    finetune_batch: int = 1
    finetune_iterations: int = 2
    finetune_warmup: int = 1
    seeds: tuple[int, ...] = (0,)
    regimes: tuple[str, ...] = ("few_shot",)
    val_cases: int | None = 1
    cache_rate: float = 0.0
    smoke_iterations: int = 2

    @property
    def device(self) -> str:
        return "cpu"


def make_settings(quick: bool = False, **overrides) -> CallSettings:
    """The call's settings (``QuickSettings`` with ``quick``), any field overridden; checked with :func:`check_plan`."""
    cls = QuickSettings if quick else CallSettings
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{OWNER}: unknown setting(s) {unknown}; the settings are {sorted(fields)}")
    for key in ("seeds", "regimes", "throughput_variants"):
        if key in overrides and not isinstance(overrides[key], (list, tuple)):
            overrides[key] = str(overrides[key]).split(",")
    if "finetune_patch" in overrides:
        overrides["finetune_patch"] = as_size3(overrides["finetune_patch"], "finetune_patch", OWNER, multiple_of=32)
    if "seeds" in overrides:
        overrides["seeds"] = tuple(int(seed) for seed in overrides["seeds"])
    for key in ("regimes", "throughput_variants"):
        if key in overrides:
            overrides[key] = tuple(str(value) for value in overrides[key])
    settings = cls(**overrides)
    check_plan(settings)
    return settings


def check_plan(settings: CallSettings) -> None:
    """Refuse settings whose stages cannot fit: over the 8.5-minute budget, or a training stage too short to train."""
    budgets = settings.budgets()
    if check_positive(settings.budget_s, "budget_s", OWNER) > MAX_BUDGET_S:
        raise fail("budget_s", f"at most {MAX_BUDGET_S:g} s (8.5 min: the device stops a command at 600 s)",
                   settings.budget_s, OWNER)  # fmt: skip
    for stage, seconds in budgets.items():
        check_non_negative(seconds, f"{stage}_s", OWNER)
    total = sum(budgets.values())
    if total > settings.budget_s + 1e-9:
        listing = ", ".join(f"{stage} {seconds:g}" for stage, seconds in budgets.items())
        raise ValueError(
            f"{OWNER}: the stages need {total:g} s ({listing}), over the budget of {settings.budget_s:g} s "
            f"({settings.budget_s / 60:.1f} min): shorten a stage"
        )
    for stage in ("pretrain", "finetune"):
        startup = getattr(settings, f"{stage}_startup_s")
        if budgets[stage] <= startup:
            raise ValueError(
                f"{OWNER}: {stage}_s ({budgets[stage]:g} s) leaves no training time after {stage}_startup_s "
                f"({startup:g} s)"
            )
    for name in ("pretrain_batch", "finetune_batch", "finetune_iterations", "validation_rounds", "cpu_cores"):
        check_positive_int(getattr(settings, name), name, OWNER)
    unknown = sorted(set(settings.regimes) - set(REGIMES))
    if unknown or not settings.regimes:
        raise ValueError(f"{OWNER}: regimes must be a non-empty subset of {list(REGIMES)}, got {settings.regimes!r}")
    if not settings.seeds:
        raise ValueError(f"{OWNER}: seeds must name at least one seed, got {settings.seeds!r}")


def deadlines(settings: CallSettings) -> dict[str, float]:
    """Stage -> seconds from the call's start by which it must have ended: the call's end minus the budgets of the
    stages after it (so a stage may use what those before it left over)."""
    budgets = settings.budgets()
    out, later = {}, 0.0
    for stage in reversed(STAGES):
        out[stage] = settings.budget_s - later
        later += budgets[stage]
    return {stage: out[stage] for stage in STAGES}


def training_seconds(stage_seconds: float, startup_s: float, cap_s: float | None = None) -> float:
    """The training deadline (``max_train_seconds``) of a training stage that has ``stage_seconds`` left: what its
    start-up and its end (export) leave, at most ``cap_s``."""
    seconds = max(1.0, stage_seconds - startup_s)
    return seconds if cap_s is None else min(seconds, cap_s)


# ---------------------------------------------------------------------- what the throughput table decides
def ok_variants(throughput: Mapping | None) -> dict[str, dict]:
    """The variants of a ``throughput.json`` that ran."""
    variants = (throughput or {}).get("variants", {})
    return {name: r for name, r in variants.items() if r.get("status") == "ok"}


def cudnn_benchmark_wins(throughput: Mapping | None, margin: float = 1.02) -> bool:
    """Whether cuDNN autotuning (``bf16_cudnn``) ran more than ``margin`` times faster than without (``bf16``)."""
    runs = ok_variants(throughput)
    if "bf16" not in runs or "bf16_cudnn" not in runs:
        return False
    return runs["bf16_cudnn"]["it_per_s"] > margin * runs["bf16"]["it_per_s"]


def fit_batch(batch: int, peak_mib: float | None, total_mib: float | None, arms: int, fraction: float) -> int:
    """The largest batch <= ``batch`` whose memory (``peak_mib`` measured at ``batch``, scaled per sample) lets
    ``arms`` runs share ``fraction`` of ``total_mib``; ``batch`` itself when either number is unknown."""
    if not peak_mib or not total_mib:
        return batch
    per_sample = peak_mib / batch
    fits = math.floor(fraction * total_mib / arms / per_sample)
    return max(1, min(batch, fits))


def amp_peak_mib(throughput: Mapping | None) -> float | None:
    """The largest reserved GPU memory of the bf16 variants (what a pre-training arm will reserve)."""
    peaks = [r.get("gpu_peak_reserved_mib") for name, r in ok_variants(throughput).items() if name.startswith("bf16")]
    peaks = [p for p in peaks if p]
    return max(peaks) if peaks else None


def estimate_iterations(
    settings: CallSettings, throughput: Mapping | None, train_seconds: float, batch: int, can_stop_at_deadline: bool
) -> tuple[int, str]:
    """Pre-training iterations (a multiple of ``validation_rounds``) and where the number comes from.

    The fastest bf16 variant's it/s (scaled to ``batch``: samples/s stays), times ``pace_share`` (two arms share the
    GPU), times ``train_seconds``. A bundle that cannot stop at a deadline gets at most the fallback count.
    """
    if settings.pretrain_iterations is not None:
        iterations, source = settings.pretrain_iterations, "set (pretrain_iterations)"
    else:
        runs = {n: r for n, r in ok_variants(throughput).items() if n.startswith("bf16")}
        if runs:
            name, best = max(runs.items(), key=lambda kv: kv[1]["samples_per_s"])
            rate = best["samples_per_s"] / batch
            iterations = int(rate * settings.pace_share * train_seconds)
            source = (
                f"{name}: {best['samples_per_s']:.2f} samples/s / batch {batch} x {settings.pace_share} (two arms) "
                f"x {train_seconds:.0f} s"
            )
        else:
            iterations, source = settings.fallback_pretrain_iterations, "fallback: no bf16 throughput measured"
    if not can_stop_at_deadline and iterations > settings.fallback_pretrain_iterations:
        iterations, source = settings.fallback_pretrain_iterations, "fallback: the bundle has no max_train_seconds"
    rounds = settings.validation_rounds
    return max(rounds, rounds * (iterations // rounds)), source


def warmup(steps: int, iterations: int) -> int:
    """The warm-up: ``steps``, at most a tenth of the iterations, at least 1."""
    return max(1, min(int(steps), iterations // 10))


CUDNN_BENCHMARK = "$setattr(torch.backends.cudnn, 'benchmark', True)"


def cudnn_benchmark_override(bundle, config_names: Sequence[str]) -> dict:
    """The ``run`` override that turns cuDNN autotuning on in a ``monai.bundle run`` of ``config_names``.

    The bundles' ``initialize`` calls ``monai.utils.set_determinism``, which sets ``cudnn.benchmark = False``; ``run``
    comes after it, so the config's own ``run`` list is kept, with the ``setattr`` in front.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_bundles.config_files(bundle, config_names))
    run = parser["run"]
    if not isinstance(run, list):
        raise ValueError(f"{OWNER}: expected 'run' of {bundle} {list(config_names)} to be a list, got {run!r}")
    return {"run": [CUDNN_BENCHMARK, *[step for step in run if step != CUDNN_BENCHMARK]]}


def bundle_keys(bundle, config_names: Sequence[str], keys: Sequence[str]) -> list[str]:
    """Which of ``keys`` the bundle's merged config files define (a key the bundle does not read is ignored)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_bundles.config_files(bundle, config_names))
    return [key for key in keys if key in parser]


# ---------------------------------------------------------------------- the learning-rate schedule
def bundle_lr_schedule(
    config_names: Sequence[str], overrides: Mapping, points: int = 11, bundle=_bundles.PRETRAIN
) -> list[tuple[int, float]]:
    """(iteration, learning rate) at ``points`` evenly spaced iterations, as the bundle's own ``lr_scheduler`` with
    ``overrides`` gives them (the network replaced by one parameter; the trainer steps the scheduler per iteration).
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_bundles.config_files(bundle, config_names))
    parser.update({**overrides, "network": "$torch.nn.Linear(1, 1)", "device": "cpu"})
    scheduler = parser.get_parsed_content("lr_scheduler")
    total = int(parser.get_parsed_content("max_epochs")) * int(parser.get_parsed_content("epoch_length"))
    marks = sorted({round(i * total / (points - 1)) for i in range(points)})
    schedule, optimizer = [], scheduler.optimizer
    for iteration in range(total + 1):
        if iteration in marks:
            schedule.append((iteration, float(optimizer.param_groups[0]["lr"])))
        optimizer.step()
        scheduler.step()
    return schedule


def check_schedule(schedule: Sequence[tuple[int, float]], lr: float, warmup_steps: int) -> list[str]:
    """What is wrong with a warm-up + cosine schedule: peak above ``lr``, not ~0 at the end, rising after the
    warm-up. Empty when its shape is right."""
    problems = []
    rates = [rate for _, rate in schedule]
    if max(rates) > lr * (1 + 1e-6):
        problems.append(f"peak {max(rates):.3g} above lr {lr:.3g}")
    if rates[-1] > 0.01 * lr:
        problems.append(f"ends at {rates[-1]:.3g}, not ~0: the cosine does not reach the last iteration")
    after = [rate for iteration, rate in schedule if iteration >= warmup_steps]
    if any(b > a * (1 + 1e-9) for a, b in zip(after, after[1:], strict=False)):
        problems.append("rises after the warm-up")
    return problems


# ---------------------------------------------------------------------- what travels, what comes back
def _mib(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def working_tree_mib(repo: Path = _bundles.REPO) -> float:
    """Tracked and untracked-not-ignored files: what the device tool sends besides the carried paths."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo, capture_output=True, check=True,
    )  # fmt: skip
    files = [repo / name for name in listing.stdout.decode().split("\0") if name]
    return sum(path.stat().st_size for path in files if path.is_file()) / 2**20


def carried_sizes(repo: Path = _bundles.REPO) -> dict[str, dict]:
    """MiB of the working tree and of each carried folder; a folder not made yet is given its nominal size."""
    sizes = {"working tree": {"mib": working_tree_mib(repo), "source": "git ls-files"}}
    for name in CARRIED:
        path = repo / name
        if path.exists():
            sizes[name] = {"mib": _mib(path), "source": "measured"}
        elif name == ".data" and DATA_SOURCE.is_dir():
            sizes[name] = {"mib": _mib(DATA_SOURCE), "source": f"not made yet: {DATA_SOURCE} measured"}
        else:
            sizes[name] = {"mib": NOMINAL_CARRY_MIB[name], "source": "not made yet: nominal size"}
    return sizes


def check_returned(files: Sequence[Path]) -> list[str]:
    """Why files in $OUT would not all come back (count, size per file, total); empty when they all would."""
    problems = []
    if len(files) > RETURN_FILES:
        problems.append(f"{len(files)} files, over the {RETURN_FILES} that come back")
    for path in files:
        if _mib(path) > RETURN_FILE_MIB:
            problems.append(f"{path.name} is {_mib(path):.1f} MiB, over {RETURN_FILE_MIB:g} MiB")
    total = sum(_mib(path) for path in files)
    if total > RETURN_TOTAL_MIB:
        problems.append(f"{total:.1f} MiB in all, over {RETURN_TOTAL_MIB:g} MiB")
    return problems
