"""Triton adapter: English text -> Arabic text with mBART-50 (tokenise, encode, decode with a KV cache).

Decoding lives in `captioning.generation`, batching and tokenisation in `captioning.stages` and
`captioning.tokenization`; this file only moves tensors and errors between Triton and those modules.
"""

import json
from pathlib import Path

from captioning import cpu_slots
from captioning.heap import keep_heap
from captioning.options import stage_options
from captioning.stages import TranslationStage, load_settings
from captioning.tokenization import TextCodec
from captioning.triton_utils import (
    graph_runner,
    model_dir,
    model_parameters,
    run_rows,
    step_decoder,
    string_rows,
    string_tensor,
    thread_count,
)
from captioning.vocab import VocabMap


class TritonPythonModel:
    def initialize(self, args):
        keep_heap()  # before any large allocation; see captioning/heap.py
        directory = model_dir(args)
        params = model_parameters(args)
        cpu_slots.install(params.get("cpu_slots"))  # see captioning/cpu_slots.py
        repository = Path(args["model_repository"]).parent
        kind = params.get("decoder_runner", "inprocess")
        graphs = json.loads((directory / "graphs.json").read_text())
        self.stage = TranslationStage(
            encoder=graph_runner(kind, graphs["encoder"], repository, thread_count(params)),
            decoder=step_decoder(kind, graphs, repository, thread_count(params)),
            settings=load_settings(directory / "generation.json"),
            codec=TextCodec.load(
                directory / "tokenizer",
                src_lang=params.get("src_lang", "en_XX"),
                max_source_tokens=int(params.get("max_source_tokens", "256")),
            ),
            # present only in repositories exported with --translator-vocab (opt-in, not token-exact)
            vocab=VocabMap.load(directory / "vocab.json") if (directory / "vocab.json").exists() else None,
        )

    def _parse(self, request):
        texts = []
        for raw in string_rows(request, "text"):
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise ValueError(f"text is not valid UTF-8: {exc}") from None
        options = stage_options(request.parameters(), "translation", self.stage.max_new_tokens_limit)
        return texts, options

    def execute(self, requests):
        return run_rows(
            requests, self._parse, self.stage.run, lambda rows: [string_tensor("translation", rows)]
        )
