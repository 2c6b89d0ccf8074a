"""The transfer experiment's command line: ``run`` (plan, run or resume the stages, write the results), ``pack`` and
``unpack``. ``scripts/run_transfer_experiment.py`` calls :func:`main`."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from collections.abc import Sequence
from pathlib import Path

import _bundles

from experiments.runner import StageRunner
from experiments.transfer.estimate import plan_lines
from experiments.transfer.pack import pack, unpack
from experiments.transfer.plan import (
    BANK_CLASS_MAP,
    BANK_SUBJECTS,
    Settings,
    make_settings,
    plan_stages,
    read_datalist,
    write_datalist,
)
from experiments.transfer.report import results_table, summarise, write_results
from synth_transforms.fire_runner import run_fire
from synth_transforms.io import read_json, write_json_atomic

DEFAULT_DATASET = _bundles.REPO.parent / "shared" / "data" / "msd_hippocampus"


def check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} asked for but torch sees no CUDA device: use --preset cpu (or quick) or --device cpu"
        )


def preset_name(preset: str | None, quick: bool) -> str:
    """The preset chosen by ``--preset`` and ``--quick`` (an alias of ``--preset quick``); default ``gpu``."""
    if quick and preset not in (None, "quick"):
        raise ValueError(f"--quick is --preset quick, but --preset {preset!r} was given too: pass one of them")
    return "quick" if quick else preset or "gpu"


def stage_environment(device: str, jobs: int) -> dict:
    """The stages' environment: the repository importable (a device machine runs it from the working tree) and, on
    the CPU, the cores shared between the stages running at once."""
    paths = [str(_bundles.REPO), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    if device == "cpu":
        threads = str(max(1, (os.cpu_count() or 1) // max(1, int(jobs))))
        env |= {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return env


def run(
    out: str = "runs/transfer",
    preset: str | None = None,
    quick: bool = False,
    only: str | Sequence[str] = "*",
    jobs: int = 1,
    dataset_dir: str = str(DEFAULT_DATASET),
    bank_subjects: str = str(BANK_SUBJECTS),
    results_doc: str | None = None,
    dry_run: bool = False,
    **overrides,
) -> dict:
    """Run (or resume) the experiment into ``out``; ``only`` selects stages by name pattern(s).

    ``--preset`` names the starting values: ``gpu`` (the default: the GPU protocol), ``cpu`` (the 2-core CPU
    protocol) or ``quick`` (the tiny CPU version of the same path: the bundles' ``configs/cpu_smoke.json``; the test
    suite runs it; ``--quick`` is an alias). Any field of ``Settings`` can be overridden on top, e.g.
    ``--pretrain_iterations 3000 --seeds 0,1``. ``--dry_run`` prints the plan with a wall-time estimate per stage and
    runs nothing. Writes ``results.json``/``results.md`` (and the learning-curve PNGs) in ``out`` (and the Markdown to
    ``results_doc`` when given) from every evaluation finished so far.
    """
    settings = make_settings(preset_name(preset, quick), overrides)
    out_path, dataset = Path(out).resolve(), Path(dataset_dir).resolve()
    if not (dataset / "dataset.json").is_file():
        raise FileNotFoundError(f"{dataset / 'dataset.json'} not found: pass --dataset_dir, the MSD Hippocampus folder")
    subjects = Path(bank_subjects).resolve()
    if settings.bank_file is not None and not (subjects / BANK_CLASS_MAP).is_file():
        raise FileNotFoundError(f"{subjects / BANK_CLASS_MAP} not found: pass --bank_subjects, the five label maps")
    if dry_run:
        return dry_run_plan(settings, out_path, dataset, subjects, jobs)
    check_device(settings.device)
    out_path.mkdir(parents=True, exist_ok=True)
    settings_file = out_path / "settings.json"
    recorded = dataclasses.asdict(settings)
    if settings_file.is_file() and read_json(settings_file, "experiment settings") != json.loads(json.dumps(recorded)):
        raise ValueError(f"{out_path} holds a run with other settings ({settings_file}); use a new --out folder")
    write_json_atomic(settings_file, recorded)
    datalist = write_datalist(dataset, out_path / "datalist.json", settings.val_cases)

    stages = plan_stages(settings, out_path, dataset, datalist, subjects)
    patterns = [only] if isinstance(only, str) else list(only)
    selected = [stage for stage in stages if any(fnmatch.fnmatch(stage.name, p) for p in patterns)]
    if not selected:
        raise ValueError(f"--only {patterns} matches no stage; stages are {[s.name for s in stages]}")
    StageRunner(out_path, jobs, stage_environment(settings.device, jobs)).run(stages, selected)

    labels = read_json(dataset / "dataset.json", "Decathlon dataset.json").get("labels", {})
    summary = summarise(settings, out_path, stages, labels)
    write_results(summary, out_path, results_doc)
    print("\n".join(results_table(summary)) or "no evaluation finished yet")
    return summary


def dry_run_plan(settings: Settings, out: Path, dataset: Path, subjects: Path, jobs: int) -> dict:
    """Print the plan with a wall-time estimate per stage; write nothing."""
    datalist = read_datalist(dataset, settings.val_cases)
    stages = plan_stages(settings, out, dataset, out / "datalist.json", subjects)
    sizes = {"train_cases": len(datalist["training"]), "val_cases": len(datalist["validation"])}
    lines = plan_lines(stages, settings, jobs, os.cpu_count() or 1, **sizes)
    print("\n".join(lines))
    return {"settings": dataclasses.asdict(settings), "stages": [stage.name for stage in stages], "plan": lines}


def main(argv: Sequence[str] | None = None) -> None:
    run_fire({"run": run, "pack": pack, "unpack": unpack}, argv, name="run_transfer_experiment.py")
