"""The opt-in trimmed-vocabulary repositories (alone, with int8, and on the torch runner) serve and agree with
the exact mode as often as documented (docs/performance.md). The kept tokens come from the recipe: the Arabic
side of the shared corpora, tokenised with the translator's own tokenizer."""

from __future__ import annotations

import pytest

from captioning.client import CaptionClient

from serving_helpers import batch_stats, serve

pytestmark = pytest.mark.integration

# Measured on the first 50 shared images with the fixture checkpoints (docs/performance.md): trim 50/50 English
# and 50/50 translations identical, trim+int8 11/50 and 24/50 (AVX2; 13/50 and 24/50 on AVX-512 VNNI). The
# trimmed mode leaves BLIP untouched, so its English captions must be exact. The floors leave room for noise
# but fail if trimming breaks the translator.
MIN_AGREEMENT = {
    "trim": {"english": 1.0, "translation": 0.80},
    "trim+int8": {"english": 0.10, "translation": 0.30},
    # the torch runner: the repository carries the whole checkpoint and vocab.json, trimmed as it loads
    "trim+torch": {"english": 1.0, "translation": 0.80},
}


@pytest.fixture(scope="module")
def kept_vocab(fixture_checkpoints, shared_data, tmp_path_factory):
    from captioning.export.vocab_trim import TrimCorpus, derive_vocab

    corpus = TrimCorpus(
        arabic_captions=(shared_data / "arabic_flickr8k" / "Flickr8k.arabic.full.txt",),
        pairs=(shared_data / "tatoeba_ara_eng" / "ara.txt",),
    )
    vocab = derive_vocab(fixture_checkpoints.mbart, corpus)
    assert len(vocab) < vocab.full_size * 0.6, "the recipe should drop the tokens Arabic text never uses"
    return vocab.save(tmp_path_factory.mktemp("vocab") / "kept.json")


@pytest.fixture(scope="module", params=sorted(MIN_AGREEMENT))
def trimmed_server(request, fixture_checkpoints, kept_vocab, tmp_path_factory):
    from captioning.export.build import BuildOptions, build_repository
    from captioning.export.repository import RepositoryOptions

    mode = request.param
    output = tmp_path_factory.mktemp(f"export-{mode}") / "repository"
    options = BuildOptions(
        progress=False,
        translator_vocab=kept_vocab,
        precision="int8" if "int8" in mode else "fp32",
        repository=RepositoryOptions(decoder_runner="torch" if "torch" in mode else "inprocess"),
    )
    repository = build_repository(fixture_checkpoints.blip, fixture_checkpoints.mbart, output, options)
    assert (repository / "translator" / "1" / "vocab.json").is_file()
    assert ("torch" in mode) == (repository / "translator" / "1" / "checkpoint").is_dir()
    with serve(repository, tmp_path_factory.mktemp(f"server-{mode}")) as server:
        yield mode, server


def test_trimmed_modes_serve_and_agree_as_documented(trimmed_server, reference, image_bytes):
    mode, server = trimmed_server
    with CaptionClient(server.grpc_url, timeout_s=300) as client:
        results = client.caption_batch(image_bytes, max_in_flight=8)
        alone = client.translate("a dog runs through the grass")
    english = sum(r.english == reference.caption(data) for r, data in zip(results, image_bytes, strict=True))
    translated = sum(r.arabic == reference.translate(r.english) for r in results)
    print(f"{mode}: {english}/{len(results)} English, {translated}/{len(results)} translations identical")
    floors = MIN_AGREEMENT[mode]
    assert english / len(results) >= floors["english"], (
        f"only {english}/{len(results)} English captions agree"
    )
    assert translated / len(results) >= floors["translation"], (
        f"only {translated}/{len(results)} translations agree"
    )
    assert alone.strip(), "the translator alone answers with text"
    assert batch_stats(server, "translator")
