"""Uploads and jobs that survive a restart: an embedded SQLite database (WAL) and files under the data dir.

    DATA_DIR/emoserve.sqlite3       uploads, received chunks, jobs (status, progress, result hash, error)
    DATA_DIR/uploads/ID/chunks/N    chunk N as received, fsynced before it is acknowledged
    DATA_DIR/uploads/ID/data        the assembled file (a tus upload grows in data.part, renamed when full;
                                a tus final upload is its partial uploads joined in order)
    DATA_DIR/jobs/ID/               a job's result.json, embedding.npy, and its scratch space while it runs

The database says what was acknowledged; a file is written, fsynced and renamed into place before
its row is committed, so a crash (kill -9 included) never leaves an acknowledged chunk or a
finished result behind, and never shows a half-written file as received. Ids are 32 random hex
digits, checked against a strict pattern before a path is built from them; filenames users send
are kept as text and never become paths.

Bytes on disk are bounded: every upload, in flight or complete, counts its size against
`max_disk_bytes` until its files are removed, upload bytes never take the file system below
`min_free_bytes` (so SQLite, DELETE and the sweep keep room to work), and a full disk anyway
(ENOSPC, EDQUOT, SQLITE_FULL) is a typed 507 `insufficient_storage`, never a 500. Request bodies
reach disk piece by piece through `ChunkReceiver` and `TusAppender`, never whole in memory.
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

from ..config import StoreConfig
from ..errors import (
    ChecksumMismatchError,
    ConflictError,
    InsufficientStorageError,
    InvalidParameterError,
    NotFoundError,
    PayloadTooLargeError,
    QuotaExceededError,
    UploadExpiredError,
    UploadIncompleteError,
)
from ..files import file_sha256, fsync_dir, remove_path, remove_stale_temps, write_durably
from .disk import free_bytes, storage_errors
from .receivers import ChunkReceiver, TusAppender
from .records import (
    COMPLETE,
    EXPIRED,
    FAILED,
    FINISHED,
    ID_PATTERN,
    QUEUED,
    RUNNING,
    SCHEMA,
    SUCCEEDED,
    UPLOADING,
    Job,
    SweepReport,
    Upload,
    check_id,
    clean_filename,
    json_bytes,
    new_id,
)

MAX_CHUNKS = 10_000  # an upload's missing list stays small enough to send back
COPY_BLOCK = 1024 * 1024
CHECKSUM_ALGORITHMS = ("md5", "sha1", "sha256")  # of tus Upload-Checksum
STALE_TEMP_S = 3600  # a temp file this old is left from a crash, not a write in flight
RESULT_FILE = "result.json"


class Store:
    """The one owner of the data dir: thread-safe (one connection behind a lock; file I/O outside it)."""

    def __init__(self, config: StoreConfig, clock: Callable[[], float] = time.time):
        self.root = config.data_dir.resolve()
        self.config = config
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
        with self.transaction() as db:  # a database made before tus concatenation gets its column
            if "concat" not in {row[1] for row in db.execute("PRAGMA table_info(uploads)")}:
                db.execute("ALTER TABLE uploads ADD COLUMN concat TEXT")

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: one writer at a time, across threads and processes, checks and writes together.

        A COMMIT that fails (a full disk) is rolled back too, so the connection never stays stuck
        in a transaction that holds the write lock.
        """
        with self.lock, storage_errors():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

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
        chunk_size = self.config.upload_max_chunk_bytes if chunk_size is None else chunk_size
        if not isinstance(chunk_size, int) or not 0 < chunk_size <= self.config.upload_max_chunk_bytes:
            raise InvalidParameterError(
                f"chunk_size must be 1 to {self.config.upload_max_chunk_bytes} bytes; got {chunk_size!r}")
        self.check_total_size(total_size)
        chunk_count = math.ceil(total_size / chunk_size)
        if chunk_count > MAX_CHUNKS:
            raise InvalidParameterError(f"{chunk_count} chunks is more than {MAX_CHUNKS}: use larger chunks")
        if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise InvalidParameterError("sha256 must be the 64 hex digits of the whole file's SHA-256")
        return self.insert_upload("chunked", clean_filename(filename), total_size, chunk_size, chunk_count,
                                  sha256.lower() if sha256 else None, {})

    def create_tus_upload(self, total_size: int, metadata: dict[str, str] | None = None, *,
                          partial: bool = False) -> Upload:
        """tus creation: one file that grows by appends at its offset (`append`); `partial`: a piece of a
        file, for `create_tus_final` (tus concatenation)."""
        self.check_total_size(total_size)
        metadata = dict(metadata or {})
        return self.insert_upload("tus", clean_filename(metadata.get("filename")), total_size, 0, 0, None, metadata,
                                  concat="partial" if partial else None)

    def create_tus_final(self, partial_ids: list[str], metadata: dict[str, str] | None = None) -> Upload:
        """tus concatenation: a complete upload made of complete partial uploads, joined in the order given.

        The partials are streamed into one new file (never whole in memory) under their locks, so
        none is deleted or expired halfway; the final counts against the quotas like any upload,
        and a failed join (a full disk) leaves no row and no file behind. Partials stay usable for
        other finals until they expire.
        """
        if not partial_ids or len(partial_ids) > MAX_CHUNKS:
            raise InvalidParameterError(f"a final upload joins 1 to {MAX_CHUNKS} partial uploads; got "
                                        f"{len(partial_ids)}")
        ids = [check_id(upload_id, "upload") for upload_id in partial_ids]
        metadata = dict(metadata or {})
        with ExitStack() as locks:
            for upload_id in sorted(set(ids)):  # one order for everyone: two finals never deadlock
                locks.enter_context(self.upload_lock(upload_id))
            partials = [self.joinable_partial(upload_id) for upload_id in ids]
            total_size = sum(p.total_size for p in partials)
            self.check_total_size(total_size)
            final = self.insert_upload("tus", clean_filename(metadata.get("filename")), total_size, 0, 0, None,
                                       metadata, concat="final;" + " ".join(ids))
            try:
                sources = [self.data_path(p.upload_id) for p in partials]
                sha256 = self.join_files(sources, self.data_path(final.upload_id))
                self.mark_complete(final.upload_id, sha256)
            except BaseException:
                self.delete_upload(final.upload_id)
                raise
        return self.get_upload(final.upload_id)

    def joinable_partial(self, upload_id: str) -> Upload:
        upload = self.get_upload(upload_id)
        if upload.kind != "tus" or not upload.is_partial:
            raise InvalidParameterError(f"upload {upload_id} is not a partial upload: create the parts with "
                                        "Upload-Concat: partial")
        if upload.state == EXPIRED:
            raise UploadExpiredError(f"partial upload {upload_id} expired and its data was removed: upload it again")
        if upload.state != COMPLETE:
            raise UploadIncompleteError(f"partial upload {upload_id} has {upload.received_bytes} of "
                                        f"{upload.total_size} bytes: finish it before joining it",
                                        details={"upload_id": upload_id, "offset": upload.received_bytes})
        return upload

    def check_total_size(self, total_size: int) -> None:
        if not isinstance(total_size, int) or total_size <= 0:
            raise InvalidParameterError(f"total_size must be a positive number of bytes; got {total_size!r}")
        limit = self.config.upload_max_bytes
        if total_size > limit:
            raise PayloadTooLargeError(f"{total_size} bytes is over the limit of {limit} per upload",
                                       details={"max_bytes": limit})

    def insert_upload(self, kind: str, filename: str, total_size: int, chunk_size: int, chunk_count: int,
                      sha256: str | None, metadata: dict, *, concat: str | None = None) -> Upload:
        upload_id, now = new_id(), self.clock()
        self.check_free_space(total_size)
        with self.transaction() as db:
            active, active_bytes = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(total_size), 0) FROM uploads WHERE state = ?", (UPLOADING,)).fetchone()
            config = self.config
            if active >= config.upload_max_active:
                raise QuotaExceededError(f"{active} uploads are in flight, the most allowed: finish or wait for one",
                                         details={"max_active": config.upload_max_active})
            if active_bytes + total_size > config.upload_max_active_bytes:
                raise QuotaExceededError(
                    f"uploads in flight hold {active_bytes} bytes; {total_size} more is over the limit of "
                    f"{config.upload_max_active_bytes}", details={"max_active_bytes": config.upload_max_active_bytes})
            held = self.disk_bytes(db)
            if held + total_size > config.upload_max_disk_bytes:
                raise InsufficientStorageError(
                    f"uploads hold {held} bytes on disk; {total_size} more is over the limit of "
                    f"{config.upload_max_disk_bytes}: delete uploads you no longer need (DELETE /v1/upload/{{id}}) or "
                    "retry once finished ones expire", details={"max_disk_bytes": config.upload_max_disk_bytes})
            db.execute("INSERT INTO uploads (id, kind, filename, total_size, chunk_size, chunk_count, sha256, metadata,"
                       " state, created_at, updated_at, expires_at, concat) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                       " ?)", (upload_id, kind, filename, total_size, chunk_size, chunk_count, sha256,
                               json.dumps(metadata), UPLOADING, now, now, now + self.config.upload_expiry_s, concat))
        with storage_errors():
            (self.upload_dir(upload_id) / "chunks").mkdir(parents=True, exist_ok=True)
        return self.get_upload(upload_id)

    def disk_bytes(self, db: sqlite3.Connection) -> int:
        """Bytes the uploads hold on disk or are about to: each upload's size, from creation until its files go."""
        return db.execute("SELECT COALESCE(SUM(total_size), 0) FROM uploads WHERE state != ?", (EXPIRED,)).fetchone()[0]

    def check_free_space(self, incoming: int) -> None:
        """Refuse (507) bytes that would leave less than `min_free_bytes` free on the data dir's file system."""
        if free_bytes(self.root) - incoming < self.config.data_min_free_bytes:
            raise InsufficientStorageError("the server's disk is almost full: nothing of this request was stored; "
                                           "retry later, and delete uploads you no longer need "
                                           "(DELETE /v1/upload/{id})")

    def storage_problem(self) -> str | None:
        """Why uploads are refused for lack of space, if they are: /health reports it (status degraded)."""
        if free_bytes(self.root) < self.config.data_min_free_bytes:
            return ("the data disk is almost full (less free than EMOSERVE_DATA_MIN_FREE_BYTES): uploads are refused "
                    "until space is freed")
        with self.lock:
            held = self.disk_bytes(self.db)
        if held >= self.config.upload_max_disk_bytes:
            return ("uploads hold all the disk space allowed (EMOSERVE_UPLOAD_MAX_DISK_BYTES): new uploads are "
                    "refused until some are deleted or expire")
        return None

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
                      row["state"], row["created_at"], row["updated_at"], row["expires_at"], received, row["concat"])

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
        with self.receive_chunk(upload_id, index, md5=md5, sha256=sha256) as receiver:
            receiver.write(data)
            return receiver.commit()

    def receive_chunk(self, upload_id: str, index: int, *, md5: str | None = None,
                      sha256: str | None = None) -> ChunkReceiver:
        """A chunk to be written as its bytes arrive (the HTTP route's way: a body is never held whole)."""
        upload = self.writable_upload(upload_id, "chunked")
        if not isinstance(index, int) or not 0 <= index < upload.chunk_count:
            raise InvalidParameterError(f"chunk index must be 0 to {upload.chunk_count - 1}; got {index!r}")
        receiver = ChunkReceiver(self, upload, index, md5=md5, sha256=sha256)
        try:
            self.check_free_space(receiver.expected)
        except BaseException:
            receiver.close()
            raise
        return receiver

    def record_chunk(self, upload_id: str, index: int, size: int, sha256: str) -> None:
        now = self.clock()
        with self.transaction() as db:
            state = db.execute("SELECT state FROM uploads WHERE id = ?", (upload_id,)).fetchone()
            if state is None or state[0] == EXPIRED:
                raise UploadExpiredError(f"upload {upload_id} expired or was deleted while chunk {index} arrived")
            if state[0] != UPLOADING:
                raise ConflictError(f"upload {upload_id} was completed while chunk {index} arrived")
            db.execute("INSERT OR REPLACE INTO chunks (upload_id, idx, size, sha256) VALUES (?, ?, ?, ?)",
                       (upload_id, index, size, sha256))
            db.execute("UPDATE uploads SET updated_at = ?, expires_at = ? WHERE id = ?",
                       (now, now + self.config.upload_expiry_s, upload_id))

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
        self.check_free_space(upload.total_size)  # chunks and the joined file are both on disk for a moment
        chunks = [self.chunk_path(upload_id, index) for index in range(upload.chunk_count)]
        sha256 = self.join_files(chunks, self.data_path(upload_id), expected_sha256=upload.sha256)
        self.mark_complete(upload_id, sha256)
        shutil.rmtree(self.upload_dir(upload_id) / "chunks", ignore_errors=True)
        return self.get_upload(upload_id)

    def join_files(self, sources: list[Path], target: Path, expected_sha256: str | None = None) -> str:
        """Stream `sources` in order into `target` (1 MB at a time), fsynced and renamed into place; its SHA-256.

        Nothing is left behind when it fails: not the temp file, not a `target` that is not whole.
        """
        temp = target.with_name(f".data.{secrets.token_hex(4)}.tmp")
        whole = hashlib.sha256()
        try:
            with storage_errors():
                with open(temp, "wb") as out:
                    for source in sources:
                        with open(source, "rb") as part:
                            while block := part.read(COPY_BLOCK):
                                whole.update(block)
                                out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
                if expected_sha256 and whole.hexdigest() != expected_sha256:
                    raise ChecksumMismatchError(
                        f"the joined file's SHA-256 is {whole.hexdigest()}, not {expected_sha256}: some chunk was "
                        "corrupted; re-send the chunks and complete again", details={"sha256": whole.hexdigest()})
                os.replace(temp, target)
                fsync_dir(target.parent)
        finally:
            temp.unlink(missing_ok=True)
        return whole.hexdigest()

    def mark_complete(self, upload_id: str, sha256: str) -> None:
        """Only an upload still uploading completes: one the sweep expired meanwhile stays expired."""
        now = self.clock()
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE uploads SET state = ?, sha256 = ?, received_bytes = total_size, updated_at = ?, expires_at = ?"
                " WHERE id = ? AND state = ?",
                (COMPLETE, sha256, now, now + self.config.upload_keep_completed_s, upload_id, UPLOADING)).rowcount
        if not changed:
            raise UploadExpiredError(f"upload {upload_id} expired before it was complete: start a new upload")

    def append(self, upload_id: str, offset: int, data: bytes, *, checksum: tuple[str, str] | None = None) -> int:
        """tus PATCH: write `data` at `offset` (which must be the current one); returns the new offset.

        The bytes are fsynced before the offset moves; bytes past the committed offset (left by a
        crash mid-append) are cut off first. `checksum` is the tus (algorithm, base64 digest).
        """
        with self.tus_appender(upload_id, offset, checksum=checksum) as appender:
            appender.write(data)
            return appender.finish()

    def tus_appender(self, upload_id: str, offset: int, *, checksum: tuple[str, str] | None = None) -> TusAppender:
        """An append to be written as its bytes arrive (the HTTP route's way: a body is never held whole)."""
        if checksum is not None and checksum[0].lower() not in CHECKSUM_ALGORITHMS:
            raise InvalidParameterError(f"checksum algorithm {checksum[0]!r}: use {', '.join(CHECKSUM_ALGORITHMS)}")
        self.writable_upload(upload_id, "tus")
        return TusAppender(self, upload_id, offset, checksum)

    def commit_offset(self, upload_id: str, old_offset: int, new_offset: int) -> None:
        """Move a tus offset over bytes already fsynced; only from where it was (one appender at a time)."""
        now = self.clock()
        with self.transaction() as db:
            changed = db.execute("UPDATE uploads SET received_bytes = ?, updated_at = ?, expires_at = ?"
                                 " WHERE id = ? AND state = ? AND received_bytes = ?",
                                 (new_offset, now, now + self.config.upload_expiry_s, upload_id, UPLOADING,
                                  old_offset)).rowcount
        if not changed:
            raise UploadExpiredError(f"upload {upload_id} expired or was deleted while bytes arrived: start a new "
                                     "upload")

    def finish_tus(self, upload_id: str) -> Upload:
        partial, target = self.upload_dir(upload_id) / "data.part", self.data_path(upload_id)
        if partial.exists():
            os.replace(partial, target)
            fsync_dir(target.parent)
        self.mark_complete(upload_id, file_sha256(target))
        return self.get_upload(upload_id)

    def delete_upload(self, upload_id: str) -> None:
        """tus termination, or a client giving up: the row and every byte go (not under a job still to run).

        The files go first, inside the transaction that deletes the row: on a full disk the
        row's delete needs the space they free, and no other writer sees the row without them.
        """
        self.get_upload(upload_id)
        with self.upload_lock(upload_id), self.transaction() as db:  # not in the middle of a join
            pending = db.execute("SELECT COUNT(*) FROM jobs WHERE upload_id = ? AND status IN (?, ?)",
                                 (upload_id, QUEUED, RUNNING)).fetchone()[0]
            if pending:
                raise ConflictError(f"upload {upload_id} has {pending} job(s) queued or running: delete them or "
                                    "wait for them to finish first")
            remove_path(self.upload_dir(upload_id))
            db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
        with self.lock:
            self.upload_locks.pop(upload_id, None)

    def upload_file(self, upload_id: str) -> Path:
        """The complete file, for a job; refused while chunks are missing, and for tus partial uploads."""
        upload = self.get_upload(upload_id)
        if upload.state == EXPIRED:
            raise UploadExpiredError(f"upload {upload_id} expired and its data was removed: upload it again")
        if upload.is_partial:
            raise ConflictError(f"upload {upload_id} is a tus partial upload, a piece of a file: join the pieces "
                                "with Upload-Concat: final;... and use the final upload")
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
                       (now + self.config.upload_keep_completed_s, upload_id))
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
        with storage_errors():
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
                (EXPIRED, now - self.config.job_keep_s))]
            deleted_jobs = [r[0] for r in db.execute(
                "DELETE FROM jobs WHERE status IN (?, ?) AND finished_at < ? RETURNING id",
                (*FINISHED, now - self.config.job_keep_s))]
        removed = 0
        for entry in (self.root / "uploads").iterdir():
            state = self.upload_state(entry.name)
            if state in (None, EXPIRED):
                with self.upload_lock(entry.name) if state else nullcontext():  # not while it is being joined
                    removed += remove_path(entry)
            elif state == COMPLETE and (entry / "chunks").exists():
                removed += remove_path(entry / "chunks") + remove_stale_temps(entry)
            else:
                removed += remove_stale_temps(entry / "chunks") + remove_stale_temps(entry)
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
