"""Did a pre-training learn its synthetic task? Its network, scored on the synthetic validation samples that its
bundle validates on (same seeds), two ways:

- **class Dice**: per sample, the mean Dice over the classes present (background left out), then the mean over
  samples, as the bundle's ``val_mean_dice`` (MONAI's ``MeanDice``); and per class, the mean over the samples
  where it is present;
- **foreground Dice**: every class merged into one foreground against the background: were the shapes found at
  all, whatever class they were given? With the volume ratio predicted / true foreground.

A network with a high foreground Dice and a low class Dice has learned to delineate the shapes but not to tell
their classes apart. The bundle's config is rebuilt from the stage's own recorded ``monai.bundle run`` command, so
the samples, the network and the inferer are the run's; the weights are the final network (``models/model.pt``)
or, for a pre-training still under way, its newest epoch checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import _bundles
import torch
from monai.metrics import compute_dice

from experiments.runner import PARTIAL_SUFFIX, RESUME_KEY, read_record, utc_now
from experiments.transfer.report import run_section
from synth_transforms.export import NETWORK_FILENAME, read_network_state
from synth_transforms.generate import class_names
from synth_transforms.handlers import foreground_pairs
from synth_transforms.io import read_json

CHECK_FILE = "pretrain_check.json"  # in the run folder: the check of every pre-training
SECTION = "pretrain_check"  # its section in a results page: pretrain_check_<run folder name>, one per run
BEST = 4  # classes named in the table's "best classes" column
FAILED = 0.05  # a class below this Dice counts as not learned in the table


def pretrain_runs(out: Path) -> dict[str, tuple[Path, list[str]]]:
    """``{name: (folder, command)}`` of each pre-training under ``<out>/pretrain``: a finished folder with the
    command of its stage record (``pretrain_<name>``), or the ``.partial`` folder of one under way with the command
    it was started with."""
    runs: dict[str, tuple[Path, list[str]]] = {}
    parent = Path(out) / "pretrain"
    for folder in sorted(parent.iterdir()) if parent.is_dir() else []:
        name = folder.name.removesuffix(PARTIAL_SUFFIX)
        if folder.name.endswith(PARTIAL_SUFFIX):
            key = folder / RESUME_KEY
            if not key.is_file() or name in runs:
                continue
            runs[name] = (folder, read_json(key, "resume key of a pre-training")["command"])
        elif (record := read_record(Path(out), f"pretrain_{name}")) is not None and record.get("ok"):
            runs[name] = (folder, record["command"])
    if not runs:
        raise FileNotFoundError(f"{parent}: no pre-training folder with a recorded command (run the pretrain stages)")
    return runs


def network_weights(folder: Path) -> tuple[Path, int | None]:
    """The weights to check and the iteration they were saved at: the final ``models/model.pt`` (iteration None:
    the run's last), else the ``runs/checkpoints/checkpoint_*.pt`` of the latest trainer iteration."""
    final = folder / "models" / NETWORK_FILENAME
    if final.is_file():
        return final, None
    iterations = {
        path: torch.load(path, map_location="cpu", weights_only=True).get("trainer", {}).get("iteration", -1)
        for path in (folder / "runs" / "checkpoints").glob("checkpoint_*.pt")
    }
    if not iterations:
        raise FileNotFoundError(f"{folder}: neither models/{NETWORK_FILENAME} nor runs/checkpoints/checkpoint_*.pt")
    latest = max(iterations, key=iterations.get)
    return latest, None if iterations[latest] < 0 else iterations[latest]


def dice_scores(prediction: torch.Tensor, label: torch.Tensor, num_classes: int) -> dict:
    """Dice of one ``(H, W, D)`` class map against its label: ``{"per_class": {class: Dice}}`` for the classes
    present in the label (background left out), ``"foreground"`` (every class against background; None when the
    label has no foreground) and ``"volume_ratio"`` (predicted / true foreground voxels)."""
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in shape")
    one_hot = [torch.nn.functional.one_hot(x.long(), num_classes).movedim(-1, 0) for x in (prediction, label)]
    dice = compute_dice(*(x[None] for x in one_hot), include_background=False, ignore_empty=True)[0]
    per_class = {str(c + 1): float(d) for c, d in enumerate(dice) if not math.isnan(float(d))}
    # the bundle's own foreground metric (val_foreground_dice): every class merged against the background
    merged = foreground_pairs([{"pred": one_hot[0], "label": one_hot[1]}])
    foreground = float(compute_dice(*(x[0][None] for x in merged), include_background=False, ignore_empty=True))
    truth, found = int((label > 0).sum()), int((prediction > 0).sum())
    return {
        "per_class": per_class,
        "foreground": None if math.isnan(foreground) else foreground,
        "volume_ratio": found / truth if truth else None,
    }


def summarise_scores(samples: Sequence[Mapping]) -> dict:
    """Mean scores over samples: class Dice (each sample's mean over its classes present, then the mean over the
    samples with a class present, as MONAI's ``MeanDice`` reduces), per class (over the samples where it is
    present), foreground Dice and volume ratio (over the samples with a foreground)."""
    sample_means = [_mean(list(s["per_class"].values())) for s in samples if s["per_class"]]
    classes = sorted({c for s in samples for c in s["per_class"]}, key=int)
    per_class = {c: _mean([s["per_class"][c] for s in samples if c in s["per_class"]]) for c in classes}
    return {
        "samples": len(samples),
        "class_dice": _mean(sample_means),
        "per_class": per_class,
        "foreground_dice": _mean([s["foreground"] for s in samples if s["foreground"] is not None]),
        "foreground_volume_ratio": _mean([s["volume_ratio"] for s in samples if s["volume_ratio"] is not None]),
    }


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def bundle_parser(command: Sequence[str]):
    """The ``monai.bundle.ConfigParser`` of a recorded ``python -m monai.bundle run`` command: its config files,
    then its overrides."""
    from monai.bundle import ConfigParser

    files, overrides = _bundles.parse_bundle_command(command)
    parser = ConfigParser()
    parser.read_config(files)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def check_pretraining(folder: Path, command: Sequence[str], num_samples: int | None = None) -> dict:
    """Score the network of the pre-training in ``folder`` (started with ``command``) on its synthetic validation
    samples (the first ``num_samples``; default: as many as the bundle validates on)."""
    parser = bundle_parser(command)
    weights, iteration = network_weights(folder)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(read_network_state(weights))
    network.eval()
    inferer = parser.get_parsed_content("validate#inferer")
    dataset = parser.get_parsed_content("validate#dataset")
    num_classes = int(parser.get_parsed_content("num_classes"))
    names = synth_class_names(parser.get_parsed_content("synth"))
    count = len(dataset) if num_samples is None else min(int(num_samples), len(dataset))
    samples = []
    with torch.inference_mode():
        for index in range(count):
            item = dataset[index]
            prediction = inferer(item["image"][None].float(), network).argmax(1)[0]
            samples.append(dice_scores(prediction, item["label"][0], num_classes))
    if iteration is None:
        iteration = int(parser.get_parsed_content("num_iterations"))
    summary = summarise_scores(samples)
    summary["class_names"] = {c: names[int(c)] for c in summary["per_class"]}
    return {"weights": str(weights), "iteration": iteration, **summary}


def synth_class_names(synth) -> list[str]:
    """Class names by id (0 = background) of a bundle's synthesis transform: the bank's organs or the primitives."""
    bank = getattr(synth.label_maker, "bank", None)
    return class_names(primitives=bank is None, bank=bank)


def check_run(out: Path, num_samples: int | None = None, names: Sequence[str] | None = None) -> dict:
    """Check every pre-training of the run ``out`` (or those in ``names``)."""
    runs = pretrain_runs(out)
    unknown = sorted(set(names or []) - set(runs))
    if unknown:
        raise ValueError(f"{out}: no pre-training named {unknown}; it has {sorted(runs)}")
    chosen = {name: runs[name] for name in (names or runs)}
    return {
        "written": utc_now(),
        "checks": {name: check_pretraining(*run, num_samples) for name, run in chosen.items()},
    }


def section_name(out: Path) -> str:
    """The results-page section of the check of the run ``out``: one per run folder, so that the main run's and an
    ablation's checks stand side by side in one page."""
    return run_section(SECTION, out)


def check_markdown(result: Mapping, run: str | None = None) -> str:
    """The check as a results-page section: one row per pre-training (``run``: the run's name, in the title)."""
    title = "Did each pre-training learn its synthetic task?" + (f" ({run})" if run else "")
    lines = [
        f"## {title}",
        "",
        f"Written {result['written']} by `scripts/run_transfer_experiment.py check_pretrain`: each network on its "
        "bundle's synthetic validation samples. Class Dice is the mean over the classes present (the bundle's "
        "`val_mean_dice`); foreground Dice merges every class against the background (were the shapes found, "
        "whatever their class?).",
        "",
        "| pre-training | iteration | samples | class Dice | foreground Dice | predicted / true foreground | best "
        "classes | classes at Dice < 0.05 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, check in result["checks"].items():
        cells = [name, str(check["iteration"]), str(check["samples"])]
        cells += [_fmt(check[key]) for key in ("class_dice", "foreground_dice", "foreground_volume_ratio")]
        ranked = sorted(check["per_class"].items(), key=lambda item: -item[1])
        title = check.get("class_names", {})
        cells.append(", ".join(f"{title.get(c, c)} {d:.2f}" for c, d in ranked[:BEST] if d >= FAILED))
        cells.append(f"{sum(d < FAILED for d in check['per_class'].values())} of {len(ranked)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
