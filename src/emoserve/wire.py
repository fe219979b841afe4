"""The wire contract: every JSON body the server takes or sends, as pydantic models (docs/API.md).

Declared once: the server builds its answers from these models (`inference.results` turns results
into them), the client parses answers with them, and /openapi.json is generated from them.

Serialising (`Body.to_json`, `Body.to_dict`) leaves out a field whose value is its default, so
optional fields (base64 parts, frame rows of a long result, error details) are absent rather than
null; a field the server always sends has no default. Large results are built with
`model_construct` from plain lists: the server's own data needs no validation, and pydantic's JSON
encoder writes a 30-minute frame result (90,000 rows) in about half the time of `dict` + `json.dumps`.

Answers ignore fields they do not know (an older client keeps working with a newer server);
requests refuse them, so a typo is an error rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .labels import LABELS

Granularity = Literal["utterance", "frame"]
UploadState = Literal["uploading", "complete", "expired"]
JobState = Literal["queued", "running", "succeeded", "failed"]
ChannelMode = Literal["mix", "split"]


class Body(BaseModel):
    """A JSON body of the API."""

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON, as sent."""
        return self.model_dump_json(exclude_defaults=True).encode()

    def to_dict(self) -> dict:
        """The JSON body as plain Python values."""
        return self.model_dump(mode="json", exclude_defaults=True)


class RequestBody(BaseModel):
    """A JSON body the server takes."""

    model_config = ConfigDict(extra="forbid")


# ---- errors ----


class ErrorDetails(Body):
    """What some errors carry besides code and message, for a client to act on."""

    missing: list[int] | None = Field(None, description="upload_incomplete: the chunk indexes still to send")
    offset: int | None = Field(None, description="upload_incomplete / conflict of a tus upload: its offset")
    expected_size: int | None = Field(None, description="conflict: the size this chunk must have")
    index: int | None = Field(None, description="conflict / checksum_mismatch of a chunk: its index")
    sha256: str | None = Field(None, description="checksum_mismatch of a completed upload: the joined file's")
    max_bytes: int | None = Field(None, description="payload_too_large: the limit in bytes")
    max_disk_bytes: int | None = Field(None, description="insufficient_storage: the uploads' quota of bytes on disk")
    upload_id: str | None = Field(None, description="upload_incomplete of a tus partial upload: which partial")
    max_active: int | None = Field(None, description="quota_exceeded: uploads allowed in flight")
    max_active_bytes: int | None = Field(None, description="quota_exceeded: bytes allowed in flight")
    min_samples: int | None = Field(None, description="too_short: the model's minimum in 16 kHz samples")
    max_seconds: float | None = Field(None, description="audio_too_long: the duration limit of a request")
    max_duration_s: float | None = Field(None, description="audio_too_long: the limit of a job or stream")
    decoded_seconds: float | None = Field(None, description="corrupt_audio of a file cut short: seconds decoded")
    declared_seconds: float | None = Field(None, description="corrupt_audio of a file cut short: seconds its "
                                                             "header declares")
    retry_after: float | None = Field(None, description="stream and job errors: seconds to wait (HTTP answers "
                                                        "carry it as the Retry-After header)")


class ErrorMessage(Body):
    code: str = Field(description="snake_case error code, from the error table of docs/API.md")
    message: str = Field(description="what went wrong and what to do")


class ErrorDetail(ErrorDetails, ErrorMessage):
    """An error: its code and message, then the details it has."""


class ErrorBody(Body):
    error: ErrorDetail


# ---- health and models ----


class Health(Body):
    status: Literal["healthy", "degraded", "loading", "failed"] = Field(
        description="degraded: the model answers, but the disk is (nearly) full and uploads are refused")
    model: str
    granularity_supported: list[Granularity]
    weights: str | None = Field(None, description='"random" for the random:* test models; absent while loading')
    error: str | None = Field(None, description="why the model failed to load (status failed)")
    reason: str | None = Field(None, description="status degraded: what is wrong and what to do")


class Liveness(Body):
    status: Literal["alive"] = "alive"


class Readiness(Body):
    status: Literal["ready", "loading", "failed", "stopping"]
    model: str
    error: str | None = Field(None, description="why the model failed to load (status failed)")


class ModelDescription(Body):
    """Every field of the library's `ModelInfo`, so a client sees what a local caller sees."""

    name: str
    labels: list[str] = Field(description="in model order: column order of every score matrix")
    sample_rate: int
    frame_rate: int = Field(description="frames per second of frame results (50)")
    embedding_dim: int
    device: str
    dtype: str
    quantization: str | None = Field(description='"int8-dynamic" on the fast CPU path, else null (exact)')
    weights: str = Field(description='"pretrained", or "random" for the random:* test models')
    parameters: int = Field(description="number of weights of the network")
    min_samples: int = Field(description="shortest audio the model takes, in 16 kHz samples")
    precision: Literal["exact", "fast"] | None = Field(
        None, description="exact: fp32 with FunASR parity; fast: a faster close path (docs/engine.md)")
    execution: str | None = Field(None, description="what precision resolved to on this hardware, e.g. "
                                                    "'fp32, MKL matmuls'")
    backend: Literal["torch", "onnxruntime", "openvino"] | None = Field(
        None, description="who runs the forward pass: torch, or the exported ONNX graph in onnxruntime or openvino")


class ModelsList(Body):
    models: list[ModelDescription]


# ---- POST /v1/analyze ----


class UtteranceResult(Body):
    emotion: str | None = Field(description="top label for the clip (null for a model without emotion head)")
    confidence: float | None
    scores: dict[str, float] = Field(description="label → probability")
    duration_s: float
    model: str
    granularity: Literal["utterance"]
    embedding_npy_b64: str | None = Field(None, description="with Accept: application/json and return_embedding")
    processed_audio_wav_b64: str | None = Field(
        None, description="with Accept: application/json and return_processed_audio")


class FrameResult(Body):
    emotion: str | None = Field(description="top label for the whole clip")
    confidence: float | None
    scores: list[list[float]] = Field(description="one row of probabilities per 20 ms frame, in `labels` order")
    timestamps: list[float] = Field(description="start of each frame in seconds")
    labels: list[str]
    utterance_scores: dict[str, float] = Field(description="label → probability for the whole clip")
    duration_s: float
    model: str
    granularity: Literal["frame"]
    embedding_npy_b64: str | None = Field(None, description="with Accept: application/json and return_embedding")
    processed_audio_wav_b64: str | None = Field(
        None, description="with Accept: application/json and return_processed_audio")


MonoAnalyzeResult = Annotated[UtteranceResult | FrameResult, Field(discriminator="granularity")]


class ChannelFields(Body):
    channel: int = Field(description="0-based channel index in the file (0 is left in stereo)")
    name: str = Field(description="from channel_names; default left, right, then ch2, ch3, ...")


class ChannelUtteranceResult(UtteranceResult, ChannelFields):
    """One channel of channels=split: exactly what that channel alone gives as a mono file."""


class ChannelFrameResult(FrameResult, ChannelFields):
    """One channel of channels=split: exactly what that channel alone gives as a mono file."""


ChannelAnalyzeResult = Annotated[ChannelUtteranceResult | ChannelFrameResult, Field(discriminator="granularity")]


class SplitAnalyzeResult(Body):
    """channels=split: one result per channel of the file, each analysed on its own."""

    channels: list[ChannelAnalyzeResult]
    duration_s: float
    model: str


AnalyzeResult = MonoAnalyzeResult | SplitAnalyzeResult  # what POST /v1/analyze answers (channels=mix | split)
ANALYZE_RESULT: TypeAdapter[UtteranceResult | FrameResult | SplitAnalyzeResult] = TypeAdapter(AnalyzeResult)


# ---- long audio: uploads and jobs ----


class UploadInit(RequestBody):
    model_config = ConfigDict(extra="forbid", strict=True)  # sizes are JSON integers, not "12", 12.0 or true

    filename: str | None = Field(None, max_length=4096, description="shown back to you; never a path on the server")
    total_size: int = Field(gt=0, description="bytes of the whole file (≤ the server's limit, 2 GB by default)")
    chunk_size: int | None = Field(None, gt=0, description="bytes per chunk, ≤ 5 MB (the default); every chunk but "
                                                           "the last has exactly this size")
    sha256: str | None = Field(None, pattern="^[0-9a-fA-F]{64}$",
                               description="the whole file's SHA-256, checked when the upload is completed")


class UploadStatus(Body):
    upload_id: str
    filename: str
    total_size: int
    chunk_size: int = Field(description="0 for a tus upload")
    chunk_count: int = Field(description="0 for a tus upload")
    received: list[int] = Field(description="chunk indexes stored durably")
    missing: list[int] = Field(description="chunk indexes still to send: the resume point")
    received_bytes: int = Field(description="bytes stored durably (a tus upload's offset)")
    state: UploadState
    sha256: str | None = Field(description="announced at init, or computed once the upload is complete")
    expires_at: str = Field(description="UTC; an idle upload expires then and its data is removed")


class UploadCreated(UploadStatus):
    chunk_urls: list[str] = Field(description="absolute URL to PUT each chunk to, by index")


class ChunkReceived(Body):
    index: int
    size: int


class JobRequest(RequestBody):
    upload_id: str = Field(description="a chunked or tus upload")
    granularity: Granularity = Field("utterance", description="segments only, or also one row of scores per 20 ms "
                                                              "over the whole file")
    return_embedding: bool = Field(False, description="keep the embedding for GET /v1/jobs/{id}/embedding.npy "
                                                      "(channels=split: one per channel, ?channel=K)")
    callback_url: str | None = Field(None, max_length=2048,
                                     description="http(s) URL that receives the final job JSON by POST")
    channels: ChannelMode = Field("mix", description="mix: channels averaged to mono; split: each channel on its "
                                                     "own, with speaker turns and a call summary (docs/calls.md)")
    channel_names: str | list[str] | None = Field(None, description="channels=split: one name per channel "
                                                                     "(a list, or comma-separated); default "
                                                                     "left, right, ch2, ...")


class JobAccepted(Body):
    job_id: str
    status: JobState
    status_url: str = Field(description="GET it (with ?wait=S to block up to S seconds) for progress and result")


class Segment(Body):
    start: float = Field(description="seconds from the start of the file or stream")
    end: float
    emotion: str | None
    confidence: float | None
    scores: dict[str, float]


class Overall(Body):
    emotion: str | None
    confidence: float | None
    scores: dict[str, float] = Field(description="the segments' scores averaged with their durations as weights")
    speech_s: float


class LongformResult(Body):
    segments: list[Segment] = Field(description="voiced segments (voice-activity detection), ≤ 30 s each")
    overall: Overall
    scores: list[list[float]] | None = Field(None, description="granularity frame: one row per 20 ms of the file")
    timestamps: list[float] | None = Field(None, description="granularity frame: start of each row, seconds")
    labels: list[str] = Field(description="label order of `scores` rows", examples=[list(LABELS)])
    duration_s: float
    model: str
    granularity: Granularity


class ChannelLongformResult(LongformResult, ChannelFields):
    """One channel of a channels=split job: exactly the timeline that channel alone gives as a mono file."""


class Turn(Body):
    """A speaker's turn: their voiced segments until another channel speaks (docs/calls.md)."""

    channel: int
    speaker: str = Field(description="the channel's name")
    start: float = Field(description="seconds from the start of the file")
    end: float
    emotion: str | None = Field(description="of the turn's segments' scores, weighted by duration")
    confidence: float | None
    scores: dict[str, float]


class Overlap(Body):
    """A stretch where two or more channels speak at once."""

    start: float
    end: float
    channels: list[int]
    speakers: list[str]


class SpeakerSummary(Body):
    channel: int
    speaker: str
    speech_s: float = Field(description="seconds of voiced segments")
    emotion_share: dict[str, float] = Field(description="share of speech_s whose segments had each emotion (sums to 1)")
    first_angry_s: float | None = Field(description="start of the first segment heard as angry; null if none")
    start_emotion: str | None = Field(description="the emotion of the speaker's first turn")
    end_emotion: str | None = Field(description="the emotion of the speaker's last turn")


class CallSummary(Body):
    speakers: list[SpeakerSummary]
    start_emotion: str | None = Field(description="the emotion of the call's first turn")
    start_speaker: str | None
    end_emotion: str | None = Field(description="the emotion of the call's last turn")
    end_speaker: str | None
    overlap_s: float = Field(description="seconds with two or more speakers at once")


class SplitLongformResult(Body):
    """channels=split: one timeline per channel, and the call they make together."""

    channels: list[ChannelLongformResult]
    turns: list[Turn] = Field(description="who spoke when, in order of start")
    overlaps: list[Overlap]
    summary: CallSummary
    labels: list[str] = Field(examples=[list(LABELS)])
    duration_s: float
    model: str
    granularity: Granularity


class JobError(Body):
    code: str = Field(description="the code a request with this file would get (error table of docs/API.md)")
    message: str
    details: ErrorDetails | None = None


class JobOptions(Body):
    granularity: Granularity
    return_embedding: bool
    channels: ChannelMode = "mix"
    channel_names: list[str] | None = None


class JobStatus(Body):
    job_id: str
    status: JobState
    progress: float = Field(ge=0, le=1)
    result: SplitLongformResult | LongformResult | None
    error: JobError | None
    upload_id: str
    options: JobOptions
    created_at: str | None
    started_at: str | None
    finished_at: str | None


# ---- WebSocket /v1/stream: server → client (the client sends binary PCM16 and the text "end") ----


class FramesMessage(Body):
    type: Literal["frames"]
    start: float = Field(description="seconds of the first row's frame; rows follow every 20 ms")
    scores: list[list[float]] = Field(description="one row of probabilities per 20 ms frame, in label order")


class UtteranceMessage(Segment):
    """A voiced segment, sent once its trailing pause is long enough (or at end)."""

    type: Literal["utterance"]


class StreamError(ErrorDetail):
    """An error; the stream goes on unless a close follows (code 4000 + the code's HTTP status)."""

    type: Literal["error"]


class StreamEnd(Body):
    """The last message after the client's "end" (or after the duration or idle limit)."""

    type: Literal["end"]


StreamMessage = Annotated[FramesMessage | UtteranceMessage | StreamError | StreamEnd, Field(discriminator="type")]
STREAM_MESSAGE: TypeAdapter[FramesMessage | UtteranceMessage | StreamError | StreamEnd] = TypeAdapter(StreamMessage)
