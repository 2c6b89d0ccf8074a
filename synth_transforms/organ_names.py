"""Organ names: the default organ set, sides, left/right mirror pairs and relative anchors.

Names from any dataset match up to case, separators and the way the side is written (``kidney_L``,
``left kidney``, ``Kidney (left)``), so that a bank built from other label maps keeps its pairs and anchors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = [
    "DEFAULT_ORGANS",
    "DEFAULT_MIRROR_PAIRS",
    "DEFAULT_RELATIVE_ANCHORS",
    "organ_side",
    "find_mirror_pairs",
    "find_relative_anchors",
    "check_mirror_pairs",
    "check_relative_anchors",
]

_VERTEBRAE = tuple(f"vertebrae_{v}" for v in ["S1"] + [f"L{i}" for i in range(5, 0, -1)]) + tuple(
    f"vertebrae_{v}" for v in [f"T{i}" for i in range(12, 0, -1)] + [f"C{i}" for i in range(7, 0, -1)]
)

#: Default organ set: BTCV's 13 organs in BTCV's label order (class ids 1-13), then the large neighbours that
#: fill real abdominal and thoracic patches. Each organ maps to the TotalSegmentator v2 classes merged into it.
DEFAULT_ORGANS: dict[str, tuple[str, ...]] = {
    "spleen": ("spleen",),
    "kidney_right": ("kidney_right",),
    "kidney_left": ("kidney_left",),
    "gallbladder": ("gallbladder",),
    "esophagus": ("esophagus",),
    "liver": ("liver",),
    "stomach": ("stomach",),
    "aorta": ("aorta",),
    "inferior_vena_cava": ("inferior_vena_cava",),
    "portal_vein_and_splenic_vein": ("portal_vein_and_splenic_vein",),
    "pancreas": ("pancreas",),
    "adrenal_gland_right": ("adrenal_gland_right",),
    "adrenal_gland_left": ("adrenal_gland_left",),
    "duodenum": ("duodenum",),
    "small_bowel": ("small_bowel",),
    "colon": ("colon",),
    "urinary_bladder": ("urinary_bladder",),
    "heart": ("heart",),
    "lung_left": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
    "lung_right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "spine": _VERTEBRAE,
}

#: Left/right organ pairs of :data:`DEFAULT_ORGANS` whose mirrored shapes may stand in for each other (what
#: :func:`find_mirror_pairs` finds there).
DEFAULT_MIRROR_PAIRS: tuple[tuple[str, str], ...] = (
    ("kidney_left", "kidney_right"),
    ("adrenal_gland_left", "adrenal_gland_right"),
    ("lung_left", "lung_right"),
)

#: Child organ -> parent organ whose placed position the child follows. Organs of other names match these by
#: :func:`find_relative_anchors` ("right adrenal gland", "Kidney_R", "gall bladder", ...).
DEFAULT_RELATIVE_ANCHORS: dict[str, str] = {
    "adrenal_gland_right": "kidney_right",
    "adrenal_gland_left": "kidney_left",
    "gallbladder": "liver",
    "portal_vein_and_splenic_vein": "liver",
}

_SIDES = {"left": "left", "right": "right", "l": "left", "r": "right", "lt": "left", "rt": "right"}
_SEPARATORS = re.compile(r"[\s_\-.()\[\]]+")
#: Other names of the organs that :data:`DEFAULT_RELATIVE_ANCHORS` links (keys as :func:`_organ_key` writes them).
_SYNONYMS = {"adrenal": "adrenalgland", "suprarenalgland": "adrenalgland", "portalvein": "portalveinandsplenicvein"}


def organ_side(name: str) -> tuple[str | None, str]:
    """``(side, stem)`` of an organ name: side ``"left"``/``"right"`` (or None) and the name without it.

    A side is a separate word, ``left``/``right`` anywhere or ``l``/``r``/``lt``/``rt`` first or last; words are
    split at spaces, ``_``, ``-``, ``.`` and brackets, and the stem joins the other words in lower case without
    separators: ``"kidney_L"``, ``"left kidney"`` and ``"Kidney (left)"`` all give ``("left", "kidney")``.
    """
    words = [w for w in _SEPARATORS.split(name.lower()) if w]
    last = len(words) - 1
    sides = [i for i, w in enumerate(words) if w in ("left", "right") or (w in _SIDES and i in (0, last))]
    if len(words) < 2 or len(sides) != 1:
        return None, "".join(words)
    i = sides[0]
    return _SIDES[words[i]], "".join(words[:i] + words[i + 1 :])


def _organ_key(name: str) -> str:
    side, stem = organ_side(name)
    stem = _SYNONYMS.get(stem, stem)
    return f"{stem}_{side}" if side else stem


def find_mirror_pairs(organs: Sequence[str]) -> list[tuple[str, str]]:
    """Left/right pairs among ``organs`` by name (see :func:`organ_side`): ``[(left, right), ...]``.

    ``kidney_left``/``kidney_right``, ``kidney_L``/``kidney_R``, ``left kidney``/``right kidney`` pair up; a stem
    with more than one organ on a side is ambiguous and left unpaired.
    """
    by_stem: dict[str, dict[str, list[str]]] = {}
    for organ in organs:
        side, stem = organ_side(organ)
        if side:
            by_stem.setdefault(stem, {"left": [], "right": []})[side].append(organ)
    return [(s["left"][0], s["right"][0]) for s in by_stem.values() if len(s["left"]) == len(s["right"]) == 1]


def find_relative_anchors(organs: Sequence[str]) -> dict[str, str]:
    """:data:`DEFAULT_RELATIVE_ANCHORS` for the organs of these names: ``{child: parent}`` among ``organs``.

    Names match when they agree up to case, separators and the way the side is written (``"right adrenal gland"``
    is ``adrenal_gland_right``, ``"Kidney_R"`` is ``kidney_right``, ``"gall bladder"`` is ``gallbladder``).
    """
    by_key: dict[str, list[str]] = {}
    for organ in organs:
        by_key.setdefault(_organ_key(organ), []).append(organ)
    named = {key: names[0] for key, names in by_key.items() if len(names) == 1}
    out = {}
    for child, parent in DEFAULT_RELATIVE_ANCHORS.items():
        c, p = named.get(_organ_key(child)), named.get(_organ_key(parent))
        if c is not None and p is not None:
            out[c] = p
    return out


def check_mirror_pairs(pairs, organs: Sequence[str]) -> list[tuple[str, str]]:
    """``pairs`` (``"auto"``, None, ``{left: right}`` or ``[(left, right), ...]``) as a checked list of pairs."""
    if isinstance(pairs, str):
        if pairs != "auto":
            raise ValueError(
                f"mirror_pairs must be 'auto', None, {{left: right}} or [(left, right), ...], got {pairs!r}"
            )
        return find_mirror_pairs(organs)
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs or ())
    out, seen = [], set()
    for pair in items:
        if isinstance(pair, str) or len(pair) != 2 or not all(isinstance(o, str) for o in pair):
            raise ValueError(f"mirror_pairs: expected pairs of two organ names, got {pair!r}")
        left, right = pair
        unknown = [o for o in pair if o not in organs]
        if unknown:
            raise ValueError(f"mirror_pairs: {unknown} are not organs of this bank; it has: {', '.join(organs)}")
        if left == right or {left, right} & seen:
            raise ValueError(f"mirror_pairs: each organ may be in one pair with another organ, got {pair!r}")
        seen |= {left, right}
        out.append((left, right))
    return out


def check_relative_anchors(relative, organs: Sequence[str]) -> dict[str, str]:
    """``relative`` (``"auto"``, None or ``{child: parent}``) as a checked mapping without cycles."""
    if isinstance(relative, str):
        if relative != "auto":
            raise ValueError(f"relative_anchors must be 'auto', None or {{child: parent}}, got {relative!r}")
        return find_relative_anchors(organs)
    if relative is not None and not isinstance(relative, Mapping):
        raise ValueError(f"relative_anchors must be 'auto', None or {{child: parent}}, got {relative!r}")
    relative = dict(relative or {})
    for child, parent in relative.items():
        unknown = [o for o in (child, parent) if o not in organs]
        if unknown:
            raise KeyError(
                f"relative anchor {child} -> {parent}: {unknown} not in this bank; it has: {', '.join(organs)}"
            )
        seen = [child]
        while parent is not None:  # follow the chain up: a child must not end up its own ancestor
            if parent in seen:
                raise ValueError(f"relative anchors form a cycle: {' -> '.join(seen + [parent])}")
            seen.append(parent)
            parent = relative.get(parent)
    return relative
