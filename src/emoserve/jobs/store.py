"""Uploads and jobs that survive a restart: an embedded SQLite database (WAL) and files under the data dir.

    DATA_DIR/emoserve.sqlite3       uploads, received chunks, jobs (status, progress, result hash, error)
    DATA_DIR/uploads/ID/chunks/N    chunk N as received, fsynced before it is acknowledged
    DATA_DIR/uploads/ID/data        the assembled file (a tus upload grows in data.part, renamed when full)
    DATA_DIR/jobs/ID/               a job's result.json, embedding.npy, and its scratch space while it runs

The database says what was acknowledged; a file is written, fsynced and renamed into place before
its row is committed, so a crash (kill -9 included) never leaves an acknowledged chunk or a
finished result behind, and never shows a half-written file as received. Ids are 32 random hex
digits, checked against a strict pattern before a path is built from them; filenames users send
are kept as text and never become paths.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

from ..errors import (
    ChecksumMismatchError,
    ConflictError,
    InvalidParameterError,
    NotFoundError,
    PayloadTooLargeError,
    QuotaExceededError,
    UploadExpiredError,
    UploadIncompleteError,
)
from ..files import file_sha256

ID_PATTERN = re.compile(r"[0-9a-f]{32}")
MAX_CHUNKS = 10_000  # an upload's missing list stays small enough to send back
COPY_BLOCK = 1024 * 1024
STALE_TEMP_S = 3600  # a temp file this old is left from a crash, not a write in flight
RESULT_FILE = "result.json"

SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,                 -- chunked | tus
    filename TEXT NOT NULL,
    total_size INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,        -- 0 for tus
    chunk_count INTEGER NOT NULL,       -- 0 for tus
    sha256 TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    received_bytes INTEGER NOT NULL DEFAULT 0,  -- tus: the offset, bytes durably written
    state TEXT NOT NULL,                -- uploading | complete | expired
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    upload_id TEXT NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (upload_id, idx)
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    upload_id TEXT NOT NULL,
    options TEXT NOT NULL,
    status TEXT NOT NULL,               -- queued | running | succeeded | failed
    progress REAL NOT NULL DEFAULT 0,
    result_sha256 TEXT,                 -- of DATA_DIR/jobs/ID/result.json, the job's result; NULL without one
    error TEXT,
    callback_url TEXT,
    callback_state TEXT,                -- pending | delivered | failed; NULL without a callback_url
    callback_attempts INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, created_at);
"""

UPLOADING, COMPLETE, EXPIRED = "uploading", "complete", "expired"
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
FINISHED = (SUCCEEDED, FAILED)


def new_id() -> str:
    return secrets.token_hex(16)


def check_id(value: object, what: str) -> str:
    """An id from a URL, refused unless it is exactly what `new_id` makes (so it can name a directory)."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        shown = repr(value)[:80]
        raise NotFoundError(f"no {what} with id {shown}: ids are 32 lowercase hex digits")
    return value


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def clean_filename(name: str | None) -> str:
    """A display name: the last path component, printable, at most 255 characters."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    return name[:255] or "upload"


def digest_matches(expected: str, algorithm: str, data_digest: bytes) -> bool:
    """Compare a client's checksum, hex or base64 (Content-MD5, tus Upload-Checksum), with ours."""
    expected = expected.strip()
    try:
        given = bytes.fromhex(expected) if len(expected) == 2 * len(data_digest) else \
            base64.b64decode(expected, validate=True)
    except (ValueError, binascii.Error) as e:
        raise InvalidParameterError(f"the {algorithm} checksum {expected[:100]!r} is neither hex nor base64") from e
    return secrets.compare_digest(given, data_digest)


def json_bytes(value: object) -> bytes:
    """Compact UTF-8 JSON, byte for byte as Starlette's JSONResponse writes it: a stored result is sent as stored."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write to a unique temp file, fsync, rename over `path`, fsync the directory: all or nothing."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 2 * 1024**3
    max_chunk_bytes: int = 5 * 1024**2
    max_active: int = 64
    max_active_bytes: int = 20 * 1024**3
    expiry_s: float = 24 * 3600
    keep_completed_s: float = 24 * 3600
    keep_jobs_s: float = 7 * 24 * 3600

    @classmethod
    def from_settings(cls, settings) -> UploadLimits:
        return cls(max_bytes=settings.upload_max_bytes, max_chunk_bytes=settings.upload_max_chunk_bytes,
                   max_active=settings.upload_max_active, max_active_bytes=settings.upload_max_active_bytes,
                   expiry_s=settings.upload_expiry_s, keep_completed_s=settings.upload_keep_completed_s,
                   keep_jobs_s=settings.job_keep_s)


@dataclass(frozen=True)
class Upload:
    upload_id: str
    kind: str  # chunked | tus
    filename: str
    total_size: int
    chunk_size: int
    chunk_count: int
    sha256: str | None
    metadata: dict[str, str]
    received_bytes: int
    state: str
    created_at: float
    updated_at: float
    expires_at: float
    received: list[int] = field(default_factory=list)

    @property
    def missing(self) -> list[int]:
        have = set(self.received)
        return [i for i in range(self.chunk_count) if i not in have]

    @property
    def offset(self) -> int:
        """tus Upload-Offset: bytes durably received."""
        return self.received_bytes

    def to_dict(self) -> dict:
        """`GET /v1/upload/{id}`: what arrived and what is missing, the resume point after any crash."""
        return {"upload_id": self.upload_id, "filename": self.filename, "total_size": self.total_size,
                "chunk_size": self.chunk_size, "chunk_count": self.chunk_count, "received": self.received,
                "missing": self.missing, "received_bytes": self.received_bytes, "state": self.state,
                "sha256": self.sha256, "expires_at": iso(self.expires_at)}


@dataclass(frozen=True)
class Job:
    job_id: str
    upload_id: str
    options: dict
    status: str
    progress: float
    result_path: Path | None  # the result's JSON file, written once when the job succeeded
    result_sha256: str | None  # of that file, computed when it was written
    error: dict | None
    callback_url: str | None
    callback_state: str | None
    callback_attempts: int
    attempts: int
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @cached_property
    def result(self) -> dict | None:
        """The result, parsed on first use. Status reads, `GET /v1/jobs/{id}` and callbacks never parse it:
        they send the stored bytes (`json_parts`), as a long frame result is tens of MB of JSON."""
        if self.result_path is None:
            return None
        try:
            return json.loads(self.result_path.read_bytes())
        except FileNotFoundError as e:
            raise NotFoundError(f"job {self.job_id} was deleted") from e

    def to_dict(self) -> dict:
        """The job JSON of `GET /v1/jobs/{id}` and of the callback, as a dict."""
        return {**self.fields_before_result(), "result": self.result, **self.fields_after_result()}

    def json_parts(self) -> tuple[bytes, bytes]:
        """The job JSON around its result: `head + result file (or null) + tail` is `to_dict()` as compact JSON."""
        head, tail = json_bytes(self.fields_before_result()), json_bytes(self.fields_after_result())
        return head[:-1] + b',"result":', b"," + tail[1:]

    def fields_before_result(self) -> dict:
        return {"job_id": self.job_id, "status": self.status, "progress": self.progress}

    def fields_after_result(self) -> dict:
        return {"error": self.error, "upload_id": self.upload_id, "options": self.options,
                "created_at": iso(self.created_at), "started_at": iso(self.started_at),
                "finished_at": iso(self.finished_at)}


@dataclass(frozen=True)
class SweepReport:
    expired_uploads: int = 0
    deleted_uploads: int = 0
    deleted_jobs: int = 0
    removed_paths: int = 0


class Store:
    """The one owner of the data dir: thread-safe (one connection behind a lock; file I/O outside it)."""

    def __init__(self, data_dir: str | Path, limits: UploadLimits | None = None,
                 clock: Callable[[], float] = time.time):
        self.root = Path(data_dir).resolve()
        self.limits = limits or UploadLimits()
        self.clock = clock
        for sub in ("uploads", "jobs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.upload_locks: dict[str, threading.Lock] = {}
        self.db = sqlite3.connect(self.root / "emoserve.sqlite3", check_same_thread=False, isolation_level=None,
                                  timeout=30)
        self.db.row_factory = sqlite3.Row
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(SCHEMA)
        self.move_results_to_files()

    @classmethod
    def from_settings(cls, settings) -> Store:
        return cls(settings.data_dir, UploadLimits.from_settings(settings))

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: one writer at a time, across threads and processes, checks and writes together."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # ---- paths: only ever built from checked ids ----

    def upload_dir(self, upload_id: str) -> Path:
        return self.inside(self.root / "uploads" / check_id(upload_id, "upload"))

    def job_dir(self, job_id: str) -> Path:
        return self.inside(self.root / "jobs" / check_id(job_id, "job"))

    def upload_lock(self, upload_id: str) -> threading.Lock:
        """Serializes what must not interleave on one upload: tus appends, and completing."""
        with self.lock:
            return self.upload_locks.setdefault(check_id(upload_id, "upload"), threading.Lock())

    def inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise NotFoundError("that path is outside the data directory")
        return resolved

    def chunk_path(self, upload_id: str, index: int) -> Path:
        return self.upload_dir(upload_id) / "chunks" / str(int(index))

    def data_path(self, upload_id: str) -> Path:
        """The complete file of an upload (its bytes, whatever the client named it)."""
        return self.upload_dir(upload_id) / "data"

    # ---- uploads ----

    def create_upload(self, filename: str | None, total_size: int, chunk_size: int | None = None,
                      sha256: str | None = None) -> Upload:
        """`POST /v1/upload/init`: announce a file to be sent in chunks of `chunk_size` (≤ the chunk limit)."""
        chunk_size = self.limits.max_chunk_bytes if chunk_size is None else chunk_size
        if not isinstance(chunk_size, int) or not 0 < chunk_size <= self.limits.max_chunk_bytes:
            raise InvalidParameterError(
                f"chunk_size must be 1 to {self.limits.max_chunk_bytes} bytes; got {chunk_size!r}")
        self.check_total_size(total_size)
        chunk_count = math.ceil(total_size / chunk_size)
        if chunk_count > MAX_CHUNKS:
            raise InvalidParameterError(f"{chunk_count} chunks is more than {MAX_CHUNKS}: use larger chunks")
        if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise InvalidParameterError("sha256 must be the 64 hex digits of the whole file's SHA-256")
        return self.insert_upload("chunked", clean_filename(filename), total_size, chunk_size, chunk_count,
                                  sha256.lower() if sha256 else None, {})

    def create_tus_upload(self, total_size: int, metadata: dict[str, str] | None = None) -> Upload:
        """tus creation: one file that grows by appends at its offset (`append`)."""
        self.check_total_size(total_size)
        metadata = dict(metadata or {})
        return self.insert_upload("tus", clean_filename(metadata.get("filename")), total_size, 0, 0, None, metadata)

    def check_total_size(self, total_size: int) -> None:
        if not isinstance(total_size, int) or total_size <= 0:
            raise InvalidParameterError(f"total_size must be a positive number of bytes; got {total_size!r}")
        if total_size > self.limits.max_bytes:
            raise PayloadTooLargeError(f"{total_size} bytes is over the limit of {self.limits.max_bytes} per upload",
                                       details={"max_bytes": self.limits.max_bytes})

    def insert_upload(self, kind: str, filename: str, total_size: int, chunk_size: int, chunk_count: int,
                      sha256: str | None, metadata: dict) -> Upload:
        upload_id, now = new_id(), self.clock()
        with self.transaction() as db:
            active, active_bytes = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(total_size), 0) FROM uploads WHERE state = ?", (UPLOADING,)).fetchone()
            if active >= self.limits.max_active:
                raise QuotaExceededError(f"{active} uploads are in flight, the most allowed: finish or wait for one",
                                         details={"max_active": self.limits.max_active})
            if active_bytes + total_size > self.limits.max_active_bytes:
                raise QuotaExceededError(
                    f"uploads in flight hold {active_bytes} bytes; {total_size} more is over the limit of "
                    f"{self.limits.max_active_bytes}", details={"max_active_bytes": self.limits.max_active_bytes})
            db.execute("INSERT INTO uploads (id, kind, filename, total_size, chunk_size, chunk_count, sha256, metadata,"
                       " state, created_at, updated_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (upload_id, kind, filename, total_size, chunk_size, chunk_count, sha256, json.dumps(metadata),
                        UPLOADING, now, now, now + self.limits.expiry_s))
        (self.upload_dir(upload_id) / "chunks").mkdir(parents=True, exist_ok=True)
        return self.get_upload(upload_id)

    def get_upload(self, upload_id: str) -> Upload:
        check_id(upload_id, "upload")
        with self.lock:
            row = self.db.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no upload with id {upload_id}")
            received = [r[0] for r in self.db.execute(
                "SELECT idx FROM chunks WHERE upload_id = ? ORDER BY idx", (upload_id,))]
        return Upload(row["id"], row["kind"], row["filename"], row["total_size"], row["chunk_size"],
                      row["chunk_count"], row["sha256"], json.loads(row["metadata"]), row["received_bytes"],
                      row["state"], row["created_at"], row["updated_at"], row["expires_at"], received)

    def writable_upload(self, upload_id: str, kind: str) -> Upload:
        upload = self.get_upload(upload_id)
        if upload.state == EXPIRED:
            raise UploadExpiredError(f"upload {upload_id} expired and its data was removed: start a new upload")
        if upload.state != UPLOADING:
            raise ConflictError(f"upload {upload_id} is already complete")
        if upload.kind != kind:
            raise ConflictError(f"upload {upload_id} is a {upload.kind} upload, not {kind}")
        return upload

    def put_chunk(self, upload_id: str, index: int, data: bytes, *, md5: str | None = None,
                  sha256: str | None = None) -> dict:
        """`PUT /v1/upload/{id}/chunk/{n}`: store chunk n durably, then acknowledge; re-sending is harmless."""
        upload = self.writable_upload(upload_id, "chunked")
        if not isinstance(index, int) or not 0 <= index < upload.chunk_count:
            raise InvalidParameterError(f"chunk index must be 0 to {upload.chunk_count - 1}; got {index!r}")
        expected = min(upload.chunk_size, upload.total_size - index * upload.chunk_size)
        if len(data) > self.limits.max_chunk_bytes:
            raise PayloadTooLargeError(f"a chunk may carry at most {self.limits.max_chunk_bytes} bytes")
        if len(data) != expected:
            raise ConflictError(f"chunk {index} must be {expected} bytes; got {len(data)}",
                                details={"index": index, "expected_size": expected})
        digest = hashlib.sha256(data)
        if md5 is not None and not digest_matches(md5, "MD5", hashlib.md5(data).digest()):
            raise ChecksumMismatchError(f"chunk {index} does not match its MD5: re-send it", details={"index": index})
        if sha256 is not None and not digest_matches(sha256, "SHA-256", digest.digest()):
            raise ChecksumMismatchError(f"chunk {index} does not match its SHA-256: re-send it",
                                        details={"index": index})
        path = self.chunk_path(upload_id, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, data)
        now = self.clock()
        with self.transaction() as db:
            state = db.execute("SELECT state FROM uploads WHERE id = ?", (upload_id,)).fetchone()
            if state is None or state[0] == EXPIRED:
                raise UploadExpiredError(f"upload {upload_id} expired or was deleted while chunk {index} arrived")
            if state[0] != UPLOADING:
                raise ConflictError(f"upload {upload_id} was completed while chunk {index} arrived")
            db.execute("INSERT OR REPLACE INTO chunks (upload_id, idx, size, sha256) VALUES (?, ?, ?, ?)",
                       (upload_id, index, len(data), digest.hexdigest()))
            db.execute("UPDATE uploads SET updated_at = ?, expires_at = ? WHERE id = ?",
                       (now, now + self.limits.expiry_s, upload_id))
        return {"index": index, "size": len(data)}

    def complete_upload(self, upload_id: str) -> Upload:
        """Join the chunks into one file, streaming (never the whole file in memory), checking the sha256.

        Idempotent: completing a complete upload returns it. With chunks missing it refuses with
        the list, so the client knows exactly what to re-send.
        """
        with self.upload_lock(upload_id):
            return self.join_chunks(self.get_upload(upload_id))

    def join_chunks(self, upload: Upload) -> Upload:
        upload_id = upload.upload_id
        if upload.state == COMPLETE:
            return upload
        if upload.state == EXPIRED:
            raise UploadExpiredError(f"upload {upload_id} expired and its data was removed: start a new upload")
        if upload.kind == "tus":
            if upload.received_bytes < upload.total_size:
                raise UploadIncompleteError(
                    f"upload {upload_id} has {upload.received_bytes} of {upload.total_size} bytes",
                    details={"offset": upload.received_bytes})
            return self.finish_tus(upload_id)  # every byte arrived, a crash came before the rename
        missing = upload.missing
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            raise UploadIncompleteError(f"upload {upload_id} misses {len(missing)} chunk(s): {shown}; send them first",
                                        details={"missing": missing})
        target = self.data_path(upload_id)
        temp = target.with_name(f".data.{secrets.token_hex(4)}.tmp")
        whole = hashlib.sha256()
        try:
            with open(temp, "wb") as out:
                for index in range(upload.chunk_count):
                    with open(self.chunk_path(upload_id, index), "rb") as chunk:
                        while block := chunk.read(COPY_BLOCK):
                            whole.update(block)
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if upload.sha256 and whole.hexdigest() != upload.sha256:
                raise ChecksumMismatchError(
                    f"the joined file's SHA-256 is {whole.hexdigest()}, not {upload.sha256}: some chunk was corrupted;"
                    " re-send the chunks and complete again", details={"sha256": whole.hexdigest()})
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        fsync_dir(target.parent)
        self.mark_complete(upload_id, whole.hexdigest())
        shutil.rmtree(self.upload_dir(upload_id) / "chunks", ignore_errors=True)
        return self.get_upload(upload_id)

    def mark_complete(self, upload_id: str, sha256: str) -> None:
        """Only an upload still uploading completes: one the sweep expired meanwhile stays expired."""
        now = self.clock()
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE uploads SET state = ?, sha256 = ?, received_bytes = total_size, updated_at = ?, expires_at = ?"
                " WHERE id = ? AND state = ?",
                (COMPLETE, sha256, now, now + self.limits.keep_completed_s, upload_id, UPLOADING)).rowcount
        if not changed:
            raise UploadExpiredError(f"upload {upload_id} expired before it was complete: start a new upload")

    def append(self, upload_id: str, offset: int, data: bytes, *, checksum: tuple[str, str] | None = None) -> int:
        """tus PATCH: write `data` at `offset` (which must be the current one); returns the new offset.

        The bytes are fsynced before the offset moves; bytes past the committed offset (left by a
        crash mid-append) are cut off first. `checksum` is the tus (algorithm, base64 digest).
        """
        with self.upload_lock(upload_id):
            upload = self.writable_upload(upload_id, "tus")
            if offset != upload.received_bytes:
                raise ConflictError(f"Upload-Offset is {upload.received_bytes}, not {offset}",
                                    details={"offset": upload.received_bytes})
            if offset + len(data) > upload.total_size:
                raise PayloadTooLargeError(f"{len(data)} bytes at offset {offset} overrun the upload's length "
                                           f"{upload.total_size}")
            if checksum is not None:
                algorithm, value = checksum
                if algorithm.lower() not in ("md5", "sha1", "sha256"):
                    raise InvalidParameterError(f"checksum algorithm {algorithm!r}: use md5, sha1 or sha256")
                if not digest_matches(value, algorithm, hashlib.new(algorithm.lower(), data).digest()):
                    raise ChecksumMismatchError(f"the {len(data)} bytes at offset {offset} do not match their checksum")
            partial = self.upload_dir(upload_id) / "data.part"
            partial.touch(exist_ok=True)
            with open(partial, "r+b") as f:
                f.truncate(offset)
                f.seek(offset)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            new_offset = offset + len(data)
            now = self.clock()
            with self.transaction() as db:
                changed = db.execute("UPDATE uploads SET received_bytes = ?, updated_at = ?, expires_at = ?"
                                     " WHERE id = ? AND state = ?",
                                     (new_offset, now, now + self.limits.expiry_s, upload_id, UPLOADING)).rowcount
            if not changed:
                raise UploadExpiredError(f"upload {upload_id} expired while bytes arrived: start a new upload")
            if new_offset == upload.total_size:
                self.finish_tus(upload_id)
            return new_offset

    def finish_tus(self, upload_id: str) -> Upload:
        partial, target = self.upload_dir(upload_id) / "data.part", self.data_path(upload_id)
        if partial.exists():
            os.replace(partial, target)
            fsync_dir(target.parent)
        self.mark_complete(upload_id, file_sha256(target))
        return self.get_upload(upload_id)

    def delete_upload(self, upload_id: str) -> None:
        """tus termination, or a client giving up: the row and every byte go (not under a job still to run)."""
        self.get_upload(upload_id)
        with self.upload_lock(upload_id):  # not in the middle of an append or a join
            with self.transaction() as db:
                pending = db.execute("SELECT COUNT(*) FROM jobs WHERE upload_id = ? AND status IN (?, ?)",
                                     (upload_id, QUEUED, RUNNING)).fetchone()[0]
                if pending:
                    raise ConflictError(f"upload {upload_id} has {pending} job(s) queued or running: delete them or "
                                        "wait for them to finish first")
                db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
            shutil.rmtree(self.upload_dir(upload_id), ignore_errors=True)
        with self.lock:
            self.upload_locks.pop(upload_id, None)

    def upload_file(self, upload_id: str) -> Path:
        """The complete file, for a job; refused while chunks are missing."""
        upload = self.get_upload(upload_id)
        if upload.state == EXPIRED:
            raise UploadExpiredError(f"upload {upload_id} expired and its data was removed: upload it again")
        if upload.state != COMPLETE:
            missing = upload.missing
            raise UploadIncompleteError(f"upload {upload_id} is not complete: POST /v1/upload/complete first",
                                        details={"missing": missing} if upload.kind == "chunked"
                                        else {"offset": upload.received_bytes})
        return self.data_path(upload_id)

    # ---- jobs: records; emoserve.jobs.runner.JobRunner drives them ----

    def create_job(self, upload_id: str, options: dict, callback_url: str | None = None) -> Job:
        """The job for this upload, options and callback: the one an identical request already made (unless it
        failed), or a new one. Looking and inserting share one transaction, so parallel identical requests
        (a client retrying, a double click) get one job, not one each."""
        job_id, now = new_id(), self.clock()
        with self.transaction() as db:
            self.upload_file(upload_id)
            existing = self.find_job(upload_id, options, callback_url)
            if existing is not None:
                return existing
            db.execute("INSERT INTO jobs (id, upload_id, options, status, callback_url, callback_state, created_at,"
                       " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (job_id, upload_id, json.dumps(options, sort_keys=True), QUEUED, callback_url,
                        "pending" if callback_url else None, now, now))
            # a job keeps its upload's file: the sweep leaves files of uploads with unfinished jobs alone
            db.execute("UPDATE uploads SET expires_at = MAX(expires_at, ?) WHERE id = ?",
                       (now + self.limits.keep_completed_s, upload_id))
        return self.get_job(job_id)

    def find_job(self, upload_id: str, options: dict, callback_url: str | None) -> Job | None:
        """The job already made for the same upload and options (a retried POST), unless it failed."""
        with self.lock:
            row = self.db.execute(
                "SELECT id FROM jobs WHERE upload_id = ? AND options = ? AND callback_url IS ? AND status != ?"
                " ORDER BY created_at DESC LIMIT 1",
                (upload_id, json.dumps(options, sort_keys=True), callback_url, FAILED)).fetchone()
        return self.get_job(row[0]) if row else None

    def get_job(self, job_id: str) -> Job:
        check_id(job_id, "job")
        with self.lock:
            row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no job with id {job_id}")
        return self.job_from_row(row)

    def job_from_row(self, row: sqlite3.Row) -> Job:
        result_path = self.job_dir(row["id"]) / RESULT_FILE if row["result_sha256"] else None
        return Job(row["id"], row["upload_id"], json.loads(row["options"]), row["status"], row["progress"],
                   result_path, row["result_sha256"], json.loads(row["error"]) if row["error"] else None,
                   row["callback_url"], row["callback_state"], row["callback_attempts"], row["attempts"],
                   row["created_at"], row["updated_at"], row["started_at"], row["finished_at"])

    def claim_job(self) -> Job | None:
        """The oldest queued job, now running (one claimer wins, even across processes)."""
        now = self.clock()
        with self.transaction() as db:
            row = db.execute("UPDATE jobs SET status = ?, progress = 0, attempts = attempts + 1, started_at = ?,"
                             " updated_at = ? WHERE id = (SELECT id FROM jobs WHERE status = ? ORDER BY created_at"
                             " LIMIT 1) RETURNING *", (RUNNING, now, now, QUEUED)).fetchone()
        return self.job_from_row(row) if row else None

    def set_progress(self, job_id: str, progress: float) -> bool:
        """Record progress; False when the job is no longer running (deleted), so the runner can stop."""
        with self.transaction() as db:
            changed = db.execute("UPDATE jobs SET progress = ?, updated_at = ? WHERE id = ? AND status = ?",
                                 (round(progress, 4), self.clock(), job_id, RUNNING)).rowcount
        return changed == 1

    def finish_job(self, job_id: str, result: bytes | None = None, error: dict | None = None) -> Job:
        """Succeeded with `result` (its JSON, `wire.LongformResult`), or failed with `error`, in one commit with
        the status.

        The result is written once, here, into the job's result file (fsynced before the commit); its
        SHA-256, kept in the row, is what readers use as ETag without reading the file.
        """
        digest = self.write_result(job_id, result) if result is not None else None
        now = self.clock()
        with self.transaction() as db:
            db.execute("UPDATE jobs SET status = ?, progress = ?, result_sha256 = ?, error = ?, finished_at = ?,"
                       " updated_at = ? WHERE id = ?",
                       (FAILED if error is not None else SUCCEEDED, 0.0 if error is not None else 1.0, digest,
                        json.dumps(error) if error is not None else None, now, now, job_id))
        return self.get_job(job_id)

    def write_result(self, job_id: str, data: bytes) -> str:
        """Write the result file durably; its SHA-256 (hex)."""
        path = self.job_dir(job_id) / RESULT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, data)
        return hashlib.sha256(data).hexdigest()

    def move_results_to_files(self) -> None:
        """A database from before results became files keeps them in a `result` column: move them out, once."""
        with self.transaction() as db:
            columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            if "result" not in columns:
                return
            db.execute("ALTER TABLE jobs ADD COLUMN result_sha256 TEXT")
            for job_id, text in db.execute("SELECT id, result FROM jobs WHERE result IS NOT NULL").fetchall():
                db.execute("UPDATE jobs SET result_sha256 = ? WHERE id = ?",
                           (self.write_result(job_id, json_bytes(json.loads(text))), job_id))
            db.execute("ALTER TABLE jobs DROP COLUMN result")

    def release_job(self, job_id: str) -> None:
        """A running job back to the queue, its attempt not counted (the runner stopped, nothing crashed)."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET status = ?, progress = 0, attempts = MAX(attempts - 1, 0), updated_at = ?"
                       " WHERE id = ? AND status = ?", (QUEUED, self.clock(), job_id, RUNNING))

    def requeue_running(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """After a restart: jobs left running go back to the queue, or fail if they keep killing the server."""
        now = self.clock()
        error = json.dumps({"code": "internal_error",
                            "message": f"the server stopped during this job {max_attempts} times; giving up"})
        with self.transaction() as db:
            failed = [r[0] for r in db.execute(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ?, updated_at = ? WHERE status = ?"
                " AND attempts >= ? RETURNING id", (FAILED, error, now, now, RUNNING, max_attempts))]
            requeued = [r[0] for r in db.execute(
                "UPDATE jobs SET status = ?, progress = 0, updated_at = ? WHERE status = ? RETURNING id",
                (QUEUED, now, RUNNING))]
        return requeued, failed

    def delete_job(self, job_id: str) -> None:
        self.get_job(job_id)
        with self.transaction() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def jobs_with_callbacks_due(self) -> list[Job]:
        with self.lock:
            rows = self.db.execute("SELECT * FROM jobs WHERE callback_state = 'pending' AND status IN (?, ?)"
                                   " ORDER BY finished_at", FINISHED).fetchall()
        return [self.job_from_row(r) for r in rows]

    def set_callback_state(self, job_id: str, state: str, attempts: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE jobs SET callback_state = ?, callback_attempts = ? WHERE id = ?",
                       (state, attempts, job_id))

    # ---- expiry ----

    def sweep(self) -> SweepReport:
        """Expire idle uploads and old completed files, delete old jobs and expired rows, and clear crash leftovers."""
        now = self.clock()
        with self.transaction() as db:
            expired = [r[0] for r in db.execute(
                "UPDATE uploads SET state = ?, updated_at = ? WHERE expires_at < ? AND state != ? AND NOT EXISTS"
                " (SELECT 1 FROM jobs WHERE jobs.upload_id = uploads.id AND jobs.status IN (?, ?)) RETURNING id",
                (EXPIRED, now, now, EXPIRED, QUEUED, RUNNING))]
            db.execute("DELETE FROM chunks WHERE upload_id IN (SELECT id FROM uploads WHERE state = ?)", (EXPIRED,))
            deleted_uploads = [r[0] for r in db.execute(
                "DELETE FROM uploads WHERE state = ? AND updated_at < ? RETURNING id",
                (EXPIRED, now - self.limits.keep_jobs_s))]
            deleted_jobs = [r[0] for r in db.execute(
                "DELETE FROM jobs WHERE status IN (?, ?) AND finished_at < ? RETURNING id",
                (*FINISHED, now - self.limits.keep_jobs_s))]
        removed = 0
        for entry in (self.root / "uploads").iterdir():
            state = self.upload_state(entry.name)
            if state in (None, EXPIRED):
                with self.upload_lock(entry.name) if state else nullcontext():  # not while it is being joined
                    removed += remove_path(entry)
            elif state == COMPLETE and (entry / "chunks").exists():
                removed += remove_path(entry / "chunks")
            else:
                removed += remove_stale_temps(entry / "chunks")
        for entry in (self.root / "jobs").iterdir():
            if not self.job_exists(entry.name):
                removed += remove_path(entry)
        return SweepReport(len(expired), len(deleted_uploads), len(deleted_jobs), removed)

    def upload_state(self, name: str) -> str | None:
        """State of the upload a directory belongs to; None for one no row owns (a crash's leftover)."""
        if not ID_PATTERN.fullmatch(name):
            return None
        with self.lock:
            row = self.db.execute("SELECT state FROM uploads WHERE id = ?", (name,)).fetchone()
        return row[0] if row else None

    def job_exists(self, name: str) -> bool:
        if not ID_PATTERN.fullmatch(name):
            return False
        with self.lock:
            return self.db.execute("SELECT 1 FROM jobs WHERE id = ?", (name,)).fetchone() is not None


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


