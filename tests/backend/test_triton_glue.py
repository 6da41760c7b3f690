"""The Triton glue and the adapters against a fake `triton_python_backend_utils` (no server, no stub)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from captioning import contract
from captioning.decoding import Overrides
from captioning.runtime.stages import CaptionStage, TranslationStage
from captioning.runtime.tokenization import TextCodec

import fake_pb_utils
from fake_pb_utils import FakeRequest
from fakes import SETTINGS, FakeDecoder, FakeEncoder, FakeTokenizer

MODELS = Path(__file__).resolve().parents[2] / "model_repository"


@pytest.fixture
def pb(monkeypatch):
    return fake_pb_utils.install(monkeypatch)


@pytest.fixture
def glue(pb):
    import captioning.backend.triton_utils as glue

    return glue


def _adapter(name: str):
    spec = importlib.util.spec_from_file_location(f"adapter_{name}", MODELS / name / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TritonPythonModel.__new__(module.TritonPythonModel)  # initialize() needs a real repository


def _strings(*values: bytes) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.object_)


def test_string_rows_checks_shape_and_presence(glue):
    assert glue.string_rows(FakeRequest({"text": _strings(b"a", b"b")}), "text") == [b"a", b"b"]
    with pytest.raises(ValueError, match="missing input tensor 'text'"):
        glue.string_rows(FakeRequest({}), "text")
    with pytest.raises(ValueError, match=r"shape \[batch, 1\], got \[2\]"):
        glue.string_rows(FakeRequest({"text": np.array([b"a", b"b"], dtype=np.object_)}), "text")


def test_error_kinds(glue, pb):
    assert glue.error_response(ValueError("bad")).error().code() == pb.TritonError.INVALID_ARG
    internal = glue.error_response(KeyError("x")).error()
    assert internal.code() == pb.TritonError.INTERNAL and "KeyError" in internal.message()


def test_run_rows_batches_valid_requests_and_fails_bad_ones_alone(glue, pb):
    calls = []

    def parse(request):
        rows = glue.string_rows(request, "text")
        if rows == [b"bad"]:
            raise ValueError("this one is bad")
        return rows, "opts"

    def run(rows, options, cancelled):
        calls.append((list(rows), list(options)))
        return [r.decode().upper() for r in rows]

    requests = [
        FakeRequest({"text": _strings(b"a", b"b")}),
        FakeRequest({"text": _strings(b"bad")}),
        FakeRequest({"text": _strings(b"c")}),
    ]
    responses = glue.run_rows(requests, parse, run, lambda rows: [glue.string_tensor("out", rows)])
    assert calls == [([b"a", b"b", b"c"], ["opts"] * 3)]  # one batch for every valid row
    assert responses[1].error().code() == pb.TritonError.INVALID_ARG
    assert responses[1].error().message() == "this one is bad"
    assert responses[0].output_tensors()[0].as_numpy().tolist() == [[b"A"], [b"B"]]
    assert responses[2].output_tensors()[0].as_numpy().tolist() == [[b"C"]]


def test_run_rows_survives_a_bug_in_the_stage(glue, pb):
    def run(rows, options, cancelled):
        raise ZeroDivisionError("oops")

    requests = [FakeRequest({"text": _strings(b"a")}), FakeRequest({"text": _strings(b"b")})]
    responses = glue.run_rows(requests, lambda r: (glue.string_rows(r, "text"), None), run, lambda rows: [])
    assert [r.error().code() for r in responses] == [pb.TritonError.INTERNAL] * 2
    assert "ZeroDivisionError: oops" in responses[0].error().message()


def test_a_failed_row_fails_its_request_only(glue, pb):
    responses = glue.respond_per_row(
        [2, 1], ["x", ValueError("row 2 bad"), "z"], lambda rows: [glue.string_tensor("o", rows)]
    )
    assert responses[0].error().message() == "row 2 bad"
    assert not responses[1].has_error()


def test_model_context_reads_arguments(pb, tmp_path):
    from captioning.backend.runners import ModelContext

    config = {
        "max_batch_size": 4,
        "parameters": {
            contract.PARAM_INTRA_OP_THREADS: {"string_value": "2"},
            contract.PARAM_DECODER_RUNNER: {"string_value": "grpc"},
        },
    }
    args = {
        "model_config": json.dumps(config),
        "model_repository": str(tmp_path / "translator"),
        "model_version": "1",
    }
    model = ModelContext.setup(args)
    assert model.directory == tmp_path / "translator" / "1"
    assert model.repository == tmp_path
    assert (model.threads, model.max_batch_size) == (2, 4)
    with pytest.raises(ValueError, match="unknown decoder_runner 'grpc'; expected one of inprocess, bls"):
        model.graph_runner({"model": "mbart_encoder"})


def test_bls_runner_calls_the_model_and_names_it_on_error(pb):
    from captioning.backend.runners import BlsRunner

    def answer(request):
        x = request.inputs[0].as_numpy()
        return pb.InferenceResponse([pb.Tensor("y", x * 2)])

    pb.InferenceRequest.handlers = {
        "double": answer,
        "broken": lambda r: pb.InferenceResponse([], pb.TritonError("boom")),
    }
    meta = {"input_names": ["x"], "output_names": ["y"]}
    assert BlsRunner("double", meta).run({"x": np.ones(3)})["y"].tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(RuntimeError, match="broken: boom"):
        BlsRunner("broken", meta).run({"x": np.ones(3)})


def test_caption_adapter_answers_each_request(pb):
    adapter = _adapter("caption_generator")
    adapter.stage = CaptionStage(decoder=FakeDecoder(), settings=SETTINGS, codec=TextCodec(FakeTokenizer()))
    embeds = [np.full((2, 3, 4), i, dtype=np.float32) for i in range(2)]
    requests = [
        FakeRequest({contract.IMAGE_EMBEDS: embeds[0]}),
        FakeRequest({contract.IMAGE_EMBEDS: np.zeros((3, 4), dtype=np.float32)}),  # no batch axis
        FakeRequest({contract.IMAGE_EMBEDS: embeds[1]}, {"caption_num_beams": 99}),
        FakeRequest({contract.IMAGE_EMBEDS: embeds[1]}, {"caption_num_beams": 2}),
    ]
    responses = adapter.execute(requests)
    assert len(responses) == 4
    assert "image_embeds must have shape [batch, tokens, hidden]" in responses[1].error().message()
    assert responses[2].error().message() == "caption_num_beams must be in 1..8, got 99"
    assert {r.error().code() for r in responses[1:3]} == {pb.TritonError.INVALID_ARG}
    expected = adapter.stage.run(list(embeds[0]), [Overrides()] * 2)
    got = [
        row[0].decode() for row in pb.get_output_tensor_by_name(responses[0], contract.CAPTION_EN).as_numpy()
    ]
    assert got == expected
    assert not responses[3].has_error()


def test_translator_adapter_holds_only_user_text_to_the_user_limit(pb):
    adapter = _adapter("translator")
    adapter.caption_limit = 64
    adapter.stage = TranslationStage(
        encoder=FakeEncoder(),
        decoder=FakeDecoder(),
        settings=SETTINGS,
        codec=TextCodec(FakeTokenizer(), max_source_tokens=6),
    )
    long = b"a caption longer than six tokens"
    both = FakeRequest({contract.TEXT_INPUT: _strings(b"a"), contract.CAPTION_INPUT: _strings(b"b")})
    responses = adapter.execute(
        [
            FakeRequest({contract.CAPTION_INPUT: _strings(long)}),  # what arabic_caption sends
            FakeRequest({contract.TEXT_INPUT: _strings(long)}),  # the same words as user text
            both,
            FakeRequest({}),
            FakeRequest({contract.TEXT_INPUT: _strings(b"   ")}),
        ]
    )
    assert not responses[0].has_error()
    assert "the limit is 6" in responses[1].error().message()
    assert "send exactly one of the inputs 'text' and 'caption_en'" in responses[2].error().message()
    assert "send exactly one" in responses[3].error().message()
    assert responses[4].error().message() == "text is empty"
    assert {r.error().code() for r in responses[1:]} == {pb.TritonError.INVALID_ARG}


def test_a_huge_text_is_refused_without_tokenising_it():
    class Counting(FakeTokenizer):
        calls = 0

        def __call__(self, text):
            Counting.calls += 1
            return super().__call__(text)

    from captioning.runtime.tokenization import TextTooLongError

    codec = TextCodec(Counting(), max_source_tokens=256)
    with pytest.raises(TextTooLongError, match="1000000 characters long; the limit is 256 tokens"):
        codec.encode("x" * 1_000_000)
    assert Counting.calls == 0


def test_translator_adapter_refuses_bad_text_by_name(pb):
    adapter = _adapter("translator")
    adapter.stage = TranslationStage(
        encoder=FakeEncoder(),
        decoder=FakeDecoder(),
        settings=SETTINGS,
        codec=TextCodec(FakeTokenizer(), max_source_tokens=6),
    )
    requests = [
        FakeRequest({contract.TEXT_INPUT: _strings(b"a dog")}),
        FakeRequest({contract.TEXT_INPUT: _strings(b"\xff\xfe")}),
        FakeRequest({contract.TEXT_INPUT: _strings(b"a very long text")}),
    ]
    responses = adapter.execute(requests)
    assert not responses[0].has_error()
    assert "text is not valid UTF-8" in responses[1].error().message()
    assert "the limit is 6" in responses[2].error().message()
    assert responses[2].error().code() == pb.TritonError.INVALID_ARG


def test_inflight_adapter_reschedules_until_answered_and_refuses_bad_requests_alone(pb):
    from captioning.backend.iterative import IterativeExecutor
    from captioning.runtime.inflight import InflightEngine, Limits

    adapter = _adapter("caption_generator")
    adapter.stage = CaptionStage(decoder=FakeDecoder(), settings=SETTINGS, codec=TextCodec(FakeTokenizer()))
    engine = InflightEngine(adapter.stage.steps, Limits(max_rows=2, max_queue=1))
    adapter.iterative = IterativeExecutor(
        engine, lambda r: adapter.stage.prepared(*adapter._parse(r)), adapter._outputs
    )
    embeds = [np.full((1, 3, 4), i, dtype=np.float32) for i in range(4)]
    first = FakeRequest({contract.IMAGE_EMBEDS: embeds[0]}, correlation_id=1)
    bad = FakeRequest({contract.IMAGE_EMBEDS: embeds[1]}, {"caption_num_beams": 99}, correlation_id=2)
    responses = adapter.execute([first, bad])
    assert responses[0] is None and first.release_flags == pb.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE
    assert responses[1].error().code() == pb.TritonError.INVALID_ARG and bad.release_flags == 0
    client_sequence = FakeRequest({contract.IMAGE_EMBEDS: embeds[1]}, correlation_id=9)
    client_sequence.sequence_flags = 3  # START | END: a sequence the client manages itself
    (refused,) = adapter.execute([client_sequence])
    assert "send requests without sequence_id" in refused.error().message()
    # Later arrivals join while `first` decodes; past the queue bound a request is UNAVAILABLE at once.
    second = FakeRequest({contract.IMAGE_EMBEDS: embeds[2]}, correlation_id=3)
    waiting = FakeRequest({contract.IMAGE_EMBEDS: np.concatenate(embeds[:2])}, correlation_id=4)
    refused = FakeRequest({contract.IMAGE_EMBEDS: embeds[3]}, correlation_id=5)
    responses = adapter.execute([first, second, waiting, refused])
    assert responses[3].error().code() == pb.TritonError.UNAVAILABLE
    live, answers = [first, second, waiting], {}
    for _ in range(20):
        for request, response in zip(live, adapter.execute(live), strict=True):
            if response is not None:
                answers[request.correlation_id()] = response
        live = [r for r in live if r.correlation_id() not in answers]
        if not live:
            break
    for key, embed in ((1, embeds[0]), (3, embeds[2]), (4, np.concatenate(embeds[:2]))):
        got = [
            row[0].decode()
            for row in pb.get_output_tensor_by_name(answers[key], contract.CAPTION_EN).as_numpy()
        ]
        assert got == adapter.stage.run(list(embed), [Overrides()] * len(embed))


def test_inflight_adapter_passes_each_request_its_own_timeout(pb):
    from captioning.backend.iterative import IterativeExecutor
    from captioning.runtime.inflight import InflightEngine, Limits

    adapter = _adapter("caption_generator")
    adapter.stage = CaptionStage(decoder=FakeDecoder(), settings=SETTINGS, codec=TextCodec(FakeTokenizer()))
    engine = InflightEngine(adapter.stage.steps, Limits(max_rows=2))
    engine.forecast.observe_step(1.0, cohorts=1)  # recent steps took 1 s: a caption of 5 steps takes 5 s
    adapter.iterative = IterativeExecutor(
        engine, lambda r: adapter.stage.prepared(*adapter._parse(r)), adapter._outputs
    )
    embeds = np.full((1, 3, 4), 1, dtype=np.float32)
    hurried, patient = (FakeRequest({contract.IMAGE_EMBEDS: embeds}, correlation_id=i) for i in (1, 2))
    hurried.timeout_us = 1_000_000  # 1 s: cannot decode in time
    responses = adapter.execute([hurried, patient])
    assert responses[0].error().code() == pb.TritonError.UNAVAILABLE
    assert "its timeout of 1 s" in responses[0].error().message()
    assert responses[1] is None and patient.release_flags == pb.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE
