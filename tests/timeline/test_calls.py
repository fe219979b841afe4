"""Speaker turns, overlaps and the call summary, on timelines built by hand (exact answers), and on a stereo call."""

from __future__ import annotations

import pytest

from emoserve.inference.results import Overlap, Segment
from emoserve.timeline.calls import Speaker, analyze_call, overlaps, speaker_turns, summarize_call

from ..samples import espeak_available, two_speaker_call, wav_bytes

LABELS = ("angry", "happy", "neutral")


def seg(start: float, end: float, emotion: str) -> Segment:
    """A segment sure of its emotion (0.8, the rest 0.1 each)."""
    scores = {label: 0.8 if label == emotion else 0.1 for label in LABELS}
    return Segment(start, end, emotion, 0.8, scores)


AGENT = Speaker(0, "agent", [seg(0.0, 2.0, "neutral"), seg(2.5, 4.0, "happy"), seg(9.0, 12.0, "neutral")])
CUSTOMER = Speaker(1, "customer", [seg(4.5, 6.0, "neutral"), seg(6.5, 9.5, "angry"), seg(11.0, 11.5, "angry")])


def test_turns_group_a_speakers_segments_until_the_other_speaks():
    turns = speaker_turns([AGENT, CUSTOMER], LABELS)
    assert [(t.speaker, t.start, t.end) for t in turns] == [
        ("agent", 0.0, 4.0), ("customer", 4.5, 9.5), ("agent", 9.0, 12.0), ("customer", 11.0, 11.5)]
    first = turns[0]  # 2 s neutral and 1.5 s happy, weighted by duration
    assert first.emotion == "neutral" and first.confidence == pytest.approx((2 * 0.8 + 1.5 * 0.1) / 3.5)
    assert first.scores["happy"] == pytest.approx((2 * 0.1 + 1.5 * 0.8) / 3.5)
    assert turns[1].emotion == "angry"  # 1.5 s neutral, 3 s angry


def test_overlaps_are_where_both_talk():
    assert overlaps([AGENT, CUSTOMER]) == [Overlap(9.0, 9.5, (0, 1), ("agent", "customer")),
                                           Overlap(11.0, 11.5, (0, 1), ("agent", "customer"))]
    assert overlaps([AGENT]) == []
    touching = [Speaker(0, "a", [seg(0.0, 1.0, "happy")]), Speaker(1, "b", [seg(1.0, 2.0, "happy")])]
    assert overlaps(touching) == []  # one ends as the other starts


def test_overlaps_of_three_channels_name_who_is_talking():
    three = [Speaker(0, "a", [seg(0.0, 4.0, "happy")]), Speaker(1, "b", [seg(1.0, 3.0, "happy")]),
             Speaker(2, "c", [seg(2.0, 5.0, "happy")])]
    assert [(o.start, o.end, o.channels) for o in overlaps(three)] == [
        (1.0, 2.0, (0, 1)), (2.0, 3.0, (0, 1, 2)), (3.0, 4.0, (0, 2))]


def test_the_summary_gives_shares_first_anger_and_the_calls_ends():
    turns, found, summary = analyze_call([AGENT, CUSTOMER], LABELS)
    agent, customer = summary.speakers
    assert (agent.speaker, agent.speech_s, agent.emotion_share) == ("agent", 6.5, {"neutral": 0.769231,
                                                                                    "happy": 0.230769})
    assert agent.first_angry_s is None and (agent.start_emotion, agent.end_emotion) == ("neutral", "neutral")
    assert (customer.speech_s, customer.emotion_share) == (5.0, {"angry": 0.7, "neutral": 0.3})
    assert customer.first_angry_s == 6.5 and (customer.start_emotion, customer.end_emotion) == ("angry", "angry")
    assert (summary.start_speaker, summary.start_emotion) == ("agent", "neutral")
    assert (summary.end_speaker, summary.end_emotion) == ("customer", "angry")
    assert summary.overlap_s == 1.0


def test_a_silent_call_has_no_turns_and_a_summary_of_nothing():
    quiet = [Speaker(0, "left", []), Speaker(1, "right", [])]
    summary = summarize_call(quiet, speaker_turns(quiet, LABELS), [])
    assert summary.start_emotion is None and summary.end_speaker is None and summary.overlap_s == 0
    assert [(s.speech_s, s.emotion_share, s.first_angry_s) for s in summary.speakers] == [(0, {}, None)] * 2


def test_a_stereo_call_end_to_end(tiny_model):
    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    call, phrases = two_speaker_call(22_050)  # left at 0.5 s and 7 s, right at 3.5 s and 9 s (over the left's end)
    result = tiny_model.analyze_long(wav_bytes(call, 22_050), channels="split", channel_names="agent,customer")
    spoken = sorted((start, end, name) for name, channel in zip(("agent", "customer"), phrases, strict=True)
                    for start, end in channel)
    assert [t.speaker for t in result.turns] == [name for _, _, name in spoken]
    for turn, (start, end, _) in zip(result.turns, spoken, strict=True):
        assert turn.start == pytest.approx(start, abs=0.25) and turn.end == pytest.approx(end, abs=0.25)
    (overlap,) = result.overlaps
    assert overlap.start == pytest.approx(9.0, abs=0.25) and overlap.end == pytest.approx(phrases[0][1][1], abs=0.25)
    assert result.summary.overlap_s == pytest.approx(overlap.end - overlap.start)
    assert [s.speech_s for s in result.summary.speakers] == [c.result.overall.speech_s for c in result.channels]
    assert sum(result.summary.speakers[0].emotion_share.values()) == pytest.approx(1.0, abs=1e-5)
