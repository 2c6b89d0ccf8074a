"""``check_pretrain``'s pieces (``scripts/experiments/transfer/synthetic_check.py``): the Dice scores against known
maps and MONAI's ``MeanDice`` reduction, the recorded bundle command read back, and which pre-trainings and weights a
run folder offers. The check of real pre-trainings runs in ``test_transfer_experiment``'s quick run."""

from __future__ import annotations

import json
from pathlib import Path

import _bundles
import pytest
import torch
from experiments import runner
from experiments.transfer import synthetic_check
from monai.metrics import DiceMetric


def test_dice_scores_separate_finding_the_shapes_from_naming_them():
    label = torch.zeros(8, 8, 8, dtype=torch.long)
    label[1:4, 1:4, 1:4] = 1
    label[5:8, 5:8, 5:8] = 2

    perfect = synthetic_check.dice_scores(label.clone(), label, num_classes=4)
    assert perfect == {"per_class": {"1": 1.0, "2": 1.0}, "foreground": 1.0, "volume_ratio": 1.0}

    swapped = synthetic_check.dice_scores(torch.where(label > 0, 3 - label, 0), label, num_classes=4)
    assert swapped["per_class"] == {"1": 0.0, "2": 0.0} and swapped["foreground"] == 1.0

    half = label.clone()
    half[5:8, 5:8, 5:8] = 0  # class 2 missed: 27 of 54 foreground voxels found
    scores = synthetic_check.dice_scores(half, label, num_classes=4)
    assert scores["per_class"] == {"1": 1.0, "2": 0.0}
    assert scores["foreground"] == pytest.approx(2 * 27 / (27 + 54)) and scores["volume_ratio"] == 0.5

    empty = synthetic_check.dice_scores(label, torch.zeros_like(label), num_classes=4)
    assert empty == {"per_class": {}, "foreground": None, "volume_ratio": None}
    with pytest.raises(ValueError, match=r"prediction \(8, 8, 8\) and label \(8, 8, 4\)"):
        synthetic_check.dice_scores(label, label[..., :4], num_classes=4)


def test_class_dice_is_reduced_as_monai_mean_dice():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (3, 6, 6, 6), generator=generator)
    labels[2][labels[2] == 3] = 0  # one sample without class 3
    predictions = torch.where(torch.rand(labels.shape, generator=generator) < 0.7, labels, 1)
    samples = [synthetic_check.dice_scores(p, lab, num_classes=4) for p, lab in zip(predictions, labels, strict=True)]
    summary = synthetic_check.summarise_scores(samples)

    one_hot = [torch.nn.functional.one_hot(x, 4).movedim(-1, 1) for x in (predictions, labels)]
    for reduction, ours in (("mean", [summary["class_dice"]]), ("mean_batch", list(summary["per_class"].values()))):
        metric = DiceMetric(include_background=False, reduction=reduction, ignore_empty=True)
        metric(*one_hot)
        assert ours == pytest.approx(metric.aggregate().reshape(-1).tolist(), abs=1e-6), reduction
    assert summary["samples"] == 3 and 0 < summary["foreground_dice"] < 1


def test_recorded_bundle_command_reads_back_as_files_and_typed_overrides(tmp_path):
    overrides = {
        "patch_size": [64, 64, 64], "use_checkpoint": False, "learning_rate": 0.003, "feature_size": 12,
        "bank": str(tmp_path / "bank.npz"), "amp_dtype": "float16", "placement_options": {"use_anchors": False},
    }  # fmt: skip
    command = _bundles.bundle_command(_bundles.PRETRAIN, ["train.json", "primitives.json"], tmp_path, overrides)
    files, parsed = _bundles.parse_bundle_command(command)
    assert files == _bundles.config_files(_bundles.PRETRAIN, ["train.json", "primitives.json"])
    assert parsed == overrides | {"bundle_root": str(tmp_path)}

    parser = synthetic_check.bundle_parser(command)
    assert parser["patch_size"] == [64, 64, 64] and parser["synth"]["_target_"].endswith("RandPrimitiveSynthd")
    with pytest.raises(ValueError, match="not a 'monai.bundle run' command"):
        _bundles.parse_bundle_command(["python", "-m", "synth_transforms", "bank", "build"])
    with pytest.raises(ValueError, match="'--key value' pairs"):
        _bundles.parse_bundle_command([*command, "--dangling"])


def test_run_folder_offers_finished_and_running_pretrainings(tmp_path):
    with pytest.raises(FileNotFoundError, match="no pre-training folder"):
        synthetic_check.pretrain_runs(tmp_path)
    finished, running = tmp_path / "pretrain" / "anatomy", tmp_path / "pretrain" / "primitives.partial"
    finished.mkdir(parents=True)
    (running / "runs" / "checkpoints").mkdir(parents=True)
    record = {"ok": True, "command": ["python", "-m", "monai.bundle", "run", "--config_file", "a.json"]}
    runner.record_path(tmp_path, "pretrain_anatomy").parent.mkdir()
    runner.record_path(tmp_path, "pretrain_anatomy").write_text(json.dumps(record))
    (running / runner.RESUME_KEY).write_text(json.dumps({"command": ["started", "with"], "needs": {}}))
    runs = synthetic_check.pretrain_runs(tmp_path)
    assert runs == {"anatomy": (finished, record["command"]), "primitives": (running, ["started", "with"])}

    with pytest.raises(FileNotFoundError, match="neither models/model.pt nor runs/checkpoints"):
        synthetic_check.network_weights(running)
    for epoch in (2, 1):  # the latest checkpoint (by its trainer's iteration), whatever the order of the files
        torch.save({"trainer": {"iteration": 80 * epoch}}, running / "runs" / "checkpoints" / f"checkpoint_{epoch}.pt")
    newest = running / "runs" / "checkpoints" / "checkpoint_2.pt"
    assert synthetic_check.network_weights(running) == (newest, 160)
    (finished / "models").mkdir()
    torch.save({}, finished / "models" / "model.pt")
    assert synthetic_check.network_weights(finished) == (finished / "models" / "model.pt", None)
    with pytest.raises(ValueError, match=r"no pre-training named \['fill'\]"):
        synthetic_check.check_run(tmp_path, names=["fill"])


def test_markdown_names_each_pretraining_and_marks_missing_values():
    check = {"iteration": 480, "samples": 16, "class_dice": 0.1496, "foreground_dice": None,
             "foreground_volume_ratio": 0.72, "per_class": {"1": 0.0, "6": 0.55, "21": 0.64, "9": 0.1, "4": 0.02},
             "class_names": {"1": "spleen", "6": "liver", "21": "spine", "9": "inferior_vena_cava"}}  # fmt: skip
    text = synthetic_check.check_markdown({"written": "2026-12-01T18:00:00Z", "checks": {"anatomy": check}}, "cpu run")
    row = "| anatomy | 480 | 16 | 0.150 | n/a | 0.720 | spine 0.64, liver 0.55, inferior_vena_cava 0.10 | 2 of 5 |"
    assert row in text and text.startswith("## Did each pre-training learn its synthetic task? (cpu run)\n")
    assert synthetic_check.section_name(Path("/runs/transfer-cpu.2")) == "pretrain_check_transfer_cpu_2"
