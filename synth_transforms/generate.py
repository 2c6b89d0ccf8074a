"""Synthetic data on disk: a PNG preview montage and a resumable NIfTI dataset with a Decathlon ``dataset.json``.

:func:`write_preview` and :func:`generate_dataset` are what ``python -m synth_transforms preview|generate`` and
``scripts/demo.py`` run. Both make their samples with :func:`make_synth` through a ``SyntheticDataset``, so preview
row ``i`` is generated pair ``i`` for the same seed. Every argument is checked before any work starts, and every
file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ._args import as_size3, check_bool, check_choice, check_output_dir, check_output_file, check_positive_int
from ._version import __version__
from .bank import DEFAULT_BANK_PATH, ShapeBank, load_bank
from .dataset import SyntheticDataset
from .io import atomic_path, file_sha256, write_json_atomic
from .primitives import PRIMITIVE_CLASSES
from .render import RENDER_MODES
from .transforms import RandAnatomySynthd, RandPrimitiveSynthd

__all__ = ["make_synth", "class_names", "write_preview", "generate_dataset", "ARGS_FILE", "IMAGES_DIR", "LABELS_DIR"]

ARGS_FILE = "synth_args.json"
IMAGES_DIR, LABELS_DIR = "imagesTr", "labelsTr"
PRIMITIVE_SPACING = 1.5  # mm: the voxel size of primitive solids when no bank gives one (the default bank's)


# ---------------------------------------------------------------------------------------------- the transform
def _bank(bank) -> ShapeBank:
    """``bank`` itself when it is a ``ShapeBank``, the bank in file ``bank``, or the default bank for None."""
    if isinstance(bank, ShapeBank):
        return bank
    return load_bank(None if bank is None else Path(str(bank)))


def _needed_bank(primitives: bool, bank) -> ShapeBank | None:
    """The bank a synthesis needs, loaded once: None for primitives without a bank (nothing to read)."""
    return None if primitives and bank is None else _bank(bank)


def _synth_options(primitives, mode, patch_size, owner: str) -> tuple[bool, str, tuple[int, int, int]]:
    """The checked ``primitives``, ``mode`` and ``patch_size`` that every synthesis command takes."""
    return (
        check_bool(primitives, "primitives", owner),
        check_choice(mode, "mode", RENDER_MODES, owner),
        as_size3(patch_size, "patch_size", owner),
    )


def make_synth(primitives: bool = False, mode: str = "shell", patch_size=96, bank=None):
    """The dictionary transform making ``{"image", "label"}`` pairs: anatomy (default) or primitive solids.

    Args:
        primitives: make the primitive-solid baseline instead of anatomy.
        mode: rendering mode: ``shell``, ``fill`` or ``mixed``.
        patch_size: patch size in voxels (one int or 3).
        bank: a ``ShapeBank`` or its file (default: the packaged bank); primitives take only its spacing.
    """
    primitives, mode, size = _synth_options(primitives, mode, patch_size, "make_synth")
    if primitives:
        spacing = _bank(bank).spacing if bank is not None else PRIMITIVE_SPACING
        return RandPrimitiveSynthd(patch_size=size, mode=mode, spacing=spacing)
    return RandAnatomySynthd(bank=_bank(bank), patch_size=size, mode=mode)


def class_names(primitives: bool = False, bank=None) -> list[str]:
    """Class names by class id (0 = background) of the anatomy bank (a ``ShapeBank`` or its file) or the primitives."""
    if check_bool(primitives, "primitives", "class_names"):
        return ["background"] + [f"{section} {profile}" for section, profile in PRIMITIVE_CLASSES]
    return ["background"] + list(_bank(bank).organs)


# ---------------------------------------------------------------------------------------------- preview
def write_preview(
    out="preview.png",
    n: int = 4,
    seed: int = 0,
    mode: str = "shell",
    patch_size=96,
    bank=None,
    primitives: bool = False,
    legend: bool = True,
    progress: bool = True,
) -> Path:
    """Save a PNG montage of n samples: image and label overlay in three planes through the patch centre.

    Row i is the pair i that generate writes for the same seed, mode, patch size and bank.

    Args:
        out: PNG file to write.
        n: number of samples (rows).
        seed: base seed (>= 0).
        mode: rendering mode: shell, fill or mixed.
        patch_size: patch size in voxels (an int or a,b,c).
        bank: shape bank file (default: the packaged bank).
        primitives: show the primitive-solid baseline instead of anatomy.
        legend: add a legend of the classes shown.
        progress: show a progress bar.

    Returns:
        The PNG's path.
    """
    from tqdm import tqdm

    from .preview import sample_montage, save_png

    owner = "preview"
    out = check_output_file(out, "out", owner)
    n = check_positive_int(n, "n", owner)
    seed = check_positive_int(seed, "seed", owner, minimum=0)
    primitives, mode, size = _synth_options(primitives, mode, patch_size, owner)
    legend, progress = check_bool(legend, "legend", owner), check_bool(progress, "progress", owner)
    shapes = _needed_bank(primitives, bank)
    dataset = SyntheticDataset(make_synth(primitives, mode, size, shapes), n, seed=seed)
    samples = tqdm(range(n), desc=f"preview {out}", unit="sample", disable=not progress)
    pairs = [(s["image"], s["label"]) for s in (dataset[i] for i in samples)]
    names = class_names(primitives, shapes)
    return save_png(sample_montage(pairs, names, len(names), legend=legend), out)


# ---------------------------------------------------------------------------------------------- generate
def _generate_args(n: int, seed: int, mode: str, size: Sequence[int], primitives: bool, bank) -> dict:
    """The settings that decide a generated folder's content (compared on resume); arguments already checked."""
    bank_id = None
    if not primitives or bank is not None:
        path = DEFAULT_BANK_PATH if bank is None else Path(str(bank))
        if not path.is_file():
            raise FileNotFoundError(f"shape bank {path}: file not found")
        bank_id = {"path": "default" if bank is None else str(path.resolve()), "sha256": file_sha256(path)}
    return {
        "n": n,
        "seed": seed,
        "epoch": 0,
        "mode": mode,
        "patch_size": list(size),
        "primitives": primitives,
        "bank": bank_id,
        "synth_transforms": __version__,
    }


def _claim_folder(out: Path, args: dict) -> None:
    """Record ``args`` in ``out``, or check they match the ones a previous run recorded there."""
    args_file = out / ARGS_FILE
    if args_file.is_file():
        try:
            previous = json.loads(args_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{args_file}: not valid JSON ({e}); remove the folder or pick another --out") from e
        changed = {k: (previous.get(k), v) for k, v in args.items() if previous.get(k) != v}
        if changed:
            details = "; ".join(f"{k}: was {old!r}, now {new!r}" for k, (old, new) in changed.items())
            raise ValueError(
                f"{out} was generated with other arguments ({details}); rerun with the same arguments to resume, "
                "or choose another --out"
            )
        return
    leftovers = [name for name in (IMAGES_DIR, LABELS_DIR, "dataset.json") if (out / name).exists()]
    if leftovers:
        raise ValueError(
            f"{out} holds {leftovers} but no {ARGS_FILE}: not a folder made by generate; choose another --out"
        )
    write_json_atomic(args_file, args)


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(image, tmp)


def _pair_paths(out: Path, index: int) -> tuple[Path, Path]:
    name = f"synth_{index:05d}.nii.gz"
    return out / IMAGES_DIR / name, out / LABELS_DIR / name


class _PairWriter(torch.utils.data.Dataset):
    """Item ``k``: make sample ``indices[k]`` of ``dataset`` and write its image and label (in worker processes)."""

    def __init__(self, dataset: SyntheticDataset, indices: Sequence[int], out: Path, label_dtype):
        self.dataset, self.indices, self.out, self.label_dtype = dataset, list(indices), out, label_dtype

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> int:
        index = self.indices[k]
        sample = self.dataset[index]
        image_path, label_path = _pair_paths(self.out, index)
        affine = np.asarray(sample["label"].affine, dtype=np.float64)
        _write_nifti(sample["image"][0].numpy().astype(np.float32), affine, image_path)
        _write_nifti(sample["label"][0].numpy().astype(self.label_dtype), affine, label_path)
        return index


def _identity(item):
    """The DataLoader's collate: items are indices already written, nothing to batch."""
    return item


def _auto_workers(workers, n: int, owner: str) -> int:
    """Worker processes: ``workers`` checked, or for None/"auto" up to 8 when there are 8 items or more."""
    if workers is None or workers == "auto":
        return 0 if n < 8 else min(os.cpu_count() or 1, 8)
    return check_positive_int(workers, "workers", owner, minimum=0)


def _provenance(args: dict) -> str:
    """Where the shapes of a generated dataset come from (the terms of that source apply)."""
    if args["primitives"]:
        return "procedurally generated primitive solids; no source data"
    if args["bank"]["path"] == "default":
        return "organ shapes from TotalSegmentator label maps (CC BY 4.0); see synth_transforms/data/NOTICE"
    return f"organ shapes from the label maps of shape bank {args['bank']['path']}"


def _decathlon(names: Sequence[str], n: int, args: dict) -> dict:
    kind = "primitive solids (FDSL baseline)" if args["primitives"] else "anatomy-informed organ layouts"
    return {
        "name": "synth_transforms synthetic",
        "description": f"Synthetic {kind}, {args['mode']} rendering, seed {args['seed']} (synth_transforms)",
        "reference": "synth_transforms generate",
        "licence": _provenance(args),
        "tensorImageSize": "3D",
        "modality": {"0": "synthetic"},
        "labels": {str(k): name for k, name in enumerate(names)},
        "numTraining": n,
        "numTest": 0,
        "training": [
            {"image": f"./{IMAGES_DIR}/synth_{i:05d}.nii.gz", "label": f"./{LABELS_DIR}/synth_{i:05d}.nii.gz"}
            for i in range(n)
        ],
        "test": [],
    }


def generate_dataset(
    out,
    n: int,
    seed: int = 0,
    mode: str = "shell",
    patch_size=96,
    primitives: bool = False,
    bank=None,
    workers=None,
    progress: bool = True,
) -> Path:
    """Write n synthetic pairs as NIfTI (imagesTr/, labelsTr/) plus a Decathlon dataset.json into out; resumable.

    Pair i depends only on (seed, i) (SyntheticDataset at epoch 0). Every file is written under a temporary name
    and renamed, and pairs whose two files exist are skipped: an interrupted run, rerun with the same arguments,
    completes the folder byte for byte as an uninterrupted run would. The arguments are stored in
    synth_args.json; a rerun with other arguments is refused. dataset.json is written last.

    Args:
        out: output folder.
        n: number of pairs.
        seed: base seed (>= 0).
        mode: rendering mode: shell, fill or mixed.
        patch_size: patch size in voxels (an int or a,b,c).
        primitives: generate the primitive-solid baseline instead of anatomy.
        bank: shape bank file (default: the packaged bank).
        workers: worker processes (default: up to 8 when n >= 8, else 0); the output does not depend on it.
        progress: show a progress bar.

    Returns:
        The path of dataset.json.
    """
    from tqdm import tqdm

    owner = "generate"
    out = check_output_dir(out, "out", owner)
    n = check_positive_int(n, "n", owner)
    seed = check_positive_int(seed, "seed", owner, minimum=0)
    primitives, mode, size = _synth_options(primitives, mode, patch_size, owner)
    _auto_workers(workers, n, owner)  # checked now; "auto" is decided below by the pairs left to write
    progress = check_bool(progress, "progress", owner)
    args = _generate_args(n, seed, mode, size, primitives, bank)
    shapes = _needed_bank(primitives, bank)
    synth = make_synth(primitives, mode, size, shapes)
    out.mkdir(parents=True, exist_ok=True)
    _claim_folder(out, args)
    missing = [i for i in range(n) if not all(p.is_file() for p in _pair_paths(out, i))]
    label_dtype = np.uint8 if synth.num_classes <= 256 else np.int16
    if missing:
        writer = _PairWriter(SyntheticDataset(synth, n, seed=seed), missing, out, label_dtype)
        loader = torch.utils.data.DataLoader(
            writer, batch_size=None, num_workers=_auto_workers(workers, len(missing), owner), collate_fn=_identity
        )
        for _ in tqdm(loader, total=len(missing), desc=f"generate {out}", unit="pair", disable=not progress):
            pass
    dataset_json = out / "dataset.json"
    write_json_atomic(dataset_json, _decathlon(class_names(primitives, shapes), n, args))
    return dataset_json
