"""Lay out a servable Triton model repository from exported graphs, tokenizers and generation settings."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from importlib import resources
from pathlib import Path

from captioning import contract
from captioning.export.gpu import gpu_specs
from captioning.export.model_config import EnsembleStep, ModelSpec, TensorSpec
from captioning.export.repository_options import RepositoryOptions

__all__ = ["RepositoryOptions", "model_specs", "write_repository"]

LOG = logging.getLogger(__name__)

GRAPH_MODELS = contract.GRAPH_MODELS
GENERATOR_GRAPHS = contract.GENERATOR_GRAPHS
GRAPH_ADAPTER = contract.VISION_MODEL  # every graph model runs the same ONNX Runtime adapter


def _dynamic(names: list[str], dtype_of) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(name, dtype_of(name), (-1,) * rank) for name, rank in names)


def _graph_spec(name: str, meta: dict, options: RepositoryOptions, batched: bool) -> ModelSpec:
    def dtype(tensor: str) -> str:
        return meta["dtypes"][tensor]

    def dims(tensor: str) -> tuple[int, ...]:
        shape = meta["shapes"][tensor]
        shape = shape[1:] if batched else shape
        return tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape)

    return ModelSpec(
        name=name,
        inputs=tuple(TensorSpec(t, dtype(t), dims(t)) for t in meta["input_names"]),
        outputs=tuple(TensorSpec(t, dtype(t), dims(t)) for t in meta["output_names"]),
        max_batch_size=options.max_batch_size if batched else 0,
        batching=options.batching() if batched else None,
        parameters=options.vision_parameters()
        if name == contract.VISION_MODEL
        else options.runner_parameters(),
    )


def model_specs(
    graph_meta: dict[str, dict], image_size: tuple[int, int], options: RepositoryOptions
) -> list[ModelSpec]:
    """Every model of the repository; the public tensor contract is fixed here."""
    specs = _specs(graph_meta, image_size, options)
    if options.gpu is not None:
        specs = gpu_specs(specs, options.gpu)
    specs = [
        dataclasses.replace(s, instance_count=options.instances(s.name))
        if s.name in options.instance_models()
        else s
        for s in specs
    ]
    # a model's queue holds two batches per instance (RepositoryOptions.queue_size)
    return [
        dataclasses.replace(s, batching=_batching(s, options)) if s.batching is not None else s for s in specs
    ]


def _batching(spec: ModelSpec, options: RepositoryOptions):
    if spec.name == contract.VISION_MODEL:
        return options.vision_batching(spec.instance_count)
    return options.batching(spec.instance_count)


def _specs(
    graph_meta: dict[str, dict], image_size: tuple[int, int], options: RepositoryOptions
) -> list[ModelSpec]:
    c = contract
    mbs = options.max_batch_size
    batching = options.batching()
    image = TensorSpec(c.IMAGE_INPUT, "STRING", (1,))
    caption_en = TensorSpec(c.CAPTION_EN, "STRING", (1,))
    height, width = image_size
    pixel_values = TensorSpec(c.PIXEL_VALUES, "FP32", (3, height, width))
    image_embeds = TensorSpec(c.IMAGE_EMBEDS, "FP32", (-1, -1))
    ticket = TensorSpec(c.TICKET, "INT64", (2,))  # the door's ticket, captioning/backend/tickets.py
    generator_params = options.generator_parameters()
    scheduling = options.generator_scheduling()

    return [
        ModelSpec(
            c.PREPROCESS_MODEL,
            (image,),
            (pixel_values, ticket),
            max_batch_size=mbs,
            batching=batching,
            parameters={c.PARAM_MAX_PIXELS: str(options.max_pixels), **options.door_parameters()},
        ),
        _graph_spec(c.VISION_MODEL, graph_meta[c.VISION_MODEL], options, batched=True),
        *(_graph_spec(name, graph_meta[name], options, batched=False) for name in options.graph_models()[1:]),
        ModelSpec(
            c.CAPTION_MODEL,
            (
                image_embeds,
                TensorSpec(c.TICKET, "INT64", (2,), optional=True),
                TensorSpec(c.LAST_TICKET, "INT64", (2,), optional=True),
            ),
            (caption_en,),
            parameters=generator_params,
            **scheduling,
        ),
        ModelSpec(
            c.TRANSLATOR_MODEL,
            # user text, or (inside arabic_caption) the caption the pipeline wrote: one of the two per request
            (
                TensorSpec(c.TEXT_INPUT, "STRING", (1,), optional=True),
                TensorSpec(c.CAPTION_INPUT, "STRING", (1,), optional=True),
                TensorSpec(c.LAST_TICKET, "INT64", (2,), optional=True),
            ),
            (TensorSpec(c.TRANSLATION_OUTPUT, "STRING", (1,)),),
            **scheduling,
            parameters={
                **generator_params,
                c.PARAM_SRC_LANG: options.src_lang,
                c.PARAM_MAX_SOURCE_TOKENS: str(options.max_source_tokens),
                c.PARAM_MAX_CAPTION_TOKENS: str(options.max_caption_tokens),
                **options.door_parameters(),
            },
        ),
        *_ensembles(image, caption_en, mbs),
    ]


def _step(model: str, source: str, target: str) -> EnsembleStep:
    return EnsembleStep(model, {source: source}, {target: target})


def _ensembles(image: TensorSpec, caption_en: TensorSpec, mbs: int) -> list[ModelSpec]:
    """The public models: English captions alone, and with their Arabic translation. The door's ticket goes
    from image_preprocess to the stages that may stop early: `last_ticket` to the one answering the client."""
    c = contract

    def caption(ticket_input: str) -> EnsembleStep:
        return EnsembleStep(
            c.CAPTION_MODEL,
            {c.IMAGE_EMBEDS: c.IMAGE_EMBEDS, ticket_input: c.TICKET},
            {c.CAPTION_EN: c.CAPTION_EN},
        )

    preprocess = [
        EnsembleStep(
            c.PREPROCESS_MODEL,
            {c.IMAGE_INPUT: c.IMAGE_INPUT},
            {c.PIXEL_VALUES: c.PIXEL_VALUES, c.TICKET: c.TICKET},
        ),
        _step(c.VISION_MODEL, c.PIXEL_VALUES, c.IMAGE_EMBEDS),
    ]
    translate = EnsembleStep(
        c.TRANSLATOR_MODEL,
        {c.CAPTION_INPUT: c.CAPTION_EN, c.LAST_TICKET: c.TICKET},
        {c.TRANSLATION_OUTPUT: c.CAPTION_AR},
    )
    return [
        ModelSpec(
            c.ENGLISH_MODEL,
            (image,),
            (caption_en,),
            backend="ensemble",
            max_batch_size=mbs,
            steps=(*preprocess, caption(c.LAST_TICKET)),
        ),
        ModelSpec(
            c.ARABIC_MODEL,
            (image,),
            (caption_en, TensorSpec(c.CAPTION_AR, "STRING", (1,))),
            backend="ensemble",
            max_batch_size=mbs,
            steps=(*preprocess, caption(c.TICKET), translate),
        ),
    ]


def graph_metadata(path: Path) -> dict:
    """Names, element types and shapes of a graph's inputs and outputs, read from the ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    types = {
        onnx.TensorProto.FLOAT: "FP32",
        onnx.TensorProto.FLOAT16: "FP16",
        onnx.TensorProto.BFLOAT16: "BF16",
        onnx.TensorProto.INT64: "INT64",
        onnx.TensorProto.INT32: "INT32",
    }
    initializers = {i.name for i in model.graph.initializer}
    meta: dict = {"input_names": [], "output_names": [], "dtypes": {}, "shapes": {}}
    for kind, values in (("input_names", model.graph.input), ("output_names", model.graph.output)):
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            meta[kind].append(value.name)
            meta["dtypes"][value.name] = types[tensor.elem_type]
            meta["shapes"][value.name] = [
                d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim
            ]
    return meta


def runner_meta(model: str, meta: dict, file: Path) -> dict:
    """What a generator needs to reach a graph: its model name (BLS), its file (in-process), its tensor names."""
    return {
        "model": model,
        "file": file.as_posix(),
        "input_names": meta["input_names"],
        "output_names": meta["output_names"],
    }


def write_repository(
    output: Path,
    graphs: dict[str, Path],
    assets: dict[str, Path],
    settings: dict[str, dict],
    image_size: tuple[int, int],
    manifest: dict,
    options: RepositoryOptions | None = None,
) -> list[Path]:
    """Write configs, adapters, graphs and assets; `assets` holds `processor`, `captioner_tokenizer`,
    `translator_tokenizer` and optionally `translator_vocab`; with the torch runner the checkpoints
    (`captioner_checkpoint`, `translator_checkpoint`, and in bf16 on a CPU `vision_checkpoint`)."""
    options = options or RepositoryOptions()
    options.validate()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    meta = {name: graph_metadata(path) for name, path in graphs.items()}  # the torch runner: vision only
    written = []
    for spec in model_specs(meta, image_size, options):
        written.append(spec.write(output))
        version = output / spec.name / "1"
        version.mkdir(parents=True, exist_ok=True)
        if spec.backend == "python":
            (version / "model.py").write_bytes(adapter_source(spec.name))
    files = {}  # graph -> its file, relative to the repository root
    for name in GRAPH_MODELS:
        if name in options.graph_models():
            files[name] = Path(name) / "1" / "model.onnx"
        else:
            owner = next(model for model, roles in GENERATOR_GRAPHS.items() if name in roles.values())
            files[name] = Path(owner) / "1" / f"{name}.onnx"
        if name in graphs:  # not with the torch runner: the generators serve the checkpoints' modules
            _copy_graph(graphs[name], output / files[name])
    shutil.copy2(assets["processor"] / "preprocessor_config.json", output / contract.PREPROCESS_MODEL / "1")
    for model, tokenizer, stage in (
        (contract.CAPTION_MODEL, assets["captioner_tokenizer"], contract.CAPTION_STAGE),
        (contract.TRANSLATOR_MODEL, assets["translator_tokenizer"], contract.TRANSLATION_STAGE),
    ):
        target = output / model / "1" / "tokenizer"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(tokenizer, target)
        (output / model / "1" / "generation.json").write_text(json.dumps(settings[stage], indent=2) + "\n")
    vocab = output / contract.TRANSLATOR_MODEL / "1" / "vocab.json"
    vocab.unlink(missing_ok=True)
    if "translator_vocab" in assets:  # opt-in trimmed decoder vocabulary (captioning/decoding/vocab.py)
        shutil.copy2(assets["translator_vocab"], vocab)
    if options.torch_vision:  # bf16 on a CPU: blip_vision serves the checkpoint's vision model
        target = output / contract.VISION_MODEL / "1" / contract.CHECKPOINT_DIR
        shutil.copytree(assets["vision_checkpoint"], target, dirs_exist_ok=True)
    for model in GENERATOR_GRAPHS:
        _write_json(
            output / model / "1" / "graphs.json",
            _generator_graphs(model, meta, files, output, assets, options),
        )
    _write_json(output / "manifest.json", manifest)
    _copy_readme(output)
    LOG.info("wrote model repository %s (%d models)", output, len(written))
    return written


def _generator_graphs(
    model: str, meta: dict, files: dict, output: Path, assets: dict, options: RepositoryOptions
) -> dict:
    """A generator's `graphs.json`: its graphs by role, and the checkpoint where the torch runner serves it
    (copied into its version directory)."""
    roles = GENERATOR_GRAPHS[model].items()
    graphs_meta = {role: runner_meta(name, meta[name], files[name]) for role, name in roles if name in meta}
    if options.torch_generators:
        kind, key = (
            ("blip", "captioner_checkpoint")
            if model == contract.CAPTION_MODEL
            else ("mbart", "translator_checkpoint")
        )
        shutil.copytree(assets[key], output / model / "1" / contract.CHECKPOINT_DIR, dirs_exist_ok=True)
        graphs_meta["checkpoint"] = {"kind": kind, "dir": contract.CHECKPOINT_DIR}
        if kind == "mbart" and "translator_vocab" in assets:  # trimmed in memory as the runner loads it
            graphs_meta["checkpoint"]["vocab"] = "vocab.json"
    return graphs_meta


def adapter_source(model: str) -> bytes:
    """A model's `1/model.py` from `model_repository/` (package data, so non-editable installs find it too);
    every graph model runs blip_vision's ONNX Runtime adapter."""
    name = GRAPH_ADAPTER if model in GRAPH_MODELS else model
    resource = resources.files("captioning.model_repository") / name / "1" / "model.py"
    if not resource.is_file():
        raise FileNotFoundError(f"no Triton adapter for {model!r} in model_repository/ (broken install?)")
    return resource.read_bytes()


def _copy_readme(output: Path) -> None:
    (output / "README.md").write_bytes(
        (resources.files("captioning.model_repository") / "README.md").read_bytes()
    )


def _copy_graph(source: Path, target: Path) -> None:
    """Copy a graph as `model.onnx`; an external-data file keeps its name, which the graph refers to."""
    from captioning.export.graphs import graph_files

    target.parent.mkdir(parents=True, exist_ok=True)
    for path in graph_files(source):
        shutil.copy2(path, target if path.suffix == ".onnx" else target.parent / path.name)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
