"""Benchmark the synthesis of 96^3 image+label pairs on one CPU thread, plus DataLoader throughput and memory.

Paths timed sample by sample, interleaved (sample i of every path runs before sample i+1 of any), so a load change
on the machine hits all paths alike:

- anatomy pair: ``RandAnatomySynthd`` (default bank, shell mode), the full image+label pair;
- its two parts on their own: ``RandAnatomyLabel`` (placement) and ``RandShellRender`` (rendering that label);
- primitive baseline pair: ``RandPrimitiveSynthd``;
- TorchIO ``RandomLabelsToImage`` with its defaults, applied to the same anatomy label patches (label -> image only).

Then: patches/s through ``monai.data.DataLoader(SyntheticDataset(RandAnatomySynthd(), N))`` with worker processes,
the default bank's load time, the transform's construction time and the peak resident memory.

    python scripts/benchmark_synthesis.py [--n 100] [--patch_size 96] [--seed 0] [--workers 2] [--json out.json]
                                          [--markdown]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchio as tio
from monai.data import DataLoader

import synth_transforms
from synth_transforms import (
    RandAnatomyLabel,
    RandAnatomySynthd,
    RandPrimitiveSynthd,
    RandShellRender,
    ShapeBank,
    SyntheticDataset,
    sample_seed,
)
from synth_transforms._args import as_size3, check_output_file
from synth_transforms.io import write_json_atomic
from synth_transforms.machine import machine_facts as shared_machine_facts

log = logging.getLogger("benchmark_synthesis")

# Timed paths, in table order: key -> (row label, what one timing covers).
PATHS = {
    "anatomy_pair": ("anatomy pair: RandAnatomySynthd (shell)", "label + image"),
    "anatomy_label": ("  its label part: RandAnatomyLabel", "label"),
    "anatomy_render": ("  its render part: RandShellRender", "image from label"),
    "primitive_pair": ("primitive baseline: RandPrimitiveSynthd", "label + image"),
    "torchio_labels_to_image": ("TorchIO RandomLabelsToImage (defaults)", "image from the same labels"),
}
LIMIT_S, TARGET_S = 0.1, 0.05  # the ceiling and aim for the anatomy pair's median
NO_CHECKS = "(the speed requirements are stated for 96^3 patches: not checked at this patch size)"


# ---------------------------------------------------------------------- machine and statistics
def machine_facts() -> dict:
    """The shared machine facts plus TorchIO's version, to store with the numbers."""
    return {**shared_machine_facts(), "torchio": tio.__version__}


def summarize(seconds: list[float]) -> dict:
    """Median, 10th/90th percentiles, mean and extremes of per-sample timings (seconds)."""
    values = np.asarray(seconds, dtype=float)
    return {
        "n": int(values.size),
        "median": float(np.median(values)),
        "p10": float(np.percentile(values, 10)),
        "p90": float(np.percentile(values, 90)),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def timed(fn: Callable, *args, **kwargs):
    """``(result, seconds)`` of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory in MiB of this process (``RUSAGE_SELF``) or of its largest waited-for child."""
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    """``value`` formatted with ``spec`` and followed by ``unit``, or ``n/a`` when there is none."""
    return "n/a" if value is None else format(value, spec) + unit


# ---------------------------------------------------------------------- the single-thread part
class Paths:
    """The timed transforms, seeded per sample so every path sees sample ``i`` of the same stream.

    The label and render parts are the pair's own inner transforms (one set of prepared shapes in memory); seeded
    alone with the sample's seed, the label part makes the same label patch as the pair.
    """

    def __init__(self, bank: ShapeBank, patch_size: tuple[int, int, int]):
        self.pair = RandAnatomySynthd(bank=bank, patch_size=patch_size, mode="shell")
        self.label: RandAnatomyLabel = self.pair.maker.label_maker
        self.render: RandShellRender = self.pair.maker.renderer
        self.primitive = RandPrimitiveSynthd(patch_size=patch_size, mode="shell")
        self.torchio = tio.RandomLabelsToImage(label_key="label")

    def run_sample(self, seed: int) -> tuple[dict[str, float], dict]:
        """Time every path once on the sample of ``seed``; returns seconds per path and the placement summary."""
        seconds = {}
        self.pair.set_random_state(seed)
        _, seconds["anatomy_pair"] = timed(self.pair, {})
        self.label.set_random_state(seed)
        label, seconds["anatomy_label"] = timed(self.label)
        self.render.set_random_state(seed)
        _, seconds["anatomy_render"] = timed(self.render, label)
        self.primitive.set_random_state(seed)
        _, seconds["primitive_pair"] = timed(self.primitive, {})
        subject = tio.Subject(label=tio.LabelMap(tensor=label.as_tensor(), affine=label.affine.numpy()))
        torch.manual_seed(seed % 2**32)  # TorchIO draws from torch's global generator
        _, seconds["torchio_labels_to_image"] = timed(self.torchio, subject)
        record = self.label.last_record
        placement = {"placed": len(record.placed), "skipped": len(record.skipped), "retries": record.retries}
        return seconds, placement


def bench_single_thread(bank: ShapeBank, patch_size: tuple[int, int, int], n: int, seed: int, warmup: int) -> dict:
    """Per-sample timings of every path on one torch thread, after ``warmup`` untimed samples."""
    paths = Paths(bank, patch_size)
    for i in range(warmup):
        paths.run_sample(sample_seed(seed, 1, i))  # epoch 1: not among the timed samples
    raw: dict[str, list[float]] = {key: [] for key in PATHS}
    placements = []
    for i in range(n):
        seconds, placement = paths.run_sample(sample_seed(seed, 0, i))
        for key, value in seconds.items():
            raw[key].append(value)
        placements.append(placement)
        if (i + 1) % max(1, n // 5) == 0:
            log.info(
                "  %d/%d samples, anatomy pair median so far %.1f ms", i + 1, n, 1e3 * np.median(raw["anatomy_pair"])
            )
    stats = {key: summarize(values) for key, values in raw.items()}
    ratio = stats["anatomy_pair"]["median"] / stats["torchio_labels_to_image"]["median"]
    return {
        "stats": stats,
        "raw_seconds": raw,
        "anatomy_over_torchio": ratio,
        "placement": {k: float(np.mean([p[k] for p in placements])) for k in ("placed", "skipped", "retries")},
    }


# ---------------------------------------------------------------------- setup costs
def bench_setup(repeats: int, patch_size: tuple[int, int, int]) -> tuple[ShapeBank, dict]:
    """Fresh loads of the default bank and constructions of ``RandAnatomySynthd`` from the loaded bank."""
    bank_seconds = [timed(ShapeBank.load)[1] for _ in range(repeats)]
    bank = ShapeBank.load()
    construct_seconds = [
        timed(RandAnatomySynthd, ("image", "label"), bank=bank, patch_size=patch_size)[1] for _ in range(repeats)
    ]
    return bank, {
        "bank_load_s": statistics.median(bank_seconds),
        "construction_s": statistics.median(construct_seconds),
        "repeats": repeats,
        "bank_file_mib": synth_transforms.DEFAULT_BANK_PATH.stat().st_size / 2**20,
        "bank": {"organs": len(bank.organs), "subjects": len(bank.subjects), "classes": bank.num_classes},
    }


# ---------------------------------------------------------------------- DataLoader
def _one_thread_worker(worker_id: int) -> None:
    """DataLoader worker init: one torch thread per worker (module level, so it pickles under spawn too)."""
    torch.set_num_threads(1)


def bench_loader(patch_size: tuple[int, int, int], n: int, workers: int, batch_size: int, seed: int) -> dict:
    """Patches/s of ``SyntheticDataset(RandAnatomySynthd(), n)`` through a MONAI DataLoader.

    ``total`` counts from creating the iterator (worker start-up included) to the last batch; ``steady`` starts
    at the first batch, so it leaves start-up out.
    """
    dataset = SyntheticDataset(RandAnatomySynthd(patch_size=patch_size), n, seed=seed)
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, worker_init_fn=_one_thread_worker if workers else None
    )
    start = time.perf_counter()
    first = None
    patches = 0
    for batch in loader:
        patches += int(batch["image"].shape[0])
        if first is None:
            first, first_patches = time.perf_counter(), patches
    end = time.perf_counter()
    steady = (patches - first_patches) / (end - first) if patches > first_patches else None  # one batch: none
    return {
        "patches": patches,
        "workers": workers,
        "batch_size": batch_size,
        "seconds": end - start,
        "patches_per_s_total": patches / (end - start),
        "patches_per_s_steady": steady,
        "first_batch_s": first - start,
    }


# ---------------------------------------------------------------------- report
def checks(result: dict) -> dict:
    """The issue's requirements on the anatomy pair's median, each ``True`` when met (none unless 96^3 patches)."""
    if tuple(result["args"]["patch_size"]) != (96, 96, 96):
        return {}
    stats = result["single_thread"]["stats"]
    median = stats["anatomy_pair"]["median"]
    return {
        f"anatomy pair median <= {LIMIT_S * 1e3:.0f} ms": median <= LIMIT_S,
        "anatomy pair median <= TorchIO label-to-image median": median <= stats["torchio_labels_to_image"]["median"],
        f"aim: anatomy pair median <= {TARGET_S * 1e3:.0f} ms": median <= TARGET_S,
    }


def markdown(result: dict) -> str:
    """The result as Markdown tables."""
    single = result["single_thread"]
    torchio_median = single["stats"]["torchio_labels_to_image"]["median"]
    lines = [
        "| path | timed | median ms | p10 ms | p90 ms | mean ms | pairs/s (1/median) | x TorchIO median |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, (name, what) in PATHS.items():
        s = single["stats"][key]
        lines.append(
            f"| {name.strip()} | {what} | {1e3 * s['median']:.1f} | {1e3 * s['p10']:.1f} | {1e3 * s['p90']:.1f} "
            f"| {1e3 * s['mean']:.1f} | {1 / s['median']:.1f} | {s['median'] / torchio_median:.2f} |"
        )
    setup, loader, memory = result["setup"], result["loader"], result["memory_mib"]
    lines += [
        "",
        "| other figure | value |",
        "|---|---:|",
        f"| DataLoader, {loader['workers']} workers, batch {loader['batch_size']}: patches/s incl. start-up "
        f"| {loader['patches_per_s_total']:.1f} |",
        f"| DataLoader: patches/s after the first batch | {fmt(loader['patches_per_s_steady'])} |",
        f"| DataLoader: first batch (worker start-up) | {loader['first_batch_s']:.2f} s |",
        f"| default bank load (`ShapeBank.load()`, median of {setup['repeats']}) "
        f"| {1e3 * setup['bank_load_s']:.0f} ms |",
        f"| `RandAnatomySynthd` construction from a loaded bank (median of {setup['repeats']}) "
        f"| {1e3 * setup['construction_s']:.0f} ms |",
        f"| peak RSS, main process (after imports alone: {memory['main_after_imports']:.0f} MiB) "
        f"| {memory['main_peak']:.0f} MiB |",
        f"| peak RSS, largest DataLoader worker (forked: shared pages count) "
        f"| {fmt(memory['workers_peak'], '.0f', ' MiB')} |",
        "",
        f"Organs per anatomy patch (mean): {single['placement']['placed']:.1f} placed, "
        f"{single['placement']['skipped']:.2f} skipped, {single['placement']['retries']:.2f} retries.",
        "",
    ]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in result["checks"].items()] or [NO_CHECKS]
    return "\n".join(lines)


def machine_line(result: dict) -> str:
    """One line naming the machine, versions, date and load."""
    m, load = result["machine"], result["load_average"]
    return (
        f"{m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable); Python {m['python']}, torch {m['torch']}, "
        f"MONAI {m['monai']}, TorchIO {m['torchio']}; {m['date']}; load average (1/5/15 min) before "
        f"{'/'.join(f'{v:.2f}' for v in load['before'])}, after {'/'.join(f'{v:.2f}' for v in load['after'])}"
    )


def text_summary(result: dict) -> str:
    """A compact plain-text report."""
    single = result["single_thread"]
    lines = [machine_line(result), f"{'path':45s} {'median':>9s} {'p10':>9s} {'p90':>9s} {'mean':>9s}"]
    for key, (name, _) in PATHS.items():
        s = single["stats"][key]
        lines.append(f"{name:45s} " + " ".join(f"{1e3 * s[k]:7.1f}ms" for k in ("median", "p10", "p90", "mean")))
    lines.append(f"anatomy pair / TorchIO label-to-image (medians): {single['anatomy_over_torchio']:.2f}")
    loader, setup, memory = result["loader"], result["setup"], result["memory_mib"]
    lines += [
        f"DataLoader ({loader['workers']} workers, batch {loader['batch_size']}): "
        f"{loader['patches_per_s_total']:.1f} patches/s incl. start-up, {fmt(loader['patches_per_s_steady'])} after "
        f"the first batch",
        f"bank load {1e3 * setup['bank_load_s']:.0f} ms, RandAnatomySynthd construction "
        f"{1e3 * setup['construction_s']:.0f} ms",
        f"peak RSS: main {memory['main_peak']:.0f} MiB (after imports {memory['main_after_imports']:.0f} MiB), "
        f"largest worker {fmt(memory['workers_peak'], '.0f', ' MiB')}",
    ]
    lines += [f"{'PASS' if ok else 'FAIL'}: {name}" for name, ok in result["checks"].items()] or [NO_CHECKS]
    return "\n".join(lines)


# ---------------------------------------------------------------------- main
def patch_size_arg(values: list[int]) -> tuple[int, int, int]:
    """``--patch_size`` as three sizes: one value is used for every axis."""
    return as_size3(values[0] if len(values) == 1 else values, "--patch_size")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="timed samples per path (and patches through the loader)")
    parser.add_argument("--patch_size", type=int, nargs="+", default=[96], help="1 or 3 sizes in voxels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=3, help="untimed samples per path first")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (0: in-process)")
    parser.add_argument("--batch_size", type=int, default=2, help="DataLoader batch size")
    parser.add_argument("--repeats", type=int, default=5, help="fresh bank loads / constructions to take the median of")
    parser.add_argument("--json", type=Path, default=None, help="write every number (raw timings too) to this file")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables instead of plain text")
    args = parser.parse_args(argv)
    if args.n < 1 or args.warmup < 0 or args.workers < 0 or args.batch_size < 1 or args.repeats < 1:
        parser.error("need --n >= 1, --warmup >= 0, --workers >= 0, --batch_size >= 1, --repeats >= 1")
    try:  # checked before any work: a bad size or an unwritable --json ends here, in one line
        args.patch_size = patch_size_arg(args.patch_size)
        if args.json is not None:
            check_output_file(args.json, "--json")
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    imports_peak = peak_rss_mib()
    result = {
        "machine": machine_facts(),
        "load_average": {"before": list(os.getloadavg())},
        "args": {
            "n": args.n,
            "patch_size": list(args.patch_size),
            "seed": args.seed,
            "warmup": args.warmup,
            "workers": args.workers,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "torch_threads": 1,
        },
    }
    log.info("setup: %d fresh bank loads and transform constructions", args.repeats)
    bank, result["setup"] = bench_setup(args.repeats, args.patch_size)
    log.info("single thread: %d samples per path (+%d warm-up)", args.n, args.warmup)
    result["single_thread"] = bench_single_thread(bank, args.patch_size, args.n, args.seed, args.warmup)
    main_peak = peak_rss_mib()
    log.info("DataLoader: %d patches, %d workers", args.n, args.workers)
    result["loader"] = bench_loader(args.patch_size, args.n, args.workers, args.batch_size, args.seed)
    result["memory_mib"] = {
        "main_after_imports": imports_peak,
        "main_peak": peak_rss_mib(),
        "main_peak_before_loader": main_peak,
        "workers_peak": peak_rss_mib(resource.RUSAGE_CHILDREN) if args.workers else None,
    }
    result["load_average"]["after"] = list(os.getloadavg())
    result["checks"] = checks(result)
    print(f"Machine: {machine_line(result)}\n\n{markdown(result)}" if args.markdown else text_summary(result))
    if args.json is not None:
        write_json_atomic(args.json, result)
        log.info("wrote %s", args.json)
    return result


if __name__ == "__main__":
    main()
