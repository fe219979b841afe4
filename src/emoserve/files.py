"""File helpers: checksums (the client and the upload store hash whole files of any size, and compare
the checksums clients send), and the durable writes and removals of the upload store and job runner."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import shutil
import time
from pathlib import Path

from .errors import InvalidParameterError

HASH_BLOCK = 1 << 20  # bytes read per step: memory stays flat whatever the file's size
STALE_TEMP_S = 3600  # a temp file this old is left from a crash, not a write in flight


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def digest_matches(expected: str, algorithm: str, data_digest: bytes) -> bool:
    """Compare a client's checksum, hex or base64 (Content-MD5, tus Upload-Checksum), with ours."""
    expected = expected.strip()
    try:
        given = bytes.fromhex(expected) if len(expected) == 2 * len(data_digest) else \
            base64.b64decode(expected, validate=True)
    except (ValueError, binascii.Error) as e:
        raise InvalidParameterError(f"the {algorithm} checksum {expected[:100]!r} is neither hex nor base64") from e
    return secrets.compare_digest(given, data_digest)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write to a unique temp file, fsync, rename over `path`, fsync the directory: all or nothing."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def remove_path(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return 1


def remove_stale_temps(directory: Path) -> int:
    """Temp files of chunk writes that a crash interrupted (an hour old: no write in flight takes that long)."""
    removed = 0
    if directory.is_dir():
        for temp in directory.glob(".*.tmp"):
            if time.time() - temp.stat().st_mtime > STALE_TEMP_S:
                removed += remove_path(temp)
    return removed
