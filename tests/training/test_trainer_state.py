"""The trainer's state file loads with `torch.load(weights_only=True)`: RNG states are stored as tensors and plain
values, and a file holding any other object is refused before anything in it runs. The training commands take a
hub revision for `--model` and read every file of it at that revision."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def _ran(marker: str) -> None:
    """What the planted object's unpickling would call: proof that code ran."""
    Path(marker).write_text("code ran while loading the state")


class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_ran, (self.marker,))


def test_a_state_file_holding_an_arbitrary_object_is_refused(tmp_path):
    from captioning.training.loop_state import TrainerStateError, load_trainer_state

    marker = tmp_path / "ran"
    path = tmp_path / "trainer_state.pt"
    torch.save({"optimizer": {}, "rng": {"torch": torch.get_rng_state()}, "x": _Planted(marker)}, path)
    with pytest.raises(TrainerStateError, match="refusing to resume") as refused:
        load_trainer_state(path)
    assert f"{__name__}._ran" in str(refused.value)  # names what the file would have called
    assert str(path) in str(refused.value) and "--resume" in str(refused.value)
    assert not marker.exists()


def test_rng_states_survive_a_weights_only_load(tmp_path):
    import numpy as np

    from captioning.training.loop_state import load_trainer_state, rng_states, set_rng_states

    random.gauss(0, 1)  # a cached gaussian in the Python state too
    np.random.standard_normal()
    path = tmp_path / "trainer_state.pt"
    torch.save({"rng": rng_states()}, path)
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3).tolist())
    set_rng_states(load_trainer_state(path)["rng"])
    assert (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        torch.rand(3).tolist(),
    ) == expected


def test_the_revision_flags_reach_the_config():
    from captioning.cli import build_parser
    from captioning.training.train_args import config_from_args

    parser = build_parser()
    args = parser.parse_args(
        ["train-captioner", "--data", "d", "--output", "o", "--captioner-revision", "v1"]
    )
    assert config_from_args(args).model_revision == "v1"
    args = parser.parse_args(
        ["train-translator", "--pairs", "p", "--output", "o", "--translator-revision", "abc"]
    )
    assert config_from_args(args).model_revision == "abc"
    assert (
        config_from_args(
            parser.parse_args(["train-translator", "--pairs", "p", "--output", "o"])
        ).model_revision
        is None
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["train-translator", "--pairs", "p", "--output", "o", "--captioner-revision", "v1"])


def test_the_translator_task_reads_the_hub_id_at_its_revision(monkeypatch, tmp_path):
    import transformers

    from captioning.training.train_args import TrainConfig
    from captioning.training.translator import TranslatorData, TranslatorTask

    calls = []

    class Tokenizer:
        unk_token_id = 3

        def convert_tokens_to_ids(self, token):
            return 7

    def tokenizer(source, **kwargs):
        calls.append(("tokenizer", source, kwargs.get("revision")))
        return Tokenizer()

    def model(source, **kwargs):
        calls.append(("model", source, kwargs.get("revision")))

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)
    monkeypatch.setattr(transformers.MBartForConditionalGeneration, "from_pretrained", model)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"a cat number {i}\tقطة رقم {i}\n" for i in range(40)), encoding="utf-8")
    config = TrainConfig(output=tmp_path / "run", model_revision="v3")
    task = TranslatorTask("someone/mbart", TranslatorData(pairs=pairs), config)
    task.load_model("someone/mbart")
    assert calls == [("tokenizer", "someone/mbart", "v3"), ("model", "someone/mbart", "v3")]
