"""The transfer experiment, end to end through the bundles: does anatomy-informed synthetic pre-training help real
segmentation more than primitive shapes, and more than no pre-training?

1. pre-train SwinUNETR twice with identical settings and budget: ``anatomy_pretrain`` (anatomy-informed shells) and
   ``anatomy_pretrain`` + ``primitives.json`` (the primitive-shape baseline);
2. fine-tune ``swin_unetr_finetune`` + ``msd_hippocampus.json`` in three arms (scratch, primitives, anatomy) and two
   data regimes (few-shot: a fixed, recorded subset of the training split; all: the whole training split), with the
   same iterations and seeds in every arm;
3. evaluate every fine-tuned network (its final weights, never a checkpoint chosen on the reporting split) on the
   ``validation`` split: Dice per class and overall;
4. write ``results.json`` and ``results.md`` (table, commands, device, date, iterations and wall time per stage).

Every stage is one ``python -m monai.bundle run`` with its log in ``<out>/logs``; a stage runs in ``<folder>.partial``
and is renamed when it succeeds, so a failure leaves no half-written stage and a rerun resumes after the last stage
that finished. Examples::

    python scripts/run_transfer_experiment.py run --out runs/transfer                 # the GPU protocol
    python scripts/run_transfer_experiment.py run --out runs/transfer --quick         # tiny CPU run of the same path
    python scripts/run_transfer_experiment.py run --out runs/transfer --only 'pretrain_*'
    python scripts/run_transfer_experiment.py pack --out runs/transfer --dest $OUT    # what must outlast a machine
    python scripts/run_transfer_experiment.py unpack --src returned/ --out runs/transfer
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import fnmatch
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

import fire

from synth_transforms.io import atomic_path, read_json, write_json_atomic
from synth_transforms.machine import device_name, machine_facts

REPO = Path(__file__).resolve().parents[1]
PRETRAIN_CONFIGS = REPO / "bundles" / "anatomy_pretrain" / "configs"
FINETUNE_CONFIGS = REPO / "bundles" / "swin_unetr_finetune" / "configs"
DEFAULT_DATASET = REPO.parent / "shared" / "data" / "msd_hippocampus"
ARMS = ("scratch", "primitives", "anatomy")
PRETRAIN_CONFIG_FILES = {"anatomy": ["train.json"], "primitives": ["train.json", "primitives.json"]}
ENCODER = "model_swinvit.pt"
PACKED_RECORDS = "records.tar.gz"


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


QUICK = dict(
    device="cpu", feature_size=12, pretrain_patch=64, pretrain_batch=1, pretrain_iterations=2, pretrain_workers=0,
    pretrain_val_samples=1, finetune_batch=1, finetune_iterations=2, finetune_workers=0, val_cases=2, cache_rate=0.0,
)  # fmt: skip


@dataclasses.dataclass
class Stage:
    """One bundle run: its configs and overrides, the folder it fills, the files that prove it finished, and the
    stages it needs first."""

    name: str
    configs: Path
    config_files: list[str]
    overrides: dict
    root: Path
    outputs: list[str] = dataclasses.field(default_factory=list)
    needs: list[str] = dataclasses.field(default_factory=list)
    iterations: int | None = None

    def command(self, root: Path | None = None) -> list[str]:
        """The ``python -m monai.bundle run`` command filling ``root`` (default: the stage's folder)."""
        return bundle_command(self.configs, self.config_files, root or self.root, self.overrides)


def warmup_steps(iterations: int) -> int:
    """Linear warm-up over 10 % of a short run, at most the bundles' 500 steps."""
    return max(1, min(500, iterations // 10))


def epoch_plan(iterations: int, epoch_length: int = 100) -> tuple[int, int]:
    """(max_epochs, epoch_length) giving exactly ``iterations`` iterations."""
    length = min(epoch_length, iterations)
    while iterations % length:
        length -= 1
    return iterations // length, length


def bundle_command(configs: Path, config_files: Sequence[str], root: Path, overrides: dict) -> list[str]:
    """``python -m monai.bundle run`` of a bundle with ``--key value`` overrides (lists as JSON)."""
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", json.dumps([str(configs / name) for name in config_files]),
        "--meta_file", str(configs / "metadata.json"),
        "--logging_file", str(configs / "logging.conf"),
        "--bundle_root", str(root),
    ]  # fmt: skip
    for key, value in overrides.items():
        command += [f"--{key}", json.dumps(value) if isinstance(value, (list, tuple)) else str(value)]
    return command


def write_datalist(dataset_dir: Path, path: Path, val_cases: int | None) -> Path:
    """The dataset's fixed split, with the validation list cut to ``val_cases`` when given."""
    datalist = read_json(dataset_dir / "dataset.json", "Decathlon dataset.json")
    for split in ("training", "validation"):
        if not datalist.get(split):
            raise ValueError(f"{dataset_dir / 'dataset.json'}: expected a non-empty {split!r} list")
    split = {"training": datalist["training"], "validation": datalist["validation"][:val_cases]}
    write_json_atomic(path, split)
    return path


def plan_stages(settings: Settings, out: Path, dataset_dir: Path, datalist: Path) -> list[Stage]:
    """All stages in run order: two pre-trainings, then per regime, arm and seed a fine-tuning and its evaluation."""
    s = settings
    stages = []
    epoch, iterations = min(500, s.pretrain_iterations), s.pretrain_iterations
    for kind, files in PRETRAIN_CONFIG_FILES.items():
        root = out / "pretrain" / kind
        overrides = {
            "device": s.device, "feature_size": s.feature_size, "patch_size": [s.pretrain_patch] * 3,
            "batch_size": s.pretrain_batch, "num_workers": s.pretrain_workers,
            "num_iterations": s.pretrain_iterations, "iterations_per_epoch": epoch,
            "warmup_steps": warmup_steps(s.pretrain_iterations), "learning_rate": s.learning_rate,
            "num_val_samples": s.pretrain_val_samples, "use_checkpoint": s.use_checkpoint, "amp_dtype": s.amp_dtype,
            "export_encoder_dtype": "float16", "progress_bar": False,
        }  # fmt: skip
        outputs = [f"models/{ENCODER}"]
        stages.append(Stage(f"pretrain_{kind}", PRETRAIN_CONFIGS, files, overrides, root, outputs, [], iterations))

    max_epochs, epoch_length = epoch_plan(s.finetune_iterations)
    data = {"device": s.device, "dataset_dir": str(dataset_dir), "datalist": str(datalist)}
    network = {"feature_size": s.feature_size, "patch_size": [s.finetune_patch] * 3, "amp_dtype": s.amp_dtype}
    loading = {"num_workers": s.finetune_workers, "cache_rate": s.cache_rate}
    finetune_files = ["train.json", "msd_hippocampus.json"]
    eval_files = [*finetune_files, "evaluate.json"]
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
                outputs, iterations, tune = ["models/model_final.pt"], s.finetune_iterations, f"finetune_{name}"
                stages.append(
                    Stage(tune, FINETUNE_CONFIGS, finetune_files, overrides, root, outputs, needs, iterations)
                )

                eval_root = out / "evaluate" / name
                overrides = {
                    **data, **network, **loading, "seed": seed,
                    "checkpoint": str(root / "models" / "model_final.pt"), "output_dir": "$@bundle_root + '/metrics'",
                }  # fmt: skip
                outputs, needs = ["metrics/val_mean_dice_raw.csv"], [tune]
                stages.append(
                    Stage(f"evaluate_{name}", FINETUNE_CONFIGS, eval_files, overrides, eval_root, outputs, needs)
                )
    return stages


def record_path(out: Path, name: str) -> Path:
    """Where the record of stage ``name`` (command, exit status, wall time, start and finish) is written."""
    return out / "stages" / f"{name}.json"


def is_done(out: Path, stage: Stage) -> bool:
    """Done: its record says it succeeded, the files it must leave exist, and no prerequisite was re-run after it."""
    record = read_record(out, stage.name)
    if record is None or not record.get("ok"):
        return False
    if not all((stage.root / name).is_file() for name in stage.outputs):
        return False
    needs = [read_record(out, need) for need in stage.needs]
    return all(need is not None and need["finished"] <= record["started"] for need in needs)


def read_record(out: Path, name: str) -> dict | None:
    """The record of stage ``name``, or None before it first ran."""
    path = record_path(out, name)
    return json.loads(path.read_text()) if path.is_file() else None


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class RunningStage:
    """A stage started by :class:`StageRunner`: its process, the folder it fills and when it started."""

    stage: Stage
    process: subprocess.Popen
    partial: Path
    started: float = dataclasses.field(default_factory=time.perf_counter)
    started_at: str = dataclasses.field(default_factory=utc_now)


class StageRunner:
    """Runs stages as subprocesses, ``jobs`` at a time, each once its prerequisites are done."""

    def __init__(self, out: Path, jobs: int = 1, env: dict | None = None):
        self.out, self.jobs, self.env = out, max(1, int(jobs)), env
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "stages").mkdir(parents=True, exist_ok=True)

    def start(self, stage: Stage) -> RunningStage:
        partial = stage.root.with_name(stage.root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        print(f"[{utc_now()}] start {stage.name}", flush=True)
        with open(self.out / "logs" / f"{stage.name}.log", "w") as log:
            process = subprocess.Popen(
                stage.command(partial), stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.out
            )
        return RunningStage(stage, process, partial)

    def finish(self, run: RunningStage) -> None:
        stage, process, partial = run.stage, run.process, run.partial
        wall = time.perf_counter() - run.started
        missing = [name for name in stage.outputs if not (partial / name).is_file()]
        ok = process.returncode == 0 and not missing
        if ok:
            shutil.rmtree(stage.root, ignore_errors=True)
            partial.rename(stage.root)
        record = {
            "stage": stage.name, "ok": ok, "returncode": process.returncode, "missing_outputs": missing,
            "wall_s": round(wall, 1), "iterations": stage.iterations, "started": run.started_at, "finished": utc_now(),
            "command": stage.command(),
        }  # fmt: skip
        write_json_atomic(record_path(self.out, stage.name), record)
        log = self.out / "logs" / f"{stage.name}.log"
        if not ok:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"stage {stage.name} failed (exit {process.returncode}, missing outputs {missing}); "
                f"its partial folder {partial} is kept for inspection, full log {log}:\n{tail}"
            )
        print(f"[{utc_now()}] done  {stage.name} in {wall:.1f} s", flush=True)

    def run(self, stages: Sequence[Stage], selected: Sequence[Stage]) -> None:
        """Run ``selected`` in order, skipping those already done unless a prerequisite runs again before them;
        prerequisites outside the selection must be done."""
        by_name = {stage.name: stage for stage in stages}
        todo: list[Stage] = []
        pending: set[str] = set()  # names of the stages to run that have not finished yet
        for stage in selected:
            if is_done(self.out, stage) and not pending.intersection(stage.needs):
                print(f"[{utc_now()}] skip  {stage.name} (done: {record_path(self.out, stage.name)})", flush=True)
                continue
            todo.append(stage)
            pending.add(stage.name)
        for stage in todo:
            for need in stage.needs:
                if need not in pending and not is_done(self.out, by_name[need]):
                    raise RuntimeError(f"stage {stage.name} needs stage {need} first: run it (--only '{need}')")
        running: list[RunningStage] = []
        try:
            while todo or running:
                ready = [s for s in todo if not pending.intersection(s.needs)]
                while ready and len(running) < self.jobs:
                    stage = ready.pop(0)
                    todo.remove(stage)
                    running.append(self.start(stage))
                if not running:
                    raise RuntimeError(f"stages {[s.name for s in todo]} wait on prerequisites that cannot finish")
                time.sleep(0.2)
                for run in [run for run in running if run.process.poll() is not None]:
                    running.remove(run)
                    self.finish(run)
                    pending.discard(run.stage.name)
        finally:
            for run in running:
                run.process.kill()
                run.process.wait()


def read_dice(csv_path: Path) -> dict[str, float]:
    """Mean Dice per class over the cases of MONAI's ``val_mean_dice_raw.csv`` (``class0`` is label 1)."""
    lines = Path(csv_path).read_text().splitlines()
    rows = list(csv.DictReader(lines, delimiter="\t" if "\t" in lines[0] else ","))
    if not rows:
        raise ValueError(f"{csv_path}: no evaluated cases")
    classes = [key for key in rows[0] if key.startswith("class")]
    per_class = {c: statistics.fmean(float(row[c]) for row in rows) for c in classes}
    return {**per_class, "mean": statistics.fmean(per_class.values()), "cases": len(rows)}


def summarise(settings: Settings, out: Path, stages: Sequence[Stage], labels: dict[str, str]) -> dict:
    """Collect every finished evaluation and stage record into one results dictionary."""
    records = {s.name: record for s in stages if (record := read_record(out, s.name)) is not None}
    results: dict[str, dict] = {}
    for regime in settings.regimes:
        for arm in ARMS:
            runs = {}
            for seed in settings.seeds:
                metrics = out / "evaluate" / f"{regime}_{arm}_seed{seed}" / "metrics" / "val_mean_dice_raw.csv"
                if metrics.is_file():
                    runs[seed] = read_dice(metrics)
            if runs:
                results.setdefault(regime, {})[arm] = runs
    return {
        "settings": dataclasses.asdict(settings),
        "few_shot_cases": few_shot_cases(out, settings),
        "class_names": labels,
        "results": results,
        "stages": records,
        "device": device_description(settings.device),
        "written": utc_now(),
    }


def check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for but torch sees no CUDA device: use --quick or --device cpu")


def few_shot_cases(out: Path, settings: Settings) -> list[str] | None:
    """Names of the few-shot training cases, as recorded by the first few-shot fine-tuning (None before it ran)."""
    record = out / "finetune" / f"few_shot_scratch_seed{settings.seeds[0]}" / "runs" / "train_cases.json"
    if not record.is_file():
        return None
    return [Path(case["image"]).name.removesuffix(".nii.gz") for case in read_json(record, "case record")["training"]]


def device_description(device: str) -> str:
    facts = machine_facts()
    return f"{device_name(device)}; Python {facts['python']}, torch {facts['torch']}, MONAI {facts['monai']}"


def mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def results_table(summary: dict) -> list[str]:
    """Markdown rows per regime and arm: Dice per class and overall (mean ± std over seeds), change from scratch."""
    arms_by_regime = summary["results"]
    if not arms_by_regime:
        return []
    first_run = next(iter(next(iter(next(iter(arms_by_regime.values())).values())).values()))
    classes = [key for key in first_run if key.startswith("class")]
    names = [summary["class_names"].get(str(int(c.removeprefix("class")) + 1), c) for c in classes]
    header = ["regime", "arm", "seeds", *(f"Dice {name}" for name in names), "mean Dice", "Δ mean vs scratch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for regime, arms in arms_by_regime.items():
        scratch = arms.get("scratch")
        scratch_mean = statistics.fmean(run["mean"] for run in scratch.values()) if scratch else None
        for arm, runs in arms.items():
            means = [run["mean"] for run in runs.values()]
            delta = "" if arm == "scratch" or scratch_mean is None else f"{statistics.fmean(means) - scratch_mean:+.4f}"
            cells = [mean_std([run[c] for run in runs.values()]) for c in classes]
            seeds = ",".join(str(seed) for seed in runs)
            lines.append("| " + " | ".join([regime, arm, seeds, *cells, mean_std(means), delta]) + " |")
    return lines


def results_markdown(summary: dict) -> str:
    s = summary["settings"]
    lines = [
        "# Transfer experiment results",
        "",
        f"Written {summary['written']} by `scripts/run_transfer_experiment.py` on {summary['device']}.",
        "",
        "## Dice on the validation split (final fine-tuned weights)",
        "",
        *results_table(summary),
        "",
        "## Settings",
        "",
        f"- pre-training: SwinUNETR feature_size {s['feature_size']}, {s['pretrain_patch']}^3 patches, batch "
        f"{s['pretrain_batch']}, {s['pretrain_iterations']} iterations, AMP {s['amp_dtype']} on CUDA, "
        f"lr {s['learning_rate']}",
        f"- fine-tuning: {s['finetune_patch']}^3 patches, batch {s['finetune_batch']}, {s['finetune_iterations']} "
        f"iterations per arm, encoder transfer, seeds {s['seeds']}; few-shot = {s['few_shot_cases']} training cases "
        f"(subset seed {s['subset_seed']}: {', '.join(summary['few_shot_cases'] or ['not run yet'])}), "
        "all = the whole training split",
        f"- evaluation: {'all' if s['val_cases'] is None else s['val_cases']} validation cases, sliding window, "
        "Dice per class on the original grid",
        "",
        "## Stages",
        "",
        "| stage | iterations | wall s | finished |",
        "|---|---|---|---|",
    ]
    for name, record in summary["stages"].items():
        lines.append(f"| {name} | {record.get('iterations') or ''} | {record['wall_s']} | {record['finished']} |")
    lines += ["", "## Commands", ""]
    for name, record in summary["stages"].items():
        lines += [f"`{name}`:", "", "```", " ".join(record["command"]), "```", ""]
    return "\n".join(lines)


def write_results(summary: dict, out: Path, results_doc: str | None = None) -> None:
    write_json_atomic(out / "results.json", summary)
    targets = [out / "results.md"] + ([Path(results_doc)] if results_doc else [])
    for target in targets:
        with atomic_path(target) as tmp:
            Path(tmp).write_text(results_markdown(summary))


def run(
    out: str = "runs/transfer",
    quick: bool = False,
    only: str | Sequence[str] = "*",
    jobs: int = 1,
    dataset_dir: str = str(DEFAULT_DATASET),
    results_doc: str | None = None,
    **overrides,
) -> dict:
    """Run (or resume) the experiment into ``out``; ``only`` selects stages by name pattern(s).

    Any field of ``Settings`` can be overridden, e.g. ``--pretrain_iterations 3000 --seeds 0,1``. ``--quick`` is the
    tiny CPU version of the same path (the test suite runs it). Writes ``results.json``/``results.md`` in ``out``
    (and ``results_doc`` when given) from every evaluation finished so far.
    """
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        known = ", ".join(f"--{f.name} (default {f.default})" for f in dataclasses.fields(Settings))
        raise TypeError(f"unknown setting(s) {sorted(unknown)}; the settings are: {known}")
    values = {**(QUICK if quick else {}), **overrides}
    if "seeds" in values:
        seeds = values["seeds"]
        values["seeds"] = tuple(int(v) for v in (seeds if isinstance(seeds, (list, tuple)) else str(seeds).split(",")))
    settings = Settings(**values)
    out_path, dataset = Path(out).resolve(), Path(dataset_dir).resolve()
    check_device(settings.device)
    if not (dataset / "dataset.json").is_file():
        raise FileNotFoundError(f"{dataset / 'dataset.json'} not found: pass --dataset_dir, the MSD Hippocampus folder")
    out_path.mkdir(parents=True, exist_ok=True)
    settings_file = out_path / "settings.json"
    if settings_file.is_file() and read_json(settings_file, "experiment settings") != json.loads(
        json.dumps(dataclasses.asdict(settings))
    ):
        raise ValueError(f"{out_path} holds a run with other settings ({settings_file}); use a new --out folder")
    write_json_atomic(settings_file, dataclasses.asdict(settings))
    datalist = write_datalist(dataset, out_path / "datalist.json", settings.val_cases)

    stages = plan_stages(settings, out_path, dataset, datalist)
    patterns = [only] if isinstance(only, str) else list(only)
    selected = [stage for stage in stages if any(fnmatch.fnmatch(stage.name, p) for p in patterns)]
    if not selected:
        raise ValueError(f"--only {patterns} matches no stage; stages are {[s.name for s in stages]}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if settings.device == "cpu":  # share the cores between the stages running at once
        threads = str(max(1, (os.cpu_count() or 1) // max(1, int(jobs))))
        env |= {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    StageRunner(out_path, jobs, env).run(stages, selected)

    labels = read_json(dataset / "dataset.json", "Decathlon dataset.json").get("labels", {})
    summary = summarise(settings, out_path, stages, labels)
    write_results(summary, out_path, results_doc)
    print("\n".join(results_table(summary)) or "no evaluation finished yet")
    return summary


def _lasting_files(out: Path) -> list[Path]:
    """Small files worth keeping: settings, records, logs, datalists, metrics, results (no network weights)."""
    keep = []
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        if not path.is_file() or any(part.endswith(".partial") for part in relative.parts):
            continue
        if path.suffix in {".json", ".log", ".csv", ".md", ".txt"} or "events.out.tfevents" in path.name:
            keep.append(relative)
    return keep


def pack(out: str = "runs/transfer", dest: str = ".") -> list[str]:
    """Copy what must outlast a lent machine into ``dest``, flat: the exported encoders, one tar of the small files."""
    out_path, dest_path = Path(out).resolve(), Path(dest).resolve()
    dest_path.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in PRETRAIN_CONFIG_FILES:
        encoder = out_path / "pretrain" / kind / "models" / ENCODER
        if encoder.is_file():
            target = dest_path / f"{kind}__{ENCODER}"
            shutil.copyfile(encoder, target)
            written.append(str(target))
    target = dest_path / PACKED_RECORDS
    with atomic_path(target) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            for relative in _lasting_files(out_path):
                tar.add(out_path / relative, arcname=str(relative))
    written.append(str(target))
    print("\n".join(written))
    return written


def unpack(src: str, out: str = "runs/transfer") -> None:
    """Put files made by ``pack`` back under ``out`` so that a later ``run`` resumes after the packed stages."""
    src_path, out_path = Path(src).resolve(), Path(out).resolve()
    records = src_path / PACKED_RECORDS
    if not records.is_file():
        raise FileNotFoundError(f"{records} not found: expected the folder written by `pack`")
    with tarfile.open(records) as tar:
        tar.extractall(out_path, filter="data")
    for kind in PRETRAIN_CONFIG_FILES:
        encoder = src_path / f"{kind}__{ENCODER}"
        if encoder.is_file():
            target = out_path / "pretrain" / kind / "models" / ENCODER
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(encoder, target)
    print(f"unpacked {src_path} into {out_path}")


def _no_return(function):
    """The command-line form of ``function``: fire would print its return value."""

    @functools.wraps(function)
    def command(*args, **kwargs) -> None:
        function(*args, **kwargs)

    return command


if __name__ == "__main__":
    fire.Fire({"run": _no_return(run), "pack": _no_return(pack), "unpack": _no_return(unpack)})
