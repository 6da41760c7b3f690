"""Export the four graphs from tiny seeded BLIP / mBART checkpoints and hold them to PyTorch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
transformers = pytest.importorskip("transformers")

from captioning.contract import GRAPH_MODELS as GRAPH_NAMES  # noqa: E402
from captioning.export.errors import GraphValidationError, UnsupportedCheckpointError  # noqa: E402
from captioning.export.graphs import ExportOptions, export_graphs, export_models, load_translator, run_jobs  # noqa: E402
from captioning.export.mbart import encoder_job, mbart_jobs  # noqa: E402
from captioning.export.specs import encoder_spec  # noqa: E402
from captioning.export.validate import validate_graph  # noqa: E402
from captioning.runtime.graphs import OrtRunner, StepDecoder  # noqa: E402

OPTIONS = ExportOptions(progress=False, ort_threads=1)
LAYERS, HEADS, HIDDEN = 2, 4, 32


def tiny_blip():
    config = transformers.BlipConfig(
        text_config=dict(
            vocab_size=99,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=37,
            max_position_embeddings=64,
            bos_token_id=1,
            sep_token_id=2,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=HIDDEN,
            image_size=32,
            patch_size=16,
            num_hidden_layers=2,
            num_attention_heads=HEADS,
            intermediate_size=37,
            initializer_range=0.02,  # the default 1e-10 makes every image embedding identical
        ),
    )
    return transformers.BlipForConditionalGeneration(config).eval()


def tiny_mbart():
    config = transformers.MBartConfig(
        vocab_size=200,
        d_model=HIDDEN,
        encoder_layers=2,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        max_position_embeddings=64,
        scale_embedding=True,
    )
    model = transformers.MBartForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()  # zero at init: a graph that dropped it would still pass
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("checkpoints")
    tiny_blip().save_pretrained(root / "blip")
    tiny_mbart().save_pretrained(root / "mbart")
    return root / "blip", root / "mbart"


@pytest.fixture(scope="module")
def models(checkpoints):
    blip_dir, mbart_dir = checkpoints
    load = dict(torch_dtype=torch.float32, attn_implementation="eager")
    blip = transformers.BlipForConditionalGeneration.from_pretrained(blip_dir, **load).eval()
    mbart = transformers.MBartForConditionalGeneration.from_pretrained(mbart_dir, **load).eval()
    return blip, mbart


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    blip_dir, mbart_dir = checkpoints
    return export_graphs(blip_dir, mbart_dir, tmp_path_factory.mktemp("graphs"), OPTIONS)


def test_export_writes_the_contract_graphs(exported):
    assert tuple(exported) == GRAPH_NAMES
    for name, path in exported.items():
        assert path.name == f"{name}.onnx" and path.is_file()
    decoder = onnx.load(str(exported["mbart_decoder"])).graph
    cross = [f"cross.{i}.{kind}" for i in range(LAYERS) for kind in ("key", "value")]
    past = [f"past_key_values.{i}.{kind}" for i in range(LAYERS) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(LAYERS) for kind in ("key", "value")]
    assert [i.name for i in decoder.input] == ["input_ids", "encoder_attention_mask", *cross, *past]
    assert [o.name for o in decoder.output] == ["logits", *present]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in decoder.input}
    assert dims["cross.0.key"] == ["batch", HEADS, "encoder_len", HIDDEN // HEADS]
    assert dims["cross.0.value"] == ["batch", HEADS, HIDDEN // HEADS, "encoder_len"]  # stored transposed
    assert dims["past_key_values.0.key"] == ["rows", HEADS, "past_len", HIDDEN // HEADS]
    blip = onnx.load(str(exported["blip_text_decoder"])).graph
    assert [i.name for i in blip.input][:3] == ["input_ids", "encoder_attention_mask", "cross.0.key"]
    assert [o.name for o in onnx.load(str(exported["blip_cross_kv"])).graph.output] == cross


@pytest.mark.parametrize("seed", [101, 202])
def test_graphs_match_pytorch_on_fresh_inputs(exported, models, seed):
    from captioning.export.blip import blip_jobs

    blip, mbart = models
    for job in [*blip_jobs(blip, seed), *mbart_jobs(mbart, seed)]:
        results = validate_graph(job.spec, exported[job.spec.name], job.cases, intra_op_threads=1)
        labels = " ".join(r.label for r in results)
        assert all(r.worst <= job.spec.atol for r in results)
        if "decoder" in job.spec.name:
            assert "past=0" in labels and "past=5" in labels and "batch=3" in labels


def _decoder(exported, prefix: str) -> StepDecoder:
    return StepDecoder(
        OrtRunner(exported[f"{prefix}_cross_kv"], intra_op_threads=1),
        OrtRunner(
            exported[f"{prefix}_decoder" if prefix == "mbart" else "blip_text_decoder"], intra_op_threads=1
        ),
    )


def _step_logits(decoder: StepDecoder, ids, states, mask, prompt: int, beams: int = 1) -> np.ndarray:
    """Logits after each position from prompt-1 on, fed as a prompt then one token at a time; with beams > 1
    every source's rows carry the same tokens, so each row must equal the single-beam result."""
    rows = np.repeat(ids, beams, axis=0)
    session = decoder.start(states, mask, beams)
    steps = [session.step(rows[:, :prompt])]
    for t in range(prompt, ids.shape[1]):
        session.reorder(
            np.arange(rows.shape[0])[::-1].reshape(-1, beams)[::-1].reshape(-1)
        )  # swap within sources
        steps.append(session.step(rows[:, t : t + 1]))
    assert session.past[0].shape == (rows.shape[0], HEADS, ids.shape[1], HIDDEN // HEADS)
    got = np.stack(steps, axis=1)
    for beam in range(1, beams):
        np.testing.assert_array_equal(got[beam::beams], got[::beams])
    return got[::beams]


@pytest.mark.parametrize("beams", [1, 3])
def test_blip_decoder_graph_equals_pytorch_steps(exported, models, beams):
    blip, _ = models
    rng = np.random.default_rng(7)
    pixels = rng.standard_normal((2, 3, 32, 32), dtype=np.float32)
    states = OrtRunner(exported["blip_vision"], intra_op_threads=1).run({"pixel_values": pixels})[
        "image_embeds"
    ]
    mask = np.ones(states.shape[:2], dtype=np.int64)
    ids = rng.integers(3, 99, size=(2, 6))
    ids[:, 0] = 1
    got = _step_logits(_decoder(exported, "blip"), ids, states, mask, prompt=1, beams=beams)
    with torch.no_grad():
        embeds = blip.vision_model(pixel_values=torch.from_numpy(pixels)).last_hidden_state
        want = blip.text_decoder(
            input_ids=torch.from_numpy(ids), encoder_hidden_states=embeds, use_cache=False
        ).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("beams", [1, 2])
def test_mbart_decoder_graph_equals_pytorch_steps(exported, models, beams):
    _, mbart = models
    rng = np.random.default_rng(8)
    source = rng.integers(4, 200, size=(3, 7))
    source_mask = np.ones_like(source)
    source_mask[1, 5:] = 0
    source_mask[2, 3:] = 0
    encoder = OrtRunner(exported["mbart_encoder"], intra_op_threads=1)
    states = encoder.run({"input_ids": source, "attention_mask": source_mask})["last_hidden_state"]
    ids = rng.integers(4, 200, size=(3, 5))
    ids[:, 0] = 2
    got = _step_logits(_decoder(exported, "mbart"), ids, states, source_mask, prompt=2, beams=beams)
    with torch.no_grad():
        want = mbart(
            input_ids=torch.from_numpy(source),
            attention_mask=torch.from_numpy(source_mask),
            decoder_input_ids=torch.from_numpy(ids),
            use_cache=False,
        ).logits.numpy()
    np.testing.assert_allclose(got, want[:, 1:], atol=1e-4, rtol=1e-5)


def test_step_session_shrinks_to_one_row_per_source_and_grows_back(exported):
    """Beam search decodes identical beams once per source, then expands the cache to every beam."""
    rng = np.random.default_rng(9)
    states = rng.standard_normal((2, 4, HIDDEN), dtype=np.float32)
    mask = np.ones((2, 4), dtype=np.int64)
    ids = np.array([[2, 7, 11], [2, 9, 13]])
    decoder, beams = _decoder(exported, "mbart"), 3
    full = decoder.start(states, mask, beams)
    want = [full.step(np.repeat(ids[:, :2], beams, axis=0)), full.step(np.repeat(ids[:, 2:], beams, axis=0))]
    shared = decoder.start(states, mask, beams)
    shared.reorder(np.arange(2) * beams)
    first = shared.step(ids[:, :2])
    shared.reorder(np.repeat(np.arange(2), beams))
    got = [np.repeat(first, beams, axis=0), shared.step(np.repeat(ids[:, 2:], beams, axis=0))]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-6)


def test_zero_tolerance_fails_naming_the_graph(models, tmp_path):
    blip, mbart = models
    with pytest.raises(GraphValidationError) as caught:
        export_models(blip, mbart, tmp_path, ExportOptions(progress=False, ort_threads=1, atol=0.0, rtol=0.0))
    error = caught.value
    assert error.graph in GRAPH_NAMES and repr(error.graph) in str(error)
    assert error.max_abs_diff > 0 and f"{error.max_abs_diff:.3e}" in str(error)


def test_corrupted_weights_fail_validation(exported, models, tmp_path):
    from onnx import numpy_helper

    _, mbart = models
    model = onnx.load(str(exported["mbart_encoder"]))
    weight = next(i for i in model.graph.initializer if i.name == "encoder.embed_positions.weight")
    noise = np.random.default_rng(0).normal(0.0, 0.05, size=tuple(weight.dims)).astype(np.float32)
    values = numpy_helper.to_array(weight) + noise  # not a constant shift: LayerNorm would cancel that
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    broken = tmp_path / "mbart_encoder.onnx"
    onnx.save(model, str(broken))
    job = encoder_job(mbart, seed=3)
    with pytest.raises(GraphValidationError, match="mbart_encoder") as caught:
        validate_graph(encoder_spec(), broken, job.cases, intra_op_threads=1)
    assert caught.value.output_name == "last_hidden_state"
    assert caught.value.max_abs_diff > caught.value.atol


def test_wrong_checkpoint_class_is_rejected(checkpoints, tmp_path):
    blip_dir, mbart_dir = checkpoints
    with pytest.raises(UnsupportedCheckpointError, match="BlipForConditionalGeneration"):
        export_graphs(mbart_dir, mbart_dir, tmp_path, OPTIONS)
    with pytest.raises(UnsupportedCheckpointError, match="MBartForConditionalGeneration"):
        load_translator(blip_dir)
    question_answering = tmp_path / "blip_vqa"
    transformers.BlipForQuestionAnswering(tiny_blip().config).save_pretrained(question_answering)
    with pytest.raises(UnsupportedCheckpointError, match="BlipForQuestionAnswering"):
        export_graphs(question_answering, mbart_dir, tmp_path, OPTIONS)
    assert not list(tmp_path.glob("*.onnx"))


def test_external_data_is_one_file_beside_the_graph(models, tmp_path):
    _, mbart = models
    options = ExportOptions(progress=False, ort_threads=1, external_data=True)
    result = run_jobs(mbart_jobs(mbart), tmp_path, options)  # validation loads the weights back through ORT
    for name, path in result.paths.items():
        data = path.with_name(f"{name}.onnx.data")
        assert data.is_file() and data.stat().st_size > path.stat().st_size
        assert result.validation[name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}.onnx{suffix}" for n in result.paths for suffix in ("", ".data")
    )
    moved = tmp_path / "moved"
    moved.mkdir()
    for suffix in ("", ".data"):
        shutil.copy(tmp_path / f"mbart_encoder.onnx{suffix}", moved)
    OrtRunner(moved / "mbart_encoder.onnx")  # the weights are found relative to the graph


def test_graph_runners_import_without_torch():
    code = (
        "import sys, captioning.runtime.graphs; "
        "assert not {'torch', 'onnxruntime', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent)


def _fp32_weight_products(path: Path) -> list[str]:
    """MatMul/Gemm nodes that still multiply by a weight in fp32 (directly, or through Identity/Transpose)."""
    graph = onnx.load(str(path)).graph
    weights = {i.name for i in graph.initializer}
    for node in graph.node:  # topologically sorted: a chain of Identity/Transpose resolves in one pass
        if node.op_type in ("Identity", "Transpose") and node.input[0] in weights:
            weights.add(node.output[0])
    return [
        n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and any(i in weights for i in n.input)
    ]


@pytest.mark.parametrize("trimmed", [False, True], ids=["full", "trimmed-vocab"])
def test_int8_quantises_every_weight_product_including_output_layers(models, trimmed, tmp_path):
    """The trimmed decoder's output layer reaches its product through an Identity (torch shares the equal
    embedding and head rows); it was once left in fp32, a quarter of the int8 translator's time."""
    import copy

    from captioning.decoding.vocab import VocabMap
    from captioning.export.quantize import quantize_graphs
    from captioning.export.vocab_trim import trim_decoder_vocab

    mbart = copy.deepcopy(models[1])
    if trimmed:
        trim_decoder_vocab(mbart, VocabMap.of([*range(0, 200, 3), 1, 2], full_size=200))
    jobs = mbart_jobs(mbart)
    exported = run_jobs(jobs, tmp_path / "fp32", OPTIONS).paths
    assert _fp32_weight_products(exported["mbart_decoder"])  # the check sees fp32 products
    quantised = quantize_graphs(dict(exported), tmp_path / "int8", progress=False)
    for name, path in quantised.items():
        assert _fp32_weight_products(path) == [], name
        # 7-bit weights: AVX2's u8 x s8 kernel (VPMADDUBSW) adds pairs in int16 and saturates on 8-bit ones
        weights = [
            onnx.numpy_helper.to_array(i)
            for i in onnx.load(str(path)).graph.initializer
            if i.data_type == onnx.TensorProto.INT8 and i.name.endswith("_quantized")
        ]
        assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64, name
    step = OrtRunner(quantised["mbart_decoder"], intra_op_threads=1)
    exact = OrtRunner(exported["mbart_decoder"], intra_op_threads=1)
    feeds = next(job for job in jobs if job.spec.name == "mbart_decoder").cases[0].feeds
    got, want = step.run(feeds)["logits"], exact.run(feeds)["logits"]
    assert got.shape == want.shape
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9  # int8 is close, not exact
