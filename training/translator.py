"""`captioning train-translator`: fine-tune an MBartForConditionalGeneration (mBART-50) checkpoint on
English-Arabic sentence pairs.

Input (`--pairs`, format detected or `--pairs-format`): the tab-separated Tatoeba/Anki file
`english<TAB>arabic[<TAB>attribution]`, JSONL or CSV with `en`/`ar` columns (`--source-column`,
`--target-column`), JSONL with a `translation` object per line (OPUS/WMT exports), or `hub:NAME` / a `datasets`
folder with either kind of column. A `split` column's dev rows (a dataset's dev split) are the dev set and test
rows are never read (a dataset's test split never opened); otherwise a deterministic held-out share
(`--held-out`, 5 %) is kept for dev loss and chrF/BLEU. `--lora-rank` trains LoRA adapters (training/lora.py).
Defaults are the original study's: 5 epochs, batch 4, AdamW lr 2e-5, 64 tokens, source `en_XX`, target `ar_AR`.
Targets are tokenised with `text_target` (so they start with the `ar_AR` code, as mBART-50 expects), the model
shifts them right behind `</s>` itself, and pads are `-100` in the labels. Dev translations are generated as
served: the checkpoint's generation config, `forced_bos_token_id=ar_AR`, max_length 64.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from captioning.datasets import DataReport, TranslationPair, split_pairs
from captioning.hub_sources import HubOptions, add_hub_arguments, hub_options_from_args
from captioning.pair_sources import PAIR_FORMATS, read_pair_source
from captioning.training import lora
from captioning.training.distributed import is_main_process
from captioning.training.lora import (
    FULL_FINE_TUNING,
    LoraOptions,
    add_lora_arguments,
    lora_options_from_args,
)
from captioning.training.train_args import TrainConfig

LOG = logging.getLogger(__name__)

DEFAULTS = TrainConfig(epochs=5, batch_size=4, lr=2e-5, dev_sample=200, best_metric="loss")


@dataclasses.dataclass
class TranslatorData:
    pairs: Path
    held_out: float = 0.05
    limit_pairs: int | None = None  # first N usable pairs, before the split (smoke runs)
    source_lang: str = "en_XX"
    target_lang: str = "ar_AR"
    strict: bool = False
    format: str | None = None  # one of pair_sources.PAIR_FORMATS; None: detected from the path
    source_column: str = "en"  # JSONL/CSV column (or translation key) of the English text
    target_column: str = "ar"
    hub: HubOptions = HubOptions()  # hub:NAME and dataset folders: splits, config, revision


class TranslatorTask:
    """mBART-50 translation for the shared `Trainer`."""

    name = "train-translator"

    def __init__(
        self,
        model_source: str | Path,
        data: TranslatorData,
        config: TrainConfig,
        lora_options: LoraOptions = FULL_FINE_TUNING,
    ):
        from transformers import AutoTokenizer

        from captioning.runtime.tokenization import spm_protobuf_compat

        self.config = config
        self.lora = lora_options
        self.last_samples: list[tuple[str, str]] = []  # (reference, translation) of the last dev_metrics
        self.report = DataReport(strict=data.strict)
        columns = (data.source_column, data.target_column)
        found = read_pair_source(data.pairs, data.format, self.report, *columns, hub=data.hub)
        pairs = found.train[: data.limit_pairs] if data.limit_pairs is not None else found.train
        if found.dev:  # a split column decided
            self.train, self.dev = pairs, found.dev[: data.limit_pairs] if data.limit_pairs else found.dev
        else:
            self.train, self.dev = split_pairs(pairs, data.held_out, seed=config.seed)
        self.test_rows_skipped = found.test_rows
        with spm_protobuf_compat():
            self.tokenizer = AutoTokenizer.from_pretrained(
                str(model_source),
                revision=config.model_revision,
                src_lang=data.source_lang,
                tgt_lang=data.target_lang,
            )
        self.target_id = self.tokenizer.convert_tokens_to_ids(data.target_lang)
        if self.target_id is None or self.target_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer of {model_source} has no language code {data.target_lang!r}")

    def load_model(self, source: str | Path) -> Any:
        """The checkpoint; with LoRA, wrapped in a fresh adapter, or (resuming from last/) its saved one."""
        revision = self.config.model_revision
        if not self.lora.enabled:
            return _mbart(source, revision)
        adapter = lora.resume_adapter(Path(source)) if Path(source) == self.config.output / "last" else None
        if adapter is not None:
            return lora.load_trainable(adapter, _mbart, self.lora)
        return lora.wrap(_mbart(source, revision), "mbart", self.lora, source, revision)

    def train_items(self) -> list[TranslationPair]:
        return self.train

    def dev_items(self) -> list[TranslationPair]:
        return self.dev

    def collate(self, items: list[TranslationPair]) -> dict[str, Any]:
        batch = self.tokenizer(
            [item.source for item in items],
            text_target=[item.target for item in items],
            padding=self.config.padding,
            max_length=self.config.max_length,
            truncation=True,
            return_tensors="pt",
        )
        labels = batch["labels"]
        batch["labels"] = labels.masked_fill(labels == self.tokenizer.pad_token_id, -100)
        return dict(batch)

    def translate(self, model: Any, texts: list[str], device: Any) -> list[str]:
        """Translations as served: the checkpoint's generation config, forced ar_AR, max_length 64."""
        out: list[str] = []
        for start in range(0, len(texts), self.config.batch_size):
            inputs = self.tokenizer(
                texts[start : start + self.config.batch_size], padding=True, return_tensors="pt"
            ).to(device)
            ids = model.generate(
                **inputs, max_length=self.config.max_length, forced_bos_token_id=self.target_id
            )
            out.extend(self.tokenizer.batch_decode(ids, skip_special_tokens=True))
        return out

    def dev_metrics(self, model: Any, device: Any) -> dict[str, float]:
        from captioning.training.metrics import translation_scores

        sample = self.dev[: self.config.dev_sample]
        hypotheses = self.translate(model, [pair.source for pair in sample], device)
        self.last_samples = [(p.target, h) for p, h in zip(sample[:4], hypotheses, strict=False)]
        return translation_scores(hypotheses, [pair.target for pair in sample])

    def save(self, model: Any, path: Path) -> None:
        """`save_pretrained` with the tokenizer; with LoRA, the merged weights and the adapter (adapter/)."""
        if self.lora.enabled:
            lora.save(model, path, self.tokenizer.save_pretrained)
            return
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def data_summary(self) -> dict[str, Any]:
        return {
            "train_pairs": len(self.train),
            "held_out_pairs": len(self.dev),
            **({"test_rows_skipped": self.test_rows_skipped} if self.test_rows_skipped else {}),
            **self.report.summary(),
        }


def _mbart(source: str | Path, revision: str | None) -> Any:
    from transformers import MBartForConditionalGeneration

    return MBartForConditionalGeneration.from_pretrained(str(source), revision=revision)


def train_translator(
    model: str | Path,
    data: TranslatorData,
    config: TrainConfig,
    lora_options: LoraOptions = FULL_FINE_TUNING,
) -> dict[str, Any]:
    """Fine-tune and return the run's metrics (also written to OUTPUT/metrics.json)."""
    from captioning.training.loop import Trainer

    task = TranslatorTask(model, data, config, lora_options)
    return Trainer(config, task, model).train()


def _run(args: argparse.Namespace) -> int:
    from captioning.training.train_args import config_from_args

    config = config_from_args(args)
    data = TranslatorData(
        pairs=Path(args.pairs),
        held_out=args.held_out,
        limit_pairs=args.limit_pairs,
        source_lang=args.source_lang,
        target_lang=args.target_lang,
        strict=args.strict,
        format=args.pairs_format,
        source_column=args.source_column,
        target_column=args.target_column,
        hub=hub_options_from_args(args),
    )
    metrics = train_translator(args.model, data, config, lora_options_from_args(args))
    if is_main_process():  # every rank returns the same metrics; one prints them
        print(f"best checkpoint: {config.output / 'best'} ({metrics['best']})")
        print(f"metrics: {config.output / 'metrics.json'}; loss curve: {config.output / 'loss_curve.png'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from captioning.training.train_args import add_model_revision_argument, add_train_arguments

    parser = subparsers.add_parser(
        "train-translator",
        help="fine-tune an mBART-50 translator on English-Arabic sentence pairs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: captioning train-translator --model facebook/mbart-large-50-many-to-many-mmt "
        "--pairs ../shared/data/tatoeba_ara_eng/ara.txt --output runs/mbart\n"
        "then:    captioning export --captioner ... --translator runs/mbart/best --output repo",
    )
    parser.add_argument(
        "--model",
        default="facebook/mbart-large-50-many-to-many-mmt",
        help="MBartForConditionalGeneration checkpoint with its mBART-50 tokenizer: hub id or folder; "
        "default: %(default)s",
    )
    add_model_revision_argument(parser, "translator")
    parser.add_argument(
        "--pairs",
        required=True,
        help="sentence pairs: Tatoeba TSV (english<TAB>arabic[<TAB>attribution]), JSONL or CSV with "
        "--source-column/--target-column, JSONL with a 'translation' object per line, or hub:NAME / a "
        "datasets folder with either kind of column",
    )
    parser.add_argument(
        "--pairs-format", choices=PAIR_FORMATS, help="force the pairs format (default: detected from --pairs)"
    )
    parser.add_argument("--source-column", default="en", help="English column or key; default: %(default)s")
    parser.add_argument("--target-column", default="ar", help="Arabic column or key; default: %(default)s")
    parser.add_argument(
        "--held-out",
        type=float,
        default=0.05,
        help="share of pairs kept out for dev scores; default: %(default)s",
    )
    parser.add_argument("--limit-pairs", type=int, help="use only the first N usable pairs (smoke runs)")
    parser.add_argument("--source-lang", default="en_XX", help="default: %(default)s")
    parser.add_argument("--target-lang", default="ar_AR", help="default: %(default)s")
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first bad data line instead of skipping it"
    )
    add_hub_arguments(parser, train_split=True, image_column=False)
    add_train_arguments(parser, DEFAULTS)
    add_lora_arguments(parser)
    parser.set_defaults(func=_run)
