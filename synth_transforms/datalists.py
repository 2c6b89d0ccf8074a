"""Decathlon-format datalists for fine-tuning: checked file lists and fixed, recorded few-shot subsets."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence

import numpy as np
from monai.data import load_decathlon_datalist

__all__ = ["load_decathlon_split", "select_cases"]

logger = logging.getLogger(__name__)

_FILE_KEYS = ("image", "label")


def load_decathlon_split(
    datalist_path: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    split: str = "training",
    num_cases: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
    record_path: str | os.PathLike | None = None,
    check_keys: Sequence[str] | None = None,
) -> list[dict]:
    """Read one split of a Decathlon ``dataset.json``, check its files exist and optionally take a few-shot subset.

    Built on :func:`monai.data.load_decathlon_datalist`: relative paths are resolved against ``dataset_dir`` and the
    ``test`` split's plain path strings become ``{"image": path}``.

    Args:
        datalist_path: the ``dataset.json`` (or any JSON with the same layout).
        dataset_dir: folder that the datalist's relative paths start from.
        split: key of the list to read, e.g. ``"training"``, ``"validation"`` or ``"test"``.
        num_cases: keep this many cases (a fixed subset, see :func:`select_cases`). Exclusive with ``fraction``.
        fraction: keep this fraction of the cases, in (0, 1], at least one case. Exclusive with ``num_cases``.
        seed: seed of the subset choice; the same seed and list always give the same cases.
        record_path: if given, write the cases used (paths relative to ``dataset_dir``) to this JSON file. The file
            is itself a Decathlon-style datalist (the list is stored under ``split``), so it can be passed back as
            a datalist to reproduce a run.
        check_keys: entry keys whose files must exist; default ``("image", "label")`` where present.

    Returns:
        The list of case dictionaries with absolute paths.

    Raises:
        FileNotFoundError: ``dataset_dir``, the datalist or a file named by an entry does not exist.
        ValueError: the datalist is not valid JSON, has no ``split`` list, the list is empty, or the subset request
            is invalid (both ``num_cases`` and ``fraction``, more cases than available, fraction outside (0, 1]).
    """
    dataset_dir = os.fspath(dataset_dir)
    datalist_path = os.fspath(datalist_path)
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(
            f"dataset_dir {dataset_dir} does not exist or is not a folder: pass --dataset_dir pointing at the "
            "Decathlon-format dataset (the folder holding imagesTr/ and labelsTr/)."
        )
    if not os.path.isfile(datalist_path):
        raise FileNotFoundError(
            f"Datalist {datalist_path} does not exist: pass --datalist pointing at the dataset.json "
            f"(default: dataset_dir + '/dataset.json')."
        )
    try:
        with open(datalist_path, encoding="utf-8") as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"Datalist {datalist_path} is not valid JSON: {e}") from e
    if not isinstance(content, dict) or not isinstance(content.get(split), list):
        keys = sorted(k for k, v in content.items() if isinstance(v, list)) if isinstance(content, dict) else []
        raise ValueError(
            f"Datalist {datalist_path} has no {split!r} list of cases (lists found: {keys}). Add one, or choose "
            "another split in the config (train_split / val_split / infer_split)."
        )
    if not content[split]:
        raise ValueError(f"Datalist {datalist_path}: the {split!r} list is empty.")

    base_dir = os.path.abspath(dataset_dir)
    cases = load_decathlon_datalist(datalist_path, is_segmentation=True, data_list_key=split, base_dir=base_dir)
    keys = _FILE_KEYS if check_keys is None else tuple(check_keys)
    for index, case in enumerate(cases):
        for key in keys:
            if key not in case:
                if check_keys is not None:
                    raise ValueError(f"Datalist {datalist_path}: {split} entry {index} has no {key!r} file.")
                continue
            for file in [case[key]] if isinstance(case[key], str) else case[key]:
                if not os.path.isfile(file):
                    raise FileNotFoundError(
                        f"Datalist {datalist_path}: {split} entry {index} names {key} file {file}, which does not "
                        "exist."
                    )

    chosen = select_cases(cases, num_cases=num_cases, fraction=fraction, seed=seed, what=f"{datalist_path} [{split}]")
    if len(chosen) < len(cases):
        logger.info(f"Using {len(chosen)} of {len(cases)} {split} cases of {datalist_path} (subset seed {seed}).")
    if record_path:
        _record(record_path, chosen, dataset_dir, split, datalist_path, len(cases), num_cases, fraction, seed)
    return chosen


def select_cases(
    cases: Sequence[dict],
    num_cases: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
    what: str = "datalist",
) -> list[dict]:
    """Pick a fixed subset: sort by image path, draw without replacement with ``seed``, keep sorted order.

    Args:
        cases: case dictionaries with an ``image`` entry.
        num_cases: how many to keep; None with ``fraction`` None keeps all (in their original order).
        fraction: fraction to keep, in (0, 1]; rounded, at least one case.
        seed: seed of the draw.
        what: name of the source, used in error messages.

    Returns:
        The chosen cases.
    """
    if num_cases is not None and fraction is not None:
        raise ValueError(f"Give num_cases or fraction for {what}, not both (got {num_cases} and {fraction}).")
    available = len(cases)
    if num_cases is None and fraction is None:
        return list(cases)
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction} for {what}.")
        num_cases = max(1, int(round(fraction * available)))
    if int(num_cases) != num_cases or num_cases < 1:
        raise ValueError(f"num_cases must be a positive integer, got {num_cases} for {what}.")
    num_cases = int(num_cases)
    if num_cases > available:
        raise ValueError(f"Asked for {num_cases} cases but {what} has only {available}.")
    ordered = sorted(cases, key=lambda c: str(c.get("image")))
    picked = np.random.default_rng(seed).choice(available, size=num_cases, replace=False)
    return [ordered[i] for i in sorted(picked.tolist())]


def _record(
    record_path: str | os.PathLike,
    chosen: list[dict],
    dataset_dir: str,
    split: str,
    datalist_path: str,
    available: int,
    num_cases: int | None,
    fraction: float | None,
    seed: int,
) -> None:
    """Write the chosen cases to ``record_path`` (temporary name, then rename)."""

    def rel(value):
        if isinstance(value, str):
            return os.path.relpath(os.path.abspath(value), os.path.abspath(dataset_dir))
        if isinstance(value, list):
            return [rel(v) for v in value]
        return value

    record = {
        "description": "cases used by a run; a Decathlon-style datalist relative to dataset_dir",
        "source_datalist": os.path.abspath(datalist_path),
        "dataset_dir": os.path.abspath(dataset_dir),
        "split": split,
        "available": available,
        "num_cases": num_cases,
        "fraction": fraction,
        "seed": seed,
        split: [{k: rel(v) if k in _FILE_KEYS else v for k, v in case.items()} for case in chosen],
    }
    record_path = os.fspath(record_path)
    folder = os.path.dirname(os.path.abspath(record_path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
        os.replace(tmp, record_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
