"""The anatomy_pretrain bundle: layout, metadata against the bundle specification, workflow properties, a tiny CPU
training run with weight export, a killed run resumed to the same weights, the ablation overlays (no_anchors,
no_topology, fill: one switch each) and a deadline stop from the CLI with two of them, the epoch handler, DDP
sampling, and a two-process gloo run under torchrun."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import _bundles
import numpy as np
import pytest
import torch
import yaml
from _bundle_utils import check_bundle_metadata
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import DataLoader
from monai.networks.nets import SwinUNETR
from monai.transforms import Compose, Randomizable, Transform

import synth_transforms
from synth_transforms.handlers import SyntheticEpochHandler, TrainingProgressBar, WeightExportHandler, every
from synth_transforms.pretrained import load_pretrained
from synth_transforms.transforms.options import PlacementOptions, options_dict

BUNDLE = _bundles.PRETRAIN
CONFIGS = BUNDLE / "configs"
SMOKE = _bundles.CPU_SMOKE  # the tiny CPU settings: feature_size 12, 64^3, batch 1, 2 iterations, no workers
# The ablation overlays (same pattern as primitives.json: added after train.json) and all that each one holds.
ABLATIONS = {
    "no_anchors.json": {"placement_options": {"use_anchors": False}},
    "no_topology.json": {"placement_options": {"use_topology": False}},
    "fill.json": {"synth_mode": "fill"},
}


def config_files(*extra: str) -> list[str]:
    return _bundles.config_files(BUNDLE, ["train.json", *extra])


def make_workflow(bundle_root: Path, *extra: str, **override) -> ConfigWorkflow:
    return _bundles.bundle_workflow(BUNDLE, ["train.json", *extra], bundle_root, **override)


# ---------------------------------------------------------------------- layout and metadata
def test_bundle_has_the_specified_files():
    for name in ("LICENSE", "large_files.yml", "docs/README.md", "configs/logging.conf"):
        assert (BUNDLE / name).is_file(), f"missing {name}"
    for name in ("train.json", "primitives.json", "multi_gpu_train.json", "metadata.json", SMOKE, *ABLATIONS):
        json.loads((CONFIGS / name).read_text())
    # each ablation overlay sets one switch and nothing else
    for name, content in ABLATIONS.items():
        assert json.loads((CONFIGS / name).read_text()) == content, name
    # the smoke overlay only sets top-level values, so it fits after any of the other configs
    assert all("#" not in key and not isinstance(v, dict) for key, v in _bundles.cpu_smoke(BUNDLE).items())
    # every released file is committed with the bundle or has a URL to be fetched from
    entries = yaml.safe_load((BUNDLE / "large_files.yml").read_text())["large_files"]
    assert entries and all((BUNDLE / entry["path"]).is_file() or entry["url"] for entry in entries), entries


def test_metadata_follows_the_bundle_specification():
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert check_bundle_metadata(metadata) == []  # offline check of the specification's fields (no schema download)
    assert metadata["version"] in metadata["changelog"]
    assert list(metadata["changelog"])[0] == metadata["version"], "newest changelog entry first"
    assert metadata["required_packages_version"]["synth-transforms"] == synth_transforms.__version__

    bank = synth_transforms.load_bank()
    image = metadata["network_data_format"]["inputs"]["image"]
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == 1 and image["spatial_shape"] == [96, 96, 96]
    assert pred["num_channels"] == bank.num_classes == 22
    assert pred["channel_def"] == {"0": "background", **{str(i + 1): o for i, o in enumerate(bank.organs)}}


# ---------------------------------------------------------------------- workflow
@pytest.mark.parametrize("extra, classes", [((), 22), (("primitives.json",), 33)])
def test_workflow_properties_and_class_count(tmp_path, extra, classes):
    workflow = make_workflow(tmp_path, *extra, num_workers=0)
    workflow.initialize()
    assert workflow.check_properties() == []
    parser = workflow.parser
    assert parser.get_parsed_content("num_classes") == classes
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, SwinUNETR) and network.out.conv.conv.out_channels == classes
    assert parser.get_parsed_content("feature_size") == 48
    assert parser.get_parsed_content("patch_size") == [96, 96, 96]
    dataset = parser.get_parsed_content("train#dataset")
    assert isinstance(dataset, synth_transforms.SyntheticDataset)
    assert len(dataset) == parser.get_parsed_content("epoch_length") * parser.get_parsed_content("batch_size")
    validation = parser.get_parsed_content("validate#dataset")
    assert validation.seed != dataset.seed, "the validation set must not repeat training samples"


BAD_PATCH = "anatomy_pretrain: patch_size must be divisible by 32 on every axis, got [64, 64, 48]"


@pytest.mark.parametrize("extra", [(), ("multi_gpu_train.json",)])
def test_patch_size_not_divisible_by_32_is_refused_at_initialize(tmp_path, extra, capsys):
    workflow = make_workflow(tmp_path, SMOKE, *extra, patch_size=[64, 64, 48])
    with pytest.raises(SystemExit) as info:
        workflow.initialize()  # before anything else: no process group, no network
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {BAD_PATCH}"]
    assert not torch.distributed.is_initialized()
    workflow = make_workflow(tmp_path, SMOKE, *extra, patch_size=[64, 96, 32])
    assert workflow.parser.get_parsed_content("startup_checks") == [(64, 96, 32)]


def test_cli_refuses_a_bad_patch_size_before_building_anything(tmp_path):
    command = _bundles.bundle_command(BUNDLE, ["train.json", SMOKE], tmp_path / "run", {"patch_size": [64, 64, 48]})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == f"error: {BAD_PATCH}"
    assert "Traceback" not in result.stderr
    assert "SupervisedTrainer" not in result.stdout + result.stderr and not (tmp_path / "run").exists()


def test_epoch_plan_rounds_up_to_whole_epochs(tmp_path):
    parser = make_workflow(tmp_path, num_iterations=1250, iterations_per_epoch=500).parser
    assert parser.get_parsed_content("epoch_length") == 500
    assert parser.get_parsed_content("max_epochs") == 3
    parser = make_workflow(tmp_path, num_iterations=2).parser
    assert parser.get_parsed_content("epoch_length") == 2 and parser.get_parsed_content("max_epochs") == 1


def test_pool_size_and_fill_overlay_reach_the_dataset(tmp_path):
    parser = make_workflow(tmp_path, SMOKE).parser
    assert parser.get_parsed_content("train#dataset").pool_size is None
    assert parser.get_parsed_content("synth").renderer.mode == "shell"
    parser = make_workflow(tmp_path, "fill.json", SMOKE, pool_size=3).parser
    assert parser.get_parsed_content("train#dataset").pool_size == 3
    assert parser.get_parsed_content("synth").renderer.mode == "fill"
    assert parser.get_parsed_content("validate#dataset").pool_size is None, "the validation set stays fixed"


@pytest.mark.parametrize("overlay", ABLATIONS)
def test_ablation_overlay_sets_its_switch_and_changes_nothing_else(overlay):
    """Parsed as ``monai.bundle run`` parses ``--config_file "['train.json','<overlay>']"``: the overlay's key is the
    only one that differs from train.json, and the transform built from it has the switch set, the rest default."""
    parsers = {}
    for name, files in (("base", config_files()), ("ablated", config_files(overlay))):
        parsers[name] = ConfigParser()
        parsers[name].read_config(files)
    base, ablated = parsers["base"].get(), parsers["ablated"].get()
    assert {key for key in base.keys() | ablated.keys() if base.get(key) != ablated.get(key)} == set(ABLATIONS[overlay])

    synth = {name: parser.get_parsed_content("synth") for name, parser in parsers.items()}
    options = {name: options_dict(s.label_maker.placement_options) for name, s in synth.items()}
    switches = ABLATIONS[overlay].get("placement_options", {})
    assert options["base"] == options_dict(PlacementOptions()) and options["ablated"] == {**options["base"], **switches}
    placer = synth["ablated"].label_maker.placer  # the engine itself gets the switch
    assert (placer.use_anchors, placer.use_topology) == (switches.get("use_anchors", True),
                                                         switches.get("use_topology", True))  # fmt: skip
    assert synth["ablated"].renderer.mode == ABLATIONS[overlay].get("synth_mode", "shell")


# Two epochs of one iteration each: the resume test kills a run in epoch 2 and resumes it from the epoch-1 checkpoint.
TWO_EPOCHS = {"num_iterations": 2, "iterations_per_epoch": 1}


def _run(workflow: ConfigWorkflow, fail_at: int | None = None) -> ConfigWorkflow:
    workflow.initialize()
    assert workflow.check_properties() == []
    if fail_at is not None:

        def kill(engine):
            raise RuntimeError("killed")

        workflow.parser.get_parsed_content("train#trainer").add_event_handler(
            Events.ITERATION_COMPLETED(once=fail_at), kill
        )
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return workflow


def _curve(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "runs" / "validation_curve.jsonl").read_text().splitlines()]


@contextlib.contextmanager
def _one_thread():
    """One torch thread: bit-exact replays compare runs on one thread (on a loaded 2-core machine, a resumed run on
    two threads was seen to differ from the uninterrupted one in the last bits of the weights, at this commit and at
    earlier ones whose CI had passed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A tiny CPU training run of two one-iteration epochs, with validation after each (on one thread)."""
    root = tmp_path_factory.mktemp("pretrain")
    with _one_thread():
        workflow = _run(make_workflow(root, SMOKE, **TWO_EPOCHS))
    return root, workflow.parser


def test_tiny_training_run_exports_encoder_and_network(uninterrupted):
    tmp_path, parser = uninterrupted
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2 and trainer.state.epoch == 2
    val_dice = parser.get_parsed_content("validate#evaluator").state.metrics["val_mean_dice"]
    assert 0.0 <= val_dice <= 1.0

    network = parser.get_parsed_content("network")
    exported = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert exported.keys() == network.state_dict().keys()
    assert all(torch.equal(exported[k], v) for k, v in network.state_dict().items())

    # The encoder file loads with MONAI's own loader for published Swin UNETR weights and with load_pretrained.
    encoder = torch.load(tmp_path / "models" / "model_swinvit.pt", weights_only=True)
    fresh = SwinUNETR(in_channels=1, out_channels=3, feature_size=12)
    fresh.load_from(encoder)
    assert torch.equal(fresh.swinViT.patch_embed.proj.weight, network.swinViT.patch_embed.proj.weight)
    other = SwinUNETR(in_channels=1, out_channels=3, feature_size=12)
    load_pretrained(other, tmp_path / "models" / "model_swinvit.pt")
    for name, value in network.swinViT.state_dict().items():
        assert torch.equal(other.swinViT.state_dict()[name], value), name

    checkpoints = tmp_path / "runs" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_epoch=2.pt", "checkpoint_final.pt"]
    checkpoint = torch.load(checkpoints / "checkpoint_final.pt", weights_only=True)
    assert {"network", "optimizer", "lr_scheduler", "trainer"} <= checkpoint.keys()
    assert checkpoint["trainer"]["iteration"] == 2
    assert list((tmp_path / "runs").glob("events.out.tfevents.*")), "no TensorBoard log"

    summary = json.loads((tmp_path / "runs" / "train_summary.json").read_text())
    assert summary["iterations"] == 2 and summary["epochs"] == 2 and summary["stopped_by"] == "iterations"
    assert summary["start_iteration"] == 0 and summary["seconds"] > 0
    curve = _curve(tmp_path)
    assert [(line["iteration"], line["epoch"]) for line in curve] == [(1, 1), (2, 2)]
    assert curve[-1]["val_mean_dice"] == pytest.approx(val_dice, abs=1e-6)
    per_class = curve[-1]["per_class"]  # the organs of the validation sample, by class id (background excluded)
    assert per_class and set(per_class) <= {str(i) for i in range(1, 22)}
    present = list(per_class.values())
    assert all(0.0 <= v <= 1.0 for v in present)
    assert curve[-1]["val_mean_dice"] == pytest.approx(sum(present) / len(present), abs=1e-5)

    # the foreground Dice of the last round: every organ merged against the background, from the final network
    (sample,) = parser.get_parsed_content("validate#dataset")  # cpu_smoke.json validates on one sample
    network.eval()
    try:
        with torch.no_grad():
            found = network(sample["image"][None]).argmax(1)[0] > 0
    finally:
        network.train()
    truth = sample["label"][0] > 0
    expected = 2 * float((found & truth).sum()) / float(found.sum() + truth.sum())
    assert curve[-1]["val_foreground_dice"] == pytest.approx(expected, abs=1e-5)


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(uninterrupted, tmp_path):
    with _one_thread():
        _check_killed_run_resumes(uninterrupted, tmp_path)


def _check_killed_run_resumes(uninterrupted, tmp_path):
    straight, _ = uninterrupted
    with pytest.raises(Exception) as info:
        _run(make_workflow(tmp_path, SMOKE, **TWO_EPOCHS), fail_at=2)  # dies in epoch 2, after its optimiser step
    assert "killed" in str(info.value) + str(info.value.__cause__)
    # a failed run leaves nothing that looks finished: no final checkpoint, no weights, no summary
    assert sorted(p.name for p in (tmp_path / "runs" / "checkpoints").iterdir()) == ["checkpoint_epoch=1.pt"]
    assert not (tmp_path / "models").exists() and not (tmp_path / "runs" / "train_summary.json").exists()

    workflow = _run(make_workflow(tmp_path, SMOKE, resume=True, **TWO_EPOCHS))
    assert workflow.parser.get_parsed_content("resume_from").endswith("checkpoint_epoch=1.pt")
    summary = json.loads((tmp_path / "runs" / "train_summary.json").read_text())
    assert summary["start_iteration"] == 1 and summary["iterations"] == 2 and summary["stopped_by"] == "iterations"
    # network, optimiser, schedule, iteration and the synthetic epoch restored: bit for bit the same weights
    for name in ("model.pt", "model_swinvit.pt"):
        resumed = torch.load(tmp_path / "models" / name, weights_only=True)
        reference = torch.load(straight / "models" / name, weights_only=True)
        resumed, reference = resumed.get("state_dict", resumed), reference.get("state_dict", reference)
        assert resumed.keys() == reference.keys()
        assert all(torch.equal(resumed[k], reference[k]) for k in reference), name
    assert _curve(tmp_path) == _curve(straight)
    assert sorted(p.name for p in (tmp_path / "runs" / "checkpoints").iterdir()) == [
        "checkpoint_epoch=2.pt",
        "checkpoint_final.pt",
    ]


@pytest.mark.parametrize("overlay", ["fill.json", "no_topology.json"])
def test_cli_ablation_overlay_stops_at_the_deadline_and_exports(tmp_path, overlay):
    """An ablation overlay from the bundle CLI, with a budget that ends training after its first iteration."""
    overrides = {"num_iterations": 2, "max_train_seconds": 0.001}
    command = _bundles.bundle_command(BUNDLE, ["train.json", overlay, SMOKE], tmp_path, overrides)
    assert str(CONFIGS / overlay) in command[command.index("--config_file") + 1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    summary = json.loads((tmp_path / "runs" / "train_summary.json").read_text())
    assert summary["iterations"] == 1 and summary["epochs"] == 1 and summary["stopped_by"] == "deadline"
    assert {p.name for p in (tmp_path / "models").iterdir()} == {"model.pt", "model_swinvit.pt"}
    # stopped mid-epoch: a final checkpoint, no epoch checkpoint, no validation round
    assert sorted(p.name for p in (tmp_path / "runs" / "checkpoints").iterdir()) == ["checkpoint_final.pt"]
    assert not (tmp_path / "runs" / "validation_curve.jsonl").exists()


def test_multi_gpu_config_gives_each_rank_disjoint_samples(tmp_path):
    parser = ConfigParser()
    parser.read_config(config_files("multi_gpu_train.json"))
    parser.update({"bundle_root": str(tmp_path), "patch_size": [64, 64, 64], "num_iterations": 3, "batch_size": 2})
    parser.update({"world_size": 2, "train#sampler#num_replicas": 2})
    indices = []
    for rank in range(2):
        parser["train#sampler#rank"] = rank
        parser.parse(reset=True)
        assert len(parser.get_parsed_content("train#dataset")) == 3 * 2 * 2
        indices.append(list(parser.get_parsed_content("train#sampler")))
    assert len(indices[0]) == len(indices[1]) == 3 * 2, "each rank runs epoch_length iterations of batch_size"
    assert not set(indices[0]) & set(indices[1])
    assert sorted(indices[0] + indices[1]) == list(range(12))
    assert parser.get_parsed_content("backend") == ("nccl" if torch.cuda.is_available() else "gloo")


# ---------------------------------------------------------------------- handlers
class _DrawOne(Randomizable, Transform):
    """A cheap random 'sample': one integer drawn from the transform's random state."""

    def randomize(self, data=None) -> None:
        self.value = self.R.randint(1 << 30)

    def __call__(self, data):
        self.randomize()
        return torch.tensor([self.value])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_epoch_handler_gives_each_epoch_its_own_samples(num_workers):
    dataset = synth_transforms.SyntheticDataset(Compose([_DrawOne()]), length=4, seed=7)
    seen: dict[int, list[int]] = {}
    engine = Engine(lambda e, batch: seen.setdefault(e.state.epoch, []).extend(batch.flatten().tolist()))
    SyntheticEpochHandler(dataset).attach(engine)
    engine.run(DataLoader(dataset, batch_size=2, num_workers=num_workers), max_epochs=3, epoch_length=2)

    for epoch in (1, 2, 3):
        expected = synth_transforms.SyntheticDataset(Compose([_DrawOne()]), length=4, seed=7, epoch=epoch - 1)
        assert seen[epoch] == [int(expected[i][0]) for i in range(4)], f"epoch {epoch}"
    assert len({tuple(v) for v in seen.values()}) == 3, "epochs must differ"


def test_epoch_handler_rejects_a_dataset_without_set_epoch():
    with pytest.raises(TypeError, match="set_epoch"):
        SyntheticEpochHandler([1, 2, 3])


def test_export_handler_writes_only_when_training_completes(tmp_path):
    network = SwinUNETR(in_channels=1, out_channels=2, feature_size=12)

    def fail(engine, batch):
        raise RuntimeError("diverged")

    failing = Engine(fail)
    WeightExportHandler(network, tmp_path / "failed").attach(failing)
    with pytest.raises(RuntimeError, match="diverged"):
        failing.run([0], max_epochs=1)
    assert not (tmp_path / "failed").exists() or not any((tmp_path / "failed").iterdir())

    engine = Engine(lambda e, b: None)
    handler = WeightExportHandler(network, tmp_path / "models", encoder_dtype="float16")
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.pt", "model_swinvit.pt"]
    encoder = torch.load(handler.paths["encoder"], weights_only=True)["state_dict"]
    assert encoder["module.patch_embed.proj.weight"].dtype == torch.float16


def test_progress_bar_reads_the_loss_of_a_monai_trainer_output():
    bar = TrainingProgressBar()
    assert bar._loss([{"loss": torch.tensor(0.25), "pred": None}]) == {"loss": 0.25}
    assert bar._loss({"loss": 1.5}) == {"loss": 1.5}
    assert bar._loss([{"pred": None}]) == {}


def test_every_filters_events():
    keep = every(3)
    assert [i for i in range(1, 10) if keep(None, i)] == [3, 6, 9]
    with pytest.raises(ValueError, match="positive"):
        every(0)


# ---------------------------------------------------------------------- torchrun
def test_torchrun_two_process_gloo_run(tmp_path):
    # the smoke overlay before multi_gpu_train.json, which picks cuda:LOCAL_RANK or, without CUDA, the CPU with gloo
    configs = ["train.json", SMOKE, "multi_gpu_train.json"]
    overrides = {"num_iterations": 1, "num_val_samples": 2, "max_train_seconds": 3600}  # the budget syncs the ranks
    command = _bundles.bundle_command(BUNDLE, configs, tmp_path, overrides, nproc=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert log.count("SupervisedTrainer - INFO - Engine run resuming") == 1, "the trainer must log on rank 0 only"
    assert "Exported the whole network" in log
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(name.startswith("module.") for name in state), "the export must unwrap DistributedDataParallel"
    assert state["out.conv.conv.weight"].shape[0] == 22
    assert np.isfinite([float(v.float().sum()) for v in state.values()]).all()
    summary = json.loads((tmp_path / "runs" / "train_summary.json").read_text())
    assert summary["iterations"] == 1 and summary["stopped_by"] == "iterations"
