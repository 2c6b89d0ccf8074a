"""Options of the engine parts, as small frozen dataclasses shared by the array and dictionary transforms.

:class:`PlacementOptions` (:class:`~synth_transforms.placement.OrganPlacer`), :class:`RenderOptions`
(:func:`~synth_transforms.render.render_label`) and :class:`PrimitiveOptions`
(:func:`~synth_transforms.primitives.primitive_label_map`). Transforms also take a plain mapping of the fields (what a
bundle config writes), turned into the dataclass by :func:`as_options`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from .._args import fail
from ..primitives import NUM_PRIMITIVE_CLASSES

__all__ = ["PlacementOptions", "RenderOptions", "PrimitiveOptions", "as_options", "options_dict"]


@dataclass(frozen=True)
class PlacementOptions:
    """Options of :class:`~synth_transforms.placement.OrganPlacer` (same names and defaults; checked there).

    Args:
        jitter_scale: multiplies each anchor's spread; 0 places every organ exactly at its anchor.
        scale_range: per-axis random scale factor range.
        rotation_deg: largest random rotation about each axis, in degrees.
        deform_mm: amplitude of the smooth random deformation, in mm (0 disables it).
        max_tries: candidates tried per organ before it is skipped.
        max_carve_fraction: largest fraction of a new organ that may overlap adjacent organs (and is carved).
        min_inside_fraction: smallest fraction of a child that must lie in its placed parent (``inside``).
        indent_fraction: largest fraction of an adjacent organ that a new organ may take when it overlaps adjacent
            organs by more than ``max_carve_fraction`` of itself (a small organ indents a large one); 0: never.
        max_embed_fraction: largest fraction of an indenting organ that may lie in the organs it indents.
        donor_prob: probability that an organ takes the patch donor's own shape (else a random subject's).
        use_anchors: False: organs at uniform random positions in the patch (the ``no_anchors`` ablation).
        use_topology: False: no insertion checks, later organs overwrite earlier ones (the ``no_topology`` ablation).
    """

    jitter_scale: float = 0.4
    scale_range: tuple[float, float] = (0.93, 1.07)
    rotation_deg: float = 4.0
    deform_mm: float = 2.0
    max_tries: int = 6
    max_carve_fraction: float = 0.3
    min_inside_fraction: float = 0.5
    indent_fraction: float = 0.05
    max_embed_fraction: float = 0.9
    donor_prob: float = 0.9
    use_anchors: bool = True
    use_topology: bool = True


@dataclass(frozen=True)
class RenderOptions:
    """Ranges of :func:`~synth_transforms.render.render_label` (same names and defaults; checked there).

    Args:
        thickness: inclusive range of the shell thickness in voxels (one integer: fixed).
        intensity_range: range of the per-organ intensities.
        fill_range: for ``mixed`` mode, the interior fill as a fraction of the organ's shell intensity.
        blur_sigma: range of the Gaussian blur sigma in voxels (0 = none).
        bias_strength: range of the bias field's amplitude.
        noise_std: range of the Gaussian noise standard deviation.
    """

    thickness: int | tuple[int, int] = (1, 2)
    intensity_range: tuple[float, float] = (0.3, 1.0)
    fill_range: tuple[float, float] = (0.0, 0.3)
    blur_sigma: tuple[float, float] = (0.0, 1.0)
    bias_strength: tuple[float, float] = (0.0, 0.3)
    noise_std: tuple[float, float] = (0.0, 0.05)


@dataclass(frozen=True)
class PrimitiveOptions:
    """Options of :func:`~synth_transforms.primitives.primitive_label_map` (same names and defaults).

    Args:
        num_shapes: solids per patch, or an inclusive ``(low, high)`` range drawn per patch.
        num_classes: primitive classes used, 1..32 (background not counted).
        max_overlap: largest accepted fraction of a candidate's volume on already placed solids.
        size_range: ``(low, high)`` size of a solid as a fraction of the patch edge.
        max_tries: candidates tried per solid before it is given up.
    """

    num_shapes: int | tuple[int, int] = 20
    num_classes: int = NUM_PRIMITIVE_CLASSES
    max_overlap: float = 0.7
    size_range: tuple[float, float] = (0.15, 0.45)
    max_tries: int = 10


def as_options(cls: type, value, name: str, owner: str):
    """``value`` as a ``cls`` instance: None gives the defaults, a mapping gives its fields (JSON lists -> tuples)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise fail(name, f"a {cls.__name__}, a mapping of its fields or None", value, owner)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in value if k not in known]
    if unknown:
        raise ValueError(f"{owner}: {name} has no option {unknown[0]!r}; its options are: {', '.join(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


def options_dict(options) -> dict:
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
