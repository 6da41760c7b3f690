"""In-flight batching through a real tritonserver (`export --inflight`): requests that arrive while others
decode join at the next step, a short request overtakes a long one, every answer is `generate()`'s, and a bad
request joining a running batch fails alone; the same with the generators on the torch runner, whose cohorts
share one forward pass per step."""

from __future__ import annotations

import time

import pytest

from captioning.client import CaptionClient, GenerationOptions, InvalidInputError

from serving_helpers import assert_all_equal, serve, staggered, staggered_captions, staggered_options

pytestmark = pytest.mark.integration

FIXED = 60  # the repository's translation length (min = max new tokens), so a translation takes 60 steps


@pytest.fixture(scope="module")
def inflight_server(fixture_checkpoints, tmp_path_factory):
    from captioning.decoding import Overrides
    from captioning.export.build import BuildOptions, build_repository
    from captioning.export.repository import RepositoryOptions

    output = tmp_path_factory.mktemp("export-inflight") / "repository"
    options = BuildOptions(
        progress=False,
        translation=Overrides(max_new_tokens=FIXED, min_new_tokens=FIXED),
        repository=RepositoryOptions(inflight=True),
    )
    repository = build_repository(fixture_checkpoints.blip, fixture_checkpoints.mbart, output, options)
    config = (repository / "translator" / "config.pbtxt").read_text()
    assert "iterative_sequence: true" in config and "dynamic_batching" not in config
    with serve(repository, tmp_path_factory.mktemp("server-inflight")) as running:
        yield running


@pytest.fixture(scope="module")
def torch_inflight_server(fixture_checkpoints, tmp_path_factory):
    """The in-flight repository with the generators on the torch runner (`--decoder-runner torch`): the code a
    GPU repository's generators run, on this CPU, whose cohorts share one forward pass per step."""
    from captioning import contract
    from captioning.decoding import Overrides
    from captioning.export.build import BuildOptions, build_repository
    from captioning.export.repository import RepositoryOptions

    output = tmp_path_factory.mktemp("export-inflight-torch") / "repository"
    options = BuildOptions(
        progress=False,
        translation=Overrides(max_new_tokens=FIXED, min_new_tokens=FIXED),
        repository=RepositoryOptions(inflight=True, decoder_runner=contract.TORCH_RUNNER),
    )
    repository = build_repository(fixture_checkpoints.blip, fixture_checkpoints.mbart, output, options)
    translator = repository / contract.TRANSLATOR_MODEL / "1"
    assert (translator / "checkpoint" / "config.json").is_file() and not list(translator.glob("*.onnx"))
    with serve(repository, tmp_path_factory.mktemp("server-inflight-torch")) as running:
        yield running


def _fixed_translation(reference, text: str, beams: int | None = None, tokens: int = FIXED) -> str:
    import torch

    inputs = reference.tokenizer(text, return_tensors="pt")
    kwargs = {"num_beams": beams} if beams else {}
    with torch.inference_mode():
        ids = reference.mbart.generate(
            **inputs,
            forced_bos_token_id=reference.ar_id,
            min_new_tokens=FIXED,
            max_new_tokens=tokens,
            **kwargs,
        )
    return reference.tokenizer.decode(ids[0], skip_special_tokens=True)


def test_staggered_requests_equal_generate(inflight_server, reference, image_bytes):
    images = image_bytes[:24]
    results = staggered_captions(inflight_server.grpc_url, images)
    pairs = []
    for i, (result, data) in enumerate(zip(results, images, strict=True)):
        assert not isinstance(result, Exception), result
        english = reference.caption(data, staggered_options(i).caption_num_beams)
        pairs.append(((result.english, result.arabic), (english, _fixed_translation(reference, english))))
    assert_all_equal(pairs, "captions decoded in flight")


def test_on_the_torch_runner_staggered_requests_share_steps_and_equal_generate(
    torch_inflight_server, reference, image_bytes
):
    images = image_bytes[24:48]
    bad = GenerationOptions(translation_num_beams=99)
    results = staggered_captions(
        torch_inflight_server.grpc_url,
        images,
        extra=[lambda client: client.translate("A cat .", options=bad)],
    )
    assert isinstance(results[-1], InvalidInputError), results[-1]
    assert "translation_num_beams must be in 1..8, got 99" in str(results[-1])
    pairs = []
    for i, (result, data) in enumerate(zip(results[:-1], images, strict=True)):
        assert not isinstance(result, Exception), result
        english = reference.caption(data, staggered_options(i).caption_num_beams)
        pairs.append(((result.english, result.arabic), (english, _fixed_translation(reference, english))))
    assert_all_equal(pairs, "captions decoded in flight on the torch runner")
    log = (torch_inflight_server.options.log_file).read_text()
    assert "merged" in log, "no forward pass merged cohorts"


def test_a_short_request_overtakes_a_long_one_and_a_bad_one_fails_alone(
    inflight_server, reference, shared_data
):
    lines = (shared_data / "tatoeba_ara_eng" / "ara.txt").read_text(encoding="utf-8").splitlines()
    long_texts = [line.split("\t")[0] for line in lines[::500]][:8]  # 8 of the 16 rows: room to join
    started: dict[str, float] = {}
    finished: dict[str, float] = {}
    with CaptionClient(inflight_server.grpc_url, timeout_s=300) as client:

        def long():
            started["long"] = time.monotonic()
            out = client.translate(long_texts, options=GenerationOptions(translation_num_beams=8))
            finished["long"] = time.monotonic()
            return out

        def short():
            time.sleep(0.15)  # the long batch is decoding by now (it takes seconds)
            out = client.translate("A dog runs .", options=GenerationOptions(translation_max_new_tokens=2))
            finished["short"] = time.monotonic()
            return out

        def bad():
            time.sleep(0.15)
            with pytest.raises(InvalidInputError, match="translation_num_beams must be in 1..8, got 99"):
                client.translate("A cat .", options=GenerationOptions(translation_num_beams=99))
            return "refused"

        results = staggered([long, short, bad], spread_s=0.0)
    assert results[2] == "refused", results[2]
    assert isinstance(results[0], list), results[0]
    took = {key: round(finished[key] - started["long"], 2) for key in finished}
    assert finished["short"] < finished["long"], f"the short request waited for the long batch: {took}"
    assert results[1] == _fixed_translation(reference, "A dog runs .", tokens=2)
    assert_all_equal(
        [(s, _fixed_translation(reference, t, beams=8)) for s, t in zip(results[0], long_texts, strict=True)],
        "translations of the long batch",
    )


def test_past_the_admission_bound_requests_are_shed_and_the_rest_are_exact(inflight_server, reference):
    """96 clients against 16 decoding rows and 32 waiting places: the surplus is UNAVAILABLE (ServerBusyError)
    instead of queueing without bound, and every answered request is still generate()'s. The engine's own
    bound on its queue is tested in tests/runtime/test_inflight_engine.py."""
    from captioning.client import ServerBusyError

    text = "Two dogs play in the snow ."
    with CaptionClient(inflight_server.grpc_url, timeout_s=300) as client:
        options = GenerationOptions(translation_num_beams=8)
        results = staggered([lambda: client.translate(text, options=options)] * 96, spread_s=0.2)
    busy = [r for r in results if isinstance(r, ServerBusyError)]
    served = [r for r in results if isinstance(r, str)]
    assert len(busy) + len(served) == 96, [r for r in results if not isinstance(r, (str, ServerBusyError))]
    assert busy and served, f"{len(busy)} shed, {len(served)} served"
    # the door (text enters at the translator), or the engine's own bounds behind it
    shed_by = (
        "in the pipeline",
        "Exceeds maximum queue size",
        "Exceeds the queue timeout",
        "Request timeout",
    )
    assert all(any(words in str(b) for words in shed_by) for b in busy), busy[:3]
    assert len(busy) >= 96 - 64, "more requests waited than the model may see and hold"
    assert set(served) == {_fixed_translation(reference, text, beams=8)}


def test_a_client_managed_sequence_is_refused_by_name(inflight_server):
    """perf_analyzer-style requests (a sequence_id with START/END) cannot be rescheduled by Triton 2.51 and
    would hang; the model answers INVALID_ARG instead."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(inflight_server.grpc_url)
    text = grpcclient.InferInput("text", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"A dog ."]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="send requests without sequence_id"):
        client.infer(
            "translator", [text], sequence_id=77, sequence_start=True, sequence_end=True, client_timeout=30
        )
    client.close()
