"""What a repository is built with (`RepositoryOptions`): batching, load shedding, in-flight bounds, runners
and layout, and the model parameters and scheduling they turn into."""

from __future__ import annotations

import dataclasses

from captioning import contract
from captioning.export.gpu import GpuOptions
from captioning.export.model_config import BatchingSpec, IterativeSpec

GRAPH_MODELS = contract.GRAPH_MODELS
TORCH_CPU_PRECISIONS = ("fp32", "bf16")  # the torch runner on a CPU repository
ONE_REQUEST_DELAY_US = 3_600_000_000  # see RepositoryOptions.vision_batching


@dataclasses.dataclass(frozen=True)
class RepositoryOptions:
    max_batch_size: int = contract.MAX_BATCH_SIZE
    max_queue_delay_us: int = 2000
    # Load shedding (docs/reliability.md): each model queues at most this many requests and for at most this
    # long; past either, a request is answered UNAVAILABLE at once. 0 switches the bound off; None (the
    # default) queues two batches per model instance, see queue_size().
    max_queue_size: int | None = None
    queue_timeout_s: float = contract.QUEUE_TIMEOUT_S
    # In-flight batching of the generators (captioning/runtime/inflight.py): requests join the decoding batch at
    # the next step and leave when answered. Off: each batch decodes to its end before the next one starts.
    inflight: bool = False
    # How generators decode: "inprocess" (their ONNX graphs in ONNX Runtime inside the generator's process: no
    # tensor copies through Triton per token), "bls" (calls to the graph models through Triton, for GPU nodes
    # whose graph models run on Triton's native TensorRT/ONNX Runtime backends) or "torch" (the checkpoints'
    # own modules in the generator's process, as GPU repositories run them; with in-flight batching its
    # cohorts share one forward pass per step).
    decoder_runner: str = "inprocess"
    # The torch runner's precision on a CPU repository: "fp32" (exact) or "bf16" (`export --target cpu
    # --precision bf16`: the generators and blip_vision on the torch runner in bf16). GPU repositories: gpu.
    torch_precision: str = "fp32"
    intra_op_threads: int = 0  # 0: ONNX Runtime decides
    # At most this many graph runs at once across the server's models ("auto": the serving machine's cores;
    # "0": no limit). Meant for single-threaded layouts; see captioning/runtime/cpu_slots.py.
    cpu_slots: str = "0"
    # Model instances per model name (default 1): several single-threaded instances of the slowest stages
    # keep cores busy without the thread-pool barriers of one multi-threaded instance.
    instance_counts: tuple[tuple[str, int], ...] = ()
    max_pixels: int = contract.MAX_PIXELS
    max_source_tokens: int = contract.MAX_SOURCE_TOKENS
    max_caption_tokens: int = 1024  # the translator's encoder positions (set from the checkpoint at export)
    src_lang: str = contract.SOURCE_LANG
    # Admission at the door (captioning/runtime/door.py): the deadline of a request that sends no timeout of
    # its own. 0 turns the door off: each stage then sheds by its own bounds alone.
    latency_budget_s: float = contract.LATENCY_BUDGET_S
    gpu: GpuOptions | None = None  # None: the CPU repository; see export/gpu.py

    @property
    def target(self) -> str:
        return "cpu" if self.gpu is None else "gpu"

    @property
    def torch_vision(self) -> bool:
        """Whether blip_vision serves the checkpoint's vision model on the torch runner (bf16 on a CPU: the
        ONNX graph has no bf16 path there); otherwise its ONNX graph."""
        return self.gpu is None and self.torch_precision != "fp32"

    @property
    def torch_generators(self) -> bool:
        """Whether the generators serve the checkpoints' modules (GPU repositories, `--decoder-runner torch`)."""
        return self.gpu is not None or self.decoder_runner == contract.TORCH_RUNNER

    def validate(self) -> None:
        if self.gpu is not None:
            self.gpu.validate()
        if not 1 <= self.max_batch_size <= 256:
            raise ValueError(f"max_batch_size must be in 1..256, got {self.max_batch_size}")
        if self.latency_budget_s < 0:
            raise ValueError(f"latency_budget_s must be >= 0 (0: no door), got {self.latency_budget_s:g}")
        if (self.max_queue_size or 0) < 0 or self.queue_timeout_s < 0:
            raise ValueError("max_queue_size and queue_timeout_s must be >= 0 (0: no bound)")
        if self.decoder_runner not in contract.DECODER_RUNNERS:
            raise ValueError(
                f"decoder_runner must be one of {', '.join(contract.DECODER_RUNNERS)}, got {self.decoder_runner!r}"
            )
        if self.torch_precision not in TORCH_CPU_PRECISIONS:
            raise ValueError(
                f"torch_precision must be one of {', '.join(TORCH_CPU_PRECISIONS)}, got {self.torch_precision!r}"
            )
        if self.torch_vision and self.decoder_runner != contract.TORCH_RUNNER:
            raise ValueError(f"torch_precision {self.torch_precision} needs decoder_runner torch")
        for name, count in self.instance_counts:
            if name not in self.instance_models():
                raise ValueError(
                    f"instance count for unknown model {name!r}; models with --decoder-runner "
                    f"{self.decoder_runner}: {', '.join(self.instance_models())}"
                )
            if not 1 <= count <= 16:
                raise ValueError(f"instance count of {name} must be in 1..16, got {count}")
        if self.cpu_slots != "auto" and not (self.cpu_slots.isdigit() and int(self.cpu_slots) <= 1024):
            raise ValueError(f"cpu_slots must be 'auto' or an int in 0..1024, got {self.cpu_slots!r}")

    def queue_size(self, instances: int = 1) -> int:
        """Requests a model may queue. By default two batches per instance (contract.QUEUE_BATCHES): a queued
        request then waits at most for the running batch and the next, so it is not shed late by the queue
        timeout while two batches' runs are shorter; a longer queue adds waiting, not throughput."""
        if self.max_queue_size is not None:
            return self.max_queue_size
        return contract.QUEUE_BATCHES * self.max_batch_size * instances

    def batching(self, instances: int = 1) -> BatchingSpec:
        """Several instances prefer an equal share of a full batch each. Without it, requests that arrive
        together (closed-loop clients whose answers came back together) all land in one instance's batch while
        the others idle, and come back together again: a convoy that ran two translator instances one at a
        time (docs/performance.md). Triton sends a preferred size at once while the oldest request has waited
        less than the queue delay, and whatever is pending after it."""
        share = -(-self.max_batch_size // instances)
        return BatchingSpec(
            self.max_queue_delay_us,
            preferred_batch_sizes=(share,) if instances > 1 else (),
            max_queue_size=self.queue_size(instances),
            queue_timeout_us=int(self.queue_timeout_s * 1_000_000),
        )

    def vision_batching(self, instances: int = 1) -> BatchingSpec:
        """The vision encoder's batcher. On a CPU each run serves one request where an instance is free: 577
        tokens per image make every product compute-bound at one image (0.50 s per image alone, 0.515 in
        fours), so a batch buys nothing and makes each image wait for all of the batch. Triton sends a batch of
        the one preferred size 1 at once, as long as the oldest request has waited less than the queue delay,
        which is why that is long here (the queue timeout sheds requests before it). A run already waiting for
        a busy instance still takes requests that arrive meanwhile: 1.7 images per run at c=16 against 2.8
        with the default batcher (docs/performance-history.md, run 29). GPUs batch as usual."""
        spec = self.batching(instances)
        if self.gpu is not None:
            return spec
        return dataclasses.replace(spec, max_queue_delay_us=ONE_REQUEST_DELAY_US, preferred_batch_sizes=(1,))

    def generator_scheduling(self) -> dict:
        """ModelSpec fields of the generators: the dynamic batcher, or iterative sequences for in-flight."""
        if not self.inflight:
            return {"max_batch_size": self.max_batch_size, "batching": self.batching()}
        # The model sees every request it may hold (decoding + waiting) and one batch more in each execution:
        # that surplus is what it sheds (UNAVAILABLE) at once. Without it Triton's own backlog would hold the
        # excess, unbounded, since the sequence batcher has no queue policy.
        rows = self.max_batch_size + self.queue_size() + self.max_batch_size
        return {
            "max_batch_size": rows,
            "iterative": IterativeSpec(max_candidates=rows),
        }

    def generator_parameters(self) -> dict[str, str]:
        """Model parameters of the generators: their runner, its graph runs and the in-flight bounds."""
        params = {
            contract.PARAM_DECODER_RUNNER: self.decoder_runner,
            **self.runner_parameters(),
            **self.torch_parameters(),
        }
        if not self.inflight:
            return params
        return {
            **params,
            contract.PARAM_INFLIGHT: "1",
            contract.PARAM_INFLIGHT_ROWS: str(self.max_batch_size),
            contract.PARAM_MAX_QUEUE_SIZE: str(self.queue_size()),
            contract.PARAM_QUEUE_TIMEOUT_S: str(self.queue_timeout_s),
        }

    def door_parameters(self) -> dict[str, str]:
        """Model parameters of the models where requests enter. Before the first answer the door admits one
        batch; it never holds more rows than a queue and a batch of an inner stage, so what it admitted is
        never shed by an inner queue's bound."""
        cap = self.queue_size() + self.max_batch_size if self.queue_size() else 0
        return {
            contract.PARAM_LATENCY_BUDGET_S: f"{self.latency_budget_s:g}",
            contract.PARAM_ADMISSION_WARMUP: str(self.max_batch_size),
            contract.PARAM_ADMISSION_CAP: str(cap or 1_000_000),
        }

    def runner_parameters(self) -> dict[str, str]:
        """Model parameters of every model that runs ONNX graphs."""
        return {
            contract.PARAM_INTRA_OP_THREADS: str(self.intra_op_threads),
            contract.PARAM_CPU_SLOTS: self.cpu_slots,
        }

    def torch_parameters(self) -> dict[str, str]:
        """The generators' torch runner on a CPU repository (GPU repositories set theirs in gpu.py)."""
        if self.decoder_runner != contract.TORCH_RUNNER or self.gpu is not None:
            return {}
        return {contract.PARAM_DEVICE: "cpu", contract.PARAM_PRECISION: self.torch_precision}

    def vision_parameters(self) -> dict[str, str]:
        """blip_vision's parameters: its graph runs' bounds, and which runner serves it."""
        if not self.torch_vision:
            return self.runner_parameters()
        return {
            **self.runner_parameters(),
            contract.PARAM_VISION_RUNNER: contract.TORCH_RUNNER,
            **self.torch_parameters(),
        }

    def instances(self, name: str) -> int:
        return dict(self.instance_counts).get(name, 1)

    def graph_models(self) -> tuple[str, ...]:
        """The graphs that are Triton models of their own. With the in-process runner the decoder-side graphs
        live in their generator's version directory instead: loading them as models too would hold a second copy
        of every weight (~4 GB at full size)."""
        return GRAPH_MODELS if self.decoder_runner == "bls" else GRAPH_MODELS[:1]

    def instance_models(self) -> tuple[str, ...]:
        """Models that run work themselves (ensembles have no instances)."""
        return (
            contract.PREPROCESS_MODEL,
            *self.graph_models(),
            contract.CAPTION_MODEL,
            contract.TRANSLATOR_MODEL,
        )
