"""Tests of the validation run (synth_transforms.validation): generation, audit, report text."""

import json

import numpy as np
import pytest
import torch

from synth_transforms import (
    RandAnatomyLabel,
    RandAnatomyLabeld,
    RandAnatomySynth,
    RandAnatomySynthd,
    RandPrimitiveSynthd,
    SyntheticDataset,
    TopologyGraph,
    load_bank,
)
from synth_transforms.dataset import sample_seed
from synth_transforms.validation import _label_maker, format_report, plausibility_report

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_audit_catches_a_placer_that_ignores_the_graph():
    """The report must be able to fail: a placer that writes over everything breaks disjointness."""
    maker = RandAnatomyLabel(patch_size=(48, 48, 48), placement_options={"use_topology": False})
    report = plausibility_report(maker, n=30, seed=0)
    assert report["checks"]["disjoint_overlap_voxels"]["value"] > 0
    assert not report["ok"]
    assert "FAIL" in format_report(report)


def test_audit_measures_inside_children():
    bank = load_bank()
    graph = TopologyGraph.from_bank(bank, overrides=[("portal_vein_and_splenic_vein", "inside", "liver")])
    maker = RandAnatomyLabel(bank, patch_size=(48, 48, 48), topology=graph, center_organs=["liver"])
    report = plausibility_report(maker, n=40, seed=1, max_skip_rate=None)  # skip rates: their own test
    row = report["inside"]["portal_vein_and_splenic_vein"]
    assert row["placed_with_parent"] > 0
    assert row["fraction_min"] >= maker.placer.min_inside_fraction
    assert report["overlap"]["inside_overwritten_voxels"] > 0
    assert report["ok"], format_report(report)


def test_audit_leaves_the_callers_transform_untouched():
    maker = RandAnatomyLabel(patch_size=(32, 32, 32)).set_random_state(seed=7)
    state = maker.R.get_state()
    first = plausibility_report(maker, n=2)
    assert maker.placer.observers == [] and maker.last_record is None
    assert np.array_equal(maker.R.get_state()[1], state[1]) and maker.R.get_state()[2] == state[2]
    assert json.dumps(plausibility_report(maker, n=2)) == json.dumps(first)  # the same seed, the same report


def test_report_labels_are_the_synthd_labels_of_the_same_seed():
    maker = RandAnatomyLabel(patch_size=(32, 32, 32))
    dataset = SyntheticDataset(RandAnatomySynthd(patch_size=(32, 32, 32)), 3, seed=5)
    for i in range(3):
        maker.set_random_state(seed=sample_seed(5, 0, i))
        assert torch.equal(maker().as_tensor(), dataset[i]["label"].as_tensor())


def test_label_maker_is_found_in_every_anatomy_transform():
    for transform in (
        RandAnatomyLabel(patch_size=32),
        RandAnatomyLabeld(patch_size=32),
        RandAnatomySynth(patch_size=32),
        RandAnatomySynthd(patch_size=32),
    ):
        assert isinstance(_label_maker(transform), RandAnatomyLabel), type(transform).__name__
    for wrong in (RandPrimitiveSynthd(patch_size=32), object()):
        with pytest.raises(TypeError, match="anatomy transform"):
            _label_maker(wrong)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="plausibility_report: n must be"):
        plausibility_report(n=0)
    with pytest.raises(ValueError, match="plausibility_report: workers must be"):
        plausibility_report(n=1, workers=-1)


def test_text_report_names_every_check_and_organ():
    report = plausibility_report(n=4, seed=2, patch_size=32)
    text = format_report(report)
    assert text.splitlines()[0].startswith("Plausibility of 4 anatomy patches (32x32x32 voxels at 1.5 mm, seed 2,")
    for name, check in report["checks"].items():
        assert f"{'ok  ' if check['ok'] else 'FAIL'} {name}" in text
    assert all(f"  {organ} " in text for organ in report["organs"])
    no_settings = {k: v for k, v in report.items() if k != "settings"}
    assert "(? voxels at 1.5 mm, seed ?," in format_report(no_settings)


def test_thousand_patches_are_plausible():
    """1000 default-bank patches (48^3): no overlap violations, no organ off its anchor, only documented ids."""
    report = plausibility_report(n=1000, seed=0, patch_size=48, workers=2)  # every organ skipped in <= 5 %
    json.dumps(report)  # JSON-serialisable
    text = format_report(report)
    assert report["ok"], text
    checks = {k: c["value"] for k, c in report["checks"].items()}
    assert checks["disjoint_overlap_voxels"] == 0
    assert checks["adjacent_indents_over_limit"] == 0 and checks["organs_over_max_skip_rate"] == 0
    assert report["overlap"]["indents"] > 0  # small organs did indent large ones, within the limit
    assert checks["organs_outside_tolerance"] == 0
    assert checks["samples_with_invalid_ids"] == 0 and checks["samples_with_unrecorded_ids"] == 0
    assert checks["cut_face_voxels"] == 0
    assert report["num_classes"] == 22 and report["invalid_ids"] == []
    assert report["anchors"]["placements"] == sum(row["placed"] for row in report["organs"].values())
    assert report["anchors"]["max_ratio"] <= 1.0 + 1e-6
    assert report["organs"]["liver"]["presence_rate"] > 0.2  # the liver is in most upper-abdominal patches
    assert report["overlap"]["adjacent_carved_voxels"] > 0  # adjacent organs do meet and get carved
    assert "PASS" in text and "liver" in text


def test_report_checks_cut_faces_and_skip_rates():
    report = plausibility_report(n=4, seed=3, patch_size=32)
    assert report["checks"]["cut_face_voxels"]["value"] == 0  # measured by the audit, not read from the record
    assert report["checks"]["organs_over_max_skip_rate"]["value"] == 0  # 4 patches: too few to judge a rate
    assert report["skips"]["max_skip_rate"] == report["settings"]["max_skip_rate"] == 0.05
    assert "skip rate limit 5% (organs attempted in >= 20 patches): ok" in format_report(report)
    unchecked = plausibility_report(n=1, seed=3, patch_size=32, max_skip_rate=None)
    assert unchecked["checks"]["organs_over_max_skip_rate"]["value"] is None
    with pytest.raises(ValueError, match="plausibility_report: max_skip_rate must be"):
        plausibility_report(n=1, max_skip_rate=1.5)
