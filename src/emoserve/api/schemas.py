"""Response bodies of the API as pydantic models: they are the OpenAPI schema users read at /docs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..labels import LABELS


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")  # an error may carry more details (e.g. max_bytes)

    code: str = Field(description="snake_case error code; see the error table in docs/API.md")
    message: str = Field(description="what went wrong and what to do")
    missing: list[int] | None = Field(None, description="upload_incomplete: the chunk indexes still to send")
    offset: int | None = Field(None, description="upload_incomplete / conflict of a tus upload: its offset")
    expected_size: int | None = Field(None, description="conflict: the size this chunk must have")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["healthy", "loading", "failed"]
    model: str
    granularity_supported: list[str] = ["utterance", "frame"]
    weights: str | None = Field(None, description='"random" for the random:* test models')
    error: str | None = Field(None, description="why the model failed to load (status failed)")


class Liveness(BaseModel):
    status: Literal["alive"] = "alive"


class Readiness(BaseModel):
    status: Literal["ready", "loading", "failed", "stopping"]
    model: str
    error: str | None = Field(None, description="why the model failed to load (status failed)")


class ModelDescription(BaseModel):
    name: str
    labels: list[str]
    sample_rate: int
    frame_rate: int
    embedding_dim: int
    device: str
    dtype: str
    weights: str
    parameters: int
    min_samples: int


class ModelsList(BaseModel):
    models: list[ModelDescription]


class UtteranceResult(BaseModel):
    emotion: str | None = Field(description="top label for the clip (null for a model without emotion head)")
    confidence: float | None
    scores: dict[str, float] = Field(description="label → probability")
    duration_s: float
    model: str
    granularity: Literal["utterance"] = "utterance"
    embedding_npy_b64: str | None = Field(None, description="with Accept: application/json and return_embedding")
    processed_audio_wav_b64: str | None = Field(
        None, description="with Accept: application/json and return_processed_audio")


class FrameResult(BaseModel):
    emotion: str | None = Field(description="top label for the whole clip")
    confidence: float | None
    scores: list[list[float]] = Field(description="one row of probabilities per 20 ms frame, in `labels` order")
    timestamps: list[float] = Field(description="start of each frame in seconds")
    labels: list[str]
    utterance_scores: dict[str, float] = Field(description="label → probability for the whole clip")
    duration_s: float
    model: str
    granularity: Literal["frame"] = "frame"
    embedding_npy_b64: str | None = None
    processed_audio_wav_b64: str | None = None


# ---- long audio: uploads and jobs (routes_uploads, routes_jobs, routes_tus) ----

UploadState = Literal["uploading", "complete", "expired"]
JobState = Literal["queued", "running", "succeeded", "failed"]
Granularity = Literal["utterance", "frame"]


class UploadInit(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # sizes are JSON integers, not "12", 12.0 or true

    filename: str | None = Field(None, max_length=4096, description="shown back to you; never a path on the server")
    total_size: int = Field(gt=0, description="bytes of the whole file (≤ the server's limit, 2 GB by default)")
    chunk_size: int | None = Field(None, gt=0, description="bytes per chunk, ≤ 5 MB (the default); every chunk but "
                                                           "the last has exactly this size")
    sha256: str | None = Field(None, pattern="^[0-9a-fA-F]{64}$",
                               description="the whole file's SHA-256, checked when the upload is completed")


class UploadStatus(BaseModel):
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


class ChunkReceived(BaseModel):
    index: int
    size: int


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    upload_id: str = Field(description="a chunked or tus upload")
    granularity: Granularity = Field("utterance", description="segments only, or also one row of scores per 20 ms "
                                                              "over the whole file")
    return_embedding: bool = Field(False, description="keep the embedding for GET /v1/jobs/{id}/embedding.npy")
    callback_url: str | None = Field(None, max_length=2048,
                                     description="http(s) URL that receives the final job JSON by POST")


class JobAccepted(BaseModel):
    job_id: str
    status: JobState
    status_url: str = Field(description="GET it (with ?wait=S to block up to S seconds) for progress and result")


class Segment(BaseModel):
    start: float
    end: float
    emotion: str | None
    confidence: float | None
    scores: dict[str, float]


class Overall(BaseModel):
    emotion: str | None
    confidence: float | None
    scores: dict[str, float] = Field(description="the segments' scores averaged with their durations as weights")
    speech_s: float


class LongformResult(BaseModel):
    segments: list[Segment] = Field(description="voiced segments (voice-activity detection), ≤ 30 s each")
    overall: Overall
    scores: list[list[float]] | None = Field(None, description="granularity frame: one row per 20 ms of the file")
    timestamps: list[float] | None = Field(None, description="granularity frame: start of each row, seconds")
    labels: list[str] = Field(description="label order of `scores` rows", examples=[list(LABELS)])
    duration_s: float
    model: str
    granularity: Granularity


class JobError(BaseModel):
    code: str
    message: str
    details: dict | None = None


class JobStatus(BaseModel):
    job_id: str
    status: JobState
    progress: float = Field(ge=0, le=1)
    result: LongformResult | None
    error: JobError | None
    upload_id: str
    options: dict = Field(description="granularity and return_embedding")
    created_at: str | None
    started_at: str | None
    finished_at: str | None


ERROR_RESPONSES = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "bad input: empty_audio, unsupported_format, corrupt_audio, invalid_parameter, too_short",
        401: "unauthorized: API keys are configured and none or a wrong one was sent",
        413: "audio_too_long or payload_too_large: use the upload API",
        429: "rate_limited: wait Retry-After seconds",
        503: "model_loading or overloaded: retry after Retry-After seconds",
    }.items()
}
UPLOAD_ERROR_RESPONSES = {
    **ERROR_RESPONSES,
    **{status: {"model": ErrorBody, "description": description} for status, description in {
        400: "invalid_parameter or checksum_mismatch",
        404: "not_found: no such upload or job (ids are 32 lowercase hex digits)",
        409: "upload_incomplete (the body lists `missing` chunks or the tus `offset`) or conflict",
        410: "upload_expired: its data was removed; upload again",
        429: "quota_exceeded (too many uploads in flight) or rate_limited: wait Retry-After seconds",
    }.items()},
}
