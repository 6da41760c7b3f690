"""Checkpoints written by `train-captioner` and `train-translator` export and serve as they are: captions from a
real tritonserver equal `generate()` on the trained checkpoints."""

from __future__ import annotations

import pytest

from captioning.client import CaptionClient

from serving_helpers import Reference, assert_all_equal, serve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(fixture_checkpoints, shared_data, flickr_subset, tmp_path_factory):
    """best/ of a few steps of each trainer, started from the fixture checkpoints."""
    import torch

    from captioning.testing.fixtures import FixturePaths
    from captioning.training.captioner import CaptionerData, train_captioner
    from captioning.training.train_args import TrainConfig
    from captioning.training.translator import TranslatorData, train_translator

    work = tmp_path_factory.mktemp("trained")
    common = dict(batch_size=4, max_steps=3, padding="longest", dev_sample=2, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = CaptionerData(root=flickr_subset(work / "flickr", 2))
        # lr 1e-4 moves the weights (checked below) but keeps the fixture's sharply peaked logits, so ONNX
        # Runtime float noise cannot flip an argmax.
        train_captioner(fixture_checkpoints.blip, data, TrainConfig(output=work / "blip", lr=1e-4, **common))
        pairs = TranslatorData(
            pairs=shared_data / "tatoeba_ara_eng" / "ara.txt", limit_pairs=16, held_out=0.25
        )
        train_translator(
            fixture_checkpoints.mbart, pairs, TrainConfig(output=work / "mbart", lr=1e-4, **common)
        )
    finally:
        torch.set_num_threads(threads)
    return FixturePaths(blip=work / "blip" / "best", mbart=work / "mbart" / "best")


def test_trained_checkpoints_differ_from_where_they_started(trained, fixture_checkpoints):
    from safetensors.torch import load_file

    for start, end in ((fixture_checkpoints.blip, trained.blip), (fixture_checkpoints.mbart, trained.mbart)):
        before, after = load_file(str(start / "model.safetensors")), load_file(str(end / "model.safetensors"))
        assert before.keys() == after.keys()
        assert any(not (before[k] == after[k]).all() for k in before), f"{end} equals {start}"


def test_trained_checkpoints_serve_like_generate(trained, flickr_images, tmp_path):
    from captioning.export.build import BuildOptions, build_repository

    repository = build_repository(
        trained.blip, trained.mbart, tmp_path / "repository", BuildOptions(progress=False, validate=False)
    )
    images = [path.read_bytes() for path in flickr_images[:10]]
    with serve(repository, tmp_path) as server, CaptionClient(server.grpc_url, timeout_s=300) as client:
        results = client.caption_batch(images, max_in_flight=4)
    reference = Reference(trained)
    expected = [reference.both(data) for data in images]
    assert len(results) == len(images)
    assert_all_equal([(r.english, e[0]) for r, e in zip(results, expected, strict=True)], "English captions")
    assert_all_equal([(r.arabic, e[1]) for r, e in zip(results, expected, strict=True)], "Arabic captions")
