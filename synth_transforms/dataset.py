"""SyntheticDataset: a fixed-length, map-style dataset whose sample ``i`` is a function of ``(seed, epoch, i)``.

Before each item the transform's random state is reset from ``(seed, epoch, index)``, so a sample does not depend on
which DataLoader worker or DDP rank makes it, nor on the order items are asked for. ``set_epoch`` gives fresh
samples each epoch (call it from the training loop, as with ``DistributedSampler.set_epoch``).

``pool_size=N`` limits the data to N distinct samples (the data-volume knob of scaling studies): item ``i`` of epoch
``e`` is pool member ``(e * length + i) mod N``, whose seed depends on ``(seed, member)`` only, so the same N samples
come back, in the same order, however the epochs cut the stream.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from monai.transforms import Randomizable
from torch.utils.data import Dataset

from ._args import check_positive_int

__all__ = ["SyntheticDataset", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample, mixed from ``(seed, epoch, index)`` with numpy's SeedSequence (no collisions in practice)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


class SyntheticDataset(Dataset):
    """Map-style dataset of synthetic samples.

    Args:
        transform: a callable taking a dict (``{}``) and returning the sample, usually a ``monai.transforms.Compose``
            that starts with ``RandAnatomySynthd`` or ``RandPrimitiveSynthd``. Its random state (and that of every
            random transform inside a ``Compose``) is reset before each item.
        length: number of samples per epoch.
        seed: base seed.
        epoch: starting epoch.
        pool_size: if given, the number of distinct samples: the stream cycles through a fixed pool of that many
            (default None: a fresh sample for every epoch and index).

    Example::

        ds = SyntheticDataset(Compose([RandAnatomySynthd(), RandFlipd(("image", "label"), prob=0.5)]), 1000, seed=0)
        loader = monai.data.DataLoader(ds, batch_size=2, num_workers=2)
    """

    def __init__(self, transform: Callable, length: int, seed: int = 0, epoch: int = 0, pool_size: int | None = None):
        length = check_positive_int(length, "length", "SyntheticDataset")
        if pool_size is not None:
            pool_size = check_positive_int(pool_size, "pool_size", "SyntheticDataset")
        if not isinstance(transform, Randomizable):
            raise TypeError(
                f"SyntheticDataset: transform must be a MONAI Randomizable (e.g. a Compose), got {type(transform)}"
            )
        self.transform = transform
        self.length = length
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.pool_size = pool_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not -self.length <= index < self.length:
            raise IndexError(f"SyntheticDataset: index {index} out of range for length {self.length}")
        index %= self.length
        self.transform.set_random_state(seed=self.item_seed(index))
        return self.transform({})

    def item_seed(self, index: int) -> int:
        """The seed item ``index`` of the current epoch is made from."""
        if self.pool_size is None:
            return sample_seed(self.seed, self.epoch, index)
        return sample_seed(self.seed, 0, (self.epoch * self.length + index) % self.pool_size)
