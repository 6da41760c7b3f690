"""The door's Triton glue against the fake `triton_python_backend_utils`: a ticket is opened where a request
enters, carried to the stages, closed where it is answered or fails; an admitted request is never shed by a
stage's own forecast and stops when its stop time passes."""

from __future__ import annotations

import importlib.util
import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioning import contract
from captioning.runtime import door
from captioning.runtime.preprocess import PreprocessConfig
from captioning.runtime.stages import CaptionStage
from captioning.runtime.tokenization import TextCodec

import fake_pb_utils
from fake_pb_utils import FakeRequest
from fakes import SETTINGS, FakeDecoder, FakeTokenizer

MODELS = Path(__file__).resolve().parents[2] / "model_repository"
LIMITS = door.DoorLimits(budget_s=10.0, warmup=2, cap=100)
_SCOPES = itertools.count(1)


@pytest.fixture
def pb(monkeypatch):
    return fake_pb_utils.install(monkeypatch)


@pytest.fixture
def scope(tmp_path, monkeypatch):
    """A ledger of this test's own (the real one is keyed by the server's pid)."""
    import captioning.runtime.ledger as ledger

    monkeypatch.setattr(ledger, "LEDGER_DIR", tmp_path)
    return next(_SCOPES)


def _adapter(name: str):
    spec = importlib.util.spec_from_file_location(f"door_adapter_{name}", MODELS / name / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TritonPythonModel.__new__(module.TritonPythonModel)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _image_request(data: bytes) -> FakeRequest:
    return FakeRequest({contract.IMAGE_INPUT: np.array([[data]], dtype=np.object_)})


def _preprocess(scope, limits=LIMITS):
    from captioning.backend.tickets import TicketDesk

    adapter = _adapter("image_preprocess")
    adapter.config = PreprocessConfig(height=8, width=8)
    adapter.desk = TicketDesk(limits, scope=scope)
    return adapter


def _open(scope) -> dict:
    from captioning.runtime.ledger import Ledger, ledger_path

    with Ledger(ledger_path(scope)).state() as state:
        return dict(state.open)


def test_the_first_step_admits_a_batch_then_refuses_unavailable_in_the_sdk_words(pb, scope):
    adapter = _preprocess(scope)
    responses = adapter.execute([_image_request(_jpeg()) for _ in range(3)])
    assert not responses[0].has_error(), responses[0].error().message()
    tickets = [pb.get_output_tensor_by_name(r, contract.TICKET) for r in responses[:2]]
    assert [t.as_numpy().shape for t in tickets] == [(1, 2), (1, 2)]
    assert tickets[0].as_numpy()[0, 0] != tickets[1].as_numpy()[0, 0]
    refusal = responses[2].error()
    assert refusal.code() == pb.TritonError.UNAVAILABLE
    assert refusal.message().startswith("Exceeds the request's timeout")
    assert len(_open(scope)) == 2


def test_a_bad_image_gives_its_ticket_back(pb, scope):
    adapter = _preprocess(scope)
    (response,) = adapter.execute([_image_request(b"not an image")])
    assert response.error().code() == pb.TritonError.INVALID_ARG
    assert _open(scope) == {}


def test_without_a_budget_the_door_admits_everything_and_emits_no_ticket(pb, scope):
    adapter = _preprocess(scope, limits=None)
    responses = adapter.execute([_image_request(_jpeg()) for _ in range(5)])
    assert all(not r.has_error() for r in responses)
    assert {int(pb.get_output_tensor_by_name(r, contract.TICKET).as_numpy()[0, 0]) for r in responses} == {-1}


def _caption_adapter(scope):
    from captioning.backend.tickets import TicketDesk

    adapter = _adapter("caption_generator")
    adapter.stage = CaptionStage(decoder=FakeDecoder(), settings=SETTINGS, codec=TextCodec(FakeTokenizer()))
    adapter.desk = TicketDesk(scope=scope)
    return adapter


def _ticketed(name: str, ticket: np.ndarray, **kwargs) -> FakeRequest:
    embeds = np.full((1, 3, 4), 1, dtype=np.float32)
    return FakeRequest({contract.IMAGE_EMBEDS: embeds, name: ticket}, **kwargs)


def test_the_answering_stage_closes_the_ticket_and_a_middle_stage_does_not(pb, scope):
    adapter = _preprocess(scope)
    (first, second) = adapter.execute([_image_request(_jpeg()), _image_request(_jpeg())])
    tickets = [pb.get_output_tensor_by_name(r, contract.TICKET).as_numpy() for r in (first, second)]
    caption = _caption_adapter(scope)
    responses = caption.execute(
        [_ticketed(contract.TICKET, tickets[0]), _ticketed(contract.LAST_TICKET, tickets[1])]
    )
    assert not any(r.has_error() for r in responses)
    assert list(_open(scope)) == [str(tickets[0][0, 0])]  # arabic_caption's translator closes the first


def test_an_admitted_request_is_not_shed_by_the_stage_forecast_but_stops_when_its_client_has_gone(
    pb, scope, monkeypatch
):
    import captioning.runtime.inflight as inflight
    from captioning.backend.iterative import IterativeExecutor
    from captioning.runtime.inflight import InflightEngine, Limits

    monkeypatch.setattr(inflight, "CANCEL_CHECK_S", 0.0)  # look at every step

    caption = _caption_adapter(scope)
    engine = InflightEngine(caption.stage.steps, Limits(max_rows=2, max_queue=0))
    engine.forecast.observe_step(1.0, cohorts=1)  # 5 s a caption: a 1 s timeout would be refused here
    caption.iterative = IterativeExecutor(
        engine, lambda r: caption.stage.prepared(*caption._parse(r)), caption._outputs, caption.desk
    )
    far = np.array([[7, 4_000_000_000_000]], dtype=np.int64)  # stop time in 2096
    admitted = _ticketed(contract.LAST_TICKET, far, correlation_id=1)
    admitted.timeout_us = 1_000_000
    plain = _ticketed(contract.LAST_TICKET, np.array([[-1, 0]]), correlation_id=2)  # the door was off
    plain.timeout_us = 1_000_000
    responses = caption.execute([admitted, plain])
    assert responses[0] is None  # decoding
    assert responses[1].error().code() == pb.TritonError.UNAVAILABLE  # its own stage's forecast
    gone = _ticketed(contract.LAST_TICKET, np.array([[8, 1000]], dtype=np.int64), correlation_id=3)  # 1970
    answers = {}
    live = [admitted, gone]
    for _ in range(20):
        for request, response in zip(live, caption.execute(live), strict=True):
            if response is not None:
                answers[request.correlation_id()] = response
        live = [r for r in live if r.correlation_id() not in answers]
        if not live:
            break
    assert not answers[1].has_error()
    assert "cancelled" in answers[3].error().message()


def test_the_translator_is_the_door_for_text(pb, scope):
    from captioning.backend.tickets import TicketDesk, door_limits

    limits = door_limits(
        {
            contract.PARAM_LATENCY_BUDGET_S: "10",
            contract.PARAM_ADMISSION_WARMUP: "1",
            contract.PARAM_ADMISSION_CAP: "8",
        }
    )
    assert limits == door.DoorLimits(10.0, 1, 8) and door_limits({}) is None
    adapter = _adapter("translator")
    adapter.desk = TicketDesk(limits, scope=scope)
    assert (
        adapter._entering(FakeRequest({contract.TEXT_INPUT: np.array([[b"a"], [b"b"]], dtype=object)})) == 2
    )
    caption = FakeRequest({contract.CAPTION_INPUT: np.array([[b"a"]], dtype=object)})
    assert adapter._entering(caption) == 0
