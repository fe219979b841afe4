"""Long files → an emotion timeline: voiced segments from silero-vad, and frames over the whole file.

Two passes, so hours of audio never sit in memory at once:

1. decode in blocks (`emoserve.audio.stream_audio`: the decoder, checks and limits of every
   request) to 16 kHz float32, written to a scratch file while silero-vad (`vad.SpeechDetector`)
   scores every 32 ms block; silero's rules (`vad.speech_regions`) then find the voiced stretches.
2. the scratch file, memory-mapped, is cut into voiced segments (each ≤ 30 s) and, for
   granularity=frame, into overlapping windows of ≤ 30 s on the 20 ms grid (`framing`); both go
   through a batch-predict callable (`EmotionModel.predict`, or the engine's queue through
   `Engine.submit_blocking`) one group at a time.

The frames of the windows are stitched into the grid one pass over the file would have made
(`framing.owned_frames`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..audio import AudioSource, stream_audio
from ..config import LongformConfig
from ..errors import AudioError, InvalidParameterError
from ..inference.batching import plan_batches
from ..inference.results import (
    ClipOutput,
    LongformResult,
    Segment,
    check_granularity,
    frame_timestamps,
    make_segment,
    overall_of,
)
from ..model.config import HOP, RECEPTIVE_FIELD, SAMPLE_RATE
from .framing import (
    Cut,
    frame_count,
    model_cuts,
    owned_frames,
    plan_windows,
    to_seconds,
)
from .vad import SpeechDetector, VadOptions, speech_regions

BatchPredict = Callable[[list[np.ndarray], bool], list[ClipOutput]]
Progress = Callable[[float], None]

DECODE_SHARE = 0.1  # of the progress bar: the first pass (decode + VAD); the model takes the rest


def analyze_long(source: AudioSource, predict: BatchPredict, *, labels: Sequence[str], model_name: str,
                 granularity: str = "utterance", return_embedding: bool = False, sample_rate: int | None = None,
                 regions: Sequence[tuple[float, float]] | None = None, options: LongformConfig | None = None,
                 progress: Progress | None = None, min_samples: int = RECEPTIVE_FIELD,
                 scratch_dir: str | Path | None = None, embedding_path: str | Path | None = None) -> LongformResult:
    """The emotion timeline of a file or waveform of any length.

    `regions` (seconds) replaces voice-activity detection with the caller's own segments (a
    diarization, say). `progress` receives 0.0–1.0; an exception it raises aborts the analysis.
    `embedding_path` writes the embedding there as .npy (frames stream into it) and the result
    holds it memory-mapped. `scratch_dir` holds the decoded 16 kHz copy of a file while it runs.
    """
    check_granularity(granularity)
    options = options or LongformConfig()
    labels = tuple(labels)
    report = progress or (lambda fraction: None)
    with tempfile.TemporaryDirectory(prefix="emoserve-longform-", dir=scratch_dir) as scratch:
        audio, speech_probs = first_pass(source, Path(scratch) / "audio.f32", sample_rate, options,
                                         detect_speech=regions is None, progress=report, min_samples=min_samples)
        num_samples = len(audio)
        if regions is None:
            stretches = speech_regions(speech_probs, num_samples, VadOptions.of(options))
        else:
            stretches = regions_in_samples(regions, num_samples)
        cuts = model_cuts(stretches, options.max_segment_s, min_samples, num_samples)
        windows = plan_windows(num_samples, options.window_samples, options.overlap_samples) \
            if granularity == "frame" else []
        work = Tally(sum(e - s for s, e in cuts) + sum(min(options.window_samples, num_samples - s) for s in windows),
                     report)
        segments, segment_embeddings = analyze_segments(audio, cuts, predict, labels, options, work)
        frames = analyze_frames(audio, windows, predict, options, work, return_embedding,
                                embedding_path) if windows else None
    duration_s = to_seconds(num_samples)
    embedding = None
    if return_embedding:
        embedding = frames.embedding if frames is not None else segment_embeddings
        if embedding_path is not None and frames is None:
            np.save(embedding_path, embedding)
        if embedding_path is not None:
            embedding = np.load(embedding_path, mmap_mode="r")
    report(1.0)
    return LongformResult(
        segments, overall_of(segments, labels), labels, duration_s, model_name, granularity,
        frame_scores=frames.scores if frames is not None else None,
        timestamps=frame_timestamps(len(frames.scores)) if frames is not None else None,
        embedding=embedding)


class Tally:
    """Progress of the second pass, in samples sent to the model, mapped after the first pass's share."""

    def __init__(self, total: int, report: Progress):
        self.total, self.done, self.report = max(total, 1), 0, report

    def add(self, samples: int) -> None:
        self.done += samples
        self.report(DECODE_SHARE + (1 - DECODE_SHARE) * min(self.done / self.total, 1.0))


# ---- pass 1: decode once, to a scratch file, scoring speech on the way ----


def first_pass(source: AudioSource, scratch_file: Path, sample_rate: int | None, options: LongformConfig,
               detect_speech: bool, progress: Progress, min_samples: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(the whole file at 16 kHz, memory-mapped; silero's speech probability per 512 samples)."""
    detector = SpeechDetector() if detect_speech else None
    with open(scratch_file, "wb") as out:
        try:
            stream_audio(source, ScratchWriter(out, detector, progress), sample_rate=sample_rate,
                         max_seconds=options.max_duration_s, min_samples=min_samples)
        except AudioError as e:
            if e.code != "audio_too_long":
                raise
            raise AudioError(f"the audio is longer than the limit of {options.max_duration_s:g} s for long files",
                             code="audio_too_long", details={"max_duration_s": options.max_duration_s}) from e
    audio = np.memmap(scratch_file, dtype=np.float32, mode="r")
    return audio, detector.finish() if detector is not None else None


class ScratchWriter:
    """Takes the decoded blocks: onto the scratch file, through the speech detector, and into the progress bar."""

    def __init__(self, out: BinaryIO, detector: SpeechDetector | None, progress: Progress):
        self.out, self.detector, self.progress = out, detector, progress
        self.written = 0

    def __call__(self, block: np.ndarray, expected_samples: int | None) -> None:
        self.out.write(block.data)
        self.written += len(block)
        if self.detector is not None:
            self.detector.feed(block)
        if expected_samples:
            self.progress(DECODE_SHARE * min(self.written / expected_samples, 1.0))


# ---- the caller's own regions, instead of voice activity ----


def regions_in_samples(regions: Sequence[tuple[float, float]], num_samples: int) -> list[Cut]:
    duration = num_samples / SAMPLE_RATE
    cuts = []
    for start, end in regions:
        if not 0 <= start < end or start >= duration:
            raise InvalidParameterError(
                f"region ({start}, {end}) must satisfy 0 <= start < end and start < the duration {duration:.3f} s")
        cuts.append((round(start * SAMPLE_RATE), min(round(end * SAMPLE_RATE), num_samples)))
    return sorted(cuts)


# ---- pass 2: segments and frame windows through the model ----


def analyze_segments(audio: np.ndarray, cuts: list[Cut], predict: BatchPredict, labels: tuple[str, ...],
                     options: LongformConfig, work: Tally) -> tuple[list[Segment], np.ndarray]:
    lengths = [end - start for start, end in cuts]
    segments: list[Segment | None] = [None] * len(cuts)
    embeddings: list[np.ndarray | None] = [None] * len(cuts)
    for group in plan_batches(lengths, options.batch_size, options.batch_samples):
        outputs = predict([np.array(audio[cuts[i][0]: cuts[i][1]]) for i in group], False)
        for i, out in zip(group, outputs, strict=True):
            segments[i] = make_segment(out, cuts[i][0], labels)
            embeddings[i] = out.embedding
        work.add(sum(lengths[i] for i in group))
    stacked = np.stack(embeddings).astype(np.float32) if embeddings else np.zeros((0, 0), np.float32)
    return segments, stacked


@dataclass
class Frames:
    scores: np.ndarray  # (T, L)
    embedding: np.ndarray | None  # (T, D) when asked for


def analyze_frames(audio: np.ndarray, starts: list[int], predict: BatchPredict, options: LongformConfig,
                   work: Tally, keep_embedding: bool, embedding_path: str | Path | None) -> Frames:
    """Per-frame scores (and features) over the whole file, one window batch at a time.

    Only the result grows with the file: each window's outputs are copied into the rows it owns
    and dropped. With `embedding_path`, the (T, D) features stream into that .npy, not memory.
    """
    num_samples = len(audio)
    window = options.window_samples
    owned = owned_frames(starts, num_samples, window)
    total = frame_count(num_samples)
    lengths = [min(window, num_samples - s) for s in starts]
    scores: np.ndarray | None = None
    embedding: np.ndarray | None = None
    for group in plan_batches(lengths, options.batch_size, options.batch_samples):
        outputs = predict([np.array(audio[starts[k]: starts[k] + lengths[k]]) for k in group], True)
        for k, out in zip(group, outputs, strict=True):
            first, last = owned[k]
            offset = starts[k] // HOP
            if out.frame_features.shape[0] != frame_count(lengths[k]):
                raise RuntimeError(f"the model made {out.frame_features.shape[0]} frames of {lengths[k]} samples, "
                                   f"not {frame_count(lengths[k])}: frame windows need floor((N - 400) / 320) + 1")
            if scores is None:
                num_labels = out.frame_probs.shape[1] if out.frame_probs is not None else 0
                scores = np.zeros((total, num_labels), np.float32)
            if out.frame_probs is not None:
                scores[first:last] = out.frame_probs[first - offset: last - offset]
            if keep_embedding:
                if embedding is None:
                    embedding = new_embedding((total, out.frame_features.shape[1]), embedding_path)
                embedding[first:last] = out.frame_features[first - offset: last - offset]
        work.add(sum(lengths[k] for k in group))
    if isinstance(embedding, np.memmap):
        embedding.flush()
    return Frames(scores, embedding)


def new_embedding(shape: tuple[int, int], path: str | Path | None) -> np.ndarray:
    if path is not None:
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    return np.zeros(shape, np.float32)
