"""Dictionary forms of the transforms (MONAI ``MapTransform`` wrappers holding the array forms), and aliases."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from ..anchors import AnchorModel
from ..bank import ShapeBank
from ..topology import TopologyGraph
from .array import (
    RandAnatomyLabel,
    RandAnatomySynth,
    RandPrimitiveLabel,
    RandPrimitiveSynth,
    RandShellRender,
    _SharedRandomState,
    _SynthPair,
)
from .options import PlacementOptions, PrimitiveOptions, RenderOptions


class _Maker(_SharedRandomState, MapTransform):
    """Dictionary wrapper of an array transform (``self.maker``) that makes its items from its random state alone.

    ``__call__(data, randomize=False)`` replays the last items exactly, as the array forms do.
    """

    _part_names = ("maker",)

    def __init__(self, keys: KeysCollection, maker, expected: str, count: int):
        MapTransform.__init__(self, keys)
        if len(self.keys) != count:
            raise ValueError(f"{type(self).__name__}: expected {expected}, got keys {self.keys}")
        self.maker = maker

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

    _part_names = ("renderer",)

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
