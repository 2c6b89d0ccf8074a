"""The whole GPU protocol in one call of at most 8.5 minutes on a lent machine (one H200, 16 cores).

``run`` does, in this order, each stage bounded by a deadline derived from one global budget (a stage may use what
the stages before it left over; one that hangs is killed with its process tree at its deadline, and recorded):

1. install check: the wheels installed by ``scripts/device/device_env.sh`` (counted from ``$GPU_CALL_STARTED``);
2. throughput table: ``scripts/benchmark_pretraining.py`` with fp32, bf16 autocast, and bf16 with cuDNN autotuning,
   a few dozen steps each (data-wait fraction, peak memory); it sets the pre-training's batch (what two arms fit in
   the GPU's memory), its iterations (what the training time buys) and whether cuDNN autotuning is used;
3. the two pre-trainings (anatomy, primitives) side by side, in lockstep (``pace_dir``), each stopped at its
   wall-clock deadline (``max_train_seconds``) or its iterations, exporting its fp16 encoder; both end with the same
   iterations (``train_summary.json``), and their synthetic validation curves are recorded;
4. the fine-tunings (3 arms x regimes x seeds) side by side in lockstep within a deadline, then their evaluations
   side by side, then the results table (``experiments.transfer.report``);
5. ``torchrun --nproc_per_node=1`` of the pre-training with ``multi_gpu_train.json`` (NCCL, fp16 autocast) for a
   handful of iterations (skipped, with the reason recorded, without CUDA or NCCL);
6. ``pack`` into ``--dest`` (default ``$OUT``): the two fp16 encoders, the records tar, the throughput table, the
   results table and ``gpu_call.json`` (every decision, deadline, iteration count and validation Dice): at most
   8 files of at most 16 MiB.

``plan`` prints the stages with their budgets and refuses settings that do not fit 8.5 minutes; ``--quick`` is the
same path on the CPU at toy size with short deadlines (the test suite runs it). Any ``CallSettings`` field is a
``--flag``. On the device: ``bash scripts/device/gpu_run.sh`` (see docs/gpu_runs.md)::

    python scripts/device/gpu_call.py plan [--quick] [--seeds 0,1,2]
    python scripts/device/gpu_call.py run --out runs/gpu_call --dest $OUT
    python scripts/device/gpu_call.py run --quick --out /tmp/gpu_call --dest /tmp/gpu_call_packed
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1]
if str(SCRIPTS) not in sys.path:  # run as a script: scripts/ holds _bundles and experiments
    sys.path.insert(0, str(SCRIPTS))

import _bundles  # noqa: E402
from device import gpu_plan  # noqa: E402
from device.gpu_plan import CallSettings  # noqa: E402
from experiments import runner  # noqa: E402
from experiments.transfer import pack as transfer_pack  # noqa: E402
from experiments.transfer import plan as transfer_plan  # noqa: E402
from experiments.transfer import report  # noqa: E402
from experiments.transfer.command import stage_environment  # noqa: E402

from synth_transforms.fire_runner import run_fire  # noqa: E402
from synth_transforms.io import read_json, write_json_atomic  # noqa: E402

CALL_RECORD = "gpu_call.json"
THROUGHPUT_FILES = ("throughput.md", "throughput.json")
RESULTS_FILE = "results.md"
PACKED = (  # what pack writes into $OUT (the encoders and the tar by experiments.transfer.pack)
    *(f"{kind}__{transfer_plan.ENCODER}" for kind in transfer_plan.PRETRAIN_CONFIG_FILES),
    transfer_pack.PACKED_RECORDS,
    *THROUGHPUT_FILES,
    RESULTS_FILE,
    CALL_RECORD,
)
NO_CHECKPOINTS = 10**6  # checkpoint_interval: no epoch checkpoints (nothing resumes inside one call)
DEADLINE_KEYS = ("max_train_seconds", "pace_dir", "pace_name", "pace_arms", "pace_timeout")


def default_dataset() -> Path:
    """``.data/msd_hippocampus`` (carried to the device) when present, else the shared copy beside the repo."""
    carried = _bundles.REPO / ".data" / "msd_hippocampus"
    return carried if carried.is_dir() else gpu_plan.DATA_SOURCE


def first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


# ---------------------------------------------------------------------- processes with a deadline
def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (parents first), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        tree.append(current)
        todo += children.get(current, [])
    return tree


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process under it (DataLoader workers, torchrun's workers)."""
    for member in reversed(process_tree(pid)):
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclasses.dataclass(kw_only=True)
class CommandStage(runner.Stage):
    """A stage whose command is a fixed argument list with the stage's folder appended after ``folder_flag``."""

    argv: list[str]
    folder_flag: str = "--out"

    def command(self, root: Path | None = None) -> list[str]:
        return [*self.argv, self.folder_flag, str(root or self.root)]


@dataclasses.dataclass(kw_only=True)
class TorchrunStage(transfer_plan.BundleStage):
    """A bundle stage under ``torch.distributed.run --standalone --nproc_per_node=N``."""

    nproc: int = 1

    def command(self, root: Path | None = None) -> list[str]:
        root = root or self.root
        return _bundles.bundle_command(self.bundle, self.config_files, root, self.overrides, nproc=self.nproc)


class WatchedRunner(runner.StageRunner):
    """The stage runner, telling ``started`` the process of each stage it starts (for the deadline watch)."""

    def __init__(self, out: Path, env: dict, started: dict):
        super().__init__(out, 1, env)
        self.started = started

    def start(self, stage: runner.Stage) -> runner.RunningStage:
        run = super().start(stage)
        self.started[stage.name] = run.process
        return run


def run_side_by_side(
    out: Path, stages: Sequence[runner.Stage], everything: Sequence[runner.Stage], env: dict, deadline: float
) -> dict[str, str]:
    """Run ``stages`` at once, each recorded by the stage runner; kill what still runs at ``deadline`` (epoch s).

    Returns stage name -> ``"ok"``, ``"killed at deadline"`` or ``"failed: <first line>"`` (a stage whose
    prerequisite did not finish fails without starting). One stage failing does not stop the others.
    """
    started: dict = {}
    outcomes: dict[str, str] = {}
    stage_runner = WatchedRunner(out, env, started)

    def one(stage: runner.Stage) -> None:
        try:
            stage_runner.run(everything, [stage])
            outcomes.setdefault(stage.name, "ok")
        except Exception as error:  # recorded; the stages beside it go on
            outcomes.setdefault(stage.name, f"failed: {first_line(str(error))}")

    threads = [threading.Thread(target=one, args=(stage,), daemon=True) for stage in stages]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads) and time.time() < deadline:
        time.sleep(0.2)
    for name, process in list(started.items()):
        if process.poll() is None:
            outcomes.setdefault(name, "killed at deadline")
            print(f"[gpu_call] deadline: killing {name} (pid {process.pid}) and its processes", flush=True)
            kill_tree(process.pid)
    for thread in threads:
        thread.join(timeout=60)
    return {stage.name: outcomes.get(stage.name, "killed at deadline") for stage in stages}


def stage_folder(stage: runner.Stage) -> Path:
    """Where a stage's files are: its folder when it finished, else its partial folder (killed or failed)."""
    return stage.root if stage.root.is_dir() else runner.partial_path(stage)


# ---------------------------------------------------------------------- the call
class Call:
    """One call: its settings, clock, folders and record; one method per stage."""

    def __init__(self, settings: CallSettings, out: Path, dest: Path, dataset: Path, started: float):
        self.settings, self.out, self.dest, self.dataset, self.started = settings, out, dest, dataset, started
        self.deadlines = gpu_plan.deadlines(settings)
        self.record: dict = {
            "settings": dataclasses.asdict(settings),
            "quick": isinstance(settings, gpu_plan.QuickSettings),
            "budgets_s": settings.budgets(),
            "deadlines_s": self.deadlines,
            "stages": {},
        }
        self.stages: list[runner.Stage] = []
        self.transfer_settings = None
        self.cudnn = False

    # -- clock
    def elapsed(self) -> float:
        return time.time() - self.started

    def deadline(self, stage: str) -> float:
        return self.started + self.deadlines[stage]

    def left(self, stage: str) -> float:
        return self.deadline(stage) - time.time()

    def note(self, stage: str, status: str, began: float, **facts) -> None:
        entry = {"status": status, "seconds": round(time.time() - began, 1), "ended_at_s": round(self.elapsed(), 1)}
        self.record["stages"][stage] = {**entry, "deadline_s": self.deadlines[stage], **facts}
        print(f"[gpu_call] {stage}: {status} ({entry['seconds']} s; {entry['ended_at_s']} s into the call)", flush=True)
        write_json_atomic(self.out / CALL_RECORD, self.record)

    def begin(self, stage: str) -> float:
        print(
            f"[gpu_call] {stage}: start at {self.elapsed():.1f} s, {self.left(stage):.0f} s to its deadline", flush=True
        )
        return time.time()

    def guarded(self, stage: str, method, *args):
        """``method(*args)``; an error is recorded as the stage's status and the call goes on to the next stage."""
        began = time.time()
        try:
            return method(*args)
        except Exception as error:  # the next stages may still run (or record why they cannot); pack always runs
            traceback.print_exc()
            self.note(stage, f"error: {type(error).__name__}: {first_line(str(error))}", began)
            return None

    def env(self, side_by_side: int) -> dict:
        env = stage_environment(self.settings.device, side_by_side)
        threads = str(max(1, self.settings.cpu_cores // max(1, side_by_side)))
        return env | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}

    def workers(self, runs: int) -> int:
        """DataLoader workers per run when ``runs`` share the cores (two left to the training processes)."""
        return max(0, (self.settings.cpu_cores - 2) // runs)

    # -- 1. install check
    def install_check(self) -> None:
        import torch

        from synth_transforms.machine import machine_facts

        began = self.started
        facts = machine_facts()
        cuda = torch.cuda.is_available()
        facts["gpu_total_mib"] = torch.cuda.get_device_properties(0).total_memory / 2**20 if cuda else None
        facts["nccl"] = bool(torch.distributed.is_available() and torch.distributed.is_nccl_available())
        self.record["machine"] = facts
        if self.settings.device == "cuda" and not cuda:
            raise RuntimeError("gpu_call: torch sees no CUDA device: use --quick for the CPU rehearsal")
        self.note("install", "ok", began, machine=facts["device_name"], torch=facts["torch"], monai=facts["monai"])

    # -- 2. throughput table
    def throughput(self) -> dict | None:
        s = self.settings
        began = self.begin("throughput")
        recipe = {
            "feature_size": s.feature_size, "patch_size": [s.pretrain_patch] * 3, "batch_size": s.pretrain_batch,
            "num_workers": self.workers(1), "use_checkpoint": False,
        }  # fmt: skip
        argv = [sys.executable, str(SCRIPTS / "benchmark_pretraining.py"), "--variants", *s.throughput_variants]
        argv += ["--warmup", str(s.throughput_warmup), "--iterations", str(s.throughput_iterations)]
        argv += ["--override", json.dumps(recipe)] + (["--quick"] if self.record["quick"] else [])
        stage = CommandStage("throughput", self.out / "throughput", ["throughput.json"], argv=argv)
        outcome = run_side_by_side(self.out, [stage], [stage], self.env(1), self.deadline("throughput"))
        found = stage_folder(stage) / "throughput.json"
        table = read_json(found, "throughput table") if found.is_file() else None
        variants = {name: r.get("status") for name, r in (table or {}).get("variants", {}).items()}
        self.note("throughput", outcome["throughput"], began, variants=variants, table=str(found))
        return table

    # -- 3. pre-trainings
    def pretrain_recipe(self, table: dict | None, train_seconds: float, can_stop: bool) -> dict:
        """Batch, iterations, warm-up and cuDNN choice of the pre-trainings, from the throughput table."""
        s = self.settings
        total = (self.record.get("machine") or {}).get("gpu_total_mib")
        peak = gpu_plan.amp_peak_mib(table)
        batch = gpu_plan.fit_batch(s.pretrain_batch, peak, total, len(gpu_plan.PRETRAIN_ARMS), s.gpu_memory_fraction)
        iterations, source = gpu_plan.estimate_iterations(s, table, train_seconds, batch, can_stop)
        self.cudnn = gpu_plan.cudnn_benchmark_wins(table) if s.cudnn_benchmark is None else bool(s.cudnn_benchmark)
        return {
            "batch": batch, "batch_source": f"peak {peak} MiB at batch {s.pretrain_batch}, GPU {total} MiB",
            "iterations": iterations, "iterations_source": source,
            "warmup": gpu_plan.warmup(s.pretrain_warmup, iterations),
            "learning_rate": s.pretrain_lr, "validation_rounds": s.validation_rounds, "cudnn_benchmark": self.cudnn,
            "max_train_seconds": round(train_seconds, 1) if can_stop else None,
        }  # fmt: skip

    def make_transfer_settings(self, recipe: dict):
        """The transfer experiment's ``Settings`` for this call (its plan builds the stages)."""
        s = self.settings
        values = {
            "device": s.device, "feature_size": s.feature_size, "use_checkpoint": False, "amp_dtype": s.amp_dtype,
            "pretrain_patch": s.pretrain_patch, "pretrain_batch": recipe["batch"],
            "pretrain_iterations": recipe["iterations"], "pretrain_learning_rate": s.pretrain_lr,
            "pretrain_warmup": recipe["warmup"], "pretrain_val_points": s.validation_rounds,
            "pretrain_workers": self.workers(len(gpu_plan.PRETRAIN_ARMS)),
            "pretrain_val_samples": s.pretrain_val_samples, "finetune_patch": tuple(s.finetune_patch),
            "finetune_batch": s.finetune_batch, "finetune_iterations": s.finetune_iterations,
            "finetune_learning_rate": s.finetune_lr,
            "finetune_warmup": gpu_plan.warmup(s.finetune_warmup, s.finetune_iterations), "finetune_val_points": 0,
            "finetune_workers": self.workers(s.finetune_runs), "few_shot_cases": s.few_shot_cases,
            "subset_seed": s.subset_seed, "seeds": s.seeds, "val_cases": s.val_cases, "cache_rate": s.cache_rate,
        }  # fmt: skip
        return transfer_plan.make_settings("quick" if self.record["quick"] else "gpu", values)

    def plan_stages(self, recipe: dict) -> None:
        self.transfer_settings = self.make_transfer_settings(recipe)
        datalist = transfer_plan.write_datalist(self.dataset, self.out / "datalist.json", self.settings.val_cases)
        stages = transfer_plan.plan_stages(self.transfer_settings, self.out, self.dataset, datalist)
        regimes = tuple(f"_{regime}_" for regime in self.settings.regimes)
        self.stages = [
            stage for stage in stages if stage.name.startswith("pretrain_") or any(r in stage.name for r in regimes)
        ]
        write_json_atomic(self.out / "settings.json", dataclasses.asdict(self.transfer_settings))

    def budget_overrides(self, stage: runner.Stage, pace: Path, arms: int, train_seconds: float | None) -> None:
        """Deadline, lockstep, no epoch checkpoints and the cuDNN choice, added to a training stage's overrides."""
        stage.overrides |= {"checkpoint_interval": NO_CHECKPOINTS}
        if train_seconds is not None:
            stage.overrides |= {
                "max_train_seconds": round(train_seconds, 1), "pace_dir": str(pace), "pace_name": stage.name,
                "pace_arms": arms, "pace_timeout": self.settings.pace_timeout_s,
            }  # fmt: skip
        if self.cudnn:
            stage.overrides |= gpu_plan.cudnn_benchmark_override(stage.bundle, stage.config_files)

    def pretrain(self, table: dict | None) -> None:
        s = self.settings
        began = self.begin("pretrain")
        can_stop = all(
            key in gpu_plan.bundle_keys(_bundles.PRETRAIN, ["train.json"], DEADLINE_KEYS) for key in DEADLINE_KEYS
        )
        train_seconds = gpu_plan.training_seconds(self.left("pretrain"), s.pretrain_startup_s, s.pretrain_train_cap_s)
        recipe = self.pretrain_recipe(table, train_seconds, can_stop)
        self.plan_stages(recipe)
        pretrain = [stage for stage in self.stages if stage.name.startswith("pretrain_")]
        pace = self.fresh(self.out / "pace" / "pretrain")
        for stage in pretrain:
            self.budget_overrides(stage, pace, len(pretrain), train_seconds if can_stop else None)
        first = pretrain[0]
        schedule = gpu_plan.bundle_lr_schedule(first.config_files, first.overrides)
        recipe["schedule"] = schedule
        recipe["schedule_problems"] = gpu_plan.check_schedule(schedule, s.pretrain_lr, recipe["warmup"])
        self.record["pretrain"] = {"recipe": recipe, "deadline_supported": can_stop}
        outcomes = run_side_by_side(self.out, pretrain, self.stages, self.env(len(pretrain)), self.deadline("pretrain"))
        arms = {stage.name.removeprefix("pretrain_"): self.training_facts(stage) for stage in pretrain}
        reached = {arm: (facts["summary"] or {}).get("iterations") for arm, facts in arms.items()}
        equal = len(set(reached.values())) == 1 and None not in reached.values()
        self.record["pretrain"] |= {"arms": arms, "iterations": reached, "equal_iterations": equal}
        status = "ok" if all(o == "ok" for o in outcomes.values()) else json.dumps(outcomes)
        self.note("pretrain", status, began, outcomes=outcomes, iterations=reached, equal_iterations=equal)

    @staticmethod
    def fresh(folder: Path) -> Path:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    @staticmethod
    def training_facts(stage: runner.Stage) -> dict:
        """``train_summary.json`` and the synthetic validation curve (``validation_curve.jsonl``) of a training."""
        runs = stage_folder(stage) / "runs"
        summary = runs / "train_summary.json"
        curve_file = runs / "validation_curve.jsonl"
        lines = curve_file.read_text().splitlines() if curve_file.is_file() else []
        curve = [json.loads(line) for line in lines if line.strip()]
        last = curve[-1] if curve else {}
        dice = next((v for k, v in last.items() if k not in ("iteration", "epoch", "per_class")), None)
        return {
            "summary": read_json(summary, "training summary") if summary.is_file() else None,
            "validation_dice": dice,
            "validation_curve": curve,
            "encoder": (stage_folder(stage) / "models" / transfer_plan.ENCODER).is_file(),
        }

    # -- 4. fine-tunings, evaluations, results
    def runnable(self, prefix: str) -> tuple[list[runner.Stage], dict[str, str]]:
        """The stages named ``prefix*`` whose prerequisites finished, and why the others cannot run."""
        runnable, blocked = [], {}
        for stage in self.stages:
            if not stage.name.startswith(prefix):
                continue
            missing = [need for need in stage.needs if not runner.is_done(self.out, self.by_name(need))]
            if missing:
                blocked[stage.name] = f"not run: {', '.join(missing)} did not finish"
            else:
                runnable.append(stage)
        return runnable, blocked

    def by_name(self, name: str) -> runner.Stage:
        return next(stage for stage in self.stages if stage.name == name)

    def finetune(self) -> None:
        s = self.settings
        began = self.begin("finetune")
        if not self.stages:  # the pre-training stage failed before planning: the scratch arm can still run
            self.plan_stages(self.pretrain_recipe(None, 1.0, can_stop=False))
        stages, blocked = self.runnable("finetune_")
        can_stop = "max_train_seconds" in gpu_plan.bundle_keys(_bundles.FINETUNE, ["train.json"], DEADLINE_KEYS)
        train_seconds = gpu_plan.training_seconds(self.left("finetune"), s.finetune_startup_s) if can_stop else None
        pace = self.fresh(self.out / "pace" / "finetune")
        for stage in stages:
            self.budget_overrides(stage, pace, len(stages), train_seconds)
        outcomes = run_side_by_side(self.out, stages, self.stages, self.env(len(stages)), self.deadline("finetune"))
        outcomes |= blocked
        runs = {stage.name.removeprefix("finetune_"): self.training_facts(stage)["summary"] for stage in stages}
        self.record["finetune"] = {"max_train_seconds": train_seconds, "runs": runs, "outcomes": outcomes}
        reached = {name: (summary or {}).get("iterations") for name, summary in runs.items()}
        status = f"{sum(o == 'ok' for o in outcomes.values())} of {len(outcomes)} ok"
        self.note("finetune", status, began, iterations=reached)

    def evaluate(self) -> None:
        began = self.begin("evaluate")
        stages, blocked = self.runnable("evaluate_")
        if self.cudnn:
            for stage in stages:
                stage.overrides |= gpu_plan.cudnn_benchmark_override(stage.bundle, stage.config_files)
        outcomes = run_side_by_side(self.out, stages, self.stages, self.env(len(stages)), self.deadline("evaluate"))
        outcomes |= blocked
        labels = read_json(self.dataset / "dataset.json", "Decathlon dataset.json").get("labels", {})
        summary = report.summarise(self.transfer_settings, self.out, self.stages, labels)
        report.write_results(summary, self.out)
        table = report.results_table(summary)
        self.record["results_table"] = table
        print("\n".join(table) or "[gpu_call] no evaluation finished", flush=True)
        ok = sum(o == "ok" for o in outcomes.values())
        self.note("evaluate", f"{ok} of {len(outcomes)} ok", began, outcomes=outcomes)

    # -- 5. torchrun smoke
    def smoke_skip_reason(self) -> str | None:
        machine = self.record.get("machine") or {}
        if self.settings.device != "cuda" or not machine.get("gpu_total_mib"):
            return "skipped: no CUDA device (NCCL needs one); the CPU rehearsal builds the command only"
        if not machine.get("nccl"):
            return "skipped: this torch has no NCCL"
        return None

    def smoke_stage(self) -> TorchrunStage:
        s = self.settings
        overrides = {
            "feature_size": s.feature_size, "patch_size": [s.pretrain_patch] * 3, "batch_size": 2,
            "num_workers": 2, "num_iterations": s.smoke_iterations, "iterations_per_epoch": s.smoke_iterations,
            "num_val_samples": 2, "use_checkpoint": False, "amp": True, "amp_dtype": "float16",
            "export_encoder_dtype": "float16", "progress_bar": False, "checkpoint_interval": NO_CHECKPOINTS,
        }  # fmt: skip
        return TorchrunStage(
            "smoke_torchrun_nccl", self.out / "smoke", [f"models/{transfer_plan.ENCODER}"], [], s.smoke_iterations,
            bundle=_bundles.PRETRAIN, config_files=["train.json", "multi_gpu_train.json"], overrides=overrides,
        )  # fmt: skip

    def smoke(self) -> None:
        began = self.begin("smoke")
        stage = self.smoke_stage()
        reason = self.smoke_skip_reason()
        if reason is not None:
            self.note("smoke", reason, began, command=stage.command())
            return
        outcome = run_side_by_side(self.out, [stage], [stage], self.env(1), self.deadline("smoke"))
        self.note("smoke", outcome[stage.name], began, command=stage.command())

    # -- 6. pack
    def pack(self) -> list[str]:
        began = time.time()
        self.dest.mkdir(parents=True, exist_ok=True)
        written = transfer_pack.pack(str(self.out), str(self.dest))
        throughput = self.out / "throughput"
        for name in THROUGHPUT_FILES:
            for folder in (throughput, throughput.with_name(throughput.name + runner.PARTIAL_SUFFIX)):
                if (folder / name).is_file():
                    shutil.copyfile(folder / name, self.dest / name)
                    written.append(str(self.dest / name))
                    break
        if (self.out / RESULTS_FILE).is_file():
            shutil.copyfile(self.out / RESULTS_FILE, self.dest / RESULTS_FILE)
            written.append(str(self.dest / RESULTS_FILE))
        written.append(str(self.dest / CALL_RECORD))
        self.record["packed"] = sorted(Path(path).name for path in written)
        self.note("pack", "ok", began)
        self.record["elapsed_s"] = round(self.elapsed(), 1)
        write_json_atomic(self.dest / CALL_RECORD, self.record)
        problems = gpu_plan.check_returned(sorted(p for p in self.dest.iterdir() if p.is_file()))
        if problems:
            print(f"[gpu_call] WARNING: not everything in {self.dest} comes back: {'; '.join(problems)}", flush=True)
        self.record["return_problems"] = problems
        write_json_atomic(self.dest / CALL_RECORD, self.record)
        write_json_atomic(self.out / CALL_RECORD, self.record)
        return written


def prepare_out(out: Path) -> Path:
    """A fresh call folder: ``out`` must be new, empty, or the folder of an earlier call (then it is emptied)."""
    if out.exists() and any(out.iterdir()):
        if not (out / CALL_RECORD).is_file():
            raise FileExistsError(f"{out} exists and holds no {CALL_RECORD}: pass a new --out folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run(
    out: str = "runs/gpu_call",
    dest: str | None = None,
    quick: bool = False,
    dataset_dir: str | None = None,
    started_at: float | None = None,
    **overrides,
) -> dict:
    """The one call: install check, throughput table, pre-trainings, fine-tunings, evaluations, results, torchrun
    smoke, pack into ``dest`` (default ``$OUT``, else ``<out>/packed``). Every stage ends by its deadline.

    Args:
        out: the call's working folder (emptied first when it holds an earlier call).
        dest: where the files that must come back are packed.
        quick: the CPU rehearsal at toy size with short deadlines (the test suite runs it).
        dataset_dir: MSD Hippocampus (default ``.data/msd_hippocampus``, else ``../shared/data/msd_hippocampus``).
        started_at: the call's start, epoch seconds (default ``$GPU_CALL_STARTED``, set by ``gpu_run.sh`` before the
            install, else now).
        overrides: ``CallSettings`` fields.
    """
    started = float(started_at or os.environ.get("GPU_CALL_STARTED") or time.time())
    settings = gpu_plan.make_settings(quick, **overrides)
    dataset = Path(dataset_dir).resolve() if dataset_dir else default_dataset()
    if not (dataset / "dataset.json").is_file():
        raise FileNotFoundError(f"{dataset / 'dataset.json'} not found: pass --dataset_dir, the MSD Hippocampus folder")
    out_path = prepare_out(Path(out).resolve())
    dest_path = Path(dest or os.environ.get("OUT") or out_path / "packed").resolve()
    call = Call(settings, out_path, dest_path, dataset, started)
    try:
        call.install_check()  # no CUDA on a GPU call: nothing else can run
        table = call.guarded("throughput", call.throughput)
        call.guarded("smoke", call.smoke)
        call.guarded("pretrain", call.pretrain, table)
        call.guarded("finetune", call.finetune)
        call.guarded("evaluate", call.evaluate)
    finally:
        call.pack()
        print(f"[gpu_call] done in {call.elapsed():.1f} s of {settings.budget_s:g}; packed {call.record['packed']}")
    return call.record


# ---------------------------------------------------------------------- plan (dry run)
def stage_descriptions(s: CallSettings) -> dict[str, str]:
    arms = len(gpu_plan.PRETRAIN_ARMS)
    return {
        "install": "scripts/device/device_env.sh: wheels into /tmp/site, import check, GPU",
        "throughput": f"{', '.join(s.throughput_variants)}: {s.throughput_warmup} + {s.throughput_iterations} steps "
        f"each, fs{s.feature_size} {s.pretrain_patch}^3 batch {s.pretrain_batch}",
        "pretrain": f"anatomy + primitives side by side, lockstep, training deadline = time left - "
        f"{s.pretrain_startup_s:g} s; lr {s.pretrain_lr:g}, warm-up {s.pretrain_warmup}, cosine to the iterations "
        f"the throughput buys ({arms} arms x {s.pace_share} of one arm's it/s), {s.validation_rounds} validations",
        "finetune": f"{s.finetune_runs} runs side by side (3 arms x {len(s.regimes)} regimes x {len(s.seeds)} seeds), "
        f"{s.finetune_iterations} iterations or the deadline, {'x'.join(map(str, s.finetune_patch))} batch "
        f"{s.finetune_batch}, "
        f"lr {s.finetune_lr:g}",
        "evaluate": f"{s.finetune_runs} evaluations side by side "
        f"({'all' if s.val_cases is None else s.val_cases} validation cases), results table",
        "smoke": f"torchrun --nproc_per_node=1, nccl, fp16 autocast, {s.smoke_iterations} iterations",
        "pack": "2 fp16 encoders, records tar, throughput table, results, gpu_call.json",
    }


def planned_schedule(settings: CallSettings) -> tuple[list[tuple[int, float]], int]:
    """The pre-training's learning rate through a run of the set (or fallback) iterations, as the bundle builds it."""
    rounds = settings.validation_rounds
    iterations = settings.pretrain_iterations or settings.fallback_pretrain_iterations
    iterations = max(rounds, rounds * (iterations // rounds))
    overrides = {
        "num_iterations": iterations, "iterations_per_epoch": iterations // rounds,
        "learning_rate": settings.pretrain_lr, "warmup_steps": gpu_plan.warmup(settings.pretrain_warmup, iterations),
    }  # fmt: skip
    return gpu_plan.bundle_lr_schedule(["train.json"], overrides), iterations


def plan(quick: bool = False, **overrides) -> dict:
    """Print the stages with their wall-clock budgets, the pre-training schedule's shape and the carried size;
    refuse settings whose stages do not fit the budget (at most 8.5 minutes) or whose carry exceeds 64 MiB."""
    settings = gpu_plan.make_settings(quick, **overrides)
    budgets, ends, what = settings.budgets(), gpu_plan.deadlines(settings), stage_descriptions(settings)
    total = sum(budgets.values())
    lines = [
        f"GPU call plan{' (--quick: CPU rehearsal)' if quick else ''}: budget {settings.budget_s:g} s "
        f"({settings.budget_s / 60:.1f} min; the device command limit is 600 s)",
        f"{'stage':<11} {'budget s':>8} {'ends by s':>9}  what",
    ]
    lines += [f"{stage:<11} {budgets[stage]:>8g} {ends[stage]:>9g}  {what[stage]}" for stage in gpu_plan.STAGES]
    lines.append(f"{'total':<11} {total:>8g} of {settings.budget_s:g} s (margin {settings.budget_s - total:g} s)")

    schedule, iterations = planned_schedule(settings)
    source = "set" if settings.pretrain_iterations else "the fallback; the call sets them from its throughput table"
    lines.append(
        f"pre-training lr at iteration ({iterations}, {source}): " + ", ".join(f"{i}: {lr:.2g}" for i, lr in schedule)
    )
    sizes = gpu_plan.carried_sizes()
    carried = sum(item["mib"] for item in sizes.values())
    lines.append(
        "carried: "
        + ", ".join(f"{name} {item['mib']:.1f} MiB ({item['source']})" for name, item in sizes.items())
        + f" = {carried:.1f} MiB of {gpu_plan.CARRY_LIMIT_MIB:g}"
    )
    lines.append(
        f"comes back: {len(PACKED)} files ({', '.join(PACKED)}) + the call's log, each <= "
        f"{gpu_plan.RETURN_FILE_MIB:g} MiB (an fs48 fp16 encoder is about 15.6 MiB)"
    )
    print("\n".join(lines))
    if carried > gpu_plan.CARRY_LIMIT_MIB:
        raise ValueError(f"gpu_call: {carried:.1f} MiB would travel, over the {gpu_plan.CARRY_LIMIT_MIB:g} MiB limit")
    return {
        "budgets": budgets, "deadlines": ends, "total_s": total, "budget_s": settings.budget_s,
        "schedule": schedule, "carried_mib": carried, "carried": sizes,
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    run_fire({"plan": plan, "run": run}, argv, name="gpu_call.py")


if __name__ == "__main__":
    main()
