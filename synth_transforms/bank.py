"""ShapeBank: label-only organ shapes of a few real subjects, cropped, measured and stored in one compact file.

A bank holds, per subject and organ, the binary mask cropped to its bounding box, its centroid (mm, in the
subject's RAS grid), its volume and where the field of view cut it (``truncated``, ``cut_faces``). It also stores,
per subject, how much of each organ's outer surface touches every other organ, from which the topology graph is
derived, and which organs form left/right pairs and which follow a parent organ (relative anchors).

Label maps from any source are cleaned the same way: stray islands far from an organ are dropped, maps coarser than
the bank spacing (thick slices) are smoothed instead of upsampled into staircases, and what the build did is
logged and kept in ``source["build_report"]`` (see :meth:`ShapeBank.info`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import ndimage

from ._args import check_fraction
from .io import atomic_path, read_class_map, read_label_map

__all__ = [
    "OrganShape",
    "ShapeBank",
    "DEFAULT_ORGANS",
    "DEFAULT_MIRROR_PAIRS",
    "DEFAULT_RELATIVE_ANCHORS",
    "DEFAULT_BANK_PATH",
    "find_mirror_pairs",
    "find_relative_anchors",
    "load_bank",
]

logger = logging.getLogger(__name__)

#: Format 1 gained optional keys (``cut_faces`` per shape, ``relative_anchors`` and ``build_report`` in the
#: source) without a version change: files without them still load, and older readers ignore them.
BANK_FORMAT_VERSION = 1
#: An organ within this many voxels of the grid edge counts as cut by the field of view (resampling can add a
#: blank slice at the edge, so touching the very last voxel is too strict a test).
_EDGE_MARGIN = 2
#: Names of the crop faces, ``FACE_NAMES[axis][side]`` (side 0: low index), in the bank's RAS voxel order.
FACE_NAMES = (("L", "R"), ("P", "A"), ("I", "S"))
#: A connected component of a class smaller than this fraction of the class's largest component is a stray island.
DEFAULT_ISLAND_FRACTION = 0.02
#: A label map whose voxels are this many times coarser than the bank spacing along an axis (thick slices) is
#: smoothed along the way: nearest-neighbour upsampling would leave a staircase of that step.
_COARSE_FACTOR = 2.0
#: A subject with more than this fraction of its organs cut by the field of view is reported.
_MOSTLY_CUT = 0.5
DEFAULT_BANK_PATH = Path(__file__).parent / "data" / "default_bank.npz"

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


# ---------------------------------------------------------------------- organ names: sides, pairs, anchors
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


@dataclass(frozen=True)
class OrganShape:
    """One organ of one subject.

    Attributes:
        organ: organ name.
        subject: subject id.
        mask: boolean mask ``(X, Y, Z)`` cropped to the organ's bounding box, RAS voxel order.
        offset_vox: index of the crop's first voxel in the subject grid.
        centroid_mm: centroid in the subject grid, in mm from the grid's first voxel.
        volume_ml: organ volume in millilitres.
        truncated: the organ touches the edge of the subject's field of view (its shape is incomplete).
        mirrored: the shape is the left-right mirror of the partner organ (it carries no position information).
        cut_faces: ``(3, 2)`` bool, ``cut_faces[axis, side]``: the field of view cut the crop's face on that side
            (side 0: low index; names in :data:`FACE_NAMES`); None where unknown (banks saved before it was
            recorded): :attr:`cut_face_mask` then falls back on ``truncated``.
    """

    organ: str
    subject: str
    mask: np.ndarray
    offset_vox: tuple[int, int, int]
    centroid_mm: np.ndarray
    volume_ml: float
    truncated: bool
    mirrored: bool = False
    cut_faces: np.ndarray | None = None

    @property
    def centroid_vox_in_crop(self) -> np.ndarray:
        """Centroid of the mask in crop voxel coordinates."""
        return np.argwhere(self.mask).mean(axis=0)

    @property
    def cut_face_mask(self) -> np.ndarray:
        """``(3, 2)`` bool faces cut by the field of view; where unknown, every face is cut iff ``truncated``."""
        if self.cut_faces is not None:
            return self.cut_faces
        return np.full((3, 2), bool(self.truncated))

    @property
    def cut_face_names(self) -> str:
        """The cut faces as letters (``"IS"``: inferior and superior), ``"?"`` when unknown for a truncated shape."""
        if self.cut_faces is None and self.truncated:
            return "?"
        return "".join(FACE_NAMES[a][s] for a, s in np.argwhere(self.cut_face_mask))


@dataclass
class ShapeBank:
    """Organ shapes of a few subjects at one isotropic spacing.

    Attributes:
        organs: organ names; the class id of ``organs[i]`` is ``i + 1`` (0 is background).
        spacing: voxel size in mm (isotropic).
        subjects: subject ids.
        shapes: organ -> list of shapes (one per subject that has it, plus mirrored stand-ins).
        contact: subject -> ``(n, n)`` array; ``contact[a, b]`` is the fraction of organ ``a``'s outer surface
            voxels that belong to organ ``b`` (NaN where ``a`` is absent).
        source: provenance: files, organ merge rules, ``mirror_pairs``, ``relative_anchors`` and the
            ``build_report`` (source voxel sizes, stray islands dropped, smoothed maps, subjects mostly cut).
    """

    organs: list[str]
    spacing: float
    subjects: list[str]
    shapes: dict[str, list[OrganShape]]
    contact: dict[str, np.ndarray]
    source: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ queries
    @property
    def num_classes(self) -> int:
        """Number of output classes including background (``len(organs) + 1``)."""
        return len(self.organs) + 1

    def class_id(self, organ: str) -> int:
        """Class id of ``organ`` (1-based). Raises ``KeyError`` naming the organs the bank has."""
        try:
            return self.organs.index(organ) + 1
        except ValueError:
            raise KeyError(f"organ {organ!r} is not in this shape bank; it has: {', '.join(self.organs)}") from None

    def check_organs(self, organs: Sequence[str]) -> list[str]:
        """Return ``organs`` as a list after checking each one is in the bank (``KeyError`` otherwise)."""
        organs = list(organs)
        if not organs:
            raise ValueError("the organ list is empty: name at least one organ of the shape bank")
        for organ in organs:
            self.class_id(organ)
        return organs

    def measured_shapes(self, organ: str) -> list[OrganShape]:
        """Real (not mirrored) shapes of ``organ``, used for positions and statistics."""
        return [s for s in self.shapes[organ] if not s.mirrored]

    def usable_shapes(self, organ: str) -> list[OrganShape]:
        """Shapes drawn for synthesis: complete ones when any exist, else the largest truncated ones.

        Organs that every field of view cuts (spine, aorta) have no complete shape; for them the shapes of at
        least half the largest volume are used.
        """
        shapes = self.shapes[organ]
        complete = [s for s in shapes if not s.truncated]
        if complete:
            return complete
        largest = max(s.volume_ml for s in shapes)
        return [s for s in shapes if s.volume_ml >= 0.5 * largest]

    @cached_property
    def median_volume_ml(self) -> dict[str, float]:
        """Median volume of each organ over its usable shapes."""
        return {o: float(np.median([s.volume_ml for s in self.usable_shapes(o)])) for o in self.organs}

    @property
    def mirror_pairs(self) -> list[tuple[str, str]]:
        """Left/right organ pairs whose mirrored shapes stand in for each other."""
        return [tuple(p) for p in self.source.get("mirror_pairs", ())]

    @property
    def relative_anchors(self) -> dict[str, str]:
        """``{child: parent}`` relative anchors recorded at build time, else found by name (older bank files)."""
        if "relative_anchors" in self.source:
            return dict(self.source["relative_anchors"])
        return find_relative_anchors(self.organs)

    def info(self) -> str:
        """A human-readable summary: organs, shapes per organ, volumes, truncation, and what the build did."""
        lines = [
            f"ShapeBank: {len(self.organs)} organs, {len(self.subjects)} subjects ({', '.join(self.subjects)}), "
            f"spacing {self.spacing:g} mm, {self.num_classes} classes with background"
        ]
        for i, organ in enumerate(self.organs, start=1):
            shapes = self.shapes[organ]
            real = [s for s in shapes if not s.mirrored]
            lines.append(
                f"  {i:2d} {organ:30s} shapes {len(real)} real + {len(shapes) - len(real)} mirrored, "
                f"{sum(s.truncated for s in real)} truncated, median {self.median_volume_ml[organ]:8.1f} ml"
            )
        return "\n".join(lines + _report_lines(self.mirror_pairs, self.relative_anchors, self.source))

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        label_maps: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
        class_map: Mapping | str | os.PathLike,
        organs: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
        spacing: float = 1.5,
        mirror_pairs: Mapping[str, str] | Sequence[tuple[str, str]] | str | None = "auto",
        min_voxels: int = 20,
        reader: str | None = None,
        contact_margin: int = 1,
        relative_anchors: Mapping[str, str] | str | None = "auto",
        island_fraction: float = DEFAULT_ISLAND_FRACTION,
    ) -> ShapeBank:
        """Build a bank from label maps and a class map.

        Each label map is read in RAS order, cleaned of stray islands, mapped to organs and resampled to
        ``spacing`` (nearest neighbour; maps at least twice as coarse as ``spacing`` along an axis, such as thick
        slices, are smoothed with a Gaussian of the organ masks instead of left as staircases, with a warning).
        The build logs what it dropped, smoothed and paired; :meth:`info` repeats it from
        ``source["build_report"]``.

        Args:
            label_maps: ``{subject: path}``, or a list of paths (subject ids then come from the parent folder
                name, or the file name when folders repeat).
            class_map: ``{id: name}`` or a JSON file of it, naming the ids of the label maps.
            organs: ``{organ: [class names merged into it]}``, or a list of class names kept as they are.
                Default: :data:`DEFAULT_ORGANS` (TotalSegmentator v2 names).
            spacing: isotropic voxel size in mm of the bank.
            mirror_pairs: left/right organ pairs whose mirrored shapes are added to the partner organ:
                ``{left: right}`` or ``[(left, right), ...]`` of organ names; ``"auto"`` (default) pairs organs
                by name (``X_left``/``X_right``, ``X_L``/``X_R``, ``left X``/``right X``: see
                :func:`find_mirror_pairs`); ``None`` or ``()`` disables mirroring.
            min_voxels: masks smaller than this (after dropping islands) are treated as absent.
            reader: MONAI reader name to force (e.g. ``"ITKReader"``); default picks by file type.
            contact_margin: thickness in voxels of the outer shell over which contact is measured: 1 counts only
                touching organs; 2 also counts organs separated by one unlabelled voxel (a thin fat plane).
            relative_anchors: ``{child: parent}``: organs placed relative to where their parent was placed,
                recorded in the bank for :meth:`AnchorModel.from_bank <synth_transforms.anchors.AnchorModel.
                from_bank>`; ``"auto"`` (default) matches :data:`DEFAULT_RELATIVE_ANCHORS` by name
                (:func:`find_relative_anchors`); ``None`` or ``{}`` for absolute anchors only.
            island_fraction: a connected component (26-connected) of a class smaller than this fraction of the
                class's largest component is a stray island and dropped; classes merged into one organ (lung
                lobes, vertebrae) are cleaned one by one, so an organ may keep several parts. 0 keeps everything.

        Raises:
            FileNotFoundError, ValueError: a label map or the class map is missing or unreadable; the class map
                lacks classes the organs need (every such organ is named, with the class map's names); a label
                map holds ids the class map does not name; an organ is found in no subject; the organ list is
                empty; a mirror pair or relative anchor names an organ outside ``organs``.
        """
        if not isinstance(label_maps, Mapping):
            label_maps = _subject_ids(list(label_maps))
        if not label_maps:
            raise ValueError("no label maps given: pass {subject: path} or a list of label-map files")
        island_fraction = check_fraction(island_fraction, "island_fraction", "ShapeBank.build")
        ids = read_class_map(class_map)
        default_organs = organs is None
        organs = DEFAULT_ORGANS if organs is None else organs
        if not isinstance(organs, Mapping):
            organs = {name: (name,) for name in organs}
        if not organs:
            raise ValueError("the organ set is empty: name at least one organ")
        organ_ids = _organ_class_ids(organs, ids, class_map, default_organs)
        organ_names = list(organs)
        pairs = check_mirror_pairs(mirror_pairs, organ_names)
        relative = check_relative_anchors(relative_anchors, organ_names)
        lut = np.zeros(max(ids) + 1, dtype=np.int16)
        for k, organ in enumerate(organ_names, start=1):
            lut[organ_ids[organ]] = k

        shapes: dict[str, list[OrganShape]] = {o: [] for o in organ_names}
        contact: dict[str, np.ndarray] = {}
        report: dict = {"voxel_mm": {}, "islands": {}, "smoothed": {}, "mostly_cut": {}}
        for subject, path in label_maps.items():
            subject = str(subject)
            organ_map = _read_organ_map(
                subject, path, ids, lut, organ_names, organ_ids, spacing, reader, island_fraction, report
            )
            found = _measure_subject(subject, organ_map, organ_names, spacing, min_voxels)
            for organ, shape in found.items():
                shapes[organ].append(shape)
            contact[subject] = _contact_fractions(organ_map, found, organ_names, contact_margin)
            _check_field_of_view(subject, path, found, len(organ_names), report)
            logger.info("bank: subject %s: %d of %d organs", subject, len(found), len(organ_names))
        absent = [o for o in organ_names if not shapes[o]]
        if absent:
            raise ValueError(
                f"organs {absent} are not present (>= {min_voxels} voxels) in any label map: check the organ set "
                "(organs=..., CLI --organs) against the label maps"
            )
        for left, right in pairs:
            mirrored_left = [_mirror(s, right) for s in shapes[left] if not s.mirrored]
            mirrored_right = [_mirror(s, left) for s in shapes[right] if not s.mirrored]
            shapes[right].extend(mirrored_left)
            shapes[left].extend(mirrored_right)
        source = {
            "label_maps": {str(k): str(v) for k, v in label_maps.items()},
            "organs": {o: list(p) for o, p in organs.items()},
            "mirror_pairs": [list(p) for p in pairs],
            "relative_anchors": relative,
            "contact_margin": contact_margin,
            "island_fraction": island_fraction,
            "build_report": report,
        }
        for line in _report_lines(pairs, relative, source):
            logger.info("bank:%s", line)
        _warn_islands(report["islands"])
        return cls(organ_names, float(spacing), [str(s) for s in label_maps], shapes, contact, source)

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike) -> Path:
        """Save the bank as one compressed ``.npz`` (bit-packed masks + JSON metadata), atomically."""
        path = Path(path)
        entries, bits, offset = [], [], 0
        for organ in self.organs:
            for s in self.shapes[organ]:
                packed = np.packbits(s.mask.ravel())
                entries.append(
                    {
                        "organ": organ,
                        "subject": s.subject,
                        "shape": list(s.mask.shape),
                        "bit_offset": offset,
                        "offset_vox": list(s.offset_vox),
                        "centroid_mm": [float(c) for c in s.centroid_mm],
                        "volume_ml": s.volume_ml,
                        "truncated": s.truncated,
                        "mirrored": s.mirrored,
                        "cut_faces": None if s.cut_faces is None else s.cut_faces.astype(bool).tolist(),
                    }
                )
                bits.append(packed)
                offset += packed.size
        meta = {
            "format_version": BANK_FORMAT_VERSION,
            "organs": self.organs,
            "spacing": self.spacing,
            "subjects": self.subjects,
            "shapes": entries,
            "source": self.source,
        }
        contact = np.stack([self.contact[s] for s in self.subjects]).astype(np.float32)
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez_compressed(
                tmp,
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                bits=np.concatenate(bits),
                contact=contact,
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> ShapeBank:
        """Load a bank saved by :meth:`save`; ``None`` loads the default bank shipped with the package."""
        path = Path(path) if path is not None else DEFAULT_BANK_PATH
        if not path.is_file():
            hint = " (build it with scripts/build_default_bank.py)" if path == DEFAULT_BANK_PATH else ""
            raise FileNotFoundError(f"shape bank {path}: file not found{hint}")
        try:
            with np.load(path) as f:
                meta = json.loads(f["meta"].tobytes().decode())
                bits, contact = f["bits"], f["contact"]
        except Exception as e:
            raise ValueError(f"shape bank {path}: not a readable bank file ({type(e).__name__}: {e})") from e
        if meta.get("format_version") != BANK_FORMAT_VERSION:
            raise ValueError(
                f"shape bank {path}: format version {meta.get('format_version')}, expected {BANK_FORMAT_VERSION}"
            )
        missing = [k for k in ("organs", "spacing", "subjects", "shapes") if k not in meta]
        if missing:
            raise ValueError(f"shape bank {path}: metadata lacks {missing}")
        shapes: dict[str, list[OrganShape]] = {o: [] for o in meta["organs"]}
        for e in meta["shapes"]:
            n = int(np.prod(e["shape"]))
            start = e["bit_offset"]
            mask = np.unpackbits(bits[start : start + (n + 7) // 8], count=n).astype(bool).reshape(e["shape"])
            shapes[e["organ"]].append(
                OrganShape(
                    e["organ"],
                    e["subject"],
                    mask,
                    tuple(e["offset_vox"]),
                    np.asarray(e["centroid_mm"]),
                    e["volume_ml"],
                    e["truncated"],
                    e["mirrored"],
                    _read_cut_faces(e.get("cut_faces"), path, e),
                )
            )
        contact_map = {s: contact[i] for i, s in enumerate(meta["subjects"])}
        return cls(meta["organs"], meta["spacing"], meta["subjects"], shapes, contact_map, meta.get("source", {}))


def load_bank(path: str | os.PathLike | None = None) -> ShapeBank:
    """Load a shape bank; ``None`` gives the default bank (cached, so repeated calls are free)."""
    if path is None:
        return _default_bank()
    return ShapeBank.load(path)


_DEFAULT_BANK: ShapeBank | None = None


def _default_bank() -> ShapeBank:
    global _DEFAULT_BANK
    if _DEFAULT_BANK is None:
        _DEFAULT_BANK = ShapeBank.load(DEFAULT_BANK_PATH)
    return _DEFAULT_BANK


# ---------------------------------------------------------------------- build helpers
def _subject_ids(paths: list) -> dict[str, Path]:
    paths = [Path(p) for p in paths]
    parents = [p.parent.name for p in paths]
    if len(set(parents)) == len(paths) and all(parents):
        return dict(zip(parents, paths, strict=True))
    names = [p.name.split(".")[0] for p in paths]
    if len(set(names)) != len(names):
        raise ValueError("cannot derive unique subject ids from the label-map paths: pass {subject: path}")
    return dict(zip(names, paths, strict=True))


def _read_cut_faces(value, path: Path, entry: dict) -> np.ndarray | None:
    """``cut_faces`` of a saved shape: None (not recorded: older files) or a ``(3, 2)`` bool array."""
    if value is None:
        return None
    faces = np.asarray(value)
    if faces.shape != (3, 2) or faces.dtype != bool:
        raise ValueError(
            f"shape bank {path}: cut_faces of {entry['organ']} ({entry['subject']}) must be 3 x 2 booleans, "
            f"got {value!r}"
        )
    return faces


def _organ_class_ids(
    organs: Mapping[str, Sequence[str]], ids: dict[int, str], class_map, default_organs: bool
) -> dict[str, list[int]]:
    """Class ids merged into each organ; one error names every organ whose classes the class map lacks."""
    name_to_id = {name: i for i, name in ids.items()}
    missing = {o: [p for p in parts if p not in name_to_id] for o, parts in organs.items()}
    missing = {o: m for o, m in missing.items() if m}
    if missing:
        which = "; ".join(f"organ {o!r}: the class map has no class named {m}" for o, m in missing.items())
        where = f" ({class_map})" if isinstance(class_map, str | os.PathLike) else ""
        hint = " (the default organ set uses TotalSegmentator v2 names)" if default_organs else ""
        raise ValueError(
            f"{which}. The class map{where} names: {', '.join(ids[i] for i in sorted(ids))}. Map each organ to the "
            f"class names merged into it with organs={{organ: [class names]}} (CLI: --organs, a JSON file of that "
            f"mapping or a list of class names){hint}"
        )
    return {o: [name_to_id[p] for p in parts] for o, parts in organs.items()}


def _read_organ_map(
    subject: str,
    path,
    ids: dict[int, str],
    lut: np.ndarray,
    organs: list[str],
    organ_ids: dict[str, list[int]],
    spacing: float,
    reader: str | None,
    island_fraction: float,
    report: dict,
) -> np.ndarray:
    """One subject's organ-index map at the bank spacing: islands dropped, resampled, coarse maps smoothed."""
    labels, voxel = read_label_map(path, spacing=None, reader=reader)
    voxel = np.asarray(voxel, dtype=float)
    unknown = sorted(set(np.unique(labels).tolist()) - set(ids) - {0})
    if unknown:
        raise ValueError(f"label map {path}: ids {unknown[:20]} are not in the class map")
    report["voxel_mm"][subject] = [round(float(v), 4) for v in voxel]
    if island_fraction > 0:
        islands = _drop_islands(labels, organ_ids, island_fraction, voxel)
        if islands:
            report["islands"][subject] = islands
            logger.info(
                "bank: subject %s: dropped stray islands from %s",
                subject,
                ", ".join(f"{o} ({v['islands']}, {v['voxels']} voxels)" for o, v in islands.items()),
            )
    organ_map = lut[labels]
    del labels
    factor = voxel / spacing
    if not np.allclose(factor, 1.0, rtol=0, atol=1e-3):
        organ_map = _resample_nearest(organ_map, voxel, spacing)
    coarse = factor >= _COARSE_FACTOR * (1 - 1e-3)
    if coarse.any():
        sigma = np.maximum(np.where(coarse, factor / 2, 0.0), 1.0)  # a step of f voxels needs sigma ~ f / 2
        organ_map = _smooth_masks(organ_map, len(organs), sigma)
        axes = "".join("xyz"[a] for a in np.flatnonzero(coarse))
        report["smoothed"][subject] = {"axes": axes, "sigma_vox": [round(float(s), 3) for s in sigma]}
        thick = voxel.max() / voxel.min() >= _COARSE_FACTOR
        kind = f"thick slices ({voxel.max() / voxel.min():.1f}x the in-plane spacing)" if thick else "coarse voxels"
        logger.warning(
            "bank: label map %s: voxels %s mm are %s, up to %.1fx coarser than the bank spacing %g mm along %s: "
            "organ masks are smoothed (Gaussian, sigma %s voxels, threshold 0.5) instead of upsampled into "
            "staircases; detail finer than the source voxels is interpolated, not measured",
            path,
            " x ".join(f"{v:g}" for v in voxel.round(3)),
            kind,
            factor.max(),
            spacing,
            axes,
            " x ".join(f"{v:g}" for v in sigma.round(2)),
        )
    return organ_map


def _drop_islands(
    labels: np.ndarray, organ_ids: dict[str, list[int]], fraction: float, voxel: np.ndarray
) -> dict[str, dict]:
    """Set stray islands of every organ class to 0 in ``labels`` (in place); per organ, what was dropped.

    A class's 26-connected components smaller than ``fraction`` of its largest one are islands. Returns
    ``{organ: {"islands", "voxels", "ml", "box_mm_before", "box_mm_after"}}`` for organs that lost any, the boxes
    being the organ's bounding-box extent (mm, source grid) with and without them.
    """
    present = [i for ids in organ_ids.values() for i in ids if i > 0]
    boxes = ndimage.find_objects(labels, max_label=max(present)) if present else []
    out = {}
    for organ, class_ids in organ_ids.items():
        before, after, islands, voxels = [], [], 0, 0
        for cid in class_ids:
            box = boxes[cid - 1] if 0 < cid <= len(boxes) else None
            if box is None:
                continue
            view = labels[box]
            mask = view == cid
            comp, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
            before.append(box)
            if n > 1:
                sizes = np.bincount(comp.ravel())[1:]
                keep = np.concatenate([[False], sizes >= fraction * sizes.max()])
                dropped = mask & ~keep[comp]
                if dropped.any():
                    view[dropped] = 0
                    islands += int((~keep[1:]).sum())
                    voxels += int(dropped.sum())
                    inner = ndimage.find_objects(keep[comp].astype(np.int8))[0]
                    box = tuple(slice(b.start + i.start, b.start + i.stop) for b, i in zip(box, inner, strict=True))
            after.append(box)
        if islands:
            out[organ] = {
                "islands": islands,
                "voxels": voxels,
                "ml": round(voxels * float(np.prod(voxel)) / 1000.0, 4),
                "box_mm_before": _extent_mm(before, voxel),
                "box_mm_after": _extent_mm(after, voxel),
            }
    return out


def _extent_mm(boxes: list[tuple[slice, ...]], voxel: np.ndarray) -> list[float]:
    lo = np.min([[b.start for b in box] for box in boxes], axis=0)
    hi = np.max([[b.stop for b in box] for box in boxes], axis=0)
    return [round(float(v), 1) for v in (hi - lo) * voxel]


def _resample_nearest(organ_map: np.ndarray, voxel: np.ndarray, spacing: float) -> np.ndarray:
    """Nearest-neighbour resampling to isotropic ``spacing`` with MONAI's ``Spacing`` (the grid of the map's voxels)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    affine = torch.diag(torch.tensor([*voxel, 1.0], dtype=torch.float64))
    img = MetaTensor(torch.from_numpy(organ_map[None].astype(np.float32)), affine=affine)
    out = Spacing(pixdim=(spacing,) * 3, mode="nearest", padding_mode="zeros")(img)
    return np.rint(np.asarray(out.array[0])).astype(organ_map.dtype)


def _smooth_masks(organ_map: np.ndarray, n_organs: int, sigma: np.ndarray) -> np.ndarray:
    """Each organ's mask blurred with a Gaussian (``sigma`` voxels per axis) and kept where above 0.5.

    Blurring the nearest-neighbour staircase of upsampled thick slices and thresholding at one half puts the
    surface through the middle of each step. Where two organs' blurred masks overlap the larger value wins.
    """
    out = np.zeros_like(organ_map)
    best = np.zeros(organ_map.shape, dtype=np.float32)
    pad = [int(np.ceil(3 * s)) + 1 for s in sigma]
    for k, box in enumerate(ndimage.find_objects(organ_map, max_label=n_organs), start=1):
        if box is None:
            continue
        window = tuple(
            slice(max(b.start - p, 0), min(b.stop + p, d)) for b, p, d in zip(box, pad, organ_map.shape, strict=True)
        )
        blurred = ndimage.gaussian_filter((organ_map[window] == k).astype(np.float32), sigma, mode="nearest")
        wins = (blurred >= 0.5) & (blurred > best[window])
        best[window][wins] = blurred[wins]
        out[window][wins] = k
    return out


def _check_field_of_view(subject: str, path, found: dict[str, OrganShape], n_organs: int, report: dict) -> None:
    """Warn about a subject whose field of view shows none or mostly cut organs (its shapes are incomplete)."""
    cut = sorted(o for o, s in found.items() if s.truncated)
    if not found:
        logger.warning("bank: subject %s (%s): none of the %d organs is present", subject, path, n_organs)
    elif len(cut) > _MOSTLY_CUT * len(found):
        report["mostly_cut"][subject] = {o: found[o].cut_face_names for o in cut}
        logger.warning(
            "bank: subject %s (%s): the field of view cuts %d of its %d organs (%s; cut faces in brackets): "
            "their shapes are incomplete, and only its whole organs place the subject in the anchor frame",
            subject,
            path,
            len(cut),
            len(found),
            ", ".join(f"{o} [{found[o].cut_face_names}]" for o in cut),
        )


def _report_lines(pairs, relative: Mapping[str, str], source: dict) -> list[str]:
    """What a build did, one topic a line (for :meth:`ShapeBank.info` and the build log)."""
    lines = [
        "  mirror pairs: " + (", ".join(f"{a} <-> {b}" for a, b in pairs) or "none"),
        "  relative anchors: " + (", ".join(f"{c} -> {p}" for c, p in relative.items()) or "none"),
    ]
    report = source.get("build_report") or {}
    islands = report.get("islands") or {}
    if islands:
        n = sum(v["islands"] for organs in islands.values() for v in organs.values())
        ml = sum(v["ml"] for organs in islands.values() for v in organs.values())
        lines.append(
            f"  stray islands dropped (components < {source.get('island_fraction')} of their class's largest): "
            f"{n} ({ml:.2f} ml) in {sum(len(o) for o in islands.values())} organ masks of {len(islands)} subjects"
        )
        for subject, organs in islands.items():
            for organ, v in organs.items():
                if v["box_mm_before"] != v["box_mm_after"]:
                    box = f"{_box_text(v['box_mm_before'])} -> {_box_text(v['box_mm_after'])}"
                    lines.append(
                        f"    {subject} {organ}: {_count(v['islands'], 'island')} ({v['voxels']} voxels), box {box} mm"
                    )
    for subject, v in (report.get("smoothed") or {}).items():
        voxel = " x ".join(f"{x:g}" for x in report["voxel_mm"][subject])
        lines.append(f"  smoothed coarse label map: {subject} ({voxel} mm voxels, along {v['axes']})")
    for subject, cut in (report.get("mostly_cut") or {}).items():
        lines.append(
            f"  mostly cut by the field of view: {subject} (" + ", ".join(f"{o} [{f}]" for o, f in cut.items()) + ")"
        )
    return lines


def _warn_islands(islands: dict[str, dict[str, dict]]) -> None:
    """One warning for the stray islands a build dropped, naming the crop they had stretched most."""
    rows = [(s, o, v) for s, organs in islands.items() for o, v in organs.items()]
    if not rows:
        return

    def stretch(row) -> float:
        return max(b - a for a, b in zip(row[2]["box_mm_after"], row[2]["box_mm_before"], strict=True))

    subject, organ, most = max(rows, key=stretch)
    change = (
        f"the largest change: {organ} of subject {subject}, box {_box_text(most['box_mm_before'])} -> "
        f"{_box_text(most['box_mm_after'])} mm"
        if stretch((subject, organ, most)) > 0
        else "no organ's box changed"
    )
    logger.warning(
        "bank: dropped %s (%d voxels) from %d organ masks; %s (ShapeBank.info() lists them)",
        _count(sum(r[2]["islands"] for r in rows), "stray island"),
        sum(r[2]["voxels"] for r in rows),
        len(rows),
        change,
    )


def _box_text(extent_mm) -> str:
    return "x".join(f"{e:g}" for e in extent_mm)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _measure_subject(
    subject: str, organ_map: np.ndarray, organs: list[str], spacing: float, min_voxels: int
) -> dict[str, OrganShape]:
    """Crop and measure every organ present in one subject's organ-index map."""
    found = {}
    objects = ndimage.find_objects(organ_map, max_label=len(organs))
    for k, box in enumerate(objects, start=1):
        if box is None:
            continue
        mask = organ_map[box] == k
        n = int(mask.sum())
        if n < min_voxels:
            continue
        offset = tuple(int(b.start) for b in box)
        cut = np.array(
            [[b.start < _EDGE_MARGIN, b.stop > dim - _EDGE_MARGIN] for b, dim in zip(box, organ_map.shape, strict=True)]
        )
        centroid = (np.argwhere(mask).mean(axis=0) + offset) * spacing
        found[organs[k - 1]] = OrganShape(
            organs[k - 1], subject, mask, offset, centroid, n * spacing**3 / 1000.0, bool(cut.any()), False, cut
        )
    return found


def _contact_fractions(
    organ_map: np.ndarray, found: dict[str, OrganShape], organs: list[str], margin: int = 1
) -> np.ndarray:
    """``out[a, b]``: fraction of organ a's outer shell, ``margin`` voxels thick (6-connected), lying in organ b."""
    n = len(organs)
    out = np.full((n, n), np.nan, dtype=np.float32)
    for organ, s in found.items():
        a = organs.index(organ)
        lo = [max(o - margin, 0) for o in s.offset_vox]
        hi = [min(o + m + margin, d) for o, m, d in zip(s.offset_vox, s.mask.shape, organ_map.shape, strict=True)]
        window = organ_map[tuple(slice(l_, h) for l_, h in zip(lo, hi, strict=True))]
        inside = window == a + 1
        shell = ndimage.binary_dilation(inside, iterations=margin) & ~inside
        neighbours = window[shell]
        counts = np.bincount(neighbours, minlength=n + 1)[1:]
        out[a] = counts / max(len(neighbours), 1)
    return out


def _mirror(shape: OrganShape, as_organ: str) -> OrganShape:
    """Left-right mirror of a shape, standing in for its partner organ (its left and right cut faces swap)."""
    faces = None
    if shape.cut_faces is not None:
        faces = shape.cut_faces.copy()
        faces[0] = faces[0, ::-1]
    return OrganShape(
        as_organ,
        shape.subject,
        shape.mask[::-1].copy(),
        shape.offset_vox,
        shape.centroid_mm.copy(),
        shape.volume_ml,
        shape.truncated,
        True,
        faces,
    )
