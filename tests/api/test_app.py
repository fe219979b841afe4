"""The service end to end through its HTTP interface (random:tiny model)."""

import base64
import io
import json
import threading
from email.parser import BytesParser
from email.policy import HTTP

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from emoserve import LABELS
from emoserve.api.app import create_app
from emoserve.config import Settings

from ..samples import noise, sweep, wav_bytes
from .conftest import wait_healthy


def post(client, data: bytes, filename="clip.wav", headers=None, **fields):
    return client.post("/v1/analyze", files={"audio_file": (filename, data, "application/octet-stream")},
                       data={k: str(v) for k, v in fields.items()}, headers=headers or {})


def parse_mixed(response):
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n" + response.content)
    return [(part.get_content_type(), part.get_filename(), part.get_payload(decode=True),
             part["Content-Length"]) for part in message.iter_parts()]


def test_health_and_models(client, tiny_model):
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "healthy", "model": "random:tiny",
                             "granularity_supported": ["utterance", "frame"], "weights": "random"}
    models = client.get("/v1/models").json()["models"]
    assert models[0]["name"] == "random:tiny" and models[0]["labels"] == list(LABELS)
    assert models[0]["sample_rate"] == 16000 and models[0]["frame_rate"] == 50
    assert models[0]["embedding_dim"] == tiny_model.info.embedding_dim and models[0]["weights"] == "random"
    assert models[0]["precision"] == "exact" and models[0]["execution"].startswith("fp32")
    assert models[0]["backend"] == "torch"


def test_utterance_analysis_is_the_model_answer(client, tiny_model):
    clip = sweep(1.5)
    response = post(client, wav_bytes(clip))
    assert response.status_code == 200, response.text
    body = response.json()
    expected = tiny_model.analyze(wav_bytes(clip))
    assert body["emotion"] == expected.emotion and body["duration_s"] == 1.5
    assert body["scores"] == pytest.approx(expected.scores, abs=1e-6)
    assert list(body["scores"]) == list(LABELS) and body["model"] == "random:tiny"
    assert response.headers["x-request-id"]


def test_frame_analysis(client):
    body = post(client, wav_bytes(noise(16000)), granularity="frame").json()
    assert len(body["scores"]) == 49 and all(len(row) == 9 for row in body["scores"])
    assert body["timestamps"][:3] == pytest.approx([0.0, 0.02, 0.04]) and body["labels"] == list(LABELS)
    assert body["emotion"] in LABELS


def test_embedding_and_processed_audio_as_multipart_mixed(client, tiny_model):
    clip = sweep(1.0, rate=44100)
    response = post(client, wav_bytes(clip, rate=44100), granularity="frame", return_embedding="yes",
                    return_processed_audio="1")
    assert response.status_code == 200 and response.headers["content-type"].startswith("multipart/mixed")
    parts = parse_mixed(response)
    assert [p[0] for p in parts] == ["application/json", "application/x-npy", "audio/wav"]
    assert [p[1] for p in parts] == [None, "embedding.npy", "processed.wav"]
    assert all(int(p[3]) == len(p[2]) for p in parts)
    result = json.loads(parts[0][2])
    embedding = np.load(io.BytesIO(parts[1][2]), allow_pickle=False)
    assert int(response.headers["x-embedding-size"]) == len(parts[1][2])
    assert embedding.dtype == np.float32 and embedding.shape == (len(result["scores"]), tiny_model.info.embedding_dim)
    audio, rate = sf.read(io.BytesIO(parts[2][2]), dtype="int16")
    assert rate == 16000 and abs(len(audio) - 16000) <= 1 and audio.ndim == 1


def test_accept_json_gets_base64_fields(client, tiny_model):
    response = post(client, wav_bytes(sweep(1.0)), return_embedding="true", return_processed_audio="true",
                    headers={"Accept": "application/json"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    embedding = np.load(io.BytesIO(base64.b64decode(body["embedding_npy_b64"])))
    assert embedding.shape == (tiny_model.info.embedding_dim,)
    assert int(response.headers["x-embedding-size"]) == len(base64.b64decode(body["embedding_npy_b64"]))
    audio, rate = sf.read(io.BytesIO(base64.b64decode(body["processed_audio_wav_b64"])))
    assert rate == 16000 and len(audio) == 16000


@pytest.mark.parametrize(("data", "fields", "status", "code"), [
    (b"", {}, 400, "empty_audio"),
    (b"this is not audio at all" * 10, {}, 400, "unsupported_format"),
    (wav_bytes(noise(300)), {}, 400, "too_short"),
    (wav_bytes(noise(16000 * 31)), {}, 413, "audio_too_long"),
    (wav_bytes(np.full(16000, np.nan, np.float32), subtype="FLOAT"), {}, 400, "corrupt_audio"),
    (wav_bytes(noise(16000)), {"granularity": "word"}, 400, "invalid_parameter"),
    (wav_bytes(noise(16000)), {"return_embedding": "maybe"}, 400, "invalid_parameter"),
    (wav_bytes(noise(16000)), {"colour": "blue"}, 400, "invalid_parameter"),
])
def test_bad_input_gets_its_error(client, data, fields, status, code):
    response = post(client, data, **fields)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code and response.json()["error"]["message"]


def test_too_many_bytes_is_refused_before_decoding(make_client):
    client = make_client(max_bytes=50_000)
    response = post(client, wav_bytes(noise(16000 * 2)))  # 64 kB of PCM16
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_request_shape_errors(client):
    assert client.post("/v1/analyze", data={"granularity": "frame"}).json()["error"]["code"] == "invalid_parameter"
    response = client.post("/v1/analyze", content=b"raw", headers={"Content-Type": "audio/wav"})
    assert response.status_code == 400 and "multipart/form-data" in response.json()["error"]["message"]
    response = client.post("/v1/analyze", data={"audio_file": "text, not a file"})
    assert response.status_code == 400
    response = client.post("/v1/analyze", content=b"--x\r\nbroken", headers={
        "Content-Type": "multipart/form-data; boundary=x"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_parameter"


def test_unknown_routes_and_methods_are_json(client):
    response = client.get("/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    response = client.get("/v1/analyze")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_request_id_is_echoed_or_made(client):
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = client.get("/health", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"]
    assert made != "bad id with spaces" and len(made) == 32


def test_health_goes_from_loading_to_healthy(make_client, held_model_load):
    client = make_client(model=None)
    loading = client.get("/health")
    assert loading.status_code == 503 and loading.json()["status"] == "loading"
    assert int(loading.headers["retry-after"]) >= 1
    early = post(client, wav_bytes(noise(16000)))
    assert early.status_code == 503 and early.json()["error"]["code"] == "model_loading"
    assert "retry-after" in early.headers
    held_model_load.set()
    wait_healthy(client)
    assert post(client, wav_bytes(noise(16000))).status_code == 200


def test_a_model_that_fails_to_load_is_reported(tmp_path):
    settings = Settings.from_flat(model=str(tmp_path / "missing-model-dir"), log_dir=tmp_path / "logs",
                                  data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        for _ in range(200):
            health = client.get("/health").json()
            if health["status"] != "loading":
                break
            threading.Event().wait(0.02)
        assert health["status"] == "failed" and "does not exist" in health["error"]
        response = post(client, wav_bytes(noise(16000)))
        assert response.status_code == 503 and response.json()["error"]["code"] == "model_unavailable"
    assert "failed to load" in (tmp_path / "logs" / "model_load.log").read_text()


# ---- channels=split ----

def stereo_call() -> tuple[np.ndarray, np.ndarray]:
    return sweep(1.0, rate=44100), noise(44100, seed=5, amplitude=0.3)


def test_split_answers_one_entry_per_channel_each_what_that_channel_gives_alone(client, tiny_model):
    left, right = stereo_call()
    response = post(client, wav_bytes(np.stack([left, right], axis=1), rate=44100), channels="split",
                    channel_names="agent,customer", granularity="frame")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"channels", "duration_s", "model"} and body["duration_s"] == 1.0
    assert [(c["channel"], c["name"]) for c in body["channels"]] == [(0, "agent"), (1, "customer")]
    for entry, voice in zip(body["channels"], (left, right), strict=True):
        alone = post(client, wav_bytes(voice, rate=44100), granularity="frame").json()
        assert set(entry) == {"channel", "name", *alone}
        assert entry["utterance_scores"] == pytest.approx(alone["utterance_scores"], abs=1e-5)
        assert np.allclose(entry["scores"], alone["scores"], atol=1e-5)


def test_split_embeddings_and_audio_per_channel_in_json_and_multipart(client, tiny_model):
    stereo = wav_bytes(np.stack(stereo_call(), axis=1), rate=44100)
    body = post(client, stereo, channels="split", return_embedding="true", return_processed_audio="true",
                headers={"Accept": "application/json"}).json()
    for entry in body["channels"]:
        embedding = np.load(io.BytesIO(base64.b64decode(entry["embedding_npy_b64"])))
        assert embedding.shape == (tiny_model.info.embedding_dim,)
        audio, rate = sf.read(io.BytesIO(base64.b64decode(entry["processed_audio_wav_b64"])))
        assert rate == 16000 and len(audio) == 16000
    parts = parse_mixed(post(client, stereo, channels="split", return_embedding="true", return_processed_audio="1"))
    assert [p[1] for p in parts] == [None, "embedding-0.npy", "processed-0.wav", "embedding-1.npy", "processed-1.wav"]
    assert [c["name"] for c in json.loads(parts[0][2])["channels"]] == ["left", "right"]


@pytest.mark.parametrize(("data", "fields", "message"), [
    (wav_bytes(noise(16000)), {"channels": "split"}, "one channel"),
    (wav_bytes(np.stack([noise(16000), noise(16000, seed=1)], axis=1)), {"channels": "split",
                                                                        "channel_names": "a,b,c"}, "names 3"),
    (wav_bytes(noise(16000)), {"channels": "left"}, "channels must be"),
])
def test_split_refusals_are_invalid_parameters(client, data, fields, message):
    response = post(client, data, **fields)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_parameter"
    assert message in response.json()["error"]["message"]
