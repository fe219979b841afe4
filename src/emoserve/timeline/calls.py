"""A call from its channels: speaker turns, overlaps and a summary, from each channel's voiced segments.

Call centres record in stereo, the agent on one channel and the customer on the other, so who spoke when
is known without a speaker model: a channel's voiced segments are its speaker's speech. These are pure
functions over those segments (seconds from the start of the file), so they are tested on timelines
built by hand (docs/calls.md).

- A turn is a speaker's segments in a row, until a segment of another channel starts: a pause of one
  speaker within their own turn does not end it; a short "mm-hmm" of the other does (and overlaps).
- An overlap is a stretch in which two or more channels have voiced segments at once.
- The summary gives, per speaker, the share of their speaking time per emotion (each segment counts for
  its top emotion, by its duration), the first time they sounded angry, and the emotion of their first
  and last turn; and the emotion of the call's first and last turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..inference.results import CallSummary, Overlap, Segment, SpeakerSummary, Turn, overall_of

ANGRY = "angry"


@dataclass(frozen=True)
class Speaker:
    """One channel of a call: its index, its name (agent, customer, left, ...) and its voiced segments."""

    channel: int
    name: str
    segments: Sequence[Segment]


def analyze_call(speakers: Sequence[Speaker], labels: Sequence[str]) -> tuple[list[Turn], list[Overlap],
                                                                             CallSummary]:
    """The turns, overlaps and summary of a call (the parts of `SplitLongformResult` beyond its channels)."""
    turns = speaker_turns(speakers, labels)
    found = overlaps(speakers)
    return turns, found, summarize_call(speakers, turns, found)


def speaker_turns(speakers: Sequence[Speaker], labels: Sequence[str]) -> list[Turn]:
    """Every channel's segments in order of start, grouped into turns where the channel changes."""
    ordered = sorted(((segment, speaker) for speaker in speakers for segment in speaker.segments),
                     key=lambda item: (item[0].start, item[1].channel))
    groups: list[tuple[Speaker, list[Segment]]] = []
    for segment, speaker in ordered:
        if groups and groups[-1][0].channel == speaker.channel:
            groups[-1][1].append(segment)
        else:
            groups.append((speaker, [segment]))
    return [turn_of(speaker, segments, tuple(labels)) for speaker, segments in groups]


def turn_of(speaker: Speaker, segments: list[Segment], labels: tuple[str, ...]) -> Turn:
    """A turn's emotion: its segments' scores weighted by their duration, as a file's overall emotion."""
    whole = overall_of(segments, labels)
    return Turn(speaker.channel, speaker.name, segments[0].start, max(s.end for s in segments), whole.emotion,
                whole.confidence, whole.scores)


def overlaps(speakers: Sequence[Speaker]) -> list[Overlap]:
    """The stretches with two or more channels voiced, by a sweep over the segment boundaries."""
    names = {speaker.channel: speaker.name for speaker in speakers}
    events: dict[float, list[tuple[int, int]]] = {}
    for speaker in speakers:
        for segment in speaker.segments:
            events.setdefault(segment.start, []).append((speaker.channel, 1))
            events.setdefault(segment.end, []).append((speaker.channel, -1))
    active: dict[int, int] = {}  # channel → segments of it covering the current point
    found: list[Overlap] = []
    times = sorted(events)
    for time, following in zip(times, times[1:], strict=False):
        for channel, step in events[time]:
            active[channel] = active.get(channel, 0) + step
        talking = tuple(sorted(channel for channel, count in active.items() if count > 0))
        if len(talking) < 2:
            continue
        if found and found[-1].end == time and found[-1].channels == talking:
            found[-1] = Overlap(found[-1].start, following, talking, found[-1].speakers)
        else:
            found.append(Overlap(time, following, talking, tuple(names[channel] for channel in talking)))
    return found


def summarize_call(speakers: Sequence[Speaker], turns: Sequence[Turn], found: Sequence[Overlap]) -> CallSummary:
    first, last = (turns[0], turns[-1]) if turns else (None, None)
    return CallSummary(
        [summarize_speaker(speaker, [t for t in turns if t.channel == speaker.channel]) for speaker in speakers],
        first.emotion if first else None, first.speaker if first else None,
        last.emotion if last else None, last.speaker if last else None,
        round(sum(o.end - o.start for o in found), 6))


def summarize_speaker(speaker: Speaker, own_turns: Sequence[Turn]) -> SpeakerSummary:
    speech_s = sum(s.end - s.start for s in speaker.segments)
    seconds: dict[str, float] = {}
    for segment in speaker.segments:
        if segment.emotion is not None:
            seconds[segment.emotion] = seconds.get(segment.emotion, 0.0) + segment.end - segment.start
    share = {emotion: round(s / speech_s, 6) for emotion, s in sorted(seconds.items(), key=lambda kv: -kv[1])} \
        if speech_s > 0 else {}
    angry = [s.start for s in speaker.segments if s.emotion == ANGRY]
    return SpeakerSummary(speaker.channel, speaker.name, round(speech_s, 6), share, min(angry) if angry else None,
                          own_turns[0].emotion if own_turns else None, own_turns[-1].emotion if own_turns else None)
