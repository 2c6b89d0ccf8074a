"""Command line: ``python -m synth_transforms <command>`` (or ``synth-transforms <command>``), built with fire.

Commands:

- ``bank build --label_maps <glob | folder | list> --class_map <json> [--organs <json | a,b,c>] [--spacing 1.5]
  --out bank.npz``; ``bank info [--path bank.npz]`` (default: the bank shipped with the package);
- ``preview [--out preview.png] [--n 4] [--seed 0] [--mode shell] [--patch_size 96] [--bank ...]
  [--primitives False] [--legend True]``: PNG montage of samples in three planes;
- ``generate --out <dir> --n <N> [--seed 0] [--mode shell] [--patch_size 96] [--primitives False] [--bank ...]
  [--workers auto]``: N NIfTI pairs plus a Decathlon ``dataset.json``; resumable, byte-identical on resume;
- ``graph [--bank ...] [--topology graph.json] [--out graph.json | graph.png]``: show, save or draw the topology;
- ``validate [--n 1000] [--seed 0] [--patch_size 96] [--json report.json] [--bank ...] [--workers auto]``: the
  plausibility report of :mod:`synth_transforms.metrics` (exit status 1 when a check fails);
- ``bench [--n 20] [--patch_size 96] [--mode shell]``: median seconds per pair of the anatomy and primitive
  synthesis on one thread.

The functions behind the commands (:func:`build_bank`, :func:`write_preview`, :func:`generate_dataset`,
:func:`show_graph`, :func:`validate`, :func:`bench`) are plain Python and used by ``scripts/demo.py`` as well.
Bad input ends with ``error: <message>`` and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .bank import DEFAULT_BANK_PATH, ShapeBank, load_bank
from .dataset import SyntheticDataset, sample_seed
from .io import atomic_path, read_json, write_json_atomic
from .primitives import PRIMITIVE_CLASSES
from .render import RENDER_MODES
from .topology import TopologyGraph
from .transforms import RandAnatomySynthd, RandPrimitiveSynthd

__all__ = [
    "main",
    "build_bank",
    "write_preview",
    "generate_dataset",
    "show_graph",
    "validate",
    "bench",
    "make_synth",
    "class_names",
]

LABEL_MAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
ARGS_FILE = "synth_args.json"
IMAGES_DIR, LABELS_DIR = "imagesTr", "labelsTr"


# ---------------------------------------------------------------------------------------------- argument helpers
def _names(value) -> list[str] | None:
    """A list of names from None, a comma-separated string, or a list/tuple (fire turns ``a,b`` into a tuple)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _patch_size(value) -> tuple[int, int, int]:
    """Three positive voxel counts from an int or a sequence of 3."""
    size = (value,) * 3 if isinstance(value, (int, np.integer)) else tuple(value)
    if len(size) != 3 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ValueError(f"patch_size must be a positive integer or 3 of them, got {value!r}")
    return tuple(int(s) for s in size)


def _bank(bank) -> ShapeBank:
    """The bank at path ``bank``, or the default bank for None."""
    return load_bank(None if bank is None else Path(str(bank)))


def _resolve_label_maps(label_maps) -> list[Path]:
    """Label-map files from a glob, a folder, a file, or a list of those."""
    if isinstance(label_maps, (list, tuple)):
        return [p for item in label_maps for p in _resolve_label_maps(str(item))]
    text = str(label_maps)
    if any(ch in text for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not found:
            raise FileNotFoundError(f"label maps: no file matches {text!r}")
        return found
    path = Path(text)
    if path.is_dir():
        found = _label_files_in(path)
        if not found:
            raise FileNotFoundError(
                f"label maps: folder {path} holds no {'/'.join(LABEL_MAP_SUFFIXES)} file (nor one per subfolder)"
            )
        return found
    if not path.is_file():
        raise FileNotFoundError(f"label map {path}: file not found")
    return [path]


def _label_files_in(folder: Path) -> list[Path]:
    """Label maps directly in ``folder``, else those one level down (one folder per subject)."""
    for pattern in ("*", "*/*"):
        found = sorted(p for p in folder.glob(pattern) if p.is_file() and p.name.endswith(LABEL_MAP_SUFFIXES))
        if found:
            return found
    return []


def _organ_spec(organs) -> dict[str, list[str]] | list[str] | None:
    """Organs for ``ShapeBank.build``: None, a JSON file ``{organ: [class names]}`` (or a list), or names."""
    if organs is None:
        return None
    if isinstance(organs, str) and organs.endswith(".json"):
        path = Path(organs)
        spec = read_json(path, "organ file")
        if isinstance(spec, dict):
            return {str(o): [parts] if isinstance(parts, str) else list(parts) for o, parts in spec.items()}
        if isinstance(spec, list):
            return [str(o) for o in spec]
        raise ValueError(f"organ file {path}: expected {{organ: [class names]}} or a list of names")
    return _names(organs)


# ---------------------------------------------------------------------------------------------- bank
def build_bank(label_maps, class_map, out, organs=None, spacing: float = 1.5) -> ShapeBank:
    """Build a shape bank from label maps and a class map and save it to ``out`` (see ``ShapeBank.build``)."""
    files = _resolve_label_maps(label_maps)
    bank = ShapeBank.build(files, str(class_map), organs=_organ_spec(organs), spacing=float(spacing))
    bank.save(Path(str(out)))
    return bank


# ---------------------------------------------------------------------------------------------- synthesis
def make_synth(primitives: bool = False, mode: str = "shell", patch_size=96, bank=None):
    """The dictionary transform making ``{"image", "label"}`` pairs: anatomy (default) or primitives."""
    if mode not in RENDER_MODES:
        raise ValueError(f"mode must be one of {RENDER_MODES}, got {mode!r}")
    size = _patch_size(patch_size)
    if primitives:
        spacing = _bank(bank).spacing if bank is not None else 1.5
        return RandPrimitiveSynthd(patch_size=size, mode=mode, spacing=spacing)
    return RandAnatomySynthd(bank=_bank(bank), patch_size=size, mode=mode)


def class_names(primitives: bool = False, bank=None) -> list[str]:
    """Class names by class id (0 = background) of the anatomy bank or of the primitive classes."""
    if primitives:
        return ["background"] + [f"{section} {profile}" for section, profile in PRIMITIVE_CLASSES]
    return ["background"] + list(_bank(bank).organs)


def write_preview(
    out="preview.png",
    n: int = 4,
    seed: int = 0,
    mode: str = "shell",
    patch_size=96,
    bank=None,
    primitives: bool = False,
    legend: bool = True,
) -> Path:
    """Make ``n`` samples (sample ``i`` as in ``generate`` with the same seed) and save their PNG montage."""
    from .preview import sample_montage, save_png

    if int(n) < 1:
        raise ValueError(f"preview: n must be >= 1, got {n}")
    synth = make_synth(primitives, mode, patch_size, bank)
    dataset = SyntheticDataset(synth, int(n), seed=int(seed))
    pairs = [(s["image"], s["label"]) for s in (dataset[i] for i in range(int(n)))]
    names = class_names(primitives, bank)
    return save_png(sample_montage(pairs, names, len(names), legend=bool(legend)), Path(str(out)))


# ---------------------------------------------------------------------------------------------- generate
def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _generate_args(n, seed, mode, patch_size, primitives, bank) -> dict:
    """The settings that decide a generated folder's content (compared on resume)."""
    bank_id = None
    if not primitives or bank is not None:
        path = DEFAULT_BANK_PATH if bank is None else Path(str(bank))
        if not path.is_file():
            raise FileNotFoundError(f"shape bank {path}: file not found")
        bank_id = {"path": "default" if bank is None else str(path.resolve()), "sha256": _file_sha256(path)}
    return {
        "n": int(n),
        "seed": int(seed),
        "epoch": 0,
        "mode": str(mode),
        "patch_size": list(_patch_size(patch_size)),
        "primitives": bool(primitives),
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


def _keep(item):
    return item


def _auto_workers(workers, n: int) -> int:
    if workers is None or workers == "auto":
        return 0 if n < 8 else min(os.cpu_count() or 1, 8)
    return int(workers)


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
    """Write ``n`` synthetic pairs as NIfTI plus a Decathlon ``dataset.json`` into ``out``; returns its path.

    Sample ``i`` depends only on ``(seed, i)`` (``SyntheticDataset`` at epoch 0), every file is written under a
    temporary name and renamed, and pairs whose two files exist are skipped: an interrupted run, rerun with the
    same arguments, completes the folder byte for byte as an uninterrupted run would. The arguments are stored in
    ``synth_args.json``; a rerun with other arguments is refused. ``dataset.json`` is written last.

    Args:
        out: output folder.
        n: number of pairs.
        seed: base seed.
        mode: rendering mode (``shell``, ``fill``, ``mixed``).
        patch_size: patch size in voxels (int or 3 ints).
        primitives: make the primitive-solid baseline instead of anatomy.
        bank: shape bank file (default: the bank shipped with the package).
        workers: worker processes (default: up to 8 for n >= 8, else 0); results do not depend on it.
        progress: show a tqdm progress bar.
    """
    from tqdm import tqdm

    if int(n) < 1:
        raise ValueError(f"generate: n must be >= 1, got {n}")
    out, n = Path(str(out)), int(n)
    args = _generate_args(n, seed, mode, patch_size, primitives, bank)
    synth = make_synth(primitives, mode, patch_size, bank)
    names = class_names(primitives, bank)
    out.mkdir(parents=True, exist_ok=True)
    _claim_folder(out, args)
    missing = [i for i in range(n) if not all(p.is_file() for p in _pair_paths(out, i))]
    label_dtype = np.uint8 if len(names) <= 256 else np.int16
    writer = _PairWriter(SyntheticDataset(synth, n, seed=int(seed)), missing, out, label_dtype)
    if missing:
        loader = torch.utils.data.DataLoader(
            writer, batch_size=None, num_workers=_auto_workers(workers, len(missing)), collate_fn=_keep
        )
        for _ in tqdm(loader, total=len(missing), desc=f"generate {out}", unit="pair", disable=not progress):
            pass
    dataset_json = out / "dataset.json"
    write_json_atomic(dataset_json, _decathlon(names, n, args))
    return dataset_json


# ---------------------------------------------------------------------------------------------- graph, validate, bench
def show_graph(bank=None, out=None, topology=None) -> str | Path:
    """The bank's topology graph (or the one in ``topology``): its description, or saved as JSON or drawn as PNG."""
    shapes = _bank(bank)
    graph = TopologyGraph.load(str(topology), shapes.organs) if topology else TopologyGraph.from_bank(shapes)
    if out is None:
        return graph.describe()
    out = Path(str(out))
    if out.suffix == ".json":
        graph.save(out)
    elif out.suffix == ".png":
        from .preview import graph_image, save_png

        save_png(graph_image(graph), out)
    else:
        raise ValueError(f"graph --out {out}: expected a .json or .png file name")
    return out


def validate(
    n: int = 1000,
    seed: int = 0,
    patch_size=96,
    json_path=None,
    bank=None,
    workers=None,
    organs=None,
    topology=None,
    progress: bool = True,
) -> dict:
    """The plausibility report of ``n`` anatomy patches (see :func:`synth_transforms.metrics.plausibility_report`)."""
    from .metrics import plausibility_report

    kwargs = {"organs": _names(organs)} if organs is not None else {}
    if topology is not None:
        kwargs["topology"] = str(topology)
    report = plausibility_report(
        _bank(bank), int(n), int(seed), _patch_size(patch_size), _auto_workers(workers, int(n)), progress, **kwargs
    )
    if json_path is not None:
        write_json_atomic(Path(str(json_path)), report)
    return report


def bench(n: int = 20, patch_size=96, mode: str = "shell", bank=None) -> dict[str, float]:
    """Median seconds per ``{"image", "label"}`` pair on one thread: anatomy, primitives, and their ratio."""
    if int(n) < 1:
        raise ValueError(f"bench: n must be >= 1, got {n}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = {}
        for name, primitives in (("anatomy", False), ("primitives", True)):
            synth = make_synth(primitives, mode, patch_size, bank)
            synth.set_random_state(seed=0)
            synth({})  # warm-up: first-call allocations and caches
            times = []
            for i in range(int(n)):
                synth.set_random_state(seed=sample_seed(0, 0, i))
                start = time.perf_counter()
                synth({})
                times.append(time.perf_counter() - start)
            result[name] = statistics.median(times)
    finally:
        torch.set_num_threads(threads)
    result["anatomy_over_primitives"] = result["anatomy"] / result["primitives"]
    return result


# ---------------------------------------------------------------------------------------------- fire front end
class BankCommands:
    """Build or inspect a shape bank."""

    def build(self, label_maps, class_map, out, organs=None, spacing: float = 1.5):
        """Build a shape bank from label maps.

        Args:
            label_maps: a glob (quote it), a folder (its label maps, or one per subfolder), or a list of files.
            class_map: JSON file {"id": "class name"} naming the label maps' ids.
            out: bank file to write (.npz).
            organs: JSON file {organ: [class names merged]} or a comma list of class names (default: the 21
                TotalSegmentator v2 organs of the default bank).
            spacing: isotropic voxel size in mm.
        """
        bank = build_bank(label_maps, class_map, out, organs, spacing)
        print(bank.info())
        print(f"saved {out}")

    def info(self, path=None):
        """Summary of a shape bank (default: the bank shipped with the package)."""
        print(_bank(path).info())
        print(f"file: {DEFAULT_BANK_PATH if path is None else path}")


class SynthTransformsCLI:
    """Anatomy-informed synthetic data for 3D segmentation pre-training: banks, previews, datasets, checks."""

    def __init__(self):
        self.bank = BankCommands()

    def preview(
        self,
        out="preview.png",
        n: int = 4,
        seed: int = 0,
        mode: str = "shell",
        patch_size=96,
        bank=None,
        primitives: bool = False,
        legend: bool = True,
    ):
        """Save a PNG montage of n samples: image and label overlay in three planes through the patch centre.

        Args:
            out: PNG file.
            n: number of samples (rows).
            seed: base seed (sample i is the same as generate's sample i).
            mode: rendering mode: shell, fill or mixed.
            patch_size: patch size in voxels (int or a,b,c).
            bank: shape bank file (default: the packaged bank).
            primitives: show the primitive-solid baseline instead of anatomy.
            legend: add a legend of the classes shown.
        """
        path = write_preview(out, n, seed, mode, patch_size, bank, primitives, legend)
        print(f"preview: {path}")

    def generate(
        self,
        out,
        n: int,
        seed: int = 0,
        mode: str = "shell",
        patch_size=96,
        primitives: bool = False,
        bank=None,
        workers=None,
        progress: bool = True,
    ):
        """Write n synthetic pairs as NIfTI (imagesTr/, labelsTr/) plus a Decathlon dataset.json; resumable.

        Args:
            out: output folder.
            n: number of pairs.
            seed: base seed; pair i depends only on (seed, i).
            mode: rendering mode: shell, fill or mixed.
            patch_size: patch size in voxels (int or a,b,c).
            primitives: generate the primitive-solid baseline instead of anatomy.
            bank: shape bank file (default: the packaged bank).
            workers: worker processes (default: up to 8 when n >= 8); the output does not depend on it.
            progress: show a progress bar.
        """
        path = generate_dataset(out, n, seed, mode, patch_size, primitives, bank, workers, progress)
        print(f"dataset: {path} ({n} pairs)")

    def graph(self, bank=None, out=None, topology=None):
        """Print the topology graph, or save it as JSON (out=*.json) or draw it (out=*.png).

        Args:
            bank: shape bank file (default: the packaged bank); the graph is derived from it.
            out: None to print, a .json file to save, a .png file to draw.
            topology: a topology JSON to show instead of the derived graph (validated against the bank).
        """
        result = show_graph(bank, out, topology)
        print(result if out is None else f"graph: {result}")

    def validate(
        self,
        n: int = 1000,
        seed: int = 0,
        patch_size=96,
        json=None,
        bank=None,
        workers=None,
        organs=None,
        topology=None,
        progress: bool = True,
    ):
        """Plausibility report of n anatomy patches; exit status 1 if a check fails.

        Args:
            n: number of patches.
            seed: base seed (patch i is generate's label i for the same seed and patch size).
            patch_size: patch size in voxels.
            json: also write the report to this JSON file.
            bank: shape bank file (default: the packaged bank).
            workers: worker processes (default: up to 8 when n >= 8).
            organs: comma list of organs to place (default: all).
            topology: topology JSON to place under (default: derived from the bank).
            progress: show a progress bar.
        """
        from .metrics import format_report

        report = validate(n, seed, patch_size, json, bank, workers, organs, topology, progress)
        print(format_report(report))
        if json is not None:
            print(f"report: {json}")
        if not report["ok"]:
            failed = [k for k, c in report["checks"].items() if not c["ok"]]
            print(f"validation failed: {', '.join(failed)}", file=sys.stderr)
            sys.exit(1)

    def bench(self, n: int = 20, patch_size=96, mode: str = "shell", bank=None):
        """Median seconds per pair on one thread: RandAnatomySynthd vs RandPrimitiveSynthd.

        Args:
            n: timed pairs per transform (after one warm-up pair).
            patch_size: patch size in voxels.
            mode: rendering mode.
            bank: shape bank file (default: the packaged bank).
        """
        result = bench(n, patch_size, mode, bank)
        size = "x".join(str(s) for s in _patch_size(patch_size))
        print(f"bench: {n} pairs of {size} voxels, {mode} rendering, 1 thread (median s/pair)")
        print(f"  RandAnatomySynthd    {result['anatomy']:.4f}")
        print(f"  RandPrimitiveSynthd  {result['primitives']:.4f}")
        print(f"  anatomy / primitives {result['anatomy_over_primitives']:.2f}")


def _message(error: BaseException) -> str:
    """The message of an exception (a KeyError's argument without the quotes ``str`` adds)."""
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line; bad input prints ``error: <message>`` and exits with status 2."""
    import fire

    try:
        fire.Fire(SynthTransformsCLI(), command=list(argv) if argv is not None else None, name="synth-transforms")
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"error: {_message(error)}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # output piped into a reader that stopped early (``| head``)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
