"""Preprocessing must equal BlipImageProcessor and turn every bad image into a clear InvalidImageError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from captioning.runtime.preprocess import (
    InvalidImageError,
    PreprocessConfig,
    decode_image,
    preprocess,
    preprocess_bytes,
)


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def processors():
    from transformers import BlipImageProcessor

    return [
        (BlipImageProcessor(), PreprocessConfig()),
        (
            BlipImageProcessor(size={"height": 96, "width": 64}, resample=2),
            PreprocessConfig.from_processor_dict(
                BlipImageProcessor(size={"height": 96, "width": 64}, resample=2).to_dict()
            ),
        ),
    ]


def test_matches_blip_image_processor_on_real_images(flickr_images, processors):
    for path in flickr_images[:12]:
        data = path.read_bytes()
        for reference, config in processors:
            expected = reference(images=Image.open(io.BytesIO(data)), return_tensors="np")["pixel_values"][0]
            actual = preprocess_bytes(data, config)
            assert actual.dtype == np.float32 and actual.shape == expected.shape
            np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_matches_on_other_modes(mode, processors):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).convert(mode)
    reference, config = processors[0]
    expected = reference(images=image, return_tensors="np")["pixel_values"][0]
    np.testing.assert_array_equal(preprocess(image, config), expected)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_supported_formats_decode(fmt):
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    assert decode_image(_encode(image, fmt)).size == (40, 30)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"definitely not an image", "not a decodable image"),
        (_encode(Image.new("RGB", (8, 8)), "GIF"), "format GIF is not supported"),
        (_encode(Image.new("RGB", (8, 8)), "BMP"), "format BMP is not supported"),
        (_encode(Image.new("RGB", (64, 64)), "JPEG")[:200], "header cannot be read"),
        (_encode(Image.effect_noise((256, 256), 60).convert("RGB"), "PNG")[:4000], "truncated or corrupt"),
    ],
)
def test_bad_images_are_named(data, message):
    with pytest.raises(InvalidImageError, match=message):
        preprocess_bytes(data, PreprocessConfig())


def test_pixel_limit_is_enforced_before_decoding():
    data = _encode(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(InvalidImageError, match="300x200 = 60000 pixels; the limit is 50000"):
        decode_image(data, max_pixels=50_000)


def test_config_validation():
    with pytest.raises(ValueError, match="height and width"):
        PreprocessConfig.from_processor_dict({"size": {"shortest_edge": 384}})
    with pytest.raises(ValueError, match="resample"):
        PreprocessConfig(resample=9).validate()
