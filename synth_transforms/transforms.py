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

import dataclasses
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, RandomizableTransform
from monai.utils import TransformBackends

from ._args import as_size3, check_choice, fail
from .anchors import AnchorModel
from .bank import ShapeBank, load_bank
from .placement import OrganPlacer, PlacementRecord
from .primitives import NUM_PRIMITIVE_CLASSES, primitive_label_map, validate_arguments
from .render import RENDER_MODES, render_label
from .topology import TopologyGraph

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

_SEED_BOUND = 2**31  # engine seeds are drawn in [0, 2**31)


# ---------------------------------------------------------------------- options
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
        donor_prob: probability that an organ takes the patch donor's own shape (else a random subject's).
    """

    jitter_scale: float = 0.4
    scale_range: tuple[float, float] = (0.93, 1.07)
    rotation_deg: float = 4.0
    deform_mm: float = 2.0
    max_tries: int = 6
    max_carve_fraction: float = 0.3
    min_inside_fraction: float = 0.5
    donor_prob: float = 0.9


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


def _as_options(cls: type, value, name: str, owner: str):
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


def _options_dict(options) -> dict:
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


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


def _not_randomized(owner: str) -> RuntimeError:
    return RuntimeError(f"{owner}: randomize() was never called; call it (or call with randomize=True) first")


class _SharedRandomState(Randomizable):
    """Mixin of a transform built from inner random transforms (its :meth:`_parts`, in drawing order).

    ``set_random_state`` hands every part this transform's own ``RandomState`` (one stream for all) and returns
    ``self``; ``randomize`` lets each part make its draws, in order; ``num_classes`` is that of the first part.
    """

    def _parts(self) -> tuple[Randomizable, ...]:
        raise NotImplementedError

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
    plus uniform jitter of up to a quarter of the patch) and a placement seed; ``__call__`` then places organs with
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
        self.placement_options = _as_options(PlacementOptions, placement_options, "placement_options", owner)
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
            **_options_dict(self.placement_options),
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
        self._center = anchor + self.R.uniform(-0.25, 0.25, size=3) * self.placer.extent_mm
        self._seed = _draw_seed(self.R)

    def __call__(self, data=None, randomize: bool = True) -> MetaTensor:
        """Make one label patch (``data`` is ignored); ``randomize=False`` replays the last one exactly."""
        if randomize:
            self.randomize()
        if self._seed is None:
            raise _not_randomized(type(self).__name__)
        label, record = self.placer(np.random.RandomState(self._seed), self._center, self._donor)
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
        self.render_options = _as_options(RenderOptions, render_options, "render_options", owner)
        self._seed: int | None = None

    def randomize(self, data=None) -> None:
        self._seed = _draw_seed(self.R)

    def __call__(self, label: torch.Tensor, randomize: bool = True) -> MetaTensor:
        """Render ``label`` ``(1, H, W, D)``; ``randomize=False`` reuses the last draw."""
        if randomize:
            self.randomize()
        if self._seed is None:
            raise _not_randomized(type(self).__name__)
        if label.ndim != 4 or label.shape[0] != 1:
            raise ValueError(f"RandShellRender: expected a (1, H, W, D) label, got shape {tuple(label.shape)}")
        array = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)
        image = render_label(
            array[0],
            np.random.RandomState(self._seed),
            self.num_classes,
            self.mode,
            **_options_dict(self.render_options),
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
        self.primitive_options = _as_options(PrimitiveOptions, primitive_options, "primitive_options", owner)
        self.patch_size, _ = validate_arguments(patch_size, **_options_dict(self.primitive_options), owner=owner)
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
        if randomize:
            self.randomize()
        if self._seed is None:
            raise _not_randomized(type(self).__name__)
        options = _options_dict(self.primitive_options)
        label = primitive_label_map(np.random.RandomState(self._seed), self.patch_size, **options)
        return _to_meta(label, _affine(self.spacing), torch.int64)


class _SynthPair(_SharedRandomState):
    """Label maker + shell renderer, applied in sequence with one random state (the label's draws first)."""

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

    def _parts(self) -> tuple[Randomizable, ...]:
        return self._label_maker, self._renderer

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


# ---------------------------------------------------------------------- dictionary forms
class _Maker(_SharedRandomState, MapTransform):
    """Dictionary wrapper of an array transform (``self.maker``) that makes its items from its random state alone.

    ``__call__(data, randomize=False)`` replays the last items exactly, as the array forms do.
    """

    def __init__(self, keys: KeysCollection, maker, expected: str, count: int):
        MapTransform.__init__(self, keys)
        if len(self.keys) != count:
            raise ValueError(f"{type(self).__name__}: expected {expected}, got keys {self.keys}")
        self.maker = maker

    def _parts(self) -> tuple[Randomizable, ...]:
        return (self.maker,)

    def _make(self, randomize: bool):
        if randomize:
            self.randomize()
        return self.maker(randomize=False)


class RandAnatomyLabeld(_Maker):
    """Dictionary form of :class:`RandAnatomyLabel`: writes the label patch under ``keys`` (one key).

    Args:
        keys: the label key, e.g. ``"label"``.
        bank, patch_size, organs, center_organs, anchors, topology, placement_options: as in
            :class:`RandAnatomyLabel`.
        record_key: if set, also store the placement record (as a plain dict) under this key.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        bank: ShapeBank | str | os.PathLike | None = None,
        patch_size: Sequence[int] | int = (96, 96, 96),
        organs: Sequence[str] | None = None,
        center_organs: Sequence[str] | None = None,
        anchors: AnchorModel | str | os.PathLike | None = None,
        topology: TopologyGraph | str | os.PathLike | None = None,
        placement_options: PlacementOptions | Mapping | None = None,
        record_key: str | None = None,
    ):
        maker = RandAnatomyLabel(bank, patch_size, organs, center_organs, anchors, topology, placement_options)
        super().__init__(keys, maker, "one label key", 1)
        self.record_key = record_key

    @property
    def label_maker(self) -> RandAnatomyLabel:
        """The array transform that makes the labels."""
        return self.maker

    def __call__(self, data: Mapping[Hashable, object] | None = None, randomize: bool = True) -> dict:
        d = dict(data or {})
        d[self.keys[0]] = self._make(randomize)
        if self.record_key:
            d[self.record_key] = self.maker.last_record.to_dict()
        return d


class RandPrimitiveLabeld(_Maker):
    """Dictionary form of :class:`RandPrimitiveLabel`: writes the label patch under ``keys`` (one key).

    Args:
        keys: the label key, e.g. ``"label"``.
        patch_size, spacing, primitive_options: as in :class:`RandPrimitiveLabel`.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        patch_size: Sequence[int] | int = (96, 96, 96),
        spacing: float = 1.5,
        primitive_options: PrimitiveOptions | Mapping | None = None,
    ):
        super().__init__(keys, RandPrimitiveLabel(patch_size, spacing, primitive_options), "one label key", 1)

    @property
    def label_maker(self) -> RandPrimitiveLabel:
        """The array transform that makes the labels."""
        return self.maker

    def __call__(self, data: Mapping[Hashable, object] | None = None, randomize: bool = True) -> dict:
        d = dict(data or {})
        d[self.keys[0]] = self._make(randomize)
        return d


class RandShellRenderd(_SharedRandomState, MapTransform):
    """Dictionary form of :class:`RandShellRender`: renders the label under ``keys`` into ``image_key``.

    Args:
        keys: key of the ``(1, H, W, D)`` label patch (one key).
        image_key: key the image is written to.
        num_classes, mode, render_options: as in :class:`RandShellRender`.
        allow_missing_keys: pass the data through unchanged when the label is missing.
    """

    backend = RandShellRender.backend

    def __init__(
        self,
        keys: KeysCollection = "label",
        image_key: str = "image",
        num_classes: int | None = None,
        mode: str = "shell",
        render_options: RenderOptions | Mapping | None = None,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandShellRenderd: expected one label key, got keys {self.keys}")
        self.image_key = image_key
        self.renderer = RandShellRender(num_classes, mode, render_options)

    def _parts(self) -> tuple[Randomizable, ...]:
        return (self.renderer,)

    def __call__(self, data: Mapping[Hashable, object], randomize: bool = True) -> dict:
        d = dict(data)
        if randomize:
            self.randomize()
        key = self.keys[0]
        if key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"RandShellRenderd: label key {key!r} not found; keys present: {list(d)}")
        d[self.image_key] = self.renderer(d[key], randomize=False)
        return d


class _SynthPaird(_Maker):
    """Dictionary form of a :class:`_SynthPair`: writes ``(image, label)`` under ``keys``, in that order."""

    def __init__(self, keys: KeysCollection, maker: _SynthPair):
        super().__init__(keys, maker, "keys (image_key, label_key)", 2)

    @property
    def label_maker(self) -> RandomizableTransform:
        """The array transform that makes the labels."""
        return self.maker.label_maker

    @property
    def renderer(self) -> RandShellRender:
        """The array transform that renders the images."""
        return self.maker.renderer

    def __call__(self, data: Mapping[Hashable, object] | None = None, randomize: bool = True) -> dict:
        d = dict(data or {})
        d[self.keys[0]], d[self.keys[1]] = self._make(randomize)
        return d


class RandAnatomySynthd(_SynthPaird):
    """Make an ``{"image", "label"}`` pair of anatomy-informed synthetic data from nothing but the random state.

    Args:
        keys: ``(image_key, label_key)``, in that order; default ``("image", "label")``.
        bank, patch_size, mode, organs, center_organs, anchors, topology, placement_options, render_options: as
            in :class:`RandAnatomySynth`.

    Example::

        synth = RandAnatomySynthd(patch_size=(96, 96, 96), mode="shell").set_random_state(seed=0)
        sample = synth({})   # {"image": (1, 96, 96, 96) float32, "label": (1, 96, 96, 96) int64}
        again = synth({}, randomize=False)   # the same pair
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
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
        maker = RandAnatomySynth(
            bank, patch_size, mode, organs, center_organs, anchors, topology, placement_options, render_options
        )
        super().__init__(keys, maker)


class RandPrimitiveSynthd(_SynthPaird):
    """Dictionary form of :class:`RandPrimitiveSynth` (the FDSL baseline); same contract as RandAnatomySynthd.

    Args:
        keys: ``(image_key, label_key)``, in that order; default ``("image", "label")``.
        patch_size, mode, spacing, primitive_options, render_options: as in :class:`RandPrimitiveSynth`.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        patch_size: Sequence[int] | int = (96, 96, 96),
        mode: str = "shell",
        spacing: float = 1.5,
        primitive_options: PrimitiveOptions | Mapping | None = None,
        render_options: RenderOptions | Mapping | None = None,
    ):
        super().__init__(keys, RandPrimitiveSynth(patch_size, mode, spacing, primitive_options, render_options))


RandAnatomyLabelD = RandAnatomyLabelDict = RandAnatomyLabeld
RandShellRenderD = RandShellRenderDict = RandShellRenderd
RandPrimitiveLabelD = RandPrimitiveLabelDict = RandPrimitiveLabeld
RandAnatomySynthD = RandAnatomySynthDict = RandAnatomySynthd
RandPrimitiveSynthD = RandPrimitiveSynthDict = RandPrimitiveSynthd
