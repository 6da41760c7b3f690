"""Triton adapter: BLIP image embeddings -> English caption (greedy or beam search with a KV cache).

Decoding lives in `captioning.decoding`, batching and grouping in `captioning.runtime.stages`; this file only
moves tensors and errors between Triton and those modules.
"""

from captioning import contract
from captioning.backend.iterative import IterativeExecutor
from captioning.backend.runners import ModelContext
from captioning.backend.tickets import TicketDesk, run_admitted
from captioning.backend.triton_utils import input_array, string_tensor
from captioning.runtime.options import stage_options
from captioning.runtime.stages import CaptionStage, load_settings
from captioning.runtime.tokenization import TextCodec


class TritonPythonModel:
    iterative = None  # an IterativeExecutor when exported with --inflight
    desk = TicketDesk()  # initialize() sets this model's own; this one opens no tickets

    def initialize(self, args):
        model = ModelContext.setup(args)
        settings = load_settings(model.directory / "generation.json")
        self.stage = CaptionStage(
            decoder=model.step_decoder(model.graphs(), settings.max_length),
            settings=settings,
            codec=TextCodec.load(model.directory / "tokenizer"),
        )
        self.desk = TicketDesk()  # closes the tickets of english_caption, which it answers
        engine = model.inflight(self.stage.steps)  # None unless exported with --inflight
        self.iterative = engine and IterativeExecutor(
            engine, lambda r: self.stage.prepared(*self._parse(r)), self._outputs, self.desk
        )

    def _outputs(self, rows):
        return [string_tensor(contract.CAPTION_EN, rows)]

    def _parse(self, request):
        embeds = input_array(request, contract.IMAGE_EMBEDS)  # numpy, or a GPU tensor from blip_vision
        if embeds.ndim != 3:
            raise ValueError(
                f"{contract.IMAGE_EMBEDS} must have shape [batch, tokens, hidden], got {list(embeds.shape)}"
            )
        options = stage_options(request.parameters(), contract.CAPTION_STAGE, self.stage.max_new_tokens_limit)
        return list(embeds), options

    def execute(self, requests):
        if self.iterative:
            return self.iterative.execute(requests)
        return run_admitted(self.desk, requests, self._parse, self.stage.run, self._outputs)
