"""The torch runner: the checkpoints' own PyTorch modules on a CPU or a GPU, behind the decoding contract.

Decoder sessions keep everything on the runner's device between steps: the cross-attention keys/values
(projected once per source, shared by its beams), the self-attention caches (preallocated to the stage's length
limit and written in place, `CacheSlot`), the mask. Per step the token ids go to the device and only what the
search needs comes back: each row's top candidates (beam search) or its chosen token (greedy), with
log-softmax, the simple processors and top-k computed there as `generate()` computes them on that device; the
full logits only where a processor needs whole rows. Beam reordering is a gather on the device. fp32 is exact
mode (TF32 off); bf16 and fp16 are opt-in fast modes, one code path on a CPU and a GPU: the dtype and the
device come from `TorchOptions` alone, and what quality needs stays fp32 (LayerNorm, the attention softmax, the
scores the search ranks: `captioning.modules.precision`). On a CPU the flags decide first whether bf16 pays
there (`captioning.runtime.cpu_flags`): a served model refuses bf16 a CPU would run slower than fp32.

In-flight batching steps many sessions of one decoder at once (`TorchStepDecoder.step_merged`): one forward
pass whose weight products cover every session's rows, each session attending to its own caches and sources
(`captioning.modules.steps.forward_merged`), then each session's own scoring of its own rows.

With CPU slots (`--cpu-slots`, `captioning.runtime.cpu_slots`) every forward pass with its scoring, cross
projection and encoder run is one run on a slot, as the ONNX graphs' runs are; a beam reorder runs at the
start of the session's next step, on that step's slot.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from captioning.runtime import cpu_flags, cpu_slots

LOG = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class TorchOptions:
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    precision: str = "fp32"  # fp32 is exact; bf16 and fp16 are fast modes
    threads: int | None = None  # CPU intra-op threads; None leaves torch's default
    # On a CPU in fp32: linear weights prepacked for oneDNN (`captioning.runtime.packing`).
    packed: bool = True
    # A served model (`captioning.backend.runners`): refuse half precision on a CPU without native bf16, unless
    # the operator's override is set. Tools that measure it (the benches) only get a WARNING.
    strict_cpu: bool = False

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    def dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]


def exact_math() -> None:
    """fp32 as `generate()` computes it by default: no TF32 in matrix products or cuDNN convolutions."""
    import torch

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        matmul.fp32_precision = "ieee"
        conv.conv.fp32_precision = "ieee"
    else:
        matmul.allow_tf32 = False
        conv.allow_tf32 = False


def prepare(options: TorchOptions):
    """Validate, check the device exists, and set the process-wide math mode; returns the torch device."""
    import torch

    options.validate()
    if options.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {options.device!r} requested but torch sees no CUDA device")
    if options.device == "cpu" and options.precision != "fp32":
        cpu_flags.check_here(options.precision, strict=options.strict_cpu)  # logs the path it takes
    if options.threads:
        torch.set_num_threads(options.threads)
    if options.precision == "fp32":
        exact_math()
    return torch.device(options.device)


class TorchGraph:
    """A `GraphRunner` over one module (an encoder): numpy feeds in, numpy outputs out."""

    def __init__(
        self, module, input_names: tuple[str, ...], output_names: tuple[str, ...], options: TorchOptions
    ):
        self.device = prepare(options)
        self.dtype = options.dtype()
        self.module = _placed(module, self.device, self.dtype, options)
        self.input_names, self.output_names = input_names, output_names

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [_to_device(feeds[name], self.device, self.dtype) for name in self.input_names]
        with cpu_slots.held(), torch.inference_mode():  # a no-op unless the model was given CPU slots
            out = self.module(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return {name: t.float().cpu().numpy() for name, t in zip(self.output_names, outs, strict=True)}


def _placed(module, device, dtype, options: TorchOptions):
    """`module` on the device in the dtype, its linear layers packed where that pays (a CPU, fp32); in half
    precision with its fp32 islands (LayerNorm, BLIP's vision attention) swapped in before the cast."""
    if options.precision != "fp32":
        from captioning.modules.precision import keep_fp32_islands

        swapped = keep_fp32_islands(module)
        LOG.info(
            "%s in %s; kept in fp32: %s", type(module).__name__, options.precision, swapped or "nothing new"
        )
    module = module.to(device, dtype).eval()
    if options.packed and device.type == "cpu" and options.precision == "fp32":
        from captioning.runtime.packing import pack_linears

        LOG.info("%s: %d linear layers prepacked for oneDNN", type(module).__name__, pack_linears(module))
    return module


def _to_device(array, device, dtype):
    import torch

    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    return tensor.to(device, dtype if tensor.is_floating_point() else None)


class TorchStepDecoder:
    """The decoding library's `Decoder` over a cross-KV module and a step module (`captioning.modules.steps`)."""

    def __init__(self, cross, step, options: TorchOptions, max_length: int) -> None:
        self.device = prepare(options)
        self.dtype = options.dtype()
        self.step = _placed(step, self.device, self.dtype, options)
        self.cross = _placed(cross, self.device, self.dtype, options)
        self.max_length = max_length
        self.layers = len(step.layers) if hasattr(step, "layers") else len(step.decoder.layers)

    def start(self, encoder_hidden_states: np.ndarray, encoder_attention_mask: np.ndarray, num_beams: int):
        import torch

        from captioning.modules.tensors import CacheSlot

        with cpu_slots.held(), torch.inference_mode():
            states = _to_device(encoder_hidden_states, self.device, self.dtype)
            # Contiguous once per source: the projections come out as transposed views, and every step's
            # products would otherwise copy them (BLIP: 577 keys and values per image and layer).
            cross = tuple(t.contiguous() for t in self.cross(states))
        key = cross[0]  # [B, H, S, Dh]
        rows = key.shape[0] * num_beams
        shape = (rows, key.shape[1], self.max_length, key.shape[3])
        slots = [
            CacheSlot(torch.empty(shape, device=self.device, dtype=self.dtype))
            for _ in range(2 * self.layers)
        ]
        mask = torch.from_numpy(np.ascontiguousarray(encoder_attention_mask, dtype=np.int64)).to(self.device)
        return TorchSession(self, cross, mask, slots)

    def step_merged(self, calls: list) -> list:
        """Answer the `StepCall`s of several of this decoder's sessions (same new length) with one forward
        pass; each gets what its own call would return. If the pass fails, no cache has moved."""
        import torch

        from captioning.modules.steps import Segment

        sessions = [call.session for call in calls]
        lengths = [[slot.length for slot in session.slots] for session in sessions]
        ids = np.concatenate([call.input_ids for call in calls]).astype(np.int64, copy=False)
        try:
            with cpu_slots.held(), torch.inference_mode():
                for session in sessions:
                    session.apply_reorder()
                segments = [Segment.of(s.mask, (*s.cross, *s.slots), self.layers) for s in sessions]
                logits, _ = self.step.forward_merged(torch.from_numpy(ids).to(self.device), segments)
                parts = torch.split(logits.float(), [len(call.input_ids) for call in calls])
                return [
                    session.answer(call.method, part, call.args[1:])
                    for session, call, part in zip(sessions, calls, parts, strict=True)
                ]
        except BaseException:
            for session, kept in zip(sessions, lengths, strict=True):
                for slot, length in zip(session.slots, kept, strict=True):
                    slot.length = length
            raise


class TorchSession:
    """One `generate()` call's state on the device."""

    def __init__(self, decoder: TorchStepDecoder, cross: tuple, mask, slots: list) -> None:
        self.decoder, self.cross, self.mask, self.slots = decoder, cross, mask, slots
        self.pending: np.ndarray | None = None  # a beam reordering not yet applied (`reorder`)

    def _logits(self, input_ids: np.ndarray):
        import torch

        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(self.decoder.device)
        with torch.inference_mode():
            self.apply_reorder()
            return self.decoder.step(ids, self.mask, *self.cross, *self.slots)[0].float()

    def answer(self, method: str, logits, args: tuple):
        """What `method` returns, from this session's rows of a step's float32 logits."""
        import torch

        with torch.inference_mode():
            if method == "step":  # the full last-position logits on the host (a processor needs whole rows)
                return logits.cpu().numpy()
            if method == "step_candidates":  # log-softmax, simple processors and top-k, as generate() there
                k, scoring = args
                scores = _scored(torch.log_softmax(logits, dim=-1), scoring)
                values, ids = torch.topk(scores, k, dim=-1)
                return values.cpu().numpy(), ids.cpu().numpy(), scores.shape[-1]
            if method == "step_argmax":
                (scoring,) = args
                return _scored(logits, scoring).argmax(dim=-1).cpu().numpy()
        raise ValueError(f"unknown step method {method!r}")

    def _run(self, method: str, input_ids: np.ndarray, args: tuple):
        with cpu_slots.held():  # one step, forward pass and scoring, is one run on a CPU slot
            return self.answer(method, self._logits(input_ids), args)

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        return self._run("step", input_ids, ())

    def step_candidates(self, input_ids: np.ndarray, k: int, scoring) -> tuple[np.ndarray, np.ndarray, int]:
        return self._run("step_candidates", input_ids, (k, scoring))

    def step_argmax(self, input_ids: np.ndarray, scoring) -> np.ndarray:
        return self._run("step_argmax", input_ids, (scoring,))

    def reorder(self, rows: np.ndarray) -> None:
        """Keep row `rows[i]` as row i, from the next step on: the gather runs at the start of that step, on
        its CPU slot. On a slot of its own, a gather of a few MB waited for a whole run of another model to
        free a slot (the vision encoder's, half a second), once per search and step: under load that was a
        third of the caption generator's time, and its step times refused requests it would have served."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.pending is not None:
            self.pending = self.pending[rows]  # row i is the pending order's row rows[i]
        elif len(rows) != self.slots[0].rows or not np.array_equal(rows, np.arange(len(rows))):
            self.pending = rows  # (most steps keep every beam's own history: nothing to do)

    def apply_reorder(self) -> None:
        """The pending reordering, if any; called inside a step's CPU slot."""
        if self.pending is None:
            return
        import torch

        index = torch.from_numpy(self.pending).to(self.decoder.device)
        for slot in self.slots:
            slot.reorder(index)
        self.pending = None


def _scored(scores, scoring):
    """`tokens.DeviceScoring` applied in place, in HF's order: banned end tokens, then a forced token."""
    if scoring.banned:
        scores[:, list(scoring.banned)] = -float("inf")
    if scoring.forced is not None:
        scores.fill_(-float("inf"))
        scores[:, scoring.forced] = 0.0
    return scores


def vision_graph(model, options: TorchOptions) -> TorchGraph:
    """BLIP's vision model, from a loaded `BlipForConditionalGeneration` or `BlipVisionModel`."""
    from captioning import contract
    from captioning.modules.graphs import BlipVisionGraph

    return TorchGraph(BlipVisionGraph(model), (contract.PIXEL_VALUES,), (contract.IMAGE_EMBEDS,), options)


def encoder_graph(model, options: TorchOptions) -> TorchGraph:
    """mBART's encoder, from a loaded `MBartForConditionalGeneration`."""
    from captioning.modules.graphs import MBartEncoderGraph

    return TorchGraph(
        MBartEncoderGraph(model), ("input_ids", "attention_mask"), ("last_hidden_state",), options
    )


def step_decoder(kind: str, model, options: TorchOptions, max_length: int) -> TorchStepDecoder:
    """The caption (`blip`) or translation (`mbart`) decoder over the checkpoint's own modules."""
    from captioning.modules.steps import BlipCrossKV, BlipTextStep, MBartCrossKV, MBartStep

    cross, step = (BlipCrossKV, BlipTextStep) if kind == "blip" else (MBartCrossKV, MBartStep)
    return TorchStepDecoder(cross(model), step(model), options, max_length)


CHECKPOINT_CLASSES = {
    "blip": "BlipForConditionalGeneration",
    "blip_vision": "BlipVisionModel",  # blip_vision's own checkpoint in bf16 CPU repositories
    "mbart": "MBartForConditionalGeneration",
}


def load_checkpoint(kind: str, path: str | Path, vocab: str | Path | None = None):
    """A checkpoint of `kind` from a local directory or hub id, in fp32 (the runner casts to its precision).

    `vocab` (mbart only): a trimmed-vocabulary file; the decoder is trimmed to its kept ids in memory
    (`captioning.modules.vocab`), so the step's logits come out over kept positions."""
    import transformers

    if kind not in CHECKPOINT_CLASSES:
        raise ValueError(f"checkpoint kind must be one of {', '.join(CHECKPOINT_CLASSES)}, got {kind!r}")
    if vocab is not None and kind != "mbart":
        raise ValueError(f"a trimmed vocabulary applies to the translator (mbart), not to {kind!r}")
    LOG.info("loading %s checkpoint %s", kind, path)
    model = getattr(transformers, CHECKPOINT_CLASSES[kind]).from_pretrained(str(path)).eval()
    if vocab is not None:
        from captioning.decoding.vocab import VocabMap
        from captioning.modules.vocab import trim_decoder_vocab

        trim_decoder_vocab(model, VocabMap.load(vocab))
    return model
