"""ShapeBank: label-only organ shapes of a few real subjects, cropped, measured and stored in one compact file.

A bank holds, per subject and organ, the binary mask cropped to its bounding box, its centroid (mm, in the
subject's RAS grid), its volume and whether the field of view cut it (``truncated``). It also stores, per subject,
how much of each organ's outer surface touches every other organ, from which the topology graph is derived.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import ndimage

from .io import atomic_path, read_class_map, read_label_map

__all__ = [
    "OrganShape",
    "ShapeBank",
    "DEFAULT_ORGANS",
    "DEFAULT_MIRROR_PAIRS",
    "DEFAULT_BANK_PATH",
    "load_bank",
]

logger = logging.getLogger(__name__)

BANK_FORMAT_VERSION = 1
#: An organ within this many voxels of the grid edge counts as cut by the field of view (resampling can add a
#: blank slice at the edge, so touching the very last voxel is too strict a test).
_EDGE_MARGIN = 2
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

#: Left/right organ pairs whose mirrored shapes may stand in for each other.
DEFAULT_MIRROR_PAIRS: tuple[tuple[str, str], ...] = (
    ("kidney_left", "kidney_right"),
    ("adrenal_gland_left", "adrenal_gland_right"),
    ("lung_left", "lung_right"),
)


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
    """

    organ: str
    subject: str
    mask: np.ndarray
    offset_vox: tuple[int, int, int]
    centroid_mm: np.ndarray
    volume_ml: float
    truncated: bool
    mirrored: bool = False

    @property
    def centroid_vox_in_crop(self) -> np.ndarray:
        """Centroid of the mask in crop voxel coordinates."""
        return np.argwhere(self.mask).mean(axis=0)


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
        source: free-form provenance (files, class map, organ merge rules).
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

    def info(self) -> str:
        """A human-readable summary: organs, shapes per organ, volumes, truncation."""
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
        return "\n".join(lines)

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        label_maps: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
        class_map: Mapping | str | os.PathLike,
        organs: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
        spacing: float = 1.5,
        mirror_pairs: Sequence[tuple[str, str]] | None = DEFAULT_MIRROR_PAIRS,
        min_voxels: int = 20,
        reader: str | None = None,
        contact_margin: int = 1,
    ) -> ShapeBank:
        """Build a bank from label maps and a class map.

        Args:
            label_maps: ``{subject: path}``, or a list of paths (subject ids then come from the parent folder
                name, or the file name when folders repeat).
            class_map: ``{id: name}`` or a JSON file of it, naming the ids of the label maps.
            organs: ``{organ: [class names merged into it]}``, or a list of class names kept as they are.
                Default: :data:`DEFAULT_ORGANS` (TotalSegmentator v2 names).
            spacing: isotropic voxel size in mm; label maps are reoriented to RAS and resampled (nearest).
            mirror_pairs: left/right pairs whose mirrored shapes are added to the partner organ. ``None`` or
                ``()`` to disable. Pairs with an organ outside ``organs`` are ignored.
            min_voxels: masks smaller than this are treated as absent (stray voxels).
            reader: MONAI reader name to force (e.g. ``"ITKReader"``); default picks by file type.
            contact_margin: thickness in voxels of the outer shell over which contact is measured: 1 counts only
                touching organs; 2 also counts organs separated by one unlabelled voxel (a thin fat plane).

        Raises:
            FileNotFoundError, ValueError: a label map or the class map is missing or unreadable; the class map
                lacks a class an organ needs; a label map holds ids the class map does not name; an organ is
                found in no subject; the organ list is empty.
        """
        if not isinstance(label_maps, Mapping):
            label_maps = _subject_ids(list(label_maps))
        if not label_maps:
            raise ValueError("no label maps given: pass {subject: path} or a list of label-map files")
        ids = read_class_map(class_map)
        name_to_id = {name: i for i, name in ids.items()}
        if organs is None:
            organs = DEFAULT_ORGANS
        if not isinstance(organs, Mapping):
            organs = {name: (name,) for name in organs}
        if not organs:
            raise ValueError("the organ set is empty: name at least one organ")
        organ_ids: dict[str, list[int]] = {}
        for organ, parts in organs.items():
            missing = [p for p in parts if p not in name_to_id]
            if missing:
                raise ValueError(f"organ {organ!r}: the class map has no class named {missing}")
            organ_ids[organ] = [name_to_id[p] for p in parts]
        organ_names = list(organs)
        lut = np.zeros(max(ids) + 1, dtype=np.int16)
        for k, organ in enumerate(organ_names, start=1):
            lut[organ_ids[organ]] = k

        shapes: dict[str, list[OrganShape]] = {o: [] for o in organ_names}
        contact: dict[str, np.ndarray] = {}
        for subject, path in label_maps.items():
            labels, voxel = read_label_map(path, spacing=spacing, reader=reader)
            unknown = sorted(set(np.unique(labels).tolist()) - set(ids) - {0})
            if unknown:
                raise ValueError(f"label map {path}: ids {unknown[:20]} are not in the class map")
            organ_map = lut[labels]
            found = _measure_subject(str(subject), organ_map, organ_names, spacing, min_voxels)
            for organ, shape in found.items():
                shapes[organ].append(shape)
            contact[str(subject)] = _contact_fractions(organ_map, found, organ_names, contact_margin)
            logger.info("bank: subject %s: %d of %d organs", subject, len(found), len(organ_names))
        absent = [o for o in organ_names if not shapes[o]]
        if absent:
            raise ValueError(f"organs {absent} are not present (>= {min_voxels} voxels) in any label map")
        for left, right in mirror_pairs or ():
            if left in shapes and right in shapes:
                mirrored_left = [_mirror(s, right) for s in shapes[left] if not s.mirrored]
                mirrored_right = [_mirror(s, left) for s in shapes[right] if not s.mirrored]
                shapes[right].extend(mirrored_left)
                shapes[left].extend(mirrored_right)
        source = {
            "label_maps": {str(k): str(v) for k, v in label_maps.items()},
            "organs": {o: list(p) for o, p in organs.items()},
            "mirror_pairs": [list(p) for p in (mirror_pairs or ())],
            "contact_margin": contact_margin,
        }
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
                tmp, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), bits=np.concatenate(bits),
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
                    e["organ"], e["subject"], mask, tuple(e["offset_vox"]), np.asarray(e["centroid_mm"]),
                    e["volume_ml"], e["truncated"], e["mirrored"],
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
        truncated = any(
            b.start < _EDGE_MARGIN or b.stop > dim - _EDGE_MARGIN for b, dim in zip(box, organ_map.shape, strict=True)
        )
        centroid = (np.argwhere(mask).mean(axis=0) + offset) * spacing
        found[organs[k - 1]] = OrganShape(
            organs[k - 1], subject, mask, offset, centroid, n * spacing**3 / 1000.0, truncated
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
    """Left-right mirror of a shape, standing in for its partner organ."""
    return OrganShape(
        as_organ, shape.subject, shape.mask[::-1].copy(), shape.offset_vox, shape.centroid_mm.copy(),
        shape.volume_ml, shape.truncated, mirrored=True,
    )
