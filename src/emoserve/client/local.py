"""The client's methods on a local model: the same calls and result types, no server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..inference.results import EmotionResult, LongformResult, check_granularity, make_result
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
                preconvert: bool | None = None, filename: str | None = None) -> ClientResult:
        """`preconvert` and `filename` are accepted for parity with `EmoClient` and change nothing here."""
        from ..audio import decode_audio, processed_wav

        check_granularity(granularity)
        waveform = decode_audio(audio, sample_rate=sample_rate, max_seconds=self.max_duration_s,
                                min_samples=self.model.config.min_samples)
        if self.engine_thread is not None:
            engine = self.engine_thread.engine
            out = engine.submit_blocking([waveform], frames=granularity == "frame", origin="local")[0]
            result = make_result(out, self.model.labels, self.model.name, granularity, return_embedding)
        else:
            result = self.model.analyze(waveform, granularity=granularity, return_embedding=return_embedding)
        fields = {name: getattr(result, name) for name in EmotionResult.__dataclass_fields__}
        return ClientResult(**fields, processed_audio=processed_wav(waveform) if return_processed_audio else None)

    def analyze_long(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False, *,
                     progress: Callable[[float], None] | None = None, **upload_options) -> LongformResult:
        """`EmotionModel.analyze_long`. `EmoClient`'s upload options (chunk_size, parallel, ...) are accepted,
        so one script runs against both, and have nothing to do here."""
        return self.model.analyze_long(audio, granularity=granularity, return_embedding=return_embedding,
                                       progress=progress)
