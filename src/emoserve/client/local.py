"""The client's methods on a local model: the same calls and result types, no server."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..inference.results import (
    ChannelResult,
    EmotionResult,
    LongformResult,
    SplitLongformResult,
    SplitResult,
    check_channel_mode,
    check_granularity,
    make_result,
)
from ..inference.results import channel_names as names_of_channels
from ..model.config import SAMPLE_RATE
from .parse import ClientResult


class LocalClient:
    """`EmoClient`'s methods on a local `EmotionModel`, with the same result types: scripts need not
    care where the model runs. Calls from several threads are batched by an `Engine` (`batching=True`),
    started (and warmed up) here on a thread of its own, until `close`.

    There are no jobs here: `analyze_long` runs the long-audio analysis in the calling thread.
    """

    def __init__(self, model, *, batching: bool = True, max_duration_s: float | None = None):
        self.model = model
        self.max_duration_s = max_duration_s
        self.engine_thread = None
        if batching:
            from ..inference.engine import Engine, EngineThread

            self.engine_thread = EngineThread(Engine(model))
            self.engine_thread.start()

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self.engine_thread is not None:
            self.engine_thread.stop()

    def health(self) -> dict:
        return {"status": "healthy", "model": self.model.name, "granularity_supported": ["utterance", "frame"],
                "weights": self.model.weights}

    def models(self) -> list:
        return [self.model.info]

    def analyze(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False,
                return_processed_audio: bool = False, *, sample_rate: int | None = None,
                preconvert: bool | None = None, filename: str | None = None, channels: str = "mix",
                channel_names: str | Sequence[str] | None = None) -> ClientResult | SplitResult:
        """`preconvert` and `filename` are accepted for parity with `EmoClient` and change nothing here.

        channels="split": a `SplitResult`, one `ClientResult` per channel named from `channel_names`, as
        `EmoClient` returns it; the channels go through the engine in one batch."""
        from ..audio import decode_audio, decode_channels

        check_granularity(granularity)
        limits = {"sample_rate": sample_rate, "max_seconds": self.max_duration_s,
                  "min_samples": self.model.config.min_samples}
        if check_channel_mode(channels) == "split":
            rows = decode_channels(audio, **limits)
            named = names_of_channels(channel_names, len(rows))
            results = self.results(list(rows), granularity, return_embedding, return_processed_audio)
            return SplitResult([ChannelResult(k, name, result)
                                for k, (name, result) in enumerate(zip(named, results, strict=True))],
                               round(rows.shape[1] / SAMPLE_RATE, 6), self.model.name)
        waveform = decode_audio(audio, **limits)
        return self.results([waveform], granularity, return_embedding, return_processed_audio)[0]

    def results(self, waveforms: list[np.ndarray], granularity: str, return_embedding: bool,
                return_processed_audio: bool) -> list[ClientResult]:
        """Decoded clips through the engine (or the model) in one batch → a `ClientResult` each."""
        from ..audio import processed_wav

        if self.engine_thread is not None:
            outputs = self.engine_thread.engine.submit_blocking(waveforms, frames=granularity == "frame",
                                                                origin="local")
        else:
            outputs = self.model.predict(waveforms, frames=granularity == "frame")
        clients = []
        for waveform, out in zip(waveforms, outputs, strict=True):
            result = make_result(out, self.model.labels, self.model.name, granularity, return_embedding)
            fields = {name: getattr(result, name) for name in EmotionResult.__dataclass_fields__}
            clients.append(ClientResult(**fields,
                                        processed_audio=processed_wav(waveform) if return_processed_audio else None))
        return clients

    def analyze_long(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False, *,
                     progress: Callable[[float], None] | None = None, channels: str = "mix",
                     channel_names: str | Sequence[str] | None = None,
                     **upload_options) -> LongformResult | SplitLongformResult:
        """`EmotionModel.analyze_long`. `EmoClient`'s upload options (chunk_size, parallel, ...) are accepted,
        so one script runs against both, and have nothing to do here."""
        return self.model.analyze_long(audio, granularity=granularity, return_embedding=return_embedding,
                                       progress=progress, channels=channels, channel_names=channel_names)
