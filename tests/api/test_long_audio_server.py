"""Long audio against a real server process: parallel chunks, dropped clients, a tus client, kill -9 and restart."""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
from tusclient import client as tus

from emoserve.config import StoreConfig
from emoserve.jobs.store import Store

from ..samples import long_recording, wav_bytes
from .live_server import LiveServer

MB = 1024 * 1024


@pytest.fixture(scope="module")
def ten_minutes() -> bytes:
    return wav_bytes(long_recording(600.0, seed=3))  # 19.2 MB of 16 kHz PCM16 speech (or noise bursts) and pauses


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = LiveServer(tmp_path_factory.mktemp("server")).start()
    yield server
    server.stop()


class ChunkSender:
    """Sends chunks from a thread pool, recording which the server acknowledged and how many were in flight."""

    def __init__(self, http: httpx.Client, upload: dict, data: bytes):
        self.http, self.upload, self.data = http, upload, data
        self.acknowledged: list[int] = []
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()

    def send(self, index: int) -> None:
        size = self.upload["chunk_size"]
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            response = self.http.put(self.upload["chunk_urls"][index], content=self.data[index * size:][:size])
            response.raise_for_status()
            with self.lock:
                self.acknowledged.append(index)
        finally:
            with self.lock:
                self.in_flight -= 1

    def send_all(self, indexes: list[int], workers: int = 8) -> None:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(self.send, indexes))


def init(http: httpx.Client, server: LiveServer, data: bytes, chunk_size: int) -> dict:
    response = http.post(server.url("/v1/upload/init"), json={
        "filename": "call.wav", "total_size": len(data), "chunk_size": chunk_size,
        "sha256": hashlib.sha256(data).hexdigest()})
    assert response.status_code == 201, response.text
    return response.json()


def shuffled(count: int, seed: int) -> list[int]:
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order


def wait_job(http: httpx.Client, server: LiveServer, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(server.url(f"/v1/jobs/{job_id}"), params={"wait": 10}, timeout=30).json()
        if job["status"] in ("succeeded", "failed"):
            return job
    raise AssertionError(f"job {job_id} did not finish")


def drop_mid_body(url: str, method: str, headers: dict, body: bytes, sent: int) -> None:
    """A client that announces `body` but sends only `sent` bytes of it, then its connection drops."""
    parts = urlsplit(url)
    head = f"{method} {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((parts.hostname, parts.port)) as s:
        s.sendall(head.encode() + body[:sent])
        time.sleep(0.2)


def test_a_ten_minute_file_in_parallel_out_of_order_chunks_becomes_a_timeline(server, ten_minutes):
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=8)) as http:
        upload = init(http, server, ten_minutes, MB)
        assert upload["chunk_count"] == 19 and upload["chunk_urls"][0].startswith(server.base)
        sender = ChunkSender(http, upload, ten_minutes)
        sender.send_all(shuffled(upload["chunk_count"], seed=1))
        assert sorted(sender.acknowledged) == list(range(19)) and sender.most_in_flight > 1
        accepted = http.post(server.url("/v1/upload/complete"), json={"upload_id": upload["upload_id"]})
        assert accepted.status_code == 202
        status = http.get(server.url(f"/v1/upload/{upload['upload_id']}")).json()
        assert status["state"] == "complete" and status["sha256"] == hashlib.sha256(ten_minutes).hexdigest()
        job = wait_job(http, server, accepted.json()["job_id"])
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert result["duration_s"] == pytest.approx(600.0, abs=0.01) and len(result["segments"]) > 50
    assert all(0 <= s["start"] < s["end"] <= 600.0 and s["end"] - s["start"] <= 30.0 for s in result["segments"])
    assert result["overall"]["emotion"] in result["labels"]


def test_a_client_that_drops_half_way_resumes_from_the_missing_list(server, ten_minutes):
    with httpx.Client(timeout=60) as http:
        upload = init(http, server, ten_minutes, MB)
        order = shuffled(upload["chunk_count"], seed=2)
        first_half, cut = order[:9], order[9]
        ChunkSender(http, upload, ten_minutes).send_all(first_half, workers=4)
        drop_mid_body(upload["chunk_urls"][cut], "PUT", {"Content-Type": "application/octet-stream"},
                      ten_minutes[cut * MB:][:MB], MB // 2)
    # a new client knows only the upload id: the server says what to send
    with httpx.Client(timeout=60) as http:
        status = http.get(server.url(f"/v1/upload/{upload['upload_id']}")).json()
        assert status["received"] == sorted(first_half)
        assert cut in status["missing"] and len(status["missing"]) == upload["chunk_count"] - len(first_half)
        early = http.post(server.url("/v1/upload/complete"), json={"upload_id": upload["upload_id"]})
        assert early.status_code == 409 and early.json()["error"]["missing"] == status["missing"]
        ChunkSender(http, upload, ten_minutes).send_all(status["missing"], workers=4)
        accepted = http.post(server.url("/v1/upload/complete"), json={"upload_id": upload["upload_id"]})
        assert accepted.status_code == 202
        assert http.delete(server.url(f"/v1/jobs/{accepted.json()['job_id']}")).status_code == 204
        status = http.get(server.url(f"/v1/upload/{upload['upload_id']}")).json()
    assert status["state"] == "complete" and status["sha256"] == hashlib.sha256(ten_minutes).hexdigest()


def test_a_tus_client_uploads_and_resumes_after_a_dropped_patch(server, ten_minutes):
    client = tus.TusClient(server.url("/v1/tus/"))
    first = client.uploader(file_stream=io.BytesIO(ten_minutes), chunk_size=2 * MB, metadata={"filename": "call.wav"})
    first.upload(stop_at=8 * MB)  # then the client goes away
    assert first.offset == 8 * MB
    drop_mid_body(first.url, "PATCH", {"Tus-Resumable": "1.0.0", "Upload-Offset": str(8 * MB),
                                       "Content-Type": "application/offset+octet-stream"},
                  ten_minutes[8 * MB: 12 * MB], 3 * MB)
    deadline = time.monotonic() + 10
    while first.get_offset() != 11 * MB:  # the server keeps what arrived before the drop (as it notices the drop)
        assert time.monotonic() < deadline, first.get_offset()
        time.sleep(0.02)
    resumed = tus.TusClient(server.url("/v1/tus/")).uploader(
        file_stream=io.BytesIO(ten_minutes), url=first.url, chunk_size=2 * MB, upload_checksum=True)
    assert resumed.offset == 11 * MB
    resumed.upload()
    upload_id = first.url.rsplit("/", 1)[1]
    with httpx.Client(timeout=60) as http:
        status = http.get(server.url(f"/v1/upload/{upload_id}")).json()
        assert status["state"] == "complete" and status["filename"] == "call.wav"
        assert status["sha256"] == hashlib.sha256(ten_minutes).hexdigest()
        response = http.post(server.url("/v1/upload/complete"), json={"upload_id": upload_id})
        assert response.status_code == 202  # a tus upload feeds jobs like a chunked one
        assert http.delete(server.url(f"/v1/jobs/{response.json()['job_id']}")).status_code == 204


def test_kill_9_mid_upload_and_mid_job_loses_nothing_acknowledged_and_finishes(tmp_path, ten_minutes):
    server = LiveServer(tmp_path).start()
    http = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=8))
    try:
        # a job finished before the crashes: its result and embedding must come back unchanged
        small = wav_bytes(long_recording(20.0, seed=4))
        upload = init(http, server, small, MB)
        ChunkSender(http, upload, small).send_all([0])
        job_id = http.post(server.url("/v1/upload/complete"),
                           json={"upload_id": upload["upload_id"], "return_embedding": True}).json()["job_id"]
        finished = wait_job(http, server, job_id)
        embedding = http.get(server.url(f"/v1/jobs/{job_id}/embedding.npy")).content

        # kill -9 in the middle of a parallel upload
        upload = init(http, server, ten_minutes, 256 * 1024)
        sender = ChunkSender(http, upload, ten_minutes)

        def send_until_killed() -> None:
            with contextlib.suppress(httpx.TransportError):
                sender.send_all(shuffled(upload["chunk_count"], seed=3))

        sending = threading.Thread(target=send_until_killed, daemon=True)
        sending.start()
        while len(sender.acknowledged) < 20:
            time.sleep(0.005)
        server.kill_9()
        sending.join(60)
        acknowledged = set(sender.acknowledged)

        server.start()
        status = http.get(server.url(f"/v1/upload/{upload['upload_id']}")).json()
        assert acknowledged <= set(status["received"]) and status["missing"]
        ChunkSender(http, upload, ten_minutes).send_all(status["missing"])
        accepted = http.post(server.url("/v1/upload/complete"), json={
            "upload_id": upload["upload_id"], "granularity": "frame", "return_embedding": True})
        assert accepted.status_code == 202  # the joined file matched the announced sha256: every chunk intact

        # kill -9 in the middle of the job
        job_url = accepted.json()["status_url"]
        while (job := http.get(job_url).json())["status"] != "running" or job["progress"] < 0.05:
            assert job["status"] in ("queued", "running"), job
            time.sleep(0.01)
        server.kill_9()
        store = Store(StoreConfig(data_dir=tmp_path / "data"))
        assert store.get_job(job["job_id"]).status == "running"  # left running by the crash
        store.close()

        server.start()
        done = wait_job(http, server, job["job_id"])
        assert done["status"] == "succeeded" and done["progress"] == 1.0
        frames = len(done["result"]["timestamps"])
        assert frames == (600 * 16000 - 400) // 320 + 1 and len(done["result"]["scores"]) == frames
        store = Store(StoreConfig(data_dir=tmp_path / "data"))
        assert store.get_job(job["job_id"]).attempts == 2  # re-queued and run again, not finished before the kill
        store.close()
        assert http.get(server.url(f"/v1/jobs/{job_id}")).json() == finished
        assert http.get(server.url(f"/v1/jobs/{job_id}/embedding.npy")).content == embedding
    finally:
        http.close()
        server.stop()
