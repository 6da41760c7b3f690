"""In-flight batching over the torch runner: cohorts admitted at different steps decode in one forward pass per
step, and every request still gets `generate()`'s tokens; a fault in one cohort's step fails that cohort only.

Real checkpoints of the real architectures (the fixtures), real Flickr8k images, CPU.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from test_torch_runner import _reference_captions, _reference_translations, _settings

from captioning import contract
from captioning.decoding import Overrides
from captioning.runtime.inflight import InflightEngine, Limits
from captioning.runtime.preprocess import PreprocessConfig, preprocess_bytes
from captioning.runtime.stages import CaptionStage, Source, TranslationStage
from captioning.runtime.tokenization import TextCodec
from captioning.runtime.torch_runner import TorchOptions, encoder_graph, step_decoder, vision_graph


def _merges(decoder) -> list[int]:
    """Record the cohorts in each merged pass of `decoder`."""
    sizes: list[int] = []
    merged = decoder.step_merged

    def counted(calls):
        sizes.append(len(calls))
        return merged(calls)

    decoder.step_merged = counted
    return sizes


def _staggered(engine: InflightEngine, stage, requests: list[tuple[str, list, Overrides]]) -> dict:
    """Submit one request per step (each joins while the earlier ones decode); step until all are answered."""
    answers: dict = {}
    pending = list(requests)
    for _ in range(400):
        if pending:
            key, items, options = pending.pop(0)
            engine.submit(key, *stage.prepared(items, options))
        answers.update(engine.step())
        if not pending and len(answers) == len(requests):
            return answers
    raise AssertionError(f"not answered: {[k for k, *_ in requests if k not in answers]}")


@pytest.mark.parametrize("beams", [1, 3])
def test_staggered_cohorts_share_each_step_and_get_generate_tokens(
    models, reference_models, fixture_checkpoints, flickr_images, beams
):
    from transformers import AutoTokenizer, BlipProcessor

    torch.set_num_threads(1)
    blip, mbart = models
    caption_settings, translation_settings = _settings(models, fixture_checkpoints)
    images = [p.read_bytes() for p in flickr_images[24:40]]
    config = PreprocessConfig.from_file(fixture_checkpoints.blip / "preprocessor_config.json")
    pixels = np.stack([preprocess_bytes(data, config) for data in images])
    embeds = vision_graph(blip, TorchOptions()).run({contract.PIXEL_VALUES: pixels})[contract.IMAGE_EMBEDS]

    caption_decoder = step_decoder("blip", blip, TorchOptions(), caption_settings.max_length)
    caption_stage = CaptionStage(caption_decoder, caption_settings, TextCodec.load(fixture_checkpoints.blip))
    passes = _merges(caption_decoder)
    engine = InflightEngine(caption_stage.steps, Limits(max_rows=16))
    options = Overrides(num_beams=beams)
    # one request per step, every fourth with two images
    spans, start = [], 0
    while start < len(images):
        count = 2 if len(spans) % 4 == 1 else 1
        spans.append(range(start, min(start + count, len(images))))
        start += count
    requests = [(f"req{n}", [embeds[i] for i in span], options) for n, span in enumerate(spans)]
    answers = _staggered(engine, caption_stage, requests)
    processor = BlipProcessor.from_pretrained(str(fixture_checkpoints.blip))
    captions = _reference_captions(reference_models[0], processor, images, beams)
    for n, span in enumerate(spans):
        assert answers[f"req{n}"] == [captions[i] for i in span], n
    assert max(passes) >= 4, passes  # cohorts of different ages stepped together

    codec = TextCodec.load(fixture_checkpoints.mbart, src_lang=contract.SOURCE_LANG)
    translation_decoder = step_decoder("mbart", mbart, TorchOptions(), translation_settings.max_length)
    translation_stage = TranslationStage(
        encoder_graph(mbart, TorchOptions()), translation_decoder, translation_settings, codec
    )
    passes = _merges(translation_decoder)
    engine = InflightEngine(translation_stage.steps, Limits(max_rows=16))
    requests = [(f"txt{i}", [Source(c, generated=True)], options) for i, c in enumerate(captions)]
    answers = _staggered(engine, translation_stage, requests)
    tokenizer = AutoTokenizer.from_pretrained(str(fixture_checkpoints.mbart), src_lang=contract.SOURCE_LANG)
    expected = _reference_translations(reference_models[1], tokenizer, captions, beams)
    assert [answers[f"txt{i}"][0] for i in range(len(captions))] == expected
    assert max(passes) >= 4, passes


def test_a_fault_in_one_cohort_of_a_merged_step_fails_that_cohort_only(models, fixture_checkpoints):
    """The merged pass fails after writing every cohort's cache; the caches are rolled back and each cohort is
    stepped alone, so the healthy cohort's tokens are still `generate()`'s and only the faulty one fails."""
    from captioning.decoding import generate

    torch.set_num_threads(1)
    blip, _ = models
    settings, _ = _settings(models, fixture_checkpoints)
    decoder = step_decoder("blip", blip, TorchOptions(), settings.max_length)
    stage = CaptionStage(decoder, settings, TextCodec.load(fixture_checkpoints.blip))
    passes = _merges(decoder)
    sessions: list = []
    start = decoder.start

    def recorded(*args):
        sessions.append(start(*args))
        return sessions[-1]

    decoder.start = recorded
    rng = np.random.default_rng(3)
    width = blip.config.text_config.encoder_hidden_size
    embeds = [rng.standard_normal((577, width)).astype(np.float32) for _ in range(2)]
    engine = InflightEngine(stage.steps, Limits(max_rows=16))
    options = Overrides(num_beams=1, min_new_tokens=8)
    engine.submit("healthy", *stage.prepared(embeds[:1], options))
    answers = engine.step()
    engine.submit("faulty", *stage.prepared(embeds[1:], options))
    answers.update(engine.step())  # the faulty cohort's first step (its prompt) runs alone

    def broken(*args):
        raise RuntimeError("device fault in this cohort's scoring")

    sessions[1].answer = broken
    for _ in range(settings.max_length):
        answers.update(engine.step())
        if len(answers) == 2:
            break
    assert isinstance(answers["faulty"], RuntimeError) and "device fault" in str(answers["faulty"])
    inner = stage.settings.with_overrides(options)
    mask = np.ones((1, 577), dtype=np.int64)
    want = generate(
        step_decoder("blip", blip, TorchOptions(), settings.max_length), embeds[0][None], mask, inner
    )
    assert answers["healthy"] == [stage.codec.decode(want[0])]
    assert 2 in passes  # the fault struck inside a merged pass


class _RecordedSlots:
    """Stands in for the installed CPU slots: counts the runs, and the forward passes made inside one."""

    def __init__(self) -> None:
        self.depth = self.runs = self.passes = 0

    @contextlib.contextmanager
    def held(self):
        assert self.depth == 0, "a run took a slot inside another: with real slots it could wait on itself"
        self.depth, self.runs = 1, self.runs + 1
        try:
            yield
        finally:
            self.depth = 0

    def watch(self, obj, name: str) -> None:
        inner = getattr(obj, name)

        def checked(*args, **kwargs):
            assert self.depth == 1, f"{type(obj).__name__}.{name} ran outside a CPU slot"
            self.passes += 1
            return inner(*args, **kwargs)

        setattr(obj, name, checked)


def test_every_forward_pass_runs_on_a_cpu_slot(models, fixture_checkpoints, monkeypatch):
    """With CPU slots installed (`--cpu-slots`), the encoder, the cross projections, merged and lone steps each
    take one slot, never one inside another (a 1-slot server would wait on itself); beam reordering runs inside
    the next step's slot, never waiting for a slot of its own."""
    from captioning.decoding import generate
    from captioning.modules.tensors import CacheSlot
    from captioning.runtime import cpu_slots

    torch.set_num_threads(1)
    _, mbart = models
    _, settings = _settings(models, fixture_checkpoints)
    slots = _RecordedSlots()
    monkeypatch.setattr(cpu_slots, "_ACTIVE", slots)
    encoder = encoder_graph(mbart, TorchOptions())
    decoder = step_decoder("mbart", mbart, TorchOptions(), settings.max_length)
    for module, name in ((encoder.module, "forward"), (decoder.cross, "forward"), (decoder.step, "forward")):
        slots.watch(module, name)
    slots.watch(decoder.step, "forward_merged")
    reorders = []
    gather = CacheSlot.reorder

    def reorder(slot, rows):
        assert slots.depth == 1, "a beam reorder ran outside a CPU slot"
        reorders.append(slots.runs)
        return gather(slot, rows)

    monkeypatch.setattr(CacheSlot, "reorder", reorder)
    codec = TextCodec.load(fixture_checkpoints.mbart, src_lang=contract.SOURCE_LANG)
    stage = TranslationStage(encoder, decoder, settings, codec)
    engine = InflightEngine(stage.steps, Limits(max_rows=16))
    texts = ["a dog runs on the grass", "two children play in the snow"]
    answers = _staggered(
        engine, stage, [(t, [Source(t, generated=True)], Overrides(num_beams=3)) for t in texts]
    )
    assert len(answers) == 2 and all(isinstance(a, list) for a in answers.values())
    merged = slots.passes
    assert merged > 0 and slots.runs > 0  # (a lone step counts two passes: forward calls forward_merged)
    encoded = encoder.run({"input_ids": np.array([[5, 6, 2]]), "attention_mask": np.ones((1, 3), np.int64)})
    inner = settings.with_overrides(Overrides(num_beams=3))
    generate(decoder, encoded["last_hidden_state"], np.ones((1, 3), np.int64), inner)  # lone steps
    assert slots.passes > merged + 1
    assert reorders  # beams moved, each time inside a step's run
