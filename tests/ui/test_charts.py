"""The UI's pictures: what each one says, that the timeline's audio is the clip, and that nothing user-given runs."""

from __future__ import annotations

import base64
import html
import json
import re

import numpy as np
import pytest

from emoserve.audio import decode_audio
from emoserve.inference.results import EmotionResult, LongformResult, Overall, Segment
from emoserve.labels import LABELS
from emoserve.ui.analysis import Analysis
from emoserve.ui.charts import bin_means, message_html, summary_html, timeline_html

from ..samples import noise

LABELS9 = tuple(LABELS[:9])


def utterance(scores: dict[str, float], seconds: float = 2.0, name: str = "clip") -> Analysis:
    top = max(scores, key=scores.get)
    result = EmotionResult(top, scores[top], scores, LABELS9, seconds, "random:tiny", "utterance", scores)
    return Analysis(name, result, noise(int(seconds * 16000)))


def frames(scores: np.ndarray, seconds: float) -> Analysis:
    mean = scores.mean(axis=0)
    summary = dict(zip(LABELS9, mean.tolist()))
    top = LABELS9[int(mean.argmax())]
    result = EmotionResult(top, float(mean.max()), scores, LABELS9, seconds, "m", "frame", summary,
                           np.arange(len(scores)) * 0.02)
    return Analysis("clip", result, noise(int(seconds * 16000)))


def one_hot(label: str) -> dict[str, float]:
    return {k: 0.9 if k == label else 0.0125 for k in LABELS9}


def test_the_summary_names_the_top_emotion_and_ranks_every_label():
    scores = dict(zip(LABELS9, [0.05, 0.01, 0.02, 0.6, 0.2, 0.03, 0.04, 0.03, 0.02]))
    page = summary_html(utterance(scores))
    assert 'class="emo-label">happy<' in page and "60% confidence" in page
    bars = re.findall(r'data-label="(\w+)"', page)
    assert bars == sorted(LABELS9, key=lambda k: -scores[k]) and len(bars) == 9
    assert 'style="width: 60.0%; background: #f2b701"' in page
    assert "random weights" not in page and "random weights" in summary_html(utterance(scores), weights="random")


def test_a_model_without_a_head_says_so_instead_of_empty_bars():
    result = EmotionResult(None, None, {}, (), 1.0, "emotion2vec_base", "utterance", {})
    page = summary_html(Analysis("clip", result, noise(16000)))
    assert "no emotion head" in page and "emo-bar" not in page


def test_binned_frame_scores_stay_distributions_over_the_whole_clip():
    scores = np.random.default_rng(0).dirichlet(np.ones(9), size=1234).astype(np.float32)
    means, edges = bin_means(scores, 500)
    assert means.shape == (500, 9) and edges[0] == 0 and edges[-1] == 1234
    assert np.allclose(means.sum(axis=1), 1.0, atol=1e-6)
    assert np.allclose(means[0], scores[edges[0]:edges[1]].mean(axis=0))
    short, _ = bin_means(scores[:10], 500)
    assert np.allclose(short, scores[:10])


def timeline_data(page: str) -> dict:
    return json.loads(html.unescape(re.search(r'data-timeline="([^"]*)"', page).group(1)))


def test_the_frame_timeline_stacks_one_area_per_label_and_carries_the_clip():
    rows = np.zeros((149, 9), np.float32)
    rows[:75, 3] = 1.0  # happy for the first half, sad after
    rows[75:, 6] = 1.0
    page = timeline_html(frames(rows, 3.0))
    assert page.count("<path ") == 9
    data = timeline_data(page)
    assert data["duration"] == 3.0 and data["labels"] == list(LABELS9)
    assert data["frames"]["top"][0] == 3 and data["frames"]["top"][-1] == 6
    audio = re.search(r'data-src="data:audio/mpeg;base64,([^"]+)"', page).group(1)
    heard = decode_audio(base64.b64decode(audio))
    assert abs(len(heard) / 16000 - 3.0) < 0.15  # the MP3 is the clip (give or take the encoder's padding)


def test_long_files_show_each_voiced_segment_where_it_is():
    segments = [Segment(1.0, 3.0, "happy", 0.9, one_hot("happy")), Segment(6.0, 8.0, "sad", 0.8, one_hot("sad"))]
    overall = Overall("happy", 0.5, one_hot("happy"), 4.0)
    result = LongformResult(segments, overall, LABELS9, 10.0, "m", "utterance")
    page = timeline_html(Analysis("talk", result, noise(160000)))
    assert re.findall(r'data-emotion="(\w+)" style="left: ([\d.]+)%; width: ([\d.]+)%', page) == [
        ("happy", "10.000", "20.000"), ("sad", "60.000", "20.000")]
    assert timeline_data(page)["segments"] == [[1.0, 3.0, 3, 0.9], [6.0, 8.0, 6, 0.8]]
    assert "<path " not in page  # no frames were asked for


@pytest.mark.parametrize("name", ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'])
def test_nothing_a_user_names_becomes_markup(name):
    assert "<script>" not in message_html(f"could not read {name}", "error")
    assert "<img" not in message_html(name)
    assert message_html("the audio is empty").count("The audio is empty") == 1


def test_a_split_call_draws_one_named_lane_per_channel_and_sums_up_the_call():
    from emoserve.inference.results import ChannelLongform, SplitLongformResult
    from emoserve.timeline.calls import Speaker, analyze_call
    from emoserve.ui.analysis import CallAnalysis
    from emoserve.ui.charts import call_summary_html, call_timeline_html

    lanes = {"agent": [Segment(1.0, 3.0, "happy", 0.9, one_hot("happy"))],
             "customer": [Segment(4.0, 6.0, "angry", 0.8, one_hot("angry")),
                          Segment(7.0, 8.0, "sad", 0.7, one_hot("sad"))]}
    entries = [ChannelLongform(k, name, LongformResult(segments, Overall(segments[0].emotion, 0.5, one_hot("happy"),
                                                                         2.0), LABELS9, 10.0, "m", "utterance"))
               for k, (name, segments) in enumerate(lanes.items())]
    turns, overlaps, summary = analyze_call([Speaker(e.channel, e.name, e.result.segments) for e in entries], LABELS9)
    result = SplitLongformResult(entries, turns, overlaps, summary, LABELS9, 10.0, "m", "utterance")
    call = CallAnalysis("call", [(e.name, Analysis("call", e.result, noise(160000, seed=e.channel)))
                                 for e in entries], result)
    page = call_timeline_html(call)
    assert re.findall(r'class="emo-lane-name">(\w+)<', page) == ["agent", "customer"]
    assert page.count('class="emo-track emo-segments"') == 2
    assert re.findall(r'data-emotion="(\w+)" style="left: ([\d.]+)%', page) == [
        ("happy", "10.000"), ("angry", "40.000"), ("sad", "70.000")]
    assert [row[0] for row in timeline_data(page)["segments"]] == [1.0, 4.0, 7.0]
    text = call_summary_html(call)
    assert "2 turns" in text and "first angry: customer at 4.0 s" in text  # the customer's segments: one turn
    assert "started happy, ended angry" in text
