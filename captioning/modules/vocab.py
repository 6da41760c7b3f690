"""The trimmed target vocabulary applied to a loaded mBART: the decoder's rows cut to the kept ids, in memory.

Used by the export (the ONNX trimmed translator is traced from the trimmed model) and by the torch runner,
which trims the untrimmed checkpoint a repository carries when it loads it (a trimmed decoder beside the
encoder's full shared embedding is no checkpoint `from_pretrained` can load). The embeddings, the output layer
and `final_logits_bias` keep only the kept rows, so logits come out over kept *positions*
(`captioning.decoding.vocab.VocabMap` maps them back to tokenizer ids).
"""

from __future__ import annotations

import logging
from typing import Any

from captioning.decoding.vocab import VocabMap

LOG = logging.getLogger(__name__)


def check_vocab(model: Any, vocab: VocabMap) -> None:
    """ValueError unless `vocab` indexes this translator's vocabulary."""
    if vocab.full_size != model.config.vocab_size:
        raise ValueError(
            f"the trimmed vocabulary indexes {vocab.full_size} ids but the translator has "
            f"{model.config.vocab_size}"
        )


def trim_decoder_vocab(model: Any, vocab: VocabMap) -> Any:
    """Cut mBART's decoder embeddings, output layer and final_logits_bias to the kept rows, in place.

    The encoder keeps the shared full embedding; the decoder and lm_head get their own trimmed copies, so the
    model's forward pass (which export validation compares against) returns logits over kept positions.
    """
    import torch
    from torch import nn

    check_vocab(model, vocab)
    config = model.config
    ids = torch.tensor(vocab.kept_ids, dtype=torch.long)
    decoder = model.get_decoder()
    old = decoder.embed_tokens
    pad = vocab.position(config.pad_token_id, "pad")
    embed = type(old)(len(vocab), config.d_model, pad, embed_scale=getattr(old, "embed_scale", 1.0))
    lm_head = nn.Linear(config.d_model, len(vocab), bias=False)
    with torch.no_grad():
        embed.weight.copy_(old.weight[ids])
        lm_head.weight.copy_(model.lm_head.weight[ids])
        bias = model.final_logits_bias[:, ids].clone()
    decoder.embed_tokens = embed
    model.lm_head = lm_head
    model.register_buffer("final_logits_bias", bias, persistent=False)
    # Keep `tie_weights()` from re-tying the trimmed head to the full shared embedding.
    config.tie_word_embeddings = False
    LOG.info("trimmed the translator's decoder vocabulary to %d of %d rows", len(vocab), config.vocab_size)
    return model
