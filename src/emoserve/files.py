"""File helpers shared by the client and the upload store, which both hash whole files of any size."""

from __future__ import annotations

import hashlib
from pathlib import Path

HASH_BLOCK = 1 << 20  # bytes read per step: memory stays flat whatever the file's size


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
