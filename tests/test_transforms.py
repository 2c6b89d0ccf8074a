"""Tests of the MONAI transforms (synth_transforms.transforms): output contract, randomness, MONAI integration."""

import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, RandAffined, RandFlipd, Randomizable

import synth_transforms as st
from synth_transforms import (
    DEFAULT_BANK_PATH,
    AnchorModel,
    RandAnatomyLabeld,
    RandAnatomySynth,
    RandAnatomySynthd,
    RandPrimitiveLabeld,
    RandPrimitiveSynthd,
    RandShellRender,
    RandShellRenderd,
    TopologyGraph,
    contour_shell,
    load_bank,
)

PATCH = (64, 64, 64)
KEYS = ("image", "label")
CLEAN = {"blur_sigma": (0.0, 0.0), "bias_strength": (0.0, 0.0), "noise_std": (0.0, 0.0)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def anatomy():
    return RandAnatomySynthd(patch_size=PATCH)


@pytest.fixture(scope="module")
def primitive():
    return RandPrimitiveSynthd(patch_size=PATCH)


def _equal(a: dict, b: dict, keys=KEYS) -> bool:
    return all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in keys)


def _check_pair(sample: dict, num_classes: int, shape=PATCH) -> None:
    image, label = sample["image"], sample["label"]
    assert isinstance(image, MetaTensor) and isinstance(label, MetaTensor)
    assert image.shape == label.shape == (1, *shape)
    assert image.dtype == torch.float32 and label.dtype == torch.int64
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert int(label.min()) >= 0 and int(label.max()) < num_classes
    np.testing.assert_allclose(np.diag(label.affine.numpy())[:3], 1.5)
    assert torch.equal(image.affine, label.affine)


# ---------------------------------------------------------------------------------------------- output contract


def test_anatomy_pair_contract(anatomy):
    anatomy.set_random_state(seed=0)
    assert anatomy.num_classes == 22
    for _ in range(3):
        sample = anatomy({"name": "kept"})
        _check_pair(sample, 22)
        assert sample["name"] == "kept" and (sample["label"] > 0).sum() > 0.05 * np.prod(PATCH)
        record = anatomy.maker.label_maker.last_record
        np.testing.assert_allclose(sample["label"].affine[:3, 3].numpy(), record.origin_mm)


def test_primitive_pair_contract(primitive):
    primitive.set_random_state(seed=0)
    assert primitive.num_classes == 33
    seen = set()
    for _ in range(3):
        sample = primitive({})
        _check_pair(sample, 33)
        seen |= set(torch.unique(sample["label"]).tolist())
    assert max(seen) > 21  # the primitive classes go beyond the anatomy's


@pytest.mark.parametrize("factory", [RandAnatomySynthd, RandPrimitiveSynthd], ids=["anatomy", "primitive"])
def test_non_cubic_patch(factory):
    sample = factory(patch_size=(32, 48, 40)).set_random_state(seed=1)({})
    _check_pair(sample, 33, (32, 48, 40))


def test_array_forms():
    synth = RandAnatomySynth(patch_size=(48, 48, 48)).set_random_state(seed=2)
    image, label = synth()
    _check_pair({"image": image, "label": label}, 22, (48, 48, 48))
    rendered = RandShellRender(22, mode="fill", **CLEAN).set_random_state(seed=0)(label)
    assert rendered.dtype == torch.float32 and torch.equal(rendered.affine, label.affine)
    assert torch.equal(rendered > 0, label > 0)
    plain = RandShellRender(22, **CLEAN).set_random_state(seed=0)(label.as_tensor())  # a plain tensor works too
    assert plain.shape == label.shape


def test_shells_sit_on_the_label_boundaries(anatomy):
    clean = RandAnatomySynthd(patch_size=(48, 48, 48), render_kwargs={**CLEAN, "thickness": (1, 1)})
    sample = clean.set_random_state(seed=3)({})
    assert torch.equal(sample["image"][0] > 0, contour_shell(sample["label"][0].as_tensor(), 1))


def test_record_key_stores_a_plain_record():
    maker = RandAnatomyLabeld(keys="label", record_key="record", patch_size=(48, 48, 48)).set_random_state(seed=4)
    sample = maker({})
    record = json.loads(json.dumps(sample["record"]))
    assert record["placed"] and set(record) >= {"origin_mm", "spacing", "placed", "skipped", "unreachable", "donor"}
    counts = torch.bincount(sample["label"].flatten(), minlength=22)
    for p in record["placed"]:
        assert counts[p["class_id"]] == p["voxels"]
    assert "record" not in RandAnatomyLabeld(patch_size=(48, 48, 48)).set_random_state(seed=4)({})


def test_label_and_render_pieces_compose():
    pipeline = Compose(
        [RandAnatomyLabeld(keys="lab", patch_size=(48, 48, 48)), RandShellRenderd(label_key="lab", image_key="img")]
    ).set_random_state(seed=5)
    sample = pipeline({})
    assert sample["img"].shape == sample["lab"].shape == (1, 48, 48, 48)
    assert torch.equal(sample["img"].affine, sample["lab"].affine)
    primitive = RandPrimitiveLabeld(keys="label", patch_size=(48, 48, 48)).set_random_state(seed=5)
    assert primitive({})["label"].dtype == torch.int64


def test_organ_subset_and_own_models(tmp_path):
    bank = load_bank()
    anchors, graph = AnchorModel.from_bank(bank), TopologyGraph.from_bank(bank)
    anchors.save(tmp_path / "anchors.json")
    graph.save(tmp_path / "topology.json")
    organs = ["liver", "spleen", "kidney_left", "kidney_right", "stomach"]
    # the JSON files round positions to 1 um, so compare with the models as read back
    anchors = AnchorModel.load(tmp_path / "anchors.json", bank.organs)
    graph = TopologyGraph.load(tmp_path / "topology.json", bank.organs)
    by_object = RandAnatomySynthd(patch_size=(48, 48, 48), organs=organs, anchors=anchors, topology=graph)
    by_path = RandAnatomySynthd(
        bank=str(DEFAULT_BANK_PATH),
        patch_size=(48, 48, 48),
        organs=organs,
        anchors=str(tmp_path / "anchors.json"),
        topology=str(tmp_path / "topology.json"),
    )
    allowed = {0} | {bank.class_id(o) for o in organs}
    for seed in range(3):
        a, b = by_object.set_random_state(seed=seed)({}), by_path.set_random_state(seed=seed)({})
        assert _equal(a, b)
        assert set(torch.unique(a["label"]).tolist()) <= allowed


# ------------------------------------------------------------------------------------------------------ randomness


@pytest.mark.parametrize("name", ["anatomy", "primitive"])
def test_set_random_state_returns_self_and_reproduces(name, request):
    synth = request.getfixturevalue(name)
    assert synth.set_random_state(seed=7) is synth
    first, second = synth({}), synth({})
    assert not _equal(first, second)  # the stream moves on
    synth.set_random_state(seed=7)
    assert _equal(synth({}), first) and _equal(synth({}), second)
    synth.set_random_state(state=np.random.RandomState(7))
    assert _equal(synth({}), first)
    assert not _equal(synth.set_random_state(seed=8)({}), first)


@pytest.mark.parametrize("name", ["anatomy", "primitive"])
def test_global_generators_neither_used_nor_touched(name, request):
    synth = request.getfixturevalue(name)
    outputs = []
    for global_seed in (0, 1):
        np.random.seed(global_seed)
        torch.manual_seed(global_seed)
        numpy_state, torch_state = np.random.get_state(), torch.get_rng_state()
        outputs.append(synth.set_random_state(seed=11)({}))
        assert np.array_equal(np.random.get_state()[1], numpy_state[1])
        assert torch.equal(torch.get_rng_state(), torch_state)
    assert _equal(*outputs)


def test_inside_compose_with_monai_augmentations():
    def pipeline():
        return Compose(
            [
                RandAnatomySynthd(patch_size=(48, 48, 48), render_kwargs=CLEAN),
                RandFlipd(KEYS, prob=0.5, spatial_axis=0),
                RandFlipd(KEYS, prob=0.5, spatial_axis=2),
                RandAffined(KEYS, prob=1.0, rotate_range=(0.3, 0.3, 0.3), mode=("bilinear", "nearest")),
            ]
        )

    first = [pipeline().set_random_state(seed=s)({}) for s in range(3)]
    again = [pipeline().set_random_state(seed=s)({}) for s in range(3)]
    for a, b in zip(first, again, strict=True):
        assert _equal(a, b)
        assert a["image"].shape == a["label"].shape == (1, 48, 48, 48)
        # RandAffined hands back float32 labels (MONAI's choice); nearest keeps them whole class ids
        assert torch.equal(a["label"], a["label"].round()) and set(torch.unique(a["label"]).tolist()) <= set(range(22))
    assert not _equal(first[0], first[1])
    # flips alone keep every shell voxel on a label boundary: image and label were flipped together
    flipped = Compose(
        [
            RandAnatomySynthd(patch_size=(48, 48, 48), render_kwargs={**CLEAN, "thickness": (1, 1)}),
            RandFlipd(KEYS, prob=1.0, spatial_axis=(0, 1)),
        ]
    ).set_random_state(seed=0)({})
    assert torch.equal(flipped["image"][0] > 0, contour_shell(flipped["label"][0].as_tensor(), 1))


# ------------------------------------------------------------------------------------------------- MONAI bundles


@pytest.mark.parametrize(
    ("target", "num_classes"),
    [("synth_transforms.RandAnatomySynthd", 22), ("synth_transforms.RandPrimitiveSynthd", 33)],
)
def test_instantiable_from_bundle_config(target, num_classes):
    config = {
        "synth": {"_target_": target, "patch_size": [48, 48, 48], "mode": "mixed"},
        "transforms": {
            "_target_": "Compose",
            "transforms": ["@synth", {"_target_": "RandFlipd", "keys": ["image", "label"], "prob": 0.5}],
        },
        "num_classes": "$@synth.num_classes",
    }
    parser = ConfigParser(config)
    transforms = parser.get_parsed_content("transforms")
    assert isinstance(transforms, Compose) and isinstance(transforms.transforms[0], Randomizable)
    assert parser.get_parsed_content("num_classes") == num_classes
    _check_pair(transforms.set_random_state(seed=0)({}), num_classes, (48, 48, 48))


def test_aliases():
    for name in ["RandAnatomyLabel", "RandShellRender", "RandPrimitiveLabel", "RandAnatomySynth", "RandPrimitiveSynth"]:
        assert getattr(st, f"{name}D") is getattr(st, f"{name}Dict") is getattr(st, f"{name}d"), name


# ---------------------------------------------------------------------------------------------------------- errors


def test_dictionary_errors():
    renderer = RandShellRenderd(label_key="seg")
    with pytest.raises(KeyError, match="'seg'"):
        renderer({"label": torch.zeros(1, 8, 8, 8, dtype=torch.int64)})
    with pytest.raises(ValueError, match="image_key, label_key"):
        RandAnatomySynthd(keys="image", patch_size=(48, 48, 48))
    with pytest.raises(ValueError, match="image_key, label_key"):
        RandPrimitiveSynthd(keys=("image", "label", "extra"), patch_size=(48, 48, 48))
    with pytest.raises(ValueError, match="one label key"):
        RandAnatomyLabeld(keys=("a", "b"), patch_size=(48, 48, 48))
    with pytest.raises(ValueError, match="one label key"):
        RandPrimitiveLabeld(keys=("a", "b"), patch_size=(48, 48, 48))


def test_argument_errors():
    with pytest.raises(ValueError, match="mode"):
        RandShellRender(mode="outline")
    with pytest.raises(ValueError, match=r"\(1, H, W, D\)"):
        RandShellRender(22)(torch.zeros(2, 8, 8, 8, dtype=torch.int64))
    with pytest.raises(KeyError, match="appendix"):
        RandAnatomySynthd(patch_size=(48, 48, 48), organs=["liver", "appendix"])
    with pytest.raises(ValueError, match="patch_size"):
        RandAnatomySynthd(patch_size=(48, 48))
    with pytest.raises(FileNotFoundError, match="no_bank.npz"):
        RandAnatomySynthd(bank="no_bank.npz")
