"""Encoded input (bytes, paths, file objects) → one seekable view, its size checked before any decoding."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import AudioError
from .refusals import too_large

AudioSource = bytes | bytearray | memoryview | str | Path | BinaryIO | np.ndarray

HEAD_BYTES = 4096  # read once up front: the format's magic, and usually every WAV chunk header
READ_BYTES = 1 << 20  # chunk size when reading a stream that cannot seek


@dataclass
class EncodedInput:
    file: BinaryIO  # seekable, starts at offset 0
    size: int
    head: bytes
    buffer: memoryview | None  # the whole input when it is in memory
    path: str | None  # when it is a file on disk (libsndfile reads it natively)


@contextmanager
def open_input(source: AudioSource, max_bytes: int | None) -> Iterator[EncodedInput]:
    """A seekable view of the input whose size is checked before any decoding."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield in_memory(bytes(source) if not isinstance(source, bytes) else source, max_bytes)
    elif isinstance(source, (str, Path)):
        try:
            file = open(source, "rb")  # noqa: SIM115 (closed by the with below, after the checks)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise AudioError(f"no such audio file: {source}", code="not_found") from e
        with file:
            size = os.fstat(file.fileno()).st_size
            check_size(size, max_bytes)
            yield EncodedInput(file, size, file.read(HEAD_BYTES), None, str(source))
    elif hasattr(source, "read"):
        yield from_file_object(source, max_bytes)
    else:
        raise TypeError(f"audio must be bytes, a path, a binary file object or a numpy array, not {type(source)}")


def check_size(size: int, max_bytes: int | None) -> None:
    if size == 0:
        raise AudioError("the audio is empty (0 bytes): send a recording", code="empty_audio")
    if max_bytes is not None and size > max_bytes:
        raise too_large(size, max_bytes)


def in_memory(data: bytes, max_bytes: int | None) -> EncodedInput:
    check_size(len(data), max_bytes)
    return EncodedInput(io.BytesIO(data), len(data), data[:HEAD_BYTES], memoryview(data), None)


def from_file_object(file: BinaryIO, max_bytes: int | None) -> EncodedInput:
    """A seekable file at its start is decoded in place (streamed); anything else is read once, up to the limit.

    A file object positioned past its start is decoded from where it stands.
    """
    seekable = getattr(file, "seekable", lambda: False)()
    if seekable and file.tell() == 0:
        size = file.seek(0, io.SEEK_END)
        file.seek(0)
        check_size(size, max_bytes)
        head = file.read(HEAD_BYTES)
        file.seek(0)
        return EncodedInput(file, size, head, None, None)
    chunks, size = [], 0
    while chunk := file.read(READ_BYTES):
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise too_large(size, max_bytes)
        chunks.append(chunk)
    return in_memory(b"".join(chunks), max_bytes)


def sniff(head: bytes) -> str | None:
    """The container the first bytes announce, or None."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"riff" and head[24:28] == b"wave":
        return "w64"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mp4"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "aac" if head[1] & 0x06 == 0 else "mp3"  # layer bits 00: ADTS AAC, else MPEG audio
    magic = {b"fLaC": "flac", b"OggS": "ogg", b"caff": "caf", b".snd": "au", b"ID3": "id3",
             b"\x1a\x45\xdf\xa3": "matroska", b"#!AMR": "amr", b"\x30\x26\xb2\x75": "asf"}
    return next((kind for prefix, kind in magic.items() if head.startswith(prefix)), None)


def read_at(data: EncodedInput, position: int, count: int) -> bytes:
    """Up to `count` bytes at `position`; fewer, or none, past the end (where damaged headers point)."""
    if not 0 <= position < data.size:
        return b""
    if position + count <= len(data.head):
        return data.head[position:position + count]
    if data.buffer is not None:
        return bytes(data.buffer[position:position + count])
    data.file.seek(position)
    return data.file.read(count)
