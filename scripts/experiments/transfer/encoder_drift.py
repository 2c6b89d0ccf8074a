"""How far did each fine-tuning move its encoder? A pre-trained encoder can only help if fine-tuning keeps some of
it, and a learning rate that is too high may turn it into a random start; this measures which.

For each finished fine-tuning of a run, the Swin encoder (``swinViT``) it started from is rebuilt from the stage's
own recorded ``monai.bundle run`` command (the bundle's ``initialize``: the seed, then the pre-trained encoder or
nothing) and compared with the final weights (``models/model_final.pt``): the relative change
``||w_final - w_start|| / ||w_start||`` over the whole encoder and per part (patch embedding, the four Swin stages).
The scratch arm starts from the random initialisation of its seed, rebuilt the same way, so the arms compare on one
scale. Reported only; it chooses nothing.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from experiments.runner import Stage, is_done, is_settled, read_record, utc_now
from experiments.transfer.plan import FINETUNED_WEIGHTS
from experiments.transfer.report import run_section
from experiments.transfer.synthetic_check import bundle_parser
from synth_transforms.export import read_network_state
from synth_transforms.io import read_json

DRIFT_FILE = "encoder_drift.json"  # in the run folder
SECTION = "encoder_drift"  # its section in a results page: encoder_drift_<run folder name>
ENCODER = "swinViT."
PARTS = ("patch_embed", "layers1", "layers2", "layers3", "layers4")


def encoder_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's floating-point tensors of a whole-network state dict, named without the ``swinViT.`` prefix
    (index buffers left out: training never changes them)."""
    chosen = (name for name, tensor in state.items() if name.startswith(ENCODER) and tensor.is_floating_point())
    return {name.removeprefix(ENCODER): state[name].float() for name in chosen}


def relative_change(start: Mapping[str, torch.Tensor], final: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``||final - start|| / ||start||`` over every encoder tensor (``"encoder"``) and per part (``PARTS``)."""
    missing = sorted(set(start) ^ set(final))
    if missing:
        raise ValueError(f"the start and final encoders differ in tensors: {missing[:5]}")
    sums: dict[str, list[float]] = {part: [0.0, 0.0] for part in ("encoder", *PARTS)}
    for name, tensor in start.items():
        change, size = float((final[name] - tensor).pow(2).sum()), float(tensor.pow(2).sum())
        for part in ("encoder", name.split(".")[0]):
            if part in sums:
                sums[part][0] += change
                sums[part][1] += size
    return {part: (change / size) ** 0.5 for part, (change, size) in sums.items() if size > 0}


def starting_encoder(command: Sequence[str]) -> dict[str, torch.Tensor]:
    """The encoder a fine-tuning started from, rebuilt from its recorded ``monai.bundle run`` command: the bundle's
    ``initialize`` (seeded, then the pre-trained encoder loaded when the command names one) on its network."""
    parser = bundle_parser(command)
    with torch.random.fork_rng():
        parser.get_parsed_content("initialize")
        network = parser.get_parsed_content("network")
    return encoder_tensors(network.state_dict())


def finetune_name(stage: str, regimes: Sequence[str]) -> tuple[str, str, int]:
    """``(regime, arm, seed)`` of the stage ``finetune_<regime>_<arm>_seed<seed>``."""
    rest, seed = stage.removeprefix("finetune_").rsplit("_seed", 1)
    regime = next((r for r in sorted(regimes, key=len, reverse=True) if rest.startswith(f"{r}_")), None)
    if regime is None:
        raise ValueError(f"{stage}: not a fine-tuning of one of the regimes {list(regimes)}")
    return regime, rest.removeprefix(f"{regime}_"), int(seed)


def measure_run(out: Path, stages: Sequence[Stage], regimes: Sequence[str]) -> dict:
    """The drift of every finished fine-tuning of the run ``out``: ``{"runs": [{regime, arm, seed, change}]}``.

    A fine-tuning whose weights are gone but whose evaluation is done (a run restored from its records) keeps the
    measurement the run's ``encoder_drift.json`` already holds for it."""
    path = out / DRIFT_FILE
    earlier = read_json(path, "encoder drift")["runs"] if path.is_file() else []
    kept = {(run["regime"], run["arm"], run["seed"]): run for run in earlier}
    runs = []
    for stage in stages:
        if not stage.name.startswith("finetune_"):
            continue
        regime, arm, seed = finetune_name(stage.name, regimes)
        if is_done(out, stage):
            start = starting_encoder(read_record(out, stage.name)["command"])
            final = encoder_tensors(read_network_state(stage.root / FINETUNED_WEIGHTS))
            runs.append({"regime": regime, "arm": arm, "seed": seed, "change": relative_change(start, final)})
        elif is_settled(out, stage, stages) and (regime, arm, seed) in kept:
            runs.append(kept[(regime, arm, seed)])
    if not runs:
        raise FileNotFoundError(f"{out}: no finished fine-tuning yet (run its finetune stages first)")
    return {"written": utc_now(), "runs": runs}


def section_name(out: Path) -> str:
    """The results-page section of the run ``out``'s drift: one per run folder."""
    return run_section(SECTION, out)


def drift_markdown(result: Mapping, run: str | None = None) -> str:
    """The drift as a results-page section: per regime and arm, the mean (± std over seeds) relative change."""
    title = "How far did fine-tuning move each encoder?" + (f" ({run})" if run else "")
    lines = [
        f"## {title}",
        "",
        f"Written {result['written']} by `scripts/run_transfer_experiment.py encoder_drift`: the relative change "
        "||w_final - w_start|| / ||w_start|| of the Swin encoder's weights between the start of each fine-tuning "
        "(the pre-trained encoder, or the seed's random initialisation for scratch, rebuilt from the stage's "
        "recorded command) and its final weights; mean ± std over seeds. Reported only.",
        "",
        "| regime | arm | seeds | whole encoder | " + " | ".join(PARTS) + " |",
        "|---|---|---|---|" + "---|" * len(PARTS),
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for run_ in result["runs"]:
        groups.setdefault((run_["regime"], run_["arm"]), []).append(run_)
    for (regime, arm), runs in groups.items():
        cells = [regime, arm, ", ".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))]
        cells += [_spread([r["change"][part] for r in runs]) for part in ("encoder", *PARTS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _spread(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"
