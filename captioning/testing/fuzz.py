"""Malformed and odd requests for the fuzz test and `docs/reliability.md`: what a careless or hostile client sends.

Each case is a raw request (model, input tensor with its Triton dtype and shape, parameters) with what a correct
server must answer: `ok` (it captions or translates), `invalid` (INVALID_ARG naming the problem) or `either`.
Nothing here may crash a stub, hang, or change the answers of the good requests sent beside it.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib

import numpy as np
from PIL import Image

from captioning import contract


@dataclasses.dataclass(frozen=True)
class FuzzCase:
    name: str
    model: str
    input_name: str
    array: np.ndarray
    datatype: str
    parameters: dict = dataclasses.field(default_factory=dict)
    expect: str = "invalid"  # "ok", "invalid" or "either"


def _image_case(name: str, data: bytes, expect: str = "invalid", parameters: dict | None = None) -> FuzzCase:
    array = np.array([[data]], dtype=np.object_)
    return FuzzCase(
        name, contract.ARABIC_MODEL, contract.IMAGE_INPUT, array, "BYTES", parameters or {}, expect
    )


def _text_case(name: str, data: bytes, expect: str = "invalid", parameters: dict | None = None) -> FuzzCase:
    array = np.array([[data]], dtype=np.object_)
    return FuzzCase(
        name, contract.TRANSLATOR_MODEL, contract.TEXT_INPUT, array, "BYTES", parameters or {}, expect
    )


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels, followed by almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = b"IDAT" + zlib.compress(b"\0" * 64)
    body += struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    return b"\x89PNG\r\n\x1a\n" + body


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def image_modes(good: bytes) -> list[FuzzCase]:
    """Every mode Pillow opens: each captions (converted to RGB as BlipImageProcessor does) or is refused."""
    base = Image.open(io.BytesIO(good)).convert("RGB").resize((64, 48))
    frames = [base, base.rotate(90, expand=False)]
    return [
        _image_case("grayscale JPEG", _encoded(base.convert("L"), "JPEG"), "ok"),
        _image_case("CMYK JPEG", _encoded(base.convert("CMYK"), "JPEG"), "ok"),
        _image_case("progressive JPEG", _encoded(base, "JPEG", progressive=True), "ok"),
        _image_case("palette PNG", _encoded(base.convert("P"), "PNG"), "ok"),
        _image_case("RGBA PNG", _encoded(base.convert("RGBA"), "PNG"), "ok"),
        _image_case("16-bit PNG", _encoded(base.convert("L").convert("I;16"), "PNG"), "either"),
        _image_case("1-bit PNG", _encoded(base.convert("1"), "PNG"), "ok"),
        _image_case("WebP", _encoded(base, "WEBP"), "ok"),
        _image_case(
            "animated WebP (first frame)",
            _encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
            "ok",
        ),
        _image_case(
            "animated PNG (first frame)",
            _encoded(frames[0], "PNG", save_all=True, append_images=frames[1:]),
            "ok",
        ),
        _image_case("GIF", _encoded(base, "GIF")),
        _image_case("BMP", _encoded(base, "BMP")),
        _image_case("TIFF", _encoded(base, "TIFF")),
        _image_case("1x1 JPEG", _encoded(base.resize((1, 1)), "JPEG"), "ok"),
    ]


def bombs() -> list[FuzzCase]:
    """Files that claim more pixels than the limit: refused from the header, before any pixel is decoded."""
    zeros = Image.new("L", (12_000, 12_000))
    return [
        _image_case("PNG header 2^31 x 2^31", _png_header(2**31 - 1, 2**31 - 1)),
        _image_case("PNG header 100000 x 100000", _png_header(100_000, 100_000)),
        _image_case("12000 x 12000 zlib bomb", _encoded(zeros, "PNG", optimize=True)),
    ]


def corrupted(good: bytes, rng: np.random.Generator, count: int) -> list[FuzzCase]:
    """Random bytes, truncations and bit flips of a good JPEG: either still decodable or refused."""
    cases = [_image_case("empty bytes", b""), _image_case("one byte", b"\xff")]
    for i in range(count):
        kind = i % 3
        if kind == 0:
            data = rng.bytes(int(rng.integers(1, 4096)))
            cases.append(_image_case(f"random bytes {i}", data))
        elif kind == 1:
            cut = int(rng.integers(1, len(good)))
            cases.append(_image_case(f"truncated at {cut}", good[:cut], "either"))
        else:
            flipped = bytearray(good)
            for position in rng.integers(0, len(good), size=int(rng.integers(1, 16))):
                flipped[position] ^= 1 << int(rng.integers(0, 8))
            cases.append(_image_case(f"bit flips {i}", bytes(flipped), "either"))
    return cases


def bad_tensors(good: bytes) -> list[FuzzCase]:
    """Wrong dtypes and shapes: Triton itself refuses most before a model sees them."""
    name, model = contract.IMAGE_INPUT, contract.ARABIC_MODEL
    return [
        FuzzCase("image as INT32", model, name, np.zeros((1, 1), dtype=np.int32), "INT32"),
        FuzzCase("image as FP32", model, name, np.zeros((1, 1), dtype=np.float32), "FP32"),
        FuzzCase("image shape [1, 2]", model, name, np.array([[good, good]], dtype=np.object_), "BYTES"),
        FuzzCase(
            "two images in one request",
            model,
            name,
            np.array([[good], [good]], dtype=np.object_),
            "BYTES",
            {},
            "ok",
        ),
    ]


def bad_parameters(good: bytes) -> list[FuzzCase]:
    values = [0, 99, -1, "three", True, 2.5, "", [3], {"a": 1}]
    cases = [
        _image_case(f"caption_num_beams={v!r}", good, "invalid", {"caption_num_beams": v}) for v in values
    ]
    cases += [
        _image_case("caption_max_new_tokens=100000", good, "invalid", {"caption_max_new_tokens": 100_000}),
        _image_case("translation_num_beams=0", good, "invalid", {"translation_num_beams": 0}),
        _image_case("an unknown parameter", good, "ok", {"colour": "blue"}),
        _image_case("caption_num_beams='3' (string int)", good, "ok", {"caption_num_beams": "3"}),
    ]
    return cases


def bad_texts() -> list[FuzzCase]:
    return [
        _text_case("not UTF-8", b"\xff\xfe\xfd"),
        _text_case("1 MB text", b"a" * 1_000_000),
        _text_case("too many tokens", ("a dog runs " * 200).encode()),
        _text_case("empty text", b""),
        _text_case("whitespace only", b"   \n\t"),
        _text_case("emoji", "a dog 🐕 runs on the beach 🏖️".encode(), "ok"),
        _text_case("Arabic text", "كلب يجري".encode(), "ok"),
        _text_case("NUL bytes", b"a dog\x00runs", "either"),
        _text_case("control characters", "a\u200bdog\u202eruns".encode(), "ok"),
        _text_case("translation_num_beams=9", b"a dog runs", "invalid", {"translation_num_beams": 9}),
    ]


def corpus(good: bytes, count: int = 300, seed: int = 0) -> list[FuzzCase]:
    """At least `count` cases: every fixed kind, then random corruptions to make up the number."""
    rng = np.random.default_rng(seed)
    fixed = image_modes(good) + bombs() + bad_tensors(good) + bad_parameters(good) + bad_texts()
    return fixed + corrupted(good, rng, max(0, count - len(fixed)))
