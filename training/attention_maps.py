"""Draws an attention baseline's weights over the image, one panel per generated word."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


def upsample(alphas: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One step's weights over a square grid of regions (7x7 for ResNet-50) -> [height, width], smooth."""
    side = math.isqrt(alphas.shape[-1])
    if side * side != alphas.shape[-1]:
        raise ValueError(f"{alphas.shape[-1]} regions do not form a square grid")
    grid = Image.fromarray(alphas.reshape(side, side).astype(np.float32), mode="F")
    return np.asarray(grid.resize(size, Image.BILINEAR))


def draw_attention(
    image: Image.Image, words: list[str], alphas: np.ndarray, path: Path, columns: int = 5
) -> Path:
    """PNG: the image, then for each word the image with its attention map overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(words) != len(alphas):
        raise ValueError(f"{len(words)} words but {len(alphas)} attention steps")
    shown = image.convert("RGB")
    shown.thumbnail((224, 224))
    panels = len(words) + 1
    rows = math.ceil(panels / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(shown)
    axes.flat[0].set_title("input", fontsize=10)
    for ax, word, alpha in zip(axes.flat[1:], words, alphas, strict=False):
        ax.imshow(shown)
        ax.imshow(upsample(alpha, shown.size), cmap="jet", alpha=0.5)
        ax.set_title(word, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path
