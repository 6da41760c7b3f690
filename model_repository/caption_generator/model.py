"""Triton adapter: BLIP image embeddings -> English caption (greedy or beam search with a KV cache).

Decoding lives in `captioning.generation`, batching and grouping in `captioning.stages`; this file only moves
tensors and errors between Triton and those modules.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from captioning import cpu_slots
from captioning.heap import keep_heap
from captioning.options import stage_options
from captioning.stages import CaptionStage, load_settings
from captioning.tokenization import TextCodec
from captioning.triton_utils import (
    model_dir,
    model_parameters,
    run_rows,
    step_decoder,
    string_tensor,
    thread_count,
)


class TritonPythonModel:
    def initialize(self, args):
        keep_heap()  # before any large allocation; see captioning/heap.py
        directory = model_dir(args)
        params = model_parameters(args)
        cpu_slots.install(params.get("cpu_slots"))  # see captioning/cpu_slots.py
        graphs = json.loads((directory / "graphs.json").read_text())
        kind = params.get("decoder_runner", "inprocess")
        self.stage = CaptionStage(
            decoder=step_decoder(kind, graphs, Path(args["model_repository"]).parent, thread_count(params)),
            settings=load_settings(directory / "generation.json"),
            codec=TextCodec.load(directory / "tokenizer"),
        )

    def _parse(self, request):
        embeds = pb_utils.get_input_tensor_by_name(request, "image_embeds").as_numpy()
        if embeds.ndim != 3:
            raise ValueError(
                f"image_embeds must have shape [batch, tokens, hidden], got {list(embeds.shape)}"
            )
        options = stage_options(request.parameters(), "caption", self.stage.max_new_tokens_limit)
        return list(embeds), options

    def execute(self, requests):
        return run_rows(
            requests, self._parse, self.stage.run, lambda rows: [string_tensor("caption_en", rows)]
        )
