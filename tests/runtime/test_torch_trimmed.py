"""The trimmed vocabulary on the torch runner (`--decoder-runner torch --translator-vocab`): the checkpoint is
trimmed as it loads, never writes a token outside the kept set, and with every id kept it is the untrimmed
runner, token for token (fp32 and bf16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captioning import contract
from captioning.decoding import Overrides, VocabMap, generate
from captioning.runtime.tokenization import TextCodec
from captioning.runtime.torch_runner import TorchOptions, encoder_graph, load_checkpoint, step_decoder

TEXTS = [
    "a dog runs through the grass",
    "two children play on the beach",
    "a man in a red shirt climbs a rock",
    "a black and white dog jumps over a log",
    "people walk down a busy street",
    "a girl in a pink dress",
]


@pytest.fixture(scope="module")
def translator(fixture_checkpoints):
    from transformers import AutoTokenizer

    from captioning.export.build import translation_settings

    path = fixture_checkpoints.mbart
    tokenizer = AutoTokenizer.from_pretrained(str(path), src_lang=contract.SOURCE_LANG)
    model = load_checkpoint("mbart", path)
    settings = translation_settings(model, tokenizer, contract.TARGET_LANG, contract.MAX_LENGTH)
    codec = TextCodec.load(path, src_lang=contract.SOURCE_LANG)
    ids, mask = codec.pad([codec.encode(text) for text in TEXTS])
    return path, settings, model.config.vocab_size, ids, mask


def _decode(
    translator, options: TorchOptions, vocab: VocabMap | None, tmp_path, beams: int
) -> list[list[int]]:
    path, settings, _, ids, mask = translator
    vocab_file = vocab.save(tmp_path / "kept.json") if vocab is not None else None
    model = load_checkpoint("mbart", path, vocab=vocab_file)
    states = encoder_graph(model, options).run({"input_ids": ids, "attention_mask": mask})[
        "last_hidden_state"
    ]
    decoder = step_decoder("mbart", model, options, settings.max_length)
    if vocab is not None:
        session = decoder.start(states[:1], mask[:1], num_beams=1)
        first = np.array([[vocab.position(settings.prompt_ids[0], "prompt")]])
        assert session.step(first).shape[1] == len(vocab)  # the logits cover the kept rows only
    return generate(decoder, states, mask, settings.with_overrides(Overrides(num_beams=beams)), vocab)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("beams", [1, 4])
def test_every_id_kept_equals_the_untrimmed_runner(translator, tmp_path, precision, beams):
    torch.set_num_threads(1)
    size = translator[2]
    options = TorchOptions(precision=precision)
    everything = VocabMap.of(range(size), size)
    assert _decode(translator, options, everything, tmp_path, beams) == _decode(
        translator, options, None, tmp_path, beams
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_token_outside_the_kept_set(translator, tmp_path, precision):
    torch.set_num_threads(1)
    _, settings, size, _, _ = translator
    options = TorchOptions(precision=precision)
    full = _decode(translator, options, None, tmp_path, beams=4)
    written = {t for out in full for t in out}
    # Keep the prompt, end and language ids and every other id: half of what the untrimmed runner wrote goes.
    needed = {
        *settings.prompt_ids,
        *settings.eos_token_ids,
        settings.pad_token_id,
        settings.forced_bos_token_id,
    }
    kept = VocabMap.of({*range(0, size, 2), *needed}, size)
    assert written - set(kept.kept_ids), "the kept set should exclude tokens the full vocabulary writes"
    trimmed = _decode(translator, options, kept, tmp_path, beams=4)
    outside = {t for out in trimmed for t in out} - set(kept.kept_ids)
    assert not outside, f"the trimmed runner wrote ids outside the kept set: {sorted(outside)[:10]}"
    assert all(len(out) > len(settings.prompt_ids) + 1 for out in trimmed)  # it still translates
