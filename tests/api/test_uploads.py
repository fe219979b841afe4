"""Chunked uploads and jobs over HTTP (in process): the contract of docs/API.md's long-audio section."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import time

import numpy as np
import pytest

from ..samples import long_recording, wav_bytes
from .conftest import wait_healthy

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def recording() -> bytes:
    return wav_bytes(long_recording(20.0, seed=5))


def init(client, data: bytes, chunk_size: int | None = CHUNK, **fields):
    body = {"filename": "call.wav", "total_size": len(data), **fields}
    if chunk_size is not None:
        body["chunk_size"] = chunk_size
    return client.post("/v1/upload/init", json=body)


def send_all(client, data: bytes, chunk_size: int = CHUNK, **fields) -> str:
    upload = init(client, data, chunk_size, **fields).json()
    for index, url in enumerate(upload["chunk_urls"]):
        assert client.put(url, content=data[index * chunk_size: (index + 1) * chunk_size]).status_code == 200
    return upload["upload_id"]


def error_of(response) -> dict:
    assert response.headers["content-type"] == "application/json", response.text
    return response.json()["error"]


def finished(client, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 5}).json()
        if job["status"] in ("succeeded", "failed"):
            return job
    raise AssertionError("job did not finish")


def test_init_gives_absolute_chunk_urls_and_an_expiry(client):
    response = init(client, bytes(150_000), 64 * 1024, filename="../../etc/passwd")
    assert response.status_code == 201
    upload = response.json()
    assert upload["chunk_count"] == 3 and upload["missing"] == [0, 1, 2] and upload["received"] == []
    assert upload["chunk_urls"] == [f"http://testserver/v1/upload/{upload['upload_id']}/chunk/{i}" for i in range(3)]
    assert upload["state"] == "uploading" and upload["expires_at"].endswith("Z")
    assert upload["filename"] == "passwd"  # a label, never a path
    assert response.headers["location"] == f"http://testserver/v1/upload/{upload['upload_id']}"
    assert init(client, bytes(10), None).json()["chunk_size"] == 5 * 1024 * 1024  # the default


@pytest.mark.parametrize("body, code", [
    ({"filename": "a.wav"}, "invalid_parameter"),  # total_size missing
    ({"total_size": 0}, "invalid_parameter"),
    ({"total_size": 10, "chunk_size": 5 * 1024 * 1024 + 1}, "invalid_parameter"),
    ({"total_size": 10, "sha256": "abc"}, "invalid_parameter"),
    ({"total_size": 10, "chunk_sise": 4}, "invalid_parameter"),  # a typo is refused, not ignored
    ({"total_size": 3 * 1024**3}, "payload_too_large"),
])
def test_init_refuses_bad_announcements(client, body, code):
    response = client.post("/v1/upload/init", json=body)
    assert error_of(response)["code"] == code
    assert response.status_code == (413 if code == "payload_too_large" else 400)


def test_chunks_in_any_order_then_complete_give_the_librarys_timeline(client, recording, tiny_model):
    digest = hashlib.sha256(recording).hexdigest()
    upload = init(client, recording, sha256=digest).json()
    order = list(range(upload["chunk_count"]))
    random.Random(3).shuffle(order)
    for position, index in enumerate(order):
        piece = recording[index * CHUNK: (index + 1) * CHUNK]
        response = client.put(upload["chunk_urls"][index], content=piece)
        assert response.status_code == 200 and response.json() == {"index": index, "size": len(piece)}
        if position == len(order) // 2:
            status = client.get(f"/v1/upload/{upload['upload_id']}").json()
            assert status["received"] == sorted(order[: position + 1])
            assert status["missing"] == sorted(order[position + 1:])
    assert client.put(upload["chunk_urls"][order[0]], content=recording[order[0] * CHUNK:][:CHUNK]).status_code == 200
    accepted = client.post("/v1/upload/complete", json={"upload_id": upload["upload_id"]})
    assert accepted.status_code == 202
    job = accepted.json()
    assert job["status"] in ("queued", "running") and job["status_url"].endswith(f"/v1/jobs/{job['job_id']}")
    assert accepted.headers["location"] == job["status_url"]
    done = client.get(job["status_url"], params={"wait": 60}).json()
    assert done["status"] == "succeeded" and done["progress"] == 1.0 and done["error"] is None
    expected = tiny_model.analyze_long(recording)
    assert done["result"] == json.loads(json.dumps(expected.to_dict()))
    assert done["result"]["segments"] and done["result"]["overall"]["emotion"] is not None
    status = client.get(f"/v1/upload/{upload['upload_id']}").json()
    assert status["state"] == "complete" and status["missing"] == [] and status["sha256"] == digest
    again = client.post("/v1/upload/complete", json={"upload_id": upload["upload_id"]})
    assert again.status_code == 202 and again.json()["job_id"] == job["job_id"]  # a retried request, the same job


def test_chunk_checksums_sizes_and_indexes_are_checked(client):
    data = bytes(range(256)) * 1000  # 256,000 bytes: 3 chunks of 100,000 and one of 56,000
    upload = init(client, data, 100_000).json()
    url = upload["chunk_urls"][0]
    first = data[:100_000]
    md5 = hashlib.md5(first).digest()
    assert client.put(url, content=first, headers={"Content-MD5": base64.b64encode(md5).decode()}).status_code == 200
    assert client.put(url, content=first, headers={"Content-MD5": md5.hex()}).status_code == 200
    assert client.put(url, content=first, headers={"X-Chunk-SHA256": hashlib.sha256(first).hexdigest()}) \
        .status_code == 200
    for headers in ({"Content-MD5": base64.b64encode(hashlib.md5(b"x").digest()).decode()},
                    {"X-Chunk-SHA256": hashlib.sha256(b"x").hexdigest()}):
        response = client.put(url, content=first, headers=headers)
        assert response.status_code == 400 and error_of(response)["code"] == "checksum_mismatch"
    response = client.put(url, content=first[:-1])
    assert response.status_code == 409 and error_of(response) | {"message": ""} == {
        "code": "conflict", "message": "", "index": 0, "expected_size": 100_000}
    response = client.put(url, content=first + b"x")
    assert response.status_code == 413 and error_of(response)["code"] == "payload_too_large"
    for index in ("4", "-1", "99999999999999999999"):
        response = client.put(url[:-1] + index, content=b"x")
        assert response.status_code == 400 and error_of(response)["code"] == "invalid_parameter"
    response = client.put(url[:-1] + "one", content=b"x")
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_parameter"


def test_completing_an_incomplete_upload_is_409_with_what_is_missing(client, recording):
    upload = init(client, recording).json()
    for index in (0, 2):
        client.put(upload["chunk_urls"][index], content=recording[index * CHUNK: (index + 1) * CHUNK])
    response = client.post("/v1/upload/complete", json={"upload_id": upload["upload_id"]})
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "upload_incomplete"
    assert error["missing"] == [i for i in range(upload["chunk_count"]) if i not in (0, 2)]
    response = client.post("/v1/jobs", json={"upload_id": upload["upload_id"]})
    assert response.status_code == 409 and error_of(response)["missing"] == error["missing"]


def test_a_whole_file_checksum_mismatch_refuses_to_complete(client, recording):
    upload_id = send_all(client, recording, sha256=hashlib.sha256(b"another file").hexdigest())
    response = client.post("/v1/upload/complete", json={"upload_id": upload_id})
    assert response.status_code == 400 and error_of(response)["code"] == "checksum_mismatch"
    assert client.get(f"/v1/upload/{upload_id}").json()["state"] == "uploading"


def test_jobs_on_a_complete_upload_with_embedding_wait_and_delete(make_client, recording, tiny_model):
    client = make_client(job_max_wait_s=0.3)
    upload_id = send_all(client, recording)
    response = client.post("/v1/jobs", json={"upload_id": upload_id})
    assert response.status_code == 409 and error_of(response)["code"] == "upload_incomplete"  # not completed yet
    client.post("/v1/upload/complete", json={"upload_id": upload_id, "granularity": "utterance"})

    runner = client.app.state.service.runner
    runner.stop()  # jobs stay queued: what ?wait and the embedding answer for an unfinished job
    frames = client.post("/v1/jobs", json={"upload_id": upload_id, "granularity": "frame", "return_embedding": True})
    assert frames.status_code == 202
    job_id = frames.json()["job_id"]
    started = time.monotonic()
    assert client.get(f"/v1/jobs/{job_id}", params={"wait": 100}).json()["status"] == "queued"
    assert time.monotonic() - started < 5  # cut to job_max_wait_s
    response = client.get(f"/v1/jobs/{job_id}/embedding.npy")
    assert response.status_code == 409 and error_of(response)["code"] == "conflict"
    assert error_of(client.get(f"/v1/jobs/{job_id}", params={"wait": -1}))["code"] == "invalid_parameter"
    runner.start()

    done = finished(client, job_id)
    assert done["status"] == "succeeded" and done["options"] == {"granularity": "frame", "return_embedding": True}
    timestamps = done["result"]["timestamps"]
    assert len(done["result"]["scores"]) == len(timestamps) and timestamps[1] == pytest.approx(0.02)
    response = client.get(f"/v1/jobs/{job_id}/embedding.npy")
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-npy"
    embedding = np.load(io.BytesIO(response.content))
    assert embedding.shape == (len(timestamps), tiny_model.config.embed_dim) and embedding.dtype == np.float32
    repeat = client.post("/v1/jobs", json={"upload_id": upload_id, "granularity": "frame", "return_embedding": True})
    assert repeat.json() == {**frames.json(), "status": "succeeded"}

    plain = client.post("/v1/jobs", json={"upload_id": upload_id}).json()["job_id"]
    assert finished(client, plain)["status"] == "succeeded"
    response = client.get(f"/v1/jobs/{plain}/embedding.npy")
    assert response.status_code == 404 and "return_embedding" in error_of(response)["message"]
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    for response in (client.get(f"/v1/jobs/{job_id}"), client.delete(f"/v1/jobs/{job_id}"),
                     client.get(f"/v1/jobs/{job_id}/embedding.npy")):
        assert response.status_code == 404 and error_of(response)["code"] == "not_found"


def test_job_options_are_checked(client, recording):
    upload_id = send_all(client, recording)
    client.post("/v1/upload/complete", json={"upload_id": upload_id})
    for body in ({"upload_id": upload_id, "granularity": "word"},
                 {"upload_id": upload_id, "callback_url": "ftp://example.com/x"},
                 {"upload_id": upload_id, "return_embeddings": True},
                 {"granularity": "frame"}):
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 400 and error_of(response)["code"] == "invalid_parameter", body


def test_a_failing_file_fails_its_job_with_the_audio_error(client):
    upload_id = send_all(client, b"definitely not audio" * 100)
    job_id = client.post("/v1/upload/complete", json={"upload_id": upload_id}).json()["job_id"]
    failed = finished(client, job_id)
    assert failed["status"] == "failed" and failed["result"] is None
    assert failed["error"]["code"] in ("unsupported_format", "corrupt_audio")


def test_an_abandoned_upload_can_be_deleted_unless_a_job_needs_it(client, recording, tmp_path):
    upload = init(client, recording).json()
    client.put(upload["chunk_urls"][0], content=recording[:CHUNK])
    assert (tmp_path / "data" / "uploads" / upload["upload_id"]).is_dir()
    assert client.delete(f"/v1/upload/{upload['upload_id']}").status_code == 204
    assert client.get(f"/v1/upload/{upload['upload_id']}").status_code == 404
    assert not (tmp_path / "data" / "uploads" / upload["upload_id"]).exists()

    upload_id = send_all(client, recording)
    client.app.state.service.runner.stop()
    client.post("/v1/upload/complete", json={"upload_id": upload_id})
    response = client.delete(f"/v1/upload/{upload_id}")
    assert response.status_code == 409 and error_of(response)["code"] == "conflict"


BAD_IDS = ["..%2F..%2Fsecret", "%2e%2e", "..", "0" * 31, "0" * 33, "A" * 32, "g" * 32, "%00" + "0" * 29,
           "0" * 30 + "%2F.", "%E2%80%AE" + "0" * 29, "0" * 32 + "%20"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_and_traversal_in_urls_are_not_found_and_touch_nothing(client, tmp_path, bad):
    secret = tmp_path / "secret"
    secret.write_text("keep me")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "logs" not in p.parts)
    tus = {"Tus-Resumable": "1.0.0"}
    patch = {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    responses = [
        client.get(f"/v1/upload/{bad}"), client.delete(f"/v1/upload/{bad}"),
        client.put(f"/v1/upload/{bad}/chunk/0", content=b"x"),
        client.post("/v1/upload/complete", json={"upload_id": bad}),
        client.post("/v1/jobs", json={"upload_id": bad}),
        client.get(f"/v1/jobs/{bad}"), client.get(f"/v1/jobs/{bad}/embedding.npy"), client.delete(f"/v1/jobs/{bad}"),
        client.head(f"/v1/tus/{bad}", headers=tus), client.delete(f"/v1/tus/{bad}", headers=tus),
        client.patch(f"/v1/tus/{bad}", content=b"x", headers=patch),
    ]
    for response in responses:
        assert response.status_code in (404, 405), (response.request.url, response.status_code, response.text)
        if response.request.method != "HEAD":
            assert error_of(response)["code"] in ("not_found", "method_not_allowed")
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "logs" not in p.parts)
    assert after == before and secret.read_text() == "keep me"


def test_quotas_refuse_uploads_past_the_limits(make_client):
    client = make_client(upload_max_active=1, upload_max_bytes=1000)
    response = init(client, bytes(1001))
    assert response.status_code == 413 and error_of(response)["code"] == "payload_too_large"
    tus = {"Tus-Resumable": "1.0.0"}
    assert client.post("/v1/tus/", headers={**tus, "Upload-Length": "1001"}).status_code == 413
    assert init(client, bytes(1000)).status_code == 201
    for response in (init(client, bytes(10)), client.post("/v1/tus/", headers={**tus, "Upload-Length": "10"})):
        assert response.status_code == 429 and error_of(response)["code"] == "quota_exceeded"
        assert int(response.headers["retry-after"]) > 0


def test_idle_uploads_expire_and_the_sweep_shows_over_http(make_client, tmp_path):
    client = make_client(upload_expiry_s=0.5, sweep_interval_s=0.1)
    upload = init(client, bytes(2 * CHUNK)).json()
    client.put(upload["chunk_urls"][0], content=bytes(CHUNK))
    tus_url = client.post("/v1/tus/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"}).headers["location"]
    directory = tmp_path / "data" / "uploads" / upload["upload_id"]
    assert directory.is_dir()
    deadline = time.monotonic() + 10

    def swept() -> bool:  # both uploads: the tus one was made a moment later and may expire one sweep later
        chunked_gone = client.get(f"/v1/upload/{upload['upload_id']}").json()["state"] == "expired"
        tus_gone = client.head(tus_url, headers={"Tus-Resumable": "1.0.0"}).status_code == 410
        return chunked_gone and tus_gone and not directory.exists()

    while not swept():
        assert time.monotonic() < deadline, "the sweep did not expire the uploads and remove their files"
        time.sleep(0.05)
    for response in (client.put(upload["chunk_urls"][1], content=bytes(CHUNK)),
                     client.post("/v1/upload/complete", json={"upload_id": upload["upload_id"]}),
                     client.head(tus_url, headers={"Tus-Resumable": "1.0.0"})):
        assert response.status_code == 410, response.text
    assert error_of(client.put(upload["chunk_urls"][1], content=bytes(CHUNK)))["code"] == "upload_expired"


def test_every_upload_job_and_tus_route_needs_the_key(make_client):
    client = make_client(api_keys="sesame")
    tus = {"Tus-Resumable": "1.0.0"}
    some_id = "0" * 32
    calls = [("POST", "/v1/upload/init", {}), ("PUT", f"/v1/upload/{some_id}/chunk/0", {}),
             ("GET", f"/v1/upload/{some_id}", {}), ("DELETE", f"/v1/upload/{some_id}", {}),
             ("POST", "/v1/upload/complete", {}), ("POST", "/v1/jobs", {}), ("GET", f"/v1/jobs/{some_id}", {}),
             ("GET", f"/v1/jobs/{some_id}/embedding.npy", {}), ("DELETE", f"/v1/jobs/{some_id}", {}),
             ("OPTIONS", "/v1/tus/", {}), ("POST", "/v1/tus/", tus), ("HEAD", f"/v1/tus/{some_id}", tus),
             ("PATCH", f"/v1/tus/{some_id}", tus), ("DELETE", f"/v1/tus/{some_id}", tus)]
    for method, path, headers in calls:
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401, (method, path)
        if path.startswith("/v1/tus"):
            assert response.headers["tus-resumable"] == "1.0.0"
        keyed = client.request(method, path, headers={**headers, "X-API-Key": "sesame"})
        assert keyed.status_code != 401, (method, path)
    created = client.post("/v1/upload/init", json={"total_size": 10}, headers={"Authorization": "Bearer sesame"})
    assert created.status_code == 201


def test_uploads_go_on_while_the_model_loads_but_jobs_wait_for_it(make_client, held_model_load, recording):
    client = make_client(model=None)
    deadline = time.monotonic() + 10
    while (response := init(client, recording)).status_code == 503:  # the store opens first, in a moment
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert response.status_code == 201
    upload = response.json()
    for index, url in enumerate(upload["chunk_urls"]):
        assert client.put(url, content=recording[index * CHUNK: (index + 1) * CHUNK]).status_code == 200
    response = client.post("/v1/upload/complete", json={"upload_id": upload["upload_id"]})
    assert response.status_code == 503 and error_of(response)["code"] == "model_loading"
    assert "retry-after" in response.headers
    held_model_load.set()
    wait_healthy(client)
    job_id = client.post("/v1/upload/complete", json={"upload_id": upload["upload_id"]}).json()["job_id"]
    assert finished(client, job_id)["status"] == "succeeded"


def test_the_upload_and_job_routes_are_in_the_openapi_schema(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert set(paths["/v1/upload/init"]) == {"post"} and "put" in paths["/v1/upload/{upload_id}/chunk/{index}"]
    assert {"get", "delete"} <= set(paths["/v1/jobs/{job_id}"]) and "post" in paths["/v1/jobs"]
    assert {"head", "patch", "delete"} <= set(paths["/v1/tus/{upload_id}"])
    for name in ("UploadInit", "UploadCreated", "UploadStatus", "JobRequest", "JobAccepted", "JobStatus",
                 "LongformResult", "Segment"):
        assert name in schema["components"]["schemas"], name
