"""What a fine-tuning run leaves behind: evaluation CSVs whose columns name their classes, and a record of the
training cases (``train_cases.json``) only when training completed.

Bundle runs are tiny (feature_size 12, 64^3 windows, a random network, one MSD Hippocampus case to evaluate).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigWorkflow
from monai.networks.nets import SwinUNETR

from synth_transforms.datalists import CaseList, decathlon_class_names, load_decathlon_split
from synth_transforms.handlers import CaseRecordSaver, ClassMetricsSaver

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "swin_unetr_finetune"
CONFIGS = BUNDLE / "configs"
TRAIN, EVALUATE, HIPPO = (str(CONFIGS / name) for name in ("train.json", "evaluate.json", "msd_hippocampus.json"))
TINY = {"feature_size": 12, "use_checkpoint": False, "num_workers": 0, "device": "cpu", "batch_size": 1}


def _datalist(path: Path, hippocampus_dir: Path, n_train: int = 2, n_val: int = 1, labels: bool = True) -> Path:
    """A dataset.json with the first cases of the shared Hippocampus lists (and its class names if ``labels``)."""
    full = json.loads((hippocampus_dir / "dataset.json").read_text())
    content = {"training": full["training"][:n_train], "validation": full["validation"][:n_val]}
    if labels:
        content["labels"] = full["labels"]
    path.write_text(json.dumps(content))
    return path


def _overrides(root: Path, hippocampus_dir: Path, datalist: Path, **more) -> dict:
    return {
        **TINY,
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(hippocampus_dir),
        "datalist": str(datalist),
        "output_dir": str(root / "runs"),
        "ckpt_dir": str(root / "models"),
        **more,
    }


# ------------------------------------------------------------------------------------------ evaluation CSV files


def test_evaluation_csv_columns_name_the_classes(tmp_path, hippocampus_dir):
    """The per-image and summary CSVs name each column by the dataset's class name (column 1 is label 1)."""
    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    torch.save(SwinUNETR(in_channels=1, out_channels=3, feature_size=12).state_dict(), tmp_path / "models" / "model.pt")
    datalist = _datalist(tmp_path / "dataset.json", hippocampus_dir)
    overrides = _overrides(tmp_path, hippocampus_dir, datalist, output_dir=str(tmp_path / "eval"))
    workflow = ConfigWorkflow(config_file=[TRAIN, EVALUATE, HIPPO], workflow_type="eval", **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()

    out = tmp_path / "eval"
    for metric in ("val_mean_dice", "val_hd95"):
        rows = [line.split(",") for line in (out / f"{metric}_raw.csv").read_text().splitlines()]
        assert rows[0] == ["filename", "Anterior", "Posterior", "mean"], metric
        assert len(rows) == 2 and rows[1][0].endswith("hippocampus_006.nii.gz")
        summary = [line.split(",")[0] for line in (out / f"{metric}_summary.csv").read_text().splitlines()]
        assert summary == ["class", "Anterior", "Posterior", "mean"], metric
    dice_rows = [line.split(",") for line in (out / "val_mean_dice_raw.csv").read_text().splitlines()]
    anterior, posterior, mean = (float(v) for v in dice_rows[1][1:])
    assert 0.0 <= anterior <= 1.0 and 0.0 <= posterior <= 1.0
    assert mean == pytest.approx((anterior + posterior) / 2, abs=1e-4)
    # the per-class Dice of the CSV is the evaluator's per-class metric, in label order
    per_class = workflow.evaluator.state.metrics["val_dice_per_class"]
    assert anterior == pytest.approx(float(per_class["dice_class1"]), abs=1e-4)
    assert posterior == pytest.approx(float(per_class["dice_class2"]), abs=1e-4)


def test_class_names_come_from_the_datalist_labels(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"0": "background", "1": "spleen", "2": " liver ", "3": "liver"}}))
    assert decathlon_class_names(path, 3) == ["spleen", "liver"]
    assert decathlon_class_names(path, 3, include_background=True) == ["background", "spleen", "liver"]
    # a name used twice or missing would make a column ambiguous: such classes are named by their id
    assert decathlon_class_names(path, 5) == ["spleen", "label2", "label3", "label4"]
    path.write_text(json.dumps({"labels": {"1": "a,b", "2": ""}, "training": []}))
    assert decathlon_class_names(path, 3) == ["label1", "label2"]
    path.write_text(json.dumps({"training": []}))  # e.g. a train_cases.json record: no class names
    assert decathlon_class_names(path, 3) == ["label1", "label2"]
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2, got 1"):
        decathlon_class_names(path, 1)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        decathlon_class_names(tmp_path / "missing.json", 3)


def _evaluated_engine(details: dict) -> Engine:
    engine = Engine(lambda engine, batch: None)
    engine.state.metrics = {"val_mean_dice": 0.5}
    engine.state.metric_details = details
    return engine


def test_class_metrics_saver_names_columns_and_checks_their_count(tmp_path):
    saver = ClassMetricsSaver(
        save_dir=str(tmp_path), metrics="*", metric_details="*", summary_ops=["mean"], class_labels=["a", "b"]
    )
    saver._filenames = ["case1.nii.gz", "case2.nii.gz"]
    saver(_evaluated_engine({"dice": torch.tensor([[0.1, 0.9], [0.3, 0.5]])}))
    raw = [line.split(",") for line in (tmp_path / "dice_raw.csv").read_text().splitlines()]
    assert raw[0] == ["filename", "a", "b", "mean"]
    assert [row[0] for row in raw[1:]] == ["case1.nii.gz", "case2.nii.gz"]
    assert [float(v) for row in raw[1:] for v in row[1:]] == pytest.approx([0.1, 0.9, 0.5, 0.3, 0.5, 0.4])
    summary = [line.split(",") for line in (tmp_path / "dice_summary.csv").read_text().splitlines()]
    assert [row[0] for row in summary] == ["class", "a", "b", "mean"]
    assert [float(row[1]) for row in summary[1:]] == pytest.approx([0.2, 0.7, 0.45])
    assert (tmp_path / "metrics.csv").read_text() == "val_mean_dice,0.5\n"
    with pytest.raises(ValueError, match=r"'dice' has 3 class column\(s\) but class_labels names 2"):
        saver(_evaluated_engine({"dice": torch.zeros(1, 3)}))


# ------------------------------------------------------------------------------------------ record of the cases


def test_case_record_is_written_when_training_completes_only(tmp_path, hippocampus_dir):
    cases = load_decathlon_split(_datalist(tmp_path / "dataset.json", hippocampus_dir, n_train=3), hippocampus_dir)
    assert isinstance(cases, CaseList) and cases.record["available"] == 3
    record = tmp_path / "runs" / "train_cases.json"

    def fail(engine, batch):
        raise RuntimeError("out of memory")

    failing = Engine(fail)
    CaseRecordSaver(cases, record).attach(failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        failing.run([0], max_epochs=1)
    assert not record.exists()

    completing = Engine(lambda engine, batch: None)
    CaseRecordSaver(cases, record).attach(completing)
    completing.run([0], max_epochs=1)
    assert json.loads(record.read_text()) == cases.record
    assert load_decathlon_split(record, hippocampus_dir) == cases  # the record reproduces the cases
    with pytest.raises(TypeError, match="CaseList"):
        CaseRecordSaver([{"image": "x"}], record)


def test_failed_finetuning_leaves_no_train_cases_json(tmp_path, hippocampus_dir):
    """Training that stops with an error (here a label with class id 2 under num_classes=2) records no cases."""
    datalist = _datalist(tmp_path / "dataset.json", hippocampus_dir, n_train=1)
    overrides = _overrides(tmp_path, hippocampus_dir, datalist, num_classes=2, cache_rate=0.0, max_epochs=1)
    workflow = ConfigWorkflow(config_file=[TRAIN, HIPPO], workflow_type="train", **{**overrides, "epoch_length": 1})
    workflow.initialize()
    with pytest.raises(Exception) as info:
        workflow.run()
    chain, error = [], info.value
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(e, ValueError) and "[2]" in str(e) for e in chain), chain
    assert not list(tmp_path.glob("runs/*.json")), "no record, not even under a temporary name"
