"""The server's answers → the library's types: results, jobs, models and typed errors.

Each answer is validated with its model of `emoserve.wire` (the contract the server sends), then
turned into the type a local caller gets: numpy arrays where the library has them.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import io
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

from .. import wire
from ..errors import EmoserveError, code_for_status, error_for
from ..inference.results import (
    CallSummary,
    ChannelLongform,
    ChannelResult,
    EmotionResult,
    LongformResult,
    ModelInfo,
    Overall,
    Overlap,
    Segment,
    SpeakerSummary,
    SplitLongformResult,
    SplitResult,
    Turn,
)
from ..labels import LABELS

# ---- errors: the server's code → the library's typed error (emoserve.errors.ERROR_CODES) ----


def error_from_response(response: httpx.Response) -> EmoserveError:
    """The typed error for a non-2xx answer, carrying the server's code, message, status and Retry-After."""
    try:
        body = wire.ErrorBody.model_validate_json(response.content).error
        code, message = body.code, body.message
        details = body.model_dump(exclude_defaults=True, exclude={"code", "message"})
    except ValueError:  # not our JSON (a proxy's page): the code its status stands for
        code, message, details = code_for_status(response.status_code), \
            f"HTTP {response.status_code}: {response.text[:200]}", {}
    error = error_for(code, message, details)
    error.status_code = response.status_code
    error.request_id = response.headers.get("x-request-id")
    error.retry_after = retry_after_seconds(response.headers.get("retry-after"))
    return error


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds to wait: delay-seconds, or an HTTP date (proxies and gateways send those);
    None when absent or unreadable (the retry policy's backoff then applies)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": an HTTP date is always GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# ---- results ----


@dataclass(frozen=True)
class ClientResult(EmotionResult):
    """An `EmotionResult` as the clients return it: plus the audio the model heard and the request id."""

    processed_audio: bytes | None = None  # 16 kHz mono PCM16 WAV, with return_processed_audio
    request_id: str | None = None


def result_from_json(data: bytes, embedding: bytes | None = None, processed_audio: bytes | None = None,
                     request_id: str | None = None,
                     channel_parts: dict[int, tuple[bytes | None, bytes | None]] | None = None,
                     ) -> ClientResult | SplitResult:
    """An analysis result (`wire.AnalyzeResult`) → the library's result, numpy arrays where the library has them.

    A channels=split answer gives a `SplitResult` of `ClientResult`s; `channel_parts` maps a channel index to its
    (embedding-K, processed-K) multipart parts.
    """
    body = wire.ANALYZE_RESULT.validate_json(data)
    if isinstance(body, wire.SplitAnalyzeResult):
        parts = channel_parts or {}
        return SplitResult([ChannelResult(entry.channel, entry.name,
                                          client_result(entry, *parts.get(entry.channel, (None, None)), request_id))
                            for entry in body.channels], body.duration_s, body.model)
    return client_result(body, embedding, processed_audio, request_id)


def client_result(body: wire.UtteranceResult | wire.FrameResult, embedding: bytes | None,
                  processed_audio: bytes | None, request_id: str | None) -> ClientResult:
    if embedding is None and body.embedding_npy_b64:
        embedding = base64.b64decode(body.embedding_npy_b64)
    if processed_audio is None and body.processed_audio_wav_b64:
        processed_audio = base64.b64decode(body.processed_audio_wav_b64)
    if isinstance(body, wire.FrameResult):
        labels = tuple(body.labels)
        scores: dict | np.ndarray = np.asarray(body.scores, dtype=np.float32).reshape(-1, len(labels))
        utterance_scores = body.utterance_scores
        timestamps = np.asarray(body.timestamps, dtype=np.float64)
    else:
        utterance_scores = body.scores
        labels, scores, timestamps = tuple(utterance_scores) or LABELS, utterance_scores, None
    return ClientResult(body.emotion, body.confidence, scores, labels, body.duration_s, body.model, body.granularity,
                        utterance_scores, timestamps, load_npy(embedding) if embedding is not None else None,
                        processed_audio, request_id)


def longform_from_wire(body: wire.LongformResult, embedding: bytes | None = None) -> LongformResult:
    """A finished job's `result` → `LongformResult`."""
    segments = [Segment(s.start, s.end, s.emotion, s.confidence, s.scores) for s in body.segments]
    o = body.overall
    labels = tuple(body.labels)
    frames = body.scores
    return LongformResult(segments, Overall(o.emotion, o.confidence, o.scores, o.speech_s), labels, body.duration_s,
                          body.model, body.granularity,
                          np.asarray(frames, dtype=np.float32).reshape(-1, len(labels)) if frames is not None else None,
                          np.asarray(body.timestamps, dtype=np.float64) if frames is not None else None,
                          load_npy(embedding) if embedding is not None else None)


def split_longform_from_wire(body: wire.SplitLongformResult,
                             embeddings: dict[int | None, bytes] | None = None) -> SplitLongformResult:
    """A finished channels=split job's `result` → `SplitLongformResult`; `embeddings` maps a channel to its .npy."""
    summary = body.summary
    embeddings = embeddings or {}
    return SplitLongformResult(
        [ChannelLongform(c.channel, c.name, longform_from_wire(c, embeddings.get(c.channel))) for c in body.channels],
        [Turn(**t.model_dump()) for t in body.turns],
        [Overlap(o.start, o.end, tuple(o.channels), tuple(o.speakers)) for o in body.overlaps],
        CallSummary([SpeakerSummary(**s.model_dump()) for s in summary.speakers], summary.start_emotion,
                    summary.start_speaker, summary.end_emotion, summary.end_speaker, summary.overlap_s),
        tuple(body.labels), body.duration_s, body.model, body.granularity)


def models_from_json(data: bytes) -> list[ModelInfo]:
    """`GET /v1/models` → `ModelInfo` of each model, every field the server sends."""
    return [ModelInfo(**{**m.model_dump(), "labels": tuple(m.labels)})
            for m in wire.ModelsList.model_validate_json(data).models]


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def parse_multipart(content_type: str, payload: bytes) -> list[tuple[dict[str, str], bytes]]:
    """A multipart/mixed body → [(headers, bytes)] per part, with python-multipart's streaming parser."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise EmoserveError("the server sent multipart/mixed without a boundary", code="internal_error")
    parts: list[tuple[dict[str, str], bytes]] = []
    header: dict[str, bytes] = {}

    def on_part_begin() -> None:
        parts.append(({}, b""))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] = header.get("field", b"") + data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] = header.get("value", b"") + data[start:end]

    def on_header_end() -> None:
        parts[-1][0][header.pop("field", b"").decode().lower()] = header.pop("value", b"").decode()

    chunks: list[bytes] = []

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunks.append(data[start:end])

    def on_part_end() -> None:
        parts[-1] = (parts[-1][0], b"".join(chunks))
        chunks.clear()

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_part_data": on_part_data, "on_part_end": on_part_end})
    parser.write(payload)
    parser.finalize()
    return parts


def result_from_response(response: httpx.Response) -> ClientResult | SplitResult:
    """JSON, or multipart/mixed: the JSON result first, then embedding.npy and/or processed.wav (embedding-K.npy
    and processed-K.wav per channel K of a channels=split answer)."""
    request_id = response.headers.get("x-request-id")
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("multipart/"):
        return result_from_json(response.content, request_id=request_id)
    parts = parse_multipart(content_type, response.content)
    binary = {part_name(headers): data for headers, data in parts[1:]}
    channel_parts = {int(name.split("-")[1]): (binary.get(name), binary.get(name.replace("embedding", "processed")))
                     for name in binary if name.startswith("embedding-")}
    channel_parts.update({int(name.split("-")[1]): (None, binary[name]) for name in binary
                          if name.startswith("processed-") and int(name.split("-")[1]) not in channel_parts})
    return result_from_json(parts[0][1], binary.get("embedding"), binary.get("processed"), request_id, channel_parts)


def part_name(headers: dict[str, str]) -> str:
    """The name in a part's Content-Disposition (embedding, processed, embedding-0, ...)."""
    disposition = headers.get("content-disposition", "")
    return disposition.split('name="', 1)[1].split('"', 1)[0] if 'name="' in disposition else ""


@dataclass(frozen=True)
class Job:
    """A long-audio job (`GET /v1/jobs/{id}`); `result` is set once it succeeded, `error` once it failed."""

    job_id: str
    status: str  # queued | running | succeeded | failed
    progress: float
    result: LongformResult | SplitLongformResult | None = None
    error: EmoserveError | None = None
    options: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed")


def job_from_wire(body: wire.JobStatus, embeddings: dict[int | None, bytes] | None = None) -> Job:
    """`GET /v1/jobs/{id}` → `Job`, with the embeddings fetched for it, if any: {None: the job's one} for a mixed
    job, {K: channel K's} for a channels=split job."""
    embeddings = embeddings or {}
    error = None
    if body.error is not None:
        details = body.error.details.model_dump(exclude_defaults=True) if body.error.details else {}
        error = error_for(body.error.code, body.error.message, details)
    if isinstance(body.result, wire.SplitLongformResult):
        result = split_longform_from_wire(body.result, embeddings)
    else:
        result = longform_from_wire(body.result, embeddings.get(None)) if body.result is not None else None
    return Job(body.job_id, body.status, body.progress, result, error, body.options.model_dump())


def accepted_job_from_json(data: bytes) -> Job:
    """The 202 of `POST /v1/upload/complete` or `/v1/jobs` → `Job` (its progress is read with `job`)."""
    body = wire.JobAccepted.model_validate_json(data)
    return Job(body.job_id, body.status, 0.0)
