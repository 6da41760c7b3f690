"""`--report-to` (training/trackers.py): the choice of tracker, and a captioner run through the accelerate loop
whose TensorBoard events hold the train loss, learning rate, throughput, dev loss, dev scores and the dev
samples as text, the same numbers metrics.json records."""

from __future__ import annotations

import json

import pytest

from captioning.training import trackers
from captioning.training.train_args import TrainConfig

torch = pytest.importorskip("torch")


def test_the_default_is_tensorboard_when_installed(monkeypatch):
    assert trackers.resolve_report_to(None) == "tensorboard"  # the training extra installs it
    assert trackers.resolve_report_to("none") is None
    monkeypatch.setattr(trackers, "_installed", lambda module: False)
    assert trackers.resolve_report_to(None) is None


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_tracker_that_is_not_installed_is_a_clear_error(monkeypatch, tracker):
    monkeypatch.setattr(trackers, "_installed", lambda module: module != tracker)
    with pytest.raises(ValueError, match=f"--report-to {tracker}: the {tracker} package is not installed"):
        trackers.resolve_report_to(tracker)
    with pytest.raises(ValueError, match="report_to must be one of"):
        TrainConfig(report_to="comet").validate()


def test_records_become_tracker_values():
    assert trackers.eval_values({"step": 2, "epoch": 1.0, "dev_loss": 3.5, "BLEU-4": 0.1}) == {
        "dev/loss": 3.5,
        "dev/BLEU-4": 0.1,
    }
    values = trackers.step_values(2.0, 1e-3, samples=10, tokens=50, seconds=2.0)
    assert values == {
        "train/loss": 2.0,
        "train/lr": 1e-3,
        "train/samples_per_s": 5.0,
        "train/tokens_per_s": 25.0,
    }
    assert trackers.hyperparameters({"a": None, "b": 1, "c": "x"}) == {"a": "None", "b": 1, "c": "x"}
    table = trackers.samples_markdown([("a | b", "two\nlines")])
    assert table.splitlines()[-1] == "| a \\| b | two lines |"


class _Recorder:
    is_main_process = True

    def __init__(self):
        self.logged = []

    def log(self, values, step=None):
        self.logged.append((values, step))


def test_samples_are_logged_only_when_the_task_has_them():
    recorder = _Recorder()
    trackers.log_samples(recorder, "tensorboard", None, 3)  # a task without last_samples
    trackers.log_samples(recorder, None, [("r", "p")], 3)  # --report-to none
    assert recorder.logged == []
    trackers.log_samples(recorder, "tensorboard", [("r", "p")], 3)
    assert recorder.logged == [({"dev/samples": "| reference | prediction |\n|---|---|\n| r | p |"}, 3)]


def test_a_captioner_run_writes_its_curves_to_tensorboard(fixture_checkpoints, shared_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_training import _flickr_dataset

    from captioning.training.captioner import CaptionerData, train_captioner

    root, _ = _flickr_dataset(tmp_path / "data", shared_data, train=2, dev=2)
    config = TrainConfig(
        output=tmp_path / "run",
        batch_size=5,
        lr=1e-3,
        max_steps=2,
        eval_every=1,
        padding="longest",
        dev_sample=2,
        progress=False,
        report_to="tensorboard",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = train_captioner(fixture_checkpoints.blip, CaptionerData(root=root), config)
    finally:
        torch.set_num_threads(threads)
    assert metrics["world_size"] == 1 and metrics["global_batch"] == 5 and metrics["finished"]

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "train-captioner"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalars["train/loss"] == [(s, pytest.approx(v, rel=1e-6)) for s, v in metrics["train_loss"]]
    for tag in ("train/lr", "train/samples_per_s", "train/tokens_per_s"):
        assert [s for s, _ in scalars[tag]] == [1, 2] and all(v > 0 for _, v in scalars[tag]), tag
    evals = metrics["evals"]
    assert [s for s, _ in scalars["dev/loss"]] == [e["step"] for e in evals] == [1, 2]
    assert [v for _, v in scalars["dev/loss"]] == pytest.approx([e["dev_loss"] for e in evals], rel=1e-6)
    assert [v for _, v in scalars["dev/BLEU-4"]] == pytest.approx([e["BLEU-4"] for e in evals], abs=1e-6)
    (text_tag,) = [tag for tag in events.Tags()["tensors"] if tag.startswith("dev/samples")]
    text = events.Tensors(text_tag)[-1].tensor_proto.string_val[0].decode()
    dev = set((root / "Flickr_8k.devImages.txt").read_text().split())
    lines = [line.split(",", 1) for line in (root / "captions.txt").read_text().splitlines()[1:]]
    references = [caption for image, caption in lines if image in dev]
    assert text.startswith("| reference | prediction |") and any(f"| {r} |" in text for r in references)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["report_to"] == "tensorboard"
