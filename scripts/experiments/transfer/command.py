"""The transfer experiment's command line: ``run`` (plan, run or resume the stages, write the results), ``ablate``
(the ablation arms and the data-volume curve on top of a main run), the read-only ``status``, ``report``,
``check_pretrain`` and ``encoder_drift``, ``pack`` and ``unpack``, and ``restore`` (a run folder from its published
records).
``scripts/run_transfer_experiment.py`` calls :func:`main`."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import _bundles

from experiments.runner import Stage, StageRunner, only_patterns, select_stages
from experiments.transfer import ablation, encoder_drift, progress, synthetic_check
from experiments.transfer.estimate import measured_pace, plan_lines
from experiments.transfer.extend import check_extension, extend_pretraining
from experiments.transfer.pack import pack, unpack
from experiments.transfer.plan import (
    BANK_CLASS_MAP,
    BANK_SUBJECTS,
    DEFAULT_DATASET,
    Settings,
    case_counts,
    make_settings,
    plan_stages,
    write_datalist,
)
from experiments.transfer.report import results_table, summarise, write_results, write_section
from experiments.transfer.restore import restore
from synth_transforms.fire_runner import run_fire
from synth_transforms.io import read_json, write_json_atomic
from synth_transforms.machine import device_name


def check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} asked for but torch sees no CUDA device: use --preset cpu (or quick) or --device cpu"
        )


def check_dataset(dataset: Path) -> None:
    """Refuse a ``--dataset_dir`` without the Decathlon ``dataset.json``."""
    if not (dataset / "dataset.json").is_file():
        raise FileNotFoundError(f"{dataset / 'dataset.json'} not found: pass --dataset_dir, the MSD Hippocampus folder")


def preset_name(preset: str | None, quick: bool) -> str:
    """The preset chosen by ``--preset`` and ``--quick`` (an alias of ``--preset quick``); default ``gpu``."""
    if quick and preset not in (None, "quick"):
        raise ValueError(f"--quick is --preset quick, but --preset {preset!r} was given too: pass one of them")
    return "quick" if quick else preset or "gpu"


def stage_runner(out: Path, device: str, jobs: int, commit: str) -> StageRunner:
    """The runner of an experiment's stages; each record says the code's commit and the machine (a CPU model, or the
    GPU) the stage ran on: a run resumed on another machine mixes them, and CPU models differ in their last bits."""
    facts = {"commit": commit, "machine": device_name(device)}
    return StageRunner(out, jobs, stage_environment(device, jobs), facts)


def stage_environment(device: str, jobs: int) -> dict:
    """The stages' environment: the repository importable (a device machine runs it from the working tree) and, on
    the CPU, the cores shared between the stages running at once."""
    paths = [str(_bundles.REPO), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    if device == "cpu":
        threads = str(max(1, (os.cpu_count() or 1) // max(1, int(jobs))))
        env |= {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return env


def code_commit(repo: Path = _bundles.REPO) -> str:
    """The commit checked out in ``repo`` (``git rev-parse HEAD``), or ``"unknown"`` outside a git checkout."""
    try:
        done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def record_settings(path: Path, recorded: dict, what: str) -> None:
    """Write ``recorded`` to the run's ``settings.json``; a folder holding other settings is refused."""
    if path.is_file() and read_json(path, what) != json.loads(json.dumps(recorded)):
        raise ValueError(f"{path.parent} holds a run with other settings ({path}); use a new --out folder")
    write_json_atomic(path, recorded)


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
    extend: bool = False,
    **overrides,
) -> dict:
    """Run (or resume) the experiment into ``out``; ``only`` selects stages by name pattern(s) (``'bank,pretrain_*'``).

    ``--preset`` names the starting values: ``gpu`` (the default: the GPU protocol), ``cpu`` (the 2-core CPU
    protocol) or ``quick`` (the tiny CPU version of the same path: the bundles' ``configs/cpu_smoke.json``; the test
    suite runs it; ``--quick`` is an alias). Any field of ``Settings`` can be overridden on top, e.g.
    ``--pretrain_iterations 3000 --seeds 0,1``. ``--dry_run`` prints the plan with a wall-time estimate per stage (at
    the pace of the stages already finished in ``out``, if any) and runs nothing. Writes ``results.json`` and
    ``results.md`` (and the learning-curve PNGs) in ``out`` from every evaluation finished so far, and the Markdown as
    the section ``results_<out folder>`` of the page ``results_doc`` when given (the rest of that page kept; the run's
    small records copied beside it, to ``records/<out folder>``).
    ``--extend True`` lengthens the pre-training of an existing run (``--pretrain_iterations`` larger,
    ``--pretrain_val_points`` keeping the epoch length): the pre-trainings continue from their last checkpoints
    (``experiments/transfer/extend.py``).
    """
    settings = make_settings(preset_name(preset, quick), overrides)
    out_path, dataset = Path(out).resolve(), Path(dataset_dir).resolve()
    check_dataset(dataset)
    subjects = Path(bank_subjects).resolve()
    if settings.bank_file is not None and not (subjects / BANK_CLASS_MAP).is_file():
        raise FileNotFoundError(f"{subjects / BANK_CLASS_MAP} not found: pass --bank_subjects, the five label maps")
    if dry_run:
        return dry_run_plan(settings, out_path, dataset, subjects, jobs)
    check_device(settings.device)
    out_path.mkdir(parents=True, exist_ok=True)
    settings_file = out_path / "settings.json"
    if extend:
        if not settings_file.is_file():
            raise FileNotFoundError(f"--extend: {settings_file} not found: extend an existing run's --out folder")
        check_extension(Settings(**read_json(settings_file, "experiment settings")), settings)
    else:
        record_settings(settings_file, dataclasses.asdict(settings), "experiment settings")
    datalist = write_datalist(dataset, out_path / "datalist.json", settings.val_cases)

    stages = plan_stages(settings, out_path, dataset, datalist, subjects)
    if extend:
        print("\n".join(["extending the pre-training:", *extend_pretraining(out_path, stages)]), flush=True)
        write_json_atomic(settings_file, dataclasses.asdict(settings))
    selected = select_stages(stages, only)
    commit = code_commit()
    stage_runner(out_path, settings.device, jobs, commit).run(stages, selected)
    return write_report(out_path, settings, None, stages, dataset, results_doc, commit)


def write_report(
    out: Path,
    settings: Settings,
    choices: ablation.AblationSettings | None,
    stages: Sequence[Stage],
    dataset: Path,
    results_doc: str | None,
    commit: str,
) -> dict:
    """Write the results of a run (``choices`` None) or an ablation from every evaluation finished so far, print
    the Dice table and return the summary; ``commit`` is the code writing it (each stage records its own)."""
    labels = read_json(dataset / "dataset.json", "Decathlon dataset.json").get("labels", {})
    if choices is None:
        summary = summarise(settings, out, stages, labels) | {"commit": commit}
        write_results(summary, out, results_doc)
    else:
        summary = ablation.summarise(settings, choices, out, stages, labels, commit)
        ablation.write_results(summary, out, results_doc)
    print("\n".join(results_table(summary)) or "no evaluation finished yet")
    return summary


def dry_run_plan(settings: Settings, out: Path, dataset: Path, subjects: Path, jobs: int) -> dict:
    """Print the plan with a wall-time estimate per stage; write nothing."""
    sizes = case_counts(dataset, settings.val_cases)
    stages = plan_stages(settings, out, dataset, out / "datalist.json", subjects)
    lines = plan_lines(stages, settings, jobs, os.cpu_count() or 1, **sizes, pace=measured_pace([out]))
    print("\n".join(lines))
    return {"settings": dataclasses.asdict(settings), "stages": [stage.name for stage in stages], "plan": lines}


def ablate(
    out: str = "runs/ablation",
    main_run: str = "runs/transfer",
    preset: str | None = None,
    arms: str | Sequence[str] = ",".join(ablation.OVERLAYS),
    pool_sizes: str | int | Sequence[int] = "100,1000",
    seeds: str | int | Sequence[int] | None = None,
    only: str | Sequence[str] = "*",
    jobs: int = 1,
    dataset_dir: str = str(DEFAULT_DATASET),
    results_doc: str | None = None,
    dry_run: bool = False,
) -> dict:
    """Run (or resume) the ablation into ``out`` on top of the main run ``main_run`` (``run``'s folder).

    Every arm is pre-trained with the main run's recorded settings (its ``settings.json``: recipe, budget, device)
    on its bank file (not rebuilt), with one component switched off by the anatomy bundle's overlay (``--arms``:
    no_anchors, no_topology, fill) or with ``pool_size: N`` distinct samples (``--pool_sizes``, the data-volume
    curve; the main run's anatomy arm is its unlimited point); then fine-tuned few-shot and evaluated per seed
    (``--seeds``, default: the main run's few-shot seeds) exactly as the main run's arms, beside the arms they are
    compared with (``scratch``, and ``anatomy`` from the main run's encoder), fine-tuned here with the same seeds.
    The main run must have its settings, datalist, bank and anatomy encoder. ``--preset``, when given, must be the
    main run's. ``--only`` selects stages by name pattern(s) (``'pretrain_*,finetune_*_pool100_*'``). ``--dry_run``
    prints the plan with a wall-time estimate (at the pace of the main run's finished stages). Writes
    ``results.json``, ``results.md`` and the data-volume PNG in ``out``, and the ablation's section into
    ``results_doc`` when given (its records beside it, in ``records/<out folder>``).
    """
    main_path, out_path, dataset = Path(main_run).resolve(), Path(out).resolve(), Path(dataset_dir).resolve()
    settings = ablation.main_settings(main_path)
    if preset is not None and preset != settings.preset:
        raise ValueError(f"--preset {preset!r} differs from the main run's preset {settings.preset!r} ({main_path})")
    seeds = settings.regime_seeds(ablation.REGIME) if seeds is None else seeds
    choices = ablation.AblationSettings(str(main_path), arms, pool_sizes, seeds)
    ablation.check_seeds(settings, choices)
    check_dataset(dataset)
    stages = ablation.ablation_stages(settings, choices, out_path, dataset)
    if dry_run:
        sizes = case_counts(dataset, settings.val_cases)
        pace = measured_pace(progress.pace_sources(out_path, choices))
        lines = plan_lines(stages, settings, jobs, os.cpu_count() or 1, **sizes, pace=pace)
        print("\n".join(lines))
        return {"ablation": dataclasses.asdict(choices), "stages": [stage.name for stage in stages], "plan": lines}
    missing = [str(path) for path in ablation.main_inputs(settings, main_path) if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"the main run's {missing} not found: run its bank and anatomy pre-training first")
    check_device(settings.device)
    out_path.mkdir(parents=True, exist_ok=True)
    recorded = {"ablation": dataclasses.asdict(choices), "main_settings": dataclasses.asdict(settings)}
    record_settings(out_path / "settings.json", recorded, "ablation settings")
    selected = select_stages(stages, only)
    commit = code_commit()
    stage_runner(out_path, settings.device, jobs, commit).run(stages, selected)
    return write_report(out_path, settings, choices, stages, dataset, results_doc, commit)


def check_pretrain(
    out: str = "runs/transfer",
    num_samples: int | None = None,
    names: str | Sequence[str] | None = None,
    results_doc: str | None = None,
) -> dict:
    """Did each pre-training of the run ``out`` (``run``'s or ``ablate``'s folder) learn its synthetic task?

    Scores each pre-trained network (the final one, or the newest checkpoint of one under way) on its bundle's
    synthetic validation samples: class Dice (mean over the classes present) and foreground Dice (every class
    against background). ``--names`` picks pre-trainings (``anatomy,primitives``); ``--num_samples`` the first N
    validation samples (default: all the bundle validates on). Writes ``<out>/pretrain_check.json`` and a section
    of ``<out>/results.md`` (and of ``results_doc`` when given; one section per run folder) that ``run`` keeps
    (``experiments/transfer/synthetic_check.py``).
    """
    out_path = Path(out).resolve()
    chosen = None if names is None else only_patterns(names)
    result = synthetic_check.check_run(out_path, num_samples, chosen)
    markdown = synthetic_check.check_markdown(result, out_path.name)
    write_finding(
        out_path / synthetic_check.CHECK_FILE, result, synthetic_check.section_name(out_path), markdown, results_doc
    )
    return result


def drift(out: str = "runs/transfer", dataset_dir: str = str(DEFAULT_DATASET), results_doc: str | None = None) -> dict:
    """How far did each finished fine-tuning of the run ``out`` (``run``'s or ``ablate``'s folder) move its encoder
    from where it started (the pre-trained encoder, or the seed's random initialisation)? The relative change of the
    Swin encoder's weights, whole and per part, each start rebuilt from the stage's recorded command. Writes
    ``<out>/encoder_drift.json`` and a section of ``<out>/results.md`` (and of ``results_doc`` when given) that
    ``run`` keeps (``experiments/transfer/encoder_drift.py``). Runs no stage."""
    out_path = Path(out).resolve()
    settings, _, stages = progress.run_plan(out_path, Path(dataset_dir).resolve())
    result = encoder_drift.measure_run(out_path, stages, list(settings.regimes))
    markdown = encoder_drift.drift_markdown(result, out_path.name)
    write_finding(
        out_path / encoder_drift.DRIFT_FILE, result, encoder_drift.section_name(out_path), markdown, results_doc
    )
    return result


def write_finding(path: Path, result: dict, section: str, markdown: str, results_doc: str | None) -> None:
    """Write a read-only command's ``result`` as ``path`` (JSON, in the run folder) and ``markdown`` as the
    section ``section`` of the run's ``results.md`` (which ``run`` keeps) and of ``results_doc`` when given; print
    the markdown."""
    write_json_atomic(path, result)
    for page in [path.parent / "results.md", *([Path(results_doc)] if results_doc else [])]:
        write_section(page, section, markdown)
    print(markdown)


def report(out: str = "runs/transfer", dataset_dir: str = str(DEFAULT_DATASET), results_doc: str | None = None) -> dict:
    """Write the results of the run ``out`` (``run``'s or ``ablate``'s folder) from every evaluation finished so far,
    as ``run`` and ``ablate`` do when they end: ``results.json``, ``results.md``, the PNGs, and the run's section of
    the page ``results_doc`` when given. Runs no stage, so it can be asked while the run goes on, with newer report
    code than the stages ran."""
    out_path, dataset = Path(out).resolve(), Path(dataset_dir).resolve()
    check_dataset(dataset)
    settings, choices, stages = progress.run_plan(out_path, dataset)
    return write_report(out_path, settings, choices, stages, dataset, results_doc, code_commit())


def status(
    out: str = "runs/transfer",
    jobs: int = 1,
    dataset_dir: str = str(DEFAULT_DATASET),
    only: str | Sequence[str] = "*",
) -> dict:
    """Where the run ``out`` (``run``'s or ``ablate``'s folder) stands: each stage done, failed, started (with its
    last validation round) or waiting, and the wall time left with ``jobs`` stages at a time. ``--only`` restricts
    both to the stages a ``run --only`` selects (the same patterns). Reads the folder only, so it can be asked while
    the run goes on (``experiments/transfer/progress.py``)."""
    cores = os.cpu_count() or 1
    lines, data = progress.status_lines(Path(out).resolve(), Path(dataset_dir).resolve(), int(jobs), cores, only)
    print("\n".join(lines))
    return data


COMMANDS = {
    "run": run,
    "ablate": ablate,
    "check_pretrain": check_pretrain,
    "encoder_drift": drift,
    "status": status,
    "report": report,
    "pack": pack,
    "unpack": unpack,
    "restore": restore,
}
HELP_FLAGS = ("--help", "-h")


def help_text(name: str, command: Callable) -> str:
    """``<command> --help``: its docstring and flags (for ``run``, also every setting with its value per preset)."""
    parameters = inspect.signature(command).parameters.values()
    flags = [f"  --{p.name} (default {p.default!r})" for p in parameters if p.kind is not p.VAR_KEYWORD]
    lines = [f"usage: run_transfer_experiment.py {name} [--flag value ...]", "", inspect.getdoc(command), "", "flags:"]
    lines += flags
    if command is run:
        lines += ["", "settings (any as --<name> value, on top of the preset's): presets gpu (default) / cpu / quick"]
        presets = {preset: dataclasses.asdict(make_settings(preset)) for preset in ("gpu", "cpu", "quick")}
        for field in dataclasses.fields(Settings):
            if field.name != "preset":
                values = " / ".join(repr(presets[preset][field.name]) for preset in presets)
                lines.append(f"  --{field.name}: {values}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line; ``<command> --help`` (or ``-h``) prints the command's help instead of running it."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 and args[0] in COMMANDS and any(arg in HELP_FLAGS for arg in args[1:]):
        print(help_text(args[0], COMMANDS[args[0]]))
        return
    run_fire(COMMANDS, args, name="run_transfer_experiment.py")
