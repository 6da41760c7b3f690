"""`make demo`: checkpoints -> repository -> running server -> captions for a few images, in one command."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

from captioning.datasets import default_data_dir
from captioning.testing.fixtures import cached_fixtures

LOG = logging.getLogger(__name__)

FALLBACK_NOTICE = """
============================================================================================
The Hugging Face hub cannot be reached, so the demo uses the small checkpoints this project
builds offline (captioning/testing/fixtures.py). They are UNTRAINED TEST MODELS: the captions below
show that the serving pipeline works end to end, not what BLIP or mBART-50 would say.
For real captions, point the demo at real checkpoints (hub ids or local directories):
    make demo CAPTIONER=/path/to/blip-image-captioning-base TRANSLATOR=/path/to/mbart-large-50-many-to-many-mmt
============================================================================================
"""


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    captioner: str
    translator: str
    images: list[Path]
    count: int = 4
    workdir: Path = Path("build/demo")


def checkpoint_available(name: str) -> bool:
    """A local directory, or a hub id that is cached or reachable right now."""
    if Path(name).is_dir():
        return True
    try:
        from huggingface_hub import model_info, try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return True
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            return False
        model_info(name, timeout=5)
        return True
    except Exception as exc:
        LOG.info("checkpoint %s is not available: %s", name, type(exc).__name__)
        return False


def sample_images(count: int) -> list[Path]:
    """Shared Flickr8k images when present, else matplotlib's public-domain sample photo."""
    flickr = default_data_dir() / "flickr8k" / "Images"
    if flickr.is_dir():
        return sorted(flickr.glob("*.jpg"))[:count]
    from matplotlib import cbook

    # grace_hopper.jpg: US Navy photograph, public domain, shipped with matplotlib's sample data.
    return [Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))]


def _repository_for(captioner: str, translator: str, workdir: Path) -> Path:
    from captioning.export.build import build_repository

    key = hashlib.sha256(json.dumps([captioner, translator]).encode()).hexdigest()[:12]
    repository = workdir / f"repository-{key}"
    if (repository / "manifest.json").exists():
        LOG.info("reusing model repository %s", repository)
        return repository
    return build_repository(captioner, translator, repository)


def prepare_repository(captioner: str, translator: str, workdir: Path) -> tuple[Path, str, str]:
    """Build (or reuse) a repository for these checkpoints, falling back to the offline fixtures."""
    if not (checkpoint_available(captioner) and checkpoint_available(translator)):
        print(FALLBACK_NOTICE, flush=True)
        fixtures = cached_fixtures()
        captioner, translator = str(fixtures.blip), str(fixtures.mbart)
    return _repository_for(captioner, translator, Path(workdir)), captioner, translator


def run_demo(options: DemoOptions) -> int:
    from captioning.client import CaptionClient
    from captioning.server.launcher import ServerOptions, TritonServer

    repository, captioner, translator = prepare_repository(
        options.captioner, options.translator, options.workdir
    )
    images = options.images or sample_images(options.count)
    server_options = ServerOptions.on_free_ports(
        repository, log_file=Path(options.workdir) / "tritonserver.log"
    )
    with TritonServer(server_options) as server, CaptionClient(server.grpc_url, protocol="grpc") as client:
        results = client.caption_batch([str(p) for p in images], return_exceptions=True)
    print(f"\ncaptioner: {captioner}\ntranslator: {translator}\n")
    failed = 0
    for path, result in zip(images, results, strict=True):
        if isinstance(result, Exception):
            failed += 1
            print(f"{Path(path).name}\n  error: {result}\n")
        else:
            print(f"{Path(path).name}\n  en: {result.english}\n  ar: {result.arabic}\n")
    return 1 if failed else 0
