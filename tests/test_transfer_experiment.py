"""The transfer experiment (``scripts/run_transfer_experiment.py`` on ``scripts/experiments``): its presets and stage
plan, the dry run's time estimate, a run's status, the generic resumable stage runner, result tables and statistics
(paired differences with bootstrap intervals, learning curves and their PNG), pack/unpack, restore from published
records, the ablation on top of a main run (plan, refusals, report), the command line's ``--only`` and ``--help``, and
the ``--quick`` CPU run of the whole path through the real bundles on MSD Hippocampus (pre-train anatomy and primitives,
fine-tune from each encoder and from scratch, evaluate, then segment with the inference config)."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _bundles
import nibabel as nib
import numpy as np
import pytest
import torch
from experiments import runner
from experiments.transfer import (
    ablation,
    command,
    curves,
    difference_plot,
    encoder_drift,
    estimate,
    extend,
    pack,
    plan,
    progress,
    report,
    restore,
    stats,
)
from experiments.transfer.command import check_pretrain
from experiments.transfer.command import drift as encoder_drift_of
from experiments.transfer.command import report as report_run

from synth_transforms.machine import device_name

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_transfer_experiment.py"


@dataclasses.dataclass(kw_only=True)
class PythonStage(runner.Stage):
    """A stage whose command is a small Python program run in the stage's (partial) folder."""

    code: str

    def command(self, root: Path | None = None) -> list[str]:
        return [sys.executable, "-c", self.code, str(root or self.root)]


def python_stage(name: str, root: Path, code: str, outputs=(), needs=()) -> PythonStage:
    return PythonStage(name, root, list(outputs), list(needs), code=code)


def test_epoch_plan_and_warmup():
    for iterations in (1, 2, 7, 100, 500, 1500):
        epochs, length = plan.epoch_plan(iterations)
        assert epochs * length == iterations and length <= 100
    assert plan.warmup_steps(2) == 1 and plan.warmup_steps(500) == 50 and plan.warmup_steps(20000) == 500


def test_quick_settings_are_the_cpu_smoke_overlays():
    pre, tune = _bundles.cpu_smoke("anatomy_pretrain"), _bundles.cpu_smoke("swin_unetr_finetune")
    quick = plan.make_settings("quick")
    assert quick.preset == "quick" and quick.device == pre["device"] == tune["device"] == "cpu"
    assert quick.feature_size == pre["feature_size"] == tune["feature_size"] == 12
    assert [quick.pretrain_patch] * 3 == pre["patch_size"] and list(quick.finetune_patch) == tune["patch_size"]
    assert (quick.pretrain_batch, quick.pretrain_workers) == (pre["batch_size"], pre["num_workers"])
    assert (quick.finetune_batch, quick.finetune_workers) == (tune["batch_size"], tune["num_workers"])
    assert quick.pretrain_iterations == pre["num_iterations"]
    assert quick.finetune_iterations == tune["max_epochs"] * tune["epoch_length"]
    assert quick.use_checkpoint is False and quick.cache_rate == tune["cache_rate"] and quick.val_cases == 2
    assert quick.pretrain_spacing is None and quick.finetune_val_points == 0  # the default bank, no curve


def test_cpu_preset_and_overrides_on_top(tmp_path, hippocampus_dir):
    cpu = plan.make_settings("cpu")
    assert (cpu.preset, cpu.device, cpu.feature_size) == ("cpu", "cpu", 12)
    # the body at the GPU protocol's scale: at least 144 mm a side, from a bank built at the pre-training spacing
    assert cpu.pretrain_patch * cpu.pretrain_spacing >= 144 and cpu.pretrain_patch % 32 == 0
    assert cpu.finetune_patch == (32, 64, 32) and cpu.finetune_val_points in range(4, 7)
    assert len(cpu.seeds) >= 5 and len(cpu.regime_seeds("all")) >= 1 and cpu.val_cases is None
    assert (cpu.pretrain_learning_rate, cpu.finetune_learning_rate) == (3e-3, 1e-3)

    tuned = plan.make_settings("cpu", {"pretrain_iterations": 60, "seeds": "3,4", "finetune_patch": [64, 64, 32]})
    assert (tuned.preset, tuned.pretrain_iterations, tuned.seeds) == ("cpu", 60, (3, 4))
    assert tuned.finetune_patch == (64, 64, 32) and tuned.feature_size == 12  # the rest stays the preset's
    recorded = json.loads(json.dumps(dataclasses.asdict(tuned)))
    assert plan.Settings(**recorded) == tuned  # settings.json reads back to the same settings
    with pytest.raises(ValueError, match="preset must be one of 'gpu', 'cpu', 'quick'"):
        plan.make_settings("tpu")
    with pytest.raises(TypeError, match="--preset"):
        plan.make_settings("cpu", {"preset": "gpu"})
    with pytest.raises(ValueError, match=r"finetune_patch must be divisible by 32 on every axis, got \(32, 50, 32\)"):
        plan.make_settings("cpu", {"finetune_patch": (32, 50, 32)})
    with pytest.raises(
        ValueError, match=r"pretrain_patch must be the side of a cube \(one integer\), got \[64, 64, 32\]"
    ):
        plan.make_settings("cpu", {"pretrain_patch": [64, 64, 32]})
    with pytest.raises(ValueError, match=r"finetune_iterations must be a multiple of finetune_val_points \(5\)"):
        plan.make_settings("cpu", {"finetune_iterations": 503})
    with pytest.raises(ValueError, match="--quick is --preset quick"):
        command.preset_name("cpu", True)
    assert command.preset_name(None, True) == "quick" and command.preset_name(None, False) == "gpu"

    # the preset is recorded with the settings, and a resumed run with another preset or value is refused
    out, data = str(tmp_path / "run"), str(hippocampus_dir)
    with pytest.raises(ValueError, match="matches no stage"):
        command.run(out=out, preset="cpu", only="nothing_*", dataset_dir=data)
    assert json.loads((tmp_path / "run" / "settings.json").read_text())["preset"] == "cpu"
    with pytest.raises(ValueError, match="other settings"):
        command.run(out=out, quick=True, only="nothing_*", dataset_dir=data)
    with pytest.raises(ValueError, match="other settings"):
        command.run(out=out, preset="cpu", only="nothing_*", dataset_dir=data, finetune_learning_rate=1e-4)


def _readme_bundle_commands(readme: Path, heading: str) -> list[tuple[list[str], dict]]:
    """The ``python -m monai.bundle run`` commands of the first bash block after ``heading``: per command its config
    file names and its overrides, parsed as ``monai.bundle`` parses them."""
    text = readme.read_text()
    block = text[text.index(heading) :].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        files, overrides = _bundles.parse_bundle_command(shlex.split(line))
        commands.append(([Path(name).name for name in files], overrides))
    return commands


def test_finetune_readme_reproduces_the_cpu_few_shot_anatomy_arm(tmp_path):
    """The fine-tune bundle's README commands for the released encoder are the CPU preset's few-shot anatomy recipe:
    the same overrides, given on the command line or by ``cpu_fs12.json``."""
    cpu = plan.make_settings("cpu")
    encoder = tmp_path / "model_swinvit.pt"
    tune, evaluate = plan.finetune_pair(cpu, tmp_path, tmp_path, tmp_path / "d.json", "few_shot", "anatomy", 0, encoder)
    readme = _bundles.FINETUNE / "docs" / "README.md"
    (train_files, train_cli), (evaluate_files, evaluate_cli) = _readme_bundle_commands(
        readme, "### Few-shot MSD Hippocampus from the released"
    )
    assert train_files == [*plan.FINETUNE_CONFIG_FILES, "cpu_fs12.json"]
    assert sorted(evaluate_files) == sorted([*plan.EVALUATE_CONFIG_FILES, "cpu_fs12.json"])
    preset = json.loads((_bundles.FINETUNE / "configs" / "cpu_fs12.json").read_text())
    given = {**preset, **train_cli}
    not_in_readme = {"device", "dataset_dir", "datalist", "resume", "amp_dtype", "pretrained"}  # paths; CPU anyway
    recipe = {key: value for key, value in tune.overrides.items() if key not in not_in_readme}
    assert {key: given.get(key) for key in recipe} == recipe
    assert "/../anatomy_pretrain/models/model_swinvit_fs12.pt" in preset["pretrained"] and preset["amp"] is False
    assert evaluate_cli["checkpoint"] == "models/model_final.pt" and evaluate.overrides["patch_size"] == [32, 64, 32]


def test_cpu_plan_builds_its_bank_and_keeps_one_recipe(tmp_path, hippocampus_dir):
    cpu = plan.make_settings("cpu")
    datalist = tmp_path / "datalist.json"
    stages = plan.plan_stages(cpu, tmp_path, hippocampus_dir, datalist, plan.BANK_SUBJECTS)
    by_name = {stage.name: stage for stage in stages}
    assert [stage.name for stage in stages[:3]] == ["bank", "pretrain_anatomy", "pretrain_primitives"]
    assert len(stages) == 3 + 2 * len(plan.ARMS) * (len(cpu.seeds) + len(cpu.regime_seeds("all")))
    bank = by_name["bank"].command(tmp_path / "bank.partial")
    assert bank[1:5] == ["-m", "synth_transforms", "bank", "build"]
    assert bank[bank.index("--spacing") + 1] == "2.25"
    assert bank[bank.index("--out") + 1] == str(tmp_path / "bank.partial" / "bank_2.25mm.npz")
    assert bank[bank.index("--label_maps") + 1].endswith("shape_bank_subjects/*/label_total117.nii.gz")
    anatomy, primitives = by_name["pretrain_anatomy"], by_name["pretrain_primitives"]
    assert anatomy.needs == primitives.needs == ["bank"]
    assert anatomy.overrides["bank"] == str(tmp_path / "bank" / "bank_2.25mm.npz")
    # both arms alike (iterations, batch, schedule); primitives only record the bank's spacing in their affine
    assert primitives.overrides == {**anatomy.overrides, "synth#spacing": 2.25}
    assert anatomy.overrides["patch_size"] == [64, 64, 64] and anatomy.overrides["warmup_steps"] == cpu.pretrain_warmup
    assert anatomy.overrides["iterations_per_epoch"] * cpu.pretrain_val_points == cpu.pretrain_iterations
    assert "--synth#spacing" in primitives.command() and "--synth#spacing" not in anatomy.command()

    recipes = []
    for arm in plan.ARMS:
        tune = by_name[f"finetune_few_shot_{arm}_seed4"].overrides
        recipes.append({k: v for k, v in tune.items() if k not in ("pretrained", "transfer")})
    assert recipes[0] == recipes[1] == recipes[2]
    tune = recipes[0]
    assert tune["patch_size"] == [32, 64, 32] and tune["learning_rate"] == cpu.finetune_learning_rate
    assert (tune["max_epochs"], tune["val_interval"]) == (cpu.finetune_val_points, 1)  # the learning curve's rounds
    assert tune["max_epochs"] * tune["epoch_length"] == cpu.finetune_iterations
    # a 32x64x32 crop turned in the plane of axes 0 and 1 becomes 64x32x32 and cannot be batched with the others
    assert tune["rotate90_axes"] == [0, 2]
    config = json.loads((_bundles.config_dir("swin_unetr_finetune") / "train.json").read_text())
    (rotate,) = [t for t in config["train"]["random_transforms"] if t["_target_"] == "RandRotate90d"]
    assert (rotate["spatial_axes"], rotate["prob"]) == ("@rotate90_axes", "@rotate90_prob")  # the keys reach it
    assert plan.rotation_override((64, 64, 32)) == {}  # axes 0 and 1 equal: the bundle's own rotation
    assert plan.rotation_override((32, 64, 96)) == {"rotate90_prob": 0.0}  # no two equal sides
    assert "finetune_all_anatomy_seed1" not in by_name and "finetune_all_anatomy_seed0" in by_name
    evaluation = by_name["evaluate_few_shot_anatomy_seed4"].overrides
    assert evaluation["patch_size"] == [32, 64, 32]  # the sliding window's roi_size is @patch_size
    assert evaluation["checkpoint"].endswith("finetune/few_shot_anatomy_seed4/models/model_final.pt")


def test_dry_run_prints_an_estimate_per_stage_and_writes_nothing(tmp_path, hippocampus_dir, capsys):
    out = tmp_path / "dry"
    planned = command.run(out=str(out), preset="cpu", jobs=2, dry_run=True, dataset_dir=str(hippocampus_dir))
    printed = capsys.readouterr().out.splitlines()
    assert not out.exists()
    assert printed[0].startswith("plan: preset cpu,") and printed[-1].startswith("estimated wall time: ")
    for name in planned["stages"]:
        (line,) = [line for line in printed if line.split()[:1] == [name]]
        assert "~" in line and " to " in line
    assert len(printed) == len(planned["stages"]) + 2

    gpu = command.run(out=str(out), dry_run=True, dataset_dir=str(hippocampus_dir))  # nothing measured on CUDA
    assert gpu["plan"][-1].startswith("no step time was measured on cuda")


def test_schedule_runs_stages_as_the_runner_does():
    stages = [
        python_stage("bank", Path("b"), "pass"),
        python_stage("pre_a", Path("a"), "pass", needs=["bank"]),
        python_stage("pre_b", Path("b"), "pass", needs=["bank"]),
        python_stage("tune", Path("t"), "pass"),
        python_stage("tune_a", Path("ta"), "pass", needs=["pre_a"]),
    ]
    seconds = {"bank": 10.0, "pre_a": 100.0, "pre_b": 100.0, "tune": 50.0, "tune_a": 20.0}
    times = estimate.schedule(stages, seconds, jobs=2)
    # a free slot takes the first ready stage: "tune" runs beside the bank build, the pre-trainings after it
    assert times == {
        "bank": (0.0, 10.0), "tune": (0.0, 50.0), "pre_a": (10.0, 110.0), "pre_b": (50.0, 150.0),
        "tune_a": (110.0, 130.0),
    }  # fmt: skip
    assert max(f for _, f in estimate.schedule(stages, seconds, jobs=1).values()) == sum(seconds.values())
    step = estimate.StepTime(seconds=4.0, voxels=1000, batch=2, threads=1)
    assert step.scaled(2000, 2, 1) == pytest.approx(8.0)
    assert step.scaled(1000, 2, 2) == pytest.approx(4.0 / estimate.THREAD_SPEEDUP)


def write_record(run: Path, name: str, ok: bool, started: str, finished: str, wall_s: float = 60.0, **facts) -> None:
    record = {"stage": name, "ok": ok, "wall_s": wall_s, "started": started, "finished": finished, "command": [name]}
    record |= facts  # what the runner adds (commit, machine)
    runner.record_path(run, name).parent.mkdir(parents=True, exist_ok=True)
    runner.record_path(run, name).write_text(json.dumps(record))


def test_status_reads_each_stage_state_and_the_time_left(tmp_path, hippocampus_dir, capsys):
    cpu = plan.make_settings("cpu", {"seeds": "0,1"})
    run = fake_main_run(tmp_path / "run", cpu)
    with pytest.raises(FileNotFoundError, match="settings.json not found"):
        command.status(out=str(tmp_path / "nothing"), dataset_dir=str(hippocampus_dir))
    _, choices, stages = progress.run_plan(run, hippocampus_dir)
    assert choices is None
    sizes = {"train_cases": 10, "val_cases": 40}
    waiting = {stage.name: progress.StageProgress(stage.name, "waiting", stage.iterations) for stage in stages}
    dry_run = estimate.schedule(stages, {s.name: estimate.estimate_seconds(s, cpu, 1, **sizes) for s in stages}, 2)
    assert progress.time_left(stages, waiting, cpu, 2, 2, sizes) == max(f for _, f in dry_run.values())

    write_record(run, "bank", True, "2026-12-01T10:00:00Z", "2026-12-01T10:01:00Z")
    curve = run / "pretrain" / "anatomy.partial" / "runs" / curves.CURVE_FILE
    curve.parent.mkdir(parents=True)
    total, halfway = cpu.pretrain_iterations, cpu.pretrain_iterations // 2
    rounds = [{"iteration": 80, "val_mean_dice": 0.1}, {"iteration": halfway, "val_mean_dice": 0.25}]
    curve.write_text("".join(json.dumps(r) + "\n" for r in rounds))
    (run / "pretrain" / "primitives.partial").mkdir()
    (run / "pretrain" / "primitives.partial" / runner.TIME_FILE).write_text('{"seconds": 4000.0, "segments": 2}')
    write_record(run, "finetune_few_shot_scratch_seed0", False, "2026-12-01T10:00:00Z", "2026-12-01T10:30:00Z")
    (run / "finetune" / "few_shot_scratch_seed1").mkdir(parents=True)  # a finished folder without its record

    data = command.status(out=str(run), jobs=2, dataset_dir=str(hippocampus_dir))
    printed = capsys.readouterr().out.splitlines()
    states = {p["name"]: p for p in data["stages"]}
    assert states["bank"]["state"] == "done" and states["bank"]["wall_s"] == 60.0
    anatomy = states["pretrain_anatomy"]
    assert (anatomy["state"], anatomy["done_iterations"], anatomy["last_dice"]) == ("started", halfway, 0.25)
    primitives = states["pretrain_primitives"]
    assert primitives["state"] == "started" and primitives["done_iterations"] is None
    assert states["finetune_few_shot_scratch_seed0"]["state"] == "failed"
    assert states["finetune_few_shot_scratch_seed1"]["state"] == "waiting"
    assert data["counts"] == {"done": 1, "started": 2, "failed": 1, "waiting": len(stages) - 4}
    assert printed[0].endswith(f"{len(stages)} stages: 1 done, 2 started, 1 failed, {len(stages) - 4} waiting")
    assert "  started  pretrain_anatomy " in printed[2] and f"{halfway} of {total} iterations validated" in printed[2]
    assert printed[2].endswith("validation Dice 0.250") and printed[3].endswith("no validation round yet, 1h06m so far")
    assert printed[-1].startswith("time left: about ") and len(printed) == len(stages) + 2

    by_name = {stage.name: stage for stage in stages}
    now = {name: progress.stage_progress(run, stage, stages) for name, stage in by_name.items()}
    half = estimate.estimate_seconds(by_name["pretrain_anatomy"], cpu, 1, **sizes) / 2
    only_anatomy = [by_name["pretrain_anatomy"]]  # what the started anatomy pre-training has left: half its estimate
    assert progress.time_left(only_anatomy, now, cpu, 2, 2, sizes) == pytest.approx(half)
    assert data["time_left_s"] < progress.time_left(stages, waiting, cpu, 2, 2, sizes)
    # --only: the stages a `run --only` would run, and the time left to finish those alone
    chosen = command.status(out=str(run), jobs=2, dataset_dir=str(hippocampus_dir), only="pretrain_*,*_all_*")
    expected = [s.name for s in stages if s.name.startswith("pretrain_") or "_all_" in s.name]
    assert [p["name"] for p in chosen["stages"]] == expected and chosen["counts"]["started"] == 2
    assert chosen["time_left_s"] < data["time_left_s"]
    assert capsys.readouterr().out.splitlines()[0].endswith(f"{len(expected)} stages: 2 started, 6 waiting")
    with pytest.raises(ValueError, match="matches no stage"):
        command.status(out=str(run), dataset_dir=str(hippocampus_dir), only="nothing")

    # with its runner's clock, a started training counts at its own pace up to its last validation round
    clock = run / "pretrain" / "anatomy.partial" / runner.TIME_FILE
    clock.write_text('{"seconds": 1100.0, "segments": 1}')
    os.utime(curve, (1_000_000, 1_000_000))
    os.utime(clock, (1_000_100, 1_000_100))  # recorded 100 s after the round: 1000 s at the round (halfway)
    timed = progress.stage_progress(run, by_name["pretrain_anatomy"], stages)
    assert timed.validated_s == pytest.approx(1000.0) and timed.own_seconds_left == pytest.approx(1000.0)
    assert progress.time_left(only_anatomy, {timed.name: timed}, cpu, 2, 2, sizes) == pytest.approx(1000.0)
    command.status(out=str(run), dataset_dir=str(hippocampus_dir), only="pretrain_anatomy")
    assert "own pace: pretrain_anatomy 0.8 s/it" in capsys.readouterr().out  # 1000 s over 1200 iterations

    ablation_out = tmp_path / "ablation"
    ablation_out.mkdir()
    choices = ablation.AblationSettings(str(run), "fill", (), "0")
    recorded = {"ablation": dataclasses.asdict(choices), "main_settings": dataclasses.asdict(cpu)}
    (ablation_out / "settings.json").write_text(json.dumps(recorded))
    names = [p["name"] for p in command.status(out=str(ablation_out), dataset_dir=str(hippocampus_dir))["stages"]]
    kinds = ("finetune", "evaluate")
    pairs = [f"{kind}_few_shot_{arm}_seed0" for arm in ("scratch", "anatomy", "fill") for kind in kinds]
    assert names == ["pretrain_fill", *pairs]  # the reference arms, scratch and anatomy, are fine-tuned there too
    gpu = tmp_path / "gpu"
    gpu.mkdir()
    (gpu / "settings.json").write_text(json.dumps(dataclasses.asdict(plan.make_settings("gpu"))))
    command.status(out=str(gpu), dataset_dir=str(hippocampus_dir))
    assert capsys.readouterr().out.splitlines()[-1].startswith("time left: no estimate on cuda")


def write_paced_record(run: Path, name: str, wall_s: float, iterations: int | None, ok: bool = True) -> None:
    record = {"stage": name, "ok": ok, "wall_s": wall_s, "iterations": iterations, "started": "", "finished": ""}
    runner.record_path(run, name).parent.mkdir(parents=True, exist_ok=True)
    runner.record_path(run, name).write_text(json.dumps(record))


def test_estimates_follow_the_measured_pace_of_finished_stages(tmp_path, hippocampus_dir, capsys):
    cpu = plan.make_settings("cpu", {"seeds": "0"})
    run = fake_main_run(tmp_path / "run", cpu)
    write_paced_record(run, "pretrain_anatomy", 24_000.0, 2000)  # 12 s/it
    for seed, wall_s in enumerate((3000.0, 4000.0, 5000.0)):  # 6, 8 and 10 s/it: the median is 8
        write_paced_record(run, f"finetune_few_shot_scratch_seed{seed}", wall_s, 500)
    write_paced_record(run, "finetune_few_shot_anatomy_seed9", 50.0, 500, ok=False)  # a failed stage is no pace
    write_paced_record(run, "evaluate_few_shot_scratch_seed0", 100.0, None)
    pace = estimate.measured_pace([run, tmp_path / "not_a_run"])
    assert pace["pretrain"] == estimate.Pace(12.0, True, 1) and pace["finetune"] == estimate.Pace(8.0, True, 3)
    assert pace["evaluate"] == estimate.Pace(100.0, False, 1) and "bank" not in pace

    _, _, stages = progress.run_plan(run, hippocampus_dir)
    by_name, sizes = {stage.name: stage for stage in stages}, {"train_cases": 10, "val_cases": 40}
    primitives = by_name["pretrain_primitives"]
    assert estimate.estimate_seconds(primitives, cpu, 1, **sizes, pace=pace) == 12.0 * primitives.iterations
    assert estimate.estimate_seconds(by_name["evaluate_all_anatomy_seed0"], cpu, 1, **sizes, pace=pace) == 100.0
    bank_estimate = estimate.estimate_seconds(by_name["bank"], cpu, 1, **sizes)  # no bank stage finished: step times
    assert estimate.estimate_seconds(by_name["bank"], cpu, 1, **sizes, pace=pace) == bank_estimate

    command.status(out=str(run), jobs=2, dataset_dir=str(hippocampus_dir))
    last = capsys.readouterr().out.splitlines()[-1]
    assert "at the pace of finished stages: evaluate 1m40s (1 stage), finetune 8.0 s/it (3 stages)" in last
    assert last.endswith("pretrain 12.0 s/it (1 stage); other stages from one-thread step times)")

    gpu = dataclasses.replace(plan.make_settings("gpu"), seeds=(0,))  # nothing measured on CUDA but what finished
    lines = estimate.plan_lines(stages[1:], gpu, 1, 2, **sizes, pace=pace)
    assert lines[-1].startswith("estimated wall time: ") and not lines[-1].endswith("step times)")
    no_evaluation = {kind: value for kind, value in pace.items() if kind != "evaluate"}
    lines = estimate.plan_lines(stages[1:], gpu, 1, 2, **sizes, pace=no_evaluation)
    assert lines[-1].startswith("no step time was measured on cuda")

    planned = command.ablate(out=str(tmp_path / "ablation"), main_run=str(run), arms="fill", pool_sizes="",
                             jobs=1, dataset_dir=str(hippocampus_dir), dry_run=True)  # fmt: skip
    pretrain = estimate.format_duration(12.0 * cpu.pretrain_iterations)  # at the main run's pace
    assert planned["plan"][1].split() == ["pretrain_fill", str(cpu.pretrain_iterations), "it", "~", pretrain, "(from",
                                          "0m00s", "to", f"{pretrain})"]  # fmt: skip
    assert "at the pace of finished stages" in planned["plan"][-1]


def test_plan_has_every_arm_regime_and_seed(tmp_path, hippocampus_dir):
    settings = plan.Settings(seeds=(0, 1))
    datalist = plan.write_datalist(hippocampus_dir, tmp_path / "datalist.json", None)
    stages = plan.plan_stages(settings, tmp_path, hippocampus_dir, datalist)
    names = [stage.name for stage in stages]
    assert names[:2] == ["pretrain_anatomy", "pretrain_primitives"]
    assert len(names) == 2 + 2 * len(plan.ARMS) * 2 * 2  # fine-tune + evaluate per regime, arm and seed
    few_shot = [name.removeprefix("finetune_few_shot_") for name in names if name.startswith("finetune_few_shot_")]
    assert few_shot == [f"{arm}_seed{seed}" for seed in (0, 1) for arm in plan.ARMS]  # seed-major: pairs come early
    by_name = {stage.name: stage for stage in stages}
    anatomy = by_name["finetune_few_shot_anatomy_seed1"]
    assert anatomy.needs == ["pretrain_anatomy"] and anatomy.overrides["num_train_cases"] == 10
    assert anatomy.overrides["pretrained"].endswith("pretrain/anatomy/models/model_swinvit.pt")
    scratch = by_name["finetune_all_scratch_seed0"]
    assert scratch.needs == [] and "pretrained" not in scratch.overrides
    assert scratch.overrides["num_train_cases"] is None
    # identical fine-tuning budget and recipe in every arm of a regime and seed: only the initialisation differs
    arms = [by_name[f"finetune_few_shot_{arm}_seed0"].overrides for arm in plan.ARMS]
    recipe = [{k: v for k, v in o.items() if k not in ("pretrained", "transfer")} for o in arms]
    assert recipe[0] == recipe[1] == recipe[2]
    pretrain = [by_name[f"pretrain_{kind}"] for kind in ("anatomy", "primitives")]
    assert pretrain[0].overrides == pretrain[1].overrides and pretrain[1].config_files[-1] == "primitives.json"
    evaluation = by_name["evaluate_all_primitives_seed1"]
    assert evaluation.needs == ["finetune_all_primitives_seed1"]
    assert evaluation.overrides["checkpoint"].endswith("finetune/all_primitives_seed1/models/model_final.pt")
    # each stage is one `python -m monai.bundle run` of its bundle's configs, filling the folder it is given
    command = anatomy.command(tmp_path / "elsewhere")
    assert command[1:4] == ["-m", "monai.bundle", "run"]
    assert json.loads(command[command.index("--config_file") + 1]) == _bundles.config_files(
        "swin_unetr_finetune", ["train.json", "msd_hippocampus.json"]
    )
    assert command[command.index("--bundle_root") + 1] == str(tmp_path / "elsewhere")
    assert command[command.index("--patch_size") + 1] == "[64, 64, 64]"
    assert command[command.index("--use_checkpoint") + 1] == "False"


def test_datalist_validation_cut_and_errors(tmp_path, hippocampus_dir):
    path = plan.write_datalist(hippocampus_dir, tmp_path / "d.json", 3)
    datalist = json.loads(path.read_text())
    assert len(datalist["training"]) == 160 and len(datalist["validation"]) == 3
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset.json").write_text(json.dumps({"training": [{"image": "a", "label": "b"}]}))
    with pytest.raises(ValueError, match="'validation'"):
        plan.write_datalist(broken, tmp_path / "e.json", None)


def test_runner_renames_on_success_records_and_resumes(tmp_path):
    code = "import pathlib, sys; root = pathlib.Path(sys.argv[1]); (root / 'out.txt').write_text(root.name)"
    stage = python_stage("make", tmp_path / "work" / "make", code, outputs=["out.txt"])
    stage_runner = runner.StageRunner(tmp_path, jobs=2)
    stage_runner.run([stage], [stage])
    assert (stage.root / "out.txt").read_text() == "make.partial"  # ran in the partial folder, then renamed
    assert not stage.root.with_name("make.partial").exists()
    record = json.loads((tmp_path / "stages" / "make.json").read_text())
    assert record["returncode"] == 0 and record["wall_s"] >= 0 and record["command"][-1] == str(stage.root)
    assert runner.is_done(tmp_path, stage)
    stamp = (stage.root / "out.txt").stat().st_mtime_ns
    stage_runner.run([stage], [stage])  # done: skipped, nothing rewritten
    assert (stage.root / "out.txt").stat().st_mtime_ns == stamp


def test_failed_stage_names_itself_and_leaves_no_output(tmp_path):
    code = "import sys; print('something broke here'); sys.exit(3)"
    stage = python_stage("broken", tmp_path / "work" / "broken", code, outputs=["out.txt"])
    with pytest.raises(RuntimeError, match=r"stage broken failed \(exit 3") as error:
        runner.StageRunner(tmp_path).run([stage], [stage])
    assert "something broke here" in str(error.value) and "broken.log" in str(error.value)
    assert not stage.root.exists() and not runner.is_done(tmp_path, stage)
    assert json.loads((tmp_path / "stages" / "broken.json").read_text())["returncode"] == 3

    silent = python_stage("silent", tmp_path / "work" / "silent", "pass", outputs=["out.txt"])  # exit 0, no output
    with pytest.raises(RuntimeError, match=r"missing outputs \['out.txt'\]"):
        runner.StageRunner(tmp_path).run([silent], [silent])
    assert not silent.root.exists()


def test_resumable_stage_continues_in_its_partial_folder_only_when_nothing_changed(tmp_path):
    """A killed training stage keeps its partial folder for the next start with the same command and prerequisites;
    a stage that is not resumable, or whose command changed, starts afresh."""
    code = (
        "import pathlib, sys; root = pathlib.Path(sys.argv[1]); progress = root / 'progress.txt'\n"
        "done = int(progress.read_text()) if progress.exists() else 0\n"
        "progress.write_text(str(done + 1)); print('step', done + 1)\n"
        "sys.exit(1) if done == 0 else (root / 'out.txt').write_text(str(done + 1))"
    )  # the first attempt 'dies' after one step; a resumed second attempt finishes at step 2
    stage = python_stage("train", tmp_path / "work" / "train", code, outputs=["out.txt"])
    stage.resumable = True
    with pytest.raises(RuntimeError, match="stage train failed"):
        runner.StageRunner(tmp_path).run([stage], [stage])
    runner.StageRunner(tmp_path).run([stage], [stage])
    assert (stage.root / "out.txt").read_text() == "2"  # continued from the killed run's progress
    log = (tmp_path / "logs" / "train.log").read_text().splitlines()  # both attempts, the resume marked between
    assert log[0] == "step 1" and "resumed train in" in log[2] and log[3] == "step 2" and len(log) == 4
    record = json.loads(runner.record_path(tmp_path, "train").read_text())  # wall time over both segments
    assert record["segments"] == 2 and record["wall_s"] > record["segment_s"] > 0
    assert json.loads((stage.root / runner.TIME_FILE).read_text())["seconds"] == record["wall_s"]

    other = python_stage("other", tmp_path / "work" / "other", code, outputs=["out.txt"])  # not resumable
    for _ in range(2):
        with pytest.raises(RuntimeError, match="stage other failed"):
            runner.StageRunner(tmp_path).run([other], [other])  # restarts from nothing each time
    assert (tmp_path / "logs" / "other.log").read_text() == "step 1\n"  # and its log with it

    changed = python_stage("changed", tmp_path / "work" / "changed", code, outputs=["out.txt"])
    changed.resumable = True
    with pytest.raises(RuntimeError):
        runner.StageRunner(tmp_path).run([changed], [changed])
    changed.code = code + "  # another command"
    with pytest.raises(RuntimeError):
        runner.StageRunner(tmp_path).run([changed], [changed])  # a different command does not resume


def test_runner_keeps_a_running_stage_time_in_its_folder(tmp_path, monkeypatch):
    """The time file is written while the stage runs (what a stage killed with its runner leaves counted)."""
    monkeypatch.setattr(runner, "HEARTBEAT_S", 0.0)
    code = (
        "import pathlib, sys, time; root = pathlib.Path(sys.argv[1]); beat = root / 'stage_time.json'\n"
        "deadline = time.time() + 30\n"
        "while not beat.exists() and time.time() < deadline: time.sleep(0.05)\n"
        "(root / 'out.txt').write_text(beat.read_text())"
    )
    stage = python_stage("timed", tmp_path / "timed", code, outputs=["out.txt"])
    runner.StageRunner(tmp_path).run([stage], [stage])
    seen = json.loads((stage.root / "out.txt").read_text())
    assert seen["segments"] == 1 and 0 < seen["seconds"] < 30


def test_reopened_stage_continues_under_its_new_command(tmp_path):
    """``reopen``: a finished resumable stage goes back to its partial folder, loses its record and continues (not
    restarts) under a changed command; a stage that is not resumable cannot be reopened."""
    code = (
        "import pathlib, sys; root = pathlib.Path(sys.argv[1]); progress = root / 'progress.txt'\n"
        "done = int(progress.read_text()) if progress.exists() else 0\n"
        "progress.write_text(str(done + 1)); (root / 'out.txt').write_text(str(done + 1))"
    )
    stage = python_stage("train", tmp_path / "work" / "train", code, outputs=["out.txt"])
    stage.resumable = True
    runner.StageRunner(tmp_path).run([stage], [stage])
    assert (stage.root / "out.txt").read_text() == "1" and runner.is_done(tmp_path, stage)
    stage.code = code + "  # a longer budget"
    assert runner.reopen(tmp_path, stage) == "reopened"
    assert not stage.root.exists() and runner.read_record(tmp_path, "train") is None
    runner.StageRunner(tmp_path).run([stage], [stage])
    assert (stage.root / "out.txt").read_text() == "2"  # continued from the first run's progress
    fresh = python_stage("fresh", tmp_path / "work" / "fresh", code)
    fresh.resumable = True
    assert runner.reopen(tmp_path, fresh) is None  # never started: nothing to reopen
    with pytest.raises(ValueError, match="not resumable"):
        runner.reopen(tmp_path, python_stage("plain", tmp_path / "work" / "plain", code))


def test_extension_lengthens_only_the_pretraining_and_keeps_the_epochs(tmp_path, hippocampus_dir):
    cpu = plan.make_settings("cpu", {"pretrain_iterations": 800, "pretrain_val_points": 10})  # epochs of 80
    longer = plan.make_settings("cpu", {"pretrain_iterations": 1600, "pretrain_val_points": 20})
    extend.check_extension(cpu, longer)
    for bad, match in [
        ({"pretrain_iterations": 1600}, "keep the run's epoch of 80"),
        ({"pretrain_iterations": 400, "pretrain_val_points": 5}, "must grow"),
        ({"pretrain_iterations": 1600, "pretrain_val_points": 20, "pretrain_learning_rate": 1e-3}, "also changed"),
    ]:
        with pytest.raises(ValueError, match=match):
            extend.check_extension(cpu, plan.make_settings("cpu", {"pretrain_val_points": 10, **bad}))
    with pytest.raises(ValueError, match="derived from its length"):
        extend.check_extension(plan.make_settings("gpu"), plan.make_settings("gpu", {"pretrain_iterations": 3000}))
    stages = plan.plan_stages(longer, tmp_path, hippocampus_dir, tmp_path / "datalist.json", plan.BANK_SUBJECTS)
    anatomy = next(s for s in stages if s.name == "pretrain_anatomy")
    assert anatomy.overrides["iterations_per_epoch"] == 80 and anatomy.overrides["num_iterations"] == 1600
    partial = runner.partial_path(anatomy)
    partial.mkdir(parents=True)
    (partial / runner.RESUME_KEY).write_text("{}")  # the key of the shorter run
    lines = extend.extend_pretraining(tmp_path, stages)
    assert lines[0] == "pretrain_anatomy: continued (to 1600 iterations)"
    assert lines[1] == "pretrain_primitives: not started yet (to 1600 iterations)"
    assert json.loads((partial / runner.RESUME_KEY).read_text()) == runner.resume_key(tmp_path, anatomy)


def test_runner_orders_by_prerequisites_and_refuses_missing_ones(tmp_path):
    write = (
        "import pathlib, sys, time\ntime.sleep({})\npathlib.Path(sys.argv[1], 'out.txt').write_text(repr(time.time()))"
    )
    first = python_stage("first", tmp_path / "w" / "first", write.format(0.5), outputs=["out.txt"])
    second = python_stage("second", tmp_path / "w" / "second", write.format(0), outputs=["out.txt"], needs=["first"])
    runner.StageRunner(tmp_path, jobs=2).run([first, second], [second, first])
    assert float((second.root / "out.txt").read_text()) > float((first.root / "out.txt").read_text())

    # a prerequisite that runs again makes its done dependants run again in the same call
    (tmp_path / "stages" / "first.json").unlink()
    stamp = (second.root / "out.txt").read_text()
    runner.StageRunner(tmp_path, jobs=2).run([first, second], [first, second])
    assert (second.root / "out.txt").read_text() != stamp and runner.is_done(tmp_path, second)

    lonely = python_stage("lonely", tmp_path / "w" / "lonely", write.format(0), outputs=["out.txt"], needs=["absent"])
    absent = python_stage("absent", tmp_path / "w" / "absent", write.format(0), outputs=["out.txt"])
    with pytest.raises(RuntimeError, match=r"stage lonely needs stage absent first"):
        runner.StageRunner(tmp_path).run([absent, lonely], [lonely])


def test_read_dice_and_results_table(tmp_path):
    raw = tmp_path / "val_mean_dice_raw.csv"
    raw.write_text("filename\tclass0\tclass1\tmean\ncase_a\t0.8\t0.6\t0.7\ncase_b\t0.6\t0.4\t0.5\n")
    dice = report.read_dice(raw)
    assert dice["class0"] == pytest.approx(0.7) and dice["class1"] == pytest.approx(0.5)
    assert dice["mean"] == pytest.approx(0.6) and dice["cases"] == 2
    (tmp_path / "empty.csv").write_text("filename\tclass0\n")
    with pytest.raises(ValueError, match="no evaluated cases"):
        report.read_dice(tmp_path / "empty.csv")

    def run(mean):
        return {"class0": mean + 0.05, "class1": mean - 0.05, "mean": mean, "cases": 40}

    summary = {
        "class_names": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "results": {"few_shot": {"scratch": {0: run(0.5), 1: run(0.6)}, "anatomy": {0: run(0.7), 1: run(0.8)}}},
    }
    header, rule, scratch, anatomy = report.results_table(summary)
    assert "Dice Anterior" in header and "Dice Posterior" in header
    assert scratch.startswith("| few_shot | scratch | 0,1 | 0.6000 ± 0.0707 |")
    assert anatomy.endswith("| 0.7500 ± 0.0707 | +0.2000 |")

    # columns named by class (a saver given the class names) read and title the same
    raw.write_text("filename,Anterior,label2,mean\ncase_a,0.8,0.6,0.7\ncase_b,0.6,0.4,0.5\n")
    assert report.read_dice(raw) == pytest.approx({"Anterior": 0.7, "label2": 0.5, "mean": 0.6, "cases": 2})
    names = {"1": "Anterior", "2": "Posterior"}
    assert [report.class_title(c, names) for c in ("class0", "label2", "Anterior", "class7")] == [
        "Anterior", "Posterior", "Anterior", "class7",
    ]  # fmt: skip


def test_mean_std_and_bootstrap_interval_on_known_values():
    assert stats.mean_std([0.5, 0.7]) == pytest.approx({"n": 2, "mean": 0.6, "std": 0.1414213562})
    assert stats.mean_std([0.4]) == {"n": 1, "mean": 0.4, "std": None}
    assert stats.bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))  # no spread, no width
    # two values: the resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 95 % interval is [0, 1]
    assert stats.bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    # [0, 0, 1]: a mean of 0 has probability 8/27 > 2.5 %, a mean of 1 has 1/27 > 2.5 %
    assert stats.bootstrap_ci([0.0, 0.0, 1.0]) == (0.0, 1.0)
    assert stats.bootstrap_ci([0.1]) is None
    values = [0.02, 0.05, -0.01, 0.04, 0.03]
    low, high = stats.bootstrap_ci(values)
    assert stats.bootstrap_ci(values) == (low, high)  # fixed generator seed: the same interval every time
    assert min(values) < low < 0.026 < high < max(values)  # around the mean 0.026, inside the range of the values
    assert stats.bootstrap_ci(values, confidence=0.5)[0] > low

    difference = stats.paired_difference({0: 0.7, 1: 0.8, 2: 0.9}, {0: 0.6, 1: 0.6, 3: 0.1})
    assert difference["seeds"] == [0, 1] and difference["differences"] == pytest.approx([0.1, 0.2])
    assert difference["mean"] == pytest.approx(0.15) and difference["ci95"] == pytest.approx([0.1, 0.2])
    assert stats.paired_difference({0: 0.7}, {1: 0.6}) is None


def test_regime_statistics_per_arm_class_and_comparison():
    def runs(means):
        return {seed: {"class0": m + 0.1, "class1": m - 0.1, "mean": m, "cases": 40} for seed, m in enumerate(means)}

    arms = {"scratch": runs([0.5, 0.6, 0.7]), "primitives": runs([0.6, 0.6, 0.6]), "anatomy": runs([0.7, 0.7, 0.8])}
    result = stats.regime_statistics(arms, ["class0", "class1"])
    anatomy = result["arms"]["anatomy"]
    assert anatomy["mean"]["mean"] == pytest.approx(0.7333333) and anatomy["class0"]["mean"] == pytest.approx(0.8333333)
    assert anatomy["mean"]["std"] == pytest.approx(0.0577350)
    assert set(result["differences"]) == {"anatomy-scratch", "anatomy-primitives"}
    versus_scratch = result["differences"]["anatomy-scratch"]
    assert versus_scratch["mean"]["differences"] == pytest.approx([0.2, 0.1, 0.1])
    assert versus_scratch["class1"]["mean"] == pytest.approx(0.1333333)  # per class too
    low, high = versus_scratch["mean"]["ci95"]
    assert 0.1 - 1e-9 <= low < high <= 0.2 + 1e-9
    assert result["bootstrap"] == {"resamples": 10_000, "seed": 0, "confidence": 0.95}
    assert set(stats.regime_statistics({"scratch": arms["scratch"]}, ["class0"])["differences"]) == set()


def test_read_curve_and_seed_average(tmp_path):
    path = tmp_path / "validation_curve.jsonl"
    rounds = [
        {"iteration": 100, "mean_dice": 0.2, "per_class": {"class0": 0.3, "class1": 0.1}},
        {"iteration": 50, "mean_dice": 0.1},
        {"iteration": 100, "mean_dice": 0.25},  # the same round again, after a resume: the later record counts
    ]
    path.write_text("\n".join(json.dumps(r) for r in rounds) + "\n\n")
    assert curves.read_curve(path) == [{"iteration": 50, "mean": 0.1}, {"iteration": 100, "mean": 0.25}]
    path.write_text('{"iteration": 10, "mean": 0.5, "per_class": {"class0": 0.5}}\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=r"validation_curve.jsonl, line 2: expected a JSON object with 'iteration'"):
        curves.read_curve(path)
    runs = {0: [{"iteration": 50, "mean": 0.2}, {"iteration": 100, "mean": 0.4}], 1: [{"iteration": 50, "mean": 0.4}]}
    assert curves.seed_average(runs) == [(50, pytest.approx(0.3), pytest.approx(0.1414213562), 2), (100, 0.4, None, 1)]

    path.write_text(
        '{"iteration": 80, "val_mean_dice": 0.1, "val_foreground_dice": 0.7}\n{"iteration": 160, "mean": 0.2}\n'
    )
    pretrain = curves.read_curve(path)
    assert pretrain == [{"iteration": 80, "mean": 0.1, "foreground": 0.7}, {"iteration": 160, "mean": 0.2}]
    table = report.curve_tables({"curves": {"pretrain": {"anatomy": pretrain}}})
    assert "| anatomy | 80: 0.100 (0.700), 160: 0.200 |" in table


def test_curve_png_is_written_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "figures" / "curve.png"
    panels = {"few_shot": {"scratch": [(50, 0.2, 0.05, 5), (100, 0.4, 0.05, 5)], "anatomy": [(50, 0.3, None)]}}
    assert curves.write_curve_png(target, panels, "Dice") == target
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 1000
    assert [p.name for p in target.parent.iterdir()] == ["curve.png"]  # no temporary file left behind
    with pytest.raises(ValueError, match="no curve to draw"):
        curves.write_curve_png(tmp_path / "empty.png", {"few_shot": {}}, "Dice")
    assert not (tmp_path / "empty.png").exists()


def test_encoder_drift_is_the_relative_change_whole_and_per_part():
    start = {"patch_embed.proj.weight": torch.full((2, 2), 1.0), "layers1.0.qkv.weight": torch.full((4,), 2.0)}
    final = {"patch_embed.proj.weight": torch.full((2, 2), 1.5), "layers1.0.qkv.weight": torch.full((4,), 2.0)}
    change = encoder_drift.relative_change(start, final)
    assert change["patch_embed"] == pytest.approx(0.5) and change["layers1"] == 0.0
    assert change["encoder"] == pytest.approx((4 * 0.25 / (4 * 1.0 + 4 * 4.0)) ** 0.5)
    assert "layers2" not in change
    with pytest.raises(ValueError, match="differ in tensors"):
        encoder_drift.relative_change(start, {"patch_embed.proj.weight": final["patch_embed.proj.weight"]})
    # only the encoder's floating-point tensors count, named without the network's prefix
    state = {"swinViT.layers1.0.attn.index": torch.zeros(3, dtype=torch.long), "swinViT.norm.weight": torch.ones(2),
             "decoder1.conv.weight": torch.ones(2)}  # fmt: skip
    assert list(encoder_drift.encoder_tensors(state)) == ["norm.weight"]
    regimes = ["few_shot", "all"]
    assert encoder_drift.finetune_name("finetune_few_shot_no_anchors_seed12", regimes) == ("few_shot", "no_anchors", 12)
    assert encoder_drift.finetune_name("finetune_all_anatomy_seed0", regimes) == ("all", "anatomy", 0)
    with pytest.raises(ValueError, match="finetune_half_anatomy_seed0: not a fine-tuning of one of the regimes"):
        encoder_drift.finetune_name("finetune_half_anatomy_seed0", regimes)
    parts = ["encoder", *encoder_drift.PARTS]
    runs = [
        {"regime": "few_shot", "arm": "anatomy", "seed": seed, "change": dict.fromkeys(parts, v)}
        for seed, v in ((1, 0.2), (0, 0.1))
    ]
    table = encoder_drift.drift_markdown({"written": "now", "runs": runs}, "cpu")
    assert "## How far did fine-tuning move each encoder? (cpu)" in table
    assert "| few_shot | anatomy | 0, 1 | 0.150 ± 0.071 |" in table


def test_change_from_scratch_counts_only_the_seeds_both_arms_have():
    scratch = {0: {"class0": 0.8, "mean": 0.8}, 1: {"class0": 0.9, "mean": 0.9}}  # seed 1 done only in scratch
    anatomy = {0: {"class0": 0.82, "mean": 0.82}}
    summary = {"results": {"few_shot": {"scratch": scratch, "anatomy": anatomy}}, "class_names": {}}
    rows = report.results_table(summary)
    assert rows[0].endswith("| mean Dice | Δ mean vs scratch, same seeds |")
    assert rows[3] == "| few_shot | anatomy | 0 | 0.8200 | 0.8200 | +0.0200 |"  # not 0.82 - 0.85 over unequal seeds


def test_difference_figure_draws_each_regime_that_has_a_paired_difference(tmp_path):
    pytest.importorskip("matplotlib")
    difference = stats.paired_difference({0: 0.8, 1: 0.7}, {0: 0.75, 1: 0.72})
    statistics_ = {
        "few_shot": {"differences": {"anatomy-scratch": {"mean": difference}}},
        "all": {"differences": {}},  # one arm missing: nothing paired, no panel
    }
    panels = difference_plot.difference_panels(statistics_)
    assert panels["all"] == {} and panels["few_shot"]["anatomy-scratch"]["differences"] == pytest.approx([0.05, -0.02])
    target = tmp_path / "figures" / "differences.png"
    target.parent.mkdir()
    assert difference_plot.write_difference_png(target, panels) == target
    assert target.read_bytes()[:4] == b"\x89PNG" and [p.name for p in target.parent.iterdir()] == [target.name]
    with pytest.raises(ValueError, match="no paired difference to draw"):
        difference_plot.write_difference_png(tmp_path / "empty.png", {"all": {}})
    assert not (tmp_path / "empty.png").exists()


def test_results_hold_statistics_curves_and_figures(tmp_path, hippocampus_dir):
    settings = plan.make_settings("cpu", {"seeds": (0, 1, 2)})
    stages = plan.plan_stages(settings, tmp_path, hippocampus_dir, tmp_path / "datalist.json")
    for arm, offset in (("scratch", 0.0), ("primitives", 0.02), ("anatomy", 0.05)):
        for regime, seeds in (("few_shot", (0, 1, 2)), ("all", (0,))):
            for seed in seeds:
                metrics = tmp_path / "evaluate" / f"{regime}_{arm}_seed{seed}" / "metrics"
                metrics.mkdir(parents=True)
                a, b = 0.6 + offset + 0.01 * seed, 0.5 + offset
                (metrics / "val_mean_dice_raw.csv").write_text(f"filename\tclass0\tclass1\tmean\nc\t{a}\t{b}\t0\n")
                run = tmp_path / "finetune" / f"{regime}_{arm}_seed{seed}" / "runs"
                run.mkdir(parents=True)
                curve = [{"iteration": i, "mean_dice": offset + i / 1000} for i in (100, 200, 300, 400, 500)]
                (run / curves.CURVE_FILE).write_text("".join(json.dumps(r) + "\n" for r in curve))
    pretrain = tmp_path / "pretrain" / "anatomy" / "runs"
    pretrain.mkdir(parents=True)
    (pretrain / curves.CURVE_FILE).write_text('{"iteration": 100, "mean_dice": 0.3}\n')
    commits = (("bank", "3440745" + "0" * 33), ("pretrain_anatomy", "4c1d071" + "0" * 33), ("pretrain_primitives", ""))
    for name, commit in commits:
        record = {"ok": True, "wall_s": 9.0, "iterations": None, "finished": "t", "command": ["x"], "commit": commit}
        record |= {"segments": 3} if name == "pretrain_anatomy" else {}
        record |= {"machine": "CPU: AMD EPYC, 2 cores"} if name == "bank" else {}  # not said before 2026-12-07
        runner.record_path(tmp_path, name).parent.mkdir(parents=True, exist_ok=True)
        runner.record_path(tmp_path, name).write_text(json.dumps(record))
    summary = report.summarise(settings, tmp_path, stages, {"1": "Anterior", "2": "Posterior"})
    summary["commit"] = "abc123"  # the code that wrote the report, not necessarily the one the stages ran
    doc = tmp_path / "docs" / "results.md"
    report.write_results(summary, tmp_path, str(doc))

    written = json.loads((tmp_path / "results.json").read_text())
    assert written["preset"] == "cpu" and written["settings"]["seeds"] == [0, 1, 2]
    few = written["statistics"]["few_shot"]
    assert few["arms"]["anatomy"]["mean"]["mean"] == pytest.approx(0.605)  # (0.65 + 0.01 seed + 0.55) / 2
    assert few["arms"]["anatomy"]["class0"] == pytest.approx({"n": 3, "mean": 0.66, "std": 0.01})
    assert few["differences"]["anatomy-scratch"]["mean"]["differences"] == pytest.approx([0.05] * 3)
    assert few["differences"]["anatomy-primitives"]["mean"]["ci95"] == pytest.approx([0.03, 0.03])
    assert written["statistics"]["all"]["differences"]["anatomy-scratch"]["mean"]["ci95"] is None  # one seed
    assert [p["mean"] for p in written["curves"]["finetune"]["few_shot"]["anatomy"]["2"]] == pytest.approx(
        [0.15, 0.25, 0.35, 0.45, 0.55]
    )
    assert written["curves"]["pretrain"] == {"anatomy": [{"iteration": 100, "mean": 0.3}]}

    page = doc.read_text()
    assert "| few_shot | anatomy-scratch | 3 | 0: +0.0500, 1: +0.0500, 2: +0.0500 | +0.0500 ± 0.0000 |" in page
    assert "| all | anatomy-primitives | 1 |" in page and "n/a (one seed)" in page
    assert "coarse" in page and "10000 resamples" in page
    assert "preset `cpu`" in page and "64^3 patches from a bank at 2.25 mm (144 mm a side)" in page
    ran_at = "The stages ran at commit `3440745` (1 stage), `4c1d071` (1 stage), not recorded (1 stage)"
    ran_on = "on not recorded (2 stages), CPU: AMD EPYC, 2 cores (1 stage)."
    assert f"code commit abc123. {ran_at}, {ran_on}" in page
    assert "| pretrain_primitives |  | 9.0 | t | not recorded | not recorded |" in page
    assert "| bank |  | 9.0 | t | `3440745` | CPU: AMD EPYC, 2 cores |" in page
    assert "| pretrain_anatomy |  | 9.0 (3 segments) | t | `4c1d071` | not recorded |" in page
    if written["figures"]:  # matplotlib present: the figures exist and the pages link them from where they are
        assert written["figures"] == {
            "differences": "paired_differences.png", "finetune": "learning_curve.png", "pretrain": "pretrain_curve.png"
        }  # fmt: skip
        assert (tmp_path / "paired_differences.png").read_bytes()[:4] == b"\x89PNG"
        figure = f"![paired differences between arms](records/{tmp_path.name}/paired_differences.png)"
        differences_at = page.index(figure)
        assert page.index("## Paired differences") < differences_at < page.index("## Learning curves")
        assert (tmp_path / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
        assert f"](records/{tmp_path.name}/learning_curve.png)" in page  # the copy published beside the page
        assert (doc.parent / "records" / tmp_path.name / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
        assert "](learning_curve.png)" in (tmp_path / "results.md").read_text()


def test_a_stage_whose_files_are_gone_runs_again_only_for_a_dependant_not_done(tmp_path, capsys):
    """A fine-tuning whose weights were dropped (a run restored from its records) is not redone while its evaluation
    is done; a new stage that needs it makes it run again, and then everything after it."""
    write = "import pathlib, sys\npathlib.Path(sys.argv[1], 'out.txt').write_text('x')"
    tune = python_stage("tune", tmp_path / "w" / "tune", write, outputs=["out.txt"])
    score = python_stage("score", tmp_path / "w" / "score", write, outputs=["out.txt"], needs=["tune"])
    runner.StageRunner(tmp_path).run([tune, score], [tune, score])
    shutil.rmtree(tune.root)
    records = {name: runner.read_record(tmp_path, name) for name in ("tune", "score")}
    assert not runner.is_done(tmp_path, tune) and runner.is_settled(tmp_path, tune, [tune, score])
    assert not runner.is_settled(tmp_path, tune, [tune]), "a stage no other needs is never intermediate"
    capsys.readouterr()
    runner.StageRunner(tmp_path).run([tune, score], [tune, score])
    assert "skip  tune (done, its files dropped after its dependants ran" in capsys.readouterr().out
    assert not tune.root.exists() and records == {n: runner.read_record(tmp_path, n) for n in records}

    later = python_stage("later", tmp_path / "w" / "later", write, outputs=["out.txt"], needs=["tune"])
    assert not runner.is_settled(tmp_path, tune, [tune, score, later])
    runner.StageRunner(tmp_path).run([tune, score, later], [tune, score, later])
    assert all(runner.is_done(tmp_path, stage) for stage in (tune, score, later))
    assert runner.read_record(tmp_path, "score")["started"] >= runner.read_record(tmp_path, "tune")["finished"]

    (tmp_path / "stages" / "score.json").write_text(json.dumps({**records["score"], "ok": False}))
    shutil.rmtree(tune.root)
    assert not runner.is_settled(tmp_path, tune, [tune, score]), "its dependant failed: it is needed again"


def test_restore_puts_a_run_back_from_its_published_records(tmp_path, hippocampus_dir, shared_data_dir, capsys):
    settings = plan.make_settings("cpu", {"seeds": "0", "pretrain_spacing": 6.0})
    lost = fake_main_run(tmp_path / "lost" / "run", settings)
    stages = plan.plan_stages(settings, lost, hippocampus_dir, lost / "datalist.json")
    write_record(lost, "bank", True, "2026-12-01T10:00:00Z", "2026-12-01T10:01:00Z")
    for name in ("pretrain_anatomy", "pretrain_primitives"):
        write_record(lost, name, True, "2026-12-01T10:02:00Z", "2026-12-01T12:00:00Z")
    # the few-shot scratch pair finished; its fine-tuned weights are not published
    write_record(lost, "finetune_few_shot_scratch_seed0", True, "2026-12-01T12:00:00Z", "2026-12-01T12:30:00Z")
    write_record(lost, "evaluate_few_shot_scratch_seed0", True, "2026-12-01T12:30:00Z", "2026-12-01T12:35:00Z")
    write_dice(lost, "scratch", 0, 0.8, 0.7)
    weights = lost / "finetune" / "few_shot_scratch_seed0" / plan.FINETUNED_WEIGHTS
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    arms = ("scratch", "anatomy")  # the drift of the finished pair, and of one that did not finish
    drift = [{"regime": "few_shot", "arm": arm, "seed": 0, "change": {"encoder": 0.1}} for arm in arms]
    (lost / encoder_drift.DRIFT_FILE).write_text(json.dumps({"written": "then", "runs": drift}))
    doc = tmp_path / "docs" / "results.md"
    records = report.publish_records(lost, doc)
    assert records == tmp_path / "docs" / "records" / "run" and not (records / plan.FINETUNED_WEIGHTS).exists()
    released = {arm: tmp_path / f"released_{arm}.pt" for arm in ("anatomy", "primitives")}
    for arm, path in released.items():
        path.write_bytes(arm.encode())
    subjects = shared_data_dir / "shape_bank_subjects"  # the five subjects; at 6 mm the build takes seconds
    out = tmp_path / "new" / "run"
    arguments = {"dataset_dir": str(hippocampus_dir), "bank_subjects": str(subjects)}

    # refusals name what is wrong and write nothing
    with pytest.raises(SystemExit):  # the command line: one line naming the file, no traceback
        command.main(["restore", "--records", str(tmp_path / "docs"), "--out", str(out)])
    assert "docs/settings.json not found: --records must be a run's published" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"no successful pretrain_fill stage .*pretrain_fill.json"):
        restore.restore(str(records), str(out), f"fill={released['anatomy']}", **arguments)
    with pytest.raises(ValueError, match=r"expected arm=path items"):
        restore.restore(str(records), str(out), str(released["anatomy"]), **arguments)
    with pytest.raises(FileNotFoundError, match=r"dataset.json"):  # the datalist is read before anything is written
        restore.restore(str(records), str(out), **{**arguments, "dataset_dir": str(tmp_path)})
    assert not out.exists()

    encoders = ",".join(f"{arm}={path}" for arm, path in released.items())
    result = restore.restore(str(records), str(out), encoders, **arguments)
    for arm, path in released.items():
        assert (out / "pretrain" / arm / "models" / plan.ENCODER).read_bytes() == path.read_bytes()
        assert result["encoders"][arm]["sha256"] == hashlib.sha256(arm.encode()).hexdigest()
    bank = plan.bank_path(settings, out)
    assert bank.is_file() and result["bank"]["sha256"] == hashlib.sha256(bank.read_bytes()).hexdigest()
    assert (out / "evaluate" / "few_shot_scratch_seed0" / plan.METRICS_FILE).is_file()
    # the datalist is not published but written from the dataset, as `run` writes it: an ablation's --main_run needs it
    assert not (records / "datalist.json").exists()
    expected_list = plan.read_datalist(hippocampus_dir, settings.val_cases)
    assert json.loads((out / "datalist.json").read_text()) == expected_list
    assert all(path.is_file() for path in ablation.main_inputs(settings, out))  # what `ablate` checks it has
    by_name = {stage.name: stage for stage in plan.plan_stages(settings, out, hippocampus_dir, out / "datalist.json")}
    assert not by_name["finetune_few_shot_scratch_seed0"].root.exists()
    expected = ["bank", "pretrain_anatomy", "pretrain_primitives", "finetune_few_shot_scratch_seed0",
                "evaluate_few_shot_scratch_seed0"]  # fmt: skip
    assert result["settled"] == expected and len(result["left"]) == len(stages) - len(expected)
    assert f"stages settled: {len(expected)}" in capsys.readouterr().out
    status = command.status(out=str(out), dataset_dir=str(hippocampus_dir), only="*_few_shot_scratch_seed0")
    assert [p["state"] for p in status["stages"]] == ["done", "done"]
    runner.StageRunner(out).run(list(by_name.values()), [by_name[name] for name in expected])  # starts nothing
    assert not by_name["finetune_few_shot_scratch_seed0"].root.exists()
    # the drift of a fine-tuning whose weights are gone is kept from the records; an unfinished one's is not
    kept = encoder_drift.measure_run(out, list(by_name.values()), list(settings.regimes))["runs"]
    assert kept == drift[:1]

    # published again, the restore log goes with the records; restoring twice is harmless and logged
    report.publish_records(out, doc)
    assert json.loads((records / restore.RESTORED).read_text())[0]["encoders"] == result["encoders"]
    again = restore.restore(str(records), str(out), **arguments)
    assert again["settled"] == expected and len(json.loads((out / restore.RESTORED).read_text())) == 2
    (out / "settings.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"other versions of .*settings.json"):
        restore.restore(str(records), str(out), **arguments)


def test_ablation_publishes_its_encoders_so_that_a_restore_can_fine_tune_from_them(tmp_path, hippocampus_dir):
    cpu = plan.make_settings("cpu", {"seeds": "0"})
    main, out = fake_main_run(tmp_path / "main", cpu), tmp_path / "ablation"
    add_main_encoder(main)
    choices = ablation.AblationSettings(str(main), "fill", (), "0")
    out.mkdir()
    recorded = {"ablation": dataclasses.asdict(choices), "main_settings": dataclasses.asdict(cpu)}
    (out / "settings.json").write_text(json.dumps(recorded))
    write_record(out, "pretrain_fill", True, "2026-12-01T10:00:00Z", "2026-12-01T12:00:00Z")
    encoder = out / "pretrain" / "fill" / "models" / plan.ENCODER
    encoder.parent.mkdir(parents=True)
    encoder.write_bytes(b"fill encoder")
    stages = ablation.ablation_stages(cpu, choices, out, hippocampus_dir)
    doc = tmp_path / "docs" / "results.md"
    ablation.write_results(ablation.summarise(cpu, choices, out, stages, {}, "abc"), out, str(doc))
    records = doc.parent / "records" / "ablation"
    assert (records / "pretrain" / "fill" / "models" / plan.ENCODER).read_bytes() == b"fill encoder"
    assert not (records / "pretrain" / "anatomy").exists(), "the main run's encoder is not the ablation's record"

    restored = tmp_path / "restored" / "ablation"
    result = restore.restore(str(records), str(restored), dataset_dir=str(hippocampus_dir))
    assert (restored / "pretrain" / "fill" / "models" / plan.ENCODER).read_bytes() == b"fill encoder"
    assert result["bank"] is None and result["settled"] == ["pretrain_fill"]


def test_pack_keeps_the_built_bank_and_the_curves(tmp_path):
    files = ["bank/bank_2.25mm.npz", "finetune/a/runs/validation_curve.jsonl", "learning_curve.png", "stages/x.json"]
    for name in [*files, "finetune/a/models/model_final.pt", "pretrain/b.partial/runs/validation_curve.jsonl"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    # without the bank a resume elsewhere would rebuild it, and then redo the pre-trainings that need it
    assert sorted(map(str, pack.lasting_files(tmp_path))) == sorted(files)


def test_run_refuses_bad_settings(tmp_path, hippocampus_dir):
    run = command.run
    dataset = hippocampus_dir
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['pretrain_iteration'\].*--pretrain_iterations"):
        run(out=str(tmp_path / "a"), quick=True, pretrain_iteration=3)
    with pytest.raises(FileNotFoundError, match="dataset.json not found"):
        run(out=str(tmp_path / "b"), quick=True, dataset_dir=str(tmp_path))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            run(out=str(tmp_path / "c"), dataset_dir=str(hippocampus_dir))
    with pytest.raises(ValueError, match="matches no stage"):
        run(out=str(tmp_path / "d"), quick=True, only="nothing_*", dataset_dir=str(hippocampus_dir))
    with pytest.raises(ValueError, match="other settings"):  # the same folder, another recipe
        run(out=str(tmp_path / "d"), quick=True, only="x", finetune_iterations=3, dataset_dir=str(dataset))


def test_only_takes_patterns_as_a_list_or_a_comma_string(tmp_path, hippocampus_dir):
    assert command.only_patterns("bank,pretrain_*") == ["bank", "pretrain_*"]  # quoted: one string
    assert command.only_patterns(("bank", "pretrain_*")) == ["bank", "pretrain_*"]  # unquoted: fire makes a tuple
    assert command.only_patterns("*") == ["*"]
    stages = plan.plan_stages(plan.make_settings("cpu"), tmp_path, hippocampus_dir, tmp_path / "datalist.json")
    names = [stage.name for stage in command.select_stages(stages, "bank,pretrain_*")]
    assert names == ["bank", "pretrain_anatomy", "pretrain_primitives"]
    assert len(command.select_stages(stages, "evaluate_few_shot_*, finetune_all_*")) == 3 * 5 + 3
    with pytest.raises(ValueError, match=r"--only \['banks', 'nothing'\] matches no stage"):
        command.select_stages(stages, "banks,nothing")


def test_help_prints_the_docstring_and_the_settings(capsys):
    command.main(["run", "--help"])  # fire used to take --help for a setting and stop with "unknown setting(s)"
    printed = capsys.readouterr().out
    assert printed.startswith("usage: run_transfer_experiment.py run") and inspect.getdoc(command.run) in printed
    assert "  --seeds: (0,) / (0, 1, 2, 3, 4) / (0,)" in printed and "  --dry_run (default False)" in printed
    command.main(["ablate", "-h"])
    printed = capsys.readouterr().out
    assert "  --main_run (default 'runs/transfer')" in printed and "--seeds:" not in printed


def test_stage_records_name_the_code_commit(tmp_path):
    code = "import pathlib, sys; pathlib.Path(sys.argv[1], 'out.txt').write_text('x')"
    stage = python_stage("make", tmp_path / "make", code, outputs=["out.txt"])
    runner.StageRunner(tmp_path, facts={"commit": "abc123"}).run([stage], [stage])
    assert json.loads((tmp_path / "stages" / "make.json").read_text())["commit"] == "abc123"
    assert command.code_commit(tmp_path) == "unknown"  # not a git checkout
    commit = command.code_commit()
    assert commit == "unknown" or re.fullmatch(r"[0-9a-f]{40}", commit)


def fake_main_run(root: Path, settings: plan.Settings) -> Path:
    """A main run's folder as ``run`` leaves it once started: its settings, datalist and bank."""
    root.mkdir(parents=True)
    (root / "settings.json").write_text(json.dumps(dataclasses.asdict(settings)))
    (root / "datalist.json").write_text("{}")
    (root / "bank").mkdir()
    (root / "bank" / settings.bank_file).write_bytes(b"bank")
    return root


def add_main_encoder(main: Path) -> Path:
    """The main run's anatomy encoder, which the ablation fine-tunes as its full-method reference arm."""
    encoder = main / "pretrain" / "anatomy" / "models" / "model_swinvit.pt"
    encoder.parent.mkdir(parents=True)
    encoder.write_bytes(b"encoder")
    return encoder


def test_ablation_plan_has_the_main_recipe_but_for_the_overlay_or_pool_size(tmp_path, hippocampus_dir):
    cpu = plan.make_settings("cpu")
    main = fake_main_run(tmp_path / "main", cpu)
    main_stages = {s.name: s for s in plan.plan_stages(cpu, main, hippocampus_dir, main / "datalist.json")}
    choices = ablation.AblationSettings(str(main), "no_anchors,no_topology,fill", (100, 1000), "0,1,2")
    assert (choices.arms, choices.pool_sizes, choices.seeds) == (("no_anchors", "no_topology", "fill"), (100, 1000),
                                                                 (0, 1, 2))  # fmt: skip
    out = tmp_path / "ablation"
    stages = ablation.ablation_stages(cpu, choices, out, hippocampus_dir)
    by_name = {stage.name: stage for stage in stages}
    arms = ["no_anchors", "no_topology", "fill", "pool100", "pool1000"]
    assert [stage.name for stage in stages[:5]] == [f"pretrain_{arm}" for arm in arms]
    assert len(stages) == 5 + (2 + 5) * 3 * 2 and "bank" not in by_name  # the main run's bank is reused, not rebuilt
    tunes = [stage.name.removeprefix("finetune_few_shot_") for stage in stages if stage.name.startswith("finetune_")]
    references = ["scratch", "anatomy"]  # fine-tuned here too: every Dice compared comes from one machine and code
    assert tunes == [f"{arm}_seed{seed}" for seed in (0, 1, 2) for arm in references + arms]  # seed-major
    for arm in references:  # exactly the main run's stages, the main run's anatomy encoder included, in this folder
        for seed in (0, 1, 2):
            name = f"finetune_few_shot_{arm}_seed{seed}"
            tune, reference = by_name[name], main_stages[name]
            assert tune.overrides == reference.overrides and tune.needs == [] and tune.root.parent == out / "finetune"
    encoder = str(main / "pretrain" / "anatomy" / "models" / "model_swinvit.pt")
    assert by_name["finetune_few_shot_anatomy_seed1"].overrides["pretrained"] == encoder
    assert "pretrained" not in by_name["finetune_few_shot_scratch_seed1"].overrides

    anatomy = main_stages["pretrain_anatomy"]
    for arm, overlay in (("no_anchors", "no_anchors.json"), ("no_topology", "no_topology.json"), ("fill", "fill.json")):
        stage = by_name[f"pretrain_{arm}"]
        assert stage.overrides == anatomy.overrides and stage.config_files == ["train.json", overlay]
        assert stage.root == out / "pretrain" / arm and stage.needs == [] and stage.resumable
        assert stage.iterations == anatomy.iterations and stage.outputs == anatomy.outputs
    for size in (100, 1000):
        stage = by_name[f"pretrain_pool{size}"]
        assert stage.overrides == {**anatomy.overrides, "pool_size": size} and stage.config_files == ["train.json"]
    assert by_name["pretrain_fill"].overrides["bank"] == str(main / "bank" / "bank_2.25mm.npz")
    command_line = by_name["pretrain_no_topology"].command(out / "x")
    assert json.loads(command_line[command_line.index("--config_file") + 1])[-1].endswith("configs/no_topology.json")

    for arm in arms:  # the main run's few-shot recipe, from the arm's own encoder
        for seed in (0, 1, 2):
            tune = by_name[f"finetune_few_shot_{arm}_seed{seed}"]
            reference = main_stages[f"finetune_few_shot_anatomy_seed{seed}"]
            encoder = str(out / "pretrain" / arm / "models" / "model_swinvit.pt")
            assert tune.overrides == {**reference.overrides, "pretrained": encoder}
            assert tune.overrides["datalist"] == str(main / "datalist.json") and tune.needs == [f"pretrain_{arm}"]
            evaluation = by_name[f"evaluate_few_shot_{arm}_seed{seed}"]
            assert (
                evaluation.needs == [tune.name] and evaluation.root == out / "evaluate" / f"few_shot_{arm}_seed{seed}"
            )
            expected = main_stages[f"evaluate_few_shot_anatomy_seed{seed}"].overrides
            assert evaluation.overrides == {**expected, "checkpoint": str(tune.root / "models" / "model_final.pt")}
    assert "finetune_all_fill_seed0" not in by_name  # few-shot only

    planned = command.ablate(out=str(out), main_run=str(main), jobs=2, seeds="0,1", dataset_dir=str(hippocampus_dir),
                             dry_run=True)  # fmt: skip
    assert planned["stages"][:5] == [f"pretrain_{arm}" for arm in arms] and len(planned["stages"]) == 5 + 7 * 2 * 2
    assert planned["plan"][-1].startswith("estimated wall time: ") and not out.exists()


def test_ablate_refuses_what_would_not_match_the_main_run(tmp_path, hippocampus_dir):
    data = str(hippocampus_dir)
    with pytest.raises(FileNotFoundError, match=r"nowhere/settings.json not found: --main_run must be the folder"):
        command.ablate(out=str(tmp_path / "a"), main_run=str(tmp_path / "nowhere"), dataset_dir=data)
    main = fake_main_run(tmp_path / "main", plan.make_settings("cpu", {"seeds": "0,1,2"}))
    encoder = add_main_encoder(main)
    kwargs = {"main_run": str(main), "dataset_dir": data}
    with pytest.raises(ValueError, match="--preset 'gpu' differs from the main run's preset 'cpu'"):
        command.ablate(out=str(tmp_path / "a"), preset="gpu", **kwargs)
    with pytest.raises(ValueError, match=r"seeds must be few-shot seeds of the main run \(0,1,2\), got '2,5'"):
        command.ablate(out=str(tmp_path / "a"), seeds="2,5", **kwargs)
    with pytest.raises(ValueError, match="arms must be one of 'no_anchors', 'no_topology', 'fill', got 'anchors'"):
        command.ablate(out=str(tmp_path / "a"), arms="anchors,fill", **kwargs)
    with pytest.raises(ValueError, match="pool_sizes must be an integer >= 1, got 0"):
        command.ablate(out=str(tmp_path / "a"), pool_sizes="100,0", **kwargs)

    # the settings are recorded before any stage runs; another choice for the same folder is refused
    out = tmp_path / "ablation"
    with pytest.raises(ValueError, match="matches no stage"):
        command.ablate(out=str(out), only="nothing_*", **kwargs)
    recorded = json.loads((out / "settings.json").read_text())
    assert recorded["ablation"] == {"main_run": str(main), "arms": ["no_anchors", "no_topology", "fill"],
                                    "pool_sizes": [100, 1000], "seeds": [0, 1, 2]}  # fmt: skip
    assert recorded["main_settings"]["preset"] == "cpu"
    assert ablation.AblationSettings(**recorded["ablation"]) == ablation.AblationSettings(str(main))
    with pytest.raises(ValueError, match="other settings"):
        command.ablate(out=str(out), only="nothing_*", pool_sizes="100", **kwargs)
    encoder.unlink()  # the full-method reference arm needs the main run's anatomy encoder
    with pytest.raises(FileNotFoundError, match=r"anatomy/models/model_swinvit.pt'\] not found: run its bank and"):
        command.ablate(out=str(out), only="nothing_*", **kwargs)
    (main / "bank" / "bank_2.25mm.npz").unlink()  # the pre-trainings need the main run's bank
    with pytest.raises(FileNotFoundError, match=r"bank_2.25mm.npz', '.*model_swinvit.pt'\] not found: run its bank"):
        command.ablate(out=str(out), only="nothing_*", **kwargs)


def write_dice(run: Path, arm: str, seed: int, first: float, second: float) -> None:
    metrics = run / "evaluate" / f"few_shot_{arm}_seed{seed}" / "metrics"
    metrics.mkdir(parents=True)
    (metrics / "val_mean_dice_raw.csv").write_text(f"filename\tclass0\tclass1\tmean\nc\t{first}\t{second}\t0\n")


def test_ablation_report_pairs_each_arm_with_the_full_method(tmp_path, hippocampus_dir):
    cpu = plan.make_settings("cpu")
    main, out = fake_main_run(tmp_path / "main", cpu), tmp_path / "ablation"
    choices = ablation.AblationSettings(str(main), seeds=(0, 1, 2))
    offsets = {"scratch": -0.1, "anatomy": 0.0, "no_anchors": -0.05, "no_topology": 0.0, "fill": 0.02, "pool100": -0.04}
    for arm, offset in offsets.items():
        for seed in (0, 1, 2):  # every arm in the ablation's folder, the reference arms too
            # no_topology: + or - 0.01 around the full method, seed by seed; the rest: one offset for every seed
            shift = (0.01 if seed % 2 else -0.01) if arm == "no_topology" else 0.0
            write_dice(out, arm, seed, 0.6 + offset + shift + 0.01 * seed, 0.5 + offset + shift)
    write_dice(main, "anatomy", 0, 0.1, 0.1)  # not read: the main run's folder holds no result of the ablation
    for folder, arm, dice in ((main, "anatomy", 0.4), (out, "no_anchors", 0.3)):
        runs = folder / "pretrain" / arm / "runs"
        runs.mkdir(parents=True)
        rounds = [{"iteration": 400, "mean_dice": dice - 0.1}, {"iteration": 800, "mean_dice": dice}]
        (runs / curves.CURVE_FILE).write_text("".join(json.dumps(r) + "\n" for r in rounds))
    write_record(out, "pretrain_no_anchors", True, "s", "t", machine="CPU: AMD EPYC, 2 cores")
    ran_on = {("anatomy", 0): "Intel Xeon", ("no_anchors", 0): "AMD EPYC", ("scratch", 1): "AMD EPYC"}
    ran_on |= {("no_anchors", 1): "AMD EPYC"}  # seed 1: one machine
    for (arm, seed), cpu_model in ran_on.items():
        write_record(out, f"finetune_few_shot_{arm}_seed{seed}", True, "s", "t", machine=f"CPU: {cpu_model}, 2 cores")
    write_record(out, "finetune_few_shot_fill_seed1", True, "s", "t")  # says no machine: not compared
    stages = ablation.ablation_stages(cpu, choices, out, hippocampus_dir)
    summary = ablation.summarise(cpu, choices, out, stages, {"1": "Anterior", "2": "Posterior"}, "abc123")
    doc = tmp_path / "docs" / "results.md"
    doc.parent.mkdir()
    doc.write_text("# Transfer experiment results\n\nThe main page.\n")
    ablation.write_results(summary, out, str(doc))

    written = json.loads((out / "results.json").read_text())
    assert list(written["results"]["few_shot"]) == [
        "scratch",
        "anatomy",
        "no_anchors",
        "no_topology",
        "fill",
        "pool100",
    ]
    differences = written["statistics"]["few_shot"]["differences"]
    assert set(differences) == {f"{arm}-anatomy" for arm in offsets if arm != "anatomy"}
    assert differences["no_anchors-anatomy"]["mean"]["differences"] == pytest.approx([-0.05] * 3)
    assert differences["no_anchors-anatomy"]["mean"]["ci95"] == pytest.approx([-0.05, -0.05])
    assert differences["no_topology-anatomy"]["mean"]["differences"] == pytest.approx([-0.01, 0.01, -0.01])
    low, high = differences["no_topology-anatomy"]["mean"]["ci95"]
    assert -0.01 - 1e-9 <= low < 0 < high <= 0.01 + 1e-9
    assert differences["scratch-anatomy"]["class1"]["mean"] == pytest.approx(-0.1)
    volume = written["data_volume"]
    assert [(p["pool_size"], p["arm"], p["n"]) for p in volume] == [(100, "pool100", 3), (None, "anatomy", 3)]
    assert volume[0]["mean"] == pytest.approx(0.555 - 0.04) and volume[1]["mean"] == pytest.approx(0.555)
    assert written["pretrain_final"] == {"anatomy": {"iteration": 800, "mean": 0.4, "rounds": 2},
                                         "no_anchors": {"iteration": 800, "mean": 0.3, "rounds": 2}}  # fmt: skip
    assert written["commit"] == "abc123"
    # what has not finished is named: every stage here (none has a record), the reference arms' too
    assert "pretrain_pool1000" in written["unfinished"] and "evaluate_few_shot_pool1000_seed2" in written["unfinished"]
    assert "finetune_few_shot_anatomy_seed0" in written["unfinished"]

    page = doc.read_text()
    assert page.startswith("# Transfer experiment results\n\nThe main page.\n\n<!-- section ablation:")
    assert "| few_shot | no_anchors-anatomy | 3 | 0: -0.0500, 1: -0.0500, 2: -0.0500 | -0.0500 ± 0.0000 |" in page
    assert "Spatial anchors" in page and "without it against 0.5550 with it" in page
    assert "in this run the component helped" in page  # no_anchors: the interval is below 0
    assert "the interval includes 0" in page  # no_topology
    assert "did not help at this budget" in page  # fill: above the full method on every seed
    assert "| 100 | pool100 | 3 |" in page and "| unlimited | anatomy | 3 |" in page
    assert "- pretrain_pool1000" in page and "code commit abc123" in page
    machines = "CPU: AMD EPYC, 2 cores (4 stages), CPU: Intel Xeon, 2 cores (1 stage), not recorded (1 stage)"
    assert f"The stages ran at commit not recorded (6 stages), on {machines}." in page  # each machine is named
    mixed = "Fine-tunings of one seed ran on different machines: few_shot seed 0 (`anatomy` on CPU: Intel Xeon, 2 cores"
    assert f"{mixed}, `no_anchors` on CPU: AMD EPYC, 2 cores)." in page and "few_shot seed 1" not in page
    if written["figure"]:  # matplotlib present
        assert (out / "data_volume_curve.png").read_bytes()[:4] == b"\x89PNG"
        assert "](records/ablation/data_volume_curve.png)" in page  # published beside the page, to be committed
        assert (doc.parent / "records" / "ablation" / "data_volume_curve.png").read_bytes()[:4] == b"\x89PNG"

    # a second write replaces the section; the main run's results become a section of their own, after the rest
    ablation.write_results(summary, out, str(doc))
    assert doc.read_text() == page and page.count("<!-- section ablation:") == 1
    main_summary = report.summarise(cpu, main, [], {"1": "Anterior", "2": "Posterior"})
    report.write_results(main_summary, main, str(doc))
    rewritten = doc.read_text()
    assert rewritten.startswith(page.rstrip()), "the page's own text and the ablation section are kept"
    added = rewritten[len(page.rstrip()) :].lstrip()
    assert added.startswith("<!-- section results_main:") and "\n## Transfer experiment results (main)\n" in added
    assert "\n### Paired differences between arms\n" in added and "\n## Paired" not in added
    report.write_results(main_summary, main, str(doc))
    assert doc.read_text() == rewritten, "written again: the section is replaced in place"


def test_report_writes_the_results_of_a_run_or_an_ablation_and_runs_nothing(tmp_path, hippocampus_dir):
    cpu = plan.make_settings("cpu", {"seeds": "0,1"})
    main, out = fake_main_run(tmp_path / "main", cpu), tmp_path / "ablation"
    for seed in (0, 1):
        write_dice(main, "scratch", seed, 0.6, 0.5)
        write_dice(main, "anatomy", seed, 0.62 + 0.01 * seed, 0.5)
    doc = tmp_path / "results.md"
    with pytest.raises(FileNotFoundError, match="dataset.json not found"):
        command.report(out=str(main), dataset_dir=str(tmp_path))
    running = main / "evaluate" / "few_shot_primitives_seed0.partial" / "metrics"  # a stage not finished
    running.mkdir(parents=True)
    (running / "val_mean_dice_raw.csv").write_text("filename\tclass0\tclass1\tmean\nc\t0.1\t0.1\t0\n")
    summary = command.report(out=str(main), dataset_dir=str(hippocampus_dir), results_doc=str(doc))
    anatomy = summary["statistics"]["few_shot"]["arms"]["anatomy"]["mean"]
    # the records published beside the page rebuild the results alone (a lost run folder loses no result), and hold
    # nothing of an unfinished stage
    published = tmp_path / "records" / "main"
    assert (published / "evaluate" / "few_shot_anatomy_seed1" / plan.METRICS_FILE).is_file()
    assert not list(published.rglob("*.partial"))
    rebuilt = tmp_path / "rebuilt" / "main"
    shutil.copytree(published, rebuilt)
    again = command.report(out=str(rebuilt), dataset_dir=str(hippocampus_dir))
    assert again["results"] == summary["results"] and again["statistics"] == summary["statistics"]
    assert anatomy["n"] == 2 and anatomy["mean"] == pytest.approx(0.5625)
    assert (
        json.loads((main / "results.json").read_text())["statistics"]["few_shot"]["arms"]["anatomy"]["mean"] == anatomy
    )
    assert doc.read_text().startswith("<!-- section results_main:")
    assert "## Transfer experiment results (main)\n\nWritten " in doc.read_text()
    assert not (main / "logs").exists() and not (main / "pretrain").exists(), "a report starts no stage"

    choices = ablation.AblationSettings(str(main), "fill", (), "0,1")
    out.mkdir()
    recorded = {"ablation": dataclasses.asdict(choices), "main_settings": dataclasses.asdict(cpu)}
    (out / "settings.json").write_text(json.dumps(recorded))
    for seed in (0, 1):  # the ablation fine-tunes its reference arms itself: the main run's evaluations are not read
        write_dice(out, "fill", seed, 0.58, 0.5)
        write_dice(out, "anatomy", seed, 0.62 + 0.01 * seed, 0.5)
    summary = command.report(out=str(out), dataset_dir=str(hippocampus_dir), results_doc=str(doc))
    difference = summary["statistics"]["few_shot"]["differences"]["fill-anatomy"]["mean"]["differences"]
    assert difference == pytest.approx([-0.02, -0.025])  # (0.58 + 0.5) / 2 against (0.62 + 0.01 seed + 0.5) / 2
    assert "<!-- section ablation:" in doc.read_text() and (out / "results.json").is_file()


@pytest.mark.slow
def test_quick_experiment_end_to_end(tmp_path, hippocampus_dir):
    out = tmp_path / "transfer"
    doc = tmp_path / "results.md"
    command = [
        sys.executable, str(SCRIPT), "run", "--out", str(out), "--quick", "--jobs", "2",
        "--dataset_dir", str(hippocampus_dir), "--results_doc", str(doc),
    ]  # fmt: skip
    env = {"CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, **env})
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    summary = json.loads((out / "results.json").read_text())
    assert set(summary["results"]) == {"few_shot", "all"}
    for regime, arms in summary["results"].items():
        assert set(arms) == {"scratch", "primitives", "anatomy"}, regime
        for runs in arms.values():
            (dice,) = runs.values()
            classes = [key for key in dice if key not in report.NOT_CLASSES]
            assert len(classes) == 2 and dice["cases"] == 2
            assert all(0.0 <= dice[key] <= 1.0 for key in [*classes, "mean"])
    table = doc.read_text()
    # the page written elsewhere (--results_doc) holds the run's results.md as a section: headings one level down,
    # figure links relative to that page
    links = re.compile(r"\]\(([^)]+\.png)\)")
    section = re.fullmatch(
        r"<!-- section results_transfer: .*?-->\n(.*)<!-- end of section results_transfer -->\n", table, re.S
    )
    expected = report.demote_headings((out / "results.md").read_text())
    expected = expected.replace("## Transfer experiment results", "## Transfer experiment results (transfer)", 1)
    assert links.sub("](FIG)", section[1].rstrip()) == links.sub("](FIG)", expected.rstrip())
    for page in (doc, out / "results.md"):
        figures = links.findall(page.read_text())
        assert figures and all((page.parent / figure).is_file() for figure in figures), page
    # beside the page elsewhere: the run's small records, which its figure links point to (nothing outside its folder)
    published = doc.parent / "records" / "transfer"
    assert all(figure.startswith("records/transfer/") for figure in links.findall(table))
    assert json.loads((published / "results.json").read_text())["results"] == summary["results"]
    stage_records = sorted(p.name for p in (out / "stages").iterdir())
    machines = {json.loads(path.read_text())["machine"] for path in (out / "stages").iterdir()}
    assert machines == {device_name("cpu")} and device_name("cpu") in table  # each record says where it ran
    assert sorted(p.name for p in (published / "stages").iterdir()) == stage_records
    for regime in ("few_shot", "all"):
        for arm in ("scratch", "primitives", "anatomy"):
            assert f"| {regime} | {arm} | 0 |" in table

    # the recorded few-shot subset, and the whole split for the other regime
    few = json.loads((out / "finetune" / "few_shot_anatomy_seed0" / "runs" / "train_cases.json").read_text())
    whole = json.loads((out / "finetune" / "all_anatomy_seed0" / "runs" / "train_cases.json").read_text())
    assert len(few["training"]) == 10 and len(whole["training"]) == 160
    few_names = [Path(case["image"]).name.removesuffix(".nii.gz") for case in few["training"]]
    assert ", ".join(few_names) in table and summary["few_shot_cases"] == few_names

    # each arm starts where it should: the matching pre-trained encoder, or nothing
    logs = out / "logs"
    for kind in ("anatomy", "primitives"):
        encoder = out / "pretrain" / kind / "models" / "model_swinvit.pt"
        assert next(iter(torch.load(encoder, weights_only=True)["state_dict"].values())).dtype == torch.float16
        assert f"from {encoder}: loaded" in (logs / f"finetune_few_shot_{kind}_seed0.log").read_text()
    assert "Pretrained weights" not in (logs / "finetune_few_shot_scratch_seed0.log").read_text()
    # two optimiser steps early in warm-up move weights by about the learning rate: the fine-tuned encoder is still
    # the pre-trained one, far from a fresh random initialisation
    encoder = out / "pretrain" / "anatomy" / "models" / "model_swinvit.pt"
    pretrained = torch.load(encoder, weights_only=True)["state_dict"]["module.patch_embed.proj.weight"].float()
    finetune_root = out / "finetune" / "few_shot_anatomy_seed0"
    finetuned = torch.load(finetune_root / "models" / "model_final.pt", weights_only=True)
    finetuned = finetuned.get("model", finetuned)["swinViT.patch_embed.proj.weight"]
    assert torch.allclose(finetuned, pretrained, atol=2e-3)

    # the fine-tuned network segments through the inference config, on each image's own grid
    (case,) = json.loads((out / "datalist.json").read_text())["validation"][:1]
    overrides = {
        "dataset_dir": hippocampus_dir, "datalist": out / "datalist.json",
        "checkpoint": finetune_root / "models" / "model_final.pt",
    }  # fmt: skip
    inference = _bundles.bundle_command(
        "swin_unetr_finetune", ["inference.json", "msd_hippocampus.json", _bundles.CPU_SMOKE], finetune_root, overrides
    )
    done = subprocess.run(inference, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    name = Path(case["image"]).name.removesuffix(".nii.gz")
    prediction = nib.load(finetune_root / "runs" / "predictions" / f"{name}_seg.nii.gz")
    assert prediction.shape[:3] == nib.load(hippocampus_dir / case["image"]).shape[:3]
    assert set(np.unique(np.asarray(prediction.dataobj)).tolist()) <= {0, 1, 2}

    # each pre-trained network scored on its own synthetic validation samples: the bundle's last validation round
    check = check_pretrain(out=str(out), results_doc=str(doc))
    for kind in ("anatomy", "primitives"):
        (*_, last) = curves.read_curve(out / "pretrain" / kind / "runs" / curves.CURVE_FILE)
        result = check["checks"][kind]
        assert (
            result["class_dice"] == pytest.approx(last["mean"], abs=1e-5) and result["iteration"] == last["iteration"]
        )
        assert result["weights"] == str(out / "pretrain" / kind / "models" / "model.pt")
        assert 0.0 <= result["foreground_dice"] <= 1.0
    assert json.loads((out / "pretrain_check.json").read_text()) == check

    # each fine-tuning's starting encoder rebuilt from its command: two early warm-up steps barely move it, in every
    # arm (a wrong rebuild, such as another seed's random initialisation for scratch, would differ by about 1.4)
    moved = encoder_drift_of(out=str(out), dataset_dir=str(hippocampus_dir), results_doc=str(doc))
    assert {(r["regime"], r["arm"]) for r in moved["runs"]} == {
        (regime, arm) for regime in ("few_shot", "all") for arm in ("scratch", "primitives", "anatomy")
    }
    assert all(0.0 < r["change"]["encoder"] < 0.05 for r in moved["runs"]), moved["runs"]
    assert json.loads((out / encoder_drift.DRIFT_FILE).read_text()) == moved

    # a second run finds every stage done and rewrites the same table, keeping the check's and the drift's sections
    start = time.perf_counter()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert again.returncode == 0 and again.stdout.count("skip ") == 14 and "start " not in again.stdout
    assert time.perf_counter() - start < 60
    assert json.loads((out / "results.json").read_text())["results"] == summary["results"]
    for page in (doc, out / "results.md"):
        text = page.read_text()
        assert "## Did each pre-training learn its synthetic task?" in text
        assert "## How far did fine-tuning move each encoder? (transfer)" in text, page
    assert json.loads((published / encoder_drift.DRIFT_FILE).read_text()) == moved

    # pack what must outlast a lent machine, unpack elsewhere: the next run resumes with nothing left to do
    packed = tmp_path / "packed"
    files = pack.pack(out=str(out), dest=str(packed))
    assert sorted(Path(f).name for f in files) == [
        "anatomy__model_swinvit.pt", "primitives__model_swinvit.pt", "records.tar.gz",
    ]  # fmt: skip
    restored = tmp_path / "restored"
    pack.unpack(src=str(packed), out=str(restored))
    assert (restored / "pretrain" / "anatomy" / "models" / "model_swinvit.pt").is_file()
    assert (restored / "stages" / "pretrain_anatomy.json").is_file()
    stages = plan.plan_stages(
        plan.Settings(**json.loads((restored / "settings.json").read_text()) | {"seeds": (0,)}),
        restored, hippocampus_dir, restored / "datalist.json",
    )  # fmt: skip
    assert runner.is_done(restored, stages[0]) and runner.is_done(restored, stages[1])
    # and its results join a shared page (docs/results.md) as a section of their own, the page's text kept
    shared = tmp_path / "shared_page.md"
    shared.write_text("# Results\n\nThe CPU run's text.\n")
    report_run(out=str(restored), dataset_dir=str(hippocampus_dir), results_doc=str(shared))
    assert json.loads((restored / "results.json").read_text())["results"] == summary["results"]
    assert shared.read_text().startswith("# Results\n\nThe CPU run's text.\n\n<!-- section results_restored:")

    # the ablation on top of this run, from the command line: an overlay arm and a pool arm pre-trained with its
    # recipe, and the reference arms fine-tuned beside them from the same encoders as the run's own arms
    ablation_out = tmp_path / "ablation"
    ablate_command = [
        sys.executable, str(SCRIPT), "ablate", "--out", str(ablation_out), "--main_run", str(out), "--arms", "fill",
        "--pool_sizes", "4", "--seeds", "0", "--jobs", "2", "--dataset_dir", str(hippocampus_dir),
    ]  # fmt: skip
    ablated = subprocess.run(ablate_command, capture_output=True, text=True, timeout=900, env={**os.environ, **env})
    assert ablated.returncode == 0, ablated.stdout[-3000:] + ablated.stderr[-3000:]
    written = json.loads((ablation_out / "results.json").read_text())
    assert list(written["results"]["few_shot"]) == ["scratch", "anatomy", "fill", "pool4"] and not written["unfinished"]
    for arm in ("scratch", "anatomy"):  # the run's own recipe, seed and encoder again: the run's Dice again
        assert written["results"]["few_shot"][arm]["0"]["mean"] == pytest.approx(
            summary["results"]["few_shot"][arm]["0"]["mean"], abs=1e-4
        ), arm
    ablation_logs = ablation_out / "logs"
    main_encoder = out / "pretrain" / "anatomy" / "models" / "model_swinvit.pt"
    assert f"from {main_encoder}: loaded" in (ablation_logs / "finetune_few_shot_anatomy_seed0.log").read_text()
    assert "Pretrained weights" not in (ablation_logs / "finetune_few_shot_scratch_seed0.log").read_text()
    for arm in ("fill", "pool4"):
        encoder = ablation_out / "pretrain" / arm / "models" / "model_swinvit.pt"
        assert f"from {encoder}: loaded" in (ablation_logs / f"finetune_few_shot_{arm}_seed0.log").read_text()
    fill_command = json.loads((ablation_out / "stages" / "pretrain_fill.json").read_text())["command"]
    assert json.loads(fill_command[fill_command.index("--config_file") + 1])[-1].endswith("configs/fill.json")
    assert "> pool_size: 4" in (ablation_logs / "pretrain_pool4.log").read_text()
