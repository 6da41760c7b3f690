"""Turn whatever the caller holds into the encoded bytes the `image` tensor carries."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Union

from captioning.client.errors import InvalidInputError

if TYPE_CHECKING:
    from PIL.Image import Image

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, "Image"]

BYTES_SOURCE = "<bytes>"
PIL_SOURCE = "<PIL image>"
# PNG cannot store these modes; converting keeps the colours the model would see anyway.
_PNG_CONVERT = {"CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "F": "L", "I;16": "I"}


def describe(image: object) -> str:
    """The `source` a result or error names, without reading anything."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return BYTES_SOURCE
    return PIL_SOURCE


def load_image(image: ImageInput) -> tuple[bytes, str]:
    """Return (encoded bytes, source). Files are sent untouched: the server decodes JPEG/PNG/WebP itself."""
    if isinstance(image, (str, os.PathLike)):
        return _read_file(Path(image)), os.fspath(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise InvalidInputError(f"{BYTES_SOURCE}: image is empty (0 bytes)")
        return data, BYTES_SOURCE
    if _is_pil_image(image):
        return _encode_png(image), PIL_SOURCE
    raise InvalidInputError(
        f"unsupported image type {type(image).__name__}: pass a path, encoded bytes or a PIL image"
    )


def _read_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{path}: is a directory, not an image file") from None
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise InvalidInputError(f"{path}: file is empty (0 bytes)")
    return data


def _is_pil_image(obj: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a declared dependency
        return False
    return isinstance(obj, Image.Image)


def _encode_png(image: Image) -> bytes:
    if image.width == 0 or image.height == 0:
        raise InvalidInputError(f"{PIL_SOURCE}: image has no pixels ({image.width}x{image.height})")
    if image.mode in _PNG_CONVERT:
        image = image.convert(_PNG_CONVERT[image.mode])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
