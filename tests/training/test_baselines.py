"""The from-scratch baselines: vocabulary, GloVe, both models, beam search, training CLI, attention maps."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from captioning.cli import main  # noqa: E402
from captioning.training import baseline_features as bf  # noqa: E402
from captioning.training.baseline_decode import beam_search, greedy  # noqa: E402
from captioning.training.baseline_models import ModelOptions, build_model, caption_loss  # noqa: E402
from captioning.training.baseline_train import CaptionSet, TrainOptions, batches  # noqa: E402
from captioning.training.vocab import SPECIALS, Vocab, load_glove, tokenize  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config():
    """Four small stages, like ResNet-50's, so 224-px images still give a 7x7 grid."""
    from transformers import ResNetConfig

    return ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], layer_type="basic"
    )


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    from transformers import ResNetModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("encoder")
    ResNetModel(tiny_config()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def flickr_subset(shared_data: Path, tmp_path_factory) -> Path:
    """A Flickr8k-layout folder: 6 train + 2 dev shared images, their real captions, and some bad lines."""
    from captioning.datasets import FlickrLayout, read_captions, read_split

    source = FlickrLayout(shared_data / "flickr8k")
    captions = read_captions(source.captions)
    root = tmp_path_factory.mktemp("flickr")
    (root / "Images").mkdir()
    lines = ["image,caption"]
    for split, count in (("train", 6), ("dev", 2)):
        names = [n for n in read_split(source.split(split)) if (source.images / n).is_file()][:count]
        for name in names:
            (root / "Images" / name).symlink_to(source.images / name)
            lines += [f"{name},{c}" for c in captions[name]]
        (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    lines += ["no comma or tab here", f"{names[0]},   "]
    (root / "captions.txt").write_bytes("\n".join(lines).encode() + b"\nbad.jpg,caf\xe9 latin-1\n")
    return root


def test_tokenize_and_vocab() -> None:
    assert tokenize("A dog, running; in the park's grass!") == [
        "a",
        "dog",
        "running",
        "in",
        "the",
        "park's",
        "grass",
    ]
    vocab = Vocab.build(["a dog runs", "a dog sits", "a cat"], min_count=2)
    assert vocab.words == [*SPECIALS, "a", "dog"]
    ids = vocab.encode("A dog flies", max_len=30)
    assert ids == [vocab.start, vocab.index["a"], vocab.index["dog"], vocab.unk, vocab.end]
    assert vocab.decode([*ids[1:], vocab.index["a"]]) == ["a", "dog"]  # <unk> dropped, stops at <end>
    assert len(vocab.encode("a a a a", max_len=2)) == 4


def test_glove_from_a_tiny_file(tmp_path: Path) -> None:
    glove = tmp_path / "glove.txt"
    glove.write_text("dog 0.1 0.2 0.3\nthe 1 2 3\nbroken 1 2\ncat 4 5 6\n", encoding="utf-8")
    vocab = Vocab([*SPECIALS, "dog", "cat", "zebra"])
    matrix, found = load_glove(glove, vocab)
    assert found == 2 and matrix.shape == (len(vocab), 3)
    expected = {
        line.split()[0]: [float(v) for v in line.split()[1:]] for line in glove.read_text().splitlines()
    }
    assert matrix[vocab.index["dog"]].tolist() == pytest.approx(expected["dog"])
    assert matrix[vocab.index["cat"]].tolist() == pytest.approx(expected["cat"])
    assert matrix[vocab.pad].abs().sum() == 0
    assert matrix[vocab.index["zebra"]].abs().sum() > 0  # missing word: small random vector
    model = build_model(ModelOptions(embed_dim=3, hidden=8, feature_proj=8), len(vocab), 16)
    model.set_embeddings(matrix)
    assert not model.embed.weight.requires_grad
    with pytest.raises(FileNotFoundError):
        load_glove(tmp_path / "missing.txt", vocab)


@pytest.fixture(scope="module")
def tiny_data(flickr_subset: Path, tiny_encoder_dir: Path):
    from PIL import Image

    from captioning.datasets import FlickrLayout

    examples = FlickrLayout(flickr_subset).examples("train")
    by_image: dict[Path, list[str]] = {}
    for example in examples:
        by_image.setdefault(example.image, []).append(example.caption)
    images = list(by_image)[:4]
    encoder = bf.build_encoder(tiny_encoder_dir)
    features = bf.encode(encoder, bf.preprocess([Image.open(p) for p in images])).half()
    data = CaptionSet([p.name for p in images], features, [by_image[p] for p in images])
    vocab = Vocab.build((c for caps in data.captions for c in caps), min_count=1)
    return data, vocab, images


@pytest.mark.parametrize("kind", ["merge", "attention"])
def test_model_trains_and_loss_falls(tiny_data, kind: str) -> None:
    data, vocab, _ = tiny_data
    assert data.features.shape[1:] == (49, 16)
    torch.manual_seed(0)
    model = build_model(
        ModelOptions(model=kind, embed_dim=32, hidden=64, feature_proj=32, dropout=0.0), len(vocab), 16
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    features, rows, inputs, targets, mask = next(
        batches(data, vocab, TrainOptions(batch_size=4), shuffle=False)
    )
    losses = []
    for _ in range(25):
        loss, cross_entropy = caption_loss(model, features, rows, inputs, targets, mask, alpha_c=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(cross_entropy))
    assert losses[0] == pytest.approx(math.log(len(vocab)), rel=0.2)  # starts near uniform
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("kind", ["merge", "attention"])
def test_beam_width_one_is_greedy(tiny_data, kind: str) -> None:
    data, vocab, _ = tiny_data
    torch.manual_seed(1)
    model = build_model(
        ModelOptions(model=kind, embed_dim=16, hidden=32, feature_proj=16), len(vocab), 16
    ).eval()
    features = data.features.float()
    with torch.no_grad():
        batch = greedy(model.step, model.init_state(features), vocab.start, vocab.end, max_len=12)
        for i in range(len(features)):
            one = beam_search(
                model.step, model.init_state(features[i : i + 1]), vocab.start, vocab.end, 1, 12
            )
            assert one.tokens == batch[i]
            if kind == "attention":
                assert len(one.alphas) == len(one.tokens)
                assert torch.stack(one.alphas).sum(-1).tolist() == pytest.approx([1.0] * len(one.tokens))


class MarkovScorer:
    """A toy 'model': the next-token log-probabilities depend only on the previous token."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table.log_softmax(-1)

    def step(self, tokens, state):
        return self.table[tokens], state, None

    def score(self, start: int, sequence: tuple[int, ...]) -> float:
        return float(sum(self.table[a, b] for a, b in zip((start, *sequence[:-1]), sequence, strict=True)))


def brute_force(scorer: MarkovScorer, vocab: int, start: int, end: int, max_len: int) -> tuple[int, ...]:
    """Every sequence that ends with <end> or reaches max_len, scored exactly."""
    candidates = []
    for length in range(1, max_len + 1):
        for seq in itertools.product(range(vocab), repeat=length):
            if end in seq[:-1] or (length < max_len and seq[-1] != end):
                continue
            candidates.append(seq)
    return max(candidates, key=lambda s: scorer.score(start, s))


def test_beam_search_finds_the_best_sequence_greedy_misses() -> None:
    # tokens: 0 = <start>, 1 = <end>, 2 = "a" (tempting first word, dead end), 3 = "b" (leads to a sure end)
    table = torch.tensor(
        [
            [-9.0, -9.0, 0.6, 0.5],
            [-9.0, 0.0, -9.0, -9.0],
            [-9.0, 0.0, 0.0, 0.0],
            [-9.0, 5.0, -9.0, -9.0],
        ]
    )
    scorer = MarkovScorer(table)
    best = brute_force(scorer, 4, start=0, end=1, max_len=4)
    state = (torch.zeros(1, 1),)
    greedy_hyp = beam_search(scorer.step, state, 0, 1, width=1, max_len=4)
    beam_hyp = beam_search(scorer.step, state, 0, 1, width=3, max_len=4)
    assert tuple(beam_hyp.tokens) == best
    assert beam_hyp.score == pytest.approx(scorer.score(0, best), abs=1e-5)
    assert scorer.score(0, tuple(greedy_hyp.tokens)) < beam_hyp.score  # the case beam search exists for


def test_exhaustive_beam_equals_brute_force_on_random_scorers() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        scorer = MarkovScorer(torch.randn(5, 5, generator=generator) * 2)
        best = brute_force(scorer, 5, start=0, end=1, max_len=3)
        hyp = beam_search(scorer.step, (torch.zeros(1, 1),), 0, 1, width=5**3, max_len=3)
        assert tuple(hyp.tokens) == best


def test_train_cli_checkpoint_and_attention_map(flickr_subset, tiny_encoder_dir, tmp_path, caplog) -> None:
    from PIL import Image

    from captioning.training.baselines import load_captioner

    output = tmp_path / "attention"
    code = main(
        ["train-baseline", "--data", str(flickr_subset), "--output", str(output), "--encoder", str(tiny_encoder_dir),
         "--epochs", "2", "--batch-size", "3", "--embed-dim", "16", "--hidden", "32", "--min-count", "1",
         "--lr", "3e-3", "--no-progress", "--no-meteor", "--max-len", "12"]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["train_images"] == 6 and metrics["train_captions"] == 30
    assert (
        len(metrics["history"]) == 2
        and metrics["history"][1]["train_loss"] < metrics["history"][0]["train_loss"]
    )
    assert set(metrics["dev"]["scores"]) >= {"BLEU-1", "BLEU-4"} and metrics["dev"]["images"] == 2
    issues = "\n".join(metrics["data_report"]["issues"])  # the bad lines, by file and line
    assert (
        "captions.txt:" in issues
        and "malformed" in issues
        and "empty caption" in issues
        and "UTF-8" in issues
    )
    assert (output / "loss_curve.png").stat().st_size > 0
    assert (output / "features").is_dir()  # the feature cache

    captioner = load_captioner(output)
    images = [Image.open(p) for p in sorted((flickr_subset / "Images").iterdir())[:2]]
    captions = captioner.caption(images)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    words, alphas = captioner.caption_with_attention(images[0])
    assert " ".join(words) == captions[0]
    assert alphas.shape == (len(words), 49)

    maps = tmp_path / "maps"
    image_path = sorted((flickr_subset / "Images").iterdir())[0]
    assert (
        main(["attention-map", "--checkpoint", str(output), str(image_path), "--output-dir", str(maps)]) == 0
    )
    png = maps / f"{image_path.stem}_attention.png"
    with Image.open(png) as drawn:
        assert drawn.format == "PNG" and drawn.width > 100


def test_merge_checkpoint_has_no_attention(flickr_subset, tiny_encoder_dir, tmp_path) -> None:
    from PIL import Image

    from captioning.training.baselines import load_captioner

    output = tmp_path / "merge"
    args = ["train-baseline", "--model", "merge", "--data", str(flickr_subset), "--output", str(output)]
    args += ["--encoder", str(tiny_encoder_dir), "--epochs", "1", "--hidden", "16", "--embed-dim", "16"]
    assert main([*args, "--no-progress", "--no-meteor", "--bleu-images", "1"]) == 0
    captioner = load_captioner(output)
    image = Image.open(sorted((flickr_subset / "Images").iterdir())[0])
    assert isinstance(captioner.caption([image])[0], str)
    with pytest.raises(ValueError, match="no attention"):
        captioner.caption_with_attention(image)


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    assert main(["train-baseline", "--data", str(tmp_path), "--output", str(tmp_path / "out")]) == 1
    with pytest.raises(FileNotFoundError, match="not a baseline checkpoint"):
        from captioning.training.baselines import load_captioner

        load_captioner(tmp_path)


def test_attention_map_rejects_mismatched_steps(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from captioning.training.attention_maps import draw_attention, upsample

    with pytest.raises(ValueError, match="words"):
        draw_attention(Image.new("RGB", (32, 32)), ["a", "dog"], np.full((1, 49), 1 / 49), tmp_path / "x.png")
    smooth = upsample(np.eye(7).reshape(49) / 7, (70, 70))
    assert smooth.shape == (70, 70) and smooth[5, 5] > smooth[5, 65]


@pytest.mark.parametrize("command", ["train-baseline", "attention-map"])
def test_cli_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert (
        "--checkpoint" in text
        if command == "attention-map"
        else "--model" in text and "random" in text.lower()
    )


def test_feature_cache_reuses_features(tiny_encoder_dir, flickr_subset, tmp_path) -> None:
    images = sorted((flickr_subset / "Images").iterdir())[:2]
    encoder = bf.build_encoder(tiny_encoder_dir)
    cache = bf.FeatureCache(tmp_path, progress=False)
    first = cache.features(encoder, "tiny", images)
    path = cache.path("tiny", images)
    assert path.is_file() and first.shape == (2, 49, 16)
    shutil.copy(path, tmp_path / "copy.pt")
    torch.save(torch.zeros_like(first), path)  # a cache hit must read the file, not recompute
    assert cache.features(encoder, "tiny", images).abs().sum() == 0
    assert cache.path("other", images) != path
