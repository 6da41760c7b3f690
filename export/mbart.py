"""mBART (MBartForConditionalGeneration) -> mbart_encoder + mbart_decoder export jobs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .cache import (
    cache_from_flat,
    causal_keep,
    feeds_to_torch,
    flat_present,
    linear_2d,
    new_positions,
    past_from_feeds,
    random_decoder_feeds,
)
from .specs import MBART_DECODER, decoder_spec, encoder_spec
from .validate import ExportJob, ValidationCase


class MBartEncoderGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, return_dict=True
        ).last_hidden_state


class MBartDecoderGraph(nn.Module):
    """Decoder + lm_head + final_logits_bias over a flat self-attention cache.

    The 4-D additive mask and cache positions are built from tensor shapes, which keeps MBartDecoder off its
    `sequence_length != 1` and SDPA "ignore the mask" branches that the tracer would otherwise freeze.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.decoder = model.get_decoder()
        self.lm_head = model.lm_head
        self.final_logits_bias = model.final_logits_bias

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        cache = cache_from_flat(past)
        dtype = encoder_hidden_states.dtype
        keep = causal_keep(input_ids, past[0]).unsqueeze(1)
        mask = torch.zeros_like(keep, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)
        out = self.decoder(
            input_ids=input_ids,
            attention_mask=mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=cache,
            use_cache=True,
            cache_position=new_positions(input_ids, past[0]),
            return_dict=True,
        )
        logits = linear_2d(out.last_hidden_state, self.lm_head.weight, self.final_logits_bias.reshape(-1))
        return (logits, *flat_present(cache))


def _dims(model: nn.Module) -> dict[str, int]:
    config = model.config
    return {
        "num_layers": config.decoder_layers,
        "num_heads": config.decoder_attention_heads,
        "head_dim": config.d_model // config.decoder_attention_heads,
        "vocab": config.vocab_size,
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


def _decoder_reference(model: nn.Module, feeds: dict[str, np.ndarray], num_layers: int):
    """PyTorch outputs through MBartForConditionalGeneration.forward (its own masks, positions and head)."""

    def run() -> dict[str, np.ndarray]:
        t = feeds_to_torch(feeds)
        past = past_from_feeds(t, num_layers)
        cache = cache_from_flat(past) if past[0].shape[2] > 0 else None
        with torch.no_grad():
            out = model(
                attention_mask=t["encoder_attention_mask"],
                encoder_outputs=(t["encoder_hidden_states"],),
                decoder_input_ids=t["input_ids"],
                past_key_values=cache,
                use_cache=True,
                return_dict=True,
            )
        result = {"logits": out.logits.numpy()}
        for i, layer in enumerate(out.past_key_values.self_attention_cache.layers):
            result[f"present.{i}.key"] = layer.keys.numpy()
            result[f"present.{i}.value"] = layer.values.numpy()
        return result

    return run


def decoder_job(model: nn.Module, seed: int = 0) -> ExportJob:
    dims = _dims(model)
    rng = np.random.default_rng(seed)
    spec = decoder_spec(MBART_DECODER, dims["num_layers"])

    def feeds(batch: int, new_len: int, past_len: int, encoder_len: int) -> dict[str, np.ndarray]:
        return random_decoder_feeds(
            rng,
            batch=batch,
            new_len=new_len,
            past_len=past_len,
            encoder_len=encoder_len,
            pad_encoder=True,
            **dims,
        )

    cases = []
    for batch, new_len, past_len, encoder_len in ((1, 1, 0, 4), (1, 2, 0, 7), (3, 1, 5, 6), (2, 3, 4, 5)):
        f = feeds(batch, new_len, past_len, encoder_len)
        label = f"batch={batch},new={new_len},past={past_len},encoder={encoder_len}"
        cases.append(ValidationCase(label, f, _decoder_reference(model, f, dims["num_layers"])))
    trace = feeds_to_torch(feeds(2, 2, 3, 5))
    example = tuple(trace[name] for name in spec.input_names)
    return ExportJob(spec, MBartDecoderGraph(model).eval(), example, cases)


def mbart_jobs(model: nn.Module, seed: int = 0) -> list[ExportJob]:
    return [encoder_job(model, seed), decoder_job(model, seed + 1)]
