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

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..audio import AudioSource, stream_audio, stream_channels
from ..config import LongformConfig
from ..errors import AudioError, InvalidParameterError
from ..inference.batching import plan_batches
from ..inference.results import (
    ChannelLongform,
    ClipOutput,
    LongformResult,
    Segment,
    SplitLongformResult,
    check_channel_mode,
    check_granularity,
    frame_timestamps,
    make_segment,
    overall_of,
)
from ..inference.results import channel_names as names_of_channels
from ..model.config import HOP, RECEPTIVE_FIELD, SAMPLE_RATE
from .calls import Speaker, analyze_call
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
                 scratch_dir: str | Path | None = None, embedding_path: str | Path | None = None,
                 channels: str = "mix", channel_names: str | Sequence[str] | None = None,
                 ) -> LongformResult | SplitLongformResult:
    """The emotion timeline of a file or waveform of any length.

    `regions` (seconds) replaces voice-activity detection with the caller's own segments (a
    diarization, say). `progress` receives 0.0–1.0; an exception it raises aborts the analysis.
    `embedding_path` writes the embedding there as .npy (frames stream into it) and the result
    holds it memory-mapped. `scratch_dir` holds the decoded 16 kHz copy of a file while it runs.

    `channels="split"`: each channel on its own (a stereo call), with its own voice activity, its
    segments batched with the other channels'; a `SplitLongformResult` whose channel k is what channel k
    alone gives as a mono file, plus the call's turns, overlaps and summary (`timeline.calls`). Channel k's
    embedding then goes to `channel_path(embedding_path, k)` (a job's `embedding.chK.npy`).
    """
    check_granularity(granularity)
    split = check_channel_mode(channels) == "split"
    options = options or LongformConfig()
    labels = tuple(labels)
    report = progress or (lambda fraction: None)
    with tempfile.TemporaryDirectory(prefix="emoserve-longform-", dir=scratch_dir) as scratch:
        read = first_pass_channels if split else first_pass
        audios, speech_probs = read(source, Path(scratch), sample_rate, options, detect_speech=regions is None,
                                    progress=report, min_samples=min_samples)
        num_samples = len(audios[0])
        paths = embedding_paths(embedding_path, len(audios) if split else None)
        cuts = [model_cuts(speech_stretches(probs, regions, num_samples, options), options.max_segment_s,
                           min_samples, num_samples) for probs in speech_probs]
        windows = plan_windows(num_samples, options.window_samples, options.overlap_samples) \
            if granularity == "frame" else []
        work = Tally(sum(e - s for channel in cuts for s, e in channel)
                     + len(audios) * sum(min(options.window_samples, num_samples - s) for s in windows), report)
        timelines = analyze_segments(audios, cuts, predict, labels, options, work)
        frames = analyze_frames(audios, windows, predict, options, work, return_embedding,
                                paths) if windows else [None] * len(audios)
    duration_s = to_seconds(num_samples)
    results = []
    for (segments, segment_embeddings), channel_frames, path in zip(timelines, frames, paths, strict=True):
        embedding = None
        if return_embedding:
            embedding = channel_frames.embedding if channel_frames is not None else segment_embeddings
            if path is not None and channel_frames is None:
                np.save(path, embedding)
            if path is not None:
                embedding = np.load(path, mmap_mode="r")
        results.append(LongformResult(
            segments, overall_of(segments, labels), labels, duration_s, model_name, granularity,
            frame_scores=channel_frames.scores if channel_frames is not None else None,
            timestamps=frame_timestamps(len(channel_frames.scores)) if channel_frames is not None else None,
            embedding=embedding))
    report(1.0)
    if not split:
        return results[0]
    named = names_of_channels(channel_names, len(results))
    entries = [ChannelLongform(k, name, result) for k, (name, result) in enumerate(zip(named, results, strict=True))]
    turns, overlaps, summary = analyze_call([Speaker(e.channel, e.name, e.result.segments) for e in entries], labels)
    return SplitLongformResult(entries, turns, overlaps, summary, labels, duration_s, model_name, granularity)


def channel_path(path: str | Path, channel: int) -> Path:
    """Where channel `channel`'s copy of a per-file output goes: `embedding.npy` → `embedding.ch0.npy`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.ch{channel}{path.suffix}")


def embedding_paths(path: str | Path | None, channels: int | None) -> list[Path | None]:
    """The .npy each timeline's embedding streams into: `path` for mixed audio, one `channel_path` per channel."""
    if channels is None:
        return [Path(path) if path is not None else None]
    return [channel_path(path, k) if path is not None else None for k in range(channels)]


def speech_stretches(speech_probs: np.ndarray | None, regions: Sequence[tuple[float, float]] | None,
                     num_samples: int, options: LongformConfig) -> list[Cut]:
    """Voiced stretches from silero's scores, or the caller's regions."""
    if regions is None:
        return speech_regions(speech_probs, num_samples, VadOptions.of(options))
    return regions_in_samples(regions, num_samples)


class Tally:
    """Progress of the second pass, in samples sent to the model, mapped after the first pass's share."""

    def __init__(self, total: int, report: Progress):
        self.total, self.done, self.report = max(total, 1), 0, report

    def add(self, samples: int) -> None:
        self.done += samples
        self.report(DECODE_SHARE + (1 - DECODE_SHARE) * min(self.done / self.total, 1.0))


# ---- pass 1: decode once, to a scratch file, scoring speech on the way ----


def first_pass(source: AudioSource, scratch: Path, sample_rate: int | None, options: LongformConfig,
               detect_speech: bool, progress: Progress, min_samples: int) -> tuple[list[np.ndarray],
                                                                                    list[np.ndarray | None]]:
    """([the whole file at 16 kHz, memory-mapped], [silero's speech probability per 512 samples])."""
    detector = SpeechDetector() if detect_speech else None
    scratch_file = scratch / "audio.f32"
    with open(scratch_file, "wb") as out, long_audio_limit(options):
        stream_audio(source, ScratchWriter(out, detector, progress), sample_rate=sample_rate,
                     max_seconds=options.max_duration_s, min_samples=min_samples)
    audio = np.memmap(scratch_file, dtype=np.float32, mode="r")
    return [audio], [detector.finish() if detector is not None else None]


def first_pass_channels(source: AudioSource, scratch: Path, sample_rate: int | None, options: LongformConfig,
                        detect_speech: bool, progress: Progress, min_samples: int) -> tuple[list[np.ndarray],
                                                                                             list[np.ndarray | None]]:
    """`first_pass` with the channels kept apart: a scratch file and a speech detector per channel, each fed
    exactly the blocks that channel alone gives as a mono file (`stream_channels`); channel 0 reports progress."""
    with contextlib.ExitStack() as stack:
        writers: list[ScratchWriter] = []

        def writer_for(channel: int) -> ScratchWriter:
            out = stack.enter_context(open(scratch / f"audio-{channel}.f32", "wb"))  # noqa: SIM115
            writers.append(ScratchWriter(out, SpeechDetector() if detect_speech else None,
                                         progress if channel == 0 else (lambda fraction: None)))
            return writers[-1]

        with long_audio_limit(options):
            stream_channels(source, writer_for, sample_rate=sample_rate, max_seconds=options.max_duration_s,
                            min_samples=min_samples)
    audios = [np.memmap(scratch / f"audio-{k}.f32", dtype=np.float32, mode="r") for k in range(len(writers))]
    return audios, [w.detector.finish() if w.detector is not None else None for w in writers]


@contextlib.contextmanager
def long_audio_limit(options: LongformConfig) -> Iterator[None]:
    """Over the limit: the limit of long files, not of single requests, is the one to name."""
    try:
        yield
    except AudioError as e:
        if e.code != "audio_too_long":
            raise
        raise AudioError(f"the audio is longer than the limit of {options.max_duration_s:g} s for long files",
                         code="audio_too_long", details={"max_duration_s": options.max_duration_s}) from e


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


def analyze_segments(audios: list[np.ndarray], cuts: list[list[Cut]], predict: BatchPredict,
                     labels: tuple[str, ...], options: LongformConfig,
                     work: Tally) -> list[tuple[list[Segment], np.ndarray]]:
    """Each channel's cuts through the model, the channels' segments batched together: (segments, their
    embeddings (S, D)) per channel."""
    clips = [(k, cut) for k, channel_cuts in enumerate(cuts) for cut in channel_cuts]
    lengths = [end - start for _, (start, end) in clips]
    outputs: list[ClipOutput | None] = [None] * len(clips)
    for group in plan_batches(lengths, options.batch_size, options.batch_samples):
        batch = predict([np.array(audios[clips[i][0]][clips[i][1][0]: clips[i][1][1]]) for i in group], False)
        for i, out in zip(group, batch, strict=True):
            outputs[i] = out
        work.add(sum(lengths[i] for i in group))
    timelines = []
    for k in range(len(audios)):
        mine = [(cut, out) for (channel, cut), out in zip(clips, outputs, strict=True) if channel == k]
        embeddings = [out.embedding for _, out in mine]
        stacked = np.stack(embeddings).astype(np.float32) if embeddings else np.zeros((0, 0), np.float32)
        timelines.append(([make_segment(out, cut[0], labels) for cut, out in mine], stacked))
    return timelines


@dataclass
class Frames:
    scores: np.ndarray  # (T, L)
    embedding: np.ndarray | None  # (T, D) when asked for


def analyze_frames(audios: list[np.ndarray], starts: list[int], predict: BatchPredict, options: LongformConfig,
                   work: Tally, keep_embedding: bool, embedding_paths: list[Path | None]) -> list[Frames]:
    """Per-frame scores (and features) over the whole file, per channel, one window batch at a time (the
    channels' windows batched together).

    Only the result grows with the file: each window's outputs are copied into the rows it owns
    and dropped. A channel with a path in `embedding_paths` streams its (T, D) features into that .npy, not memory.
    """
    num_samples = len(audios[0])
    window = options.window_samples
    owned = owned_frames(starts, num_samples, window)
    total = frame_count(num_samples)
    clips = [(k, w) for k in range(len(audios)) for w in range(len(starts))]  # (channel, window)
    lengths = [min(window, num_samples - starts[w]) for _, w in clips]
    scores: list[np.ndarray | None] = [None] * len(audios)
    embeddings: list[np.ndarray | None] = [None] * len(audios)
    for group in plan_batches(lengths, options.batch_size, options.batch_samples):
        batch = [np.array(audios[clips[i][0]][starts[clips[i][1]]: starts[clips[i][1]] + lengths[i]]) for i in group]
        for i, out in zip(group, predict(batch, True), strict=True):
            k, w = clips[i]
            first, last = owned[w]
            offset = starts[w] // HOP
            if out.frame_features.shape[0] != frame_count(lengths[i]):
                raise RuntimeError(f"the model made {out.frame_features.shape[0]} frames of {lengths[i]} samples, "
                                   f"not {frame_count(lengths[i])}: frame windows need floor((N - 400) / 320) + 1")
            if scores[k] is None:
                num_labels = out.frame_probs.shape[1] if out.frame_probs is not None else 0
                scores[k] = np.zeros((total, num_labels), np.float32)
            if out.frame_probs is not None:
                scores[k][first:last] = out.frame_probs[first - offset: last - offset]
            if keep_embedding:
                if embeddings[k] is None:
                    embeddings[k] = new_embedding((total, out.frame_features.shape[1]), embedding_paths[k])
                embeddings[k][first:last] = out.frame_features[first - offset: last - offset]
        work.add(sum(lengths[i] for i in group))
    for embedding in embeddings:
        if isinstance(embedding, np.memmap):
            embedding.flush()
    return [Frames(channel_scores, embedding) for channel_scores, embedding in zip(scores, embeddings, strict=True)]


def new_embedding(shape: tuple[int, int], path: str | Path | None) -> np.ndarray:
    if path is not None:
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    return np.zeros(shape, np.float32)
