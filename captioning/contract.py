"""The public contract in one place: model, tensor and request-parameter names, limits and defaults.

The client, the request options, the model-config specs, the Triton adapters and the CLIs import these; no
other module spells them. Changing a value here changes it for the exporter, the server and the client at
once. Only the standard library is imported, so every package (the torch-free client included) may use it.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- public models (docs/design.md) -----------------------------------------------------------------------
ARABIC_MODEL = "arabic_caption"  # ensemble: image -> caption_en, caption_ar
ENGLISH_MODEL = "english_caption"  # ensemble: image -> caption_en
TRANSLATOR_MODEL = "translator"  # English text -> Arabic text

# -- internal models -----------------------------------------------------------------------------------
PREPROCESS_MODEL = "image_preprocess"
CAPTION_MODEL = "caption_generator"
# The six ONNX graphs an export writes; with the in-process runner only the vision graph is a model of its own,
# the others live in their generator's directory.
VISION_MODEL = "blip_vision"
BLIP_CROSS_KV = "blip_cross_kv"
BLIP_TEXT_DECODER = "blip_text_decoder"
MBART_ENCODER = "mbart_encoder"
MBART_CROSS_KV = "mbart_cross_kv"
MBART_DECODER = "mbart_decoder"
GRAPH_MODELS = (VISION_MODEL, BLIP_CROSS_KV, BLIP_TEXT_DECODER, MBART_ENCODER, MBART_CROSS_KV, MBART_DECODER)
# The graphs each generator drives, by role.
GENERATOR_GRAPHS = {
    CAPTION_MODEL: {"cross": BLIP_CROSS_KV, "step": BLIP_TEXT_DECODER},
    TRANSLATOR_MODEL: {"encoder": MBART_ENCODER, "cross": MBART_CROSS_KV, "step": MBART_DECODER},
}

# -- tensors ---------------------------------------------------------------------------------------------
IMAGE_INPUT = "image"  # TYPE_STRING [1]: encoded JPEG/PNG/WebP bytes
PIXEL_VALUES = "pixel_values"
IMAGE_EMBEDS = "image_embeds"
CAPTION_EN = "caption_en"
CAPTION_AR = "caption_ar"
TEXT_INPUT = "text"  # TYPE_STRING [1]: UTF-8 English text
# The translator's input inside `arabic_caption`: the caption the pipeline wrote (not user text, so not held to
# MAX_SOURCE_TOKENS). A translator request carries exactly one of `text` and this.
CAPTION_INPUT = CAPTION_EN
TRANSLATION_OUTPUT = "translation"
# Admission at the door (captioning/runtime/door.py): the first step of an image ensemble admits the request
# and emits its ticket, INT64 [2] per row: (ticket id, the wall-clock ms after which its client has gone; id -1
# when the door is off). Inside the pipeline it reaches the stages as `ticket` (more stages follow) or
# `last_ticket` (this stage answers the client and closes the ticket).
TICKET = "ticket"
LAST_TICKET = "last_ticket"


# -- request parameters ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageParameters:
    """The request-parameter names of one generation stage (Triton request parameters, JSON ints)."""

    num_beams: str
    max_new_tokens: str


CAPTION_STAGE = "caption"
TRANSLATION_STAGE = "translation"
STAGE_PARAMETERS = {
    CAPTION_STAGE: StageParameters("caption_num_beams", "caption_max_new_tokens"),
    TRANSLATION_STAGE: StageParameters("translation_num_beams", "translation_max_new_tokens"),
}
REQUEST_PARAMETERS = frozenset(
    name for stage in STAGE_PARAMETERS.values() for name in (stage.num_beams, stage.max_new_tokens)
)

# -- limits ----------------------------------------------------------------------------------------------
MAX_PIXELS = (
    50_000_000  # decoded image size; larger headers are refused before decoding (decompression bombs)
)
MAX_IMAGE_BYTES = 64 * 1024 * 1024  # encoded image size
MAX_BEAMS = 8  # per request and stage
MAX_BATCH_SIZE = 16  # rows per request, and the default dynamic-batching limit of every model
MAX_SOURCE_TOKENS = 256  # user text sent to the translator, in its tokens
MAX_LENGTH = 64  # tokens per stage, prompt included: what the original deployment used
# Load shedding per model (docs/reliability.md): queued requests beyond this, or queued longer than this, are
# answered UNAVAILABLE at once. The export queues QUEUE_BATCHES batches per model instance by default: a queued
# request waits at most for the running batch and one more, and a closed loop of up to that many clients per
# instance is never shed (the running batch may be small). The timeout is a backstop for a stalled model: above
# two batches' runs, the count bound sheds the excess at once and the timeout sheds nothing.
QUEUE_BATCHES = 2
MAX_QUEUE_SIZE = QUEUE_BATCHES * MAX_BATCH_SIZE
QUEUE_TIMEOUT_S = 30.0
# The deadline the door gives a request that sends no `timeout` of its own (docs/reliability.md): at a measured
# capacity of C images/s it admits about 0.75 * C * LATENCY_BUDGET_S images at once. 0 turns the door off.
LATENCY_BUDGET_S = 20.0

# -- defaults --------------------------------------------------------------------------------------------
SOURCE_LANG = "en_XX"  # mBART-50 language codes
TARGET_LANG = "ar_AR"

# -- model-config parameters: written by `captioning export`, read by the Triton adapters -------------------
PARAM_DECODER_RUNNER = "decoder_runner"  # "inprocess" or "bls"
PARAM_INTRA_OP_THREADS = "intra_op_threads"  # "0": ONNX Runtime decides
PARAM_CPU_SLOTS = "cpu_slots"  # "0", "N" or "auto"
PARAM_MAX_PIXELS = "max_pixels"
PARAM_MAX_SOURCE_TOKENS = "max_source_tokens"
PARAM_MAX_CAPTION_TOKENS = "max_caption_tokens"  # the encoder's positions
PARAM_SRC_LANG = "src_lang"
PARAM_DEVICE = "device"  # torch runner: "cpu", "cuda" or "cuda:N"
PARAM_PRECISION = "precision"  # torch runner: "fp32" (exact), "bf16" or "fp16"
# blip_vision's runner: its ONNX graph ("onnx", the default) or the checkpoint's vision model on the torch runner
# ("torch": bf16 repositories on a CPU, `export --target cpu --precision bf16`).
PARAM_VISION_RUNNER = "vision_runner"
ONNX_RUNNER = "onnx"
# Where a torch-runner model's checkpoint lies inside its version directory.
CHECKPOINT_DIR = "checkpoint"
# In-flight batching (`export --inflight`): the generators run under the sequence batcher's iterative sequences;
# these bound the rows decoding at once and the requests waiting to join (captioning/runtime/inflight.py).
PARAM_INFLIGHT = "inflight"  # "1": on
PARAM_INFLIGHT_ROWS = "inflight_rows"
PARAM_MAX_QUEUE_SIZE = "max_queue_size"
PARAM_QUEUE_TIMEOUT_S = "queue_timeout_s"
# The door, on the models that admit requests (image_preprocess; the translator for text): the default deadline,
# the rows admitted before the first answer is timed, and the most rows the inner stages' queues hold.
PARAM_LATENCY_BUDGET_S = "latency_budget_s"
PARAM_ADMISSION_WARMUP = "admission_warmup"
PARAM_ADMISSION_CAP = "admission_cap"
# How generators decode on CPU: their ONNX graphs in ONNX Runtime in their own process, other Triton models over
# BLS, or the checkpoints' PyTorch modules in their own process (the torch runner: what GPU repositories use).
TORCH_RUNNER = "torch"
INPROCESS_RUNNER, BLS_RUNNER = "inprocess", "bls"
DECODER_RUNNERS = (INPROCESS_RUNNER, BLS_RUNNER, TORCH_RUNNER)
TARGETS = ("cpu", "gpu")
# The operator's override (environment, "1"): a served bf16 model loads on a CPU without amx_bf16/avx512_bf16,
# where it would otherwise refuse (bf16 is slower than fp32 there; captioning/runtime/cpu_flags.py).
ALLOW_SLOW_BF16_ENV = "CAPTIONING_ALLOW_SLOW_BF16"

# -- the server's control plane (docs/security.md) ---------------------------------------------------------
# Triton serves the APIs that change it (model repository, shared memory, statistics, trace, logging) only to
# requests carrying this header with the admin key; gRPC metadata keys are lower case.
ADMIN_KEY_HEADER = "x-captioning-admin-key"
