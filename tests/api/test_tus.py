"""tus 1.0 at /v1/tus/ (in process): core, creation, termination, expiration, checksum — the protocol's rules."""

from __future__ import annotations

import base64
import hashlib

import pytest

TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {**TUS, "Content-Type": "application/offset+octet-stream"}
DATA = bytes(range(256)) * 400  # 102,400 bytes


def create(client, length: int = len(DATA), **headers) -> str:
    response = client.post("/v1/tus/", headers={**TUS, "Upload-Length": str(length), **headers})
    assert response.status_code == 201, response.text
    return response.headers["location"]


def patch(client, url: str, data: bytes, offset: int, **headers):
    return client.patch(url, content=data, headers={**STREAM, "Upload-Offset": str(offset), **headers})


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def test_options_announce_the_version_extensions_and_limits(client):
    response = client.options("/v1/tus/")
    assert response.status_code == 204
    assert response.headers["tus-version"] == "1.0.0" and response.headers["tus-resumable"] == "1.0.0"
    assert set(response.headers["tus-extension"].split(",")) == {"creation", "termination", "expiration", "checksum",
                                                                 "concatenation"}
    assert int(response.headers["tus-max-size"]) == 2 * 1024**3
    assert "sha1" in response.headers["tus-checksum-algorithm"].split(",")


def test_create_head_patch_until_complete(client, tmp_path):
    metadata = f"filename {base64.b64encode('café.wav'.encode()).decode()},is_confidential"
    response = client.post("/v1", headers={**TUS, "Upload-Length": str(len(DATA)), "Upload-Metadata": metadata})
    assert response.status_code == 404  # only /v1/tus is tus
    url = create(client, **{"Upload-Metadata": metadata})
    upload_id = url.rsplit("/", 1)[1]
    assert url == f"http://testserver/v1/tus/{upload_id}"
    head = client.head(url, headers=TUS)
    assert head.status_code == 200 and head.headers["upload-offset"] == "0"
    assert head.headers["upload-length"] == str(len(DATA)) and head.headers["cache-control"] == "no-store"
    assert head.headers["upload-metadata"] == metadata and "GMT" in head.headers["upload-expires"]
    response = patch(client, url, DATA[:40_000], 0)
    assert response.status_code == 204 and response.headers["upload-offset"] == "40000"
    assert response.headers["tus-resumable"] == "1.0.0" and "upload-expires" in response.headers
    response = patch(client, url, DATA[40_000:], 40_000, **{"Upload-Checksum": checksum("sha1", DATA[40_000:])})
    assert response.status_code == 204 and response.headers["upload-offset"] == str(len(DATA))
    status = client.get(f"/v1/upload/{upload_id}").json()
    assert status["state"] == "complete" and status["filename"] == "café.wav"
    assert status["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert (tmp_path / "data" / "uploads" / upload_id / "data").read_bytes() == DATA
    assert client.head(url, headers=TUS).headers["upload-offset"] == str(len(DATA))
    response = patch(client, url, b"more", len(DATA))
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"


def test_the_upload_feeds_a_job(client):
    from ..samples import long_recording, wav_bytes

    data = wav_bytes(long_recording(8.0, seed=2))
    url = create(client, len(data))
    upload_id = url.rsplit("/", 1)[1]
    response = client.post("/v1/jobs", json={"upload_id": upload_id})
    assert response.status_code == 409 and response.json()["error"] == {
        "code": "upload_incomplete", "message": response.json()["error"]["message"], "offset": 0}
    patch(client, url, data, 0)
    job = client.post("/v1/upload/complete", json={"upload_id": upload_id}).json()
    assert client.get(job["status_url"], params={"wait": 60}).json()["status"] == "succeeded"


@pytest.mark.parametrize("version", [None, "0.2.2", "2.0.0"])
def test_other_protocol_versions_get_412(client, version):
    url = create(client)
    headers = {"Tus-Resumable": version} if version else {}
    for response in (client.post("/v1/tus/", headers={**headers, "Upload-Length": "10"}),
                     client.head(url, headers=headers),
                     client.patch(url, content=b"x", headers={**headers, "Upload-Offset": "0",
                                                              "Content-Type": "application/offset+octet-stream"}),
                     client.delete(url, headers=headers)):
        assert response.status_code == 412 and response.headers["tus-version"] == "1.0.0"
    assert client.head(url, headers=TUS).headers["upload-offset"] == "0"


@pytest.mark.parametrize("headers", [
    {},  # no Upload-Length
    {"Upload-Length": "-5"},
    {"Upload-Length": "ten"},
    {"Upload-Length": "0"},
    {"Upload-Defer-Length": "1"},
    {"Upload-Length": "10", "Upload-Metadata": "filename not-base64!"},
    {"Upload-Length": "10", "Upload-Metadata": "a YQ==,a YQ=="},
    {"Upload-Length": "10", "Upload-Metadata": "name " + base64.b64encode(bytes([0xFF, 0xFE])).decode()},
])
def test_creation_refuses_bad_headers(client, headers):
    response = client.post("/v1/tus/", headers={**TUS, **headers})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_parameter"


def test_patch_rules_offset_type_length_and_checksum(client):
    url = create(client)
    assert patch(client, url, DATA[:1000], 0).status_code == 204
    response = patch(client, url, DATA[1000:2000], 0)  # a stale offset
    assert response.status_code == 409 and response.json()["error"]["offset"] == 1000
    response = client.patch(url, content=DATA[1000:2000], headers={**TUS, "Upload-Offset": "1000",
                                                                    "Content-Type": "application/octet-stream"})
    assert response.status_code == 415
    for offset in ("", "-1", "x"):
        assert client.patch(url, content=b"x", headers={**STREAM, "Upload-Offset": offset}).status_code == 400
    assert patch(client, url, bytes(len(DATA)), 1000).status_code == 413  # past Upload-Length
    response = patch(client, url, DATA[1000:2000], 1000, **{"Upload-Checksum": checksum("md5", b"other bytes")})
    assert response.status_code == 460 and response.json()["error"]["code"] == "checksum_mismatch"
    assert patch(client, url, DATA[1000:2000], 1000, **{"Upload-Checksum": "crc32 AAAA"}).status_code == 400
    assert client.head(url, headers=TUS).headers["upload-offset"] == "1000"  # nothing refused was stored
    for algorithm in ("md5", "sha1", "sha256"):
        offset = int(client.head(url, headers=TUS).headers["upload-offset"])
        piece = DATA[offset: offset + 500]
        response = patch(client, url, piece, offset, **{"Upload-Checksum": checksum(algorithm, piece)})
        assert response.status_code == 204 and response.headers["upload-offset"] == str(offset + 500)
    assert patch(client, url, b"", 2500).status_code == 204  # an empty PATCH changes nothing


def test_method_override_termination_and_unknown_ids(client, tmp_path):
    url = create(client)
    response = client.post(url, content=DATA[:10], headers={**STREAM, "Upload-Offset": "0",
                                                            "X-HTTP-Method-Override": "PATCH"})
    assert response.status_code == 204 and response.headers["upload-offset"] == "10"
    upload_id = url.rsplit("/", 1)[1]
    assert (tmp_path / "data" / "uploads" / upload_id).is_dir()
    assert client.delete(url, headers=TUS).status_code == 204
    assert not (tmp_path / "data" / "uploads" / upload_id).exists()
    for response in (client.head(url, headers=TUS), client.delete(url, headers=TUS), patch(client, url, b"x", 10)):
        assert response.status_code == 404 and response.headers["tus-resumable"] == "1.0.0"
    chunked = client.post("/v1/upload/init", json={"total_size": 10}).json()["upload_id"]
    assert client.head(f"/v1/tus/{chunked}", headers=TUS).status_code == 404  # not a tus upload
    response = client.get(url, headers=TUS)
    assert response.status_code == 405 and response.headers["tus-resumable"] == "1.0.0"


def test_concatenation_joins_partial_uploads_into_a_final_one_that_feeds_a_job(client, tmp_path):
    from ..samples import long_recording, wav_bytes

    data = wav_bytes(long_recording(8.0, seed=4))
    cut = len(data) // 3
    urls = []
    for piece in (data[:cut], data[cut:]):  # as tus-js-client and Uppy send with parallelUploads
        url = create(client, len(piece), **{"Upload-Concat": "partial"})
        assert patch(client, url, piece, 0).status_code == 204
        head = client.head(url, headers=TUS)
        assert head.headers["upload-concat"] == "partial" and head.headers["upload-offset"] == str(len(piece))
        urls.append(url)
    filename = base64.b64encode(b"call.wav").decode()
    response = client.post("/v1/tus/", headers={**TUS, "Upload-Concat": f"final;{urls[0]} {urls[1]}",
                                                "Upload-Metadata": f"filename {filename}"})
    assert response.status_code == 201, response.text
    final = response.headers["location"]
    head = client.head(final, headers=TUS)
    assert head.headers["upload-concat"] == f"final;{urls[0]} {urls[1]}"
    assert head.headers["upload-offset"] == head.headers["upload-length"] == str(len(data))
    final_id = final.rsplit("/", 1)[1]
    assert (tmp_path / "data" / "uploads" / final_id / "data").read_bytes() == data
    status = client.get(f"/v1/upload/{final_id}").json()
    assert status["state"] == "complete" and status["filename"] == "call.wav"
    assert status["sha256"] == hashlib.sha256(data).hexdigest()
    response = patch(client, final, b"x", len(data))
    assert response.status_code == 403 and response.headers["tus-resumable"] == "1.0.0"
    response = client.post("/v1/jobs", json={"upload_id": urls[0].rsplit("/", 1)[1]})
    assert response.status_code == 409 and "partial" in response.json()["error"]["message"]
    job = client.post("/v1/upload/complete", json={"upload_id": final_id}).json()
    assert client.get(job["status_url"], params={"wait": 60}).json()["status"] == "succeeded"


def test_concatenation_refuses_what_the_extension_does_not_allow(client):
    partial = create(client, 10, **{"Upload-Concat": "partial"})
    plain = create(client, 10)
    for url in (partial, plain):
        patch(client, url, b"0123456789", 0)
    unfinished = create(client, 10, **{"Upload-Concat": "partial"})
    path = "/v1/tus/" + partial.rsplit("/", 1)[1]
    cases = [
        ({"Upload-Concat": f"final;{partial}", "Upload-Length": "10"}, 400, "invalid_parameter"),
        ({"Upload-Concat": "final;"}, 400, "invalid_parameter"),
        ({"Upload-Concat": "parallel"}, 400, "invalid_parameter"),
        ({"Upload-Concat": f"final;{partial} {plain}"}, 400, "invalid_parameter"),  # not made as a partial
        ({"Upload-Concat": f"final;{partial} http://testserver/v1/upload/{'0' * 32}"}, 400, "invalid_parameter"),
        ({"Upload-Concat": f"final;{partial} {unfinished}"}, 409, "upload_incomplete"),
        ({"Upload-Concat": f"final;{partial} http://testserver/v1/tus/{'0' * 32}"}, 404, "not_found"),
        ({"Upload-Concat": f"final;{partial} http://testserver/v1/tus/..%2F..%2Fsecret"}, 404, "not_found"),
    ]
    for headers, status, code in cases:
        response = client.post("/v1/tus/", headers={**TUS, **headers})
        assert response.status_code == status and response.json()["error"]["code"] == code, (headers, response.text)
    response = client.post("/v1/tus/", headers={**TUS, "Upload-Concat": f"final;{path} {path}"})  # paths work too
    assert response.status_code == 201
    assert client.head(response.headers["location"], headers=TUS).headers["upload-length"] == "20"
