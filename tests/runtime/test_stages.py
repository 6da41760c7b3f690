"""The generation stages against a fake decoder: grouping by settings, and one bad request failing alone."""

from __future__ import annotations

import numpy as np
import pytest

from captioning.decoding import Overrides
from captioning.runtime.stages import CaptionStage, TranslationStage
from captioning.runtime.tokenization import TextCodec, TextTooLongError

from fakes import SETTINGS, FakeDecoder, FakeEncoder, FakeTokenizer, TrackedDecoder


def _caption_stage(decoder: FakeDecoder) -> CaptionStage:
    return CaptionStage(decoder=decoder, settings=SETTINGS, codec=TextCodec(FakeTokenizer()))


def _embeds(count: int) -> list[np.ndarray]:
    return [np.full((3, 4), i, dtype=np.float32) for i in range(count)]


def test_requests_with_equal_settings_share_one_batch():
    decoder = FakeDecoder()
    options = [Overrides(), Overrides(num_beams=3), Overrides(), Overrides(num_beams=3), Overrides()]
    results = _caption_stage(decoder).run(_embeds(5), options)
    assert all(isinstance(r, str) and r for r in results)
    assert sorted(decoder.batches) == [(2, 3), (3, 1)]


def test_a_batch_gives_each_request_what_it_gets_alone():
    embeds = _embeds(4)
    batched = _caption_stage(FakeDecoder()).run(embeds, [Overrides()] * 4)
    alone = [_caption_stage(FakeDecoder()).run([e], [Overrides()])[0] for e in embeds]
    assert batched == alone
    assert len(set(batched)) > 1  # the fake's rows really differ


def test_a_failing_group_fails_only_its_requests():
    decoder = FakeDecoder(fail_when_beams=3)
    options = [Overrides(), Overrides(num_beams=3), Overrides()]
    results = _caption_stage(decoder).run(_embeds(3), options)
    assert isinstance(results[1], RuntimeError) and "decoder broke" in str(results[1])
    assert isinstance(results[0], str) and isinstance(results[2], str)


def test_bad_overrides_fail_alone():
    results = _caption_stage(FakeDecoder()).run(
        _embeds(3), [Overrides(), Overrides(max_new_tokens=0), Overrides()]
    )
    assert isinstance(results[1], ValueError) and "max_new_tokens" in str(results[1])
    assert isinstance(results[0], str) and isinstance(results[2], str)


def test_a_text_too_long_fails_alone():
    stage = TranslationStage(
        encoder=FakeEncoder(),
        decoder=FakeDecoder(),
        settings=SETTINGS,
        codec=TextCodec(FakeTokenizer(), max_source_tokens=8),
    )
    results = stage.run(["a dog", "x" * 40, "a cat"], [Overrides()] * 3)
    assert isinstance(results[1], TextTooLongError) and "limit is 8" in str(results[1])
    assert isinstance(results[0], str) and isinstance(results[2], str)
    assert results[0] != results[2]


def test_stage_limits_come_from_the_settings():
    assert _caption_stage(FakeDecoder()).max_new_tokens_limit == SETTINGS.max_length - 1


@pytest.mark.parametrize("count", [0, 1])
def test_empty_and_single(count):
    assert len(_caption_stage(FakeDecoder()).run(_embeds(count), [Overrides()] * count)) == count


def test_a_batch_whose_requests_were_all_cancelled_stops_between_steps(monkeypatch):
    from captioning.decoding import GenerationCancelled, generate
    from captioning.runtime import stages

    calls = []

    def stop_after_two():
        calls.append(1)
        return len(calls) > 2

    states = np.zeros((2, 3, 4), dtype=np.float32)
    with pytest.raises(GenerationCancelled):
        generate(FakeDecoder(), states, np.ones((2, 3), dtype=np.int64), SETTINGS, should_stop=stop_after_two)
    assert len(calls) == 3  # asked before each step, stopped at the third
    monkeypatch.setattr(stages, "CANCEL_CHECK_S", 0.0)
    stage = CaptionStage(decoder=FakeDecoder(), settings=SETTINGS, codec=TextCodec(FakeTokenizer()))
    gone, alive = (lambda: True), (lambda: False)
    results = stage.run(_embeds(2), [Overrides(), Overrides(num_beams=2)], cancelled=[gone, alive])
    assert isinstance(results[0], GenerationCancelled) and isinstance(results[1], str)
    mixed = stage.run(_embeds(2), [Overrides()] * 2, cancelled=[gone, alive])
    assert all(isinstance(r, str) for r in mixed)  # one live request keeps its batch going


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("checks", [False, True])
def test_a_finished_batch_frees_its_session_without_the_cycle_collector(beams, checks):
    """A session holds a batch's cross keys/values (40 MB per image at full size). Freed by reference counts
    alone, it is gone when the batch ends; held by a reference cycle, it waits for the cyclic collector, which
    array-heavy serving rarely triggers (served at c=16 that grew a generator stub by 2 GB a minute)."""
    import gc

    decoder = TrackedDecoder()
    stage = CaptionStage(decoder=decoder, settings=SETTINGS, codec=TextCodec(FakeTokenizer()))
    cancelled = [lambda: False] * 3 if checks else None
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            results = stage.run(_embeds(3), [Overrides(num_beams=beams)] * 3, cancelled=cancelled)
            assert all(isinstance(r, str) for r in results)
        assert len(decoder.sessions) == 3
        assert [ref() for ref in decoder.sessions] == [None] * 3
    finally:
        gc.enable()
