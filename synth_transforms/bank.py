"""ShapeBank: label-only organ shapes of a few real subjects, cropped, measured and stored in one compact file.

A bank holds, per subject and organ, the binary mask cropped to its bounding box, its centroid (mm, in the
subject's RAS grid), its volume and where the field of view cut it (``truncated``, ``cut_faces``). It also stores,
per subject, how much of each organ's outer surface touches every other organ, from which the topology graph is
derived, and which organs form left/right pairs and which follow a parent organ (relative anchors).

Label maps from any source are cleaned the same way: stray islands far from an organ are dropped, maps coarser than
the bank spacing (thick slices) are smoothed instead of upsampled into staircases, and what the build did is
logged and kept in ``source["build_report"]`` (see :meth:`ShapeBank.info`).

This module keeps the bank, its queries and its file. The build's steps live in :mod:`synth_transforms.bank_build`
(label maps read by :mod:`synth_transforms.organ_maps`), organ naming in :mod:`synth_transforms.organ_names` and
the :class:`OrganShape` record in :mod:`synth_transforms.organ_shape`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .bank_build import _report_lines, build_fields
from .io import atomic_path
from .organ_maps import DEFAULT_ISLAND_FRACTION
from .organ_names import (
    DEFAULT_MIRROR_PAIRS,
    DEFAULT_ORGANS,
    DEFAULT_RELATIVE_ANCHORS,
    find_mirror_pairs,
    find_relative_anchors,
)
from .organ_shape import OrganShape

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

#: Format 1 gained optional keys (``cut_faces`` per shape, ``relative_anchors`` and ``build_report`` in the
#: source) without a version change: files without them still load, and older readers ignore them.
BANK_FORMAT_VERSION = 1
DEFAULT_BANK_PATH = Path(__file__).parent / "data" / "default_bank.npz"


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
        fields = build_fields(
            label_maps,
            class_map,
            organs=organs,
            spacing=spacing,
            mirror_pairs=mirror_pairs,
            min_voxels=min_voxels,
            reader=reader,
            contact_margin=contact_margin,
            relative_anchors=relative_anchors,
            island_fraction=island_fraction,
        )
        return cls(**fields)

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
