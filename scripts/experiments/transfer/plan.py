"""Settings and stage plan of the transfer experiment: two pre-trainings (anatomy, primitives), then per data regime,
arm and seed a fine-tuning and its evaluation, each one ``python -m monai.bundle run`` of the repository's bundles."""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import _bundles

from experiments.runner import Stage
from synth_transforms._args import as_size3, check_choice, check_positive, check_positive_int, fail
from synth_transforms.cli_args import comma_items
from synth_transforms.io import read_json, write_json_atomic

ARMS = ("scratch", "primitives", "anatomy")
PRETRAIN_CONFIG_FILES = {"anatomy": ["train.json"], "primitives": ["train.json", "primitives.json"]}
FINETUNE_CONFIG_FILES = ["train.json", "msd_hippocampus.json"]
EVALUATE_CONFIG_FILES = [*FINETUNE_CONFIG_FILES, "evaluate.json"]
ENCODER = "model_swinvit.pt"
METRICS_FILE = "metrics/val_mean_dice_raw.csv"  # in an evaluation's folder: Dice per case and class
FINETUNED_WEIGHTS = "models/model_final.pt"  # in a fine-tuning's folder: its final network, the one evaluated
QUICK_VAL_CASES = 2  # validation cases of --quick (the experiment's own; the rest comes from cpu_smoke.json)
BANK_SUBJECTS = _bundles.REPO.parent / "shared" / "data" / "shape_bank_subjects"  # the five label maps of the method
DEFAULT_DATASET = _bundles.REPO.parent / "shared" / "data" / "msd_hippocampus"  # the fine-tuning task
BANK_LABEL_MAPS = "*/label_total117.nii.gz"
BANK_CLASS_MAP = "class_map_totalseg_v2_total.json"
PRESETS = ("gpu", "cpu", "quick")
OWNER = "transfer experiment settings"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that defines a run of the experiment; recorded in ``settings.json`` and ``results.json``.

    Sequences given as text (``"0,1,2"``) or lists are normalised to tuples, so a recorded ``settings.json`` reads
    back to equal settings.
    """

    preset: str = "gpu"  # the named starting point the other values were taken from (see PRESETS)
    device: str = "cuda"
    feature_size: int = 48
    use_checkpoint: bool = False
    amp_dtype: str = "float16"  # AMP on CUDA only; the bundles train in fp32 on the CPU
    # pre-training (both arms alike)
    pretrain_patch: int = 96  # a cube, voxels
    pretrain_spacing: float | None = None  # None: the bundle's default bank (1.5 mm); else a bank built at it first
    pretrain_batch: int = 2
    pretrain_iterations: int = 1500
    pretrain_learning_rate: float = 1e-4
    pretrain_warmup: int | None = None  # None: 10 % of the iterations, at most 500
    pretrain_val_points: int = 3  # synthetic validation rounds, evenly spaced (the last one at the end)
    pretrain_workers: int = 8
    pretrain_val_samples: int = 16
    # fine-tuning (every arm alike) and evaluation
    finetune_patch: tuple[int, int, int] = (64, 64, 64)
    finetune_batch: int = 2
    finetune_iterations: int = 500
    finetune_learning_rate: float = 1e-4
    finetune_warmup: int | None = None  # None: 10 % of the iterations, at most 500
    finetune_val_points: int = 0  # validation rounds for the learning curve (reported only); 0: none
    finetune_workers: int = 4
    few_shot_cases: int = 10
    subset_seed: int = 0
    seeds: tuple[int, ...] = (0,)  # seeds of the few-shot regime
    all_seeds: tuple[int, ...] | None = None  # seeds of the all-cases regime (None: the same as ``seeds``)
    val_cases: int | None = None  # None: the whole validation split
    cache_rate: float = 1.0

    def __post_init__(self):
        set_field = functools.partial(object.__setattr__, self)
        check_choice(self.preset, "preset", PRESETS, OWNER)
        side = as_size3(self.pretrain_patch, "pretrain_patch", OWNER, multiple_of=32)
        if len(set(side)) != 1:
            raise fail("pretrain_patch", "the side of a cube (one integer)", self.pretrain_patch, OWNER)
        set_field("pretrain_patch", side[0])
        set_field("finetune_patch", as_size3(self.finetune_patch, "finetune_patch", OWNER, multiple_of=32))
        set_field("seeds", parse_seeds(self.seeds, "seeds"))
        if self.all_seeds is not None:
            set_field("all_seeds", parse_seeds(self.all_seeds, "all_seeds"))
        if self.pretrain_spacing is not None:
            set_field("pretrain_spacing", check_positive(self.pretrain_spacing, "pretrain_spacing", OWNER))
        for name in ("pretrain_iterations", "finetune_iterations", "pretrain_val_points"):
            check_positive_int(getattr(self, name), name, OWNER)
        check_positive_int(self.finetune_val_points, "finetune_val_points", OWNER, minimum=0)
        for kind in ("pretrain", "finetune"):
            iterations, points = getattr(self, f"{kind}_iterations"), getattr(self, f"{kind}_val_points")
            if points and iterations % points:
                raise fail(f"{kind}_iterations", f"a multiple of {kind}_val_points ({points})", iterations, OWNER)

    @property
    def regimes(self) -> dict[str, int | None]:
        """Data regime name -> number of training cases (None: all of the training split)."""
        return {"few_shot": self.few_shot_cases, "all": None}

    def regime_seeds(self, regime: str) -> tuple[int, ...]:
        """The fine-tuning seeds of ``regime``."""
        return self.seeds if regime == "few_shot" or self.all_seeds is None else self.all_seeds

    @property
    def bank_file(self) -> str | None:
        """Name of the bank the experiment builds for pre-training (None: the bundle's default bank)."""
        return None if self.pretrain_spacing is None else f"bank_{self.pretrain_spacing:g}mm.npz"


def parse_seeds(value, name: str, owner: str = OWNER) -> tuple[int, ...]:
    """Seeds from a list, a tuple, one integer or a comma string (``"0,1,2"``): one or more distinct integers."""
    try:
        parsed = tuple(int(seed) for seed in comma_items(value))
    except ValueError:
        raise fail(name, "integers (e.g. 0,1,2)", value, owner) from None
    if not parsed or len(set(parsed)) != len(parsed):
        raise fail(name, "one or more distinct integers", value, owner)
    return parsed


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
        "pretrain_val_points": 1,
        "pretrain_workers": pre["num_workers"],
        "pretrain_val_samples": pre["num_val_samples"],
        "finetune_patch": tuple(tune["patch_size"]),
        "finetune_batch": tune["batch_size"],
        "finetune_iterations": tune["max_epochs"] * tune["epoch_length"],
        "finetune_workers": tune["num_workers"],
        "cache_rate": tune["cache_rate"],
        "val_cases": QUICK_VAL_CASES,
    }


# The 2-core CPU protocol. Sizes from step times and short learning curves measured on the 2-core development
# machine (docs/results.md, "CPU protocol"): fp32, feature_size 12, one thread per stage with two stages at once.
# The learning curves it records (pre-training: 10 rounds; fine-tuning: 5) show whether these budgets suffice.
# Pre-training sees the body at the GPU protocol's scale: 64^3 voxels at 2.25 mm = 144 mm a side (96^3 at 1.5 mm),
# from a bank built at that spacing from the same five subjects. Fine-tuning crops fit the Hippocampus volumes
# (about 35x50x36 voxels): 32x64x32, not a 64^3 cube that is mostly padding.
CPU_PRESET = {
    "device": "cpu",
    "feature_size": 12,
    "use_checkpoint": False,
    "pretrain_patch": 64,
    "pretrain_spacing": 2.25,
    "pretrain_batch": 2,
    # 2400 (30 epochs of 80), as the CPU run of docs/results.md: 800 left the anatomy arm at a synthetic Dice of 0.2
    "pretrain_iterations": 2400,  # about 5.5 h per arm at 8.2 s per step on one thread, validation included
    "pretrain_learning_rate": 3e-3,  # ahead of 1e-3 after 40 measured iterations (loss 2.87 vs 3.36)
    "pretrain_warmup": 50,
    "pretrain_val_points": 30,
    "pretrain_workers": 0,
    "pretrain_val_samples": 16,
    "finetune_patch": (32, 64, 32),
    "finetune_batch": 4,
    "finetune_iterations": 500,
    "finetune_learning_rate": 1e-3,
    "finetune_warmup": 25,
    "finetune_val_points": 5,
    "finetune_workers": 0,
    "seeds": (0, 1, 2, 3, 4),
    "all_seeds": (0,),
    "val_cases": None,
    "cache_rate": 1.0,
}


def preset_settings(preset: str) -> dict:
    """The values of a named preset (``gpu``: the ``Settings`` defaults), with its name."""
    check_choice(preset, "preset", PRESETS, OWNER)
    values = {"gpu": {}, "cpu": CPU_PRESET, "quick": quick_settings() if preset == "quick" else {}}[preset]
    return {**values, "preset": preset}


def make_settings(preset: str = "gpu", overrides: dict | None = None) -> Settings:
    """``Settings`` from the preset's values with ``--<field> value`` overrides on top."""
    overrides = dict(overrides or {})
    fields = {f.name: f.default for f in dataclasses.fields(Settings)}
    unknown = set(overrides) - set(fields)
    if unknown:
        known = ", ".join(f"--{name} (default {default})" for name, default in fields.items() if name != "preset")
        raise TypeError(f"unknown setting(s) {sorted(unknown)}; the settings are: {known}")
    if "preset" in overrides:
        raise TypeError("preset is chosen with --preset (or --quick), not overridden as a setting")
    return Settings(**{**preset_settings(preset), **overrides})


@dataclasses.dataclass(kw_only=True)
class BundleStage(Stage):
    """A stage that is one ``python -m monai.bundle run`` of ``config_files`` of ``bundle`` with ``overrides``."""

    bundle: Path
    config_files: list[str]
    overrides: dict

    def command(self, root: Path | None = None) -> list[str]:
        return _bundles.bundle_command(self.bundle, self.config_files, root or self.root, self.overrides)


@dataclasses.dataclass(kw_only=True)
class BankStage(Stage):
    """The build of the pre-training bank at the experiment's spacing from the five subjects' label maps."""

    subjects: Path
    spacing: float
    bank_file: str

    def command(self, root: Path | None = None) -> list[str]:
        label_maps, class_map = str(self.subjects / BANK_LABEL_MAPS), str(self.subjects / BANK_CLASS_MAP)
        out = str((root or self.root) / self.bank_file)
        command = [sys.executable, "-m", "synth_transforms", "bank", "build", "--label_maps", label_maps]
        return command + ["--class_map", class_map, "--spacing", str(self.spacing), "--out", out]


def warmup_steps(iterations: int) -> int:
    """Linear warm-up over 10 % of a short run, at most the bundles' 500 steps."""
    return max(1, min(500, iterations // 10))


def epoch_plan(iterations: int, epoch_length: int = 100) -> tuple[int, int]:
    """(max_epochs, epoch_length) giving exactly ``iterations`` iterations."""
    length = min(epoch_length, iterations)
    while iterations % length:
        length -= 1
    return iterations // length, length


def curve_points(iterations: int, points: int) -> list[int]:
    """The iterations after which a run with ``points`` evenly spaced validation rounds validates."""
    return [iterations // points * (k + 1) for k in range(points)] if points else []


def write_datalist(dataset_dir: Path, path: Path, val_cases: int | None) -> Path:
    """The dataset's fixed split, with the validation list cut to ``val_cases`` when given."""
    write_json_atomic(path, read_datalist(dataset_dir, val_cases))
    return path


def read_datalist(dataset_dir: Path, val_cases: int | None) -> dict:
    """The dataset's fixed split (``training``, ``validation`` cut to ``val_cases``) from its ``dataset.json``."""
    datalist = read_json(dataset_dir / "dataset.json", "Decathlon dataset.json")
    for split in ("training", "validation"):
        if not datalist.get(split):
            raise ValueError(f"{dataset_dir / 'dataset.json'}: expected a non-empty {split!r} list")
    return {"training": datalist["training"], "validation": datalist["validation"][:val_cases]}


def case_counts(dataset_dir: Path, val_cases: int | None) -> dict[str, int]:
    """How many training and validation cases the split has: the ``train_cases``/``val_cases`` of the estimates."""
    datalist = read_datalist(dataset_dir, val_cases)
    return {"train_cases": len(datalist["training"]), "val_cases": len(datalist["validation"])}


def bank_stages(s: Settings, out: Path, subjects: Path = BANK_SUBJECTS) -> list[BankStage]:
    """The bank build at ``pretrain_spacing``, or nothing when pre-training uses the bundle's default bank."""
    if s.bank_file is None:
        return []
    return [BankStage("bank", out / "bank", [s.bank_file], subjects=subjects, spacing=s.pretrain_spacing,
                      bank_file=s.bank_file)]  # fmt: skip


def bank_path(s: Settings, out: Path) -> Path | None:
    """The bank file that the bank stage of a run in ``out`` builds (None: pre-training uses the bundle's default)."""
    return None if s.bank_file is None else out / "bank" / s.bank_file


def pretrain_overrides(s: Settings, bank: Path | None) -> dict:
    """The overrides of every anatomy pre-training of the experiment (its arms and ablations alike): the recipe and
    budget of ``s``, on the bank file ``bank`` (None: the bundle's default bank)."""
    overrides = {
        "device": s.device, "feature_size": s.feature_size, "patch_size": [s.pretrain_patch] * 3,
        "batch_size": s.pretrain_batch, "num_workers": s.pretrain_workers,
        "num_iterations": s.pretrain_iterations,
        "iterations_per_epoch": s.pretrain_iterations // s.pretrain_val_points,
        "warmup_steps": s.pretrain_warmup if s.pretrain_warmup is not None else warmup_steps(s.pretrain_iterations),
        "learning_rate": s.pretrain_learning_rate, "num_val_samples": s.pretrain_val_samples,
        "use_checkpoint": s.use_checkpoint, "amp_dtype": s.amp_dtype, "export_encoder_dtype": "float16",
        "progress_bar": False, "resume": True,
    }  # fmt: skip
    return overrides if bank is None else {**overrides, "bank": str(bank)}


def pretrain_stage(s: Settings, name: str, root: Path, config_files: Sequence[str], overrides: dict, needs=()):
    """One resumable pre-training ``pretrain_<name>`` of the anatomy_pretrain bundle, leaving its encoder."""
    return BundleStage(
        f"pretrain_{name}", root, [f"models/{ENCODER}"], list(needs), s.pretrain_iterations, resumable=True,
        bundle=_bundles.PRETRAIN, config_files=list(config_files), overrides=overrides,
    )  # fmt: skip


def pretrain_stages(s: Settings, out: Path) -> list[BundleStage]:
    """The two pre-trainings, identical but for the data (``primitives.json``; primitive solids are sized in
    fractions of the patch, so only their recorded spacing follows the bank's)."""
    bank = bank_path(s, out)
    overrides = pretrain_overrides(s, bank)
    by_kind = {kind: {} for kind in PRETRAIN_CONFIG_FILES}
    if bank is not None:
        by_kind["primitives"] = {"synth#spacing": s.pretrain_spacing}
    needs = [] if bank is None else ["bank"]
    return [
        pretrain_stage(s, kind, out / "pretrain" / kind, files, {**overrides, **by_kind[kind]}, needs)
        for kind, files in PRETRAIN_CONFIG_FILES.items()
    ]


def finetune_schedule(s: Settings) -> dict:
    """Epochs, epoch length and validation interval of every fine-tuning: validation rounds only for the learning
    curve (``finetune_val_points``), none otherwise (an interval past the last epoch)."""
    if s.finetune_val_points:
        epoch_length = s.finetune_iterations // s.finetune_val_points
        return {"max_epochs": s.finetune_val_points, "epoch_length": epoch_length, "val_interval": 1}
    max_epochs, epoch_length = epoch_plan(s.finetune_iterations)
    return {"max_epochs": max_epochs, "epoch_length": epoch_length, "val_interval": max_epochs + 1}


def rotation_override(patch: Sequence[int]) -> dict:
    """Overrides keeping the fine-tuning's random 90-degree rotation shape-preserving for a non-cubic patch.

    ``RandRotate90d`` turns the crop in the plane of ``rotate90_axes`` (default: axes 0 and 1); when those axes differ
    in size the rotated crop has another shape and a batch of crops cannot be stacked. Rotate in a plane whose two
    sides are equal instead, or not at all when no two sides are.
    """
    if patch[0] == patch[1]:
        return {}
    pairs = [axes for axes in ((0, 2), (1, 2)) if patch[axes[0]] == patch[axes[1]]]
    return {"rotate90_axes": list(pairs[0])} if pairs else {"rotate90_prob": 0.0}


def finetune_stages(s: Settings, out: Path, dataset_dir: Path, datalist: Path) -> list[BundleStage]:
    """Per regime, seed and arm: a fine-tuning (one recipe in every arm) and the evaluation of its final weights.
    Seed-major, so that a run stopped part-way has paired seeds of every arm rather than every seed of one arm."""
    stages = []
    for regime in s.regimes:
        for seed in s.regime_seeds(regime):
            for arm in ARMS:
                encoder = None if arm == "scratch" else out / "pretrain" / arm / "models" / ENCODER
                needs = [] if arm == "scratch" else [f"pretrain_{arm}"]
                stages += finetune_pair(s, out, dataset_dir, datalist, regime, arm, seed, encoder, needs)
    return stages


def finetune_pair(
    s: Settings,
    out: Path,
    dataset_dir: Path,
    datalist: Path,
    regime: str,
    arm: str,
    seed: int,
    encoder: Path | None,
    needs: Sequence[str] = (),
) -> list[BundleStage]:
    """``finetune_<regime>_<arm>_seed<seed>`` (from the pre-trained ``encoder``, None: from scratch; after the stages
    ``needs``) and ``evaluate_...`` of its final weights, in ``out/finetune`` and ``out/evaluate``: the one recipe
    of every arm."""
    data = {"device": s.device, "dataset_dir": str(dataset_dir), "datalist": str(datalist)}
    network = {"feature_size": s.feature_size, "patch_size": list(s.finetune_patch), "amp_dtype": s.amp_dtype}
    loading = {"num_workers": s.finetune_workers, "cache_rate": s.cache_rate}
    warmup = s.finetune_warmup if s.finetune_warmup is not None else warmup_steps(s.finetune_iterations)
    name = f"{regime}_{arm}_seed{seed}"
    root = out / "finetune" / name
    overrides = {
        **data, **network, **loading, "seed": seed, "subset_seed": s.subset_seed,
        "num_train_cases": s.regimes[regime], "batch_size": s.finetune_batch, "num_samples": 1,
        **finetune_schedule(s), "warmup_steps": warmup, "learning_rate": s.finetune_learning_rate,
        "use_checkpoint": s.use_checkpoint, **rotation_override(s.finetune_patch), "resume": True,
    }  # fmt: skip
    if encoder is not None:
        overrides |= {"pretrained": str(encoder), "transfer": "encoder"}
    tune = BundleStage(
        f"finetune_{name}", root, [FINETUNED_WEIGHTS], list(needs), s.finetune_iterations, resumable=True,
        bundle=_bundles.FINETUNE, config_files=list(FINETUNE_CONFIG_FILES), overrides=overrides,
    )  # fmt: skip
    overrides = {
        **data, **network, **loading, "seed": seed,
        "checkpoint": str(root / FINETUNED_WEIGHTS), "output_dir": "$@bundle_root + '/metrics'",
    }  # fmt: skip
    evaluate = BundleStage(
        f"evaluate_{name}", out / "evaluate" / name, [METRICS_FILE], [tune.name],
        bundle=_bundles.FINETUNE, config_files=list(EVALUATE_CONFIG_FILES), overrides=overrides,
    )  # fmt: skip
    return [tune, evaluate]


def plan_stages(
    settings: Settings, out: Path, dataset_dir: Path, datalist: Path, bank_subjects: Path = BANK_SUBJECTS
) -> list[Stage]:
    """All stages in run order: the bank build (when pre-training has its own spacing), two pre-trainings, then per
    regime, seed and arm a fine-tuning and its evaluation."""
    return (
        bank_stages(settings, out, bank_subjects)
        + pretrain_stages(settings, out)
        + finetune_stages(settings, out, dataset_dir, datalist)
    )
