"""Demo on the default shape bank: a preview montage, a few NIfTI pairs with a dataset.json, and a short CPU
pre-training run of the anatomy_pretrain bundle (checkpoint + exported Swin encoder).

    python scripts/demo.py --out demo_output [--n 4] [--seed 0] [--patch_size 96] [--iterations 4]

This is what ``make demo`` runs. Each step is a small function taking the parsed arguments and returning a line
that says what it made; add a step by writing one more such function and listing it in ``STEPS``.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import _bundles

from synth_transforms.bank import load_bank
from synth_transforms.generate import generate_dataset, write_preview


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument("--n", type=int, default=4, help="synthetic pairs to write (and preview rows)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch_size", type=int, default=96, help="patch edge in voxels (1.5 mm)")
    parser.add_argument("--iterations", type=int, default=4, help="pre-training iterations of the CPU run")
    return parser.parse_args(argv)


def step_bank(args: argparse.Namespace) -> str:
    """Show the default shape bank the demo draws from."""
    bank = load_bank()
    return f"shape bank: {len(bank.organs)} organs from {len(bank.subjects)} subjects ({bank.num_classes} classes)"


def step_preview(args: argparse.Namespace) -> str:
    """PNG montage of the first samples (the same samples as the NIfTI pairs)."""
    path = write_preview(args.out / "preview.png", n=args.n, seed=args.seed, patch_size=args.patch_size, progress=False)
    return f"preview montage: {path}"


def step_generate(args: argparse.Namespace) -> str:
    """NIfTI image/label pairs plus a Decathlon dataset.json (rerunning resumes and changes nothing)."""
    dataset_json = generate_dataset(
        args.out / "synthetic", n=args.n, seed=args.seed, patch_size=args.patch_size, workers=0, progress=False
    )
    return f"synthetic dataset: {dataset_json} ({args.n} pairs in imagesTr/ and labelsTr/)"


def step_pretrain(args: argparse.Namespace) -> str:
    """A few iterations of the anatomy_pretrain bundle with its CPU smoke overlay, through the real bundle CLI."""
    root = args.out / "pretrain"
    overrides = {"num_iterations": args.iterations, "num_val_samples": 2}
    configs = ["train.json", _bundles.CPU_SMOKE]
    subprocess.run(_bundles.bundle_command(_bundles.PRETRAIN, configs, root, overrides), check=True)
    smoke = _bundles.cpu_smoke(_bundles.PRETRAIN)
    size = "x".join(map(str, smoke["patch_size"]))
    return (
        f"pre-training ({args.iterations} iterations, feature_size {smoke['feature_size']}, {size}, "
        f"{smoke['device']}): checkpoint "
        f"{root / 'runs' / 'checkpoints' / 'checkpoint_final.pt'}, encoder {root / 'models' / 'model_swinvit.pt'}, "
        f"network {root / 'models' / 'model.pt'}"
    )


STEPS: list[Callable[[argparse.Namespace], str]] = [step_bank, step_preview, step_generate, step_pretrain]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for step in STEPS:
        start = time.perf_counter()
        message = step(args)
        print(f"[{step.__name__.removeprefix('step_')}] {message} ({time.perf_counter() - start:.1f} s)", flush=True)
    print(f"demo outputs are in {args.out.resolve()}")


if __name__ == "__main__":
    main()
