"""The wire contract over HTTP: each route's answers are bodies of `emoserve.wire` with no undeclared key,
and /openapi.json declares every key they carry (the checks are `contract.py`'s, run on every test client)."""

from __future__ import annotations

import copy

import pytest

from ..samples import conversation, espeak_available, noise, sweep, wav_bytes
from ..test_streaming import chunks, pcm16
from .contract import check_body, undeclared_keys
from .test_app import post
from .test_stream import STREAM
from .test_uploads import CHUNK, finished, init, recording, send_all  # noqa: F401 (recording: a fixture)

ERROR = "ErrorBody"


def test_every_route_answers_bodies_of_the_wire_contract(make_client, recording):  # noqa: F811
    client = make_client(max_bytes=200_000)
    clip = wav_bytes(sweep(1.0))
    assert client.get("/health").status_code == 200
    assert client.get("/v1/models").status_code == 200
    assert post(client, clip).status_code == 200
    assert post(client, clip, granularity="frame").status_code == 200
    for granularity in ("utterance", "frame"):
        both = {"return_embedding": "true", "return_processed_audio": "true", "granularity": granularity}
        assert post(client, clip, headers={"Accept": "application/json"}, **both).status_code == 200
        assert post(client, clip, **both).headers["content-type"].startswith("multipart/mixed")
    assert post(client, clip, granularity="word").status_code == 400
    assert post(client, bytes(300_000)).status_code == 413

    upload = init(client, bytes(2 * CHUNK)).json()
    assert client.put(upload["chunk_urls"][0], content=bytes(CHUNK)).status_code == 200
    assert client.get(f"/v1/upload/{upload['upload_id']}").status_code == 200
    assert client.post("/v1/upload/complete", json={"upload_id": upload["upload_id"]}).status_code == 409
    assert client.get(f"/v1/jobs/{'0' * 32}").status_code == 404
    for granularity in ("utterance", "frame"):
        upload_id = send_all(client, recording)
        accepted = client.post("/v1/upload/complete", json={"upload_id": upload_id, "granularity": granularity})
        assert finished(client, accepted.json()["job_id"])["status"] == "succeeded"
    broken = client.post("/v1/upload/complete", json={"upload_id": send_all(client, b"not audio" * 100)})
    assert finished(client, broken.json()["job_id"])["error"]["code"] in ("unsupported_format", "corrupt_audio")

    assert {
        ("get", "/health", 200, "Health"), ("get", "/v1/models", 200, "ModelsList"),
        ("post", "/v1/analyze", 200, "AnalyzeResult"), ("post", "/v1/analyze", 400, ERROR),
        ("post", "/v1/analyze", 413, ERROR), ("post", "/v1/upload/init", 201, "UploadCreated"),
        ("put", "/v1/upload/{upload_id}/chunk/{index}", 200, "ChunkReceived"),
        ("get", "/v1/upload/{upload_id}", 200, "UploadStatus"), ("post", "/v1/upload/complete", 409, ERROR),
        ("post", "/v1/upload/complete", 202, "JobAccepted"), ("get", "/v1/jobs/{job_id}", 200, "JobStatus"),
        ("get", "/v1/jobs/{job_id}", 404, ERROR),
    } <= client.contract.seen


def test_error_answers_of_the_middleware_and_the_framework_are_error_bodies(make_client):
    client = make_client(api_keys="sesame")
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/nowhere", headers={"X-API-Key": "sesame"}).status_code == 404
    assert client.delete("/v1/models", headers={"X-API-Key": "sesame"}).status_code == 405
    assert {("get", "/v1/models", 401, ERROR), ("get", "/v1/nowhere", 404, ERROR),
            ("delete", "/v1/models", 405, ERROR)} <= client.contract.seen


def stream_messages(client, messages: list[bytes]) -> list[dict]:
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text("hello")  # not audio: an error message, and the stream goes on
        for message in messages:
            ws.send_bytes(message)
        ws.send_text("end")
        received = [ws.receive_json()]
        while received[-1]["type"] != "end":
            received.append(ws.receive_json())
    return received


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_stream_messages_are_the_wire_contracts_stream_messages(make_client):
    client = make_client(**STREAM)
    wav, _ = conversation([0.8, 0.8], seed=5)
    received = stream_messages(client, chunks(pcm16(wav), [3_200]))
    assert {m["type"] for m in received} == {"error", "frames", "utterance", "end"}
    for message in received:
        check_body(message, "StreamMessage", client.app.openapi())


def test_a_key_outside_the_contract_is_found_in_the_body_and_in_the_schema(make_client):
    client = make_client()
    openapi = client.app.openapi()
    body = client.post("/v1/analyze", files={"audio_file": ("a.wav", wav_bytes(noise(16_000)))},
                       data={"granularity": "frame"}).json()
    check_body(body, "AnalyzeResult", openapi)
    with pytest.raises(AssertionError, match="wire.AnalyzeResult"):
        check_body({**body, "surprise": 1}, "AnalyzeResult", openapi)
    drifted = copy.deepcopy(openapi)  # a schema that forgot a field the server sends
    del drifted["components"]["schemas"]["FrameResult"]["properties"]["utterance_scores"]
    with pytest.raises(AssertionError, match="/openapi.json's AnalyzeResult"):
        check_body(body, "AnalyzeResult", drifted)
    job = {"job_id": "j", "status": "succeeded", "progress": 1.0, "upload_id": "u", "created_at": None,
           "started_at": None, "finished_at": None, "error": None,
           "options": {"granularity": "utterance", "return_embedding": False},
           "result": {"segments": [{"start": 0.0, "end": 1.0, "emotion": None, "confidence": None, "scores": {},
                                    "pitch": 1}],
                      "overall": {"emotion": None, "confidence": None, "scores": {}, "speech_s": 1.0},
                      "labels": [], "duration_s": 1.0, "model": "m", "granularity": "utterance"}}
    assert undeclared_keys(job, {"$ref": "#/components/schemas/JobStatus"}, openapi) == \
        ["body.result.segments[0].pitch"]
