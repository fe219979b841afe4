"""Long stereo calls over HTTP: uploads, tus and jobs with channels=split give the library's split timeline."""

from __future__ import annotations

import io

import numpy as np
import pytest

from ..samples import espeak_available, noise, two_speaker_call, wav_bytes
from .test_tus import TUS, create, patch
from .test_uploads import close_to, error_of, finished, send_all

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def call_samples() -> np.ndarray:
    """A stereo call at 22.05 kHz, (n, 2)."""
    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    return two_speaker_call(22_050)[0]


@pytest.fixture(scope="module")
def call(call_samples) -> bytes:
    return wav_bytes(call_samples, 22_050)


def test_a_split_job_gives_the_librarys_split_timeline(client, call, tiny_model):
    upload_id = send_all(client, call)
    accepted = client.post("/v1/upload/complete", json={"upload_id": upload_id, "channels": "split",
                                                       "channel_names": "agent,customer"})
    assert accepted.status_code == 202, accepted.text
    job = finished(client, accepted.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["options"] == {"granularity": "utterance", "return_embedding": False, "channels": "split",
                              "channel_names": ["agent", "customer"]}
    want = tiny_model.analyze_long(call, channels="split", channel_names=["agent", "customer"]).to_dict()
    assert job["result"] == close_to(want)
    assert [t["speaker"] for t in job["result"]["turns"]] == ["agent", "customer", "agent", "customer"]
    assert len(job["result"]["overlaps"]) == 1 and job["result"]["summary"]["overlap_s"] > 0
    assert ("get", "/v1/jobs/{job_id}", 200, "JobStatus") in client.contract.seen  # checked against the contract


def test_a_tus_upload_feeds_a_split_job(client, call, tiny_model):
    url = create(client, len(call))
    assert patch(client, url, call, 0).status_code == 204
    response = client.post("/v1/jobs", json={"upload_id": url.rsplit("/", 1)[1], "channels": "split",
                                             "granularity": "frame"}, headers=TUS)
    job = finished(client, response.json()["job_id"])
    channels = job["result"]["channels"]
    assert [c["name"] for c in channels] == ["left", "right"] and len(channels[0]["scores"]) > 100
    want = tiny_model.analyze_long(call, channels="split", granularity="frame").to_dict()
    assert job["result"]["turns"] == close_to(want["turns"])


@pytest.mark.parametrize("granularity", ["utterance", "frame"])
def test_a_split_job_keeps_each_channels_embedding_as_that_channel_alone_gives_it(client, call, call_samples,
                                                                                   tiny_model, granularity):
    upload_id = send_all(client, call)
    accepted = client.post("/v1/upload/complete", json={"upload_id": upload_id, "channels": "split",
                                                       "granularity": granularity, "return_embedding": True})
    job = finished(client, accepted.json()["job_id"])
    assert job["status"] == "succeeded", job
    url = f"/v1/jobs/{job['job_id']}/embedding.npy"
    for k in (0, 1):
        response = client.get(url, params={"channel": str(k)})
        assert response.status_code == 200, response.text
        assert response.headers["content-disposition"] == f'attachment; filename="embedding.ch{k}.npy"'
        alone = tiny_model.analyze_long(wav_bytes(call_samples[:, k], 22_050), granularity=granularity,
                                        return_embedding=True).embedding
        got = np.load(io.BytesIO(response.content), allow_pickle=False)
        assert got.dtype == np.float32 and got.shape == alone.shape
        np.testing.assert_allclose(got, alone, rtol=0, atol=1e-5)
    for params, status in (({}, 400), ({"channel": "x"}, 400), ({"channel": "\uff11"}, 400),
                           ({"channel": "-1"}, 400), ({"channel": "2"}, 404)):
        response = client.get(url, params=params)
        assert response.status_code == status, params
        assert error_of(response)["code"] == ("invalid_parameter" if status == 400 else "not_found")
    assert "channel" in error_of(client.get(url))["message"]


def test_a_mixed_jobs_embedding_takes_no_channel(client):
    upload_id = send_all(client, wav_bytes(noise(16_000 * 3)))
    job = finished(client, client.post("/v1/upload/complete", json={"upload_id": upload_id, "granularity": "frame",
                                                                    "return_embedding": True}).json()["job_id"])
    url = f"/v1/jobs/{job['job_id']}/embedding.npy"
    assert client.get(url).status_code == 200
    assert client.get(url).headers["content-disposition"] == 'attachment; filename="embedding.npy"'
    response = client.get(url, params={"channel": "0"})
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_parameter"


def test_a_mono_upload_is_refused_for_a_split_job_when_the_job_is_asked_for(client):
    mono = wav_bytes(noise(16_000 * 3))
    chunked = send_all(client, mono)
    url = create(client, len(mono))
    assert patch(client, url, mono, 0).status_code == 204
    for path, upload_id, headers in (("/v1/upload/complete", chunked, {}), ("/v1/jobs", chunked, {}),
                                     ("/v1/jobs", url.rsplit("/", 1)[1], TUS)):
        response = client.post(path, json={"upload_id": upload_id, "channels": "split"}, headers=headers)
        assert response.status_code == 400, (path, response.text)
        assert error_of(response)["code"] == "invalid_parameter" and "one channel" in error_of(response)["message"]
    accepted = client.post("/v1/jobs", json={"upload_id": chunked})  # the upload stays usable, mixed
    assert finished(client, accepted.json()["job_id"])["status"] == "succeeded"


def test_a_header_that_hides_a_mono_file_still_fails_the_split_job(client, monkeypatch):
    monkeypatch.setattr("emoserve.jobs.runner.check_splittable", lambda path: None)  # as if the header said stereo
    mono = send_all(client, wav_bytes(noise(16_000 * 3)))
    job = finished(client, client.post("/v1/upload/complete", json={"upload_id": mono, "channels": "split"})
                   .json()["job_id"])
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_parameter"
    assert "one channel" in job["error"]["message"]


def test_split_job_refusals(client):
    mono = send_all(client, wav_bytes(noise(16_000 * 3)))
    for body, message in (({"channels": "both"}, "channels"),
                          ({"channels": "split", "channel_names": "a,a"}, "distinct")):
        response = client.post("/v1/jobs", json={"upload_id": mono, **body})
        assert response.status_code == 400 and error_of(response)["code"] == "invalid_parameter", body
        assert message in error_of(response)["message"]


def test_the_openapi_schema_describes_split_jobs(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"channels", "channel_names"} <= set(schemas["JobRequest"]["properties"])
    assert {"channels", "channel_names"} <= set(schemas["JobOptions"]["properties"])
    results = {option.get("$ref", "").rsplit("/", 1)[-1] for option in schemas["JobStatus"]["properties"]["result"]
               ["anyOf"]}
    assert {"SplitLongformResult", "LongformResult"} <= results
    assert set(schemas["SplitLongformResult"]["properties"]) >= {"channels", "turns", "overlaps", "summary"}
    assert {"channel", "name", "segments", "overall"} <= set(schemas["ChannelLongformResult"]["properties"])
    assert {"emotion_share", "first_angry_s", "start_emotion", "end_emotion"} <= set(
        schemas["SpeakerSummary"]["properties"])
