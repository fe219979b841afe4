import json

import numpy as np
import pytest

from emoserve.errors import EmoserveError, InvalidParameterError
from emoserve.inference.results import ClipOutput, check_granularity, frame_timestamps, make_result

LABELS = ("a", "b", "c")


def output(frames=True):
    return ClipOutput(
        num_samples=16000, embedding=np.ones(4, np.float32), probs=np.array([0.2, 0.5, 0.3], np.float32),
        frame_features=np.zeros((49, 4), np.float32) if frames else None,
        frame_probs=np.full((49, 3), 1 / 3, np.float32) if frames else None)


def test_utterance_json_matches_the_api_contract():
    body = make_result(output(False), LABELS, "m", "utterance", False).to_dict()
    assert body["emotion"] == "b" and body["confidence"] == pytest.approx(0.5)
    assert body["scores"] == pytest.approx({"a": 0.2, "b": 0.5, "c": 0.3})
    assert body["duration_s"] == 1.0 and body["model"] == "m"
    json.dumps(body)  # plain JSON types only


def test_frame_json_matches_the_api_contract():
    body = make_result(output(), LABELS, "m", "frame", True).to_dict()
    assert len(body["scores"]) == 49 and len(body["scores"][0]) == 3
    assert body["timestamps"][:3] == pytest.approx([0.0, 0.02, 0.04])
    assert body["labels"] == list(LABELS) and body["emotion"] == "b"
    assert "embedding" not in body
    json.dumps(body)


def test_embedding_only_when_asked():
    assert make_result(output(), LABELS, "m", "frame", False).embedding is None
    assert make_result(output(), LABELS, "m", "frame", True).embedding.shape == (49, 4)
    assert make_result(output(False), LABELS, "m", "utterance", True).embedding.shape == (4,)


def test_timestamps_are_exact_multiples_of_20ms():
    ts = frame_timestamps(1500)
    assert ts[0] == 0.0 and ts[-1] == pytest.approx(29.98) and np.allclose(np.diff(ts), 0.02)


def test_unknown_granularity_is_a_typed_error():
    with pytest.raises(InvalidParameterError) as info:
        check_granularity("segment")
    assert info.value.code == "invalid_parameter"


def test_nan_from_the_model_is_an_internal_error_not_a_result():
    out = output()
    out.probs = np.array([np.nan, 0.5, 0.5], np.float32)
    with pytest.raises(EmoserveError) as info:
        make_result(out, LABELS, "m", "utterance", False)
    assert info.value.code == "internal_error"
    out = output()
    out.frame_features[3, 1] = np.inf
    with pytest.raises(EmoserveError):
        make_result(out, LABELS, "m", "frame", True)
