"""End to end through a real tritonserver: served captions equal `transformers`' `generate()` token for token."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from captioning.client import CaptionClient, GenerationOptions, InvalidInputError

from serving_helpers import assert_all_equal, batch_stats

pytestmark = pytest.mark.integration

MODES = {
    # checkpoint defaults: BLIP greedy, mBART-50 beam search as its generation config says
    "greedy-caption": GenerationOptions(),
    "beam": GenerationOptions(caption_num_beams=3, translation_num_beams=5),
    "greedy-translation": GenerationOptions(caption_num_beams=5, translation_num_beams=1),
}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_captions_equal_generate(server, reference, image_bytes, protocol, mode):
    options = MODES[mode]
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with CaptionClient(url, protocol=protocol, timeout_s=300) as client:
        results = client.caption_batch(image_bytes, options=options, max_in_flight=4)
    expected = [
        reference.both(data, options.caption_num_beams, options.translation_num_beams) for data in image_bytes
    ]
    assert len(results) == len(image_bytes) >= 50
    assert_all_equal([(r.english, e[0]) for r, e in zip(results, expected, strict=True)], "English captions")
    assert_all_equal([(r.arabic, e[1]) for r, e in zip(results, expected, strict=True)], "Arabic captions")
    assert len({r.english for r in results}) > 5, "fixture captions should vary between images"


def test_concurrent_requests_are_batched(server, reference, image_bytes):
    before = batch_stats(server, "caption_generator")
    vision_before = batch_stats(server, "blip_vision")
    images = image_bytes[:16]
    with CaptionClient(server.grpc_url, timeout_s=300) as client:
        results = client.caption_batch(images, max_in_flight=16)
    expected = [reference.both(data) for data in images]
    assert_all_equal([((r.english, r.arabic), e) for r, e in zip(results, expected, strict=True)], "captions")
    after = batch_stats(server, "caption_generator")
    batched = {size: after.get(size, 0) - before.get(size, 0) for size in after if size > 1}
    assert sum(batched.values()) > 0, f"no batched executions of caption_generator: {after}"
    translator = batch_stats(server, "translator")
    assert any(size > 1 for size in translator), f"translator never batched: {translator}"
    # On a CPU the vision encoder prefers one request per run (RepositoryOptions.vision_batching); with an
    # instance free, as here, every image runs alone
    vision = batch_stats(server, "blip_vision")
    runs = {size: vision.get(size, 0) - vision_before.get(size, 0) for size in vision}
    assert runs.get(1, 0) == len(images) and not any(n for size, n in runs.items() if size > 1), runs


def test_translator_alone(server, reference, shared_data):
    lines = (shared_data / "tatoeba_ara_eng" / "ara.txt").read_text(encoding="utf-8").splitlines()
    sentences = [line.split("\t")[0] for line in lines[::600]][:20]
    with CaptionClient(server.http_url, protocol="http", timeout_s=300) as client:
        served = client.translate(sentences)
        greedy = client.translate(sentences[:5], options=GenerationOptions(translation_num_beams=1))
    assert_all_equal(
        [(s, reference.translate(t)) for s, t in zip(served, sentences, strict=True)], "translations"
    )
    assert_all_equal(
        [(s, reference.translate(t, 1)) for s, t in zip(greedy, sentences[:5], strict=True)],
        "greedy translations",
    )


def test_max_new_tokens_per_request(server, reference, image_bytes):
    options = GenerationOptions(caption_max_new_tokens=4, caption_num_beams=2)
    with CaptionClient(server.grpc_url, timeout_s=300) as client:
        results = client.caption_batch(image_bytes[:4], lang="en", options=options)
    expected = [reference.caption(data, 2, max_new_tokens=4) for data in image_bytes[:4]]
    assert_all_equal([(r.english, e) for r, e in zip(results, expected, strict=True)], "short captions")
    assert all(r.arabic is None for r in results)


def test_bad_image_fails_alone_in_a_concurrent_batch(server, reference, image_bytes):
    good = image_bytes[:7]
    bad = [b"this is not an image", image_bytes[0][:300]]
    batch = good[:3] + [bad[0]] + good[3:] + [bad[1]]
    with CaptionClient(server.grpc_url, timeout_s=300) as client:
        results = client.caption_batch(batch, max_in_flight=16, return_exceptions=True)
        assert client.is_ready()
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 2
    assert all(isinstance(e, InvalidInputError) for e in errors)
    assert "not a decodable image" in str(results[3])
    assert "cannot be read" in str(results[-1]) or "truncated" in str(results[-1])
    served = [r for r in results if not isinstance(r, Exception)]
    expected = [reference.both(data) for data in good]
    assert_all_equal([((r.english, r.arabic), e) for r, e in zip(served, expected, strict=True)], "captions")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"caption_num_beams": 99}, "caption_num_beams must be in 1..8"),
        ({"translation_max_new_tokens": 500}, "translation_max_new_tokens must be in 1..63"),
        ({"caption_num_beams": "lots"}, "caption_num_beams must be an integer"),
    ],
)
def test_out_of_range_options_are_invalid_arg(server, image_bytes, options, message):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        image = grpcclient.InferInput("image", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[image_bytes[0]]], dtype=np.object_))
        with pytest.raises(InferenceServerException) as info:
            client.infer("arabic_caption", [image], parameters=options)
    assert message in info.value.message()
    assert "INVALID_ARG" in str(info.value.status()) or "INVALID_ARGUMENT" in str(info.value.status())


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [([1, 1], "INT32", "data-type"), ([1, 2], "BYTES", "shape")],
)
def test_wrong_tensor_type_or_shape_is_invalid_arg(server, shape, dtype, message):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    with httpclient.InferenceServerClient(server.http_url) as client:
        tensor = httpclient.InferInput("image", shape, dtype)
        data = (
            np.zeros(shape, dtype=np.int32)
            if dtype == "INT32"
            else np.array([[b"a", b"b"]], dtype=np.object_)
        )
        tensor.set_data_from_numpy(data)
        with pytest.raises(InferenceServerException) as info:
            client.infer("arabic_caption", [tensor])
    assert message in info.value.message().lower()
    with CaptionClient(server.grpc_url) as client:
        assert client.is_ready()


def test_caption_cli_prints_captions(server, reference, flickr_images):
    paths = [str(p) for p in flickr_images[:2]]
    completed = subprocess.run(
        [sys.executable, "-m", "captioning.client.cli", *paths, "--url", server.grpc_url, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = [json.loads(line) for line in completed.stdout.splitlines() if line.strip()]
    assert len(lines) == 2
    for line, path in zip(lines, flickr_images[:2], strict=True):
        english, arabic = reference.both(path.read_bytes())
        assert line["english"] == english and line["arabic"] == arabic


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_client(server, reference, image_bytes, protocol):
    import asyncio

    from captioning.client import AsyncCaptionClient

    url = server.grpc_url if protocol == "grpc" else server.http_url

    async def run():
        async with AsyncCaptionClient(url, protocol=protocol, timeout_s=300) as client:
            captions = await client.caption_batch(image_bytes[:6])
            english = await client.caption(image_bytes[6], lang="en")
            translation = await client.translate("a dog runs on the beach")
            return captions, english, translation

    captions, english, translation = asyncio.run(run())
    expected = [reference.both(data) for data in image_bytes[:6]]
    assert_all_equal(
        [((r.english, r.arabic), e) for r, e in zip(captions, expected, strict=True)], "captions"
    )
    assert english.english == reference.caption(image_bytes[6]) and english.arabic is None
    assert translation == reference.translate("a dog runs on the beach")


def test_unknown_model_is_not_ready(server):
    from captioning.client import ModelNotReadyError

    with CaptionClient(server.grpc_url, model="no_such_model") as client, pytest.raises(ModelNotReadyError):
        client.caption(b"\xff\xd8 not used")


def test_caption_cli_translates_text(server, reference):
    text = "two children play football in the park"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "captioning.client.cli",
            "--text",
            text,
            "--url",
            server.http_url,
            "--protocol",
            "http",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert reference.translate(text) in completed.stdout


def _encoded(size: tuple[int, int], fmt: str) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "image is empty"),
        (_encoded((64, 48), "GIF"), "format GIF is not supported"),
        (_encoded((8000, 6500), "PNG"), "8000x6500 = 52000000 pixels; the limit is 50000000"),
    ],
    ids=["empty", "gif", "too-many-pixels"],
)
def test_bad_image_is_invalid_arg_naming_the_problem(server, data, message):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        image = grpcclient.InferInput("image", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        with pytest.raises(InferenceServerException) as info:
            client.infer("english_caption", [image])
        assert client.is_model_ready("english_caption")
    assert message in info.value.message()
    assert "INVALID_ARGUMENT" in str(info.value.status())


def test_bls_runner_gives_the_same_captions(bls_server, reference, image_bytes):
    options = GenerationOptions(caption_num_beams=3, translation_num_beams=2)
    with CaptionClient(bls_server.grpc_url, timeout_s=300) as client:
        results = client.caption_batch(image_bytes[:8], options=options, max_in_flight=8)
    expected = [reference.both(data, 3, 2) for data in image_bytes[:8]]
    assert_all_equal([((r.english, r.arabic), e) for r, e in zip(results, expected, strict=True)], "captions")
    assert batch_stats(bls_server, "blip_text_decoder"), "the decoder model was never called over BLS"


def _served_models(server) -> set[str]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as client:  # the index is restricted to the key
        index = client.get_model_repository_index(headers=server.admin_grpc_headers, as_json=True)["models"]
    return {m["name"] for m in index if m.get("state") == "READY"}


GENERATOR_ONLY = {"blip_cross_kv", "blip_text_decoder", "mbart_encoder", "mbart_cross_kv", "mbart_decoder"}


def test_inprocess_repository_does_not_load_generator_graphs_twice(server, repository):
    served = _served_models(server)
    assert {"arabic_caption", "english_caption", "translator", "blip_vision"} <= served
    assert not served & GENERATOR_ONLY, (
        "graphs the generators run themselves should not also be Triton models"
    )
    assert (repository / "translator" / "1" / "mbart_decoder.onnx").is_file()


def test_bls_repository_serves_every_graph(bls_server):
    assert _served_models(bls_server) >= GENERATOR_ONLY
