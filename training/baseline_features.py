"""The frozen CNN encoder of the baselines (transformers' ResNet, ResNet-50 layout) and its feature cache.

Features are computed once per image and cached: [regions, channels] from the last stage (7x7x2048 = 49x2048
for ResNet-50 at 224 px). The merge model uses their mean (= ResNet's global average pool).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

LOG = logging.getLogger(__name__)

IMAGE_SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def resnet50_config():
    """The ResNet-50 layout of microsoft/resnet-50."""
    from transformers import ResNetConfig

    return ResNetConfig(
        embedding_size=64,
        hidden_sizes=[256, 512, 1024, 2048],
        depths=[3, 4, 6, 3],
        layer_type="bottleneck",
        hidden_act="relu",
    )


def build_encoder(source: str | Path | None = None, config=None, seed: int = 0, calibrate=None):
    """A frozen ResNetModel: from a local checkpoint dir, or randomly initialised.

    Random init is what runs here (ImageNet weights cannot be downloaded), so it is logged loudly. A random
    network's BatchNorm layers hold the identity statistics (mean 0, variance 1) and its activations grow
    from stage to stage; `calibrate` (a float tensor batch of preprocessed images) re-estimates those
    statistics so the features come out at a sane scale.
    """
    import torch
    from transformers import ResNetModel

    if source is not None:
        directory = str(source)  # `--encoder DIR`: a saved checkpoint folder, never fetched from the hub
        model = ResNetModel.from_pretrained(directory, local_files_only=True)  # nosec B615 # --encoder DIR, local_files_only
        LOG.info("encoder: ResNet from %s", source)
    else:
        torch.manual_seed(seed)
        model = ResNetModel(config or resnet50_config())
        LOG.warning(
            "encoder: RANDOMLY INITIALISED ResNet (no ImageNet weights; pass --encoder DIR with a local "
            "microsoft/resnet-50 checkpoint for real features). Captions will be far weaker than the "
            "original study's."
        )
        if calibrate is not None:
            calibrate_batchnorm(model, calibrate)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def calibrate_batchnorm(model, pixels) -> None:
    """Sets BatchNorm running statistics to those of `pixels` (cumulative average over one pass)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for chunk in pixels.split(16):
            model(pixel_values=chunk)
    model.eval()
    LOG.info("encoder: BatchNorm statistics calibrated on %d training images", len(pixels))


def preprocess(images: Sequence[Image.Image], size: int = IMAGE_SIZE):
    """ImageNet preprocessing: RGB, resized to size x size (whole image, so attention maps line up), normalised."""
    import torch

    arrays = []
    for image in images:
        rgb = image.convert("RGB").resize((size, size), Image.BICUBIC)
        arrays.append((np.asarray(rgb, dtype=np.float32) / 255.0 - MEAN) / STD)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def encode(encoder, pixels):
    """[batch, regions, channels] from the last ResNet stage."""
    import torch

    with torch.no_grad():
        hidden = encoder(pixel_values=pixels).last_hidden_state  # [B, C, H, W]
    return hidden.flatten(2).transpose(1, 2).contiguous()


@dataclasses.dataclass
class FeatureCache:
    """Features of a list of images under one encoder, stored as float16 in one .pt file."""

    directory: Path
    batch_size: int = 16
    progress: bool = True

    def path(self, encoder_id: str, images: Sequence[Path]) -> Path:
        key = hashlib.sha256("\n".join([encoder_id, *map(str, images)]).encode()).hexdigest()[:16]
        return Path(self.directory) / f"features-{key}.pt"

    def features(self, encoder, encoder_id: str, images: Sequence[Path]):
        """[len(images), regions, channels] float16; computed once, then read from the cache."""
        import torch
        from tqdm import tqdm

        path = self.path(encoder_id, images)
        if path.is_file():
            LOG.info("features: read %d images from %s", len(images), path)
            return torch.load(path, map_location="cpu", weights_only=True)  # one float16 tensor
        chunks = []
        bar = tqdm(total=len(images), desc="features", unit="img", disable=not self.progress)
        for start in range(0, len(images), self.batch_size):
            batch = [Path(p) for p in images[start : start + self.batch_size]]
            pixels = preprocess([Image.open(p) for p in batch])
            chunks.append(encode(encoder, pixels).half())
            bar.update(len(batch))
        bar.close()
        features = torch.cat(chunks)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(features, path)
        LOG.info("features: %s for %d images cached in %s", tuple(features.shape), len(images), path)
        return features
