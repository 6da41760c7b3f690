"""The two from-scratch captioners of the original study, in PyTorch.

Both expose the same decoding interface so one beam search serves both:
`init_state(features)` and `step(tokens, state) -> (log_probs, state, alphas_or_None)`; every state is a tuple
of tensors whose first dimension is the hypothesis.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn import functional as F


@dataclasses.dataclass
class ModelOptions:
    model: str = "attention"  # merge | attention
    embed_dim: int = 256
    hidden: int = 512  # merge: the study's 256
    feature_proj: int = 512  # attention: 49 x 2048 -> 49 x 512
    attention: str = "additive"  # dot | additive
    dropout: float = 0.5
    frozen_embeddings: bool = False  # set when GloVe vectors are loaded


class MergeModel(nn.Module):
    """Image features -> dense(256); partial caption -> embedding -> LSTM(256); add; dense; softmax.

    Running the LSTM over the partial caption one word at a time is the same as the Keras model re-encoding
    the whole prefix at every step, only cheaper.
    """

    def __init__(self, vocab_size: int, feature_dim: int, options: ModelOptions) -> None:
        super().__init__()
        self.options = options
        self.image = nn.Sequential(
            nn.Dropout(options.dropout), nn.Linear(feature_dim, options.hidden), nn.ReLU()
        )
        self.embed = nn.Embedding(vocab_size, options.embed_dim, padding_idx=0)
        self.drop = nn.Dropout(options.dropout)
        self.lstm = nn.LSTM(options.embed_dim, options.hidden, batch_first=True)
        self.decoder = nn.Sequential(nn.Linear(options.hidden, options.hidden), nn.ReLU())
        self.out = nn.Linear(options.hidden, vocab_size)

    def forward(
        self, features: torch.Tensor, rows: torch.Tensor, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        """features [N, R, C] of N images, rows [B] (the image of each caption), inputs [B, T] -> logits [B, T, V]."""
        image = self.image(features.mean(1)).index_select(0, rows)
        text, _ = self.lstm(self.drop(self.embed(inputs)))
        return self.out(self.decoder(text + image[:, None])), None

    def init_state(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        image = self.image(features.mean(1))
        zeros = image.new_zeros(image.shape[0], self.options.hidden)
        return image, zeros, zeros

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]):
        image, h, c = state
        _, (h1, c1) = self.lstm(self.embed(tokens)[:, None], (h[None], c[None]))
        h, c = h1[0], c1[0]
        logits = self.out(self.decoder(h + image))
        return F.log_softmax(logits, -1), (image, h, c), None


class Attention(nn.Module):
    """Soft attention over the regions: dot-product (scaled) or additive (Bahdanau, as Show-Attend-Tell)."""

    def __init__(self, kind: str, feature_dim: int, hidden: int, size: int = 512) -> None:
        super().__init__()
        if kind not in ("dot", "additive"):
            raise ValueError(f"attention must be 'dot' or 'additive', got {kind!r}")
        self.kind = kind
        if kind == "dot":
            self.query = nn.Linear(hidden, feature_dim)
        else:
            self.keys = nn.Linear(feature_dim, size)
            self.query = nn.Linear(hidden, size)
            self.score = nn.Linear(size, 1)

    def keys_of(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.kind == "dot" else self.keys(features)

    def forward(self, features, keys, h):
        """-> context [B, C], alphas [B, R]."""
        if self.kind == "dot":
            scores = torch.einsum("brc,bc->br", keys, self.query(h)) / keys.shape[-1] ** 0.5
        else:
            scores = self.score(torch.tanh(keys + self.query(h)[:, None])).squeeze(-1)
        alphas = scores.softmax(-1)
        return torch.einsum("br,brc->bc", alphas, features), alphas


class AttentionModel(nn.Module):
    """Show, Attend and Tell: regions projected to 512, LSTM decoder whose h/c start from the mean feature."""

    def __init__(self, vocab_size: int, feature_dim: int, options: ModelOptions) -> None:
        super().__init__()
        self.options = options
        d = options.feature_proj
        self.project = nn.Sequential(nn.Linear(feature_dim, d), nn.ReLU())
        self.init_h = nn.Linear(d, options.hidden)
        self.init_c = nn.Linear(d, options.hidden)
        self.attend = Attention(options.attention, d, options.hidden)
        self.gate = nn.Linear(options.hidden, d)  # the paper's beta: how much the context counts at this step
        self.embed = nn.Embedding(vocab_size, options.embed_dim, padding_idx=0)
        self.cell = nn.LSTMCell(options.embed_dim + d, options.hidden)
        self.drop = nn.Dropout(options.dropout)
        self.out = nn.Linear(options.hidden + d + options.embed_dim, vocab_size)  # the paper's deep output

    def set_embeddings(self, matrix: torch.Tensor) -> None:
        """Pre-trained (GloVe) vectors, kept frozen."""
        if matrix.shape != self.embed.weight.shape:
            raise ValueError(f"embedding matrix {tuple(matrix.shape)} != {tuple(self.embed.weight.shape)}")
        self.embed.weight.data.copy_(matrix)
        self.embed.weight.requires_grad_(False)

    def init_state(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        regions = self.project(features)
        mean = regions.mean(1)
        keys = self.attend.keys_of(regions)
        return regions, keys, torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))

    def _advance(self, tokens, state):
        regions, keys, h, c = state
        context, alphas = self.attend(regions, keys, h)
        context = torch.sigmoid(self.gate(h)) * context
        emb = self.embed(tokens)
        h, c = self.cell(torch.cat([emb, context], -1), (h, c))
        logits = self.out(self.drop(torch.cat([h, context, emb], -1)))
        return logits, (regions, keys, h, c), alphas

    def forward(self, features: torch.Tensor, rows: torch.Tensor, inputs: torch.Tensor):
        """features [N, R, C] of N images, rows [B] (the image of each caption), inputs [B, T]
        -> logits [B, T, V], alphas [B, T, R]. Each image is projected once for all its captions."""
        state = tuple(s.index_select(0, rows) for s in self.init_state(features))
        logits, alphas = [], []
        for t in range(inputs.shape[1]):
            step_logits, state, step_alphas = self._advance(inputs[:, t], state)
            logits.append(step_logits)
            alphas.append(step_alphas)
        return torch.stack(logits, 1), torch.stack(alphas, 1)

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]):
        logits, state, alphas = self._advance(tokens, state)
        return F.log_softmax(logits, -1), state, alphas


def build_model(options: ModelOptions, vocab_size: int, feature_dim: int) -> nn.Module:
    if options.model == "merge":
        return MergeModel(vocab_size, feature_dim, options)
    if options.model == "attention":
        return AttentionModel(vocab_size, feature_dim, options)
    raise ValueError(f"model must be 'merge' or 'attention', got {options.model!r}")


def caption_loss(model, features, rows, inputs, targets, mask, alpha_c: float = 0.0):
    """(loss to minimise, cross-entropy per real target word). The loss adds Show-Attend-Tell's doubly
    stochastic penalty alpha_c * sum_regions (1 - sum_t alpha_t)^2 when alpha_c > 0; the cross-entropy alone
    is what is reported, so train and dev numbers compare."""
    logits, alphas = model(features, rows, inputs)
    cross_entropy = F.cross_entropy(logits[mask], targets[mask])
    loss = cross_entropy
    if alpha_c > 0 and alphas is not None:
        coverage = (alphas * mask[..., None]).sum(1)  # [B, R]
        loss = loss + alpha_c * ((1.0 - coverage) ** 2).sum(1).mean()
    return loss, cross_entropy.detach()
