"""Decathlon-format datalists for fine-tuning: checked file lists, fixed few-shot subsets and their records, and
the class names of a dataset."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import numpy as np
from monai.data import load_decathlon_datalist

from ._args import check_positive_int
from .io import read_json, write_json_atomic

__all__ = ["CaseList", "load_decathlon_split", "select_cases", "write_case_record", "decathlon_class_names"]

logger = logging.getLogger(__name__)

_FILE_KEYS = ("image", "label")


class CaseList(list):
    """The case dictionaries of a split (a plain ``list``) and ``record``: which cases were chosen and how.

    ``record`` is a Decathlon-style datalist (paths relative to the dataset folder, the list under its split name)
    with the subset settings; :func:`write_case_record` writes it, so it can be passed back as a datalist to
    reproduce a run.
    """

    def __init__(self, cases: Sequence[dict], record: dict) -> None:
        super().__init__(cases)
        self.record = record


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
        record_path: if given, write the cases used (the returned list's ``record``) to this JSON file now. A
            training config should rather write it when training completes, with
            :class:`synth_transforms.handlers.CaseRecordSaver`, so that a failed run leaves no record.
        check_keys: entry keys whose files must exist; default ``("image", "label")`` where present.

    Returns:
        The case dictionaries with absolute paths, as a :class:`CaseList` (a list with the ``record`` of the choice).

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
    record = _record(chosen, dataset_dir, split, datalist_path, len(cases), num_cases, fraction, seed)
    chosen = CaseList(chosen, record)
    if record_path:
        write_case_record(record_path, chosen)
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


def decathlon_class_names(
    datalist_path: str | os.PathLike, num_classes: int, include_background: bool = False
) -> list[str]:
    """Names of the classes, in id order, from the ``labels`` of a Decathlon ``dataset.json``: report column names.

    Class ``i`` is named by ``labels[str(i)]`` (``{"0": "background", "1": "Anterior", ...}``). A class that the
    datalist does not name, or whose name is empty, repeated or holds a comma or line break (it would break a CSV
    header), is called ``label<i>``, so column ``k`` always names its class unambiguously.

    Args:
        datalist_path: the ``dataset.json``.
        num_classes: classes including background.
        include_background: start at class 0; by default the names of classes ``1..num_classes-1``, the columns of
            metrics computed with ``include_background=False``.

    Raises:
        FileNotFoundError: the datalist does not exist.
        ValueError: the datalist is not valid JSON; ``num_classes`` leaves no class to name.
    """
    first = 0 if include_background else 1
    ids = range(first, check_positive_int(num_classes, "num_classes", "decathlon_class_names", minimum=first + 1))
    content = read_json(datalist_path, "datalist")
    labels = content.get("labels") if isinstance(content, dict) else None
    labels = labels if isinstance(labels, dict) else {}
    names = [str(labels.get(str(i), "")).strip() for i in ids]
    usable = [bool(n) and names.count(n) == 1 and not any(c in n for c in ",\r\n") for n in names]
    return [name if ok else f"label{i}" for i, name, ok in zip(ids, names, usable, strict=True)]


def write_case_record(record_path: str | os.PathLike, cases: CaseList) -> None:
    """Write the ``record`` of cases returned by :func:`load_decathlon_split` to ``record_path``, atomically."""
    if not isinstance(getattr(cases, "record", None), dict):
        raise TypeError(
            f"write_case_record({os.fspath(record_path)!r}): expected the CaseList returned by load_decathlon_split, "
            f"got {type(cases).__name__}"
        )
    write_json_atomic(record_path, cases.record)


def _record(
    chosen: list[dict],
    dataset_dir: str,
    split: str,
    datalist_path: str,
    available: int,
    num_cases: int | None,
    fraction: float | None,
    seed: int,
) -> dict:
    """The record of the chosen cases: a Decathlon-style datalist relative to ``dataset_dir``, with the settings."""

    def rel(value):
        if isinstance(value, str):
            return os.path.relpath(os.path.abspath(value), os.path.abspath(dataset_dir))
        if isinstance(value, list):
            return [rel(v) for v in value]
        return value

    return {
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
