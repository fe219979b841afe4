"""Request bodies on their way to disk, piece by piece: a chunk of a chunked upload, and a tus PATCH.

Neither holds a body whole in memory; both leave nothing behind when a body is cut short, refused
or meets a full disk. The store hands them out (`Store.receive_chunk`, `Store.tus_appender`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
from contextlib import suppress
from typing import TYPE_CHECKING

from ..errors import ChecksumMismatchError, ConflictError, NotFoundError, PayloadTooLargeError
from ..files import digest_matches, fsync_dir
from .disk import storage_errors

if TYPE_CHECKING:
    from .records import Upload
    from .store import Store


class ChunkReceiver:
    """One chunk on its way to disk: written and hashed piece by piece as it arrives, never held whole.

    The bytes go to a temp file that becomes chunk N only once it has exactly the chunk's size,
    matches the checksums given and is fsynced; a body cut short, too long, timed out or refused
    by a full disk leaves nothing (`close` removes the temp file).
    """

    def __init__(self, store: Store, upload: Upload, index: int, *, md5: str | None, sha256: str | None):
        self.store, self.upload_id, self.index = store, upload.upload_id, index
        self.chunk_size = upload.chunk_size
        self.expected = min(upload.chunk_size, upload.total_size - index * upload.chunk_size)
        self.md5, self.sha256 = md5, sha256
        self.md5_digest = hashlib.md5() if md5 is not None else None
        self.sha256_digest = hashlib.sha256()
        self.size = 0
        self.path = store.chunk_path(upload.upload_id, index)
        self.temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        with storage_errors():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.temp, "wb")  # noqa: SIM115 (open while the body arrives; closed by close)

    def __enter__(self) -> ChunkReceiver:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def write(self, data: bytes) -> None:
        """The next piece of the body; refused as soon as the body is longer than the chunk."""
        size = self.size + len(data)
        if size > self.chunk_size:
            raise PayloadTooLargeError(f"a chunk of this upload carries at most {self.chunk_size} bytes",
                                       details={"max_bytes": self.chunk_size})
        if size > self.expected:
            raise ConflictError(f"chunk {self.index} must be {self.expected} bytes; got more",
                                details={"index": self.index, "expected_size": self.expected})
        with storage_errors():
            self.file.write(data)
        self.size = size
        self.sha256_digest.update(data)
        if self.md5_digest is not None:
            self.md5_digest.update(data)

    def commit(self) -> dict:
        """The whole body arrived: check it, make it chunk N durably, record it; the acknowledgement."""
        if self.size != self.expected:
            raise ConflictError(f"chunk {self.index} must be {self.expected} bytes; got {self.size}",
                                details={"index": self.index, "expected_size": self.expected})
        details = {"index": self.index}
        if self.md5_digest is not None and not digest_matches(self.md5, "MD5", self.md5_digest.digest()):
            raise ChecksumMismatchError(f"chunk {self.index} does not match its MD5: re-send it", details=details)
        if self.sha256 is not None and not digest_matches(self.sha256, "SHA-256", self.sha256_digest.digest()):
            raise ChecksumMismatchError(f"chunk {self.index} does not match its SHA-256: re-send it", details=details)
        with storage_errors():
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.temp, self.path)
            fsync_dir(self.path.parent)
        self.store.record_chunk(self.upload_id, self.index, self.size, self.sha256_digest.hexdigest())
        return {"index": self.index, "size": self.size}

    def close(self) -> None:
        """Whatever was not committed goes: no temp file outlives its request."""
        with suppress(OSError):  # closing flushes: on a full disk that fails, the file goes anyway
            self.file.close()
        self.temp.unlink(missing_ok=True)


class TusAppender:
    """One tus PATCH body appended at the upload's offset as it arrives; the offset moves only over fsynced bytes.

    One at a time per upload: an exclusive lock (flock, across threads and processes) on the
    upload's lock file; a second PATCH meanwhile gets 409 instead of interleaving bytes. Without a
    checksum the offset is committed every `max_chunk_bytes` and at the end, so a dropped or stalled
    connection keeps what arrived; with one, only at the end and only if the bytes match. Bytes past
    the committed offset are cut off by `close` (and by the next appender, after a crash).
    """

    def __init__(self, store: Store, upload_id: str, offset: int, checksum: tuple[str, str] | None):
        self.store, self.upload_id = store, upload_id
        self.checksum = checksum
        self.digest = hashlib.new(checksum[0].lower()) if checksum is not None else None
        self.sync_bytes = store.config.upload_max_chunk_bytes
        directory = store.upload_dir(upload_id)
        self.part_path = directory / "data.part"
        try:
            with storage_errors():
                self.lock_file = open(directory / ".lock", "ab")  # noqa: SIM115 (held while the body arrives)
        except FileNotFoundError:
            raise NotFoundError(f"upload {upload_id} was deleted") from None
        self.file = None
        self.committed = self.offset = offset
        try:
            try:
                fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConflictError(f"another PATCH to upload {upload_id} is in progress: HEAD it once that one "
                                    "ends, and resume from its offset") from None
            upload = store.writable_upload(upload_id, "tus")  # again, now that nobody else appends
            if offset != upload.received_bytes:
                raise ConflictError(f"Upload-Offset is {upload.received_bytes}, not {offset}",
                                    details={"offset": upload.received_bytes})
            self.total_size = upload.total_size
            with storage_errors():
                self.file = os.fdopen(os.open(self.part_path, os.O_RDWR | os.O_CREAT, 0o600), "r+b")
                self.file.truncate(offset)  # a crash's bytes past the committed offset
                self.file.seek(offset)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> TusAppender:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def write(self, data: bytes) -> None:
        """The next piece of the body; refused past the upload's length, or once the upload was deleted."""
        if self.offset + len(data) > self.total_size:
            raise PayloadTooLargeError(f"the body overruns the upload's length {self.total_size} at offset "
                                       f"{self.offset}")
        if os.fstat(self.file.fileno()).st_nlink == 0:
            raise NotFoundError(f"upload {self.upload_id} was deleted while bytes arrived")
        self.store.check_free_space(len(data))
        with storage_errors():
            self.file.write(data)
        self.offset += len(data)
        if self.digest is not None:
            self.digest.update(data)
        elif self.offset - self.committed >= self.sync_bytes:
            self.commit()

    def commit(self) -> None:
        with storage_errors():
            self.file.flush()
            os.fsync(self.file.fileno())
        self.store.commit_offset(self.upload_id, self.committed, self.offset)
        self.committed = self.offset

    def finish(self) -> int:
        """The whole body arrived: check its checksum, commit, complete the upload when full; the new offset."""
        if self.digest is not None and not digest_matches(self.checksum[1], self.checksum[0],
                                                          self.digest.digest()):
            raise ChecksumMismatchError(f"the {self.offset - self.committed} bytes do not match their "
                                        f"{self.checksum[0]} checksum: nothing was stored; send them again")
        if self.offset != self.committed:
            self.commit()
        if self.committed == self.total_size:
            with self.store.upload_lock(self.upload_id):
                self.store.finish_tus(self.upload_id)
        return self.committed

    def keep_what_arrived(self) -> None:
        """The body was cut short (a drop, a timeout): bytes without a checksum to match are kept."""
        if self.digest is None:
            self.finish()

    def close(self) -> None:
        """Cut off what was not committed and let the next PATCH in."""
        if self.file is not None:
            with suppress(OSError):  # closing flushes: on a full disk that fails, the file closes anyway
                self.file.close()
            if self.offset != self.committed:
                with suppress(OSError):
                    os.truncate(self.part_path, self.committed)
        self.lock_file.close()  # releases the flock

