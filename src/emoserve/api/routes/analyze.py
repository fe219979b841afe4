"""POST /v1/analyze: one clip → its emotion (utterance or per 20 ms frame), embedding, processed audio.

The body is parsed as a stream: the byte limit is enforced while it arrives (spooled to a temp
file), never after reading it whole into memory.
"""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from collections.abc import AsyncIterator

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ...audio import processed_wav
from ...errors import AudioError, InvalidParameterError
from ...inference.results import (
    CHANNEL_MODES,
    GRANULARITIES,
    ChannelResult,
    EmotionResult,
    SplitResult,
    channel_names,
    check_channel_mode,
    parse_channel_names,
)
from ..deps import run_until_disconnect, service_of
from ..errors import ANALYZE_ERRORS
from ..negotiation import negotiate
from ..numbers import declared_length

router = APIRouter()

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small fields around the file
FIELDS = ("audio_file", "granularity", "return_embedding", "return_processed_audio", "channels", "channel_names")
TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}
BINARY_ANSWERS = ("multipart/mixed", "application/json")  # with an embedding or audio: multipart unless JSON wins

ANALYZE_FORM = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["audio_file"],
            "properties": {
                "audio_file": {"type": "string", "format": "binary",
                               "description": "wav, flac, ogg/vorbis, opus, mp3, m4a/aac, webm; ≤ 30 s, ≤ 10 MB"},
                "granularity": {"type": "string", "enum": list(GRANULARITIES), "default": "utterance"},
                "return_embedding": {"type": "boolean", "default": False,
                                     "description": "also return the embedding .npy: (D,) or (T, D) float32"},
                "return_processed_audio": {"type": "boolean", "default": False,
                                           "description": "also return the 16 kHz mono PCM16 WAV the model heard"},
                "channels": {"type": "string", "enum": list(CHANNEL_MODES), "default": "mix",
                             "description": "split: each channel on its own (a stereo call), answered as "
                                            "SplitAnalyzeResult; embeddings and processed audio per channel"},
                "channel_names": {"type": "string", "examples": ["agent,customer"],
                                  "description": "channels=split: comma-separated, one per channel; default "
                                                 "left,right, then ch2, ch3, ..."},
            }}}},
    }
}


def parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise InvalidParameterError(f"{name} must be true/false/1/0/yes/no, got {value[:40]!r}")


async def limited_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise AudioError(f"the request body exceeds {limit} bytes; send long audio with /v1/upload/*",
                             code="payload_too_large")
        yield chunk


async def read_form(request: Request, max_bytes: int) -> tuple[UploadFile, dict[str, str]]:
    """The audio file (spooled to disk past 1 MB) and the text fields, checked against the limits."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidParameterError("send multipart/form-data with the audio in a field named audio_file")
    limit = max_bytes + FORM_OVERHEAD
    declared = declared_length(request.headers)
    if declared is not None and declared > limit:
        raise AudioError(f"the upload is {declared} bytes; the limit is {max_bytes} bytes for one request. "
                         "Use the upload API (/v1/upload/*) for larger files", code="payload_too_large")
    parser = MultiPartParser(request.headers, limited_stream(request, limit), max_files=1, max_fields=len(FIELDS))
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise InvalidParameterError(f"malformed multipart body: {e.message}") from e
    unknown = sorted(set(form.keys()) - set(FIELDS))
    if unknown:
        raise InvalidParameterError(f"unknown field(s) {', '.join(unknown)}; fields are {', '.join(FIELDS)}")
    audio = form.get("audio_file")
    if audio is None:
        raise InvalidParameterError("the audio_file field is missing")
    if not isinstance(audio, UploadFile):
        raise InvalidParameterError("audio_file must be a file part (filename=...), not a text field")
    if not audio.size:
        raise AudioError("the audio file is empty (0 bytes)", code="empty_audio")
    if audio.size > max_bytes:
        raise AudioError(f"the audio is {audio.size} bytes; the limit is {max_bytes} bytes for one request. "
                         "Use the upload API (/v1/upload/*) for larger files", code="payload_too_large")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if any(not isinstance(form.get(k, ""), str) for k in FIELDS[1:]):
        raise InvalidParameterError("granularity and the return_* options must be text fields")
    return audio, fields


@router.post("/v1/analyze", openapi_extra=ANALYZE_FORM, summary="Emotion of one clip",
             responses={200: {"description": "the result; multipart/mixed with .npy/.wav parts when asked for",
                              "content": {"application/json": {"schema": {
                                  "$ref": "#/components/schemas/AnalyzeResult"}},
                                  "multipart/mixed": {}}},
                        **ANALYZE_ERRORS})
async def analyze(request: Request) -> Response:
    """Analyse one clip (≤ 30 s, ≤ 10 MB by default). See docs/API.md for the result formats."""
    service = service_of(request)
    engine = service.ready_engine()
    limits = service.settings.server
    audio, fields = await read_form(request, limits.max_bytes)
    granularity = fields.get("granularity", "utterance").strip() or "utterance"
    if granularity not in GRANULARITIES:
        raise InvalidParameterError(f"granularity must be utterance or frame, got {granularity[:40]!r}")
    want_embedding = parse_bool("return_embedding", fields.get("return_embedding", "false"))
    want_audio = parse_bool("return_processed_audio", fields.get("return_processed_audio", "false"))
    split = check_channel_mode(fields.get("channels", "mix").strip() or "mix") == "split"
    names = parse_channel_names(fields.get("channel_names"))

    try:
        engine.check_capacity()  # a full queue refuses before decoding (after the body: the client reads the 503)
        waveform = await engine.decode(audio.file, max_seconds=limits.max_duration_s, max_bytes=limits.max_bytes,
                                       split=split)
    finally:
        await audio.close()
    request.state.audio_seconds = waveform.shape[-1] / 16000
    if split:
        named = channel_names(names, len(waveform))  # before queueing: a wrong count is the caller's to fix
        results = await run_until_disconnect(request, asyncio.gather(*(  # queued together: batched together
            engine.submit(row, granularity=granularity, return_embedding=want_embedding) for row in waveform)))
        if results is None:
            return Response(status_code=499)
        split_result = SplitResult([ChannelResult(k, name, r) for k, (name, r) in enumerate(zip(named, results))],
                                   round(waveform.shape[1] / 16000, 6), results[0].model)
        extras = [(npy_bytes(r.embedding) if want_embedding else None, processed_wav(row) if want_audio else None)
                  for r, row in zip(results, waveform, strict=True)]
        return render_split(request, split_result, extras)
    result = await run_until_disconnect(request, engine.submit(waveform, granularity=granularity,
                                                               return_embedding=want_embedding))
    if result is None:
        return Response(status_code=499)  # the client went away; nobody reads this
    embedding = npy_bytes(result.embedding) if want_embedding else None
    wav = processed_wav(waveform) if want_audio else None
    return render(request, result, embedding, wav)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def wants_json(request: Request) -> bool:
    """JSON (binary parts as base64) when the client's Accept, q-values weighed, prefers it to multipart."""
    return negotiate(request.headers.get("accept"), BINARY_ANSWERS) == "application/json"


def inlined(body, embedding: bytes | None, wav: bytes | None):
    """The body with the binary parts in it as base64 (JSON mode)."""
    inline = {"embedding_npy_b64": embedding, "processed_audio_wav_b64": wav}
    return body.model_copy(update={name: base64.b64encode(data).decode() for name, data in inline.items()
                                   if data is not None})


def binary_parts(embedding: bytes | None, wav: bytes | None, suffix: str = "") -> list[tuple[str, str, bytes]]:
    """The multipart parts: embedding{suffix}.npy and processed{suffix}.wav, where asked for."""
    parts = []
    if embedding is not None:
        parts.append(("application/x-npy", f"embedding{suffix}.npy", embedding))
    if wav is not None:
        parts.append(("audio/wav", f"processed{suffix}.wav", wav))
    return parts


def render(request: Request, result: EmotionResult, embedding: bytes | None, wav: bytes | None) -> Response:
    body = result.to_wire()
    headers = {"X-Embedding-Size": str(len(embedding))} if embedding is not None else {}
    if (embedding is None and wav is None) or wants_json(request):
        return Response(inlined(body, embedding, wav).to_json(), media_type="application/json", headers=headers)
    return multipart_response([("application/json", None, body.to_json()), *binary_parts(embedding, wav)], headers)


def render_split(request: Request, result: SplitResult, extras: list[tuple[bytes | None, bytes | None]]) -> Response:
    """channels=split: base64 parts inside each channel's entry (JSON), or parts named embedding-K and
    processed-K (multipart/mixed), K the channel index."""
    body = result.to_wire()
    if all(e is None and w is None for e, w in extras) or wants_json(request):
        entries = [inlined(entry, e, w) for entry, (e, w) in zip(body.channels, extras, strict=True)]
        return Response(body.model_copy(update={"channels": entries}).to_json(), media_type="application/json")
    parts = [("application/json", None, body.to_json())]
    for k, (embedding, wav) in enumerate(extras):
        parts += binary_parts(embedding, wav, f"-{k}")
    return multipart_response(parts, {})


def multipart_response(parts: list[tuple[str, str | None, bytes]], headers: dict[str, str]) -> Response:
    boundary = uuid.uuid4().hex
    return Response(multipart_mixed(parts, boundary), media_type=f"multipart/mixed; boundary={boundary}",
                    headers=headers)


def multipart_mixed(parts: list[tuple[str, str | None, bytes]], boundary: str) -> bytes:
    out = io.BytesIO()
    for content_type, filename, payload in parts:
        out.write(f"--{boundary}\r\nContent-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n".encode())
        if filename:
            out.write(f'Content-Disposition: attachment; name="{filename.split(".")[0]}"; '
                      f'filename="{filename}"\r\n'.encode())
        out.write(b"\r\n" + payload + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()
