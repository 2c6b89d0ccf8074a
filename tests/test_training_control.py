"""Training control for long runs (synth_transforms.checkpoint_resume and .training_control): resume checkpoints,
the final checkpoint only on completion, the wall-clock budget, arms in lockstep and the validation curve. Plain
ignite engines with tiny steps: no network is trained here (the bundle tests run the handlers in the real bundles)."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import torch
from ignite.engine import Engine, Events

from synth_transforms.checkpoint_resume import (
    ResumeCheckpointLoader,
    TrainingCheckpointSaver,
    latest_checkpoint,
    resume_checkpoint,
)
from synth_transforms.training_control import STOP_FILE, LockstepPacer, TrainingBudget, ValidationCurveWriter


def _trainer(weight: torch.nn.Parameter, fail_at: int | None = None) -> Engine:
    """An engine whose step adds the batch to ``weight`` (so the final value depends on every step, in order)."""

    def step(engine, batch):
        if engine.state.iteration == fail_at:
            raise RuntimeError("killed")
        with torch.no_grad():
            weight.mul_(0.5).add_(float(batch))

    return Engine(step)


def _saver(folder, module, **kwargs) -> TrainingCheckpointSaver:
    return TrainingCheckpointSaver(
        str(folder), {"network": module}, save_engine="trainer", save_interval=1, n_saved=1, **kwargs
    )


# ---------------------------------------------------------------------------------------------- resume
def test_latest_checkpoint_takes_the_last_epoch_file(tmp_path):
    assert latest_checkpoint(tmp_path / "absent") is None
    assert latest_checkpoint(tmp_path) is None
    for name in ("checkpoint_epoch=2.pt", "checkpoint_epoch=10.pt", "checkpoint_final.pt", "tmpab12", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=10.pt"


def test_resume_checkpoint_starts_from_scratch_with_a_log_line(tmp_path, caplog):
    assert resume_checkpoint(tmp_path, False) is None
    with caplog.at_level(logging.INFO, logger="synth_transforms.checkpoint_resume"):
        assert resume_checkpoint(tmp_path, True) is None
    assert f"no checkpoint in {tmp_path}, training starts from scratch" in caplog.text
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(b"")
    assert resume_checkpoint(tmp_path, True) == str(tmp_path / "checkpoint_epoch=3.pt")
    with pytest.raises(ValueError, match="resume must be True or False"):
        resume_checkpoint(tmp_path, "true")


def test_killed_run_resumes_at_the_epoch_boundary_to_the_same_result(tmp_path):
    data, epochs = [1.0, 2.0, 3.0], 3

    straight = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(straight.weight)
    engine = _trainer(straight.weight)
    _saver(tmp_path / "straight", straight, save_final=True, final_filename="final.pt").attach(engine)
    engine.run(data, max_epochs=epochs)

    module = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(module.weight)
    folder = tmp_path / "killed"
    engine = _trainer(module.weight, fail_at=5)  # mid-epoch 2
    _saver(folder, module, save_final=True, final_filename="final.pt").attach(engine)
    with pytest.raises(RuntimeError, match="killed"):
        engine.run(data, max_epochs=epochs)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint_epoch=1.pt"], "no final file after a failure"

    torch.nn.init.constant_(module.weight, 99.0)  # a fresh process: the checkpoint must restore everything
    engine = _trainer(module.weight)
    started = []
    ResumeCheckpointLoader(str(latest_checkpoint(folder)), {"network": module}).attach(engine)
    engine.add_event_handler(Events.STARTED, lambda e: started.append(e.state.iteration))
    _saver(folder, module, save_final=True, final_filename="final.pt").attach(engine)
    engine.run(data, max_epochs=epochs)

    assert started == [3] and engine.state.iteration == 9 and engine.state.epoch == 3
    assert torch.equal(module.weight, straight.weight)
    # n_saved=1 counts the interrupted run's epoch file too
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint_epoch=3.pt", "final.pt"]
    final = torch.load(folder / "final.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 9 and torch.equal(final["network"]["weight"], straight.weight)


def test_resume_with_more_epochs_follows_the_longer_schedule(tmp_path):
    """A run resumed with a longer budget keeps the config's schedule (its length) and the checkpoint's position:
    the learning rate goes on down the longer cosine instead of ending, and rising again, with the shorter one."""
    from monai.optimizers import WarmupCosineSchedule

    def run(epochs: int, folder, resume: bool) -> tuple[list[float], WarmupCosineSchedule]:
        module = torch.nn.Linear(1, 1, bias=False)
        optimizer = torch.optim.SGD(module.parameters(), lr=1.0)
        schedule = WarmupCosineSchedule(optimizer, warmup_steps=1, t_total=epochs * 2)
        engine = Engine(lambda e, b: (optimizer.step(), schedule.step()))
        rates = []
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: rates.append(optimizer.param_groups[0]["lr"]))
        objects = {"network": module, "optimizer": optimizer, "lr_scheduler": schedule}
        if resume:
            ResumeCheckpointLoader(str(latest_checkpoint(folder)), objects).attach(engine)
        TrainingCheckpointSaver(str(folder), objects, save_engine="trainer", save_interval=1, n_saved=1).attach(engine)
        engine.run([0, 1], max_epochs=epochs)
        return rates, schedule

    short, _ = run(2, tmp_path / "extended", resume=False)  # 4 iterations on a 4-step cosine: ends at 0
    resumed, schedule = run(4, tmp_path / "extended", resume=True)  # continued to 8 iterations
    longer, _ = run(4, tmp_path / "straight", resume=False)
    assert schedule.t_total == 8 and schedule.last_epoch == 8  # the config's length, the checkpoint's position
    assert resumed == pytest.approx(longer[4:])  # the longer schedule's second half, step for step
    assert short[-1] == pytest.approx(0.0) and resumed[-1] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(resumed, resumed[1:], strict=False))  # falling, not rising again


def test_final_file_of_an_earlier_run_is_removed_when_training_starts(tmp_path):
    module = torch.nn.Linear(1, 1)
    (tmp_path / "final.pt").write_bytes(b"left by an earlier run")
    engine = _trainer(module.weight, fail_at=1)
    TrainingCheckpointSaver(str(tmp_path), {"network": module}, save_final=True, final_filename="final.pt").attach(
        engine
    )
    with pytest.raises(RuntimeError, match="killed"):
        engine.run([1.0], max_epochs=1)
    assert not (tmp_path / "final.pt").exists()


# ---------------------------------------------------------------------------------------------- budget
def _sleeper(seconds: float) -> Engine:
    return Engine(lambda engine, batch: time.sleep(seconds))


def test_deadline_stops_after_the_current_iteration_and_completes(tmp_path):
    engine = _sleeper(0.01)
    completed = []
    TrainingBudget(tmp_path / "train_summary.json", max_train_seconds=0.05).attach(engine)
    engine.add_event_handler(Events.COMPLETED, lambda e: completed.append(e.state.iteration))
    engine.run(range(1000), max_epochs=1)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert 1 <= summary["iterations"] < 100 and completed == [summary["iterations"]], "COMPLETED fires (exports)"
    assert summary["stopped_by"] == "deadline" and summary["epochs"] == 1 and summary["start_iteration"] == 0
    assert summary["seconds"] >= 0.05


def test_summary_at_normal_end_and_none_after_a_failure(tmp_path):
    path = tmp_path / "train_summary.json"
    engine = Engine(lambda e, b: None)
    TrainingBudget(path, max_train_seconds=3600).attach(engine)
    engine.run(range(3), max_epochs=2)
    assert {k: v for k, v in json.loads(path.read_text()).items() if k != "seconds"} == {
        "iterations": 6,
        "epochs": 2,
        "stopped_by": "iterations",
        "start_iteration": 0,
    }
    failing = _trainer(torch.nn.Parameter(torch.zeros(1)), fail_at=2)
    TrainingBudget(path).attach(failing)
    with pytest.raises(RuntimeError, match="killed"):
        failing.run([1.0, 2.0], max_epochs=1)
    assert not path.exists(), "a failed run must not leave the summary of an earlier run"


def test_budget_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="max_train_seconds must be a number > 0"):
        TrainingBudget(max_train_seconds=0)
    with pytest.raises(ValueError, match="name must be a plain file name"):
        TrainingBudget(pace_dir=tmp_path, pace_name="stop_at")
    with pytest.raises(ValueError, match="pace_arms must be"):
        TrainingBudget(pace_dir=tmp_path, pace_name="a", pace_arms=0)


# ---------------------------------------------------------------------------------------------- lockstep
def _run_arm(pace_dir, name, step_seconds, deadline, results, arms=2):
    engine = _sleeper(step_seconds)
    summary = pace_dir.parent / f"{name}_summary.json"
    TrainingBudget(summary, deadline, pace_dir=pace_dir, pace_name=name, pace_arms=arms, pace_timeout=30).attach(engine)
    engine.run(range(100000), max_epochs=1)
    results[name] = json.loads(summary.read_text())


@pytest.mark.parametrize("deadlines", [(0.3, None), (0.3, 0.3)], ids=["one_deadline", "both_deadlines"])
def test_lockstep_arms_end_with_the_same_iteration_count(tmp_path, deadlines):
    pace_dir = tmp_path / "pace"
    results: dict[str, dict] = {}
    threads = [
        threading.Thread(target=_run_arm, args=(pace_dir, "fast", 0.001, deadlines[0], results)),
        threading.Thread(target=_run_arm, args=(pace_dir, "slow", 0.01, deadlines[1], results)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert set(results) == {"fast", "slow"}
    stop = json.loads((pace_dir / STOP_FILE).read_text())
    assert results["fast"]["iterations"] == results["slow"]["iterations"] == stop["iteration"] > 1
    assert results["fast"]["stopped_by"] == results["slow"]["stopped_by"] == "deadline"
    for name in ("fast", "slow"):
        state = json.loads((pace_dir / f"{name}.json").read_text())
        assert state["finished"] and not state["failed"] and state["iteration"] == stop["iteration"]


def test_pacer_waits_for_a_slower_arm_and_not_for_a_finished_one(tmp_path):
    fast, slow = LockstepPacer(tmp_path, "fast", poll=0.005), LockstepPacer(tmp_path, "slow", poll=0.005)
    fast.register(0)
    slow.register(0)
    fast.publish(1)
    threading.Timer(0.1, slow.publish, args=(1,)).start()
    start = time.monotonic()
    fast.wait_for_peers(1)
    assert time.monotonic() - start >= 0.09
    slow.publish(1, finished=True)
    start = time.monotonic()
    fast.wait_for_peers(50)
    assert time.monotonic() - start < 0.05


def test_pacer_barrier_and_silent_arms_time_out(tmp_path, caplog):
    with pytest.raises(TimeoutError, match="for 2 arms"):
        LockstepPacer(tmp_path, "alone", arms=2, timeout=0.1, poll=0.01).register(0)
    (tmp_path / "crashed.json").write_text(json.dumps({"iteration": 0, "finished": False, "time": time.time() - 60}))
    with caplog.at_level(logging.WARNING, logger="synth_transforms.training_control"):
        LockstepPacer(tmp_path, "alone", timeout=1, poll=0.01).wait_for_peers(5)
    assert "arm crashed has not moved" in caplog.text


def test_failed_arm_is_marked_so_peers_go_on(tmp_path):
    module = torch.nn.Linear(1, 1, bias=False)
    engine = _trainer(module.weight, fail_at=2)
    # attached first, as in the bundles: the saver must not take the exception before the budget sees it
    _saver(tmp_path / "checkpoints", module, save_final=True, final_filename="final.pt").attach(engine)
    TrainingBudget(pace_dir=tmp_path / "pace", pace_name="arm").attach(engine)
    with pytest.raises(RuntimeError, match="killed"):
        engine.run([1.0, 2.0, 3.0], max_epochs=1)
    state = json.loads((tmp_path / "pace" / "arm.json").read_text())
    assert state["finished"] and state["failed"] and state["iteration"] == 2


# ---------------------------------------------------------------------------------------------- curves
def _evaluator(values: list[list[float]], **others) -> Engine:
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.COMPLETED)
    def _metrics(engine):  # as MONAI's MeanDice leaves them: the mean over present classes, and the details
        details = torch.tensor(values)
        engine.state.metrics = {"val_mean_dice": float(details.nanmean()), **others}
        engine.state.metric_details = {"val_mean_dice": details}
        engine.state.key_metric_name = "val_mean_dice"

    return evaluator


def test_validation_curve_lines_and_resume_truncation(tmp_path):
    nan = float("nan")
    evaluator = _evaluator([[0.5, nan, 0.2], [0.7, nan, nan]])
    path = tmp_path / "validation_curve.jsonl"
    path.write_text('{"iteration": 1}\n')  # an earlier run's curve: a fresh run starts a new one
    trainer = Engine(lambda e, b: None)
    ValidationCurveWriter(evaluator, path).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    trainer.run(range(2), max_epochs=2)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["iteration"], line["epoch"]) for line in lines] == [(2, 1), (4, 2)]
    assert lines[0]["val_mean_dice"] == pytest.approx(1.4 / 3, abs=1e-6)
    assert lines[0]["per_class"] == {"1": 0.6, "3": 0.2}, "class 2 is absent from every image: left out"

    resumed = Engine(lambda e, b: None)
    resumed.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "iteration", 2))  # as a loader does
    ValidationCurveWriter(evaluator, path, class_names=["a", "b", "c"]).attach(resumed)
    resumed.run(range(2), max_epochs=2)  # the restored iteration keeps line 1 and drops line 2
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [2] and set(lines[0]["per_class"]) == {"1", "3"}


def test_validation_curve_records_the_other_scalar_metrics(tmp_path):
    others = {"val_foreground_dice": torch.tensor(0.8125), "val_hd95": torch.tensor([3.0, 5.0])}
    evaluator = _evaluator([[0.5, 0.3]], **others)
    path = tmp_path / "validation_curve.jsonl"
    trainer = Engine(lambda e, b: None)
    ValidationCurveWriter(evaluator, path).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    trainer.run(range(1), max_epochs=1)
    (line,) = [json.loads(text) for text in path.read_text().splitlines()]
    assert line["val_foreground_dice"] == 0.8125 and "val_hd95" not in line  # a per-class tensor is not a scalar
    assert list(line)[:4] == ["iteration", "epoch", "val_mean_dice", "per_class"]


def test_foreground_pairs_merge_every_class_against_the_background():
    from monai.handlers import MeanDice, from_engine

    from synth_transforms.handlers import foreground_pairs

    label = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    label[0, :2] = 1
    label[0, 2:, :2] = 2
    swapped = torch.where(label > 0, 3 - label, 0)  # every organ found, every class wrong
    one_hot = [torch.nn.functional.one_hot(x[0], 3).movedim(-1, 0).float() for x in (swapped, label)]
    (prediction,), (truth,) = foreground_pairs([{"pred": one_hot[0], "label": one_hot[1]}])
    assert prediction.shape == (2, 4, 4, 4) and torch.equal(prediction, truth)
    assert torch.equal(truth[1], (label[0] > 0).float()) and torch.equal(truth[0], (label[0] == 0).float())

    engine = Engine(lambda e, batch: [{"pred": one_hot[0], "label": one_hot[1]}])
    MeanDice(include_background=False, output_transform=foreground_pairs).attach(engine, "foreground")
    MeanDice(include_background=False, output_transform=from_engine(["pred", "label"])).attach(engine, "classes")
    engine.run([0])
    assert engine.state.metrics == {"foreground": 1.0, "classes": 0.0}
    with pytest.raises(ValueError, match=r"one-hot \(C >= 2, ...\) tensors, got shape \(1, 4, 4, 4\)"):
        foreground_pairs([{"pred": label.float(), "label": label.float()}])


def test_epoch_handler_follows_the_restored_trainer_and_warns_mid_epoch(caplog):
    from synth_transforms.handlers import SyntheticEpochHandler

    class Data:
        epochs: list[int] = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    for restored, warned in ((2, False), (3, True)):  # epoch_length 2: iteration 2 is an epoch end, 3 is not
        data, engine = Data(), Engine(lambda e, b: None)
        data.epochs = []
        engine.add_event_handler(
            Events.STARTED,
            lambda e, i=restored: e.load_state_dict({"iteration": i, "epoch_length": 2, "max_epochs": 3}),
        )
        SyntheticEpochHandler(data).attach(engine)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="synth_transforms.handlers"):
            engine.run(range(2), max_epochs=3)
        assert data.epochs == [1, 2], "the dataset epoch comes from the restored trainer (ignite epochs count from 1)"
        assert ("resuming mid-epoch" in caplog.text) == warned
