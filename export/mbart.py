"""mBART (MBartForConditionalGeneration) -> mbart_encoder + mbart_decoder export jobs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from captioning.contract import MBART_CROSS_KV, MBART_DECODER
from captioning.modules.graphs import MBartEncoderGraph
from captioning.modules.steps import MBartCrossKV, MBartStep

from .specs import encoder_spec
from .step_jobs import DecoderDims, decoder_jobs
from .validate import ExportJob, ValidationCase


def _dims(model: nn.Module) -> dict[str, int]:
    config = model.config
    return {
        "num_layers": config.decoder_layers,
        "num_heads": config.decoder_attention_heads,
        "head_dim": config.d_model // config.decoder_attention_heads,
        # the output layer's width: the full vocabulary, or the kept rows of a trimmed one (vocab_trim.py)
        "vocab": model.lm_head.out_features,
        "hidden": config.d_model,
    }


def _padded_ids(rng: np.random.Generator, batch: int, length: int, vocab: int, pad: int):
    ids = rng.integers(4, vocab, size=(batch, length), dtype=np.int64)
    mask = np.ones((batch, length), dtype=np.int64)
    for row in range(1, batch):  # right padding, as the tokenizer produces
        mask[row, max(1, length - row) :] = 0
    ids[mask == 0] = pad
    return ids, mask


def encoder_job(model: nn.Module, seed: int = 0) -> ExportJob:
    rng = np.random.default_rng(seed)
    vocab, pad = model.config.vocab_size, model.config.pad_token_id

    def case(batch: int, length: int) -> ValidationCase:
        ids, mask = _padded_ids(rng, batch, length, vocab, pad)

        def reference() -> dict[str, np.ndarray]:
            with torch.no_grad():
                out = model.get_encoder()(
                    input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
                )
            return {"last_hidden_state": out.last_hidden_state.numpy()}

        return ValidationCase(
            f"batch={batch},len={length}", {"input_ids": ids, "attention_mask": mask}, reference
        )

    ids, mask = _padded_ids(rng, 2, 6, vocab, pad)
    example = (torch.from_numpy(ids), torch.from_numpy(mask))
    return ExportJob(encoder_spec(), MBartEncoderGraph(model).eval(), example, [case(1, 5), case(3, 9)])


def _reference(model: nn.Module):
    def run(input_ids, states, mask, cache):
        return model(
            attention_mask=mask,
            encoder_outputs=(states,),
            decoder_input_ids=input_ids,
            past_key_values=cache,
            use_cache=True,
            return_dict=True,
        )

    return run


def decoder_jobs_for(model: nn.Module, seed: int = 0) -> list[ExportJob]:
    dims = DecoderDims(**_dims(model), pad_encoder=True)
    return decoder_jobs(
        (MBART_CROSS_KV, MBART_DECODER), MBartCrossKV(model), MBartStep(model), _reference(model), dims, seed
    )


def mbart_jobs(model: nn.Module, seed: int = 0) -> list[ExportJob]:
    return [encoder_job(model, seed), *decoder_jobs_for(model, seed + 1)]
