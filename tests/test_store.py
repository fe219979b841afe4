import base64
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from emoserve.errors import (
    ChecksumMismatchError,
    ConflictError,
    InvalidParameterError,
    NotFoundError,
    PayloadTooLargeError,
    QuotaExceededError,
    UploadExpiredError,
    UploadIncompleteError,
)
from emoserve.jobs.store import Store, UploadLimits

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
    s = Store(tmp_path / "data", UploadLimits(max_bytes=64 * MB, max_chunk_bytes=1 * MB, max_active=4,
                                              max_active_bytes=128 * MB, expiry_s=3600, keep_completed_s=7200,
                                              keep_jobs_s=86400), clock=clock)
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
    first = Store(tmp_path)
    upload = first.create_upload("a.wav", 3000, 1000)
    first.put_chunk(upload.upload_id, 1, b"b" * 1000)
    first.close()
    second = Store(tmp_path)
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
    store = Store(data_dir, UploadLimits(max_chunk_bytes=MB))
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
    store = Store(tmp_path / "data", UploadLimits(max_chunk_bytes=MB))
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

    store = Store(tmp_path / "data", UploadLimits(max_chunk_bytes=MB))
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
        store = Store(data)
        done, queued = store.get_job("a" * 32), store.get_job("c" * 32)
        assert done.result == result and done.result_path.read_bytes() == json.dumps(result, ensure_ascii=False,
                                                                                        separators=(",", ":")).encode()
        assert done.result_sha256 == hashlib.sha256(done.result_path.read_bytes()).hexdigest()
        assert queued.result is None and queued.result_path is None
        store.close()
