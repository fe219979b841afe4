import base64
import errno
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from emoserve.config import StoreConfig
from emoserve.errors import (
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
from emoserve.jobs import store as store_module
from emoserve.jobs.store import Store

from .samples import long_recording, wav_bytes

REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    s = Store(StoreConfig(data_dir=tmp_path / "data", upload_max_bytes=64 * MB, upload_max_chunk_bytes=1 * MB,
                          upload_max_active=4, upload_max_active_bytes=128 * MB, upload_expiry_s=3600,
                          upload_keep_completed_s=7200, job_keep_s=86400), clock=clock)
    yield s
    s.close()


@pytest.fixture(scope="module")
def ten_minutes() -> bytes:
    return wav_bytes(long_recording(600.0, seed=3))


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i: i + size] for i in range(0, len(data), size)]


def test_a_ten_minute_file_sent_in_parallel_out_of_order_chunks_arrives_intact(store, ten_minutes):
    upload = store.create_upload("call.wav", len(ten_minutes), MB, hashlib.sha256(ten_minutes).hexdigest())
    parts = chunks_of(ten_minutes, MB)
    assert upload.chunk_count == len(parts) == 19 and upload.missing == list(range(19))
    order = list(range(len(parts)))
    random.Random(7).shuffle(order)
    with ThreadPoolExecutor(4) as pool:
        receipts = list(pool.map(lambda i: store.put_chunk(upload.upload_id, i, parts[i]), order))
    assert receipts[0] == {"index": order[0], "size": len(parts[order[0]])}
    complete = store.complete_upload(upload.upload_id)
    assert complete.state == "complete" and complete.missing == []
    assert store.upload_file(upload.upload_id).read_bytes() == ten_minutes
    assert not (store.upload_dir(upload.upload_id) / "chunks").exists()  # chunks go once joined


def test_resending_a_chunk_is_idempotent_and_resume_lists_what_is_missing(store):
    data = os.urandom(2 * MB + 10)
    upload = store.create_upload("a.wav", len(data), MB)
    parts = chunks_of(data, MB)
    store.put_chunk(upload.upload_id, 2, parts[2])
    store.put_chunk(upload.upload_id, 2, parts[2])
    status = store.get_upload(upload.upload_id).to_dict()
    assert status["received"] == [2] and status["missing"] == [0, 1] and status["state"] == "uploading"
    for i in (0, 1):
        store.put_chunk(upload.upload_id, i, parts[i])
    assert store.complete_upload(upload.upload_id).state == "complete"
    assert store.complete_upload(upload.upload_id).state == "complete"  # completing twice is harmless
    assert store.upload_file(upload.upload_id).read_bytes() == data


def test_completing_with_chunks_missing_lists_them(store):
    upload = store.create_upload("a.wav", 5 * MB, MB)
    store.put_chunk(upload.upload_id, 1, b"x" * MB)
    store.put_chunk(upload.upload_id, 3, b"x" * MB)
    with pytest.raises(UploadIncompleteError) as info:
        store.complete_upload(upload.upload_id)
    assert info.value.code == "upload_incomplete" and info.value.details == {"missing": [0, 2, 4]}
    with pytest.raises(UploadIncompleteError):
        store.upload_file(upload.upload_id)


def test_chunk_checksums_are_checked(store):
    data = os.urandom(1000)
    upload = store.create_upload("a.wav", len(data), 1000)
    md5_b64 = base64.b64encode(hashlib.md5(data).digest()).decode()
    with pytest.raises(ChecksumMismatchError) as info:
        store.put_chunk(upload.upload_id, 0, data[:-1] + b"!", md5=md5_b64)
    assert info.value.code == "checksum_mismatch"
    with pytest.raises(ChecksumMismatchError):
        store.put_chunk(upload.upload_id, 0, data, sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(InvalidParameterError):
        store.put_chunk(upload.upload_id, 0, data, md5="not a checksum!")
    assert store.get_upload(upload.upload_id).received == []
    store.put_chunk(upload.upload_id, 0, data, md5=md5_b64, sha256=hashlib.sha256(data).hexdigest())
    store.put_chunk(upload.upload_id, 0, data, md5=hashlib.md5(data).hexdigest())
    assert store.get_upload(upload.upload_id).received == [0]


def test_a_whole_file_checksum_mismatch_keeps_the_chunks_for_a_retry(store):
    data = os.urandom(3000)
    upload = store.create_upload("a.wav", len(data), 1000, hashlib.sha256(data).hexdigest())
    store.put_chunk(upload.upload_id, 0, data[:1000])
    store.put_chunk(upload.upload_id, 1, b"\0" * 1000)
    store.put_chunk(upload.upload_id, 2, data[2000:])
    with pytest.raises(ChecksumMismatchError):
        store.complete_upload(upload.upload_id)
    assert store.get_upload(upload.upload_id).state == "uploading"
    store.put_chunk(upload.upload_id, 1, data[1000:2000])
    assert store.complete_upload(upload.upload_id).sha256 == hashlib.sha256(data).hexdigest()


def test_chunks_of_the_wrong_size_or_index_are_refused(store):
    upload = store.create_upload("a.wav", 2500, 1000)
    with pytest.raises(ConflictError) as info:
        store.put_chunk(upload.upload_id, 0, b"x" * 999)
    assert info.value.code == "conflict" and info.value.details["expected_size"] == 1000
    with pytest.raises(ConflictError):
        store.put_chunk(upload.upload_id, 2, b"x" * 1000)  # the last chunk is 500 bytes
    for index in (-1, 3, "0"):
        with pytest.raises(InvalidParameterError):
            store.put_chunk(upload.upload_id, index, b"x" * 500)
    big = store.create_upload("b.wav", 4 * MB, MB)
    with pytest.raises(PayloadTooLargeError):
        store.put_chunk(big.upload_id, 0, b"x" * (MB + 1))


@pytest.mark.parametrize("bad_id", [
    "../../etc/passwd", "..", ".", "", "/tmp", "0" * 31, "0" * 33, "A" * 32, "g" * 32, "0" * 31 + "/",
    "0" * 16 + "/../" + "0" * 12, "0" * 31 + "\0", "０" * 32, None, 12345,
])
def test_bad_ids_are_not_found_and_never_touch_the_disk(store, bad_id):
    before = sorted(p for p in store.root.rglob("*"))
    for call in (lambda: store.get_upload(bad_id), lambda: store.put_chunk(bad_id, 0, b"x"),
                 lambda: store.complete_upload(bad_id), lambda: store.delete_upload(bad_id),
                 lambda: store.append(bad_id, 0, b"x"), lambda: store.get_job(bad_id),
                 lambda: store.delete_job(bad_id), lambda: store.upload_dir(bad_id), lambda: store.job_dir(bad_id)):
        with pytest.raises(NotFoundError) as info:
            call()
        assert info.value.code == "not_found"
    assert sorted(p for p in store.root.rglob("*")) == before


def test_filenames_are_only_labels_never_paths(store, tmp_path):
    for name in ("../../evil.wav", "/etc/passwd", "..\\..\\win.wav", "a\0b\n.wav", "", "..", "x" * 1000):
        upload = store.create_upload(name, 10, 10)
        store.put_chunk(upload.upload_id, 0, b"0123456789")
        store.complete_upload(upload.upload_id)
        assert "/" not in upload.filename and "\\" not in upload.filename and "\0" not in upload.filename
        assert len(upload.filename) <= 255
        assert store.upload_file(upload.upload_id).parent.parent == store.root / "uploads"
    assert store.get_upload(store.create_upload("../../evil.wav", 1, 1).upload_id).filename == "evil.wav"
    assert not (tmp_path / "evil.wav").exists()
    assert all(len(p.name) == 32 for p in (store.root / "uploads").iterdir())


def test_ids_are_unguessable(store):
    ids = {store.create_upload("a", 1, 1).upload_id for _ in range(4)}
    assert len(ids) == 4 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_quotas_refuse_too_big_too_many_and_too_much(store):
    with pytest.raises(PayloadTooLargeError) as info:
        store.create_upload("a", 64 * MB + 1, MB)
    assert info.value.code == "payload_too_large"
    with pytest.raises(InvalidParameterError):
        store.create_upload("a", 10 * MB, 2 * MB)  # chunk over the chunk limit
    with pytest.raises(InvalidParameterError):
        store.create_upload("a", 10 * MB, 100)  # more than 10,000 chunks
    with pytest.raises(InvalidParameterError):
        store.create_upload("a", 0, 100)
    uploads = [store.create_upload("a", 40 * MB, MB) for _ in range(3)]
    with pytest.raises(QuotaExceededError) as info:
        store.create_upload("a", 10 * MB, MB)  # 120 + 10 MB in flight > 128 MB
    assert info.value.code == "quota_exceeded"
    store.create_upload("a", 1 * MB, MB)
    with pytest.raises(QuotaExceededError):
        store.create_upload("a", 1, 1)  # 4 in flight already
    store.delete_upload(uploads[0].upload_id)
    store.create_upload("a", 1, 1)


def test_idle_uploads_expire_and_the_sweep_removes_their_files(store, clock):
    idle = store.create_upload("idle.wav", 2000, 1000)
    store.put_chunk(idle.upload_id, 0, b"x" * 1000)
    active = store.create_upload("active.wav", 2000, 1000)
    done = store.create_upload("done.wav", 1000, 1000)
    store.put_chunk(done.upload_id, 0, b"y" * 1000)
    store.complete_upload(done.upload_id)
    (store.root / "uploads" / ("f" * 32)).mkdir()  # left by a crash: no row owns it
    (store.root / "uploads" / "junk.txt").write_text("?")
    clock.now += 3000
    store.put_chunk(active.upload_id, 0, b"x" * 1000)  # activity pushes expiry back
    clock.now += 1000
    report = store.sweep()
    assert report.expired_uploads == 1 and report.removed_paths >= 3
    assert store.get_upload(idle.upload_id).state == "expired"
    assert not store.upload_dir(idle.upload_id).exists()
    assert store.get_upload(active.upload_id).state == "uploading"
    assert store.upload_file(done.upload_id).is_file()
    assert sorted(p.name for p in (store.root / "uploads").iterdir()) == sorted([active.upload_id, done.upload_id])
    with pytest.raises(UploadExpiredError) as info:
        store.put_chunk(idle.upload_id, 1, b"x" * 1000)
    assert info.value.code == "upload_expired"
    clock.now += 7200  # completed files are kept a while for jobs, then go too
    store.sweep()
    assert store.get_upload(done.upload_id).state == "expired" and not store.upload_dir(done.upload_id).exists()
    clock.now += 86400 + 1  # expired rows are forgotten after a while
    store.sweep()
    with pytest.raises(NotFoundError):
        store.get_upload(idle.upload_id)


def test_files_of_uploads_with_pending_jobs_outlive_their_expiry(store, clock):
    upload = store.create_upload("a.wav", 10, 10)
    store.put_chunk(upload.upload_id, 0, b"0123456789")
    store.complete_upload(upload.upload_id)
    job = store.create_job(upload.upload_id, {"granularity": "utterance"})
    clock.now += 10 * 86400
    store.sweep()
    assert store.upload_file(upload.upload_id).is_file()
    store.finish_job(job.job_id, result=b'{"segments":[]}')
    store.sweep()
    assert store.get_upload(upload.upload_id).state == "expired"


def test_state_survives_reopening_the_store(tmp_path):
    first = Store(StoreConfig(data_dir=tmp_path))
    upload = first.create_upload("a.wav", 3000, 1000)
    first.put_chunk(upload.upload_id, 1, b"b" * 1000)
    first.close()
    second = Store(StoreConfig(data_dir=tmp_path))
    assert second.get_upload(upload.upload_id).received == [1]
    assert second.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    second.close()


def test_tus_appends_at_the_offset_and_completes_when_full(store):
    data = os.urandom(2500)
    upload = store.create_tus_upload(len(data), {"filename": "../x.wav", "lang": "en"})
    assert upload.filename == "x.wav" and upload.offset == 0 and upload.metadata["lang"] == "en"
    assert store.append(upload.upload_id, 0, data[:1000]) == 1000
    with pytest.raises(ConflictError) as info:
        store.append(upload.upload_id, 500, data[500:1500])
    assert info.value.details == {"offset": 1000}
    sha1 = base64.b64encode(hashlib.sha1(data[1000:2000]).digest()).decode()
    with pytest.raises(ChecksumMismatchError):
        store.append(upload.upload_id, 1000, data[1000:2000], checksum=("sha1", base64.b64encode(b"x" * 20).decode()))
    assert store.append(upload.upload_id, 1000, data[1000:2000], checksum=("sha1", sha1)) == 2000
    with pytest.raises(PayloadTooLargeError):
        store.append(upload.upload_id, 2000, data[2000:] + b"extra")
    with pytest.raises(UploadIncompleteError):
        store.complete_upload(upload.upload_id)
    # a crash mid-append leaves bytes past the committed offset: they are cut off, not kept
    with open(store.upload_dir(upload.upload_id) / "data.part", "ab") as f:
        f.write(b"garbage")
    assert store.append(upload.upload_id, 2000, data[2000:]) == 2500
    finished = store.get_upload(upload.upload_id)
    assert finished.state == "complete" and finished.sha256 == hashlib.sha256(data).hexdigest()
    assert store.upload_file(upload.upload_id).read_bytes() == data
    with pytest.raises(ConflictError):
        store.append(upload.upload_id, 2500, b"")
    with pytest.raises(ConflictError):
        store.put_chunk(upload.upload_id, 0, b"x")


def test_a_tus_upload_whose_last_append_was_cut_short_by_a_crash_completes(store):
    upload = store.create_tus_upload(10)
    store.append(upload.upload_id, 0, b"0123456789")
    store.db.execute("UPDATE uploads SET state = 'uploading' WHERE id = ?", (upload.upload_id,))
    data = store.data_path(upload.upload_id)
    data.rename(data.with_name("data.part"))  # as if killed after the offset commit, before the rename
    assert store.complete_upload(upload.upload_id).state == "complete"
    assert store.upload_file(upload.upload_id).read_bytes() == b"0123456789"


def test_deleting_an_upload_removes_its_files(store):
    upload = store.create_tus_upload(100)
    store.append(upload.upload_id, 0, b"x" * 10)
    store.delete_upload(upload.upload_id)
    assert not store.upload_dir(upload.upload_id).exists()
    with pytest.raises(NotFoundError):
        store.get_upload(upload.upload_id)


def test_an_upload_with_a_job_still_to_run_is_not_deleted(store):
    upload = store.create_upload("a.wav", 10, 10)
    store.put_chunk(upload.upload_id, 0, b"0123456789")
    store.complete_upload(upload.upload_id)
    job = store.create_job(upload.upload_id, {"granularity": "utterance"})
    with pytest.raises(ConflictError, match="queued or running"):
        store.delete_upload(upload.upload_id)
    assert store.upload_file(upload.upload_id).read_bytes() == b"0123456789"
    store.finish_job(job.job_id, result=b'{}')
    store.delete_upload(upload.upload_id)
    assert not store.upload_dir(upload.upload_id).exists()


def test_jobs_are_claimed_once_in_order_and_requeued_after_a_crash(store):
    upload = store.create_upload("a.wav", 10, 10)
    store.put_chunk(upload.upload_id, 0, b"0123456789")
    store.complete_upload(upload.upload_id)
    first = store.create_job(upload.upload_id, {"granularity": "utterance"})
    second = store.create_job(upload.upload_id, {"granularity": "frame"}, "http://localhost:9/cb")
    assert store.find_job(upload.upload_id, {"granularity": "frame"}, "http://localhost:9/cb") == second
    assert store.claim_job().job_id == first.job_id
    assert store.claim_job().job_id == second.job_id
    assert store.claim_job() is None
    assert store.requeue_running(max_attempts=2) == ([first.job_id, second.job_id], [])
    store.claim_job()
    store.claim_job()
    assert store.requeue_running(max_attempts=2) == ([], [first.job_id, second.job_id])
    failed = store.get_job(first.job_id)
    assert failed.status == "failed" and "2 times" in failed.error["message"]
    assert [j.job_id for j in store.jobs_with_callbacks_due()] == [second.job_id]


def upload_until_killed(data_dir: str, upload_id: str, source: str) -> None:
    """Runs in a child process: send chunks in a shuffled order, printing each index once acknowledged."""
    store = Store(StoreConfig(data_dir=data_dir, upload_max_chunk_bytes=MB))
    data = Path(source).read_bytes()
    parts = chunks_of(data, 256 * 1024)
    order = list(range(len(parts)))
    random.Random(1).shuffle(order)
    for index in order:
        store.put_chunk(upload_id, index, parts[index])
        print(index, flush=True)


def test_a_kill_9_mid_upload_loses_no_acknowledged_chunk(tmp_path, ten_minutes):
    source = tmp_path / "call.wav"
    source.write_bytes(ten_minutes)
    store = Store(StoreConfig(data_dir=tmp_path / "data", upload_max_chunk_bytes=MB))
    upload = store.create_upload("call.wav", len(ten_minutes), 256 * 1024, hashlib.sha256(ten_minutes).hexdigest())
    store.close()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tests.test_store import upload_until_killed; "
                               "upload_until_killed(*sys.argv[1:])", str(tmp_path / "data"), upload.upload_id,
         str(source)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}, stdout=subprocess.PIPE, text=True)
    acknowledged = [int(child.stdout.readline()) for _ in range(20)]
    child.send_signal(signal.SIGKILL)
    acknowledged += [int(line) for line in child.stdout.read().split()]
    child.wait()
    assert child.returncode == -signal.SIGKILL

    store = Store(StoreConfig(data_dir=tmp_path / "data", upload_max_chunk_bytes=MB))
    status = store.get_upload(upload.upload_id)
    parts = chunks_of(ten_minutes, 256 * 1024)
    assert set(acknowledged) <= set(status.received) and len(status.missing) > 0
    for index in status.received:
        assert store.chunk_path(upload.upload_id, index).read_bytes() == parts[index]
    for index in status.missing:
        store.put_chunk(upload.upload_id, index, parts[index])
    store.complete_upload(upload.upload_id)
    assert store.upload_file(upload.upload_id).read_bytes() == ten_minutes
    store.close()


def looking_slowly(store, monkeypatch) -> None:
    """Every lookup of an existing job takes a while: it widens the window between looking and inserting."""
    find_job = store.find_job

    def find_slowly(*args):
        found = find_job(*args)
        time.sleep(0.02)
        return found

    monkeypatch.setattr(store, "find_job", find_slowly)


def test_results_kept_in_the_database_by_an_older_version_move_to_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    old = sqlite3.connect(data / "emoserve.sqlite3")
    old.executescript("""CREATE TABLE jobs (id TEXT PRIMARY KEY, upload_id TEXT NOT NULL, options TEXT NOT NULL,
        status TEXT NOT NULL, progress REAL NOT NULL DEFAULT 0, result TEXT, error TEXT, callback_url TEXT,
        callback_state TEXT, callback_attempts INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL, updated_at REAL NOT NULL, started_at REAL, finished_at REAL)""")
    result = {"segments": [{"start": 0.0, "end": 1.5, "emotion": "happy"}], "note": "ü"}
    old.executemany("INSERT INTO jobs (id, upload_id, options, status, progress, result, created_at, updated_at)"
                    " VALUES (?, ?, '{}', ?, ?, ?, 0, 0)",
                    [("a" * 32, "b" * 32, "succeeded", 1.0, json.dumps(result)),
                     ("c" * 32, "b" * 32, "queued", 0.0, None)])
    old.commit()
    old.close()
    for _ in range(2):  # moved once; opening again finds nothing left to move
        store = Store(StoreConfig(data_dir=data))
        done, queued = store.get_job("a" * 32), store.get_job("c" * 32)
        assert done.result == result and done.result_path.read_bytes() == json.dumps(result, ensure_ascii=False,
                                                                                        separators=(",", ":")).encode()
        assert done.result_sha256 == hashlib.sha256(done.result_path.read_bytes()).hexdigest()
        assert queued.result is None and queued.result_path is None
        store.close()


# ---- disk: quotas on bytes on disk, a full disk as a typed 507, DELETE and the sweep when it is full ----


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_the_disk_quota_counts_completed_tus_and_in_flight_uploads(tmp_path):
    store = Store(StoreConfig(data_dir=tmp_path / "data", upload_max_chunk_bytes=1000, upload_max_disk_bytes=3000))
    done = store.create_upload("a.wav", 1000, 1000)
    store.put_chunk(done.upload_id, 0, b"a" * 1000)
    store.complete_upload(done.upload_id)
    tus = store.create_tus_upload(1000)
    store.append(tus.upload_id, 0, b"t" * 1000)
    assert store.get_upload(tus.upload_id).state == "complete"
    store.create_tus_upload(1000)  # in flight: its bytes are on their way
    with pytest.raises(InsufficientStorageError) as info:
        store.create_upload("b.wav", 1, 1)  # 3000 bytes held: completed files count until they are removed
    assert info.value.code == "insufficient_storage" and "DELETE /v1/upload/" in info.value.message
    assert info.value.details == {"max_disk_bytes": 3000}
    with pytest.raises(InsufficientStorageError):
        store.create_tus_upload(1)
    assert store.storage_problem() is not None
    store.delete_upload(done.upload_id)
    assert store.storage_problem() is None
    store.create_upload("b.wav", 1000, 1000)
    store.close()


def test_upload_bytes_never_take_the_disk_below_the_free_space_kept(tmp_path, monkeypatch):
    store = Store(StoreConfig(data_dir=tmp_path / "data", upload_max_chunk_bytes=1000, data_min_free_bytes=10_000))
    chunked, tus = store.create_upload("a.wav", 1500, 1000), store.create_tus_upload(2000)
    monkeypatch.setattr(store_module, "free_bytes", lambda path: 10_500)
    for call in (lambda: store.create_upload("b.wav", 1000, 1000), lambda: store.create_tus_upload(1000),
                 lambda: store.put_chunk(chunked.upload_id, 0, b"x" * 1000),
                 lambda: store.append(tus.upload_id, 0, b"x" * 1000)):
        with pytest.raises(InsufficientStorageError):
            call()
    assert store.put_chunk(chunked.upload_id, 1, b"x" * 500)["size"] == 500  # the last chunk's 500 bytes fit
    assert store.get_upload(chunked.upload_id).received == [1]
    assert store.get_upload(tus.upload_id).offset == 0
    assert store.storage_problem() is None
    monkeypatch.setattr(store_module, "free_bytes", lambda path: 9_999)
    assert "almost full" in store.storage_problem()
    store.close()


def test_a_full_disk_is_a_typed_error_that_leaves_no_file_behind(store, monkeypatch):
    chunked = store.create_upload("a.wav", 2000, 1000)
    store.put_chunk(chunked.upload_id, 0, b"a" * 1000)
    tus = store.create_tus_upload(3000)
    store.append(tus.upload_id, 0, b"t" * 1000)
    before = files_under(store.root / "uploads")
    monkeypatch.setattr(os, "fsync", disk_full)  # where a full disk shows: the write that must reach it
    with pytest.raises(InsufficientStorageError) as info:
        store.put_chunk(chunked.upload_id, 1, b"b" * 1000)
    assert info.value.code == "insufficient_storage"
    with pytest.raises(InsufficientStorageError):
        store.append(tus.upload_id, 1000, b"u" * 1000)
    monkeypatch.undo()
    store.put_chunk(chunked.upload_id, 1, b"b" * 1000)
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(InsufficientStorageError):
        store.complete_upload(chunked.upload_id)
    assert files_under(store.root / "uploads") == sorted(before + [f"{chunked.upload_id}/chunks/1"])
    assert (store.upload_dir(tus.upload_id) / "data.part").stat().st_size == 1000  # the refused bytes are cut off
    monkeypatch.undo()
    assert store.get_upload(tus.upload_id).offset == 1000
    assert store.append(tus.upload_id, 1000, b"u" * 2000) == 3000
    assert store.complete_upload(chunked.upload_id).state == "complete"


class FullOnCommit:
    """The store's connection, whose COMMIT fails with SQLite's "disk is full" while `full()` says so."""

    def __init__(self, db: sqlite3.Connection, full):
        self.db, self.full = db, full

    def execute(self, sql: str, *args):
        if sql == "COMMIT" and self.full():
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL
            raise error
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.db, name)


def test_a_commit_on_a_full_disk_is_a_typed_error_and_the_store_goes_on(store):
    real_db = store.db
    store.db = FullOnCommit(real_db, full=lambda: True)
    with pytest.raises(InsufficientStorageError):
        store.create_upload("a.wav", 10, 10)
    assert not real_db.in_transaction  # rolled back: the write lock is not held forever
    store.db = real_db
    upload = store.create_upload("a.wav", 10, 10)
    assert [u.upload_id for u in [store.get_upload(upload.upload_id)]] == [upload.upload_id]


def test_delete_frees_the_space_first_so_it_works_on_a_full_disk(store):
    upload = store.create_tus_upload(100)
    store.append(upload.upload_id, 0, b"x" * 100)
    directory = store.upload_dir(upload.upload_id)
    real_db = store.db
    store.db = FullOnCommit(real_db, full=directory.exists)  # the row's delete needs the space its files free
    store.delete_upload(upload.upload_id)
    store.db = real_db
    assert not directory.exists()
    with pytest.raises(NotFoundError):
        store.get_upload(upload.upload_id)


def test_the_sweep_removes_what_a_crash_left_without_a_row(store):
    upload = store.create_upload("a.wav", 2000, 1000)
    orphan = store.root / "uploads" / ("e" * 32)
    (orphan / "chunks").mkdir(parents=True)
    (orphan / "data").write_bytes(b"x" * 100)
    join_temp = store.upload_dir(upload.upload_id) / ".data.0000.tmp"
    join_temp.write_bytes(b"half a join")
    os.utime(join_temp, (1, 1))  # hours old: no join in flight takes that long
    report = store.sweep()
    assert report.removed_paths == 2 and not orphan.exists() and not join_temp.exists()
    assert store.upload_dir(upload.upload_id).is_dir()


# ---- bodies reach disk piece by piece ----


def test_a_chunk_is_written_as_it_arrives_and_only_a_whole_one_is_kept(store):
    upload = store.create_upload("a.wav", 2500, 1000)
    chunks = store.upload_dir(upload.upload_id) / "chunks"
    with store.receive_chunk(upload.upload_id, 0) as receiver:
        receiver.write(b"a" * 400)
        receiver.write(b"b" * 400)
        assert len(files_under(chunks)) == 1  # a temp file, not a chunk yet
    assert files_under(chunks) == [] and store.get_upload(upload.upload_id).received == []  # cut short: nothing
    with store.receive_chunk(upload.upload_id, 2) as receiver, pytest.raises(ConflictError) as info:
        receiver.write(b"x" * 300)
        receiver.write(b"x" * 300)  # the last chunk is 500 bytes: refused at the first byte too many
    assert info.value.details == {"index": 2, "expected_size": 500}
    with store.receive_chunk(upload.upload_id, 0, sha256=hashlib.sha256(b"ab" * 500).hexdigest()) as receiver:
        for _ in range(500):
            receiver.write(b"ab")
        assert receiver.commit() == {"index": 0, "size": 1000}
    assert files_under(chunks) == ["0"] and store.chunk_path(upload.upload_id, 0).read_bytes() == b"ab" * 500


def test_one_tus_append_at_a_time_and_a_cut_short_body_keeps_what_arrived(store):
    upload = store.create_tus_upload(3000)
    with store.tus_appender(upload.upload_id, 0) as appender:
        appender.write(b"a" * 1000)
        with pytest.raises(ConflictError, match="in progress"):
            store.append(upload.upload_id, 0, b"b" * 1000)
        appender.keep_what_arrived()
    assert store.get_upload(upload.upload_id).offset == 1000
    checksum = ("sha1", base64.b64encode(hashlib.sha1(b"c" * 1000).digest()).decode())
    with store.tus_appender(upload.upload_id, 1000, checksum=checksum) as appender:
        appender.write(b"c" * 500)
        appender.keep_what_arrived()  # half a body cannot match its checksum: nothing is kept
    assert store.get_upload(upload.upload_id).offset == 1000
    assert (store.upload_dir(upload.upload_id) / "data.part").stat().st_size == 1000


# ---- tus concatenation ----


def test_a_tus_final_upload_joins_complete_partials_in_the_order_given(store):
    first, second = os.urandom(1500), os.urandom(700)
    a = store.create_tus_upload(len(first), partial=True)
    b = store.create_tus_upload(len(second), partial=True)
    store.append(a.upload_id, 0, first)
    with pytest.raises(UploadIncompleteError) as info:
        store.create_tus_final([a.upload_id, b.upload_id])
    assert info.value.details == {"upload_id": b.upload_id, "offset": 0}
    store.append(b.upload_id, 0, second)
    final = store.create_tus_final([b.upload_id, a.upload_id], {"filename": "call.wav"})
    assert final.state == "complete" and final.kind == "tus" and final.filename == "call.wav"
    assert final.total_size == len(first) + len(second) and final.partial_ids == [b.upload_id, a.upload_id]
    assert final.sha256 == hashlib.sha256(second + first).hexdigest()
    assert store.upload_file(final.upload_id).read_bytes() == second + first
    assert store.create_job(final.upload_id, {"granularity": "utterance"}).upload_id == final.upload_id
    with pytest.raises(ConflictError, match="partial"):
        store.upload_file(a.upload_id)  # a piece of a file is never analysed alone
    plain = store.create_tus_upload(10)
    store.append(plain.upload_id, 0, b"0123456789")
    for ids, error in (([], InvalidParameterError), ([plain.upload_id], InvalidParameterError),
                       ([final.upload_id], InvalidParameterError), (["../" + a.upload_id], NotFoundError),
                       (["0" * 32], NotFoundError)):
        with pytest.raises(error):
            store.create_tus_final(ids)
    assert store.create_tus_final([a.upload_id]).total_size == len(first)  # a partial may serve again


def test_a_tus_final_upload_counts_against_the_quotas_and_a_failed_join_leaves_nothing(tmp_path, monkeypatch):
    store = Store(StoreConfig(data_dir=tmp_path / "data", upload_max_bytes=2500, upload_max_chunk_bytes=1000,
                              upload_max_disk_bytes=5000))
    parts = [store.create_tus_upload(1000, partial=True) for _ in range(2)]
    for part in parts:
        store.append(part.upload_id, 0, b"p" * 1000)
    ids = [p.upload_id for p in parts]
    with pytest.raises(PayloadTooLargeError):
        store.create_tus_final(ids * 3)  # 3000 bytes > the 2500 one upload may have
    before = files_under(store.root / "uploads")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(InsufficientStorageError):
        store.create_tus_final(ids)
    monkeypatch.undo()
    assert files_under(store.root / "uploads") == before
    assert store.db.execute("SELECT COUNT(*) FROM uploads").fetchone()[0] == 2
    store.create_tus_final(ids)  # 2000 partial + 2000 final bytes held
    with pytest.raises(InsufficientStorageError):
        store.create_tus_final(ids)  # 2000 more is over the 5000 on disk
    store.close()


# ---- a real full disk: a tiny tmpfs in a user namespace, where the system allows one ----

FILL_A_TINY_DISK = textwrap.dedent("""
    import sys
    from emoserve.jobs import store as store_module
    from emoserve.errors import InsufficientStorageError
    from emoserve.config import StoreConfig
    from emoserve.jobs.store import Store

    # as on a file system whose user quota (EDQUOT) statvfs does not show: only the writes find out
    store_module.free_bytes = lambda path: 1 << 60
    store = Store(StoreConfig(data_dir=sys.argv[1], upload_max_chunk_bytes=256 * 1024))
    uploads, refused = [], None
    while refused is None:
        upload = store.create_tus_upload(1024 * 1024)
        uploads.append(upload.upload_id)
        try:
            for offset in range(0, 1024 * 1024, 256 * 1024):
                store.append(upload.upload_id, offset, bytes(256 * 1024))
        except InsufficientStorageError as e:
            refused = e
    print("refused", refused.code)
    for upload_id in uploads:
        store.delete_upload(upload_id)
    again = store.create_tus_upload(256 * 1024)
    print("after delete", store.append(again.upload_id, 0, bytes(256 * 1024)))
""")


def test_a_real_full_disk_is_refused_with_insufficient_storage_and_delete_frees_it(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(FILL_A_TINY_DISK)
    command = f"mount -t tmpfs -o size=3m tmpfs {mount} && {sys.executable} {script} {mount}/data"
    try:
        result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", command],
                                env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True,
                                timeout=120)
    except FileNotFoundError:
        pytest.skip("no unshare(1) here")
    if "mount" in result.stderr and result.returncode != 0 and "refused" not in result.stdout:
        pytest.skip(f"no user namespaces with tmpfs here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["refused insufficient_storage", f"after delete {256 * 1024}"]
