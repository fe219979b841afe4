"""A full disk as a typed refusal: ENOSPC, EDQUOT and SQLite's "disk is full" become 507 `insufficient_storage`.

Shared by the store and the body receivers, which write to the same data dir.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InsufficientStorageError

FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


DISK_FULL = ("the server's disk is full: nothing more of this request was stored; retry later, and delete uploads "
             "you no longer need (DELETE /v1/upload/{id})")


@contextmanager
def storage_errors() -> Iterator[None]:
    """A full disk (ENOSPC, EDQUOT, SQLite's SQLITE_FULL) becomes a 507 that says what to do, never a 500."""
    try:
        yield
    except OSError as e:
        if e.errno not in FULL_DISK_ERRNOS:
            raise
        raise InsufficientStorageError(DISK_FULL) from e
    except sqlite3.OperationalError as e:
        if getattr(e, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
            raise
        raise InsufficientStorageError(DISK_FULL) from e


def free_bytes(path: Path) -> int:
    """Bytes free for us on the file system that holds `path`."""
    return shutil.disk_usage(path).free

