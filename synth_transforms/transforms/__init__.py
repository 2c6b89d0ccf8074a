"""MONAI transforms wrapping the synthesis engine (array and dictionary forms).

- :class:`RandAnatomyLabel` / :class:`RandAnatomyLabeld`: anchor placement + topology-checked insertion of bank
  organs -> label patch.
- :class:`RandShellRender` / :class:`RandShellRenderd`: label patch -> contour-shell image.
- :class:`RandPrimitiveLabel` / :class:`RandPrimitiveLabeld`: the FDSL baseline's primitive solids -> label patch.
- :class:`RandAnatomySynth` / :class:`RandAnatomySynthd` and :class:`RandPrimitiveSynth` /
  :class:`RandPrimitiveSynthd`: the composites that make an ``{"image", "label"}`` pair from nothing but their
  random state.

Options of the engine travel as small frozen dataclasses, one per engine part, the same at every level:
:class:`PlacementOptions` (:class:`~synth_transforms.placement.OrganPlacer`), :class:`RenderOptions`
(:func:`~synth_transforms.render.render_label`) and :class:`PrimitiveOptions`
(:func:`~synth_transforms.primitives.primitive_label_map`). Each argument also takes a plain mapping of the fields
(what a bundle config writes: ``"render_options": {"noise_std": [0.0, 0.1]}``).

Random contract (MONAI's): ``randomize()`` makes every draw of a sample from ``self.R`` (the makers draw one seed
that the engine then runs from), ``__call__(..., randomize=False)`` replays the last sample exactly. Composites and
dictionary forms share one random state with their inner transforms (``set_random_state`` forwards it), so a
composite's label is the label its label maker alone makes from the same seed.

Keys: ``keys`` names the items a dictionary transform makes or reads: the label for the label makers, ``(image,
label)`` in that order for the pairs, the label for the renderer. An item made beside them has its own ``*_key``
argument (``RandShellRenderd(image_key=...)``, ``RandAnatomyLabeld(record_key=...)``).

Outputs are channel-first ``MetaTensor``s ``(1, H, W, D)`` with an affine at the bank's spacing: images float32 in
[0, 1], labels int64.
"""

from __future__ import annotations

from .array import RandAnatomyLabel, RandAnatomySynth, RandPrimitiveLabel, RandPrimitiveSynth, RandShellRender
from .dictionary import (
    RandAnatomyLabelD,
    RandAnatomyLabeld,
    RandAnatomyLabelDict,
    RandAnatomySynthD,
    RandAnatomySynthd,
    RandAnatomySynthDict,
    RandPrimitiveLabelD,
    RandPrimitiveLabeld,
    RandPrimitiveLabelDict,
    RandPrimitiveSynthD,
    RandPrimitiveSynthd,
    RandPrimitiveSynthDict,
    RandShellRenderD,
    RandShellRenderd,
    RandShellRenderDict,
)
from .options import PlacementOptions, PrimitiveOptions, RenderOptions

__all__ = [
    "PlacementOptions",
    "RenderOptions",
    "PrimitiveOptions",
    "RandAnatomyLabel",
    "RandAnatomyLabeld",
    "RandShellRender",
    "RandShellRenderd",
    "RandPrimitiveLabel",
    "RandPrimitiveLabeld",
    "RandAnatomySynth",
    "RandAnatomySynthd",
    "RandPrimitiveSynth",
    "RandPrimitiveSynthd",
    "RandAnatomyLabelD",
    "RandAnatomyLabelDict",
    "RandShellRenderD",
    "RandShellRenderDict",
    "RandPrimitiveLabelD",
    "RandPrimitiveLabelDict",
    "RandAnatomySynthD",
    "RandAnatomySynthDict",
    "RandPrimitiveSynthD",
    "RandPrimitiveSynthDict",
]
