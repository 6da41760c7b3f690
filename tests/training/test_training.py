"""`train-captioner` and `train-translator` on the fixture checkpoints: a few CPU steps on a handful of shared
images / sentence pairs. The loss falls, a stopped-and-resumed run equals an uninterrupted one, checkpoints
reload with `from_pretrained` and generate, bad data is reported by file and line and skipped."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from captioning.datasets import DataError
from captioning.training.train_args import TrainConfig

torch = pytest.importorskip("torch")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _flickr_dataset(root: Path, shared: Path, train: int, dev: int) -> tuple[Path, list[str]]:
    """A Flickr8k-layout folder in tmp: symlinks to shared images, their real captions, official split order."""
    flickr = shared.resolve() / "flickr8k"
    images = root / "Images"
    images.mkdir(parents=True)
    splits = {}
    for split, count in (("train", train), ("dev", dev)):
        names = (flickr / f"Flickr_8k.{split}Images.txt").read_text().split()
        names = [n for n in names if (flickr / "Images" / n).is_file()][:count]
        (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
        splits[split] = names
    wanted = set(splits["train"] + splits["dev"])
    lines = ["image,caption"]
    for line in (flickr / "captions.txt").read_text(encoding="utf-8").splitlines()[1:]:
        if line.split(",", 1)[0] in wanted:
            lines.append(line)
    (root / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name in wanted:
        (images / name).symlink_to(flickr / "Images" / name)
    return root, splits["train"]


def _config(output: Path, **overrides) -> TrainConfig:
    settings = dict(
        output=output,
        batch_size=5,
        lr=1e-3,
        max_steps=6,
        padding="longest",
        dev_sample=2,
        progress=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-6, atol=1e-7, msg=key)


def _assert_resumed_equals_uninterrupted(
    full: dict, resumed: dict, full_dir: Path, resumed_dir: Path
) -> None:
    assert [s for s, _ in resumed["train_loss"]] == list(range(1, full["total_steps"] + 1))
    losses = [loss for _, loss in full["train_loss"]]
    assert [loss for _, loss in resumed["train_loss"]] == pytest.approx(losses, rel=1e-6)
    assert [e["dev_loss"] for e in resumed["evals"]] == pytest.approx([e["dev_loss"] for e in full["evals"]])
    _assert_same_weights(full_dir / "last", resumed_dir / "last")


def _dev_loss(model, task) -> float:
    """Token-weighted dev loss, computed here independently of the Trainer."""
    items = task.dev_items()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(items), 5):
            batch = task.collate(items[start : start + 5])
            count = int((batch["labels"] != -100).sum())
            total += float(model(**batch).loss) * count
            tokens += count
    return total / tokens


# ---------------------------------------------------------------------------------------------- captioner


@pytest.fixture(scope="module")
def flickr_small(shared_data, tmp_path_factory):
    return _flickr_dataset(tmp_path_factory.mktemp("flickr"), shared_data, train=2, dev=2)


def test_captioner_trains_resumes_and_reloads(fixture_checkpoints, flickr_small, tmp_path):
    from PIL import Image
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from captioning.training.captioner import CaptionerData, CaptionerTask, train_captioner

    root, train_names = flickr_small
    data = CaptionerData(root=root)
    # 2 images x 5 captions, batch 5 accumulated twice: one optimizer step per epoch, the same 10 captions.
    settings = dict(grad_accum_steps=2, max_steps=5, warmup_steps=1)
    full = train_captioner(fixture_checkpoints.blip, data, _config(tmp_path / "full", **settings))
    losses = [loss for _, loss in full["train_loss"]]
    assert losses[-1] < 0.8 * losses[0], losses
    dev = [e["dev_loss"] for e in full["evals"]]
    assert len(dev) == 5 and dev[-1] < dev[0], dev
    assert {"BLEU-1", "BLEU-4"} <= set(full["final"])
    assert full["data"]["train_captions"] == 10 and full["data"]["skipped"] == 0

    stopped = train_captioner(
        fixture_checkpoints.blip, data, _config(tmp_path / "resumed", stop_at_step=2, **settings)
    )
    assert stopped["step"] == 2 and not stopped["finished"]
    resumed = train_captioner(
        fixture_checkpoints.blip, data, _config(tmp_path / "resumed", resume=True, **settings)
    )
    _assert_resumed_equals_uninterrupted(full, resumed, tmp_path / "full", tmp_path / "resumed")

    # best/ is a plain save_pretrained checkpoint: reloaded, it has the dev loss the trainer recorded for it.
    best = tmp_path / "full" / "best"
    saved = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert saved["best"] == full["best"] and saved["best"]["dev_loss"] == min(dev)
    task = CaptionerTask(best, data, _config(tmp_path / "unused"))
    model = BlipForConditionalGeneration.from_pretrained(best).eval()
    assert _dev_loss(model, task) == pytest.approx(full["best"]["dev_loss"], rel=1e-5)
    processor = BlipProcessor.from_pretrained(best)
    pixels = processor(images=Image.open(root / "Images" / train_names[0]), return_tensors="pt").pixel_values
    ids = model.generate(pixels, max_length=64)[0].tolist()
    text = model.config.text_config
    assert ids[0] == text.bos_token_id and (ids[-1] == text.sep_token_id or len(ids) == 64), ids
    original = _weights(fixture_checkpoints.blip)
    assert any(not torch.equal(original[k], v) for k, v in _weights(best).items()), "best/ was not trained"
    with Image.open(tmp_path / "full" / "loss_curve.png") as png:
        assert png.format == "PNG" and png.size[0] > 300


def test_captioner_batches_are_what_generate_scores(fixture_checkpoints, flickr_small, tmp_path):
    """The collated caption is the token sequence `generate()` writes ([DEC] ... [SEP]) and the training loss is
    the mean cross-entropy of generate()'s own logits for those tokens: training conditions like inference."""
    from PIL import Image
    from transformers import BlipForConditionalGeneration

    from captioning.datasets import CaptionExample
    from captioning.training.captioner import CaptionerData, CaptionerTask

    root, _ = flickr_small
    task = CaptionerTask(fixture_checkpoints.blip, CaptionerData(root=root), _config(tmp_path))
    model = BlipForConditionalGeneration.from_pretrained(fixture_checkpoints.blip).eval()
    sep = model.config.text_config.sep_token_id
    checked = 0
    for image in sorted((root / "Images").iterdir()):
        pixels = task.processor(images=Image.open(image), return_tensors="pt").pixel_values
        with torch.no_grad():
            out = model.generate(pixels, max_length=64, output_logits=True, return_dict_in_generate=True)
        ids = out.sequences[0]
        caption = task.processor.decode(ids, skip_special_tokens=True)
        if ids[-1] != sep or not caption:
            continue
        batch = task.collate([CaptionExample(image, caption)])
        assert batch["input_ids"][0].tolist() == ids.tolist()
        logits = torch.cat(out.logits)  # one row per generated token
        expected = torch.nn.functional.cross_entropy(logits.float(), ids[1:])
        with torch.no_grad():
            loss = model(**batch).loss
        torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)
        checked += 1
    assert checked, "no fixture caption to compare with"


def test_captioner_bad_data_is_reported_and_skipped(fixture_checkpoints, shared_data, tmp_path, caplog):
    from captioning.training.captioner import CaptionerData, CaptionerTask

    root, train_names = _flickr_dataset(tmp_path / "data", shared_data, train=2, dev=1)
    captions = root / "captions.txt"
    good = captions.read_bytes()
    bad = (
        b"no separator on this line\n"  # line n+1: malformed
        + f"{train_names[0]},   \n".encode()  # n+2: empty caption
        + f"{train_names[1]},a dog \xff\xfe runs\n".encode("latin-1")  # n+3: not UTF-8
    )
    captions.write_bytes(good + bad)
    first_bad = good.count(b"\n") + 1
    split = root / "Flickr_8k.trainImages.txt"
    split.write_text(split.read_text() + "1000268201_693b08cb0e_missing.jpg\n")

    with caplog.at_level(logging.WARNING, logger="captioning.datasets"):
        task = CaptionerTask(fixture_checkpoints.blip, CaptionerData(root=root), _config(tmp_path / "out"))
    summary = task.data_summary()
    assert summary["skipped"] == 3
    expected = [f"{captions}:{first_bad + i}:" for i in range(3)]
    assert [issue.split(" ", 1)[0] for issue in summary["issues"]] == expected
    assert all(any(e in r.getMessage() for r in caplog.records) for e in expected)
    assert summary["missing_images"]["train"] == 1
    assert summary["train_captions"] == 10  # the good ones all kept
    assert all(item.image.is_file() for item in task.train_items())


def test_captioner_without_usable_data_fails_clearly(fixture_checkpoints, shared_data, tmp_path, caplog):
    from captioning.cli import main

    root, _ = _flickr_dataset(tmp_path / "data", shared_data, train=1, dev=1)
    (root / "captions.txt").write_bytes(b"image,caption\nnot a caption line\n\xff\xff\n")
    from captioning.training.captioner import CaptionerData, CaptionerTask

    with pytest.raises(DataError, match="no usable captions"):
        CaptionerTask(fixture_checkpoints.blip, CaptionerData(root=root), _config(tmp_path / "out"))
    # a dataset whose train split holds a test image is refused
    (root / "captions.txt").write_text(
        (shared_data / "flickr8k" / "captions.txt").read_text(encoding="utf-8")
    )
    train_image = (root / "Flickr_8k.trainImages.txt").read_text().split()[0]
    (root / "Flickr_8k.testImages.txt").write_text(f"{train_image}\n")
    with pytest.raises(DataError, match="in the test split"):
        CaptionerTask(fixture_checkpoints.blip, CaptionerData(root=root), _config(tmp_path / "out"))
    (root / "Flickr_8k.testImages.txt").unlink()
    (root / "captions.txt").write_bytes(b"image,caption\nnot a caption line\n\xff\xff\n")

    argv = ["train-captioner", "--model", str(fixture_checkpoints.blip), "--data", str(root)]
    assert main([*argv, "--output", str(tmp_path / "cli"), "--no-progress"]) == 1
    assert any("no usable captions" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------- translator


def test_translator_trains_resumes_and_reloads(fixture_checkpoints, shared_data, tmp_path):
    from transformers import AutoTokenizer, MBartForConditionalGeneration

    from captioning.runtime.tokenization import spm_protobuf_compat
    from captioning.training.translator import TranslatorData, TranslatorTask, train_translator

    data = TranslatorData(pairs=shared_data / "tatoeba_ara_eng" / "ara.txt", limit_pairs=12, held_out=0.25)
    # 9 training pairs, batch 3: three steps per epoch over the same pairs; mBART has dropout, so an exact
    # resume also needs the RNG states back.
    settings = dict(batch_size=3, max_steps=6, eval_every=3, dev_sample=3)
    assert MBartForConditionalGeneration.from_pretrained(fixture_checkpoints.mbart).config.dropout > 0
    full = train_translator(fixture_checkpoints.mbart, data, _config(tmp_path / "full", **settings))
    losses = [loss for _, loss in full["train_loss"]]
    assert sum(losses[3:]) < 0.95 * sum(losses[:3]), losses  # second epoch vs first, same pairs
    assert full["data"] == {"train_pairs": 9, "held_out_pairs": 3, "skipped": 0, "issues": []}
    assert {"chrF", "BLEU", "dev_loss"} <= set(full["final"])

    train_translator(
        fixture_checkpoints.mbart, data, _config(tmp_path / "resumed", stop_at_step=4, **settings)
    )
    resumed = train_translator(
        fixture_checkpoints.mbart, data, _config(tmp_path / "resumed", resume=True, **settings)
    )
    _assert_resumed_equals_uninterrupted(full, resumed, tmp_path / "full", tmp_path / "resumed")

    best = tmp_path / "full" / "best"
    assert full["best"]["dev_loss"] == min(e["dev_loss"] for e in full["evals"])
    task = TranslatorTask(best, data, _config(tmp_path / "unused"))
    model = MBartForConditionalGeneration.from_pretrained(best).eval()
    assert _dev_loss(model, task) == pytest.approx(full["best"]["dev_loss"], rel=1e-5)
    with spm_protobuf_compat():
        tokenizer = AutoTokenizer.from_pretrained(best, src_lang="en_XX")
    ar = tokenizer.convert_tokens_to_ids("ar_AR")
    inputs = tokenizer("A dog runs.", return_tensors="pt")
    ids = model.generate(**inputs, max_length=64, forced_bos_token_id=ar)[0].tolist()
    assert ids[:2] == [model.config.decoder_start_token_id, ar], ids
    assert ids[-1] == tokenizer.eos_token_id or len(ids) == 64, ids
    assert (tmp_path / "full" / "loss_curve.png").stat().st_size > 1000


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps(fixture_checkpoints, shared_data, tmp_path, precision):
    """The autocast (+ loss scaling for fp16) path that CUDA runs by default, exercised on CPU."""
    import math

    from captioning.training.translator import TranslatorData, train_translator

    data = TranslatorData(pairs=shared_data / "tatoeba_ara_eng" / "ara.txt", limit_pairs=8, held_out=0.25)
    config = _config(tmp_path, batch_size=3, max_steps=2, dev_sample=1, precision=precision)
    metrics = train_translator(fixture_checkpoints.mbart, data, config)
    assert metrics["precision"] == precision and metrics["step"] == 2
    assert all(math.isfinite(loss) for _, loss in metrics["train_loss"])
    assert math.isfinite(metrics["final"]["dev_loss"])


def test_translator_bad_data_is_reported_and_skipped(fixture_checkpoints, tmp_path):
    from captioning.training.translator import TranslatorData, TranslatorTask

    pairs = tmp_path / "pairs.txt"
    lines = [
        "Hi.\tمرحبًا.\tCC-BY 2.0 (France) Attribution: tatoeba.org",
        "only english here",  # 2: malformed
        "Run!\t\tattribution",  # 3: empty target
        "Help!\tالنجدة!",
        "I see.\tفهمت.",
    ]
    data = "\n".join(lines).encode() + b"\nbad \xe9\xff\tbytes\n" + "Go.\tاذهب.\n".encode()  # 6: not UTF-8
    pairs.write_bytes(data)
    task = TranslatorTask(fixture_checkpoints.mbart, TranslatorData(pairs, held_out=0.25), _config(tmp_path))
    summary = task.data_summary()
    assert [issue.split(" ", 1)[0] for issue in summary["issues"]] == [f"{pairs}:{n}:" for n in (2, 3, 6)]
    assert summary["train_pairs"] + summary["held_out_pairs"] == 4
    sources = {p.source for p in task.train_items() + task.dev_items()}
    assert sources == {"Hi.", "Help!", "I see.", "Go."}

    pairs.write_text("no tab\n\n")
    with pytest.raises(DataError, match="no usable sentence pairs"):
        TranslatorTask(fixture_checkpoints.mbart, TranslatorData(pairs), _config(tmp_path))


# ---------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("train-captioner", ["--data", "--limit-images", "--grad-accum-steps", "--resume", "5e-05", "7"]),
        ("train-translator", ["--pairs", "--held-out", "--stop-at-step", "--precision", "2e-05", "en_XX"]),
    ],
)
def test_cli_help(command, options, capsys):
    from captioning.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text


def test_cli_options_reach_the_config():
    from captioning.cli import build_parser
    from captioning.training.train_args import config_from_args

    args = build_parser().parse_args(
        ["train-translator", "--pairs", "p.txt", "--output", "out", "--grad-accum-steps", "4", "--resume"]
    )
    config = config_from_args(args)
    assert (config.epochs, config.batch_size, config.lr, config.max_length) == (5, 4, 2e-5, 64)
    assert config.grad_accum_steps == 4 and config.resume and config.output == Path("out")
    args = build_parser().parse_args(["train-captioner", "--data", "d", "--output", "o"])
    config = config_from_args(args)
    assert (config.epochs, config.batch_size, config.lr, config.padding) == (7, 8, 5e-5, "max_length")
