"""What the store keeps: its SQLite schema, the upload and job records its rows become, and their ids.

Ids are 32 random hex digits, checked against a strict pattern before a path is built from them;
filenames users send are kept as text and never become paths. `Job` sends its stored result as
bytes (`json_parts`): a long frame result is tens of MB of JSON, never parsed to be sent.
"""

from __future__ import annotations

import json
import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

from ..errors import NotFoundError

ID_PATTERN = re.compile(r"[0-9a-f]{32}")


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
    expires_at REAL NOT NULL,
    concat TEXT                         -- tus concatenation: NULL, 'partial', or 'final;ID ID ...' (its partials)
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


def json_bytes(value: object) -> bytes:
    """Compact UTF-8 JSON, byte for byte as Starlette's JSONResponse writes it: a stored result is sent as stored."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


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
    concat: str | None = None  # tus concatenation: None, "partial", or "final;ID ID ..."

    @property
    def is_partial(self) -> bool:
        """A tus partial upload: a piece of a file, joined into a final upload, never analysed alone."""
        return self.concat == "partial"

    @property
    def partial_ids(self) -> list[str]:
        """The partial uploads a tus final upload was joined from, in order (empty for any other upload)."""
        kind, _, ids = (self.concat or "").partition(";")
        return ids.split() if kind == "final" else []

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
