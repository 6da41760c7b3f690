"""bf16 on a CPU through a real tritonserver (`captioning export --target cpu --precision bf16 --inflight
--cpu-slots auto`): vision and both generators on the torch runner in bf16, every request answered, agreement
with the exact mode counted against the documented floors (docs/performance.md, "bf16 on CPU"), and requests
decoded in flight, staggered so that their cohorts merge, equal to bf16 batch decoding token for token.

This machine has neither amx_bf16 nor avx512_bf16, so the server runs with the operator's override (bf16 is
emulated through fp32 here: slower than fp32, the same tokens as on a native CPU only where the kernels agree).
"""

from __future__ import annotations

import pytest

from captioning import contract
from captioning.client import CaptionClient, GenerationOptions

from serving_helpers import cold_start_retry, serve, staggered_captions, staggered_options

pytestmark = pytest.mark.integration

# Measured on the 50 shared images with the fixture checkpoints (random weights whose greedy decisions flip
# under small perturbations), served on the AVX2 development machine: 22/50 English captions and 39/50
# translations of the served English identical to fp32 generate(). The floors leave room for noise, and fail
# if an fp32 island or the cast breaks a model (a broken one agrees on next to nothing).
MIN_AGREEMENT = {"english": 0.30, "translation": 0.55}
# Captions: where torch multiplies bf16 with its own GEMM (no oneDNN bf16 path: `_is_mkldnn_bf16_supported()`
# false, as on AVX2) each row's products are computed alone, so merged in-flight steps give batch decoding's
# captions exactly. oneDNN (AVX-512, AVX512-BF16, AMX) picks kernels by shape and may round a row differently
# beside others (30/32 equal on an AMX Xeon, `bench-inflight`): there equality is counted.
# Translations are counted everywhere: the translator encodes the texts admitted at one step together, padded
# to the longest, and the encoder's attention rounds a padded text differently (on the fixture mBART, one text
# alone against beside a longer one: up to 0.016 apart in bf16, 1e-6 in fp32), which now and then flips a
# token of a random-weight model (1 of 24 translations in one run here, 0 in others).
NATIVE_IN_FLIGHT_FLOOR = 0.8
IMAGES = 50
STAGGERED = 24


@pytest.fixture(scope="module")
def bf16_repository(fixture_checkpoints, tmp_path_factory):
    from captioning.cli import main

    output = tmp_path_factory.mktemp("export-bf16") / "repository"
    # The CLI's own path: --precision bf16 on a CPU implies --decoder-runner torch.
    args = [
        "export",
        "--captioner",
        str(fixture_checkpoints.blip),
        "--translator",
        str(fixture_checkpoints.mbart),
    ]
    args += ["--output", str(output), "--target", "cpu", "--precision", "bf16", "--inflight", "--no-progress"]
    assert main([*args, "--cpu-slots", "auto", "--intra-op-threads", "1"]) == 0
    return output


@pytest.fixture(scope="module")
def bf16_server(bf16_repository, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(contract.ALLOW_SLOW_BF16_ENV, "1")  # no amx_bf16/avx512_bf16 here: see the docstring
        with serve(bf16_repository, tmp_path_factory.mktemp("server-bf16")) as running:
            yield running


class Bf16Batches:
    """bf16 batch decoding in this process, from the repository's own checkpoints: each request alone, as
    the served stages decode a batch without in-flight batching."""

    def __init__(self, repository) -> None:
        import torch

        from captioning.runtime.preprocess import PreprocessConfig
        from captioning.runtime.stages import CaptionStage, TranslationStage, load_settings
        from captioning.runtime.tokenization import TextCodec
        from captioning.runtime.torch_runner import (
            TorchOptions,
            encoder_graph,
            load_checkpoint,
            step_decoder,
            vision_graph,
        )

        torch.set_num_threads(1)
        options = TorchOptions(precision="bf16")
        version = {
            name: repository / name / "1"
            for name in (contract.VISION_MODEL, "caption_generator", "translator")
        }
        self.preprocess = PreprocessConfig.from_file(
            repository / "image_preprocess" / "1" / "preprocessor_config.json"
        )
        self.vision = vision_graph(
            load_checkpoint("blip_vision", version[contract.VISION_MODEL] / "checkpoint"), options
        )
        blip = load_checkpoint("blip", version["caption_generator"] / "checkpoint")
        settings = load_settings(version["caption_generator"] / "generation.json")
        self.captions = CaptionStage(
            step_decoder("blip", blip, options, settings.max_length),
            settings,
            TextCodec.load(version["caption_generator"] / "tokenizer"),
        )
        mbart = load_checkpoint("mbart", version["translator"] / "checkpoint")
        settings = load_settings(version["translator"] / "generation.json")
        self.translations = TranslationStage(
            encoder_graph(mbart, options),
            step_decoder("mbart", mbart, options, settings.max_length),
            settings,
            TextCodec.load(version["translator"] / "tokenizer", src_lang=contract.SOURCE_LANG),
        )

    def both(self, image: bytes, options: GenerationOptions) -> tuple[str, str]:
        from captioning.decoding import Overrides
        from captioning.runtime.preprocess import preprocess_bytes
        from captioning.runtime.stages import Source

        pixels = preprocess_bytes(image, self.preprocess)[None]
        embeds = self.vision.run({contract.PIXEL_VALUES: pixels})[contract.IMAGE_EMBEDS]
        [english] = self.captions.run(list(embeds), [Overrides(num_beams=options.caption_num_beams)])
        [arabic] = self.translations.run([Source(english, generated=True)], [Overrides()])
        return english, arabic


def test_bf16_serves_every_request_and_agrees_with_exact_mode_as_documented(
    bf16_server, reference, image_bytes
):
    images = image_bytes[:IMAGES]
    with CaptionClient(bf16_server.grpc_url, timeout_s=300, retry=cold_start_retry()) as client:
        results = client.caption_batch(images, max_in_flight=8, return_exceptions=True)
    failed = [r for r in results if isinstance(r, Exception)]
    assert not failed, f"{len(failed)}/{len(images)} requests failed; first: {failed[:2]}"
    assert all(isinstance(r.english, str) and isinstance(r.arabic, str) for r in results)
    english = sum(r.english == reference.caption(data) for r, data in zip(results, images, strict=True))
    translated = sum(r.arabic == reference.translate(r.english) for r in results)
    print(f"bf16: {english}/{len(images)} English, {translated}/{len(images)} translations identical to fp32")
    assert english / len(images) >= MIN_AGREEMENT["english"], f"only {english}/{len(images)} English agree"
    assert translated / len(images) >= MIN_AGREEMENT["translation"], f"only {translated}/{len(images)} agree"
    log = bf16_server.options.log_file.read_text()
    assert f"loading bf16 anyway ({contract.ALLOW_SLOW_BF16_ENV}=1)" in log, "the CPU check did not run"
    assert "BlipVisionGraph in bf16; kept in fp32" in log, "blip_vision is not on the torch runner in bf16"


def test_staggered_requests_in_flight_equal_bf16_batch_decoding(bf16_server, bf16_repository, image_bytes):
    import torch

    images = image_bytes[IMAGES - STAGGERED : IMAGES]
    results = staggered_captions(bf16_server.grpc_url, images)
    batches = Bf16Batches(bf16_repository)
    pairs = []
    for i, (result, data) in enumerate(zip(results, images, strict=True)):
        assert not isinstance(result, Exception), result
        pairs.append(((result.english, result.arabic), batches.both(data, staggered_options(i))))
    equal = sum(served == alone for served, alone in pairs)
    print(f"bf16 in flight: {equal}/{len(pairs)} equal to bf16 batch decoding")
    mismatches = [(i, a, b) for i, (a, b) in enumerate(pairs) if a != b]
    assert equal / len(pairs) >= NATIVE_IN_FLIGHT_FLOOR, f"only {equal}/{len(pairs)}: {mismatches[:2]}"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():  # no oneDNN shape-dependent kernels: see above
        captions = [(i, a[0], b[0]) for i, (a, b) in enumerate(pairs) if a[0] != b[0]]
        assert not captions, (
            f"{len(captions)}/{len(pairs)} captions differ from bf16 batch decoding: {captions[:2]}"
        )
    assert "merged" in bf16_server.options.log_file.read_text(), "no forward pass merged cohorts"
