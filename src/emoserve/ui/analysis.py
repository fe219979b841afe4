"""What the web UI does with a file: the running engine's answer, shaped for display and download.

The UI holds no model of its own: clips go through the same `Engine` as `POST /v1/analyze`
(same decoder, limits and batches), and long files through `longform.analyze_long` with the
engine's `submit_blocking` as its batch-predict callable, so their segments queue and batch with
everyone's clips.
Nothing here imports Gradio: it is plain code the tests call directly.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import json
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Settings
from ..inference.engine import Engine
from ..inference.results import (
    ChannelResult,
    EmotionResult,
    LongformResult,
    Segment,
    SplitLongformResult,
    SplitResult,
    channel_names,
)
from ..model.config import SAMPLE_RATE
from ..timeline.longform import Progress, analyze_long


@dataclass(frozen=True)
class Analysis:
    """One analysed clip (`EmotionResult`) or long file (`LongformResult`) and the audio the model heard."""

    name: str  # the file's stem, for download names
    result: EmotionResult | LongformResult
    waveform: np.ndarray  # 16 kHz mono float32

    @property
    def is_long(self) -> bool:
        return isinstance(self.result, LongformResult)

    @property
    def emotion(self) -> str | None:
        return self.result.overall.emotion if self.is_long else self.result.emotion

    @property
    def confidence(self) -> float | None:
        return self.result.overall.confidence if self.is_long else self.result.confidence

    @property
    def scores(self) -> dict[str, float]:
        """label → probability for the whole clip (a long file: segments weighted by duration)."""
        return self.result.overall.scores if self.is_long else self.result.utterance_scores

    @property
    def frame_scores(self) -> np.ndarray | None:
        """(T, L) scores every 20 ms, when frames were asked for."""
        if self.result.granularity != "frame":
            return None
        return self.result.frame_scores if self.is_long else np.asarray(self.result.scores)

    @property
    def timestamps(self) -> np.ndarray | None:
        """(T,) start of each frame in seconds, when frames were asked for."""
        return self.result.timestamps if self.result.granularity == "frame" else None

    @property
    def segments(self) -> list[Segment]:
        return self.result.segments if self.is_long else []

    @property
    def labels(self) -> tuple[str, ...]:
        return self.result.labels


async def analyze_clip(engine: Engine, path: str | Path, granularity: str, settings: Settings) -> Analysis:
    """One clip under the API's limits (`max_duration_s`, `max_bytes`), exactly as /v1/analyze does it."""
    limits = settings.server
    waveform, result = await engine.analyze(Path(path), granularity=granularity, return_embedding=True,
                                            max_seconds=limits.max_duration_s, max_bytes=limits.max_bytes,
                                            origin="ui")
    return Analysis(Path(path).stem, result, waveform)


async def analyze_file(engine: Engine, path: str | Path, granularity: str, settings: Settings,
                       progress: Progress | None = None) -> Analysis:
    """A long file: voiced segments (and frames over the whole file), up to `ui.max_long_s`."""
    waveform = await engine.decode(Path(path), max_seconds=settings.ui.max_long_s,
                                   max_bytes=settings.ui.max_upload_bytes)
    model = engine.model
    options = settings.longform.model_copy(update={"max_duration_s": settings.ui.max_long_s})
    predict = functools.partial(engine.submit_blocking, origin="ui")
    result = await asyncio.to_thread(
        analyze_long, waveform, predict, labels=model.labels, model_name=model.name, granularity=granularity,
        return_embedding=True, options=options, progress=progress, min_samples=model.config.min_samples)
    return Analysis(Path(path).stem, result, waveform)


@dataclass(frozen=True)
class CallAnalysis:
    """A file analysed with channels=split (a stereo call): each channel's `Analysis`, named, and the whole
    result (`SplitResult`, or `SplitLongformResult` with the call's turns and summary)."""

    name: str
    channels: list[tuple[str, Analysis]]
    result: SplitResult | SplitLongformResult

    @property
    def is_long(self) -> bool:
        return isinstance(self.result, SplitLongformResult)

    @property
    def waveform(self) -> np.ndarray:
        """What a listener hears: the channels mixed."""
        return np.mean([analysis.waveform for _, analysis in self.channels], axis=0)


async def analyze_channels(engine: Engine, path: str | Path, granularity: str, settings: Settings, long_file: bool,
                           progress: Progress | None = None) -> CallAnalysis:
    """Each channel on its own, as /v1/analyze (a clip) or a job (`long_file`) with channels=split do it."""
    ui, limits = settings.ui, settings.server
    rows = await engine.decode(Path(path), max_seconds=ui.max_long_s if long_file else limits.max_duration_s,
                               max_bytes=ui.max_upload_bytes if long_file else limits.max_bytes, split=True)
    stem, model = Path(path).stem, engine.model
    if long_file:
        options = settings.longform.model_copy(update={"max_duration_s": ui.max_long_s})
        predict = functools.partial(engine.submit_blocking, origin="ui")
        result = await asyncio.to_thread(
            analyze_long, rows, predict, labels=model.labels, model_name=model.name, granularity=granularity,
            return_embedding=True, options=options, progress=progress, min_samples=model.config.min_samples,
            channels="split")
    else:
        results = await asyncio.gather(*(engine.submit(row, granularity=granularity, return_embedding=True,
                                                       origin="ui") for row in rows))
        named = channel_names(None, len(rows))
        result = SplitResult([ChannelResult(k, named[k], r) for k, r in enumerate(results)],
                             round(rows.shape[1] / SAMPLE_RATE, 6), model.name)
    return CallAnalysis(stem, [(c.name, Analysis(stem, c.result, rows[c.channel])) for c in result.channels], result)


# ---- downloads: the result as JSON and CSV, the embedding as .npy ----


def export_call_files(call: CallAnalysis, directory: Path) -> list[Path]:
    """The whole result as <name>.json, then each channel's downloads named <name>.<channel>.*."""
    directory.mkdir(parents=True, exist_ok=True)
    whole = directory / f"{safe_stem(call.name)}.json"
    whole.write_text(json.dumps(call.result.to_dict(), ensure_ascii=False), encoding="utf-8")
    channel_files = [export_files(Analysis(f"{call.name}.{name}", a.result, a.waveform), directory)
                     for name, a in call.channels]
    return [whole, *(path for files in channel_files for path in files[1:])]  # [0] of each: its json, in whole


def export_files(analysis: Analysis, directory: Path) -> list[Path]:
    """Write the downloads of one analysis: <name>.json, its CSV table(s) and <name>.embedding.npy."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = safe_stem(analysis.name)
    written = [directory / f"{stem}.json"]
    written[0].write_text(json.dumps(analysis.result.to_dict(), ensure_ascii=False), encoding="utf-8")
    labels = list(analysis.labels)
    if analysis.is_long:
        rows = [[s.start, s.end, s.emotion, s.confidence, *(s.scores.get(label) for label in labels)]
                for s in analysis.segments]
        written.append(write_csv(directory / f"{stem}.segments.csv",
                                 ["start_s", "end_s", "emotion", "confidence", *labels], rows))
    elif analysis.frame_scores is None:
        written.append(write_csv(directory / f"{stem}.scores.csv", ["emotion", "score"],
                                 [[label, score] for label, score in analysis.scores.items()]))
    frames = analysis.frame_scores
    if frames is not None:
        rows = [[round(t, 2), *row] for t, row in zip(analysis.timestamps.tolist(), frames.tolist())]
        written.append(write_csv(directory / f"{stem}.frames.csv", ["time_s", *labels], rows))
    embedding = analysis.result.embedding
    if embedding is not None:
        written.append(directory / f"{stem}.embedding.npy")
        np.save(written[-1], np.ascontiguousarray(embedding, dtype=np.float32), allow_pickle=False)
    return written


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def safe_stem(name: str) -> str:
    """A download name from a user's file name: letters, digits, `._-` only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:80] or "audio"


class DownloadDir:
    """Where each analysis writes its downloads until Gradio has copied them into its own cache.

    Gradio copies an event's output files once the event returns, so they must outlive it; each
    new analysis removes the folders of those older than `keep_s`. The whole folder goes at exit.
    """

    def __init__(self, keep_s: float = 600.0):
        self.root = tempfile.TemporaryDirectory(prefix="emoserve-ui-")
        self.keep_s = keep_s

    def new(self) -> Path:
        root = Path(self.root.name)
        cutoff = time.time() - self.keep_s
        for old in root.iterdir():
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        folder = root / uuid.uuid4().hex
        folder.mkdir()
        return folder
