"""The wire contract (`emoserve.wire`): results become its bodies, the client turns them back into the library's
types, and its models carry every field the library's types have."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from emoserve import wire
from emoserve.client.parse import longform_from_wire, models_from_json, result_from_json
from emoserve.errors import EmoserveError
from emoserve.inference.emotion_model import ModelInfo
from emoserve.inference.results import LongformResult, Overall, Segment
from emoserve.timeline.streaming import Voiced, end_message, error_message, frames_message, utterance_message

from .samples import noise, sweep


def test_the_wire_model_description_has_every_field_of_model_info():
    assert [f.name for f in dataclasses.fields(ModelInfo)] == list(wire.ModelDescription.model_fields)


def test_model_info_goes_over_the_wire_whole(tiny_model):
    info = dataclasses.replace(tiny_model.info, quantization="int8-dynamic")
    body = wire.ModelsList(models=[wire.ModelDescription.model_validate(info, from_attributes=True)])
    assert models_from_json(body.to_json()) == [info]


@pytest.mark.parametrize("granularity", ["utterance", "frame"])
def test_a_result_survives_the_wire(tiny_model, granularity):
    result = tiny_model.analyze(sweep(1.0), granularity=granularity)
    body = result.to_wire()
    assert isinstance(body, wire.UtteranceResult if granularity == "utterance" else wire.FrameResult)
    parsed = result_from_json(body.to_json())
    assert (parsed.emotion, parsed.confidence, parsed.labels, parsed.granularity, parsed.model, parsed.duration_s) \
        == (result.emotion, result.confidence, result.labels, result.granularity, result.model, result.duration_s)
    assert parsed.utterance_scores == result.utterance_scores
    if granularity == "frame":
        np.testing.assert_allclose(parsed.scores, result.scores, atol=1e-7)
        np.testing.assert_allclose(parsed.timestamps, result.timestamps)


def test_absent_optional_fields_are_left_out_and_nulls_are_kept():
    body = wire.UtteranceResult.model_construct(emotion=None, confidence=None, scores={}, duration_s=1.0, model="m",
                                                granularity="utterance").to_dict()
    assert body == {"emotion": None, "confidence": None, "scores": {}, "duration_s": 1.0, "model": "m",
                    "granularity": "utterance"}
    assert wire.Health(status="loading", model="m", granularity_supported=["utterance"]).to_dict() == \
        {"status": "loading", "model": "m", "granularity_supported": ["utterance"]}


@pytest.mark.parametrize("granularity", ["utterance", "frame"])
def test_a_long_result_survives_the_wire(granularity):
    labels = ("a", "b")
    segments = [Segment(0.5, 1.5, "b", 0.75, {"a": 0.25, "b": 0.75})]
    frames = np.full((100, 2), 0.5, np.float32) if granularity == "frame" else None
    timestamps = np.arange(100) / 50 if granularity == "frame" else None
    result = LongformResult(segments, Overall("b", 0.75, {"a": 0.25, "b": 0.75}, 1.0), labels, 2.0, "m", granularity,
                            frames, timestamps)
    body = json.loads(result.to_wire().to_json())
    assert ("scores" in body) == ("timestamps" in body) == (granularity == "frame")
    assert body == result.to_dict()
    parsed = longform_from_wire(wire.LongformResult.model_validate(body))
    assert parsed.segments == segments and parsed.overall == result.overall and parsed.labels == labels
    if granularity == "frame":
        np.testing.assert_array_equal(parsed.frame_scores, frames)


def test_stream_messages_are_wire_messages(tiny_model):
    result = tiny_model.analyze(noise(16_000))
    voiced = Voiced(start=16_000, samples=noise(8_000))
    messages = [frames_message(50, np.zeros((3, 9), np.float32)), utterance_message(voiced, result),
                error_message(EmoserveError("full", code="overloaded", details={"retry_after": 0.5})), end_message()]
    parsed = [wire.STREAM_MESSAGE.validate_python(m) for m in messages]
    assert [type(m) for m in parsed] == [wire.FramesMessage, wire.UtteranceMessage, wire.StreamError, wire.StreamEnd]
    assert messages[0] == {"type": "frames", "start": 1.0, "scores": [[0.0] * 9] * 3}
    assert messages[1]["start"] == 1.0 and messages[1]["end"] == 1.5 and messages[1]["scores"] == result.scores
    assert messages[2] == {"type": "error", "code": "overloaded", "message": "full", "retry_after": 0.5}
    assert messages[3] == {"type": "end"}
