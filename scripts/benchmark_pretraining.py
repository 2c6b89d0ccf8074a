"""Measure the pre-training throughput of the anatomy_pretrain bundle itself, per precision variant.

For each variant the real bundle (``configs/train.json``, plus ``configs/primitives.json`` with
``--data primitives``) is built with ``monai.bundle.ConfigWorkflow`` and run for ``warmup + iterations`` iterations
in one epoch; a timing handler on the trainer (ignite events) skips the warm-up and reports iterations/s, samples/s,
the fraction of wall time spent waiting for the DataLoader, the median step time and the peak GPU memory.

- ``fp32``: ``amp=False``; ``fp16``: AMP float16; ``bf16``: AMP bfloat16; ``bf16_cudnn``: bf16 with cuDNN autotuning
  (``torch.backends.cudnn.benchmark = True``, set after the bundle's ``initialize``, whose ``set_determinism`` turns
  it off; ``scripts/device/gpu_plan.py`` does the same for a ``monai.bundle run`` through its ``run`` list);
  ``bf16_compile``: bf16 + ``compile=True`` (``fp32_compile``, not run by default, is the one compile variant a CPU
  can run). AMP variants need CUDA (MONAI's trainer autocasts with ``"cuda"``) and are recorded as skipped on a CPU;
  a variant that raises (a ``torch.compile`` failure, out of memory) is recorded as ``failed: <first line>`` and the
  others still run.
- For the measurement only: validation, checkpoints, weight export and the progress bar are disabled (their
  handlers matched by ``_target_``), and ``bundle_root`` is a temporary folder under ``--out``, removed afterwards,
  so nothing is written into the repository. Per-iteration work (loss, train Dice, TensorBoard, stats) is kept.
- On CUDA the handler calls ``torch.cuda.synchronize()`` at every iteration end, so a step's time includes its GPU
  work (ignite's ``BasicTimeProfiler`` does not synchronize).
- The data pipeline alone: samples/s of the config's own ``train#dataloader`` iterated without a model, to tell
  whether synthesis keeps up with training.

- ``--quick``: CPU-sized, the bundle's ``configs/cpu_smoke.json`` (feature_size 12, 64^3, batch 1, no workers, no
  activation checkpointing, CPU) with 1 + 2 iterations; overrides given on the command line still apply after it.
- The first iteration's time (``first_iteration_s``: compilation, cuDNN set-up) is in the JSON; with ``compile`` the
  warm-up must cover the compilation (minutes on a CPU).

Writes ``<out>/throughput.json`` and ``<out>/throughput.md`` atomically (after every variant) and prints the table.

    python scripts/benchmark_pretraining.py --out runs/throughput [--data anatomy|primitives]
        [--variants fp32 fp16 bf16 bf16_cudnn bf16_compile] [--warmup 10] [--iterations 50] [--quick]
        [--override '{"num_workers": 12}'] [--num_workers 12 ...]   # any other --key value is a bundle override
"""

from __future__ import annotations

import argparse
import ast
import gc
import json
import logging
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import _bundles
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser, ConfigWorkflow

from synth_transforms.io import atomic_path, write_json_atomic
from synth_transforms.machine import machine_facts

log = logging.getLogger("benchmark_pretraining")

DATA_CONFIGS = {"anatomy": [], "primitives": ["primitives.json"]}
# Variant -> bundle overrides, plus ``cudnn_benchmark`` (set in this process, not a bundle key); ``amp`` variants
# need CUDA.
VARIANTS = {
    "fp32": {"amp": False, "compile": False},
    "fp16": {"amp": True, "amp_dtype": "float16", "compile": False},
    "bf16": {"amp": True, "amp_dtype": "bfloat16", "compile": False},
    "bf16_cudnn": {"amp": True, "amp_dtype": "bfloat16", "compile": False, "cudnn_benchmark": True},
    "bf16_compile": {"amp": True, "amp_dtype": "bfloat16", "compile": True},
    "fp32_compile": {"amp": False, "compile": True},
}
RUNTIME_KEYS = ("cudnn_benchmark",)  # variant keys that are not bundle overrides
DEFAULT_VARIANTS = ["fp32", "fp16", "bf16", "bf16_cudnn", "bf16_compile"]
# Train handlers disabled for the measurement, matched by the end of their ``_target_``'s last part (so
# ``CheckpointSaver`` also matches ``checkpoint_resume.TrainingCheckpointSaver``).
DISABLED_HANDLERS = ("ValidationHandler", "CheckpointSaver", "WeightExportHandler", "TrainingProgressBar")
TABLE_HEADER = "| variant | it/s | samples/s | data-wait % | step ms | GPU MiB | status |"


# ---------------------------------------------------------------------- timing handler
class ThroughputTimer:
    """Ignite handler timing each iteration: DataLoader wait (``GET_BATCH_STARTED`` -> ``GET_BATCH_COMPLETED``) and
    whole step (``GET_BATCH_STARTED`` -> ``ITERATION_COMPLETED``), skipping the first ``warmup`` iterations.

    Attach it after the engine's other handlers so that the step includes their ``ITERATION_COMPLETED`` work.

    Args:
        warmup: iterations left out of the summary.
        iterations: iterations summarized after the warm-up (None: all the rest).
        synchronize: called at each iteration end before reading the clock (``torch.cuda.synchronize`` on CUDA).
        clock: the clock, in seconds.
    """

    def __init__(
        self,
        warmup: int = 0,
        iterations: int | None = None,
        synchronize: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.warmup, self.iterations, self.synchronize, self.clock = int(warmup), iterations, synchronize, clock
        self.records: list[tuple[float, float, float]] = []  # (get started, got batch, iteration completed)
        self._started = self._got = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._get_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._get_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)

    def _get_started(self, engine: Engine) -> None:
        self._started = self.clock()

    def _get_completed(self, engine: Engine) -> None:
        self._got = self.clock()

    def _iteration_completed(self, engine: Engine) -> None:
        if self.synchronize is not None:
            self.synchronize()
        self.records.append((self._started, self._got, self.clock()))

    def timed(self) -> list[tuple[float, float, float]]:
        """The records after the warm-up (at most ``iterations`` of them)."""
        end = None if self.iterations is None else self.warmup + self.iterations
        return self.records[self.warmup : end]

    def summary(self, batch_size: int = 1) -> dict:
        """Iterations/s and samples/s over the timed window's wall time, data-wait fraction, step times (ms)."""
        records = self.timed()
        if not records:
            raise RuntimeError(f"no timed iteration: {len(self.records)} ran, warm-up {self.warmup}")
        seconds = records[-1][2] - records[0][0]
        wait = np.array([got - started for started, got, _ in records])
        step = np.array([done - started for started, _, done in records])
        return {
            "iterations": len(records),
            "seconds": seconds,
            "it_per_s": len(records) / seconds,
            "samples_per_s": len(records) * batch_size / seconds,
            "data_wait_fraction": min(1.0, float(wait.sum()) / seconds),
            "step_ms_median": 1e3 * float(np.median(step)),
            "step_ms_p10": 1e3 * float(np.percentile(step, 10)),
            "step_ms_p90": 1e3 * float(np.percentile(step, 90)),
            "data_wait_ms_median": 1e3 * float(np.median(wait)),
            "compute_ms_median": 1e3 * float(np.median(step - wait)),
        }


# ---------------------------------------------------------------------- bundle
def config_names(data: str, quick: bool = False) -> list[str]:
    """The bundle's config files for ``data``, with the CPU smoke overlay last when ``quick``."""
    return ["train.json", *DATA_CONFIGS[data], *([_bundles.CPU_SMOKE] if quick else [])]


def parsed(names: list[str], overrides: dict) -> ConfigParser:
    """The bundle config of the files ``names`` with ``overrides`` applied."""
    parser = ConfigParser()
    parser.read_config(_bundles.config_files(_bundles.PRETRAIN, names))
    parser.update(overrides)
    return parser


def disabled_handler_overrides(names: list[str], overrides: dict) -> dict:
    """``train#handlers#<i>#_disabled_: True`` for each handler whose ``_target_`` ends in a DISABLED_HANDLERS name."""
    parser = parsed(names, overrides)
    out = {}
    for i, handler in enumerate(parser["train#handlers"]):
        target = str(handler.get("_target_", "")) if isinstance(handler, dict) else ""
        if target.rsplit(".", 1)[-1].endswith(DISABLED_HANDLERS):
            out[f"train#handlers#{i}#_disabled_"] = True
    return out


def measurement_overrides(names: list[str], user: dict, bundle_root: Path, total_iterations: int) -> dict:
    """User overrides, then those of the measurement: one epoch of ``total_iterations``, no side effects."""
    forced = {
        "bundle_root": str(bundle_root),
        "num_iterations": total_iterations,
        "iterations_per_epoch": total_iterations,
        "val_interval": 10**9,
        "progress_bar": False,
    }
    return {**user, **forced, **disabled_handler_overrides(names, {**user, **forced})}


def bundle_settings(parser: ConfigParser) -> dict:
    """The parsed values that set the workload."""
    keys = ("feature_size", "patch_size", "batch_size", "num_workers", "use_checkpoint", "amp", "amp_dtype", "compile")
    out = {key: parser.get_parsed_content(key) for key in keys}
    out["device"] = str(parser.get_parsed_content("device"))
    out["synth"] = parser["synth"]["_target_"]
    out["num_classes"] = int(parser.get_parsed_content("num_classes"))
    return out


def bundle_overrides(variant: str) -> dict:
    """The variant's bundle overrides (its keys but ``RUNTIME_KEYS``)."""
    return {key: value for key, value in VARIANTS[variant].items() if key not in RUNTIME_KEYS}


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}".strip()


def skip_reason(variant: str, device: torch.device) -> str | None:
    """Why a variant cannot run on ``device`` (None when it can)."""
    spec = VARIANTS[variant]
    if spec["amp"] and device.type != "cuda":
        return f"skipped: needs CUDA (MONAI's trainer autocasts with 'cuda'); device is {device}"
    if spec.get("amp_dtype") == "bfloat16" and not torch.cuda.is_bf16_supported():
        return f"skipped: {torch.cuda.get_device_name(device)} has no bfloat16 support"
    return None


def run_variant(variant: str, names: list[str], overrides: dict, warmup: int, iterations: int) -> dict:
    """Build the bundle with the variant's overrides, run it with a ``ThroughputTimer``; returns the summary."""
    workflow: ConfigWorkflow = _bundles.bundle_workflow(_bundles.PRETRAIN, names, **overrides)
    parser = workflow.parser
    device = torch.device(parser.get_parsed_content("device"))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    workflow.initialize()  # set_determinism: cudnn.benchmark False
    torch.backends.cudnn.benchmark = bool(VARIANTS[variant].get("cudnn_benchmark", False))
    trainer = parser.get_parsed_content("train#trainer")
    settings = bundle_settings(parser)
    settings["cudnn"] = {
        "deterministic": torch.backends.cudnn.deterministic,  # the bundle's set_determinism turns it on
        "benchmark": torch.backends.cudnn.benchmark,
        "allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    timer = ThroughputTimer(warmup, iterations, (lambda: torch.cuda.synchronize(device)) if cuda else None)
    timer.attach(trainer)  # after the bundle's handlers: a step includes their ITERATION_COMPLETED work
    start = time.perf_counter()
    workflow.run()
    total = time.perf_counter() - start
    workflow.finalize()
    torch.backends.cudnn.benchmark = False  # the next variant starts as the bundle leaves it
    result = {"status": "ok", **timer.summary(settings["batch_size"]), "total_run_s": total, "settings": settings}
    result["first_iteration_s"] = timer.records[0][2] - timer.records[0][0]  # compilation / cudnn autotuning
    result["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    result["gpu_peak_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20 if cuda else None
    return result


def measure_data(names: list[str], overrides: dict, warmup: int, batches: int) -> dict:
    """Samples/s of the config's ``train#dataloader`` iterated without a model.

    Worker processes deliver batches in rounds of ``num_workers``; the warm-up and the timed batches are rounded up
    to whole rounds, so the timed window starts after a round has arrived and does not count buffered batches.
    """
    parser = parsed(names, overrides)
    workers = int(parser.get_parsed_content("num_workers"))
    round_size = max(1, workers)
    warmup = round_size * math.ceil(max(1, warmup) / round_size)
    batches = round_size * math.ceil(max(batches, round_size) / round_size)
    parser.update({"num_iterations": warmup + batches, "iterations_per_epoch": warmup + batches})
    loader = parser.get_parsed_content("train#dataloader")
    samples, start, first = 0, time.perf_counter(), None
    for i, batch in enumerate(loader):
        if i == warmup - 1:
            first = time.perf_counter()
        elif i >= warmup:
            samples += int(batch["image"].shape[0])
    end = time.perf_counter()
    return {
        "status": "ok",
        "num_workers": workers,
        "batch_size": int(parser.get_parsed_content("batch_size")),
        "pin_memory": bool(loader.pin_memory),
        "warmup_batches": warmup,
        "batches": batches,
        "samples": samples,
        "seconds": end - first,
        "samples_per_s": samples / (end - first),
        "it_per_s": batches / (end - first),
        "startup_and_warmup_s": first - start,
    }


# ---------------------------------------------------------------------- report
def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    """The table, the data-pipeline verdict and the settings, as Markdown."""
    lines = [TABLE_HEADER, "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in result["variants"].items():
        ok = r["status"] == "ok"
        wait = 100 * r["data_wait_fraction"] if ok else None
        lines.append(
            f"| {name} | {fmt(r.get('it_per_s'), '.2f')} | {fmt(r.get('samples_per_s'), '.2f')} | {fmt(wait, '.1f')} "
            f"| {fmt(r.get('step_ms_median'), '.0f')} | {fmt(r.get('gpu_peak_mib'), '.0f')} | {r['status']} |"
        )
    data = result["data_only"]
    lines.append(
        f"| data only (no model, {data.get('num_workers', '?')} workers) | {fmt(data.get('it_per_s'), '.2f')} "
        f"| {fmt(data.get('samples_per_s'), '.2f')} | - | - | - | {data['status']} |"
    )
    s, m = result["settings"], result["machine"]
    lines += [
        "",
        result["verdict"],
        "",
        f"Settings: data {result['data']}, feature_size {s['feature_size']}, patch {s['patch_size']}, "
        f"batch {s['batch_size']}, workers {s['num_workers']}, use_checkpoint {s['use_checkpoint']}, "
        f"warm-up {result['warmup']} + {result['iterations']} timed iterations.",
        f"Machine: {m['device_name']}; torch {m['torch']}, MONAI {m['monai']}, Python {m['python']}; {m['date']}.",
        f"Command: `{result['command']}`",
        "",
    ]
    return "\n".join(lines)


def verdict(result: dict) -> str:
    """Whether synthesis keeps up with the fastest variant that ran."""
    data = result["data_only"].get("samples_per_s")
    runs = {name: r["samples_per_s"] for name, r in result["variants"].items() if r["status"] == "ok"}
    if data is None or not runs:
        return "Data pipeline vs training: not compared (a measurement is missing)."
    name, train = max(runs.items(), key=lambda kv: kv[1])
    ratio = data / train
    state = "keeps up with" if ratio >= 1.0 else "cannot keep up with"
    return (
        f"Data pipeline alone: {data:.2f} samples/s = {ratio:.2f}x the fastest training variant ({name}, "
        f"{train:.2f} samples/s): synthesis {state} training at these settings."
    )


def write_report(out: Path, result: dict) -> str:
    result["verdict"] = verdict(result)
    text = markdown(result)
    write_json_atomic(out / "throughput.json", result)
    with atomic_path(out / "throughput.md") as tmp:
        tmp.write_text(text)
    return text


# ---------------------------------------------------------------------- command line
def literal(text: str):
    """A command-line value as JSON / Python literal (``True``, ``[64,64,64]``, ``4``), else the string."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            pass
    return text


def extra_overrides(extra: list[str]) -> dict:
    """``--key value`` / ``--key=value`` pairs left over by argparse, as bundle overrides."""
    out, i = {}, 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise SystemExit(f"unexpected argument {arg!r}: bundle overrides are written --key value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(extra):
            key, value = arg[2:], extra[i + 1]
            i += 2
        else:
            raise SystemExit(f"bundle override {arg} has no value")
        out[key] = literal(value)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder of throughput.json / throughput.md")
    parser.add_argument("--data", choices=sorted(DATA_CONFIGS), default="anatomy")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS)
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 10 on CUDA, 2 on CPU)")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations (default 50)")
    parser.add_argument("--data_batches", type=int, default=None, help="timed batches, data only (default: iterations)")
    parser.add_argument("--override", type=json.loads, default={}, help="bundle overrides as a JSON object")
    smoke = f"CPU-sized run: the bundle's configs/{_bundles.CPU_SMOKE}"
    parser.add_argument("--quick", action="store_true", help=smoke)
    parser.add_argument("--keep_bundle_root", action="store_true", help="keep the temporary bundle roots")
    args, extra = parser.parse_known_args(argv)
    if not isinstance(args.override, dict):
        parser.error("--override must be a JSON object")
    args.bundle_overrides = {**args.override, **extra_overrides(extra)}
    args.config_names = config_names(args.data, args.quick)
    cuda = torch.cuda.is_available()
    if args.warmup is None:
        args.warmup = 1 if args.quick else (10 if cuda else 2)
    if args.iterations is None:
        args.iterations = 2 if args.quick else 50
    args.data_batches = args.iterations if args.data_batches is None else args.data_batches
    if args.warmup < 0 or args.iterations < 1 or args.data_batches < 1:
        parser.error("need --warmup >= 0, --iterations >= 1, --data_batches >= 1")
    return args


def _logger() -> None:
    """Our own stderr handler (the bundle's logging.conf adds a stdout handler to the root logger)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[benchmark] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    _logger()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = args.config_names
    total = args.warmup + args.iterations
    result = {
        "command": shlex.join(["python", "scripts/benchmark_pretraining.py", *argv]),
        "machine": machine_facts(),
        "data": args.data,
        "config_files": [os.path.relpath(f, _bundles.REPO) for f in _bundles.config_files(_bundles.PRETRAIN, names)],
        "warmup": args.warmup,
        "iterations": args.iterations,
        "bundle_overrides": args.bundle_overrides,
        "disabled_handlers": list(DISABLED_HANDLERS),
        "timing": "window = GET_BATCH_STARTED of the first timed iteration to ITERATION_COMPLETED of the last"
        + (", torch.cuda.synchronize() at each iteration end" if torch.cuda.is_available() else ""),
        "settings": {},
        "data_only": {"status": "not run"},
        "variants": {},
    }
    scratch = Path(tempfile.mkdtemp(prefix=".bundle_root_", dir=out))
    try:
        base = measurement_overrides(names, args.bundle_overrides, scratch / "data_only", total)
        base_parser = parsed(names, base)
        device = torch.device(base_parser.get_parsed_content("device"))
        variant_keys = ("amp", "amp_dtype", "compile")  # recorded per variant
        result["settings"] = {k: v for k, v in bundle_settings(base_parser).items() if k not in variant_keys}
        del base_parser

        log.info("data only: train#dataloader without a model")
        try:
            result["data_only"] = measure_data(names, base, args.warmup, args.data_batches)
        except Exception as e:  # recorded; the variants still run
            log.warning("data only failed:\n%s", traceback.format_exc())
            result["data_only"] = {"status": f"failed: {first_line(e)}"}
        write_report(out, result)

        for variant in args.variants:
            reason = skip_reason(variant, device)
            if reason is not None:
                log.info("%s: %s", variant, reason)
                result["variants"][variant] = {"status": reason, "overrides": VARIANTS[variant]}
                continue
            log.info("%s: %d warm-up + %d timed iterations", variant, args.warmup, args.iterations)
            root = scratch / variant
            overrides = {
                **measurement_overrides(names, args.bundle_overrides, root, total),
                **bundle_overrides(variant),
            }
            try:
                result["variants"][variant] = run_variant(variant, names, overrides, args.warmup, args.iterations)
            except Exception as e:  # a failed variant (compile, OOM) must not stop the others
                log.warning("%s failed:\n%s", variant, traceback.format_exc())
                result["variants"][variant] = {"status": f"failed: {first_line(e)}"}
            result["variants"][variant]["overrides"] = VARIANTS[variant]
            _release(device, compiled=VARIANTS[variant]["compile"])
            if not args.keep_bundle_root:
                shutil.rmtree(root, ignore_errors=True)
            write_report(out, result)
    finally:
        if not args.keep_bundle_root:
            shutil.rmtree(scratch, ignore_errors=True)
    text = write_report(out, result)
    print(text)
    log.info("wrote %s and %s", out / "throughput.json", out / "throughput.md")
    return result


def _release(device: torch.device, compiled: bool) -> None:
    """Free the previous variant's memory before the next one measures its peak."""
    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
