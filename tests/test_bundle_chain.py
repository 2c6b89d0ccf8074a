"""The real command-line path end to end, on tiny CPU settings: pre-train (anatomy and primitives) with
``python -m monai.bundle run``, fine-tune swin_unetr_finetune on MSD Hippocampus from the exported encoder, then
evaluate and infer with the fine-tuned network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "bundles" / "anatomy_pretrain" / "configs"
FINETUNE = REPO / "bundles" / "swin_unetr_finetune" / "configs"
TIMEOUT_S = 400


def bundle_command(configs: Path, config_files: list[str], bundle_root: Path, **override) -> list[str]:
    """``python -m monai.bundle run`` with the bundle's metadata and logging files and ``--key value`` overrides."""
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", json.dumps([str(configs / name) for name in config_files]),
        "--meta_file", str(configs / "metadata.json"),
        "--logging_file", str(configs / "logging.conf"),
        "--bundle_root", str(bundle_root),
    ]  # fmt: skip
    for key, value in override.items():
        command += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    return command


def start(command: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, what: str) -> str:
    try:
        log, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        log, _ = process.communicate()
        pytest.fail(f"{what} did not finish in {TIMEOUT_S} s:\n{log[-4000:]}")
    assert process.returncode == 0, f"{what} failed:\n{log[-4000:]}"
    return log


def run_side_by_side(commands: dict[str, list[str]], cwd: Path) -> dict[str, str]:
    """Run independent commands at the same time; return each one's log, failing on the first that fails."""
    processes = {what: start(command, cwd) for what, command in commands.items()}
    try:
        return {what: finish(process, what) for what, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


def write_tiny_datalist(path: Path, dataset_dir: Path) -> dict:
    """Two training cases and one validation case of the fixed split, paths relative to the dataset folder."""
    dataset = json.loads((dataset_dir / "dataset.json").read_text())
    tiny = {"training": dataset["training"][:2], "validation": dataset["validation"][:1]}
    path.write_text(json.dumps(tiny, indent=2))
    return tiny


def test_pretrain_then_finetune_evaluate_infer(tmp_path, hippocampus_dir):
    tiny_pretrain = {
        "device": "cpu",
        "feature_size": 12,
        "patch_size": [64, 64, 64],
        "num_iterations": 1,
        "batch_size": 1,
        "num_workers": 0,
        "val_interval": 2,  # no validation in this 1-epoch run (test_pretrain_bundle.py covers it)
        "use_checkpoint": False,
        "progress_bar": False,
    }
    anatomy, primitives = tmp_path / "anatomy", tmp_path / "primitives"
    pretrainings = {  # independent runs
        "anatomy pre-training": bundle_command(PRETRAIN, ["train.json"], anatomy, **tiny_pretrain),
        "primitives pre-training": bundle_command(
            PRETRAIN, ["train.json", "primitives.json"], primitives, **tiny_pretrain
        ),
    }
    run_side_by_side(pretrainings, tmp_path)
    for root, classes in ((anatomy, 22), (primitives, 33)):
        state = torch.load(root / "models" / "model.pt", weights_only=True)
        assert state["out.conv.conv.weight"].shape[0] == classes
        assert (root / "models" / "model_swinvit.pt").is_file()
        assert (root / "runs" / "checkpoints" / "checkpoint_final.pt").is_file()

    datalist = tmp_path / "datalist.json"
    tiny = write_tiny_datalist(datalist, hippocampus_dir)
    finetune_root = tmp_path / "finetune"
    data = {
        "device": "cpu",
        "dataset_dir": str(hippocampus_dir),
        "datalist": str(datalist),
        "feature_size": 12,
        "patch_size": [64, 64, 64],
        "num_workers": 0,
    }
    encoder = anatomy / "models" / "model_swinvit.pt"
    train = {
        **data,
        "pretrained": str(encoder),
        "transfer": "encoder",
        "max_epochs": 1,
        "epoch_length": 1,
        "val_interval": 1,
        "batch_size": 1,
        "num_samples": 1,
        "cache_rate": 0,
        "use_checkpoint": False,
    }
    finetune = bundle_command(FINETUNE, ["train.json", "msd_hippocampus.json"], finetune_root, **train)
    log = run_side_by_side({"fine-tuning": finetune}, tmp_path)["fine-tuning"]
    assert f"from {encoder}: loaded" in log, "the fine-tuning run did not report loading the pretrained encoder"

    # One optimiser step at the start of warm-up moves weights by about the learning rate at most: the fine-tuned
    # encoder is still the pre-trained one, far from a fresh random initialisation.
    pretrained = torch.load(encoder, weights_only=True)["state_dict"]["module.patch_embed.proj.weight"]
    finetuned = torch.load(finetune_root / "models" / "model_final.pt", weights_only=True)
    finetuned = finetuned.get("model", finetuned)["swinViT.patch_embed.proj.weight"]
    assert finetuned.shape == pretrained.shape and torch.allclose(finetuned, pretrained, atol=1e-3)

    evaluate = ["train.json", "msd_hippocampus.json", "evaluate.json"]
    run_side_by_side(  # both only read the fine-tuned network
        {
            "evaluation": bundle_command(FINETUNE, evaluate, finetune_root, **data, cache_rate=0),
            "inference": bundle_command(FINETUNE, ["inference.json", "msd_hippocampus.json"], finetune_root, **data),
        },
        tmp_path,
    )
    assert "val_mean_dice" in (finetune_root / "runs" / "metrics.csv").read_text()
    case = Path(tiny["validation"][0]["image"]).name.replace(".nii.gz", "")
    prediction = nib.load(finetune_root / "runs" / "predictions" / f"{case}_seg.nii.gz")
    image = nib.load(hippocampus_dir / tiny["validation"][0]["image"])
    assert prediction.shape[:3] == image.shape[:3]
    assert set(int(v) for v in torch.unique(torch.as_tensor(prediction.get_fdata()))) <= {0, 1, 2}
