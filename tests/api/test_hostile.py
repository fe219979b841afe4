"""A corpus of bad files and bad form fields: each gets its 4xx JSON; the server keeps answering."""

import io
import struct

import numpy as np
import soundfile as sf

from ..samples import noise, sweep, wav_bytes
from .test_app import post


def truncated(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


def wav_header_lying_about_size() -> bytes:
    data = bytearray(wav_bytes(noise(16000)))
    struct.pack_into("<I", data, 40, 0x7FFFFFF0)  # data chunk claims 2 GB
    return bytes(data)


def flac_bytes(samples, rate=16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="FLAC")
    return buffer.getvalue()


def zip_bomb_like_flac() -> bytes:
    """Silence compresses to almost nothing: 10 minutes of it is a few kB of FLAC."""
    return flac_bytes(np.zeros(16000 * 600, np.float32))


BAD_FILES = {
    "empty": b"",
    "one byte": b"\x00",
    "text": b"hello world, not audio",
    "html": b"<html><body>upload</body></html>",
    "png magic": b"\x89PNG\r\n\x1a\n" + bytes(100),
    "riff without wave": b"RIFF\x24\x00\x00\x00JUNK" + bytes(64),
    "wav header only": wav_bytes(noise(16000))[:44],
    "truncated wav": truncated(wav_bytes(noise(16000)), 0.01),
    "truncated flac": truncated(flac_bytes(sweep(1.0)), 0.3),
    "lying wav header": wav_header_lying_about_size(),
    "silent flac bomb": zip_bomb_like_flac(),
    "nan float wav": wav_bytes(np.array([0.1, np.nan] * 8000, np.float32), subtype="FLOAT"),
    "inf float wav": wav_bytes(np.array([0.1, np.inf] * 8000, np.float32), subtype="FLOAT"),
    "too short": wav_bytes(noise(100)),
    "random bytes": np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes(),
}

BAD_FIELDS = [
    {"granularity": "FRAME; DROP TABLE"},
    {"granularity": "x" * 10_000},
    {"return_embedding": "2"},
    {"return_processed_audio": "tru"},
    {"audio": "wrong field name"},
]


def test_every_bad_file_gets_a_4xx_json(client):
    for name, data in BAD_FILES.items():
        response = post(client, data)
        assert 400 <= response.status_code < 500, f"{name}: {response.status_code} {response.text[:200]}"
        error = response.json()["error"]
        assert error["code"] and error["message"], name
    assert client.get("/health").status_code == 200


def test_every_bad_field_gets_a_4xx_json(client):
    for fields in BAD_FIELDS:
        response = post(client, wav_bytes(noise(16000)), **fields)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_parameter", fields
    assert client.get("/health").status_code == 200


def test_the_silent_bomb_is_refused_as_too_long(client):
    response = post(client, BAD_FILES["silent flac bomb"])
    assert response.status_code == 413 and response.json()["error"]["code"] == "audio_too_long"
