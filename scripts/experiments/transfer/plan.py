"""Settings and stage plan of the transfer experiment: two pre-trainings (anatomy, primitives), then per data regime,
arm and seed a fine-tuning and its evaluation, each one ``python -m monai.bundle run`` of the repository's bundles."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import _bundles

from experiments.runner import Stage
from synth_transforms.io import read_json, write_json_atomic

ARMS = ("scratch", "primitives", "anatomy")
PRETRAIN_CONFIG_FILES = {"anatomy": ["train.json"], "primitives": ["train.json", "primitives.json"]}
FINETUNE_CONFIG_FILES = ["train.json", "msd_hippocampus.json"]
EVALUATE_CONFIG_FILES = [*FINETUNE_CONFIG_FILES, "evaluate.json"]
ENCODER = "model_swinvit.pt"
QUICK_VAL_CASES = 2  # validation cases of --quick (the experiment's own; the rest comes from cpu_smoke.json)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that defines a run of the experiment; recorded in ``results.json``."""

    device: str = "cuda"
    feature_size: int = 48
    pretrain_patch: int = 96
    pretrain_batch: int = 2
    pretrain_iterations: int = 1500
    pretrain_workers: int = 8
    pretrain_val_samples: int = 16
    finetune_patch: int = 64
    finetune_batch: int = 2
    finetune_iterations: int = 500
    finetune_workers: int = 4
    learning_rate: float = 1e-4
    amp_dtype: str = "float16"
    use_checkpoint: bool = False
    few_shot_cases: int = 10
    subset_seed: int = 0
    seeds: tuple[int, ...] = (0,)
    val_cases: int | None = None  # None: the whole validation split
    cache_rate: float = 1.0

    @property
    def regimes(self) -> dict[str, int | None]:
        """Data regime name -> number of training cases (None: all of the training split)."""
        return {"few_shot": self.few_shot_cases, "all": None}


def _cube(patch_size: Sequence[int], source: str) -> int:
    if len(set(patch_size)) != 1:
        raise ValueError(f"{source}: patch_size must be a cube for the experiment's settings, got {patch_size}")
    return int(patch_size[0])


def quick_settings() -> dict:
    """The ``--quick`` settings: the bundles' CPU smoke overlays (``configs/cpu_smoke.json``) in ``Settings`` terms,
    plus the experiment's own number of validation cases."""
    pre, tune = _bundles.cpu_smoke(_bundles.PRETRAIN), _bundles.cpu_smoke(_bundles.FINETUNE)
    for key in ("device", "feature_size", "use_checkpoint"):  # one value for both bundles: the encoder must fit
        if pre[key] != tune[key]:
            raise ValueError(f"{_bundles.CPU_SMOKE}: {key} differs between the bundles ({pre[key]!r}, {tune[key]!r})")
    return {
        "device": pre["device"],
        "feature_size": pre["feature_size"],
        "use_checkpoint": pre["use_checkpoint"],
        "pretrain_patch": _cube(pre["patch_size"], f"anatomy_pretrain/{_bundles.CPU_SMOKE}"),
        "pretrain_batch": pre["batch_size"],
        "pretrain_iterations": pre["num_iterations"],
        "pretrain_workers": pre["num_workers"],
        "pretrain_val_samples": pre["num_val_samples"],
        "finetune_patch": _cube(tune["patch_size"], f"swin_unetr_finetune/{_bundles.CPU_SMOKE}"),
        "finetune_batch": tune["batch_size"],
        "finetune_iterations": tune["max_epochs"] * tune["epoch_length"],
        "finetune_workers": tune["num_workers"],
        "cache_rate": tune["cache_rate"],
        "val_cases": QUICK_VAL_CASES,
    }


@dataclasses.dataclass(kw_only=True)
class BundleStage(Stage):
    """A stage that is one ``python -m monai.bundle run`` of ``config_files`` of ``bundle`` with ``overrides``."""

    bundle: Path
    config_files: list[str]
    overrides: dict

    def command(self, root: Path | None = None) -> list[str]:
        return _bundles.bundle_command(self.bundle, self.config_files, root or self.root, self.overrides)


def warmup_steps(iterations: int) -> int:
    """Linear warm-up over 10 % of a short run, at most the bundles' 500 steps."""
    return max(1, min(500, iterations // 10))


def epoch_plan(iterations: int, epoch_length: int = 100) -> tuple[int, int]:
    """(max_epochs, epoch_length) giving exactly ``iterations`` iterations."""
    length = min(epoch_length, iterations)
    while iterations % length:
        length -= 1
    return iterations // length, length


def write_datalist(dataset_dir: Path, path: Path, val_cases: int | None) -> Path:
    """The dataset's fixed split, with the validation list cut to ``val_cases`` when given."""
    datalist = read_json(dataset_dir / "dataset.json", "Decathlon dataset.json")
    for split in ("training", "validation"):
        if not datalist.get(split):
            raise ValueError(f"{dataset_dir / 'dataset.json'}: expected a non-empty {split!r} list")
    split = {"training": datalist["training"], "validation": datalist["validation"][:val_cases]}
    write_json_atomic(path, split)
    return path


def pretrain_stages(s: Settings, out: Path) -> list[BundleStage]:
    """The two pre-trainings, identical but for the data (``primitives.json``)."""
    overrides = {
        "device": s.device, "feature_size": s.feature_size, "patch_size": [s.pretrain_patch] * 3,
        "batch_size": s.pretrain_batch, "num_workers": s.pretrain_workers,
        "num_iterations": s.pretrain_iterations, "iterations_per_epoch": min(500, s.pretrain_iterations),
        "warmup_steps": warmup_steps(s.pretrain_iterations), "learning_rate": s.learning_rate,
        "num_val_samples": s.pretrain_val_samples, "use_checkpoint": s.use_checkpoint, "amp_dtype": s.amp_dtype,
        "export_encoder_dtype": "float16", "progress_bar": False,
    }  # fmt: skip
    return [
        BundleStage(
            f"pretrain_{kind}",
            out / "pretrain" / kind,
            [f"models/{ENCODER}"],
            [],
            s.pretrain_iterations,
            bundle=_bundles.PRETRAIN,
            config_files=list(files),
            overrides=dict(overrides),
        )  # fmt: skip
        for kind, files in PRETRAIN_CONFIG_FILES.items()
    ]


def finetune_stages(s: Settings, out: Path, dataset_dir: Path, datalist: Path) -> list[BundleStage]:
    """Per regime, arm and seed: a fine-tuning (one recipe in every arm) and the evaluation of its final weights."""
    max_epochs, epoch_length = epoch_plan(s.finetune_iterations)
    data = {"device": s.device, "dataset_dir": str(dataset_dir), "datalist": str(datalist)}
    network = {"feature_size": s.feature_size, "patch_size": [s.finetune_patch] * 3, "amp_dtype": s.amp_dtype}
    loading = {"num_workers": s.finetune_workers, "cache_rate": s.cache_rate}
    stages = []
    for regime, num_cases in s.regimes.items():
        for arm in ARMS:
            for seed in s.seeds:
                name = f"{regime}_{arm}_seed{seed}"
                root = out / "finetune" / name
                overrides = {
                    **data, **network, **loading, "seed": seed, "subset_seed": s.subset_seed,
                    "num_train_cases": num_cases, "batch_size": s.finetune_batch, "num_samples": 1,
                    "max_epochs": max_epochs, "epoch_length": epoch_length, "val_interval": max_epochs + 1,
                    "warmup_steps": warmup_steps(s.finetune_iterations), "learning_rate": s.learning_rate,
                    "use_checkpoint": s.use_checkpoint,
                }  # fmt: skip
                needs = []
                if arm != "scratch":
                    overrides |= {"pretrained": str(out / "pretrain" / arm / "models" / ENCODER), "transfer": "encoder"}
                    needs = [f"pretrain_{arm}"]
                tune = BundleStage(
                    f"finetune_{name}", root, ["models/model_final.pt"], needs, s.finetune_iterations,
                    bundle=_bundles.FINETUNE, config_files=list(FINETUNE_CONFIG_FILES), overrides=overrides,
                )  # fmt: skip
                overrides = {
                    **data, **network, **loading, "seed": seed,
                    "checkpoint": str(root / "models" / "model_final.pt"), "output_dir": "$@bundle_root + '/metrics'",
                }  # fmt: skip
                evaluate = BundleStage(
                    f"evaluate_{name}", out / "evaluate" / name, ["metrics/val_mean_dice_raw.csv"], [tune.name],
                    bundle=_bundles.FINETUNE, config_files=list(EVALUATE_CONFIG_FILES), overrides=overrides,
                )  # fmt: skip
                stages += [tune, evaluate]
    return stages


def plan_stages(settings: Settings, out: Path, dataset_dir: Path, datalist: Path) -> list[BundleStage]:
    """All stages in run order: two pre-trainings, then per regime, arm and seed a fine-tuning and its evaluation."""
    return pretrain_stages(settings, out) + finetune_stages(settings, out, dataset_dir, datalist)
