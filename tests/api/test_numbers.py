"""Every number a route reads (headers, path, query, JSON sizes) is ASCII digits or a 400: never a 500, never a
misreading (`/chunk/1_2` is not chunk 12)."""

from __future__ import annotations

import urllib.parse

import httpx
import pytest

from emoserve.api.numbers import MAX_INT, parse_ascii_decimal, parse_ascii_int
from emoserve.errors import InvalidParameterError

from ..samples import noise, wav_bytes

HOSTILE = ["²", "١٢", "１２", " 12", "12 ", "+12", "-1", "1_2", "0x10", "1e3", "nan", "inf", "",
           "9" * 20, "9" * 5000]
NOT_INTEGERS = [*HOSTILE, "12.0", "1."]
NOT_DECIMALS = [*HOSTILE, ".5", "1.", "1.5e3"]
TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {**TUS, "Content-Type": "application/offset+octet-stream"}
CHUNKS = {"total_size": 26, "chunk_size": 2}  # 13 chunks: /chunk/12 exists, so a misread ' 12' would be stored


def wire(value: str) -> bytes:
    """A header value as a client puts it on the wire: Latin-1 where it can (what servers decode), else UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


def raw_request(client, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> httpx.Response:
    """A request whose header bytes reach the app as sent, in the app's event loop (the test client re-encodes
    header values as UTF-8, so `²` would arrive as `Â²`: never what a server hands the app)."""
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=client.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            return await http.request(method, path, content=body,
                                      headers=[(name.encode(), wire(value)) for name, value in headers.items()])

    return client.portal.call(send)


def tus_upload(client) -> str:
    return client.post("/v1/tus/", headers={**TUS, "Upload-Length": "26"}).headers["location"]


def chunked_upload(client) -> str:
    return client.post("/v1/upload/init", json=CHUNKS).json()["upload_id"]


def tus_upload_length(client, value: str) -> httpx.Response:
    return raw_request(client, "POST", "/v1/tus/", {**TUS, "Upload-Length": value})


def tus_upload_offset(client, value: str) -> httpx.Response:
    return raw_request(client, "PATCH", tus_upload(client), {**STREAM, "Upload-Offset": value}, b"ab")


def tus_content_length(client, value: str) -> httpx.Response:
    return raw_request(client, "PATCH", tus_upload(client), {**STREAM, "Upload-Offset": "0", "Content-Length": value},
                       b"ab")


def chunk_index(client, value: str) -> httpx.Response:
    return client.put(f"/v1/upload/{chunked_upload(client)}/chunk/{urllib.parse.quote(value, safe='')}",
                      content=b"ab")


def chunk_content_length(client, value: str) -> httpx.Response:
    return raw_request(client, "PUT", f"/v1/upload/{chunked_upload(client)}/chunk/0", {"Content-Length": value},
                       b"ab")


def analyze_content_length(client, value: str | None) -> httpx.Response:
    """None: the body's true length."""
    request = client.build_request("POST", "/v1/analyze", files={"audio_file": ("a.wav", wav_bytes(noise(16000)))})
    body = request.read()
    length = str(len(body)) if value is None else value
    return raw_request(client, "POST", "/v1/analyze", {"Content-Type": request.headers["content-type"],
                                                       "Content-Length": length}, body)


def job_wait(client, value: str) -> httpx.Response:
    return client.get(f"/v1/jobs/{'0' * 32}", params={"wait": value})


def init_total_size(client, value) -> httpx.Response:
    return client.post("/v1/upload/init", json={**CHUNKS, "total_size": value})


def init_chunk_size(client, value) -> httpx.Response:
    return client.post("/v1/upload/init", json={**CHUNKS, "chunk_size": value})


# route → (its number as the client sends it, a good value with its status, the values it must refuse)
ROUTES = {
    "tus Upload-Length": (tus_upload_length, ("26", 201), NOT_INTEGERS),
    "tus Upload-Offset": (tus_upload_offset, ("0", 204), NOT_INTEGERS),
    "tus Content-Length": (tus_content_length, ("2", 204), NOT_INTEGERS),
    "chunk index in the path": (chunk_index, ("12", 200), [v for v in NOT_INTEGERS if v]),
    "chunk Content-Length": (chunk_content_length, ("2", 200), NOT_INTEGERS),
    "analyze Content-Length": (analyze_content_length, (None, 200), NOT_INTEGERS),
    "jobs ?wait=": (job_wait, ("0.25", 404), [v for v in NOT_DECIMALS if v]),
    "upload init total_size": (init_total_size, (26, 201), [*NOT_INTEGERS, 26.0, True]),
    "upload init chunk_size": (init_chunk_size, (2, 201), [*NOT_INTEGERS, 2.0, True]),
}


@pytest.mark.parametrize("route", ROUTES)
def test_each_numeric_input_refuses_non_ascii_and_loose_numbers_with_400(client, route):
    send, (good, good_status), hostile = ROUTES[route]
    assert send(client, good).status_code == good_status  # the route reads the value this test varies
    wrong = {}
    for value in hostile:
        response = send(client, value)
        code = response.json()["error"]["code"] if response.status_code >= 400 else None
        if (response.status_code, code) != (400, "invalid_parameter"):
            wrong[ascii(value)[:30]] = (response.status_code, code)
    assert not wrong, f"{route}: answers other than 400 invalid_parameter: {wrong}"
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("value, expected", [("0", 0), ("0012", 12), ("26", 26), (str(MAX_INT), MAX_INT)])
def test_ascii_digits_are_read(value, expected):
    assert parse_ascii_int(value, "n") == expected


@pytest.mark.parametrize("value, expected", [("0", 0.0), ("2.5", 2.5), ("60", 60.0), ("0.000000001", 1e-9)])
def test_ascii_decimals_are_read(value, expected):
    assert parse_ascii_decimal(value, "wait") == expected


def test_a_refusal_names_the_field_and_shows_the_value_escaped():
    with pytest.raises(InvalidParameterError) as refused:
        parse_ascii_int("١٢", "Upload-Length")
    assert "Upload-Length" in refused.value.message and r"\u0661\u0662" in refused.value.message
    with pytest.raises(InvalidParameterError) as refused:
        parse_ascii_int("9" * 5000, "Upload-Length")
    assert len(refused.value.message) < 300
    for value, minimum, maximum in [("4", 5, 10), ("11", 5, 10), (None, 0, 10), (12, 0, 20)]:
        with pytest.raises(InvalidParameterError):
            parse_ascii_int(value, "n", minimum, maximum)


def test_non_ascii_in_tus_metadata_is_a_400_too(client):
    """The same class beside the numbers: base64 of a non-ASCII string raised a ValueError the route missed."""
    response = raw_request(client, "POST", "/v1/tus/", {**TUS, "Upload-Length": "26", "Upload-Metadata": "name ²"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_parameter"
    assert "Upload-Metadata" in response.json()["error"]["message"]
