"""The transfer experiment (``scripts/run_transfer_experiment.py`` on ``scripts/experiments``): its stage plan, the
generic resumable stage runner, result tables, pack/unpack, and the ``--quick`` CPU run of the whole path through the
real bundles on MSD Hippocampus (pre-train anatomy and primitives, fine-tune from each encoder and from scratch,
evaluate, then segment with the inference config)."""

from __future__ import annotations

import dataclasses
import json
import os
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
from experiments.transfer import command, pack, plan, report

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
    quick = plan.Settings(**plan.quick_settings())
    assert quick.device == pre["device"] == tune["device"] == "cpu"
    assert quick.feature_size == pre["feature_size"] == tune["feature_size"] == 12
    assert [quick.pretrain_patch] * 3 == pre["patch_size"] and [quick.finetune_patch] * 3 == tune["patch_size"]
    assert (quick.pretrain_batch, quick.pretrain_workers) == (pre["batch_size"], pre["num_workers"])
    assert (quick.finetune_batch, quick.finetune_workers) == (tune["batch_size"], tune["num_workers"])
    assert quick.pretrain_iterations == pre["num_iterations"]
    assert quick.finetune_iterations == tune["max_epochs"] * tune["epoch_length"]
    assert quick.use_checkpoint is False and quick.cache_rate == tune["cache_rate"] and quick.val_cases == 2


def test_plan_has_every_arm_regime_and_seed(tmp_path, hippocampus_dir):
    settings = plan.Settings(seeds=(0, 1))
    datalist = plan.write_datalist(hippocampus_dir, tmp_path / "datalist.json", None)
    stages = plan.plan_stages(settings, tmp_path, hippocampus_dir, datalist)
    names = [stage.name for stage in stages]
    assert names[:2] == ["pretrain_anatomy", "pretrain_primitives"]
    assert len(names) == 2 + 2 * len(plan.ARMS) * 2 * 2  # fine-tune + evaluate per regime, arm and seed
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
    assert table == (out / "results.md").read_text()
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

    # a second run finds every stage done and rewrites the same table
    start = time.perf_counter()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert again.returncode == 0 and again.stdout.count("skip ") == 14 and "start " not in again.stdout
    assert time.perf_counter() - start < 60
    assert json.loads((out / "results.json").read_text())["results"] == summary["results"]

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
