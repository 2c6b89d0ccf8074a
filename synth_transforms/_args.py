"""Argument checks shared by the library, the CLI and the scripts: one parser per kind, one message style.

Every check raises ``ValueError("{owner}: {name} must be {expected}, got {value!r}")`` (``owner`` is optional and
names the class, command or file the argument belongs to), so a bad argument reads the same wherever it is caught.
Checks return the normalised value (plain ``int``/``float``/tuples), never a numpy scalar.
"""

from __future__ import annotations

import numbers
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "fail",
    "is_int",
    "is_real",
    "as_size3",
    "check_positive_int",
    "check_int_range",
    "check_non_negative",
    "check_positive",
    "check_fraction",
    "check_range",
    "check_bool",
    "check_choice",
    "check_output_file",
    "check_output_dir",
]


def fail(name: str, expected: str, value: object, owner: str | None = None) -> ValueError:
    """The ``ValueError`` of the house style (returned, so callers write ``raise fail(...)``)."""
    prefix = f"{owner}: " if owner else ""
    return ValueError(f"{prefix}{name} must be {expected}, got {value!r}")


def is_int(value: object) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A finite real number (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and bool(np.isfinite(value))


def as_size3(
    value: int | Sequence[int],
    name: str = "patch_size",
    owner: str | None = None,
    max_voxels: int | None = None,
    multiple_of: int | None = None,
) -> tuple[int, int, int]:
    """Three positive voxel counts from one integer or a sequence of three.

    Args:
        value: ``96`` or ``(96, 96, 64)``; floats (``96.0``) and bools are refused.
        name: the argument's name in messages.
        owner: who the argument belongs to, in messages.
        max_voxels: largest allowed count per axis.
        multiple_of: every count must be divisible by this (SwinUNETR needs 32).
    """
    size = (value,) * 3 if is_int(value) else value
    if isinstance(size, (str, bytes)) or not isinstance(size, (Sequence, np.ndarray)):
        raise fail(name, "a positive integer or 3 of them", value, owner)
    if len(size) != 3 or not all(is_int(s) and s > 0 for s in size):
        raise fail(name, "a positive integer or 3 of them", value, owner)
    size = tuple(int(s) for s in size)
    if max_voxels is not None and max(size) > max_voxels:
        raise fail(name, f"at most {max_voxels} voxels per axis", value, owner)
    if multiple_of is not None and any(s % multiple_of for s in size):
        raise fail(name, f"divisible by {multiple_of} on every axis", value, owner)
    return size


def check_positive_int(
    value: object, name: str, owner: str | None = None, minimum: int = 1, maximum: int | None = None
) -> int:
    """An integer >= ``minimum`` (default 1) and <= ``maximum`` if given; ``2.7``, ``2.0`` and ``True`` are refused."""
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer in {minimum}..{maximum}"
    if not is_int(value) or value < minimum or (maximum is not None and value > maximum):
        raise fail(name, expected, value, owner)
    return int(value)


def check_int_range(value: object, name: str, owner: str | None = None, minimum: int = 1) -> tuple[int, int]:
    """An inclusive integer range ``(low, high)``, ``minimum <= low <= high``; one integer ``n`` means ``(n, n)``."""
    expected = f"an integer >= {minimum} or an inclusive range (low, high) with {minimum} <= low <= high"
    pair = (value, value) if is_int(value) else value
    if isinstance(pair, (str, bytes)) or not isinstance(pair, (Sequence, np.ndarray)) or len(pair) != 2:
        raise fail(name, expected, value, owner)
    low, high = pair
    if not (is_int(low) and is_int(high)) or not minimum <= low <= high:
        raise fail(name, expected, value, owner)
    return int(low), int(high)


def check_non_negative(value: object, name: str, owner: str | None = None) -> float:
    """A finite real number >= 0."""
    if not is_real(value) or value < 0:
        raise fail(name, "a number >= 0", value, owner)
    return float(value)


def check_positive(value: object, name: str, owner: str | None = None) -> float:
    """A finite real number > 0."""
    if not is_real(value) or value <= 0:
        raise fail(name, "a number > 0", value, owner)
    return float(value)


def check_fraction(value: object, name: str, owner: str | None = None) -> float:
    """A real number in [0, 1]."""
    if not is_real(value) or not 0.0 <= value <= 1.0:
        raise fail(name, "a number in [0, 1]", value, owner)
    return float(value)


def check_range(
    value: object,
    name: str,
    owner: str | None = None,
    low: float | None = None,
    high: float | None = None,
    strict_low: bool = False,
    of: str | None = None,
) -> tuple[float, float]:
    """A pair ``(a, b)`` with ``low <= a <= b <= high`` (``low < a`` with ``strict_low``); bounds None are open.

    ``of`` says what the numbers are, in the message (``"fractions of the patch edge"``).
    """
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    what = f"a pair (low, high) of {of}" if of else "a pair (low, high)"
    expected = f"{what} with {lo} {'<' if strict_low else '<='} low <= high <= {hi}"
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)) or len(value) != 2:
        raise fail(name, expected, value, owner)
    a, b = value
    if not (is_real(a) and is_real(b)) or a > b:
        raise fail(name, expected, value, owner)
    if low is not None and (a <= low if strict_low else a < low):
        raise fail(name, expected, value, owner)
    if high is not None and b > high:
        raise fail(name, expected, value, owner)
    return float(a), float(b)


def check_bool(value: object, name: str, owner: str | None = None) -> bool:
    """A real bool: the strings ``"false"``/``"true"`` that a command line leaves behind are refused, not truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise fail(name, "True or False (capitalised on the command line)", value, owner)
    return bool(value)


def check_choice(value: object, name: str, choices: Sequence, owner: str | None = None):
    """One of ``choices``."""
    if value not in choices:
        raise fail(name, f"one of {', '.join(map(repr, choices))}", value, owner)
    return value


def _nearest_existing(path: Path) -> Path | None:
    """``path`` itself if it exists, else its nearest existing ancestor (what must be writable to create it)."""
    for candidate in (path.absolute(), *path.absolute().parents):
        if candidate.exists():
            return candidate
    return None


def _can_create_in(folder: Path | None) -> bool:
    """Whether a file can be created in ``folder``, tried for real (``os.access`` says yes to root on read-only
    mounts and folders)."""
    if folder is None or not folder.is_dir():
        return False
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_probe_"):
            return True
    except OSError:
        return False


def check_output_file(path: str | os.PathLike, name: str = "out", owner: str | None = None) -> Path:
    """A file path that can be written: not a folder, its nearest existing parent a writable folder."""
    path = Path(str(path))
    if path.is_dir():
        raise fail(name, "a file path, not a folder", str(path), owner)
    folder = _nearest_existing(path.absolute().parent)
    if not _can_create_in(folder):
        raise fail(name, f"a path in a writable folder ({folder} is not one)", str(path), owner)
    return path


def check_output_dir(path: str | os.PathLike, name: str = "out", owner: str | None = None) -> Path:
    """A folder path that exists writable or can be created: not a file, its nearest existing parent writable."""
    path = Path(str(path))
    if path.exists() and not path.is_dir():
        raise fail(name, "a folder, not a file", str(path), owner)
    folder = _nearest_existing(path)
    if not _can_create_in(folder):
        raise fail(name, f"a writable folder ({folder} is not one)", str(path), owner)
    return path
