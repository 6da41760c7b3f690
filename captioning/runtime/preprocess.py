"""Image decoding and BLIP preprocessing without transformers, bit-for-bit with `BlipImageProcessor`.

Runs inside the `image_preprocess` Triton model, so it must be cheap to import and must turn every kind of
bad input into an `InvalidImageError` that names the problem instead of an exception from deep inside PIL.
"""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from captioning.contract import MAX_IMAGE_BYTES as MAX_BYTES
from captioning.contract import MAX_PIXELS

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP")

_RESAMPLE = {
    0: Image.NEAREST,
    1: Image.LANCZOS,
    2: Image.BILINEAR,
    3: Image.BICUBIC,
    4: Image.BOX,
    5: Image.HAMMING,
}


class InvalidImageError(ValueError):
    """The request's image cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """The parts of a `BlipImageProcessor` config that shape the pixels."""

    height: int = 384
    width: int = 384
    resample: int = 3
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    do_convert_rgb: bool = True
    max_pixels: int = MAX_PIXELS

    def validate(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"image size must be positive, got {self.height}x{self.width}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"unsupported resample filter {self.resample}")
        if not self.do_resize:
            raise ValueError("do_resize=False is not supported: the vision graph needs a fixed image size")

    @classmethod
    def from_processor_dict(cls, cfg: dict, max_pixels: int = MAX_PIXELS) -> PreprocessConfig:
        size = cfg.get("size", {"height": 384, "width": 384})
        if isinstance(size, int):
            size = {"height": size, "width": size}
        if "height" not in size:
            raise ValueError(f"unsupported image processor size {size}; expected height and width")
        defaults = cls()
        config = cls(
            height=int(size["height"]),
            width=int(size["width"]),
            resample=int(cfg.get("resample", defaults.resample)),
            do_resize=bool(cfg.get("do_resize", True)),
            do_rescale=bool(cfg.get("do_rescale", True)),
            rescale_factor=float(cfg.get("rescale_factor", defaults.rescale_factor)),
            do_normalize=bool(cfg.get("do_normalize", True)),
            image_mean=tuple(cfg.get("image_mean", defaults.image_mean)),
            image_std=tuple(cfg.get("image_std", defaults.image_std)),
            do_convert_rgb=bool(cfg.get("do_convert_rgb", True)),
            max_pixels=max_pixels,
        )
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: str | Path, max_pixels: int = MAX_PIXELS) -> PreprocessConfig:
        return cls.from_processor_dict(json.loads(Path(path).read_text()), max_pixels=max_pixels)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open encoded bytes as a PIL image, refusing what the service does not accept."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidImageError(f"image must be encoded bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise InvalidImageError("image is empty (0 bytes)")
    if len(data) > MAX_BYTES:
        raise InvalidImageError(f"image is {len(data)} bytes; the limit is {MAX_BYTES}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(bytes(data)), formats=None)
    except UnidentifiedImageError:
        raise InvalidImageError(
            f"image bytes are not a decodable image (supported: {', '.join(SUPPORTED_FORMATS)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImageError(f"image has more than {max_pixels} pixels") from None
    except Exception as exc:  # PIL raises many types for corrupt headers
        raise InvalidImageError(f"image header cannot be read: {exc}") from None
    if image.format not in SUPPORTED_FORMATS:
        raise InvalidImageError(
            f"image format {image.format} is not supported (supported: {', '.join(SUPPORTED_FORMATS)})"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImageError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    if width == 0 or height == 0:
        raise InvalidImageError(f"image has zero size {width}x{height}")
    try:
        image.load()
    except Exception as exc:
        raise InvalidImageError(f"image data is truncated or corrupt: {exc}") from None
    return image


def preprocess(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """One PIL image -> float32 [3, H, W], in the same operation order as `BlipImageProcessor`."""
    if config.do_convert_rgb and image.mode != "RGB":
        image = image.convert("RGB")
    if image.mode != "RGB":
        raise InvalidImageError(f"image mode {image.mode} is not RGB and do_convert_rgb is off")
    image = image.resize((config.width, config.height), resample=_RESAMPLE[config.resample])
    pixels = np.asarray(image)
    if config.do_rescale:
        pixels = (pixels.astype(np.float64) * config.rescale_factor).astype(np.float32)
    else:
        pixels = pixels.astype(np.float32)
    if config.do_normalize:
        mean = np.asarray(config.image_mean, dtype=np.float32)
        std = np.asarray(config.image_std, dtype=np.float32)
        pixels = (pixels - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def preprocess_bytes(data: bytes, config: PreprocessConfig) -> np.ndarray:
    return preprocess(decode_image(data, config.max_pixels), config)
