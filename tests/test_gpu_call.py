"""scripts/device/gpu_call.py, the whole GPU protocol in one call: its plan (budgets that fit 8.5 minutes, refused
settings, the learning-rate schedule, the carried size), what the throughput table decides, the deadline watch over
side-by-side stages, and the ``run --quick`` rehearsal on the CPU through the same code path (deadlines, lockstep,
fine-tunings, evaluations, results table, pack)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import _bundles
import pytest
from _scripts import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "device" / "gpu_call.py"


def call():
    return load_script("device/gpu_call")


def gp():
    return load_script("device/gpu_plan")


# ---------------------------------------------------------------------- plan
def test_plan_fits_eight_and_a_half_minutes_with_a_learning_schedule(capsys):
    plan = call().plan()
    out = capsys.readouterr().out
    assert plan["budget_s"] == 510 and plan["total_s"] <= 510
    deadlines = list(plan["deadlines"].values())
    assert deadlines == sorted(deadlines) and deadlines[-1] == 510  # pack ends the call
    assert list(plan["budgets"]) == list(gp().STAGES) and set(gp().STAGES) <= set(out.split())
    assert "total" in out and "margin" in out and "carried:" in out
    # the pre-training schedule as the bundle builds it: 0 at the start, the peak lr after the warm-up, ~0 at the end
    settings = gp().CallSettings()
    rates = [rate for _, rate in plan["schedule"]]
    assert rates[0] == 0 and max(rates) == pytest.approx(settings.pretrain_lr, rel=0.05) and rates[-1] < 1e-6
    assert gp().check_schedule(plan["schedule"], settings.pretrain_lr, settings.pretrain_warmup) == []
    # what travels: the working tree, the wheels and the Hippocampus copy, under the device tool's 64 MiB
    assert set(plan["carried"]) == {"working tree", ".whl", ".data"}
    assert 5 < plan["carried_mib"] < gp().CARRY_LIMIT_MIB


def test_plan_refuses_settings_that_do_not_fit(capsys):
    with pytest.raises(ValueError, match=r"the stages need 705 s .* over the budget of 510 s"):
        gp().make_settings(pretrain_s=400)
    with pytest.raises(ValueError, match="budget_s must be at most 510"):
        gp().make_settings(budget_s=600)
    with pytest.raises(ValueError, match="pretrain_s .* leaves no training time"):
        gp().make_settings(pretrain_s=40)
    with pytest.raises(ValueError, match="regimes must be a non-empty subset"):
        gp().make_settings(regimes="few_shot,most")
    with pytest.raises(ValueError, match="unknown setting"):
        gp().make_settings(pretrain_seconds=10)
    with pytest.raises(SystemExit) as exit_info:  # the command line: one line, exit status 2
        call().main(["plan", "--finetune_s", "300"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("error: gpu_call: the stages need")
    # text from the command line is parsed as the fields want it
    settings = gp().make_settings(seeds="0,1,2", regimes="few_shot", finetune_patch=[32, 64, 32])
    assert settings.seeds == (0, 1, 2) and settings.regimes == ("few_shot",) and settings.finetune_runs == 9
    assert settings.finetune_patch == (32, 64, 32)


def test_deadlines_let_a_stage_use_what_earlier_stages_left():
    settings = gp().CallSettings()
    budgets, deadlines = settings.budgets(), gp().deadlines(settings)
    assert deadlines["pack"] == settings.budget_s
    for earlier, later in zip(gp().STAGES, gp().STAGES[1:], strict=False):
        assert deadlines[later] - deadlines[earlier] == budgets[later]
    assert gp().training_seconds(100, 45) == 55 and gp().training_seconds(100, 45, cap_s=20) == 20
    assert gp().training_seconds(30, 45) == 1.0


# ---------------------------------------------------------------------- what the throughput table decides
def _table(**variants) -> dict:
    return {"variants": {name: {"status": "ok", **facts} for name, facts in variants.items()}}


def test_throughput_decides_batch_iterations_and_cudnn():
    settings = gp().CallSettings()
    table = _table(
        fp32={"it_per_s": 1.0, "samples_per_s": 4.0, "gpu_peak_reserved_mib": 60000},
        bf16={"it_per_s": 2.0, "samples_per_s": 8.0, "gpu_peak_reserved_mib": 40000},
        bf16_cudnn={"it_per_s": 2.5, "samples_per_s": 10.0, "gpu_peak_reserved_mib": 44000},
    )
    assert gp().cudnn_benchmark_wins(table)
    assert not gp().cudnn_benchmark_wins(_table(bf16={"it_per_s": 2.0}, bf16_cudnn={"it_per_s": 2.01}))
    assert not gp().cudnn_benchmark_wins({"variants": {"bf16": {"status": "skipped: needs CUDA"}}})
    assert gp().amp_peak_mib(table) == 44000  # the bf16 variants only
    # two arms in 85 % of 139 GiB: 44000 MiB at batch 4 is 11000 per sample, so batch 4 fits; 70000 MiB does not
    assert gp().fit_batch(4, 44000, 142000, 2, 0.85) == 4
    assert gp().fit_batch(4, 70000, 142000, 2, 0.85) == 3
    assert gp().fit_batch(4, 900000, 142000, 2, 0.85) == 1 and gp().fit_batch(4, None, 142000, 2, 0.85) == 4
    # 10 samples/s at batch 4 = 2.5 it/s, x 0.45 for two arms on one GPU, x 200 s = 225, a multiple of 5 rounds
    iterations, source = gp().estimate_iterations(settings, table, 200, 4, True)
    assert iterations == 225 and source.startswith("bf16_cudnn")
    assert gp().estimate_iterations(settings, table, 200, 2, True)[0] == 450  # same samples/s at half the batch
    assert gp().estimate_iterations(settings, None, 200, 4, True) == (600, "fallback: no bf16 throughput measured")
    big = gp().estimate_iterations(settings, table, 2000, 4, can_stop_at_deadline=False)
    assert big == (600, "fallback: the bundle has no max_train_seconds")
    assert gp().warmup(50, 225) == 22 and gp().warmup(50, 5000) == 50 and gp().warmup(50, 3) == 1


def test_schedule_check_and_returned_files(tmp_path):
    good = [(0, 0.0), (10, 1e-3), (50, 5e-4), (100, 0.0)]
    assert gp().check_schedule(good, 1e-3, 10) == []
    problems = gp().check_schedule([(0, 0.0), (10, 1e-3), (50, 8e-4), (100, 9e-4)], 1e-3, 10)
    assert any("not ~0" in p for p in problems) and any("rises" in p for p in problems)
    files = []
    for i in range(9):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(b"\0" * (17 * 2**20 if i == 0 else 10))
    problems = gp().check_returned(files)
    assert problems[0] == "9 files, over the 8 that come back" and "f0 is 17.0 MiB" in problems[1]
    assert gp().check_returned(files[1:]) == []


def test_cudnn_override_keeps_the_bundle_run_list():
    override = gp().cudnn_benchmark_override(_bundles.FINETUNE, ["train.json", "msd_hippocampus.json", "evaluate.json"])
    assert override == {"run": [gp().CUDNN_BENCHMARK, "$@evaluator.run()"]}
    override = gp().cudnn_benchmark_override(_bundles.PRETRAIN, ["train.json"])
    assert override["run"][0] == gp().CUDNN_BENCHMARK and override["run"][1:] == ["$@train#trainer.run()"]


# ---------------------------------------------------------------------- deadlines over side-by-side stages
def sleeper_alive(pid: int) -> bool:
    """Whether ``pid`` is still the test's sleeping child (not gone, not a zombie, not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return b"time.sleep(600)" in cmdline and state != "Z"


def test_side_by_side_stages_are_killed_at_the_deadline_with_their_children(tmp_path):
    module = call()
    quick = 'import pathlib, sys; (pathlib.Path(sys.argv[-1]) / "done.txt").write_text("ok")'
    # a stage that hangs, holding a child process (a DataLoader worker, say)
    hang = (
        "import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])"
    )
    hang += "; open(sys.argv[-1] + '/child', 'w').write(str(child.pid)); time.sleep(600)"
    stages = [
        module.CommandStage("fast", tmp_path / "fast", ["done.txt"], argv=[sys.executable, "-c", quick]),
        module.CommandStage("hang", tmp_path / "hang", ["done.txt"], argv=[sys.executable, "-c", hang]),
        module.CommandStage("after", tmp_path / "after", [], ["hang"], argv=[sys.executable, "-c", quick]),
    ]
    began = time.time()
    outcomes = module.run_side_by_side(tmp_path, stages, stages, dict(os.environ), time.time() + 8)
    assert time.time() - began < 30
    assert outcomes["fast"] == "ok" and outcomes["hang"] == "killed at deadline"
    assert outcomes["after"].startswith("failed: stage after needs stage hang first")
    assert (tmp_path / "fast" / "done.txt").read_text() == "ok"
    record = json.loads((tmp_path / "stages" / "hang.json").read_text())
    assert record["ok"] is False and record["returncode"] == -9
    assert not sleeper_alive(int((tmp_path / "hang.partial" / "child").read_text()))  # its child was killed too
    assert module.stage_folder(stages[1]) == tmp_path / "hang.partial"


def test_smoke_stage_is_torchrun_with_nccl_config(tmp_path):
    settings = gp().make_settings(quick=True)
    gpu_call = call().Call(settings, tmp_path, tmp_path / "packed", tmp_path, time.time())
    command = gpu_call.smoke_stage().command()
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    assert json.loads(command[command.index("--config_file") + 1])[-1].endswith("multi_gpu_train.json")
    assert command[command.index("--amp") + 1] == "True" and command[command.index("--amp_dtype") + 1] == "float16"
    gpu_call.record["machine"] = {"gpu_total_mib": None, "nccl": False}
    assert gpu_call.smoke_skip_reason().startswith("skipped: no CUDA device")


# ---------------------------------------------------------------------- the quick rehearsal of the one call
@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, hippocampus_dir):
    """``gpu_call.py run --quick`` as the device command runs it (a subprocess), into a fresh folder."""
    root = tmp_path_factory.mktemp("gpu_call")
    out, dest = root / "call", root / "OUT"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("OUT", None)
    command = [sys.executable, str(SCRIPT), "run", "--quick", "--out", str(out), "--dest", str(dest)]
    began = time.time()
    result = subprocess.run(
        [*command, "--dataset_dir", str(hippocampus_dir)], env=env, capture_output=True, text=True, cwd=root
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    record = json.loads((dest / "gpu_call.json").read_text())
    return {"out": out, "dest": dest, "record": record, "stdout": result.stdout, "wall": time.time() - began}


@pytest.mark.slow
def test_rehearsal_packs_what_comes_back(rehearsal):
    dest, record = rehearsal["dest"], rehearsal["record"]
    files = sorted(dest.iterdir())
    assert sorted(p.name for p in files) == sorted(call().PACKED) == sorted(record["packed"])
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files) and record["return_problems"] == []
    assert record["elapsed_s"] <= record["settings"]["budget_s"]  # the call ended inside its budget
    statuses = {stage: facts["status"] for stage, facts in record["stages"].items()}
    assert list(statuses) == list(gp().STAGES)
    assert statuses["pretrain"] == "ok" and statuses["finetune"] == statuses["evaluate"] == "3 of 3 ok"
    assert statuses["smoke"].startswith("skipped: no CUDA device")  # the CPU builds the torchrun command only
    assert "torch.distributed.run" in record["stages"]["smoke"]["command"]
    # the throughput table: fp32 measured, the CUDA variants (bf16 autocast, cuDNN autotuning) skipped on a CPU
    table = json.loads((dest / "throughput.json").read_text())
    assert table["variants"]["fp32"]["status"] == "ok" and 0 <= table["variants"]["fp32"]["data_wait_fraction"] <= 1
    assert table["variants"]["bf16_cudnn"]["status"].startswith("skipped: needs CUDA")
    # the records: stage records, logs and the training summaries travel in the tar
    with tarfile.open(dest / "records.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"stages/pretrain_anatomy.json", "logs/pretrain_primitives.log", "results.md"} <= names
    assert "pretrain/anatomy/runs/train_summary.json" in names


@pytest.mark.slow
def test_rehearsal_pretrainings_stop_at_the_deadline_in_lockstep(rehearsal):
    pretrain = rehearsal["record"]["pretrain"]
    if not pretrain["deadline_supported"]:
        pytest.skip("the pre-training bundle has no max_train_seconds/pace_dir keys yet: nothing stops at a deadline")
    recipe = pretrain["recipe"]
    assert recipe["iterations"] == 1000 and 0 < recipe["max_train_seconds"] <= 20  # the deadline, not 1000, stops
    assert recipe["schedule_problems"] == [] and recipe["schedule"][0] == [0, 0.0]
    assert recipe["cudnn_benchmark"] is True  # set in the rehearsal: the `run` override path runs on the CPU too
    command = json.loads((rehearsal["out"] / "stages" / "pretrain_anatomy.json").read_text())["command"]
    assert gp().CUDNN_BENCHMARK in command[command.index("--run") + 1]
    reached = pretrain["iterations"]
    assert pretrain["equal_iterations"] and reached["anatomy"] == reached["primitives"] >= 1
    for arm, facts in pretrain["arms"].items():
        assert facts["summary"]["stopped_by"] == "deadline" and facts["encoder"], arm
        # a validation round ends every epoch (1 iteration) but the one the deadline cut short
        assert len(facts["validation_curve"]) >= reached[arm] - 1
        assert facts["validation_dice"] is None or 0 <= facts["validation_dice"] <= 1
    assert (rehearsal["out"] / "pace" / "pretrain" / "stop_at.json").is_file()


@pytest.mark.slow
def test_rehearsal_finetunes_evaluates_and_writes_the_table(rehearsal):
    record = rehearsal["record"]
    runs = record["finetune"]["runs"]
    assert set(runs) == {f"few_shot_{arm}_seed0" for arm in ("scratch", "primitives", "anatomy")}
    assert {summary["iterations"] for summary in runs.values()} == {2}  # the same iterations in every arm
    table = record["results_table"]
    assert table[0].startswith("| regime | arm |") and len(table) == 2 + 3
    assert [row.split("|")[2].strip() for row in table[2:]] == ["scratch", "primitives", "anatomy"]
    assert all(row in (rehearsal["dest"] / "results.md").read_text() for row in table)
