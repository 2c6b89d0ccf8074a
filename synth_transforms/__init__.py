"""Anatomy-informed synthetic pre-training data for 3D medical segmentation, as MONAI transforms.

Main entry points: :class:`ShapeBank` (organ shapes of a few real subjects), :class:`AnchorModel` (where organs
lie), :class:`TopologyGraph` (which organs may touch or overlap), :class:`OrganPlacer` (sequential, topology-checked
placement), :func:`render_label` (contour-shell rendering), the MONAI transforms (``RandAnatomySynthd``,
``RandPrimitiveSynthd`` and their pieces), :class:`SyntheticDataset` and :func:`realism_report` (synthetic label
patches against patches of real label maps).
"""

from ._version import __version__ as __version__
from .anchors import DEFAULT_RELATIVE_ANCHORS, AnchorModel
from .bank import DEFAULT_BANK_PATH, ShapeBank, load_bank
from .checks import CheckLabelClasses, CheckLabelClassesD, CheckLabelClassesd, CheckLabelClassesDict
from .datalists import load_decathlon_split
from .dataset import SyntheticDataset, sample_seed
from .organ_names import DEFAULT_MIRROR_PAIRS, DEFAULT_ORGANS, find_mirror_pairs, find_relative_anchors
from .organ_shape import OrganShape
from .placement import OrganPlacer, PlacementRecord
from .pretrained import load_pretrained
from .primitives import NUM_PRIMITIVE_CLASSES, PRIMITIVE_CLASSES, primitive_label_map
from .realism import format_realism, realism_report
from .render import RENDER_MODES, contour_shell, render_label
from .topology import ADJACENT, DISJOINT, INSIDE, RELATIONS, TopologyGraph
from .transforms import (
    PlacementOptions,
    PrimitiveOptions,
    RandAnatomyLabel,
    RandAnatomyLabelD,
    RandAnatomyLabeld,
    RandAnatomyLabelDict,
    RandAnatomySynth,
    RandAnatomySynthD,
    RandAnatomySynthd,
    RandAnatomySynthDict,
    RandPrimitiveLabel,
    RandPrimitiveLabelD,
    RandPrimitiveLabeld,
    RandPrimitiveLabelDict,
    RandPrimitiveSynth,
    RandPrimitiveSynthD,
    RandPrimitiveSynthd,
    RandPrimitiveSynthDict,
    RandShellRender,
    RandShellRenderD,
    RandShellRenderd,
    RandShellRenderDict,
    RenderOptions,
)

__all__ = [
    "PlacementOptions",
    "PrimitiveOptions",
    "RenderOptions",
    "DEFAULT_RELATIVE_ANCHORS",
    "AnchorModel",
    "DEFAULT_BANK_PATH",
    "DEFAULT_MIRROR_PAIRS",
    "DEFAULT_ORGANS",
    "find_mirror_pairs",
    "find_relative_anchors",
    "OrganShape",
    "ShapeBank",
    "load_bank",
    "CheckLabelClasses",
    "CheckLabelClassesd",
    "CheckLabelClassesD",
    "CheckLabelClassesDict",
    "load_decathlon_split",
    "SyntheticDataset",
    "sample_seed",
    "OrganPlacer",
    "PlacementRecord",
    "load_pretrained",
    "NUM_PRIMITIVE_CLASSES",
    "PRIMITIVE_CLASSES",
    "primitive_label_map",
    "realism_report",
    "format_realism",
    "RENDER_MODES",
    "contour_shell",
    "render_label",
    "ADJACENT",
    "DISJOINT",
    "INSIDE",
    "RELATIONS",
    "TopologyGraph",
    "RandAnatomyLabel",
    "RandAnatomyLabeld",
    "RandAnatomyLabelD",
    "RandAnatomyLabelDict",
    "RandAnatomySynth",
    "RandAnatomySynthd",
    "RandAnatomySynthD",
    "RandAnatomySynthDict",
    "RandPrimitiveLabel",
    "RandPrimitiveLabeld",
    "RandPrimitiveLabelD",
    "RandPrimitiveLabelDict",
    "RandPrimitiveSynth",
    "RandPrimitiveSynthd",
    "RandPrimitiveSynthD",
    "RandPrimitiveSynthDict",
    "RandShellRender",
    "RandShellRenderd",
    "RandShellRenderD",
    "RandShellRenderDict",
]
