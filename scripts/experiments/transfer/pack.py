"""What must outlast a lent machine: ``pack`` copies the exported encoders and one tar of the small files (settings,
stage records, logs, datalists, metrics, learning curves and their figures, results, and the experiment's own bank
when it built one) into a flat folder; ``unpack`` puts them back so that a later
``run`` resumes after the packed stages."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

from experiments.runner import in_partial_folder
from experiments.transfer.plan import ENCODER, PRETRAIN_CONFIG_FILES
from synth_transforms.io import atomic_path

PACKED_RECORDS = "records.tar.gz"
SMALL_SUFFIXES = {".json", ".jsonl", ".log", ".csv", ".md", ".txt", ".png"}
BANK_FOLDER = "bank"  # the bank built by the experiment (a few hundred kB): without it a resume would rebuild it and
# then, its prerequisite newer than them, redo both pre-trainings


def lasting_files(out: Path) -> list[Path]:
    """Small files worth keeping, relative to ``out``: no network weights, nothing of an unfinished stage."""
    keep = []
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        if not path.is_file() or in_partial_folder(relative):
            continue
        in_bank = relative.parts[0] == BANK_FOLDER and path.suffix == ".npz"
        if path.suffix in SMALL_SUFFIXES or "events.out.tfevents" in path.name or in_bank:
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
            for relative in lasting_files(out_path):
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
