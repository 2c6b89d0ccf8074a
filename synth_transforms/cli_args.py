"""The command line's list arguments: names, organ specifications and sets of label-map files.

Fire hands a flag over as a string, a number or a tuple (``a,b``); these turn each form a user may type (a comma
list, a JSON list inline or in a ``.json`` file, a glob, a folder) into the list or mapping a command needs, and
raise a ValueError or FileNotFoundError that names the flag and what was expected (``error: <message>``, exit 2).
"""

from __future__ import annotations

import glob
import json
from collections.abc import Mapping
from pathlib import Path

from ._args import fail
from .io import read_json

__all__ = ["LABEL_MAP_SUFFIXES", "comma_items", "json_object", "names", "organ_spec", "resolve_label_maps"]

LABEL_MAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
# Fire parses ``{"a": false}`` itself and reads JSON's bare words as names, i.e. the strings below: turned back.
_JSON_WORDS = {"true": True, "false": False, "null": None}


def _json_list(text: str, what: str):
    """The JSON held by ``text``, when it is a JSON list (``'["a", "b"]'``) or a ``.json`` file; else None."""
    text = text.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what}: {text!r} is not a valid JSON list ({e})") from e
    if text.endswith(".json"):
        return read_json(Path(text), what)
    return None


def comma_items(value) -> list:
    """The items of a flag given as one value, a comma string (``"a, b"``) or a list/tuple (fire turns ``a,b`` into
    one): string items are split at their commas and stripped, blank ones dropped; order kept; None gives []."""
    items: list = []
    for item in [] if value is None else value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(item, str):
            items += [part.strip() for part in item.split(",") if part.strip()]
        else:
            items.append(item)
    return items


def names(value, what: str = "names") -> list[str] | None:
    """Names from None, a list/tuple (fire turns ``a,b`` into a tuple), a JSON list, or a comma-separated string."""
    if value is None:
        return None
    if isinstance(value, str):
        listed = _json_list(value, what)
        if listed is None:
            return comma_items(value)
        value = listed
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int)) for v in value):
        raise fail(what, "a comma list, a JSON list or a .json file holding a list of names", value)
    return [str(v) for v in value]


def json_object(value, what: str, owner: str | None = None) -> dict | None:
    """A mapping from None, a JSON object (text or a ``.json`` file holding one) or the mapping fire made of one."""
    expected = "a JSON object (e.g. '{\"use_anchors\": false}') or a .json file holding one"
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(".json") and not text.startswith("{"):
            value = read_json(Path(text), what)
        else:
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise fail(what, expected, text, owner) from None
        if not isinstance(value, Mapping):
            raise fail(what, expected, value, owner)
        return dict(value)
    if not isinstance(value, Mapping):
        raise fail(what, expected, value, owner)
    return {str(k): _JSON_WORDS.get(v, v) if isinstance(v, str) else v for k, v in value.items()}


def resolve_label_maps(label_maps) -> list[Path]:
    """Label-map files from a glob, a folder, a file, a comma list or a JSON list of those (inline or in a ``.json``
    file, whose relative paths are relative to its folder), or a list of those."""
    if isinstance(label_maps, (list, tuple)):
        return [p for item in label_maps for p in resolve_label_maps(str(item))]
    text = str(label_maps)
    listed = _json_list(text, "label map list")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(item, str) for item in listed):
            raise fail("label map list", "a JSON list of paths", listed)
        base = Path(text).parent if text.strip().endswith(".json") else Path()
        return resolve_label_maps([str(base / item) for item in listed])
    if "," in text and not Path(text).exists():
        return resolve_label_maps([item.strip() for item in text.split(",") if item.strip()])
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


def organ_spec(organs) -> dict[str, list[str]] | list[str] | None:
    """Organs for ``ShapeBank.build``: None, ``{organ: [class names]}`` (or a JSON file of it), or names."""
    if isinstance(organs, str) and organs.strip().endswith(".json"):
        organs = read_json(Path(organs.strip()), "organ file")
        if not isinstance(organs, (dict, list)):
            raise fail("organ file", "{organ: [class names]} or a list of names", organs)
    if isinstance(organs, Mapping):
        return {str(o): [parts] if isinstance(parts, str) else list(parts) for o, parts in organs.items()}
    return names(organs, "organs")
