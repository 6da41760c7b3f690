"""The torch runner through the server's own stages gives `generate()`'s tokens (CPU here; cuda where present).

The same code a GPU repository's generators run: `CaptionStage` / `TranslationStage` over the checkpoint's own
modules with preallocated caches, on the shared Flickr8k images, greedy and beams 3 and 5, batches of unequal
sources.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captioning import contract
from captioning.decoding import Overrides
from captioning.runtime.preprocess import PreprocessConfig, preprocess_bytes
from captioning.runtime.stages import CaptionStage, Source, TranslationStage
from captioning.runtime.tokenization import TextCodec
from captioning.runtime.torch_runner import (
    TorchOptions,
    encoder_graph,
    step_decoder,
    vision_graph,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def images(flickr_images) -> list[bytes]:
    return [p.read_bytes() for p in flickr_images[:24]]


def _settings(models, fixture_checkpoints):
    from transformers import AutoTokenizer

    from captioning.export.build import caption_settings, translation_settings

    blip, mbart = models
    tokenizer = AutoTokenizer.from_pretrained(str(fixture_checkpoints.mbart), src_lang=contract.SOURCE_LANG)
    return (
        caption_settings(blip, contract.MAX_LENGTH),
        translation_settings(mbart, tokenizer, contract.TARGET_LANG, contract.MAX_LENGTH),
    )


def _reference_captions(blip, processor, images, beams):
    import io

    from PIL import Image

    out = []
    for data in images:
        pixels = processor(images=Image.open(io.BytesIO(data)), return_tensors="pt").pixel_values
        with torch.no_grad():
            ids = blip.generate(pixels, max_length=contract.MAX_LENGTH, num_beams=beams)
        out.append(processor.decode(ids[0], skip_special_tokens=True))
    return out


def _reference_translations(mbart, tokenizer, texts, beams):
    target = tokenizer.convert_tokens_to_ids(contract.TARGET_LANG)
    out = []
    for text in texts:
        with torch.no_grad():
            ids = mbart.generate(
                **tokenizer(text, return_tensors="pt"),
                max_length=contract.MAX_LENGTH,
                num_beams=beams,
                forced_bos_token_id=target,
            )
        out.append(tokenizer.decode(ids[0], skip_special_tokens=True))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("beams", [1, 3, 5])
def test_torch_runner_equals_generate(models, reference_models, fixture_checkpoints, images, device, beams):
    from transformers import AutoTokenizer, BlipProcessor

    torch.set_num_threads(1)
    blip, mbart = models
    caption_settings, translation_settings = _settings(models, fixture_checkpoints)
    options = TorchOptions(device=device)
    vision = vision_graph(blip, options)
    caption_decoder = step_decoder("blip", blip, options, caption_settings.max_length)
    encoder = encoder_graph(mbart, options)
    translation_decoder = step_decoder("mbart", mbart, options, translation_settings.max_length)
    config = PreprocessConfig.from_file(fixture_checkpoints.blip / "preprocessor_config.json")
    pixels = np.stack([preprocess_bytes(data, config) for data in images])
    embeds = vision.run({contract.PIXEL_VALUES: pixels})[contract.IMAGE_EMBEDS]
    captions = CaptionStage(caption_decoder, caption_settings, TextCodec.load(fixture_checkpoints.blip)).run(
        list(embeds), [Overrides(num_beams=beams)] * len(images)
    )
    processor = BlipProcessor.from_pretrained(str(fixture_checkpoints.blip))
    blip_cpu, mbart_cpu = reference_models
    assert captions == _reference_captions(blip_cpu, processor, images, beams)

    # Unequal sources in one batch: the served captions, batched as the translator receives them.
    codec = TextCodec.load(fixture_checkpoints.mbart, src_lang=contract.SOURCE_LANG)
    stage = TranslationStage(encoder, translation_decoder, translation_settings, codec)
    served = [Source(c, generated=True) for c in captions]  # as arabic_caption hands them to the translator
    translations = stage.run(served, [Overrides(num_beams=beams)] * len(captions))
    tokenizer = AutoTokenizer.from_pretrained(str(fixture_checkpoints.mbart), src_lang=contract.SOURCE_LANG)
    assert len({len(codec.encode(c, allow_empty=True)) for c in captions}) > 1  # the batch really is padded
    assert translations == _reference_translations(mbart_cpu, tokenizer, captions, beams)


def test_caches_are_preallocated_and_reordered_on_the_device(models, fixture_checkpoints):
    blip, _ = models
    caption_settings, _ = _settings(models, fixture_checkpoints)
    decoder = step_decoder("blip", blip, TorchOptions(), caption_settings.max_length)
    states = np.random.default_rng(0).standard_normal((2, 37, blip.config.text_config.encoder_hidden_size))
    session = decoder.start(states.astype(np.float32), np.ones((2, 37), dtype=np.int64), num_beams=3)
    buffers = [slot.buffer.data_ptr() for slot in session.slots]
    session.reorder(np.array([0, 3]))  # one row per source, as beam search's shared first step does
    session.step(np.array([[caption_settings.prompt_ids[0]]] * 2))
    session.reorder(np.array([0, 0, 0, 1, 1, 1]))
    logits = session.step(np.array([[5]] * 6))
    assert logits.shape == (6, blip.config.text_config.vocab_size) and logits.dtype == np.float32
    assert [slot.buffer.data_ptr() for slot in session.slots] == buffers  # written in place, never regrown
    assert session.slots[0].shape[2] == 2 and session.slots[0].buffer.shape[2] == caption_settings.max_length
    with pytest.raises(ValueError, match="cannot append"):
        for _ in range(caption_settings.max_length):
            session.step(np.array([[5]] * 6))


def test_reorders_wait_for_the_next_step_and_compose_as_applying_each_at_once(models, fixture_checkpoints):
    blip, _ = models
    caption_settings, _ = _settings(models, fixture_checkpoints)
    decoder = step_decoder("blip", blip, TorchOptions(), caption_settings.max_length)
    states = np.random.default_rng(0).standard_normal((2, 37, blip.config.text_config.encoder_hidden_size))
    ids = np.arange(6)[:, None] + 5  # every row its own token: a wrong reorder shows in the logits

    def run(eager: bool) -> list[np.ndarray]:
        session = decoder.start(states.astype(np.float32), np.ones((2, 37), dtype=np.int64), num_beams=3)
        out = []
        first = [np.array([0, 0, 0, 1, 1, 1])]
        for orders in (first, [np.array([2, 0, 1, 5, 5, 3]), np.array([1, 1, 0, 4, 3, 5])]):
            for rows in orders:
                session.reorder(rows)
                if eager:
                    session.apply_reorder()
                else:
                    assert session.pending is not None  # nothing moved before the step
            out.append(session.step(ids))
        session.reorder(np.arange(6))  # every beam kept its own history: nothing pending
        assert session.pending is None
        return out

    assert all(np.array_equal(a, b) for a, b in zip(run(eager=False), run(eager=True), strict=True))


def test_only_candidates_cross_from_the_device(models, fixture_checkpoints, images):
    """With the checkpoints' processors (forced language code and end token), no step sends whole rows."""
    from captioning.decoding import generate

    _, mbart = models
    _, translation_settings = _settings(models, fixture_checkpoints)
    decoder = step_decoder("mbart", mbart, TorchOptions(), translation_settings.max_length)
    calls = {"step": 0, "step_candidates": 0}

    class Counting:
        def start(self, *args):
            session = decoder.start(*args)
            for name in calls:
                original = getattr(session, name)

                def counted(*a, _name=name, _original=original):
                    calls[_name] += 1
                    return _original(*a)

                setattr(session, name, counted)
            return session

    codec = TextCodec.load(fixture_checkpoints.mbart, src_lang=contract.SOURCE_LANG)
    ids, mask = codec.pad([codec.encode("a dog runs on the beach"), codec.encode("two children")])
    encoder = encoder_graph(mbart, TorchOptions())
    states = encoder.run({"input_ids": ids, "attention_mask": mask})["last_hidden_state"]
    settings = translation_settings.with_overrides(Overrides(num_beams=5))
    generate(Counting(), states, mask, settings)
    assert calls["step"] == 0 and calls["step_candidates"] > 2


def test_bad_options_are_refused_by_name():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        TorchOptions(precision="int4").validate()
    with pytest.raises(ValueError, match="device must be"):
        TorchOptions(device="tpu").validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_is_refused_clearly_without_a_gpu():
    from captioning.runtime.torch_runner import prepare

    with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
        prepare(TorchOptions(device="cuda"))
