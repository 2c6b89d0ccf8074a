"""Put a run folder back from its published records after the machine that held it was lost (``restore``).

``report --results_doc`` publishes a run's small records to ``records/<run folder>/`` beside the results page: its
settings, stage records, per-case Dice, learning curves and training cases, and an ablation's own encoders. They hold
no network weights of the main run (its encoders are released in the pre-training bundle) and no fine-tuned weights.
``restore`` copies them into a run folder, puts the given encoders in place, rebuilds the experiment's bank with the
bank stage's command (the build is deterministic) and writes its datalist from the dataset (as ``run`` does, so that
the folder can be an ablation's ``--main_run``), then writes ``restored.json`` (what came from where, with
sha256). A later ``run`` or ``ablate`` with the same settings resumes after the finished stages: a fine-tuning whose
weights are gone counts as done while its evaluation is (``runner.is_settled``).
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

from experiments.runner import is_settled, read_record, utc_now
from experiments.transfer import progress
from experiments.transfer.plan import (
    BANK_SUBJECTS,
    DEFAULT_DATASET,
    ENCODER,
    Settings,
    bank_path,
    bank_stages,
    read_datalist,
)
from synth_transforms.cli_args import comma_items
from synth_transforms.io import atomic_path, file_sha256, read_json, write_json_atomic

RESTORED = "restored.json"  # in a restored run folder: its sources (published with its records)


def parse_encoders(encoders: str | dict | None) -> dict[str, Path]:
    """``{arm: encoder file}`` from a dict or ``"anatomy=path,primitives=path"``."""
    if isinstance(encoders, dict):
        pairs = list(encoders.items())
    else:
        pairs = []
        for item in comma_items(encoders):
            arm, sep, path = str(item).partition("=")
            if not sep or not arm.strip() or not path.strip():
                raise ValueError(f"--encoders: expected arm=path items (e.g. anatomy=model.pt), got {item!r}")
            pairs.append((arm.strip(), path.strip()))
    return {str(arm): Path(path).resolve() for arm, path in pairs}


def check_records(records: Path) -> None:
    for needed in ("settings.json", "stages"):
        if not (records / needed).exists():
            raise FileNotFoundError(
                f"{records / needed} not found: --records must be a run's published records folder "
                "(report --results_doc writes records/<run folder>/ beside the page)"
            )


def conflicts(records: Path, out: Path, files: list[Path]) -> list[str]:
    """The files of ``out`` that a restore would change: present there with other content than in ``records``."""
    return [str(out / f) for f in files if (out / f).is_file() and not filecmp.cmp(records / f, out / f, shallow=False)]


def check_encoders(records: Path, encoders: dict[str, Path]) -> None:
    """Each encoder given must exist and belong to a pre-training that the records say succeeded (else it would be
    taken for an unfinished stage's)."""
    for arm, source in encoders.items():
        record = read_record(records, f"pretrain_{arm}")
        if record is None or not record.get("ok"):
            raise ValueError(
                f"--encoders {arm}={source}: the records hold no successful pretrain_{arm} stage "
                f"({records / 'stages' / f'pretrain_{arm}.json'}): restore an encoder only with its stage's record"
            )
        if not source.is_file():
            raise FileNotFoundError(f"--encoders {arm}: {source} not found")


def place_encoders(out: Path, encoders: dict[str, Path]) -> dict[str, dict]:
    """Copy each arm's encoder to ``pretrain/<arm>/models/``; returns its source and sha256."""
    placed = {}
    for arm, source in encoders.items():
        target = out / "pretrain" / arm / "models" / ENCODER
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        placed[arm] = {"source": str(source), "sha256": file_sha256(target)}
    return placed


def rebuild_bank(out: Path, recorded: dict, bank_subjects: Path) -> dict | None:
    """Rebuild a main run's bank (when its settings build one and its stage succeeded) with the stage's command."""
    if "ablation" in recorded:
        return None  # an ablation uses its main run's bank
    settings = Settings(**recorded)
    bank = bank_path(settings, out)
    record = read_record(out, "bank")
    if bank is None or bank.is_file() or record is None or not record.get("ok"):
        return None
    command = bank_stages(settings, out, bank_subjects)[0].command()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"rebuilding the bank failed (exit {done.returncode}): {' '.join(command)}\n{done.stderr}")
    return {"command": command, "sha256": file_sha256(bank)}


def main_run_datalist(recorded: dict, dataset_dir: Path) -> dict | None:
    """A main run's datalist, read from the dataset as ``run`` does when it starts (it is not published: it is the
    dataset's own list); None for an ablation, which reads its main run's."""
    return None if "ablation" in recorded else read_datalist(dataset_dir, Settings(**recorded).val_cases)


def restore(
    records: str,
    out: str,
    encoders: str | dict | None = None,
    dataset_dir: str = str(DEFAULT_DATASET),
    bank_subjects: str = str(BANK_SUBJECTS),
) -> dict:
    """Restore the run folder ``out`` from its published ``records`` folder (``docs/records/<run>``): copy them, put
    the ``--encoders`` (``anatomy=path,primitives=path``: e.g. the released ones) in place and rebuild the bank, so
    that ``run``/``ablate`` with the same settings resumes after the finished stages. Files already in ``out`` with
    other content are refused, never overwritten. Prints which stages are settled and which are left."""
    records_path, out_path = Path(records).resolve(), Path(out).resolve()
    check_records(records_path)
    chosen = parse_encoders(encoders)
    check_encoders(records_path, chosen)
    recorded = read_json(records_path / "settings.json", "run settings")  # copied as it is (or refused below)
    datalist = main_run_datalist(recorded, Path(dataset_dir).resolve())
    files = sorted(p.relative_to(records_path) for p in records_path.rglob("*") if p.is_file())
    files = [relative for relative in files if relative != Path(RESTORED)]  # the log is extended, not copied
    clash = conflicts(records_path, out_path, files)
    if clash:
        raise FileExistsError(f"{out_path} already holds other versions of {clash}: restore into a new --out folder")
    for relative in files:
        with atomic_path(out_path / relative) as tmp:
            shutil.copyfile(records_path / relative, tmp)
    placed = place_encoders(out_path, chosen)
    bank = rebuild_bank(out_path, recorded, Path(bank_subjects).resolve())
    if datalist is not None:
        write_json_atomic(out_path / "datalist.json", datalist)
    entry = {"restored": utc_now(), "records": str(records_path), "files": len(files), "encoders": placed, "bank": bank}
    log = next((p for p in (out_path / RESTORED, records_path / RESTORED) if p.is_file()), None)
    earlier = read_json(log, "restore log") if log is not None else []
    write_json_atomic(out_path / RESTORED, [*earlier, entry])  # every restore of the folder, oldest first

    _, _, stages = progress.run_plan(out_path, Path(dataset_dir).resolve())
    settled = [stage.name for stage in stages if is_settled(out_path, stage, stages)]
    left = [stage.name for stage in stages if stage.name not in settled]
    print(f"restored {len(files)} files from {records_path} into {out_path}")
    for arm, facts in placed.items():
        print(f"  encoder {arm}: {facts['source']} (sha256 {facts['sha256'][:12]}...)")
    if bank is not None:
        print(f"  bank rebuilt: sha256 {bank['sha256'][:12]}...")
    print(f"stages settled: {len(settled)}; left to run: {len(left)} (`status --out {out_path}` lists them)")
    return {**entry, "settled": settled, "left": left}
