"""Per-request options: parsed from Triton's JSON parameters, validated with messages that name the field."""

from __future__ import annotations

import json

import pytest

from captioning.contract import MAX_BEAMS
from captioning.decoding import Overrides
from captioning.runtime.options import InvalidRequestError, stage_options


def test_defaults_when_absent():
    assert stage_options(None, "caption", 63) == Overrides()
    assert stage_options("", "translation", 63) == Overrides()
    assert stage_options("{}", "caption", 63) == Overrides()


def test_reads_only_its_stage():
    raw = json.dumps({"caption_num_beams": 3, "translation_num_beams": 5, "translation_max_new_tokens": 10})
    assert stage_options(raw, "caption", 63) == Overrides(num_beams=3)
    assert stage_options(raw, "translation", 63) == Overrides(num_beams=5, max_new_tokens=10)


def test_accepts_integer_strings():
    assert stage_options({"caption_num_beams": "4"}, "caption", 63).num_beams == 4


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"caption_num_beams": 0}, "caption_num_beams must be in 1..8, got 0"),
        ({"caption_num_beams": MAX_BEAMS + 1}, "caption_num_beams must be in 1..8"),
        ({"caption_max_new_tokens": 64}, "caption_max_new_tokens must be in 1..63, got 64"),
        ({"caption_max_new_tokens": -1}, "caption_max_new_tokens must be in 1..63"),
        ({"caption_num_beams": 2.5}, "caption_num_beams must be an integer"),
        ({"caption_num_beams": True}, "caption_num_beams must be an integer"),
        ({"caption_num_beams": "three"}, "caption_num_beams must be an integer"),
    ],
)
def test_out_of_range_is_named(params, message):
    with pytest.raises(InvalidRequestError, match=message):
        stage_options(params, "caption", 63)


def test_malformed_json():
    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        stage_options("{oops", "caption", 63)
    with pytest.raises(InvalidRequestError, match="JSON object"):
        stage_options("[1, 2]", "caption", 63)
