"""Anatomy-informed synthetic pre-training data for 3D medical segmentation, as MONAI transforms.

Main entry points: :class:`ShapeBank` (organ shapes of a few real subjects), :class:`AnchorModel` (where organs
lie), :class:`TopologyGraph` (which organs may touch or overlap), :class:`OrganPlacer` (sequential, topology-checked
placement), :func:`render_label` (contour-shell rendering), the MONAI transforms (``RandAnatomySynthd``,
``RandPrimitiveSynthd`` and their pieces) and :class:`SyntheticDataset`.
"""

from .anchors import DEFAULT_RELATIVE_ANCHORS, AnchorModel
from .bank import DEFAULT_BANK_PATH, DEFAULT_MIRROR_PAIRS, DEFAULT_ORGANS, OrganShape, ShapeBank, load_bank
from .checks import CheckLabelClasses, CheckLabelClassesd, CheckLabelClassesD, CheckLabelClassesDict
from .datalists import load_decathlon_split
from .dataset import SyntheticDataset, sample_seed
from .placement import OrganPlacer, PlacementRecord
from .pretrained import load_pretrained
from .primitives import NUM_PRIMITIVE_CLASSES, PRIMITIVE_CLASSES, primitive_label_map
from .render import RENDER_MODES, contour_shell, render_label
from .topology import ADJACENT, DISJOINT, INSIDE, RELATIONS, TopologyGraph
from .transforms import (
    RandAnatomyLabel,
    RandAnatomyLabeld,
    RandAnatomyLabelD,
    RandAnatomyLabelDict,
    RandAnatomySynth,
    RandAnatomySynthd,
    RandAnatomySynthD,
    RandAnatomySynthDict,
    RandPrimitiveLabel,
    RandPrimitiveLabeld,
    RandPrimitiveLabelD,
    RandPrimitiveLabelDict,
    RandPrimitiveSynth,
    RandPrimitiveSynthd,
    RandPrimitiveSynthD,
    RandPrimitiveSynthDict,
    RandShellRender,
    RandShellRenderd,
    RandShellRenderD,
    RandShellRenderDict,
)

__version__ = "0.1.0"
