"""GET /v1/jobs/{id} of large results, callback URLs and parallel POST /v1/jobs over HTTP (in process)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi.responses import JSONResponse

from emoserve.jobs.store import json_bytes
from emoserve.labels import LABELS

from ..test_store import looking_slowly

HALF_HOUR_OF_FRAMES = 90_000  # 30 min at one frame per 20 ms: a result of about 17 MB of JSON


def frame_result(frames: int) -> bytes:
    """The JSON of a result shaped like a long frame job's (docs/API.md), with random scores."""
    scores = np.random.default_rng(0).random((frames, len(LABELS)))
    body = {"model": "random:tiny ü→😀", "granularity": "frame", "duration_s": frames * 0.02, "labels": list(LABELS),
            "segments": [{"start": 0.0, "end": 1.0, "emotion": "happy", "confidence": 0.9,
                          "scores": dict(zip(LABELS, scores[0].tolist()))}],
            "overall": {"emotion": "happy", "confidence": 0.9, "scores": dict(zip(LABELS, scores[0].tolist())),
                        "speech_s": 1.0},
            "timestamps": [round(i * 0.02, 2) for i in range(frames)], "scores": scores.tolist()}
    return json_bytes(body)


def complete_upload(client) -> str:
    """An upload of ten bytes, complete; the runner stopped, so jobs on it stay as the test leaves them."""
    service = client.app.state.service
    service.runner.stop()
    upload = service.store.create_upload("a.wav", 10, 10)
    service.store.put_chunk(upload.upload_id, 0, b"0123456789")
    service.store.complete_upload(upload.upload_id)
    return upload.upload_id


def finished_job(client, result: bytes | None) -> str:
    """A running job finished by hand with `result` (or left running without one)."""
    store = client.app.state.service.store
    job = store.create_job(complete_upload(client), {"granularity": "frame", "return_embedding": False})
    store.claim_job()
    if result is not None:
        store.finish_job(job.job_id, result=result)
    return job.job_id


def previous_body(client, job_id: str) -> bytes:
    """The body GET /v1/jobs/{id} sent before results were streamed: the parsed job through JSONResponse."""
    return JSONResponse(client.app.state.service.store.get_job(job_id).to_dict()).body


def test_a_result_is_sent_as_stored_without_being_parsed_or_serialised(client, monkeypatch):
    job_id = finished_job(client, frame_result(20_000))
    expected = previous_body(client, job_id)
    handled = []

    def measured(function, size_of):
        def call(*args, **kwargs):
            value = function(*args, **kwargs)
            handled.append(size_of(args, value))
            return value
        return call

    monkeypatch.setattr(json, "loads", measured(json.loads, lambda args, value: len(args[0])))
    monkeypatch.setattr(json, "dumps", measured(json.dumps, lambda args, value: len(value)))
    response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200 and response.content == expected
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(expected) > 3_000_000
    assert max(handled, default=0) < 10_000  # only the few status fields went through json


def test_etags_answer_304_until_the_job_changes(client):
    job_id = finished_job(client, None)
    store = client.app.state.service.store
    running = client.get(f"/v1/jobs/{job_id}")
    etag = running.headers["etag"]
    assert etag.startswith('"') and running.json()["status"] == "running"
    not_modified = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b"" and not_modified.headers["etag"] == etag
    store.set_progress(job_id, 0.5)
    moved = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert moved.status_code == 200 and moved.json()["progress"] == 0.5 and moved.headers["etag"] != etag

    store.finish_job(job_id, result=frame_result(100))
    done = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": moved.headers["etag"]})
    assert done.status_code == 200 and done.content == previous_body(client, job_id)
    etag = done.headers["etag"]
    assert client.get(f"/v1/jobs/{job_id}").headers["etag"] == etag  # the same bytes, the same tag
    for header in (etag, f'"other", W/{etag}', "*"):
        assert client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": header}).status_code == 304
    assert client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag}).status_code == 404


def test_health_answers_while_16_clients_fetch_a_half_hour_frame_result(client):
    job_id = finished_job(client, frame_result(HALF_HOUR_OF_FRAMES))
    size = len(client.get(f"/v1/jobs/{job_id}").content)
    assert size > 15_000_000
    fetching, latencies = threading.Event(), []

    def fetch(_) -> int:
        with client.stream("GET", f"/v1/jobs/{job_id}") as response:
            return sum(len(block) for block in response.iter_bytes())

    def poll_health() -> None:
        while fetching.is_set():
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            latencies.append(time.monotonic() - started)

    fetching.set()
    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            assert list(pool.map(fetch, range(16))) == [size] * 16
    finally:
        fetching.clear()
        poller.join()
    assert latencies and max(latencies) < 1.0, max(latencies)  # blocked for seconds when each GET re-serialised


def test_parallel_identical_posts_make_one_job(client, monkeypatch):
    upload_id = complete_upload(client)
    looking_slowly(client.app.state.service.store, monkeypatch)
    start = threading.Barrier(16)

    def post(_) -> str:
        start.wait()
        response = client.post("/v1/jobs", json={"upload_id": upload_id, "granularity": "frame"})
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    with ThreadPoolExecutor(16) as pool:
        assert len(set(pool.map(post, range(16)))) == 1


def test_a_callback_url_on_this_host_is_refused_unless_allow_listed(make_client, tmp_path):
    urls = ["http://127.0.0.1:9/x", "http://localhost:9/x", "http://0x7f000001:9/x", "http://[::ffff:127.0.0.1]:9/x"]
    strict = make_client()
    upload_id = complete_upload(strict)
    for url in urls:
        response = strict.post("/v1/jobs", json={"upload_id": upload_id, "callback_url": url})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "invalid_parameter" and "EMOSERVE_CALLBACK_ALLOW_NETWORKS" in error["message"]

    allowing = make_client(data_dir=tmp_path / "allowing", callback_allow_networks="127.0.0.0/8, ::1")
    upload_id = complete_upload(allowing)
    for url in urls:
        assert allowing.post("/v1/jobs", json={"upload_id": upload_id, "callback_url": url}).status_code == 202
