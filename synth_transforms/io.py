"""File helpers shared by the library: label-map reading with clear errors, and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["read_label_map", "read_class_map", "read_json", "atomic_path", "write_json_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A failure inside the block removes the temporary file, so no half-written file ever carries the final name.
    ``suffix`` keeps the extension that writers such as nibabel or numpy use to pick the format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _new_file_mode())  # mkstemp makes the file private (0600); give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_file_mode() -> int:
    """Mode a newly created file gets under the process umask (0644 under the usual umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_json_atomic(path: str | os.PathLike, obj, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n")


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | os.PathLike, what: str):
    """Parse a JSON file; errors name ``what`` the file is (e.g. "class map") and its path.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path}: not valid JSON ({e})") from e


def read_class_map(class_map: Mapping | str | os.PathLike) -> dict[int, str]:
    """Return a class map ``{id: name}`` from a mapping or a JSON file of ``{"id": "name"}``.

    Raises:
        FileNotFoundError: the JSON file does not exist.
        ValueError: the file is not valid JSON, or ids are not non-negative integers, or names repeat.
    """
    source = "class map"
    if not isinstance(class_map, Mapping):
        source = f"class map {class_map}"
        class_map = read_json(class_map, "class map")
        if not isinstance(class_map, Mapping):
            raise ValueError(f"{source}: expected a JSON object {{id: name}}, got {type(class_map).__name__}")
    out: dict[int, str] = {}
    for key, name in class_map.items():
        try:
            idx = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: id {key!r} is not an integer") from None
        if idx < 0 or not isinstance(name, str) or not name:
            raise ValueError(f"{source}: expected a non-negative id and a non-empty name, got {key!r}: {name!r}")
        out[idx] = name
    names = list(out.values())
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{source}: names used for more than one id: {dupes}")
    return out


def read_label_map(
    path: str | os.PathLike, spacing: float | None = None, reader: str | None = None
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a 3D label map, reorient it to RAS and optionally resample it to isotropic ``spacing`` (nearest).

    Uses MONAI's ``LoadImage`` (nibabel for NIfTI, ITK for other formats), ``Orientation`` and ``Spacing``.

    Returns:
        ``(labels, spacing_mm)``: an integer array ``(X, Y, Z)`` in RAS voxel order and its voxel size in mm.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read as an image, is not 3D, or holds non-integer values.
    """
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation, Spacing

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label map {path}: file not found")
    try:
        img = LoadImage(image_only=True, reader=reader)(str(path))
    except Exception as e:  # readers raise many types for corrupt files
        raise ValueError(f"label map {path}: cannot be read as an image ({type(e).__name__}: {e})") from e
    if img.ndim != 3:
        raise ValueError(f"label map {path}: expected a 3D image, got shape {tuple(img.shape)}")
    ras = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
    steps: list[Callable] = [EnsureChannelFirst(channel_dim="no_channel"), ras]
    if spacing is not None:
        steps.append(Spacing(pixdim=(spacing,) * 3, mode="nearest", padding_mode="zeros"))
    img = Compose(steps)(img)
    data = np.asarray(img.array[0])
    rounded = np.rint(data)
    if not np.array_equal(rounded, data):
        raise ValueError(f"label map {path}: expected integer class ids, found non-integer values")
    voxel = tuple(float(v) for v in np.asarray(img.pixdim)[:3])
    return rounded.astype(np.int32), voxel
