"""MONAI transforms wrapping the synthesis engine (array and dictionary forms).

- :class:`RandAnatomyLabel` / :class:`RandAnatomyLabeld`: anchor placement + topology-checked insertion of bank
  organs -> label patch.
- :class:`RandShellRender` / :class:`RandShellRenderd`: label patch -> contour-shell image.
- :class:`RandPrimitiveLabel` / :class:`RandPrimitiveLabeld`: the FDSL baseline's primitive solids -> label patch.
- :class:`RandAnatomySynth` / :class:`RandAnatomySynthd` and :class:`RandPrimitiveSynth` /
  :class:`RandPrimitiveSynthd`: the composites that make an ``{"image", "label"}`` pair from nothing but their
  random state.

Outputs are channel-first ``MetaTensor``s ``(1, H, W, D)`` with an affine at the bank's spacing: images float32 in
[0, 1], labels int64. Every random draw comes from ``self.R``; ``set_random_state`` forwards to inner transforms.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, RandomizableTransform
from monai.utils import TransformBackends

from .anchors import AnchorModel
from .bank import ShapeBank, load_bank
from .placement import OrganPlacer, PlacementRecord
from .primitives import NUM_PRIMITIVE_CLASSES, primitive_label_map
from .render import RENDER_MODES, render_label
from .topology import TopologyGraph

__all__ = [
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


class RandAnatomyLabel(RandomizableTransform):
    """Make a label patch by sequential, topology-checked placement of shape-bank organs at their anchors.

    Each call draws a donor subject and a patch centre (where the donor has a random organ of ``center_organs``,
    plus uniform jitter of up to a quarter of the patch), then places organs with
    :class:`~synth_transforms.placement.OrganPlacer` following the donor's layout.
    The record of the last call (placed, retried, skipped organs) is kept in ``self.last_record``.

    Args:
        bank: a :class:`ShapeBank`, a bank file path, or None for the default bank shipped with the package.
        patch_size: patch size in voxels at the bank's spacing (default 96^3 = 144 mm at 1.5 mm).
        organs: organs to place (default: all); class ids stay the bank's.
        center_organs: organs whose anchors patch centres are drawn around (default: ``organs``).
        anchors: an :class:`AnchorModel` or a JSON path (default: derived from the bank).
        topology: a :class:`TopologyGraph` or a JSON path (default: derived from the bank).
        placer_kwargs: further :class:`OrganPlacer` options (``jitter_scale``, ``rotation_deg``, ``max_tries`` ...).

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
        **placer_kwargs,
    ):
        RandomizableTransform.__init__(self, prob=1.0)
        self.bank = _as_bank(bank)
        if anchors is not None and not isinstance(anchors, AnchorModel):
            anchors = AnchorModel.load(anchors, self.bank.organs)
        if topology is not None and not isinstance(topology, TopologyGraph):
            topology = TopologyGraph.load(topology, self.bank.organs)
        self.placer = OrganPlacer(
            self.bank, anchors=anchors, graph=topology, organs=organs, patch_size=patch_size, **placer_kwargs
        )
        center_ids = [self.bank.class_id(o) - 1 for o in self.bank.check_organs(center_organs or self.placer.order)]
        anchors = self.placer.anchors
        # per donor, the centre organs it has (all of them when it has none): computed once, drawn from per call
        self.center_ids = {
            donor: [i for i in center_ids if anchors.subject_position(i, donor) is not None] or center_ids
            for donor in self.bank.subjects
        }
        self.last_record: PlacementRecord | None = None
        self._center: np.ndarray | None = None
        self._donor: str | None = None

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

    def __call__(self, data=None, randomize: bool = True) -> MetaTensor:
        """Make one label patch (``data`` is ignored: the patch comes from the random state alone)."""
        if randomize:
            self.randomize()
        if self._center is None:
            raise RuntimeError("RandAnatomyLabel: call with randomize=True first")
        label, record = self.placer(self.R, self._center, self._donor)
        self.last_record = record
        return _to_meta(label, _affine(self.bank.spacing, record.origin_mm), torch.int64)


class RandShellRender(RandomizableTransform):
    """Render a label patch as a contour-shell image (see :func:`synth_transforms.render.render_label`).

    Args:
        num_classes: classes including background (default: from the label's maximum).
        mode: ``"shell"``, ``"fill"`` or ``"mixed"``.
        render_kwargs: ranges for thickness, intensities, blur, bias field and noise.

    Returns:
        float32 image with the label's shape ``(1, H, W, D)`` and its affine.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, num_classes: int | None = None, mode: str = "shell", **render_kwargs):
        RandomizableTransform.__init__(self, prob=1.0)
        if mode not in RENDER_MODES:
            raise ValueError(f"RandShellRender: mode must be one of {RENDER_MODES}, got {mode!r}")
        self.num_classes, self.mode, self.render_kwargs = num_classes, mode, render_kwargs
        self._seed = 0

    def randomize(self, data=None) -> None:
        self._seed = int(self.R.randint(2**31))

    def __call__(self, label: torch.Tensor, randomize: bool = True) -> MetaTensor:
        if randomize:
            self.randomize()
        if label.ndim != 4 or label.shape[0] != 1:
            raise ValueError(f"RandShellRender: expected a (1, H, W, D) label, got shape {tuple(label.shape)}")
        array = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)
        image = render_label(
            array[0], np.random.RandomState(self._seed), self.num_classes, self.mode, **self.render_kwargs
        )
        affine = label.affine if isinstance(label, MetaTensor) else torch.eye(4, dtype=torch.float64)
        return _to_meta(image, affine, torch.float32)


class RandPrimitiveLabel(RandomizableTransform):
    """Make a label patch of random primitive solids (the FDSL baseline; see :mod:`synth_transforms.primitives`).

    Args:
        patch_size: patch size in voxels.
        spacing: voxel size written into the affine (mm).
        primitive_kwargs: ``num_shapes``, ``num_classes``, ``max_overlap``, ``size_range``, ``max_tries``.

    Returns:
        ``MetaTensor`` ``(1, H, W, D)`` int64 label patch.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, patch_size: Sequence[int] | int = (96, 96, 96), spacing: float = 1.5, **primitive_kwargs):
        RandomizableTransform.__init__(self, prob=1.0)
        self.patch_size = tuple(patch_size) if not isinstance(patch_size, int) else (patch_size,) * 3
        self.spacing = float(spacing)
        self.primitive_kwargs = primitive_kwargs
        self._num_classes = int(primitive_kwargs.get("num_classes", NUM_PRIMITIVE_CLASSES))
        primitive_label_map(np.random.RandomState(0), self.patch_size, **{**primitive_kwargs, "num_shapes": 1})

    @property
    def num_classes(self) -> int:
        """Output classes including background."""
        return self._num_classes + 1

    def randomize(self, data=None) -> None:
        pass

    def __call__(self, data=None, randomize: bool = True) -> MetaTensor:
        label = primitive_label_map(self.R, self.patch_size, **self.primitive_kwargs)
        return _to_meta(label, _affine(self.spacing), torch.int64)


class _SynthPair(Randomizable):
    """Label maker + shell renderer, applied in sequence with one random state."""

    label_maker: RandomizableTransform
    renderer: RandShellRender

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.label_maker.set_random_state(state=self.R)
        self.renderer.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:
        pass

    def __call__(self, data=None) -> tuple[MetaTensor, MetaTensor]:
        """Return ``(image, label)``, both ``(1, H, W, D)``."""
        label = self.label_maker()
        return self.renderer(label), label

    @property
    def num_classes(self) -> int:
        """Output classes including background."""
        return self.label_maker.num_classes


class RandAnatomySynth(_SynthPair):
    """Anatomy-informed synthetic pair: :class:`RandAnatomyLabel` then :class:`RandShellRender`.

    Args:
        bank: a :class:`ShapeBank`, a bank path, or None for the default bank.
        patch_size: patch size in voxels.
        mode: rendering mode, ``"shell"``, ``"fill"`` or ``"mixed"``.
        render_kwargs: options of :func:`~synth_transforms.render.render_label` (dict).
        label_kwargs: further options of :class:`RandAnatomyLabel` (organs, anchors, topology, placer options).
    """

    def __init__(
        self,
        bank: ShapeBank | str | os.PathLike | None = None,
        patch_size: Sequence[int] | int = (96, 96, 96),
        mode: str = "shell",
        render_kwargs: Mapping | None = None,
        **label_kwargs,
    ):
        self.label_maker = RandAnatomyLabel(bank, patch_size, **label_kwargs)
        self.renderer = RandShellRender(self.label_maker.num_classes, mode, **(render_kwargs or {}))
        self.set_random_state(0)


class RandPrimitiveSynth(_SynthPair):
    """Primitive-shape (FDSL baseline) pair: :class:`RandPrimitiveLabel` then :class:`RandShellRender`.

    Args:
        patch_size: patch size in voxels.
        mode: rendering mode.
        spacing: voxel size written into the affine.
        render_kwargs: options of :func:`~synth_transforms.render.render_label` (dict).
        primitive_kwargs: options of :func:`~synth_transforms.primitives.primitive_label_map`.
    """

    def __init__(
        self,
        patch_size: Sequence[int] | int = (96, 96, 96),
        mode: str = "shell",
        spacing: float = 1.5,
        render_kwargs: Mapping | None = None,
        **primitive_kwargs,
    ):
        self.label_maker = RandPrimitiveLabel(patch_size, spacing, **primitive_kwargs)
        self.renderer = RandShellRender(self.label_maker.num_classes, mode, **(render_kwargs or {}))
        self.set_random_state(0)


# ---------------------------------------------------------------------- dictionary forms
class _Maker(MapTransform, Randomizable):
    """Dictionary wrapper of an array transform that makes data from its random state alone."""

    def __init__(self, keys: KeysCollection, maker, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.maker = maker

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.maker.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:
        pass

    @property
    def num_classes(self) -> int:
        """Output classes including background."""
        return self.maker.num_classes


class RandAnatomyLabeld(_Maker):
    """Dictionary form of :class:`RandAnatomyLabel`: writes the label patch under ``keys`` (one key).

    Args:
        keys: the label key, e.g. ``"label"``.
        record_key: if set, also store the placement record (as a plain dict) under this key.
        kwargs: :class:`RandAnatomyLabel` arguments.
    """

    def __init__(self, keys: KeysCollection = "label", record_key: str | None = None, **kwargs):
        super().__init__(keys, RandAnatomyLabel(**kwargs))
        if len(self.keys) != 1:
            raise ValueError(f"RandAnatomyLabeld: expected one label key, got {self.keys}")
        self.record_key = record_key

    def __call__(self, data: Mapping[Hashable, object] | None = None) -> dict:
        d = dict(data or {})
        d[self.keys[0]] = self.maker()
        if self.record_key:
            d[self.record_key] = self.maker.last_record.to_dict()
        return d


class RandPrimitiveLabeld(_Maker):
    """Dictionary form of :class:`RandPrimitiveLabel`: writes the label patch under ``keys`` (one key)."""

    def __init__(self, keys: KeysCollection = "label", **kwargs):
        super().__init__(keys, RandPrimitiveLabel(**kwargs))
        if len(self.keys) != 1:
            raise ValueError(f"RandPrimitiveLabeld: expected one label key, got {self.keys}")

    def __call__(self, data: Mapping[Hashable, object] | None = None) -> dict:
        d = dict(data or {})
        d[self.keys[0]] = self.maker()
        return d


class RandShellRenderd(MapTransform, Randomizable):
    """Dictionary form of :class:`RandShellRender`: renders ``label_key`` into ``image_key``.

    Args:
        label_key: key of the ``(1, H, W, D)`` label patch.
        image_key: key the image is written to.
        kwargs: :class:`RandShellRender` arguments (``num_classes``, ``mode``, render ranges).
    """

    def __init__(self, label_key: str = "label", image_key: str = "image", **kwargs):
        MapTransform.__init__(self, [label_key])
        self.label_key, self.image_key = label_key, image_key
        self.renderer = RandShellRender(**kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.renderer.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if self.label_key not in d:
            raise KeyError(f"RandShellRenderd: key {self.label_key!r} not found; keys present: {list(d)}")
        d[self.image_key] = self.renderer(d[self.label_key])
        return d


class _SynthPaird(_Maker):
    def __init__(self, keys: KeysCollection, maker: _SynthPair):
        super().__init__(keys, maker)
        if len(self.keys) != 2:
            raise ValueError(f"{type(self).__name__}: expected keys (image_key, label_key), got {self.keys}")

    def __call__(self, data: Mapping[Hashable, object] | None = None) -> dict:
        d = dict(data or {})
        d[self.keys[0]], d[self.keys[1]] = self.maker()
        return d


class RandAnatomySynthd(_SynthPaird):
    """Make an ``{"image", "label"}`` pair of anatomy-informed synthetic data from nothing but the random state.

    Args:
        keys: ``(image_key, label_key)``, default ``("image", "label")``.
        kwargs: :class:`RandAnatomySynth` arguments (``bank``, ``patch_size``, ``mode``, ``render_kwargs``,
            ``organs``, ``anchors``, ``topology``, ``jitter_scale``, ...).

    Example::

        synth = RandAnatomySynthd(patch_size=(96, 96, 96), mode="shell").set_random_state(seed=0)
        sample = synth({})   # {"image": (1, 96, 96, 96) float32, "label": (1, 96, 96, 96) int64}
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), **kwargs):
        super().__init__(keys, RandAnatomySynth(**kwargs))


class RandPrimitiveSynthd(_SynthPaird):
    """Dictionary form of :class:`RandPrimitiveSynth` (the FDSL baseline); same contract as RandAnatomySynthd."""

    def __init__(self, keys: KeysCollection = ("image", "label"), **kwargs):
        super().__init__(keys, RandPrimitiveSynth(**kwargs))


RandAnatomyLabelD = RandAnatomyLabelDict = RandAnatomyLabeld
RandShellRenderD = RandShellRenderDict = RandShellRenderd
RandPrimitiveLabelD = RandPrimitiveLabelDict = RandPrimitiveLabeld
RandAnatomySynthD = RandAnatomySynthDict = RandAnatomySynthd
RandPrimitiveSynthD = RandPrimitiveSynthDict = RandPrimitiveSynthd
