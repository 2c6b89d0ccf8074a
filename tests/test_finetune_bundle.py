"""Tests of the `swin_unetr_finetune` bundle and the library code it wires: pretrained loading, datalists, checks.

The workflows run with the bundle's CPU smoke overlay (``configs/cpu_smoke.json``: feature_size 12, 64^3 patches, batch
1) for one iteration on real MSD Hippocampus cases listed in datalists the tests write, plus small synthetic NIfTI
files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import _bundles
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from _bundle_utils import check_bundle_metadata, run_command
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle import download_large_files as monai_download_large_files
from monai.networks.nets import SwinUNETR, UNet
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from synth_transforms.checks import CheckLabelClasses, CheckLabelClassesd
from synth_transforms.datalists import load_decathlon_split, select_cases
from synth_transforms.export import export_encoder
from synth_transforms.pretrained import load_pretrained

BUNDLE = _bundles.FINETUNE
CONFIGS = BUNDLE / "configs"
TRAIN = str(CONFIGS / "train.json")
SMOKE = _bundles.CPU_SMOKE


def smoke_workflow(names: list[str], workflow_type: str, **overrides) -> ConfigWorkflow:
    """The workflow of the config files ``names`` plus the MSD Hippocampus preset and the CPU smoke overlay."""
    root = overrides.pop("bundle_root", None)
    return _bundles.bundle_workflow(BUNDLE, [*names, "msd_hippocampus.json", SMOKE], root, workflow_type, **overrides)


def _tiny_datalist(path: Path, hippocampus_dir: Path, n_train: int = 2, n_val: int = 1) -> Path:
    """Write a dataset.json listing the first cases of the shared Hippocampus lists (paths relative to it)."""
    full = json.loads((hippocampus_dir / "dataset.json").read_text())
    path.write_text(json.dumps({"training": full["training"][:n_train], "validation": full["validation"][:n_val]}))
    return path


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def _swin(out_channels: int = 3, feature_size: int = 12) -> SwinUNETR:
    return SwinUNETR(in_channels=1, out_channels=out_channels, feature_size=feature_size)


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and its chain of causes (config instantiation wraps the original error)."""
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


# ----------------------------------------------------------------------------------------------- bundle workflows


@pytest.fixture(scope="module")
def trained(tmp_path_factory, hippocampus_dir):
    """Fine-tune once with the Hippocampus preset from an encoder-only file; later tests reuse the checkpoint."""
    root = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    source = _swin(out_channels=8)
    torch.save(source.swinViT.state_dict(), root / "model_swinvit.pt")
    datalist = _tiny_datalist(root / "dataset.json", hippocampus_dir)
    overrides = {
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(hippocampus_dir),
        "datalist": str(datalist),
        "output_dir": str(root / "runs"),
        "ckpt_dir": str(root / "models"),
        "max_epochs": 1,
        "epoch_length": 1,
        "val_interval": 1,
        "pretrained": str(root / "model_swinvit.pt"),
        "transfer": "encoder",
    }
    workflow = smoke_workflow(["train.json"], "train", **overrides)
    workflow.initialize()
    missing = workflow.check_properties()
    network = workflow.trainer.network  # the instance the trainer optimises
    before = {k: v.clone() for k, v in network.state_dict().items()}
    workflow.run()
    workflow.finalize()
    return {
        "root": root,
        "datalist": datalist,
        "overrides": overrides,
        "missing": missing,
        "before": before,
        "source": source.state_dict(),
        "metrics": dict(workflow.parser.get_parsed_content("validate#evaluator").state.metrics),
    }


def test_train_workflow_loads_pretrained_and_saves(trained):
    assert trained["missing"] == []
    # the trainer's network started from the encoder file: every swinViT tensor equals the source tensor
    swin_names = [k for k in trained["before"] if k.startswith("swinViT.")]
    assert len(swin_names) == 126
    for name in swin_names:
        assert torch.equal(trained["before"][name], trained["source"][name]), name
    models = trained["root"] / "models"
    assert (models / "model.pt").is_file() and (models / "model_final.pt").is_file()
    state = torch.load(models / "model.pt", weights_only=True)
    assert state["out.conv.conv.weight"].shape[0] == 3  # preset: background + anterior + posterior
    assert 0.0 <= trained["metrics"]["val_mean_dice"] <= 1.0
    record = json.loads((trained["root"] / "runs" / "train_cases.json").read_text())
    assert [c["image"] for c in record["training"]] == [
        c["image"].lstrip("./") for c in json.loads(trained["datalist"].read_text())["training"]
    ]
    assert list((trained["root"] / "runs").glob("events.out.tfevents.*"))
    summary = json.loads((trained["root"] / "runs" / "train_summary.json").read_text())
    assert summary["iterations"] == 1 and summary["stopped_by"] == "iterations"
    (line,) = [json.loads(x) for x in (trained["root"] / "runs" / "validation_curve.jsonl").read_text().splitlines()]
    assert line["iteration"] == 1 and line["val_mean_dice"] == pytest.approx(
        trained["metrics"]["val_mean_dice"], abs=1e-6
    )
    assert set(line["per_class"]) == {"1", "2"}  # anterior, posterior


def test_evaluate_workflow_writes_per_class_metrics(trained, hippocampus_dir):
    out = trained["root"] / "eval"
    overrides = {**trained["overrides"], "output_dir": str(out)}
    workflow = smoke_workflow(["train.json", "evaluate.json"], "eval", **overrides)
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    evaluator = workflow.evaluator
    saved = torch.load(trained["root"] / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in evaluator.network.state_dict().items())
    metrics = evaluator.state.metrics
    assert set(metrics["val_dice_per_class"]) == {"dice_class1", "dice_class2"}
    summary = dict(line.split(",") for line in (out / "metrics.csv").read_text().splitlines())
    assert set(summary) == {"val_mean_dice", "val_hd95"}
    assert 0.0 <= float(summary["val_mean_dice"]) <= 1.0
    rows = (out / "val_mean_dice_raw.csv").read_text().splitlines()
    header = rows[0].split(",")  # one column per foreground class, named by MONAI or by the evaluate config
    assert header[0] == "filename" and header[-1] == "mean" and len(header) == 4
    validation_image = json.loads(trained["datalist"].read_text())["validation"][0]["image"]
    assert len(rows) == 2 and rows[1].startswith(str(hippocampus_dir / validation_image.lstrip("./")))
    assert (out / "val_hd95_summary.csv").is_file()


def test_inference_workflow_writes_on_input_grid(trained, tmp_path, hippocampus_dir):
    # a non-RAS, anisotropic input: the prediction must come back on exactly this grid
    affine = np.array([[-1.3, 0, 0, 40.0], [0, -0.8, 0, 25.0], [0, 0, 1.6, -12.0], [0, 0, 0, 1]])
    image = _write_nifti(tmp_path / "case_a.nii.gz", np.random.default_rng(0).random((30, 44, 22), np.float32), affine)
    datalist = tmp_path / "infer.json"
    datalist.write_text(json.dumps({"test": [image.name]}))
    overrides = {
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(tmp_path),
        "datalist": str(datalist),
        "infer_split": "test",
        "output_dir": str(tmp_path / "out"),
        "ckpt_dir": str(trained["root"] / "models"),
    }
    workflow = smoke_workflow(["inference.json"], "infer", **overrides)
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    pred = nib.load(str(tmp_path / "out" / "predictions" / "case_a_seg.nii.gz"))
    assert pred.shape == (30, 44, 22)
    np.testing.assert_allclose(pred.affine, affine, atol=1e-4)
    assert pred.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2}


def test_cli_torchrun_multi_gpu_full_transfer_few_shot(tmp_path, hippocampus_dir):
    """The real CLI (`monai.bundle run` under torchrun, 2 processes, Gloo) with whole-network weights, few-shot."""
    torch.manual_seed(1)
    torch.save({"network": _swin(out_channels=8).state_dict()}, tmp_path / "full.pt")  # ignite CheckpointSaver style
    datalist = _tiny_datalist(tmp_path / "dataset.json", hippocampus_dir, n_train=3, n_val=2)
    overrides = {
        "dataset_dir": hippocampus_dir, "datalist": datalist, "output_dir": tmp_path / "runs",
        "ckpt_dir": tmp_path / "models", "pretrained": tmp_path / "full.pt", "transfer": "full",
        "num_train_cases": 2, "subset_seed": 5, "epoch_length": 1, "val_interval": 1,
    }  # fmt: skip
    configs = ["train.json", "multi_gpu_train.json", "msd_hippocampus.json", SMOKE]  # the overlay picks the CPU
    command = _bundles.bundle_command(BUNDLE, configs, BUNDLE, overrides, nproc=2)
    result = run_command(command, cwd=BUNDLE, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-4000:]
    assert "loaded 157 of 159 network tensors" in result.stdout
    assert "Skipped 2 output-layer tensor(s)" in result.stdout
    record = json.loads((tmp_path / "runs" / "train_cases.json").read_text())
    expected = select_cases(json.loads(datalist.read_text())["training"], num_cases=2, seed=5)
    assert record["available"] == 3 and record["seed"] == 5
    assert [c["image"] for c in record["training"]] == [c["image"].lstrip("./") for c in expected]
    assert (tmp_path / "models" / "model.pt").is_file() and (tmp_path / "models" / "model_final.pt").is_file()
    # TensorBoard writers exist on rank 0 only: every event file comes from one process
    events = list((tmp_path / "runs").glob("events.out.tfevents.*"))
    assert len(events) == 2 and len({e.name.split(".")[-2] for e in events}) == 1


def test_verify_net_in_out_cli():
    shape = {
        "device": "cpu",  # an argument of verify_net_in_out itself
        "_meta_#network_data_format#inputs#image#spatial_shape": [64, 64, 64],
        "_meta_#network_data_format#outputs#pred#num_channels": 3,
    }
    configs = ["train.json", "msd_hippocampus.json", SMOKE]
    command = _bundles.bundle_command(BUNDLE, configs, None, shape, subcommand=["verify_net_in_out", "network_def"])
    result = run_command(command, cwd=BUNDLE)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "data shape of network is verified with no error" in result.stdout


def test_ckpt_export_trace_matches_eager(trained, tmp_path):
    ts_path = tmp_path / "model.ts"
    ckpt = trained["root"] / "models" / "model.pt"
    export = {
        "filepath": ts_path, "ckpt_file": ckpt, "use_trace": True, "input_shape": [1, 1, 64, 64, 64],
        "converter_kwargs": {"check_trace": False},  # the comparison below checks the trace, at less cost
    }  # fmt: skip
    configs = ["inference.json", "msd_hippocampus.json", SMOKE]
    command = _bundles.bundle_command(BUNDLE, configs, None, export, subcommand=["ckpt_export", "network_def"])
    result = run_command(command, cwd=BUNDLE)
    assert result.returncode == 0, result.stdout[-4000:]
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(ts_path), _extra_files=extra)
    assert (
        json.loads(extra["metadata.json"])["version"] == json.loads((CONFIGS / "metadata.json").read_text())["version"]
    )
    eager = _swin(out_channels=3)
    eager.load_state_dict(torch.load(ckpt, weights_only=True))
    eager.eval()
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------ bundle layout


def test_metadata_follows_bundle_spec():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert check_bundle_metadata(meta) == []
    assert list(meta["changelog"])[0] == meta["version"], "newest changelog entry first"
    assert "synth-transforms" in meta["required_packages_version"]
    # MONAI's own parser keeps the declared requirements (no deprecated key overwriting them)
    parser = ConfigParser()
    parser.read_meta(str(CONFIGS / "metadata.json"))
    assert parser["_meta_#required_packages_version#synth-transforms"] == "0.1.0"
    # the network I/O described matches the default train/inference configs
    train = json.loads((CONFIGS / "train.json").read_text())
    infer = json.loads((CONFIGS / "inference.json").read_text())
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == train["in_channels"] == infer["in_channels"]
    assert pred["num_channels"] == train["num_classes"] == infer["num_classes"]
    assert image["spatial_shape"] == train["patch_size"] == infer["patch_size"]
    for path in (BUNDLE / "LICENSE", BUNDLE / "docs" / "README.md", CONFIGS / "logging.conf"):
        assert path.is_file(), path
    assert "Apache License" in (BUNDLE / "LICENSE").read_text()


@pytest.mark.parametrize("preset, classes", [("btcv.json", 14), ("msd_hippocampus.json", 3)])
def test_presets_are_valid_swinunetr_settings(preset, classes):
    content = json.loads((CONFIGS / preset).read_text())
    assert content["num_classes"] == classes
    assert all(s >= 64 and s % 32 == 0 for s in content["patch_size"])
    assert all("#" not in key for key in content), "presets set top-level keys only (so they also fit inference.json)"
    parser = ConfigParser()
    parser.read_config([TRAIN, str(CONFIGS / preset)])
    parser.update({"device": "cpu", "feature_size": 12})
    assert parser.get_parsed_content("network_def").out.conv.conv.out_channels == classes


def test_fs12_preset_points_at_the_pretrain_bundle_encoder(tmp_path):
    content = json.loads((CONFIGS / "cpu_fs12.json").read_text())
    assert all("#" not in key for key in content), "top-level keys only, so it fits after any preset"
    assert content["feature_size"] == 12 and content["amp"] is False and content["transfer"] == "encoder"
    assert all(s % 32 == 0 for s in content["patch_size"]) and content["patch_size"] == [32, 64, 32]
    parser = ConfigParser()
    parser.read_config([TRAIN, str(CONFIGS / "msd_hippocampus.json"), str(CONFIGS / "cpu_fs12.json")])
    parser.update({"bundle_root": str(BUNDLE), "device": "cpu"})
    pretrained = Path(parser.get_parsed_content("pretrained")).resolve()
    assert pretrained == BUNDLE.parent / "anatomy_pretrain" / "models" / "model_swinvit_fs12.pt"
    network = parser.get_parsed_content("network_def")
    assert network.out.conv.conv.out_channels == 3 and network.swinViT.patch_embed.proj.weight.shape[0] == 12


def test_download_large_files_fetches_nothing_and_says_why(tmp_path):
    """MONAI's fetch command on this bundle (no weights of its own) ends without error and fetches nothing; the
    list's comment sends the user to the anatomy_pretrain bundle."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    text = (BUNDLE / "large_files.yml").read_text()
    (bundle / "large_files.yml").write_text(text)
    monai_download_large_files(bundle_path=str(bundle))  # what `python -m monai.bundle download_large_files` runs
    assert sorted(p.name for p in bundle.iterdir()) == ["large_files.yml"]
    assert yaml.safe_load(text) == {"large_files": []}
    assert "ships no weights" in text and "--bundle_path bundles/anatomy_pretrain" in text


def test_released_encoder_fine_tunes_ten_hippocampus_cases_from_the_bundle_cli(tmp_path, hippocampus_dir):
    """The README's few-shot commands, shortened to 2 iterations: the bundle CLI loads every tensor of the released
    feature_size 12 encoder (cpu_fs12.json's default path), fine-tunes on 10 Hippocampus cases and evaluates."""
    bundles = tmp_path / "bundles"
    root = bundles / "swin_unetr_finetune"
    shutil.copytree(BUNDLE / "configs", root / "configs")
    (bundles / "anatomy_pretrain").symlink_to(BUNDLE.parent / "anatomy_pretrain")  # the committed release
    datalist = _tiny_datalist(tmp_path / "dataset.json", hippocampus_dir, n_train=10, n_val=2)
    data = {"dataset_dir": hippocampus_dir, "datalist": datalist, "num_workers": 0, "cache_rate": 0.0}
    train = {
        **data, "num_train_cases": 10, "batch_size": 2, "num_samples": 1, "max_epochs": 1, "epoch_length": 2,
        "val_interval": 2, "warmup_steps": 1, "learning_rate": 1e-3,
    }  # fmt: skip
    command = _bundles.bundle_command(root, ["train.json", "msd_hippocampus.json", "cpu_fs12.json"], root, train)
    result = run_command(command, cwd=root, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-4000:]
    encoder = BUNDLE.parent / "anatomy_pretrain" / "models" / "model_swinvit_fs12.pt"
    n_encoder = len(torch.load(encoder, weights_only=True)["state_dict"])
    assert f"model_swinvit_fs12.pt: loaded {n_encoder} of " in result.stdout, result.stdout[-4000:]
    record = json.loads((root / "runs" / "train_cases.json").read_text())
    assert record["available"] == 10 and len(record["training"]) == 10
    evaluate = {**data, "checkpoint": "models/model_final.pt", "output_dir": "$@bundle_root + '/metrics'"}
    names = ["train.json", "evaluate.json", "msd_hippocampus.json", "cpu_fs12.json"]
    result = run_command(_bundles.bundle_command(root, names, root, evaluate), cwd=root, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-4000:]
    rows = (root / "metrics" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert len(rows) == 1 + 2, rows  # a header, then one row per validation case


def test_fs12_preset_loads_the_encoder_and_a_killed_run_resumes(tmp_path, hippocampus_dir):
    """The feature_size 12 preset takes the pre-training bundle's exported encoder by default; a run killed in its
    second epoch leaves no final weights, and resuming restores network, optimiser and iteration."""
    torch.manual_seed(0)
    source = _swin(out_channels=22)  # as pre-trained: 22 synthetic classes
    export_encoder(source, tmp_path / "bundles" / "anatomy_pretrain" / "models" / "model_swinvit_fs12.pt")
    root = tmp_path / "bundles" / "swin_unetr_finetune"
    root.mkdir()  # the default path goes through it: <bundle_root>/../anatomy_pretrain/models/model_swinvit_fs12.pt
    overrides = {
        "dataset_dir": str(hippocampus_dir), "datalist": str(_tiny_datalist(tmp_path / "d.json", hippocampus_dir)),
        "device": "cpu", "num_workers": 0, "cache_rate": 0.0, "batch_size": 1, "num_samples": 1,
        "max_epochs": 2, "epoch_length": 1, "val_interval": 1,
    }  # fmt: skip
    configs = ["train.json", "msd_hippocampus.json", "cpu_fs12.json"]

    workflow = _bundles.bundle_workflow(BUNDLE, configs, root, **overrides)
    workflow.initialize()
    assert workflow.check_properties() == []
    network = workflow.trainer.network
    for name, tensor in source.swinViT.state_dict().items():
        assert torch.equal(network.swinViT.state_dict()[name], tensor), name

    def kill(engine):
        raise RuntimeError("killed")

    workflow.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=2), kill)
    with pytest.raises(Exception) as info:
        workflow.run()
    assert any("killed" in str(e) for e in _causes(info.value))
    assert not (root / "models" / "model_final.pt").exists(), "a failed run must not leave final weights"
    assert not (root / "runs" / "train_summary.json").exists()
    assert sorted(p.name for p in (root / "runs" / "checkpoints").iterdir()) == ["checkpoint_epoch=1.pt"]

    workflow = _bundles.bundle_workflow(BUNDLE, configs, root, resume=True, **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    assert workflow.trainer.state.iteration == 2 and workflow.trainer.state.epoch == 2
    optimizer = workflow.parser.get_parsed_content("optimizer")
    assert all(int(state["step"]) == 2 for state in optimizer.state.values()), "the optimiser state was restored"
    summary = json.loads((root / "runs" / "train_summary.json").read_text())
    assert summary["start_iteration"] == 1 and summary["iterations"] == 2 and summary["stopped_by"] == "iterations"
    final = torch.load(root / "models" / "model_final.pt", weights_only=True)
    assert all(torch.equal(final[k], v.cpu()) for k, v in workflow.trainer.network.state_dict().items())
    curve = [json.loads(x) for x in (root / "runs" / "validation_curve.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in curve] == [1, 2]


# ------------------------------------------------------------------------------------------- pretrained loading


def test_encoder_transfer_from_swinvit_state_dict(tmp_path):
    torch.manual_seed(0)
    source = _swin(out_channels=14)
    torch.save(source.swinViT.state_dict(), tmp_path / "model_swinvit.pt")
    target = _swin(out_channels=3)
    decoder_before = target.decoder1.conv_block.conv1.conv.weight.clone()
    assert load_pretrained(target, tmp_path / "model_swinvit.pt", "encoder") is target
    for name, tensor in source.swinViT.state_dict().items():
        assert torch.equal(target.swinViT.state_dict()[name], tensor), name
    assert torch.equal(target.decoder1.conv_block.conv1.conv.weight, decoder_before)


def test_encoder_transfer_from_ssl_style_file(tmp_path):
    """Published Swin UNETR SSL weights: {"state_dict": {"module.<encoder name>"}} with mlp.fc1/fc2 names."""
    source = _swin()
    renamed = {
        "module." + k.replace("mlp.linear1", "mlp.fc1").replace("mlp.linear2", "mlp.fc2"): v
        for k, v in source.swinViT.state_dict().items()
    }
    renamed["module.rotation_head.weight"] = torch.zeros(4, 8)
    torch.save({"state_dict": renamed, "epoch": 7}, tmp_path / "ssl.pt")
    target = load_pretrained(_swin(), tmp_path / "ssl.pt", "encoder")
    for name, tensor in source.swinViT.state_dict().items():
        assert torch.equal(target.swinViT.state_dict()[name], tensor), name


def test_full_transfer_skips_output_layer_when_classes_differ(tmp_path, caplog):
    source = _swin(out_channels=14)
    torch.save({"model": {"module." + k: v for k, v in source.state_dict().items()}}, tmp_path / "full.pt")
    target = torch.nn.DataParallel(_swin(out_channels=3))
    out_before = target.module.out.conv.conv.weight.clone()
    with caplog.at_level(logging.INFO, logger="synth_transforms.pretrained"):
        load_pretrained(target, tmp_path / "full.pt", "full")
    loaded = target.module.state_dict()
    for name, tensor in source.state_dict().items():
        if name.startswith("out."):
            continue
        assert torch.equal(loaded[name], tensor), name
    assert torch.equal(target.module.out.conv.conv.weight, out_before)
    assert "loaded 157 of 159" in caplog.text
    assert "Skipped 2 output-layer tensor(s)" in caplog.text and "out.conv.conv.weight" in caplog.text


def test_full_transfer_with_same_classes_copies_everything(tmp_path):
    source = _swin(out_channels=3)
    torch.save(source.state_dict(), tmp_path / "same.pt")
    target = load_pretrained(_swin(out_channels=3), tmp_path / "same.pt", "full")
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


def test_pretrained_errors_are_loud(tmp_path, caplog):
    target = _swin()
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_pretrained(target, tmp_path / "nowhere.pt")
    (tmp_path / "corrupt.pt").write_bytes(os.urandom(4096))
    with pytest.raises(RuntimeError, match="corrupt.pt"):
        load_pretrained(target, tmp_path / "corrupt.pt")
    torch.save(UNet(3, 1, 2, (4, 8), (2,)).state_dict(), tmp_path / "unet.pt")
    with pytest.raises(ValueError, match="unet.pt.*another architecture"):
        load_pretrained(target, tmp_path / "unet.pt", "full")
    torch.save(_swin(feature_size=24).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=r"wide.pt.*swinViT.patch_embed.proj.weight.*outside the output layer"):
        load_pretrained(target, tmp_path / "wide.pt", "full")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no_weights.pt")
    with pytest.raises(ValueError, match="no_weights.pt holds no state dict"):
        load_pretrained(target, tmp_path / "no_weights.pt")
    with pytest.raises(ValueError, match="transfer"):
        load_pretrained(target, tmp_path / "wide.pt", "decoder")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="synth_transforms.pretrained"):
        load_pretrained(target, None)
    assert "random initialisation" in caplog.text
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


# ------------------------------------------------------------------------------------------- datalists and checks


def test_split_loading_and_input_errors(tmp_path, hippocampus_dir):
    datalist = _tiny_datalist(tmp_path / "dataset.json", hippocampus_dir, n_train=3, n_val=1)
    cases = load_decathlon_split(datalist, hippocampus_dir, "training")
    assert len(cases) == 3 and all(os.path.isabs(c["image"]) and os.path.isfile(c["label"]) for c in cases)
    with pytest.raises(FileNotFoundError, match="no_such_dataset"):
        load_decathlon_split(datalist, tmp_path / "no_such_dataset", "training")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_decathlon_split(tmp_path / "missing.json", hippocampus_dir, "training")
    with pytest.raises(ValueError, match=r"no 'test' list.*\['training', 'validation'\]"):
        load_decathlon_split(datalist, hippocampus_dir, "test")
    broken = json.loads(datalist.read_text())
    broken["validation"].append({"image": "./imagesTr/ghost.nii.gz", "label": "./labelsTr/ghost.nii.gz"})
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(FileNotFoundError, match=r"validation entry 1 .*image file .*ghost.nii.gz"):
        load_decathlon_split(tmp_path / "broken.json", hippocampus_dir, "validation")


def test_few_shot_subset_is_fixed_recorded_and_bounded(tmp_path, hippocampus_dir):
    datalist = hippocampus_dir / "dataset.json"
    first = load_decathlon_split(
        datalist, hippocampus_dir, "training", num_cases=5, seed=3, record_path=tmp_path / "r.json"
    )
    again = load_decathlon_split(datalist, hippocampus_dir, "training", num_cases=5, seed=3)
    other = load_decathlon_split(datalist, hippocampus_dir, "training", num_cases=5, seed=4)
    assert first == again and first != other and len(first) == 5
    assert [c["image"] for c in first] == sorted(c["image"] for c in first)
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["available"] == 160 and record["num_cases"] == 5 and record["seed"] == 3
    # the record is itself a datalist that reproduces the subset
    assert load_decathlon_split(tmp_path / "r.json", hippocampus_dir, "training") == first
    tenth = load_decathlon_split(datalist, hippocampus_dir, "training", fraction=0.1, seed=0)
    assert len(tenth) == 16
    with pytest.raises(ValueError, match="Asked for 161 cases but .* has only 160"):
        load_decathlon_split(datalist, hippocampus_dir, "training", num_cases=161)
    with pytest.raises(ValueError, match="not both"):
        select_cases(first, num_cases=1, fraction=0.5)
    with pytest.raises(ValueError, match="fraction"):
        select_cases(first, fraction=1.5)


def test_label_classes_check_names_file_and_ids(tmp_path):
    label = np.zeros((8, 8, 8), np.uint8)
    label[2:4, 2:4, 2:4] = 1
    label[5:7, 5:7, 5:7] = 5
    path = _write_nifti(tmp_path / "bad_label.nii.gz", label)
    load = Compose([LoadImaged("label"), EnsureChannelFirstd("label")])
    data = load({"label": str(path)})
    assert CheckLabelClassesd("label", num_classes=6)(data)["label"] is data["label"]
    with pytest.raises(ValueError, match=r"bad_label.nii.gz has class ids \[5\].*num_classes=3"):
        CheckLabelClassesd("label", num_classes=3)(data)
    with pytest.raises(ValueError, match=r"\[-1, 0.5\]"):
        CheckLabelClasses(3)(np.array([0, 1, -1, 0.5]))


def test_bundle_reports_bad_input(tmp_path, hippocampus_dir):
    datalist = _tiny_datalist(tmp_path / "dataset.json", hippocampus_dir, n_train=1, n_val=1)
    common = {"bundle_root": str(BUNDLE), "output_dir": str(tmp_path / "runs"), "ckpt_dir": str(tmp_path)}

    def run(**override):
        workflow = smoke_workflow(["train.json"], "train", **{**common, **override})
        workflow.initialize()
        with pytest.raises(Exception) as info:
            workflow.run()
        return _causes(info.value)

    causes = run(dataset_dir=str(tmp_path / "absent"), datalist=str(datalist))
    assert any(isinstance(e, FileNotFoundError) and "absent" in str(e) for e in causes)
    # Hippocampus labels hold 0, 1, 2: a two-class config must stop with the file and the unexpected id
    causes = run(dataset_dir=str(hippocampus_dir), datalist=str(datalist), num_classes=2)
    name = json.loads(datalist.read_text())["training"][0]["label"].lstrip("./")
    assert any(isinstance(e, ValueError) and name in str(e) and "[2]" in str(e) for e in causes)
