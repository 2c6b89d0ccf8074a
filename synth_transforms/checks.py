"""Input checks as MONAI transforms: stop a run early when the data does not match the config."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

__all__ = ["CheckLabelClasses", "CheckLabelClassesd", "CheckLabelClassesD", "CheckLabelClassesDict"]


class CheckLabelClasses(Transform):
    """Check that a label map only holds the class ids ``0 .. num_classes - 1``; pass it through unchanged.

    Args:
        num_classes: number of classes the network predicts, background included.

    Raises:
        ValueError: on the first label map with other values (ids too large, negative or not integers); the
            message names the file (from the MetaTensor's ``filename_or_obj``) and the unexpected ids.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, num_classes: int) -> None:
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
        self.num_classes = int(num_classes)

    def __call__(self, label: NdarrayOrTensor, name: str | None = None) -> NdarrayOrTensor:
        """Return ``label`` unchanged after checking its values; ``name`` overrides the file name in errors."""
        data = label.as_tensor() if isinstance(label, MetaTensor) else label
        values = torch.unique(data if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data))).double()
        bad_mask = (values != torch.round(values)) | (values < 0) | (values >= self.num_classes)
        if bool(bad_mask.any()):
            bad = values[bad_mask][:21].tolist()
            if name is None and isinstance(label, MetaTensor):
                name = label.meta.get("filename_or_obj")
            shown = ", ".join(f"{int(v)}" if v == int(v) else f"{v:g}" for v in bad[:20])
            raise ValueError(
                f"Label map {name or '(no file name)'} has class ids [{shown}{', ...' if len(bad) > 20 else ''}] "
                f"that the config does not expect: num_classes={self.num_classes} allows 0..{self.num_classes - 1}. "
                "Set num_classes to match the dataset (background included) or fix the label file."
            )
        return label


class CheckLabelClassesd(MapTransform):
    """Dictionary-based :class:`CheckLabelClasses`: checks ``data[key]`` for each key, returns the data unchanged.

    Args:
        keys: keys of the label maps to check.
        num_classes: number of classes, background included.
        allow_missing_keys: do not raise when a key is absent.
    """

    backend = CheckLabelClasses.backend

    def __init__(self, keys: KeysCollection, num_classes: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckLabelClasses(num_classes)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            name = None
            meta = d.get(f"{key}_meta_dict")
            if not isinstance(d[key], MetaTensor) and isinstance(meta, Mapping):
                name = meta.get("filename_or_obj")
            d[key] = self.checker(d[key], name=name)
        return d


CheckLabelClassesD = CheckLabelClassesDict = CheckLabelClassesd
