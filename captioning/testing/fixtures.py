"""Tiny, deterministic checkpoints of the real BLIP and mBART-50 classes, built offline.

The hub cannot be reached, so tests and smoke runs build their own checkpoints: the same model,
tokenizer and processor classes (and the same special-token layout) as
``Salesforce/blip-image-captioning-base`` and ``facebook/mbart-large-50-many-to-many-mmt``, with tiny
dimensions. Logits are made sharply peaked so float noise between PyTorch and ONNX Runtime cannot flip
an argmax or a beam ranking, and an end-of-sequence bias makes output lengths vary.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from captioning import contract
from captioning.datasets import PROJECT_ROOT, default_data_dir
from captioning.runtime.tokenization import spm_protobuf_compat

# Real BLIP normalisation (OpenAI CLIP statistics) and special tokens.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BLIP_IMAGE_SIZE = 96
BLIP_PATCH_SIZE = 16
BLIP_BOS, BLIP_ENC = "[DEC]", "[ENC]"

MBART_SRC_LANG, MBART_TGT_LANG = contract.SOURCE_LANG, contract.TARGET_LANG
SPM_VOCAB_SIZE = 4000

# Logit shaping, in units of the unscaled logit (std ~1.6 with these init ranges). The LayerNorm that
# feeds the vocabulary projection is multiplied by LOGIT_SCALE so top-1/top-2 gaps are large; tokens a
# real model would not write (sub-words never seen in captions, non-Arabic pieces in translations,
# special tokens) get -OFF_VOCAB_PENALTY so outputs look like words of the right language; and the
# end-of-sequence token gets EOS_BIAS so generation stops at varying lengths instead of max_length.
INIT_RANGE = 0.2
BLIP_LOGIT_SCALE = 60.0
BLIP_EOS_BIAS = 4.8
BLIP_CAPTION_VOCAB = 2000
MBART_LOGIT_SCALE = 60.0
MBART_EOS_BIAS = 5.0
OFF_VOCAB_PENALTY = 20.0
# Random decoders fall into repeating the last token; stronger position embeddings keep the decoder
# state moving, so words vary along a sentence and the end token can win at some step.
BLIP_POSITION_GAIN = 3.0
MBART_POSITION_GAIN = 8.0


@dataclass(frozen=True)
class FixturePaths:
    blip: Path  # BlipForConditionalGeneration + BlipProcessor
    mbart: Path  # MBartForConditionalGeneration + MBart50TokenizerFast (+ slow sentencepiece files)


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"fixture data not found: {path} (set CAPTIONING_DATA_DIR)")
    return path


def flickr_captions(data_dir: Path) -> list[tuple[str, str]]:
    """(image file name, English caption) pairs; captions contain commas, so split on the first."""
    lines = _require(data_dir / "flickr8k" / "captions.txt").read_text(encoding="utf-8").splitlines()
    pairs = [tuple(line.split(",", 1)) for line in lines[1:] if "," in line]
    return [(name.strip(), caption.strip()) for name, caption in pairs]


def tatoeba_pairs(data_dir: Path) -> list[tuple[str, str]]:
    """(English, Arabic) sentence pairs."""
    text = _require(data_dir / "tatoeba_ara_eng" / "ara.txt").read_text(encoding="utf-8")
    rows = (line.split("\t") for line in text.splitlines())
    return [(row[0].strip(), row[1].strip()) for row in rows if len(row) >= 2]


def _spm_sentences(data_dir: Path) -> Iterator[str]:
    for en, ar in tatoeba_pairs(data_dir):
        yield en
        yield ar
    # Every 4th caption keeps training fast while covering the caption vocabulary.
    for _, caption in flickr_captions(data_dir)[::4]:
        yield caption


# --------------------------------------------------------------------------------------------- BLIP


def _blip_processor(data_dir: Path):
    from transformers import BertTokenizerFast, BlipImageProcessor, BlipProcessor

    tokenizer = BertTokenizerFast(
        vocab_file=str(_require(data_dir / "bert-base-uncased" / "vocab.txt")),
        do_lower_case=True,
        model_max_length=512,
    )
    # Same order as BLIP's own init_tokenizer(): [DEC]=30522 then [ENC]=30523.
    tokenizer.add_special_tokens({"bos_token": BLIP_BOS})
    tokenizer.add_special_tokens({"additional_special_tokens": [BLIP_ENC]})
    image_processor = BlipImageProcessor(
        do_resize=True,
        size={"height": BLIP_IMAGE_SIZE, "width": BLIP_IMAGE_SIZE},
        resample=3,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _output_bias(vocab_size: int, allowed: list[int], eos_id: int, eos_bias: float):
    import torch

    bias = torch.full((vocab_size,), -OFF_VOCAB_PENALTY)
    bias[allowed] = 0.0
    bias[eos_id] = eos_bias
    return bias


def _caption_ids(tokenizer, data_dir: Path, size: int = BLIP_CAPTION_VOCAB) -> list[int]:
    """The ``size`` word pieces most frequent in Flickr8k captions (no special tokens)."""
    from collections import Counter

    captions = [caption for _, caption in flickr_captions(data_dir)[::2]]
    encoded = tokenizer(captions, add_special_tokens=False)["input_ids"]
    counts = Counter(i for ids in encoded for i in ids)
    special = set(tokenizer.all_special_ids)
    ranked = sorted((i for i in counts if i not in special), key=lambda i: (-counts[i], i))
    return ranked[:size]


def _arabic_ids(tokenizer) -> list[int]:
    """Pieces with an Arabic letter, or made only of punctuation (spm's word marker included)."""
    special = set(tokenizer.all_special_ids)
    ids = []
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        text = piece.replace("\u2581", "")
        arabic = any("\u0600" <= ch <= "\u06ff" for ch in text)
        punct = all(not ch.isalnum() for ch in text)
        if i not in special and (arabic or punct):
            ids.append(i)
    return ids


def _blip_model(tokenizer, data_dir: Path):
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration

    bos_id = tokenizer.convert_tokens_to_ids(BLIP_BOS)
    config = BlipConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "encoder_hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 128,
            "bos_token_id": bos_id,
            "eos_token_id": 2,
            "pad_token_id": tokenizer.pad_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "initializer_range": INIT_RANGE,
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": BLIP_IMAGE_SIZE,
            "patch_size": BLIP_PATCH_SIZE,
            "initializer_range": INIT_RANGE,
        },
        projection_dim=64,
    )
    model = BlipForConditionalGeneration(config).eval()
    allowed = _caption_ids(tokenizer, data_dir)
    with torch.no_grad():
        head = model.text_decoder.cls.predictions
        head.transform.LayerNorm.weight.mul_(BLIP_LOGIT_SCALE)
        head.transform.LayerNorm.bias.mul_(BLIP_LOGIT_SCALE)
        head.bias.add_(_output_bias(len(tokenizer), allowed, tokenizer.sep_token_id, BLIP_EOS_BIAS))
        head.bias.mul_(BLIP_LOGIT_SCALE)
        model.text_decoder.bert.embeddings.position_embeddings.weight.mul_(BLIP_POSITION_GAIN)
        # A constant end-token logit (its tied embedding row zeroed; BLIP never feeds [SEP] back) makes
        # stopping depend on how confident the rest of the vocabulary is at each step.
        model.text_decoder.bert.embeddings.word_embeddings.weight[tokenizer.sep_token_id] = 0.0
    return model


def make_blip(output: Path, data_dir: Path) -> Path:
    processor = _blip_processor(data_dir)
    model = _blip_model(processor.tokenizer, data_dir)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    return output


# --------------------------------------------------------------------------------------------- mBART


def train_spm(model_file: Path, data_dir: Path, vocab_size: int = SPM_VOCAB_SIZE) -> Path:
    """A SentencePiece model with the ids mBART-50's spm uses: <unk>=0, <s>=1, </s>=2, no <pad>.

    Written through ``model_writer`` so no output path (a temp dir) is recorded in the model, keeping the
    file byte-identical between builds."""
    import io

    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_spm_sentences(data_dir),
        model_writer=buffer,
        model_type="unigram",
        vocab_size=vocab_size,
        character_coverage=0.9999,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        seed_sentencepiece_size=200_000,
        num_threads=1,
        minloglevel=2,
    )
    model_file.write_bytes(buffer.getvalue())
    return model_file


def _mbart_tokenizer(workdir: Path, data_dir: Path):
    """The fast tokenizer, converted from the slow one; saving it writes both tokenizer.json and the spm
    model, so MBart50Tokenizer and MBart50TokenizerFast both load from the checkpoint folder."""
    from transformers import MBart50TokenizerFast

    spm_model = train_spm(workdir / "sentencepiece.bpe.model", data_dir)
    with spm_protobuf_compat():
        return MBart50TokenizerFast(
            vocab_file=str(spm_model),
            src_lang=MBART_SRC_LANG,
            tgt_lang=MBART_TGT_LANG,
            model_max_length=1024,
            bos_token="<s>",
        )


def _mbart_model(tokenizer):
    import torch
    from transformers import GenerationConfig, MBartConfig, MBartForConditionalGeneration

    pad, bos, eos = tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    config = MBartConfig(
        vocab_size=len(tokenizer),
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=1024,  # as mBART-large-50: long captions must fit
        scale_embedding=True,
        activation_function="relu",
        pad_token_id=pad,
        bos_token_id=bos,
        eos_token_id=eos,
        decoder_start_token_id=eos,
        forced_eos_token_id=eos,
        init_std=INIT_RANGE,
        tokenizer_class="MBart50Tokenizer",
    )
    model = MBartForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        decoder_start_token_id=eos,
        forced_eos_token_id=eos,
        num_beams=5,
        early_stopping=True,
        max_length=200,
    )
    with torch.no_grad():
        norm = model.model.decoder.layer_norm
        norm.weight.mul_(MBART_LOGIT_SCALE)
        norm.bias.mul_(MBART_LOGIT_SCALE)
        bias = _output_bias(len(tokenizer), _arabic_ids(tokenizer), eos, MBART_EOS_BIAS)
        model.final_logits_bias[0].add_(bias * MBART_LOGIT_SCALE)
        model.model.decoder.embed_positions.weight.mul_(MBART_POSITION_GAIN)
        model.model.shared.weight[eos] = 0.0
    return model


def make_mbart(output: Path, data_dir: Path) -> Path:
    with tempfile.TemporaryDirectory() as work:
        tokenizer = _mbart_tokenizer(Path(work), data_dir)
        model = _mbart_model(tokenizer)
        model.save_pretrained(output)
        tokenizer.save_pretrained(output)
    return output


# --------------------------------------------------------------------------------------------- entry


def make_fixtures(output: Path, seed: int = 0, data_dir: Path | None = None) -> FixturePaths:
    """Build both checkpoints into ``output/blip`` and ``output/mbart``."""
    import torch

    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    blip = make_blip(output / "blip", data_dir)
    torch.manual_seed(seed + 1)
    mbart = make_mbart(output / "mbart", data_dir)
    return FixturePaths(blip=blip, mbart=mbart)


def fixture_key(seed: int) -> str:
    """Changes whenever this module (hence what it builds) changes."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(f"seed={seed}".encode())
    return digest.hexdigest()[:16]


def cached_fixtures(cache_root: Path = PROJECT_ROOT / ".cache" / "fixtures", seed: int = 0) -> FixturePaths:
    """Build once per module version and seed; later calls (and other processes) reuse the build.

    The build goes to a temporary folder that is renamed into place, so an aborted or concurrent build
    never leaves half a fixture where readers look.
    """
    cache_root = Path(cache_root)
    final = cache_root / f"seed{seed}-{fixture_key(seed)}"
    if not final.is_dir():
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=cache_root))
        try:
            make_fixtures(tmp, seed=seed)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # lost a race to a concurrent build: theirs is as good
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return FixturePaths(blip=final / "blip", mbart=final / "mbart")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    paths = make_fixtures(args.output, seed=args.seed, data_dir=args.data_dir)
    print(f"blip:  {paths.blip}\nmbart: {paths.mbart}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
