"""scripts/benchmark_pretraining.py: the ignite timing handler on toy engines, and a --quick run of the real bundle
on the CPU (report files, skipped GPU variants, no file written into bundles/)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from _bundle_utils import run_cli
from _scripts import load_script
from ignite.engine import Engine

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "benchmark_pretraining.py"
BUNDLES = REPO / "bundles"


def bench():
    return load_script("benchmark_pretraining")


def bundle_listing() -> set[str]:
    return {str(p.relative_to(BUNDLES)) for p in BUNDLES.rglob("*") if "__pycache__" not in p.parts}


class _Sleepy:
    """An iterable of ``n`` batches, each taking ``seconds`` to produce."""

    def __init__(self, n: int, seconds: float):
        self.n, self.seconds = n, seconds

    def __iter__(self):
        for i in range(self.n):
            time.sleep(self.seconds)
            yield i


def _timed_run(data_s: float, step_s: float, warmup: int = 1, iterations: int = 6):
    engine = Engine(lambda engine, batch: time.sleep(step_s))
    timer = bench().ThroughputTimer(warmup=warmup, iterations=iterations)
    timer.attach(engine)
    engine.run(_Sleepy(warmup + iterations, data_s), max_epochs=1)
    return timer


# ---------------------------------------------------------------------- timing handler
def test_slow_data_gives_a_wait_fraction_near_one():
    summary = _timed_run(data_s=0.05, step_s=0.0).summary(batch_size=2)
    assert summary["iterations"] == 6
    assert summary["data_wait_fraction"] > 0.85
    assert 0.04 <= summary["step_ms_median"] / 1e3 < 0.2
    assert summary["samples_per_s"] == pytest.approx(2 * summary["it_per_s"])


def test_slow_step_gives_a_wait_fraction_near_zero():
    summary = _timed_run(data_s=0.0, step_s=0.05).summary()
    assert summary["data_wait_fraction"] < 0.15
    assert summary["compute_ms_median"] >= 45
    assert 5 <= summary["it_per_s"] <= 21


def test_timer_with_a_fake_clock_skips_warmup_and_synchronizes_each_iteration():
    now = [0.0]
    syncs = []
    engine = Engine(lambda engine, batch: now.__setitem__(0, now[0] + 1.0))  # each step takes 1 s

    def slow_batches():
        for i in range(5):
            now[0] += 3.0 if i else 100.0  # first batch (warm-up) 100 s, then 3 s each
            yield i

    timer = bench().ThroughputTimer(warmup=1, iterations=3, synchronize=lambda: syncs.append(1), clock=lambda: now[0])
    timer.attach(engine)
    engine.run(slow_batches(), max_epochs=1, epoch_length=5)
    summary = timer.summary(batch_size=4)
    assert len(syncs) == 5 and len(timer.records) == 5
    assert summary["iterations"] == 3 and summary["seconds"] == pytest.approx(12.0)
    assert summary["data_wait_fraction"] == pytest.approx(0.75)
    assert summary["it_per_s"] == pytest.approx(0.25) and summary["samples_per_s"] == pytest.approx(1.0)
    assert summary["step_ms_median"] == pytest.approx(4000.0) and summary["compute_ms_median"] == pytest.approx(1000.0)


def test_timer_without_timed_iterations_raises():
    with pytest.raises(RuntimeError, match="no timed iteration"):
        bench().ThroughputTimer(warmup=2).summary()


def test_command_line_overrides_are_parsed_as_literals():
    override = ["--override", '{"num_workers": 4}', "--use_checkpoint", "True", "--patch_size=[96,96,96]"]
    args = bench().parse_args(["--out", "x", "--quick", *override])
    assert args.bundle_overrides == {"num_workers": 4, "use_checkpoint": True, "patch_size": [96, 96, 96]}
    assert (args.warmup, args.iterations) == (1, 2)
    # --quick is the CPU smoke overlay; the command line's overrides apply after it
    assert args.config_names == ["train.json", "cpu_smoke.json"]
    parser = bench().parsed(args.config_names, args.bundle_overrides)
    assert parser["feature_size"] == 12 and parser["device"] == "cpu" and parser["num_iterations"] == 2
    assert parser["patch_size"] == [96, 96, 96] and parser["use_checkpoint"] is True
    assert bench().parse_args(["--out", "x", "--data", "primitives"]).config_names == ["train.json", "primitives.json"]
    with pytest.raises(SystemExit):
        bench().parse_args(["--out", "x", "stray"])


def test_measurement_disables_validation_checkpoints_and_export(tmp_path):
    module = bench()
    files = module.config_names("anatomy")
    overrides = module.measurement_overrides(files, {"num_workers": 3}, tmp_path, 7)
    assert overrides["bundle_root"] == str(tmp_path) and overrides["num_workers"] == 3
    assert overrides["num_iterations"] == overrides["iterations_per_epoch"] == 7
    parser = module.parsed(files, overrides)
    disabled = {h["_target_"].rsplit(".", 1)[-1] for h in parser["train#handlers"] if h.get("_disabled_") is True}
    # each named handler is off, also under a subclass's name (checkpoint_resume.TrainingCheckpointSaver)
    assert sorted(next(n for n in module.DISABLED_HANDLERS if d.endswith(n)) for d in disabled) == sorted(
        module.DISABLED_HANDLERS
    )


def test_cudnn_variant_is_bf16_with_autotuning_and_no_extra_bundle_key():
    module = bench()
    assert "bf16_cudnn" in module.DEFAULT_VARIANTS and module.VARIANTS["bf16_cudnn"]["cudnn_benchmark"] is True
    assert module.bundle_overrides("bf16_cudnn") == module.bundle_overrides("bf16") == {
        "amp": True, "amp_dtype": "bfloat16", "compile": False,
    }  # fmt: skip
    assert module.parse_args(["--out", "x", "--variants", "bf16", "bf16_cudnn"]).variants == ["bf16", "bf16_cudnn"]


# ---------------------------------------------------------------------- a --quick run of the real bundle
def test_quick_run_on_cpu_writes_the_report_and_nothing_into_bundles(tmp_path):
    before = bundle_listing()
    out = tmp_path / "quick"
    env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(min(2, os.cpu_count() or 1))}
    # Run from the bundle folder: a relative bundle_root ('.', the config's default) would write into bundles/.
    result = run_cli([str(SCRIPT), "--quick", "--out", str(out)], cwd=BUNDLES / "anatomy_pretrain", env=env)
    assert result.returncode == 0, result.stdout[-4000:]
    assert bundle_listing() == before, "the benchmark wrote into bundles/"

    report = json.loads((out / "throughput.json").read_text())
    fp32 = report["variants"]["fp32"]
    assert fp32["status"] == "ok"
    assert fp32["it_per_s"] > 0 and fp32["samples_per_s"] > 0 and fp32["iterations"] == 2
    assert 0.0 <= fp32["data_wait_fraction"] <= 1.0
    assert fp32["gpu_peak_mib"] is None
    assert fp32["settings"]["feature_size"] == 12 and fp32["settings"]["patch_size"] == [64, 64, 64]
    for name in ("fp16", "bf16", "bf16_cudnn", "bf16_compile"):
        assert report["variants"][name]["status"].startswith("skipped: needs CUDA"), name
    assert report["data_only"]["status"] == "ok" and report["data_only"]["samples_per_s"] > 0
    assert report["machine"]["torch"] == torch.__version__ and report["command"].endswith(f"--out {out}")

    table = (out / "throughput.md").read_text()
    assert bench().TABLE_HEADER in table
    assert any(line.startswith("| fp32 | ") and line.endswith("| ok |") for line in table.splitlines())
    assert bench().TABLE_HEADER in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["throughput.json", "throughput.md"], "scratch left behind"
