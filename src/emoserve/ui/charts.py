"""The UI's pictures as HTML and SVG strings: the top emotion, the score bars, the timeline and its player.

Drawn here rather than by a plotting library so the page needs nothing from the network, the
charts scale to any width (a phone's too), and the player's cursor can move over them: the
timeline carries its audio and a small JSON summary that `player.js` reads as the audio plays.
"""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np
import soundfile as sf

from ..model.config import FRAME_RATE, SAMPLE_RATE
from .analysis import Analysis, CallAnalysis

# label → (colour, emoji); one colour per emotion everywhere: bars, areas, segments, legend
STYLE = {
    "angry": ("#d94841", "😠"),
    "disgusted": ("#7a9a01", "🤢"),
    "fearful": ("#8e5cc4", "😨"),
    "happy": ("#f2b701", "😄"),
    "neutral": ("#8d99ae", "😐"),
    "other": ("#2bb3a3", "🤔"),
    "sad": ("#3c7dd9", "😢"),
    "surprised": ("#f28e2b", "😲"),
    "unknown": ("#c9ccd1", "❔"),
}
FALLBACK_STYLE = ("#9e9e9e", "•")
MAX_BINS = 500  # points per area: enough for any screen, and a small page for a long file
TICKS = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


def colour(label: str) -> str:
    return STYLE.get(label, FALLBACK_STYLE)[0]


def emoji(label: str) -> str:
    return STYLE.get(label, FALLBACK_STYLE)[1]


def message_html(text: str, kind: str = "info") -> str:
    """A status line: `info`, or `error` for a refusal the user can fix."""
    icon = "⚠️" if kind == "error" else "ℹ️"
    role = "alert" if kind == "error" else "status"
    return f'<div class="emo-status emo-{kind}" role="{role}">{icon} {html.escape(text[:1].upper() + text[1:])}</div>'


def summary_html(analysis: Analysis, weights: str = "pretrained") -> str:
    """The top emotion, its confidence, and one bar per label, highest first."""
    seconds = len(analysis.waveform) / SAMPLE_RATE
    mode = "long file" if analysis.is_long else "whole clip"
    if analysis.result.granularity == "frame":
        mode += ", every 20 ms"
    meta = f"{seconds:.1f} s · {mode} · {html.escape(analysis.result.model)}"
    if analysis.is_long:
        meta += f" · {len(analysis.segments)} voiced segments, {analysis.result.overall.speech_s:.1f} s of speech"
    warning = ""
    if weights == "random":
        warning = message_html("This server runs a model with random weights (a test model): the scores mean "
                               "nothing. Start it with a real model, e.g. emotion2vec_plus_large.")
    if analysis.emotion is None:
        if analysis.is_long and not analysis.segments:
            return message_html("No speech found in this file.") + f'<p class="emo-meta">{meta}</p>'
        return (message_html("This model has no emotion head: it gives embeddings only (download them below).")
                + f'<p class="emo-meta">{meta}</p>')
    top = html.escape(analysis.emotion)
    rows = "".join(bar_row(label, score) for label, score in
                   sorted(analysis.scores.items(), key=lambda item: -item[1]))
    return (f'<div class="emo-summary">{warning}'
            f'<div class="emo-top" style="--emo: {colour(analysis.emotion)}">'
            f'<span class="emo-emoji" aria-hidden="true">{emoji(analysis.emotion)}</span>'
            f'<span><span class="emo-label">{top}</span>'
            f'<span class="emo-confidence">{analysis.confidence:.0%} confidence</span></span></div>'
            f'<p class="emo-meta">{meta}</p>'
            f'<div class="emo-bars" role="list" aria-label="score of each emotion">{rows}</div></div>')


def bar_row(label: str, score: float) -> str:
    name = html.escape(label)
    return (f'<div class="emo-bar" role="listitem" data-label="{name}">'
            f'<span class="emo-bar-name">{emoji(label)} {name}</span>'
            f'<span class="emo-bar-track"><span class="emo-bar-fill" '
            f'style="width: {100 * score:.1f}%; background: {colour(label)}"></span></span>'
            f'<span class="emo-bar-value">{100 * score:.1f}%</span></div>')


def timeline_html(analysis: Analysis) -> str:
    """The player and, under it on one time axis, the voiced segments and/or the stacked frame scores."""
    return lanes_html(analysis.waveform, [(None, analysis)])


def call_timeline_html(call: CallAnalysis) -> str:
    """A split analysis (a stereo call): the mixed audio's player, then one lane per channel, named."""
    return lanes_html(call.waveform, call.channels)


def call_summary_html(call: CallAnalysis, weights: str = "pretrained") -> str:
    """Each channel's summary under its name; for a long call, who sounded angry first and how it ended."""
    parts = []
    if call.is_long:
        summary = call.result.summary
        angry = [f"{html.escape(s.speaker)} at {s.first_angry_s:.1f} s" for s in summary.speakers
                 if s.first_angry_s is not None]
        ends = f"started {html.escape(summary.start_emotion or '-')}, ended {html.escape(summary.end_emotion or '-')}"
        parts.append(f'<p class="emo-meta">{len(call.result.turns)} turns · {summary.overlap_s:.1f} s of overlap · '
                     f'first angry: {", ".join(angry) or "nobody"} · {ends}</p>')
    for name, analysis in call.channels:
        parts.append(f'<h3 class="emo-lane-name">{html.escape(name)}</h3>{summary_html(analysis, weights)}')
    return f'<div class="emo-call">{"".join(parts)}</div>'


def lanes_html(waveform: np.ndarray, lanes: list[tuple[str | None, Analysis]]) -> str:
    """The player over `waveform`, then each lane's tracks (named when a lane has a name) on one time axis.

    The readout follows the voiced segments of every lane, and the frames of the first."""
    duration = len(waveform) / SAMPLE_RATE
    labels = list(lanes[0][1].labels)
    data: dict = {"duration": duration, "labels": labels, "emoji": [emoji(label) for label in labels]}
    tracks = []
    for name, analysis in lanes:
        if name is not None:
            tracks.append(f'<div class="emo-lane-name">{html.escape(name)}</div>')
        if analysis.is_long:
            tracks.append(segments_track(analysis, duration))
            data.setdefault("segments", []).extend(
                [s.start, s.end, labels.index(s.emotion) if s.emotion in labels else -1, round(s.confidence or 0.0, 3)]
                for s in analysis.segments)
        frames = analysis.frame_scores
        if frames is not None and frames.size:
            means, edges = bin_means(frames, MAX_BINS)
            top = means.argmax(axis=1)
            data.setdefault("frames", {"top": top.tolist(), "confidence": np.round(means.max(axis=1), 3).tolist(),
                                       "seconds": len(frames) / FRAME_RATE})
            tracks.append(area_track(means, edges, len(frames), labels, duration))
    if "segments" in data:
        data["segments"].sort()
    legend = "".join(f'<span class="emo-chip"><i style="background: {colour(label)}"></i>{html.escape(label)}</span>'
                     for label in labels)
    return (f'<div class="emo-timeline" data-timeline="{html.escape(json.dumps(data))}">'
            f'<audio class="emo-audio" controls preload="auto" data-src="{audio_data_uri(waveform)}">'
            f'</audio><div class="emo-readout" aria-live="off">0.00 s</div>{"".join(tracks)}'
            f'{axis_html(duration)}<div class="emo-legend">{legend}</div></div>')


def segments_track(analysis: Analysis, duration: float) -> str:
    blocks = []
    for s in analysis.segments:
        left, width = 100 * s.start / duration, 100 * (s.end - s.start) / duration
        emotion = s.emotion or ""
        tip = f"{s.start:.2f}–{s.end:.2f} s" + (f": {emotion} {s.confidence:.0%}" if emotion else "")
        blocks.append(f'<span class="emo-segment" title="{html.escape(tip)}" data-emotion="{html.escape(emotion)}" '
                      f'style="left: {left:.3f}%; width: {width:.3f}%; background: {colour(emotion)}">'
                      f'{emoji(emotion) if emotion else ""}</span>')
    return (f'<div class="emo-track emo-segments" title="voiced segments; click to play from there">'
            f'{"".join(blocks)}<span class="emo-cursor"></span></div>')


def area_track(means: np.ndarray, edges: np.ndarray, num_frames: int, labels: list[str], duration: float) -> str:
    """Stacked areas of the per-frame scores, x = time, y = share of each label (0–100%)."""
    frames_s = num_frames / FRAME_RATE
    centres = (edges[:-1] + edges[1:]) / 2 / FRAME_RATE  # bin centre, seconds
    xs = np.concatenate([[0.0], centres, [frames_s]]) / duration * 1000
    padded = np.vstack([means[:1], means, means[-1:]])
    cumulative = np.hstack([np.zeros((len(padded), 1)), np.cumsum(padded, axis=1)])
    paths = []
    for k, label in enumerate(labels):
        upper = [f"{x:.1f},{100 - 100 * y:.2f}" for x, y in zip(xs, cumulative[:, k + 1])]
        lower = [f"{x:.1f},{100 - 100 * y:.2f}" for x, y in zip(xs[::-1], cumulative[::-1, k])]
        paths.append(f'<path d="M{" L".join(upper)} L{" L".join(lower)} Z" fill="{colour(label)}">'
                     f'<title>{html.escape(label)}</title></path>')
    return (f'<div class="emo-track emo-area" title="share of each emotion every 20 ms; click to play from there">'
            f'<svg viewBox="0 0 1000 100" preserveAspectRatio="none" role="img" '
            f'aria-label="emotion scores over time">{"".join(paths)}</svg><span class="emo-cursor"></span></div>')


def bin_means(frames: np.ndarray, max_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean scores over ≤ max_bins runs of consecutive frames (each row still sums to 1), and the runs' edges."""
    edges = np.linspace(0, len(frames), min(len(frames), max_bins) + 1).round().astype(int)
    sums = np.add.reduceat(frames.astype(np.float64), edges[:-1], axis=0)
    return sums / np.diff(edges)[:, None], edges


def axis_html(duration: float) -> str:
    """Time ticks under the tracks: about five, at round steps."""
    step = next((t for t in TICKS if duration / t <= 6), TICKS[-1])
    ticks = np.arange(0, duration + 1e-9, step)
    spans = "".join(f'<span style="left: {100 * t / duration:.3f}%">{format_time(t)}</span>' for t in ticks)
    return f'<div class="emo-axis" aria-hidden="true">{spans}</div>'


def format_time(seconds: float) -> str:
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{seconds:g} s"


def audio_data_uri(waveform: np.ndarray) -> str:
    """What the model heard, as MP3 (about 4 kB per second at 16 kHz) inline: no file to serve or clean up."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(waveform, -1.0, 1.0), SAMPLE_RATE, format="MP3")
    return "data:audio/mpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
