"""Model outputs → the results users see (utterance or frame), in one place.

The library, the CLI, the API and the UI all build their answers from `EmotionResult`, so an
answer means the same thing wherever it comes from. `to_wire()` gives a result's body of the API
(`emoserve.wire`), built without validation from plain lists (frame results are large);
`to_dict()` is that body as plain Python values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .. import wire
from ..errors import EmoserveError, InvalidParameterError
from ..model.config import FRAME_RATE, SAMPLE_RATE

GRANULARITIES = ("utterance", "frame")
CHANNEL_MODES = ("mix", "split")  # mix: channels averaged to mono; split: each channel analysed on its own
DEFAULT_CHANNEL_NAMES = ("left", "right")  # then ch2, ch3, ...


@dataclass
class ClipOutput:
    """What one forward pass computed for one clip (numpy, float32, on the host)."""

    num_samples: int
    embedding: np.ndarray  # (D,) mean of the clip's frame features
    probs: np.ndarray | None  # (L,) softmax(proj(embedding)); None without an emotion head
    frame_features: np.ndarray | None = None  # (T, D), when frames were asked for
    frame_probs: np.ndarray | None = None  # (T, L) softmax(proj(frame)), when frames were asked for


@dataclass(frozen=True)
class EmotionResult:
    """The emotion of one clip.

    `scores` maps label → probability for the clip (utterance), or is a (T, L) array with one
    row per 20 ms frame (frame, label order = `labels`). `emotion`/`confidence` always describe
    the whole clip; they are None for a model without an emotion head (emotion2vec_base).
    """

    emotion: str | None
    confidence: float | None
    scores: dict[str, float] | np.ndarray
    labels: tuple[str, ...]
    duration_s: float
    model: str
    granularity: str
    utterance_scores: dict[str, float]
    timestamps: np.ndarray | None = None  # (T,) start of each frame in seconds, for frame results
    embedding: np.ndarray | None = None  # (D,) utterance or (T, D) frame embedding, when asked for

    def to_wire(self) -> wire.UtteranceResult | wire.FrameResult:
        """The JSON body of the API (docs/API.md), without the binary embedding."""
        if self.granularity == "frame":
            return wire.FrameResult.model_construct(
                emotion=self.emotion, confidence=self.confidence, scores=np.asarray(self.scores).tolist(),
                timestamps=np.asarray(self.timestamps).tolist(), labels=list(self.labels),
                utterance_scores=self.utterance_scores, duration_s=self.duration_s, model=self.model,
                granularity="frame")
        return wire.UtteranceResult.model_construct(
            emotion=self.emotion, confidence=self.confidence, scores=self.utterance_scores,
            duration_s=self.duration_s, model=self.model, granularity="utterance")

    def to_dict(self) -> dict:
        return self.to_wire().to_dict()


def check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise InvalidParameterError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    return granularity


def check_channel_mode(channels: str) -> str:
    if channels not in CHANNEL_MODES:
        raise InvalidParameterError(f"channels must be one of {', '.join(CHANNEL_MODES)}, got {channels!r}")
    return channels


def parse_channel_names(names: str | Sequence[str] | None) -> list[str] | None:
    """A comma-separated string (a form field, a CLI option) or a list → names; None keeps the defaults."""
    if names is None:
        return None
    parsed = [name.strip() for name in (names.split(",") if isinstance(names, str) else names)]
    if not any(parsed):
        return None
    if not all(parsed):
        raise InvalidParameterError(f"channel_names must not hold empty names, got {names!r}")
    if len(set(parsed)) != len(parsed):
        raise InvalidParameterError(f"channel_names must be distinct, got {names!r}")
    return parsed


def channel_names(names: str | Sequence[str] | None, count: int) -> list[str]:
    """The name of each of `count` channels: the caller's (one per channel), else left, right, ch2, ch3, ..."""
    parsed = parse_channel_names(names)
    if parsed is None:
        return [DEFAULT_CHANNEL_NAMES[k] if k < len(DEFAULT_CHANNEL_NAMES) else f"ch{k}" for k in range(count)]
    if len(parsed) != count:
        raise InvalidParameterError(f"channel_names names {len(parsed)} channels, but the file has {count}: "
                                    f"give one name per channel")
    return parsed


def frame_timestamps(num_frames: int) -> np.ndarray:
    """Start of each 20 ms frame, in seconds: t × 0.02."""
    return np.arange(num_frames, dtype=np.float64) / FRAME_RATE


def summarize(probs: np.ndarray | None, labels: tuple[str, ...]) -> tuple[dict[str, float], str | None, float | None]:
    """Probabilities → (label → score, top emotion, its confidence); empty and None without a head."""
    if probs is None:
        return {}, None, None
    best = int(np.argmax(probs))
    return {label: float(p) for label, p in zip(labels, probs)}, labels[best], float(probs[best])


def check_finite(out: ClipOutput) -> None:
    """NaN/Inf from the model (a broken checkpoint, an overflow in half precision) is never an answer."""
    arrays = (out.embedding, out.probs, out.frame_features, out.frame_probs)
    if not all(a is None or np.isfinite(a).all() for a in arrays):
        raise EmoserveError("the model produced NaN or infinite values for this clip", code="internal_error")


def make_result(out: ClipOutput, labels: tuple[str, ...], model: str, granularity: str,
                return_embedding: bool) -> EmotionResult:
    check_granularity(granularity)
    check_finite(out)
    utterance_scores, emotion, confidence = summarize(out.probs, labels)
    duration_s = round(out.num_samples / SAMPLE_RATE, 6)
    if granularity == "frame":
        if out.frame_features is None:
            raise ValueError("frame granularity needs the frame outputs of the forward pass")
        num_frames = out.frame_features.shape[0]
        scores = out.frame_probs if out.frame_probs is not None else np.zeros((num_frames, 0), np.float32)
        return EmotionResult(emotion, confidence, scores, labels, duration_s, model, granularity,
                             utterance_scores, frame_timestamps(num_frames),
                             out.frame_features if return_embedding else None)
    return EmotionResult(emotion, confidence, utterance_scores, labels, duration_s, model, granularity,
                         utterance_scores, None, out.embedding if return_embedding else None)


@dataclass(frozen=True)
class ChannelResult:
    """One channel of a file analysed with channels="split": the result that channel alone gives as a mono file."""

    channel: int  # 0-based index in the file
    name: str
    result: EmotionResult

    def to_wire(self) -> wire.ChannelUtteranceResult | wire.ChannelFrameResult:
        body = self.result.to_wire()
        model = wire.ChannelFrameResult if self.result.granularity == "frame" else wire.ChannelUtteranceResult
        return model.model_construct(channel=self.channel, name=self.name, **dict(body))


@dataclass(frozen=True)
class SplitResult:
    """A file analysed with channels="split": one result per channel, in channel order."""

    channels: list[ChannelResult]
    duration_s: float
    model: str

    def to_wire(self) -> wire.SplitAnalyzeResult:
        return wire.SplitAnalyzeResult.model_construct(channels=[c.to_wire() for c in self.channels],
                                                       duration_s=self.duration_s, model=self.model)

    def to_dict(self) -> dict:
        return self.to_wire().to_dict()


# ---- long audio: voiced segments, their duration-weighted summary, frames over the whole file ----


@dataclass(frozen=True)
class Segment:
    """One voiced stretch of a long file (seconds from the file's start) and its emotion."""

    start: float
    end: float
    emotion: str | None
    confidence: float | None
    scores: dict[str, float]

    def to_wire(self) -> wire.Segment:
        return wire.Segment.model_construct(start=self.start, end=self.end, emotion=self.emotion,
                                            confidence=self.confidence, scores=self.scores)


def make_segment(out: ClipOutput, start_sample: int, labels: tuple[str, ...]) -> Segment:
    scores, emotion, confidence = summarize(out.probs, labels)
    return Segment(round(start_sample / SAMPLE_RATE, 6), round((start_sample + out.num_samples) / SAMPLE_RATE, 6),
                   emotion, confidence, scores)


@dataclass(frozen=True)
class Overall:
    """The file's emotion: segment scores weighted by segment duration (silence has no say)."""

    emotion: str | None
    confidence: float | None
    scores: dict[str, float]
    speech_s: float  # total duration of the voiced segments

    def to_wire(self) -> wire.Overall:
        return wire.Overall.model_construct(emotion=self.emotion, confidence=self.confidence, scores=self.scores,
                                            speech_s=self.speech_s)


def overall_of(segments: list[Segment], labels: tuple[str, ...]) -> Overall:
    durations = np.array([s.end - s.start for s in segments], dtype=np.float64)
    speech_s = round(float(durations.sum()), 6)
    if not segments or not segments[0].scores:
        return Overall(None, None, {}, speech_s)
    matrix = np.array([[s.scores[label] for label in labels] for s in segments], dtype=np.float64)
    scores, emotion, confidence = summarize(durations @ matrix / durations.sum(), labels)
    return Overall(emotion, confidence, scores, speech_s)


@dataclass(frozen=True)
class LongformResult:
    """The emotion timeline of a long file: voiced segments, their summary, and optionally every frame.

    `frame_scores` (T, L) and `timestamps` (T,) cover the whole file on one 20 ms grid (frame t is
    samples [320t, 320t + 400)), silence included. `embedding` is (S, D), one row per segment, for
    utterance granularity, and (T, D) for frame granularity.
    """

    segments: list[Segment]
    overall: Overall
    labels: tuple[str, ...]
    duration_s: float
    model: str
    granularity: str
    frame_scores: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    embedding: np.ndarray | None = None

    def to_wire(self) -> wire.LongformResult:
        """The `result` of a finished long-audio job (API.md), without the binary embedding."""
        frames = {}
        if self.granularity == "frame":
            frames = {"scores": np.asarray(self.frame_scores).tolist(),
                      "timestamps": np.asarray(self.timestamps).tolist()}
        return wire.LongformResult.model_construct(
            segments=[s.to_wire() for s in self.segments], overall=self.overall.to_wire(), **frames,
            labels=list(self.labels), duration_s=self.duration_s, model=self.model, granularity=self.granularity)

    def to_dict(self) -> dict:
        return self.to_wire().to_dict()


# ---- long audio with channels="split": a timeline per channel, and the call they make ----


@dataclass(frozen=True)
class ChannelLongform:
    """One channel of a long file analysed with channels="split": what that channel alone gives as a mono file."""

    channel: int
    name: str
    result: LongformResult

    def to_wire(self) -> wire.ChannelLongformResult:
        return wire.ChannelLongformResult.model_construct(channel=self.channel, name=self.name,
                                                          **dict(self.result.to_wire()))


@dataclass(frozen=True)
class Turn:
    """A speaker's turn: their segments until another channel speaks, with the duration-weighted emotion."""

    channel: int
    speaker: str
    start: float
    end: float
    emotion: str | None
    confidence: float | None
    scores: dict[str, float]

    def to_wire(self) -> wire.Turn:
        return wire.Turn.model_construct(**asdict(self))


@dataclass(frozen=True)
class Overlap:
    """Seconds [start, end) in which the channels listed all speak."""

    start: float
    end: float
    channels: tuple[int, ...]
    speakers: tuple[str, ...]

    def to_wire(self) -> wire.Overlap:
        return wire.Overlap.model_construct(start=self.start, end=self.end, channels=list(self.channels),
                                            speakers=list(self.speakers))


@dataclass(frozen=True)
class SpeakerSummary:
    channel: int
    speaker: str
    speech_s: float
    emotion_share: dict[str, float]  # emotion → share of speech_s (segments by their top emotion)
    first_angry_s: float | None
    start_emotion: str | None  # of the speaker's first turn
    end_emotion: str | None  # of the speaker's last turn

    def to_wire(self) -> wire.SpeakerSummary:
        return wire.SpeakerSummary.model_construct(**asdict(self))


@dataclass(frozen=True)
class CallSummary:
    speakers: list[SpeakerSummary]
    start_emotion: str | None  # of the call's first turn
    start_speaker: str | None
    end_emotion: str | None  # of the call's last turn
    end_speaker: str | None
    overlap_s: float

    def to_wire(self) -> wire.CallSummary:
        return wire.CallSummary.model_construct(
            speakers=[s.to_wire() for s in self.speakers], start_emotion=self.start_emotion,
            start_speaker=self.start_speaker, end_emotion=self.end_emotion, end_speaker=self.end_speaker,
            overlap_s=self.overlap_s)


@dataclass(frozen=True)
class SplitLongformResult:
    """A long file analysed with channels="split": each channel's timeline, the turns they take, where they
    overlap, and the call's summary (`emoserve.timeline.calls`)."""

    channels: list[ChannelLongform]
    turns: list[Turn]
    overlaps: list[Overlap]
    summary: CallSummary
    labels: tuple[str, ...]
    duration_s: float
    model: str
    granularity: str

    def to_wire(self) -> wire.SplitLongformResult:
        return wire.SplitLongformResult.model_construct(
            channels=[c.to_wire() for c in self.channels], turns=[t.to_wire() for t in self.turns],
            overlaps=[o.to_wire() for o in self.overlaps], summary=self.summary.to_wire(), labels=list(self.labels),
            duration_s=self.duration_s, model=self.model, granularity=self.granularity)

    def to_dict(self) -> dict:
        return self.to_wire().to_dict()


# ---- what a loaded model is ----


@dataclass(frozen=True)
class ModelInfo:
    name: str
    labels: tuple[str, ...]
    sample_rate: int
    frame_rate: int
    embedding_dim: int
    device: str
    dtype: str
    quantization: str | None  # "int8-dynamic" on the fast CPU path, else None (exact)
    weights: str  # "pretrained", or "random" for the random:* test models
    parameters: int
    min_samples: int
    precision: str | None = None  # "exact" (fp32, FunASR parity) or "fast"; None when a server did not say
    execution: str | None = None  # what the precision resolved to here, e.g. "fp32, MKL matmuls"
    backend: str | None = None  # "torch", "onnxruntime" or "openvino"; None when a server did not say

    def to_dict(self) -> dict:
        d = asdict(self)
        d["labels"] = list(self.labels)
        return d
