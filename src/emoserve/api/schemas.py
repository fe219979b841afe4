"""Response bodies of the API as pydantic models: they are the OpenAPI schema users read at /docs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="snake_case error code; see the error table in docs/API.md")
    message: str = Field(description="what went wrong and what to do")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["healthy", "loading", "failed"]
    model: str
    granularity_supported: list[str] = ["utterance", "frame"]
    weights: str | None = Field(None, description='"random" for the random:* test models')
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
