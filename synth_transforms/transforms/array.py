"""Array forms of the transforms: label makers, the shell renderer and the image+label pairs."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Randomizable, RandomizableTransform
from monai.utils import TransformBackends

from .._args import as_size3, check_choice
from ..anchors import AnchorModel
from ..bank import ShapeBank, load_bank
from ..placement import OrganPlacer, PlacementRecord
from ..primitives import primitive_label_map, validate_arguments
from ..render import RENDER_MODES, render_label, validate_render_arguments
from ..topology import TopologyGraph
from .options import PlacementOptions, PrimitiveOptions, RenderOptions, as_options, options_dict

__all__ = [
    "RandAnatomyLabel",
    "RandShellRender",
    "RandPrimitiveLabel",
    "RandAnatomySynth",
    "RandPrimitiveSynth",
]

_SEED_BOUND = 2**31  # engine seeds are drawn in [0, 2**31)


# ---------------------------------------------------------------------- helpers
def _as_bank(bank: ShapeBank | str | os.PathLike | None) -> ShapeBank:
    return bank if isinstance(bank, ShapeBank) else load_bank(bank)


def _affine(spacing: float, origin_mm: Sequence[float] | None = None) -> torch.Tensor:
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] *= spacing
    if origin_mm is not None:
        affine[:3, 3] = torch.as_tensor(np.asarray(origin_mm, dtype=float))
    return affine


def _to_meta(array: torch.Tensor, affine: torch.Tensor, dtype: torch.dtype) -> MetaTensor:
    return MetaTensor(array.unsqueeze(0).to(dtype), affine=affine)


def _draw_seed(state: np.random.RandomState) -> int:
    return int(state.randint(_SEED_BOUND))


def _engine_rng(transform, randomize: bool) -> np.random.RandomState:
    """The engine's random stream for this call: a new draw (``randomize``) or the last one again (replay)."""
    if randomize:
        transform.randomize()
    if transform._seed is None:
        owner = type(transform).__name__
        raise RuntimeError(f"{owner}: randomize() was never called; call it (or call with randomize=True) first")
    return np.random.RandomState(transform._seed)


class _SharedRandomState(Randomizable):
    """Mixin of a transform built from inner random transforms: the attributes named in ``_part_names``, in drawing
    order.

    ``set_random_state`` hands every part this transform's own ``RandomState`` (one stream for all) and returns
    ``self``; ``randomize`` lets each part make its draws, in order; ``num_classes`` is that of the first part.
    """

    _part_names: tuple[str, ...] = ()

    def _parts(self) -> tuple[Randomizable, ...]:
        return tuple(getattr(self, name) for name in self._part_names)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        for part in self._parts():
            part.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:
        for part in self._parts():
            part.randomize()

    @property
    def num_classes(self) -> int | None:
        """Output classes including background."""
        return self._parts()[0].num_classes


# ---------------------------------------------------------------------- array forms
class RandAnatomyLabel(RandomizableTransform):
    """Make a label patch by sequential, topology-checked placement of shape-bank organs at their anchors.

    ``randomize`` draws a donor subject, a patch centre (where the donor has a random organ of ``center_organs``,
    plus uniform jitter of up to a quarter of the patch, then moved into the donor's field of view where it cut
    organs: :meth:`OrganPlacer.fit_center`) and a placement seed; ``__call__`` then places organs with
    :class:`~synth_transforms.placement.OrganPlacer` following the donor's layout, every draw of the placement
    coming from that seed. The record of the last call (placed, retried, skipped organs) is kept in
    ``self.last_record``.

    Args:
        bank: a :class:`ShapeBank`, a bank file path, or None for the default bank shipped with the package.
        patch_size: patch size in voxels at the bank's spacing (one integer: a cube; default 96^3 = 144 mm at
            1.5 mm).
        organs: organs to place (default: all); class ids stay the bank's.
        center_organs: organs whose anchors patch centres are drawn around (default: ``organs``).
        anchors: an :class:`AnchorModel` or a JSON path (default: derived from the bank).
        topology: a :class:`TopologyGraph` or a JSON path (default: derived from the bank).
        placement_options: :class:`PlacementOptions` or a mapping of its fields (default: its defaults).

    Returns:
        ``MetaTensor`` ``(1, H, W, D)`` int64 label patch; its affine places it in the bank's frame (mm).
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        bank: ShapeBank | str | os.PathLike | None = None,
        patch_size: Sequence[int] | int = (96, 96, 96),
        organs: Sequence[str] | None = None,
        center_organs: Sequence[str] | None = None,
        anchors: AnchorModel | str | os.PathLike | None = None,
        topology: TopologyGraph | str | os.PathLike | None = None,
        placement_options: PlacementOptions | Mapping | None = None,
    ):
        RandomizableTransform.__init__(self, prob=1.0)
        owner = type(self).__name__
        patch_size = as_size3(patch_size, "patch_size", owner)
        self.placement_options = as_options(PlacementOptions, placement_options, "placement_options", owner)
        self.bank = _as_bank(bank)
        if anchors is not None and not isinstance(anchors, AnchorModel):
            anchors = AnchorModel.load(anchors, self.bank.organs)
        if topology is not None and not isinstance(topology, TopologyGraph):
            topology = TopologyGraph.load(topology, self.bank.organs)
        self.placer = OrganPlacer(
            self.bank,
            anchors=anchors,
            graph=topology,
            organs=organs,
            patch_size=patch_size,
            **options_dict(self.placement_options),
        )
        center_ids = [self.bank.class_id(o) - 1 for o in self.bank.check_organs(center_organs or self.placer.order)]
        anchors = self.placer.anchors
        # per donor, the centre organs it has (all of them when it has none): computed once, drawn from per call
        self.center_ids = {
            donor: [i for i in center_ids if anchors.subject_position(i, donor) is not None] or center_ids
            for donor in self.bank.subjects
        }
        self.last_record: PlacementRecord | None = None
        self._donor: str | None = None
        self._center: np.ndarray | None = None
        self._seed: int | None = None

    @property
    def num_classes(self) -> int:
        """Output classes including background."""
        return self.bank.num_classes

    def randomize(self, data=None) -> None:
        # Draw the donor first and centre on one of ITS organs: the donor's layout can sit far from the bank mean
        # (other field of view), and a patch centred on a mean anchor could then miss every organ.
        self._donor = self.bank.subjects[self.R.randint(len(self.bank.subjects))]
        own = self.center_ids[self._donor]
        anchor = self.placer.anchors.expected_position(own[self.R.randint(len(own))], None, self._donor)
        center = anchor + self.R.uniform(-0.25, 0.25, size=3) * self.placer.extent_mm
        # kept inside the donor's field of view where it cut organs: no cut face, no organ missing beyond the edge
        self._center = self.placer.fit_center(center, self._donor)
        self._seed = _draw_seed(self.R)

    def __call__(self, data=None, randomize: bool = True) -> MetaTensor:
        """Make one label patch (``data`` is ignored); ``randomize=False`` replays the last one exactly."""
        label, record = self.placer(_engine_rng(self, randomize), self._center, self._donor)
        self.last_record = record
        return _to_meta(label, _affine(self.bank.spacing, record.origin_mm), torch.int64)


class RandShellRender(RandomizableTransform):
    """Render a label patch as a contour-shell image (see :func:`synth_transforms.render.render_label`).

    ``randomize`` draws a render seed; ``__call__`` renders from it, so ``randomize=False`` renders the same image
    again (for the same label).

    Args:
        num_classes: classes including background (default: from the label's maximum).
        mode: ``"shell"``, ``"fill"`` or ``"mixed"``.
        render_options: :class:`RenderOptions` or a mapping of its fields (default: its defaults).

    Returns:
        float32 image with the label's shape ``(1, H, W, D)`` and its affine.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self, num_classes: int | None = None, mode: str = "shell", render_options: RenderOptions | Mapping | None = None
    ):
        RandomizableTransform.__init__(self, prob=1.0)
        owner = type(self).__name__
        self.num_classes = num_classes
        self.mode = check_choice(mode, "mode", RENDER_MODES, owner)
        self.render_options = as_options(RenderOptions, render_options, "render_options", owner)
        validate_render_arguments(mode, **options_dict(self.render_options), owner=owner)
        self._seed: int | None = None

    def randomize(self, data=None) -> None:
        self._seed = _draw_seed(self.R)

    def __call__(self, label: torch.Tensor, randomize: bool = True) -> MetaTensor:
        """Render ``label`` ``(1, H, W, D)``; ``randomize=False`` reuses the last draw."""
        rng = _engine_rng(self, randomize)
        if label.ndim != 4 or label.shape[0] != 1:
            raise ValueError(f"RandShellRender: expected a (1, H, W, D) label, got shape {tuple(label.shape)}")
        array = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)
        image = render_label(
            array[0],
            rng,
            self.num_classes,
            self.mode,
            **options_dict(self.render_options),
        )
        affine = label.affine if isinstance(label, MetaTensor) else torch.eye(4, dtype=torch.float64)
        return _to_meta(image, affine, torch.float32)


class RandPrimitiveLabel(RandomizableTransform):
    """Make a label patch of random primitive solids (the FDSL baseline; see :mod:`synth_transforms.primitives`).

    ``randomize`` draws a seed; ``__call__`` makes the patch from it, so ``randomize=False`` replays it exactly.

    Args:
        patch_size: patch size in voxels (one integer: a cube).
        spacing: voxel size written into the affine (mm).
        primitive_options: :class:`PrimitiveOptions` or a mapping of its fields (default: its defaults).

    Returns:
        ``MetaTensor`` ``(1, H, W, D)`` int64 label patch.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        patch_size: Sequence[int] | int = (96, 96, 96),
        spacing: float = 1.5,
        primitive_options: PrimitiveOptions | Mapping | None = None,
    ):
        RandomizableTransform.__init__(self, prob=1.0)
        owner = type(self).__name__
        self.primitive_options = as_options(PrimitiveOptions, primitive_options, "primitive_options", owner)
        self.patch_size, _ = validate_arguments(patch_size, **options_dict(self.primitive_options), owner=owner)
        self.spacing = float(spacing)
        self._seed: int | None = None

    @property
    def num_classes(self) -> int:
        """Output classes including background."""
        return self.primitive_options.num_classes + 1

    def randomize(self, data=None) -> None:
        self._seed = _draw_seed(self.R)

    def __call__(self, data=None, randomize: bool = True) -> MetaTensor:
        """Make one label patch (``data`` is ignored); ``randomize=False`` replays the last one exactly."""
        options = options_dict(self.primitive_options)
        label = primitive_label_map(_engine_rng(self, randomize), self.patch_size, **options)
        return _to_meta(label, _affine(self.spacing), torch.int64)


class _SynthPair(_SharedRandomState):
    """Label maker + shell renderer, applied in sequence with one random state (the label's draws first)."""

    _part_names = ("_label_maker", "_renderer")

    def __init__(self, label_maker: RandomizableTransform, mode: str, render_options: RenderOptions | Mapping | None):
        self._label_maker = label_maker
        self._renderer = RandShellRender(label_maker.num_classes, mode, render_options)
        self.set_random_state(0)

    @property
    def label_maker(self) -> RandomizableTransform:
        """The label maker (the first part)."""
        return self._label_maker

    @property
    def renderer(self) -> RandShellRender:
        """The renderer of the label maker's labels."""
        return self._renderer

    def __call__(self, data=None, randomize: bool = True) -> tuple[MetaTensor, MetaTensor]:
        """Return ``(image, label)``, both ``(1, H, W, D)``; ``randomize=False`` replays the last pair exactly."""
        if randomize:
            self.randomize()
        label = self._label_maker(randomize=False)
        return self._renderer(label, randomize=False), label


class RandAnatomySynth(_SynthPair):
    """Anatomy-informed synthetic pair: :class:`RandAnatomyLabel` then :class:`RandShellRender`.

    Args:
        bank: a :class:`ShapeBank`, a bank path, or None for the default bank.
        patch_size: patch size in voxels.
        mode: rendering mode, ``"shell"``, ``"fill"`` or ``"mixed"``.
        organs, center_organs, anchors, topology: as in :class:`RandAnatomyLabel`.
        placement_options: :class:`PlacementOptions` or a mapping of its fields.
        render_options: :class:`RenderOptions` or a mapping of its fields.
    """

    def __init__(
        self,
        bank: ShapeBank | str | os.PathLike | None = None,
        patch_size: Sequence[int] | int = (96, 96, 96),
        mode: str = "shell",
        organs: Sequence[str] | None = None,
        center_organs: Sequence[str] | None = None,
        anchors: AnchorModel | str | os.PathLike | None = None,
        topology: TopologyGraph | str | os.PathLike | None = None,
        placement_options: PlacementOptions | Mapping | None = None,
        render_options: RenderOptions | Mapping | None = None,
    ):
        label_maker = RandAnatomyLabel(bank, patch_size, organs, center_organs, anchors, topology, placement_options)
        super().__init__(label_maker, mode, render_options)


class RandPrimitiveSynth(_SynthPair):
    """Primitive-shape (FDSL baseline) pair: :class:`RandPrimitiveLabel` then :class:`RandShellRender`.

    Args:
        patch_size: patch size in voxels.
        mode: rendering mode.
        spacing: voxel size written into the affine.
        primitive_options: :class:`PrimitiveOptions` or a mapping of its fields.
        render_options: :class:`RenderOptions` or a mapping of its fields.
    """

    def __init__(
        self,
        patch_size: Sequence[int] | int = (96, 96, 96),
        mode: str = "shell",
        spacing: float = 1.5,
        primitive_options: PrimitiveOptions | Mapping | None = None,
        render_options: RenderOptions | Mapping | None = None,
    ):
        super().__init__(RandPrimitiveLabel(patch_size, spacing, primitive_options), mode, render_options)
