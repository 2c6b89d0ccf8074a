"""Tests of the index-seeded synthetic dataset (synth_transforms.dataset): workers, ranks, order, epochs."""

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.transforms import Compose, RandFlipd, RandGaussianNoised
from torch.utils.data.distributed import DistributedSampler

from synth_transforms import RandAnatomySynthd, RandPrimitiveSynthd, SyntheticDataset, sample_seed

PATCH = (32, 32, 32)
KEYS = ("image", "label")
LENGTH = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset():
    transform = Compose(
        [
            RandAnatomySynthd(patch_size=PATCH),
            RandFlipd(KEYS, prob=0.5, spatial_axis=0),
            RandGaussianNoised("image", prob=0.5, std=0.05),
        ]
    )
    return SyntheticDataset(transform, LENGTH, seed=3)


@pytest.fixture(scope="module")
def direct(dataset):
    """Each sample fetched on its own, in index order."""
    dataset.set_epoch(0)
    return [dataset[i] for i in range(LENGTH)]


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in KEYS)


def _unbatch(batches) -> list[dict]:
    return [{k: batch[k][j] for k in KEYS} for batch in batches for j in range(len(batch["image"]))]


def test_samples_are_distinct_and_repeatable(dataset, direct):
    assert len(dataset) == LENGTH
    for i in range(LENGTH):
        assert direct[i]["image"].shape == (1, *PATCH)
        for j in range(i):
            assert not _same(direct[i], direct[j])
    for i in [4, 0, 5, 2, 2, 1, 3]:  # any order, repeats included
        assert _same(dataset[i], direct[i])
    assert _same(dataset[-1], direct[LENGTH - 1])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_workers(dataset, direct, num_workers):
    loader = DataLoader(dataset, batch_size=2, num_workers=num_workers)
    loaded = _unbatch(loader)
    assert len(loaded) == LENGTH
    for i in range(LENGTH):
        assert _same(loaded[i], direct[i]), i


def test_dataloader_order(dataset, direct):
    order = [3, 1, 5, 0, 4, 2]
    loaded = _unbatch(DataLoader(dataset, batch_size=1, sampler=order, num_workers=2))
    for position, index in enumerate(order):
        assert _same(loaded[position], direct[index])


def test_two_ranks(dataset, direct):
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        indices = list(sampler)
        loaded = _unbatch(DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=0))
        assert len(loaded) == len(indices) == LENGTH // 2
        for sample, index in zip(loaded, indices, strict=True):
            assert _same(sample, direct[index]), (rank, index)
        seen.append(set(indices))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(LENGTH))


def test_set_epoch_changes_samples(dataset, direct):
    dataset.set_epoch(1)
    try:
        later = [dataset[i] for i in range(LENGTH)]
        assert not any(_same(a, b) for a, b in zip(later, direct, strict=True))
        assert _same(dataset[2], later[2])
    finally:
        dataset.set_epoch(0)
    assert _same(dataset[2], direct[2])


def test_seed_and_epoch_at_construction(dataset, direct):
    other_seed = SyntheticDataset(dataset.transform, LENGTH, seed=4)
    assert not _same(other_seed[0], direct[0])
    same = SyntheticDataset(dataset.transform, LENGTH, seed=3, epoch=0)
    assert _same(same[1], direct[1])
    dataset.set_epoch(2)
    try:
        at_two = dataset[1]
    finally:
        dataset.set_epoch(0)
    assert _same(SyntheticDataset(dataset.transform, LENGTH, seed=3, epoch=2)[1], at_two)


def test_independent_of_global_generators(dataset, direct):
    np.random.seed(123)
    torch.manual_seed(123)
    assert _same(dataset[3], direct[3])


def test_primitive_dataset():
    ds = SyntheticDataset(RandPrimitiveSynthd(patch_size=PATCH), 4, seed=0)
    direct = [ds[i] for i in range(4)]
    loaded = _unbatch(DataLoader(ds, batch_size=2, num_workers=2))
    assert all(_same(a, b) for a, b in zip(loaded, direct, strict=True))
    assert int(direct[0]["label"].max()) <= 32


def test_sample_is_the_transform_seeded_from_seed_epoch_index():
    """The contract in one line: sample i = transform.set_random_state(sample_seed(seed, epoch, i))({})."""
    ds = SyntheticDataset(RandPrimitiveSynthd(patch_size=PATCH), 4, seed=2, epoch=1)
    fresh = RandPrimitiveSynthd(patch_size=PATCH)
    for i in (3, 0):
        assert _same(ds[i], fresh.set_random_state(seed=sample_seed(2, 1, i))({}))
        assert _same(ds.transform({}, randomize=False), ds[i])  # the transform replays the sample it just made


def test_sample_seed():
    seeds = {sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}
    assert len(seeds) == 3 * 3 * 50
    assert sample_seed(1, 2, 3) == sample_seed(1, 2, 3) and 0 <= sample_seed(1, 2, 3) < 2**32


@pytest.mark.parametrize("length", [0, -3])
def test_bad_length(dataset, length):
    with pytest.raises(ValueError, match="length"):
        SyntheticDataset(dataset.transform, length)


def test_transform_must_be_randomizable():
    with pytest.raises(TypeError, match="Randomizable"):
        SyntheticDataset(lambda d: d, 4)


def test_index_out_of_range(dataset):
    for index in (LENGTH, -LENGTH - 1):
        with pytest.raises(IndexError, match=str(index)):
            dataset[index]


def test_pool_size_limits_the_data_to_n_samples():
    """pool_size=N: the stream cycles through N fixed samples across epochs, whatever the epoch length."""
    pooled = SyntheticDataset(RandPrimitiveSynthd(patch_size=PATCH), length=3, seed=5, pool_size=4)
    stream = []
    for epoch in range(3):  # 9 items over epochs of 3: pool members 0 1 2 | 3 0 1 | 2 3 0
        pooled.set_epoch(epoch)
        stream += [pooled[i] for i in range(3)]
    members = [(e * 3 + i) % 4 for e in range(3) for i in range(3)]
    for a, member_a in enumerate(members):
        for b, member_b in enumerate(members[:a]):
            assert _same(stream[a], stream[b]) == (member_a == member_b)
    # a pool member is the sample an unpooled dataset makes at epoch 0 for that index
    fresh = SyntheticDataset(RandPrimitiveSynthd(patch_size=PATCH), length=4, seed=5)
    assert _same(stream[3], fresh[3]) and _same(stream[4], fresh[0])


def test_pool_size_and_length_are_checked():
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=r"^SyntheticDataset: pool_size must be an integer >= 1"):
            SyntheticDataset(RandPrimitiveSynthd(patch_size=PATCH), length=3, pool_size=bad)
    with pytest.raises(ValueError, match=r"^SyntheticDataset: length must be an integer >= 1, got 0"):
        SyntheticDataset(RandPrimitiveSynthd(patch_size=PATCH), length=0)
