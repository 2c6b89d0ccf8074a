"""Tests of the MONAI transforms (synth_transforms.transforms): output contract, randomness, MONAI integration."""

import inspect
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
    OrganPlacer,
    RandAnatomyLabel,
    RandAnatomyLabeld,
    RandAnatomySynth,
    RandAnatomySynthd,
    RandPrimitiveLabel,
    RandPrimitiveLabeld,
    RandPrimitiveSynth,
    RandPrimitiveSynthd,
    RandShellRender,
    RandShellRenderd,
    TopologyGraph,
    contour_shell,
    load_bank,
    primitive_label_map,
    render_label,
)
from synth_transforms.transforms import PlacementOptions, PrimitiveOptions, RenderOptions

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
        record = anatomy.label_maker.last_record
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
    rendered = RandShellRender(22, mode="fill", render_options=CLEAN).set_random_state(seed=0)(label)
    assert rendered.dtype == torch.float32 and torch.equal(rendered.affine, label.affine)
    assert torch.equal(rendered > 0, label > 0)
    plain = RandShellRender(22, render_options=CLEAN).set_random_state(seed=0)(
        label.as_tensor()
    )  # a plain tensor works too
    assert plain.shape == label.shape


def test_shells_sit_on_the_label_boundaries(anatomy):
    clean = RandAnatomySynthd(patch_size=(48, 48, 48), render_options={**CLEAN, "thickness": (1, 1)})
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
        [RandAnatomyLabeld(keys="lab", patch_size=(48, 48, 48)), RandShellRenderd(keys="lab", image_key="img")]
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
                RandAnatomySynthd(patch_size=(48, 48, 48), render_options=CLEAN),
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
            RandAnatomySynthd(patch_size=(48, 48, 48), render_options={**CLEAN, "thickness": (1, 1)}),
            RandFlipd(KEYS, prob=1.0, spatial_axis=(0, 1)),
        ]
    ).set_random_state(seed=0)({})
    assert torch.equal(flipped["image"][0] > 0, contour_shell(flipped["label"][0].as_tensor(), 1))


# ------------------------------------------------------------------------------------------------ random contract


def _draw_elsewhere(transform) -> None:
    """Move the transform's random state on, so that a replay cannot come from the state itself."""
    transform.R.uniform(size=5)


@pytest.mark.parametrize("factory", [RandAnatomyLabel, RandPrimitiveLabel], ids=["anatomy", "primitive"])
def test_label_makers_replay_with_randomize_false(factory):
    maker = factory(patch_size=(32, 40, 32)).set_random_state(seed=9)
    first = maker()
    record = maker.last_record.to_dict() if factory is RandAnatomyLabel else None
    _draw_elsewhere(maker)
    replay = maker(randomize=False)
    assert torch.equal(replay.as_tensor(), first.as_tensor()) and torch.equal(replay.affine, first.affine)
    if record is not None:
        assert maker.last_record.to_dict() == record
    fresh = maker()
    assert not torch.equal(fresh.as_tensor(), first.as_tensor())
    maker.set_random_state(seed=9)
    assert torch.equal(maker().as_tensor(), first.as_tensor())  # randomize() alone decides the sample


def test_renderer_replays_with_randomize_false():
    label = RandPrimitiveLabel(patch_size=32).set_random_state(seed=1)()
    renderer = RandShellRender(33).set_random_state(seed=2)
    first = renderer(label)
    _draw_elsewhere(renderer)
    assert torch.equal(renderer(label, randomize=False), first)
    assert not torch.equal(renderer(label), first)


def test_randomize_false_before_any_draw_is_refused():
    for name, call in [
        ("RandAnatomyLabel", lambda: RandAnatomyLabel(patch_size=32)(randomize=False)),
        ("RandPrimitiveLabel", lambda: RandPrimitiveLabel(patch_size=32)(randomize=False)),
        ("RandShellRender", lambda: RandShellRender(3)(torch.zeros(1, 8, 8, 8, dtype=torch.int64), randomize=False)),
        ("RandPrimitiveLabel", lambda: RandPrimitiveLabeld(patch_size=32)({}, randomize=False)),
    ]:
        with pytest.raises(RuntimeError, match=f"{name}: randomize\\(\\) was never called"):
            call()


@pytest.mark.parametrize("name", ["anatomy", "primitive"])
def test_pair_dictionary_forms_replay_with_randomize_false(name, request):
    synth = request.getfixturevalue(name)
    first = synth.set_random_state(seed=12)({"name": "kept"})
    _draw_elsewhere(synth)
    replay = synth({}, randomize=False)
    assert _equal(replay, first) and torch.equal(replay["image"].affine, first["image"].affine)
    fresh = synth({})
    assert not _equal(fresh, first)
    image, label = synth.maker(randomize=False)  # the array pair it wraps replays the same (last) pair
    assert torch.equal(image, fresh["image"]) and torch.equal(label, fresh["label"])


def test_piece_dictionary_forms_replay_with_randomize_false():
    maker = RandAnatomyLabeld(keys="lab", record_key="record", patch_size=32)
    pipeline = [maker, RandShellRenderd(keys="lab", image_key="img", num_classes=22)]
    for transform in pipeline:
        transform.set_random_state(seed=6)
    first = pipeline[1](maker({}))
    replay = pipeline[1](maker({}, randomize=False), randomize=False)
    assert _equal(replay, first, ("lab", "img")) and replay["record"] == first["record"]
    primitive = RandPrimitiveLabeld(patch_size=32).set_random_state(seed=6)
    label = primitive({})["label"]
    assert torch.equal(primitive({}, randomize=False)["label"], label)


def test_pair_label_is_its_label_makers_label_at_the_same_seed():
    """One stream: the pair's label maker draws first, so it makes the label the maker alone makes."""
    pair, alone = RandPrimitiveSynth(patch_size=32), RandPrimitiveLabel(patch_size=32)
    for seed in (4, 5):
        assert torch.equal(pair.set_random_state(seed=seed)()[1], alone.set_random_state(seed=seed)())


def test_one_random_state_is_shared_with_the_inner_transforms(anatomy):
    assert anatomy.set_random_state(seed=1) is anatomy
    assert anatomy.maker.R is anatomy.R
    assert anatomy.label_maker.R is anatomy.R and anatomy.renderer.R is anatomy.R
    renderer = RandShellRenderd(num_classes=5)
    assert renderer.set_random_state(state=np.random.RandomState(0)) is renderer and renderer.renderer.R is renderer.R
    assert renderer.num_classes == 5 and RandShellRenderd().num_classes is None
    assert anatomy.num_classes == anatomy.maker.num_classes == anatomy.label_maker.num_classes == 22
    assert RandPrimitiveLabeld(patch_size=32, primitive_options={"num_classes": 4}).num_classes == 5


# ----------------------------------------------------------------------------------------- options, keys, access


@pytest.mark.parametrize(
    ("options", "engine", "skip"),
    [
        (
            PlacementOptions,
            OrganPlacer.__init__,
            {"self", "bank", "anchors", "graph", "organs", "patch_size", "observers"},
        ),
        (RenderOptions, render_label, {"label", "rng", "num_classes", "mode"}),
        (PrimitiveOptions, primitive_label_map, {"rng", "patch_size"}),
    ],
)
def test_options_mirror_the_engine_defaults(options, engine, skip):
    engine_defaults = {k: p.default for k, p in inspect.signature(engine).parameters.items() if k not in skip}
    assert {f: getattr(options(), f) for f in engine_defaults} == engine_defaults
    assert set(options.__dataclass_fields__) == set(engine_defaults)


def test_options_as_dataclass_or_mapping():
    by_class = RandPrimitiveSynthd(
        patch_size=32,
        primitive_options=PrimitiveOptions(num_shapes=(2, 4), num_classes=5),
        render_options=RenderOptions(thickness=1, noise_std=(0.0, 0.0)),
    ).set_random_state(seed=3)
    by_mapping = RandPrimitiveSynthd(  # what a bundle config gives: plain dicts, lists for tuples
        patch_size=[32, 32, 32],
        primitive_options={"num_shapes": [2, 4], "num_classes": 5},
        render_options={"thickness": 1, "noise_std": [0.0, 0.0]},
    ).set_random_state(seed=3)
    assert by_mapping.label_maker.primitive_options == by_class.label_maker.primitive_options
    assert by_mapping.renderer.render_options == by_class.renderer.render_options
    a, b = by_class({}), by_mapping({})
    assert _equal(a, b) and int(a["label"].max()) <= 5
    anatomy = RandAnatomyLabel(patch_size=32, placement_options={"jitter_scale": 0.0, "max_tries": 2})
    assert anatomy.placement_options == PlacementOptions(jitter_scale=0.0, max_tries=2)
    assert anatomy.placer.jitter_scale == 0.0 and anatomy.placer.max_tries == 2


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="placement_options has no option 'jiter_scale'; its options are: jitter"):
        RandAnatomySynthd(patch_size=32, placement_options={"jiter_scale": 0.1})
    with pytest.raises(ValueError, match="render_options must be a RenderOptions, a mapping of its fields or None"):
        RandShellRender(render_options=0.5)
    with pytest.raises(ValueError, match="max_tries"):
        RandAnatomyLabel(patch_size=32, placement_options=PlacementOptions(max_tries=0))
    with pytest.raises(ValueError, match="RandPrimitiveLabel: num_classes must be an integer in 1..32, got 40"):
        RandPrimitiveSynthd(patch_size=32, primitive_options={"num_classes": 40})
    with pytest.raises(ValueError, match="RandPrimitiveLabel: patch_size"):
        RandPrimitiveLabel(patch_size=(32, 32))


def test_keys_name_the_items_made_or_read():
    pair = RandPrimitiveSynthd(keys=("img", "seg"), patch_size=32).set_random_state(seed=0)({"other": 1})
    assert set(pair) == {"img", "seg", "other"}
    assert pair["img"].dtype == torch.float32 and pair["seg"].dtype == torch.int64
    rendered = RandShellRenderd(keys="seg", image_key="picture").set_random_state(seed=0)({"seg": pair["seg"]})
    assert rendered["picture"].shape == pair["seg"].shape
    missing = RandShellRenderd(keys="seg", allow_missing_keys=True)
    assert missing({"label": pair["seg"]}) == {"label": pair["seg"]}
    with pytest.raises(ValueError, match="one label key"):
        RandShellRenderd(keys=("a", "b"))


def test_public_accessors(anatomy, primitive):
    assert anatomy.label_maker is anatomy.maker.label_maker and isinstance(anatomy.label_maker, RandAnatomyLabel)
    assert anatomy.renderer is anatomy.maker.renderer and isinstance(anatomy.renderer, RandShellRender)
    assert isinstance(primitive.label_maker, RandPrimitiveLabel) and primitive.renderer.num_classes == 33
    labeld = RandAnatomyLabeld(bank=anatomy.label_maker.bank, patch_size=32)
    assert labeld.label_maker is labeld.maker and isinstance(labeld.label_maker, RandAnatomyLabel)
    assert isinstance(RandPrimitiveLabeld(patch_size=32).label_maker, RandPrimitiveLabel)
    assert RandShellRenderd(mode="fill").renderer.mode == "fill"


# ------------------------------------------------------------------------------------------------- MONAI bundles


@pytest.mark.parametrize(
    ("target", "num_classes"),
    [("synth_transforms.RandAnatomySynthd", 22), ("synth_transforms.RandPrimitiveSynthd", 33)],
)
def test_instantiable_from_bundle_config(target, num_classes):
    config = {
        "synth": {
            "_target_": target,
            "keys": ["image", "label"],
            "patch_size": [48, 48, 48],
            "mode": "mixed",
            "render_options": {"thickness": [1, 2], "noise_std": [0.0, 0.02]},
        },
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
    renderer = RandShellRenderd(keys="seg")
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


def test_bad_render_option_fails_at_construction():
    """A bad render option is refused when the transform is built, naming the transform, not at the first sample."""
    with pytest.raises(ValueError, match=r"^RandShellRender: noise_std must be a pair"):
        RandShellRender(render_options={"noise_std": (0.2, 0.1)})
    with pytest.raises(ValueError, match=r"^RandShellRender: thickness must be"):
        RandShellRender(render_options={"thickness": (0, 2)})


def test_patch_centres_stay_inside_the_donors_field_of_view():
    """Where a donor's field of view cut its organs, RandAnatomyLabel keeps the patch (and a margin) inside it."""
    maker = RandAnatomyLabel(patch_size=PATCH).set_random_state(seed=0)
    half = (np.asarray(PATCH) - 1) / 2 * maker.bank.spacing
    checked = 0
    for _ in range(40):
        maker.randomize()
        low, high = maker.placer.field_of_view[maker._donor]
        centre = maker._center
        assert np.all(centre - half >= low) and np.all(centre + half <= high)
        checked += int(np.isfinite(high).any())
    assert checked > 0
