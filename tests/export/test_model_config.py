"""Model configs come from typed specs and go through Triton's protobuf schema."""

from __future__ import annotations

import dataclasses

import pytest
from tritonclient.grpc import model_config_pb2

from captioning.export.model_config import (
    BatchingSpec,
    EnsembleStep,
    ModelConfigError,
    ModelSpec,
    TensorSpec,
    read_config,
)
from captioning.export.repository import RepositoryOptions, model_specs


def _meta(inputs, outputs):
    names = inputs + outputs
    return {
        "input_names": inputs,
        "output_names": outputs,
        "dtypes": {n: "INT64" if "ids" in n or "mask" in n else "FP32" for n in names},
        "shapes": {n: ["batch", "seq"] for n in names},
    }


GRAPH_META = {
    "blip_vision": {
        "input_names": ["pixel_values"],
        "output_names": ["image_embeds"],
        "dtypes": {"pixel_values": "FP32", "image_embeds": "FP32"},
        "shapes": {"pixel_values": ["batch", 3, 96, 96], "image_embeds": ["batch", 37, 64]},
    },
    "blip_cross_kv": _meta(["encoder_hidden_states"], ["cross.0.key", "cross.0.value"]),
    "blip_text_decoder": _meta(["input_ids", "encoder_attention_mask", "cross.0.key"], ["logits"]),
    "mbart_encoder": _meta(["input_ids", "attention_mask"], ["last_hidden_state"]),
    "mbart_cross_kv": _meta(["encoder_hidden_states"], ["cross.0.key", "cross.0.value"]),
    "mbart_decoder": _meta(["input_ids", "encoder_attention_mask", "cross.0.key"], ["logits"]),
}


def test_repository_specs_round_trip(tmp_path):
    specs = model_specs(GRAPH_META, (96, 96), RepositoryOptions())
    names = {spec.name for spec in specs}
    assert {
        "arabic_caption",
        "english_caption",
        "translator",
        "image_preprocess",
        "caption_generator",
    } <= names
    for spec in specs:
        config = read_config(spec.write(tmp_path))
        assert config.name == spec.name
    arabic = read_config(tmp_path / "arabic_caption" / "config.pbtxt")
    assert arabic.platform == "ensemble" and arabic.max_batch_size == 16
    assert [i.name for i in arabic.input] == ["image"]
    assert [o.name for o in arabic.output] == ["caption_en", "caption_ar"]
    assert [s.model_name for s in arabic.ensemble_scheduling.step][-1] == "translator"
    vision = read_config(tmp_path / "blip_vision" / "config.pbtxt")
    assert list(vision.input[0].dims) == [3, 96, 96]
    # on a CPU the vision encoder prefers one request per run (RepositoryOptions.vision_batching)...
    assert list(vision.dynamic_batching.preferred_batch_size) == [1]
    assert vision.dynamic_batching.max_queue_delay_microseconds > 30_000_000  # past the queue timeout
    assert vision.dynamic_batching.default_queue_policy.max_queue_size == 32  # still shedding
    # ...where the other batched models gather requests for 2 ms
    preprocess = read_config(tmp_path / "image_preprocess" / "config.pbtxt")
    assert preprocess.dynamic_batching.max_queue_delay_microseconds == 2000
    assert not preprocess.dynamic_batching.preferred_batch_size


def test_spec_errors_name_the_problem():
    image = TensorSpec("image", "STRING", (1,))
    with pytest.raises(ModelConfigError, match="unknown data type FLOAT"):
        ModelSpec("m", (TensorSpec("x", "FLOAT", (1,)),), (image,)).to_pbtxt()
    with pytest.raises(ModelConfigError, match="dynamic batching needs max_batch_size"):
        ModelSpec("m", (image,), (TensorSpec("y", "FP32", (1,)),), batching=BatchingSpec()).to_pbtxt()
    step = EnsembleStep("other", {"x": "missing"}, {"y": "out"})
    with pytest.raises(ModelConfigError, match="reads \\['missing'\\] before any step produces it"):
        ModelSpec(
            "e", (image,), (TensorSpec("out", "STRING", (1,)),), backend="ensemble", steps=(step,)
        ).to_pbtxt()
    with pytest.raises(ValueError, match="decoder_runner"):
        RepositoryOptions(decoder_runner="magic").validate()


def test_instance_counts_reach_the_configs(tmp_path):
    options = RepositoryOptions(instance_counts=(("translator", 2), ("blip_vision", 3)))
    options.validate()
    for spec in model_specs(GRAPH_META, (96, 96), options):
        spec.write(tmp_path)
    counts = {
        name: read_config(tmp_path / name / "config.pbtxt").instance_group[0].count
        for name in ("translator", "blip_vision", "caption_generator")
    }
    assert counts == {"translator": 2, "blip_vision": 3, "caption_generator": 1}
    assert not read_config(tmp_path / "arabic_caption" / "config.pbtxt").instance_group
    # several instances each prefer an equal share of a full batch, so a burst splits instead of convoying;
    # a CPU's vision encoder prefers one request per run whatever its instances
    preferred = {
        name: list(read_config(tmp_path / name / "config.pbtxt").dynamic_batching.preferred_batch_size)
        for name in ("translator", "caption_generator", "blip_vision")
    }
    assert preferred == {"translator": [8], "caption_generator": [], "blip_vision": [1]}
    with pytest.raises(ValueError, match="unknown model 'arabic_caption'"):
        RepositoryOptions(instance_counts=(("arabic_caption", 2),)).validate()
    with pytest.raises(ValueError, match="1..16"):
        RepositoryOptions(instance_counts=(("translator", 0),)).validate()


def test_generator_only_graphs_are_models_only_with_bls():
    inprocess = {spec.name for spec in model_specs(GRAPH_META, (96, 96), RepositoryOptions())}
    bls = {spec.name for spec in model_specs(GRAPH_META, (96, 96), RepositoryOptions(decoder_runner="bls"))}
    only_bls = {"blip_cross_kv", "blip_text_decoder", "mbart_encoder", "mbart_cross_kv", "mbart_decoder"}
    assert bls - inprocess == only_bls
    assert "blip_vision" in inprocess  # the ensembles call it
    with pytest.raises(ValueError, match="unknown model 'mbart_decoder'"):
        RepositoryOptions(instance_counts=(("mbart_decoder", 2),)).validate()
    RepositoryOptions(decoder_runner="bls", instance_counts=(("mbart_decoder", 2),)).validate()


@pytest.mark.parametrize("runner", ["inprocess", "bls"])
def test_cpu_slots_reach_every_model_that_runs_graphs(tmp_path, runner):
    options = RepositoryOptions(decoder_runner=runner, intra_op_threads=1, cpu_slots="auto")
    options.validate()
    specs = model_specs(GRAPH_META, (96, 96), options)
    for spec in specs:
        spec.write(tmp_path)
    slots = {
        spec.name: read_config(tmp_path / spec.name / "config.pbtxt").parameters["cpu_slots"].string_value
        for spec in specs
        if spec.name in options.instance_models() and spec.name != "image_preprocess"
    }
    assert set(slots) == set(options.instance_models()) - {"image_preprocess"}
    assert set(slots.values()) == {"auto"}
    for bad in ("-1", "many", "2000"):
        with pytest.raises(ValueError, match="cpu_slots"):
            RepositoryOptions(cpu_slots=bad).validate()


def test_every_batched_model_sheds_load_past_its_queue(tmp_path):
    specs = model_specs(GRAPH_META, (96, 96), RepositoryOptions(max_queue_size=7, queue_timeout_s=2.5))
    batched = [s for s in specs if s.batching is not None]
    assert {s.name for s in batched} >= {"image_preprocess", "blip_vision", "caption_generator", "translator"}
    for spec in batched:
        policy = read_config(spec.write(tmp_path)).dynamic_batching.default_queue_policy
        assert policy.max_queue_size == 7 and policy.default_timeout_microseconds == 2_500_000
        assert (
            policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
            and policy.allow_timeout_override
        )


def test_by_default_each_model_queues_two_batches_per_instance(tmp_path):
    options = RepositoryOptions(max_batch_size=4, instance_counts=(("translator", 3),))
    sizes = {
        s.name: read_config(s.write(tmp_path)).dynamic_batching.default_queue_policy.max_queue_size
        for s in model_specs(GRAPH_META, (96, 96), options)
        if s.batching is not None
    }
    assert sizes["translator"] == 24 and sizes["blip_vision"] == sizes["image_preprocess"] == 8


def test_queue_bounds_can_be_switched_off(tmp_path):
    (spec,) = [
        s
        for s in model_specs(GRAPH_META, (96, 96), RepositoryOptions(max_queue_size=0, queue_timeout_s=0))
        if s.name == "translator"
    ]
    assert not read_config(spec.write(tmp_path)).dynamic_batching.HasField("default_queue_policy")


def test_inflight_generators_run_under_iterative_sequences(tmp_path):
    options = RepositoryOptions(inflight=True, max_batch_size=4, max_queue_size=6, queue_timeout_s=1.5)
    specs = {s.name: s for s in model_specs(GRAPH_META, (96, 96), options)}
    for name in ("caption_generator", "translator"):
        config = read_config(specs[name].write(tmp_path))
        assert not config.HasField("dynamic_batching")
        sequence = config.sequence_batching
        assert sequence.iterative_sequence
        # decoding + waiting + one batch it sheds: the model sees every request it may hold and the surplus
        assert config.max_batch_size == sequence.oldest.max_candidate_sequences == 4 + 6 + 4
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert params["inflight"] == "1" and params["inflight_rows"] == "4"
        assert params["max_queue_size"] == "6" and params["queue_timeout_s"] == "1.5"
    # the rest keeps its dynamic batcher and queue policy; the ensembles are unchanged
    assert (
        read_config(specs["blip_vision"].write(tmp_path)).dynamic_batching.default_queue_policy.max_queue_size
        == 6
    )
    assert read_config(specs["arabic_caption"].write(tmp_path)).max_batch_size == 4
    with pytest.raises(ModelConfigError, match="iterative sequences need max_batch_size > 0"):
        dataclasses.replace(specs["translator"], max_batch_size=0).to_proto()


def test_cpu_generators_on_the_torch_runner_serve_the_checkpoints_on_the_cpu(tmp_path):
    from captioning import contract
    from captioning.export.build import BuildOptions

    options = RepositoryOptions(decoder_runner="torch", inflight=True)
    options.validate()
    specs = model_specs(GRAPH_META, (96, 96), options)
    assert "mbart_decoder" not in {spec.name for spec in specs}
    for spec in specs:
        spec.write(tmp_path)
    for name in (contract.CAPTION_MODEL, contract.TRANSLATOR_MODEL):
        params = read_config(tmp_path / name / "config.pbtxt").parameters
        assert params[contract.PARAM_DECODER_RUNNER].string_value == "torch"
        assert (
            params[contract.PARAM_DEVICE].string_value,
            params[contract.PARAM_PRECISION].string_value,
        ) == (
            "cpu",
            "fp32",
        )
        assert params[contract.PARAM_INFLIGHT].string_value == "1"
    with pytest.raises(ValueError, match="--decoder-runner torch serves the checkpoints' modules in fp32"):
        BuildOptions(precision="int8", repository=options).validate_options()
