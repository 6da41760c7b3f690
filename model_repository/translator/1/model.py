"""Triton adapter: English text -> Arabic text with mBART-50 (tokenise, encode, decode with a KV cache).

Decoding lives in `captioning.decoding`, batching and tokenisation in `captioning.runtime`; this file only
moves tensors and errors between Triton and those modules.
"""

from captioning import contract
from captioning.backend.iterative import IterativeExecutor
from captioning.backend.runners import ModelContext
from captioning.backend.tickets import TicketDesk, door_limits, run_admitted
from captioning.backend.triton_utils import has_input, string_rows, string_tensor
from captioning.decoding import VocabMap
from captioning.runtime.options import stage_options
from captioning.runtime.stages import Source, TranslationStage, load_settings
from captioning.runtime.tokenization import TextCodec


class TritonPythonModel:
    iterative = None  # an IterativeExecutor when exported with --inflight
    desk = TicketDesk()  # initialize() sets this model's own; this one opens no tickets

    def initialize(self, args):
        model = ModelContext.setup(args)
        graphs = model.graphs()
        params = model.parameters
        self.caption_limit = int(params.get(contract.PARAM_MAX_CAPTION_TOKENS, "1024"))
        vocab = model.directory / "vocab.json"  # only with --translator-vocab (opt-in, not token-exact)
        settings = load_settings(model.directory / "generation.json")
        self.stage = TranslationStage(
            encoder=model.encoder(graphs),
            decoder=model.step_decoder(graphs, settings.max_length),
            settings=settings,
            codec=TextCodec.load(
                model.directory / "tokenizer",
                src_lang=params.get(contract.PARAM_SRC_LANG, contract.SOURCE_LANG),
                max_source_tokens=int(
                    params.get(contract.PARAM_MAX_SOURCE_TOKENS, contract.MAX_SOURCE_TOKENS)
                ),
            ),
            vocab=VocabMap.load(vocab) if vocab.exists() else None,
        )
        # The door for text (the image pipelines' requests come in with their tickets)
        self.desk = TicketDesk(door_limits(params))
        engine = model.inflight(self.stage.steps)  # None unless exported with --inflight
        self.iterative = engine and IterativeExecutor(
            engine, lambda r: self.stage.prepared(*self._parse(r)), self._outputs, self.desk, self._entering
        )

    @staticmethod
    def _entering(request) -> int:
        """Rows of user text, which enters the pipeline here; 0 for the caption of an image pipeline."""
        return (
            len(string_rows(request, contract.TEXT_INPUT)) if has_input(request, contract.TEXT_INPUT) else 0
        )

    def _outputs(self, rows):
        return [string_tensor(contract.TRANSLATION_OUTPUT, rows)]

    def _parse(self, request):
        """User text (`text`, held to the user-text limit) or a caption the pipeline wrote (`caption_en`)."""
        if has_input(request, contract.TEXT_INPUT) == has_input(request, contract.CAPTION_INPUT):
            raise ValueError(
                f"send exactly one of the inputs {contract.TEXT_INPUT!r} and {contract.CAPTION_INPUT!r}"
            )
        caption = has_input(request, contract.CAPTION_INPUT)
        name = contract.CAPTION_INPUT if caption else contract.TEXT_INPUT
        texts = []
        for raw in string_rows(request, name):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"text is not valid UTF-8: {exc}") from None
            texts.append(Source(text, self.caption_limit, generated=True) if caption else text)
        options = stage_options(
            request.parameters(), contract.TRANSLATION_STAGE, self.stage.max_new_tokens_limit
        )
        return texts, options

    def execute(self, requests):
        if self.iterative:
            return self.iterative.execute(requests)
        return run_admitted(self.desk, requests, self._parse, self.stage.run, self._outputs, self._entering)
