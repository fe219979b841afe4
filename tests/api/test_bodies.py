"""Upload bodies (chunk PUTs, tus PATCHes) go to disk as they arrive: an idle timeout, a bound on bodies at once,
and never a whole body in memory. Bodies are sent through httpx's ASGI transport, which hands the app each piece
only when it asks for the next, so a stalled or slow client is exactly that."""

from __future__ import annotations

import asyncio
import tracemalloc

import httpx

from emoserve.api.bodies import WRITE_PIECE_BYTES
from emoserve.jobs.store import ChunkReceiver

TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {**TUS, "Content-Type": "application/offset+octet-stream"}
MIB = 1024 * 1024
NO_TIMEOUT_AT_ALL_S = 30  # far past the 0.2 s body timeout under test: a server without one fails, not hangs


class StalledBody:
    """Sends `first`, then nothing until `release` is set, then `rest`; `waiting` is set once the app asks for more."""

    def __init__(self, first: bytes, rest: bytes = b""):
        self.first, self.rest = first, rest
        self.waiting, self.release = asyncio.Event(), asyncio.Event()

    async def __aiter__(self):
        yield self.first
        self.waiting.set()
        await self.release.wait()
        if self.rest:
            yield self.rest


async def pieces(total: int, size: int = 64 * 1024):
    block = bytes(size)
    for _ in range(total // size):
        yield block


def asgi_client(client) -> httpx.AsyncClient:
    """Requests to the app that `client` started (model loaded, store open), in this event loop."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=client.app), base_url="http://testserver")


def tus_create(client, length: int, **headers) -> str:
    response = client.post("/v1/tus/", headers={**TUS, "Upload-Length": str(length), **headers})
    assert response.status_code == 201, response.text
    return response.headers["location"]


def files_under(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_a_chunk_body_that_stalls_is_cut_off_with_408_and_nothing_of_it_is_kept(make_client, tmp_path):
    client = make_client(upload_body_timeout_s=0.2)
    upload = client.post("/v1/upload/init", json={"total_size": 2000, "chunk_size": 1000}).json()

    async def send() -> httpx.Response:
        async with asgi_client(client) as http:
            body = StalledBody(b"x" * 500, b"x" * 500)
            return await asyncio.wait_for(http.put(upload["chunk_urls"][0], content=body), NO_TIMEOUT_AT_ALL_S)

    response = asyncio.run(send())
    assert response.status_code == 408 and response.json()["error"]["code"] == "request_timeout"
    assert response.headers["connection"] == "close"
    assert client.get(f"/v1/upload/{upload['upload_id']}").json()["received"] == []
    assert files_under(tmp_path / "data" / "uploads" / upload["upload_id"]) == []  # no chunk, no temp file


def test_a_tus_patch_that_stalls_is_cut_off_and_keeps_what_arrived_unless_it_has_a_checksum(make_client):
    client = make_client(upload_body_timeout_s=0.2)
    url = tus_create(client, 1000)

    async def send(**headers) -> httpx.Response:
        async with asgi_client(client) as http:
            offset = (await http.head(url, headers=TUS)).headers["upload-offset"]
            body = StalledBody(b"x" * 300, b"x" * 300)
            return await asyncio.wait_for(http.patch(url, content=body, headers={
                **STREAM, "Upload-Offset": offset, **headers}), NO_TIMEOUT_AT_ALL_S)

    response = asyncio.run(send())
    assert response.status_code == 408 and response.json()["error"]["code"] == "request_timeout"
    assert client.head(url, headers=TUS).headers["upload-offset"] == "300"  # resumable: HEAD says where
    assert asyncio.run(send(**{"Upload-Checksum": "sha1 " + "A" * 27 + "="})).status_code == 408
    assert client.head(url, headers=TUS).headers["upload-offset"] == "300"  # unverifiable bytes are not kept


def test_one_body_more_than_the_bound_gets_503_with_retry_after(make_client):
    client = make_client(upload_max_concurrent_bodies=2)
    upload = client.post("/v1/upload/init", json={"total_size": 3000, "chunk_size": 1000}).json()
    url = tus_create(client, 1000)

    async def send() -> tuple[list[httpx.Response], list[httpx.Response]]:
        stalled = [StalledBody(b"c" * 500, b"c" * 500), StalledBody(b"t" * 500, b"t" * 500)]
        async with asgi_client(client) as http:
            held = [asyncio.create_task(http.put(upload["chunk_urls"][0], content=stalled[0])),
                    asyncio.create_task(http.patch(url, content=stalled[1], headers={**STREAM, "Upload-Offset": "0"}))]
            for body in stalled:
                await asyncio.wait_for(body.waiting.wait(), 30)  # both are being read: both slots taken
            refused = [await http.put(upload["chunk_urls"][1], content=b"c" * 1000),
                       await http.patch(url, content=b"t", headers={**STREAM, "Upload-Offset": "0"})]
            for body in stalled:
                body.release.set()
            return refused, [await task for task in held]

    refused, held = asyncio.run(send())
    for response in refused:
        assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded"
        assert int(response.headers["retry-after"]) > 0
    assert [r.status_code for r in held] == [200, 204]
    assert client.put(upload["chunk_urls"][1], content=b"c" * 1000).status_code == 200  # the slots came back


def test_a_large_body_is_never_held_in_memory(make_client, monkeypatch):
    client = make_client()
    upload = client.post("/v1/upload/init", json={"total_size": 4 * MIB, "chunk_size": 4 * MIB}).json()
    url = tus_create(client, 8 * MIB)  # not completed by the PATCH: only the body's way to disk is measured

    async def send() -> list[httpx.Response]:
        async with asgi_client(client) as http:
            return [await http.put(upload["chunk_urls"][0], content=pieces(4 * MIB)),
                    await http.patch(url, content=pieces(4 * MIB), headers={**STREAM, "Upload-Offset": "0"})]

    tracemalloc.start()
    try:
        responses = asyncio.run(send())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.status_code for r in responses] == [200, 204]
    assert peak < 1 * MIB, f"{peak} bytes held at the peak for 4 MiB bodies"

    written = []
    real_write = ChunkReceiver.write
    monkeypatch.setattr(ChunkReceiver, "write", lambda self, data: written.append(len(data)) or real_write(self, data))
    again = client.post("/v1/upload/init", json={"total_size": 4 * MIB, "chunk_size": 4 * MIB}).json()
    assert client.put(again["chunk_urls"][0], content=bytes(4 * MIB)).status_code == 200  # one 4 MiB message
    assert sum(written) == 4 * MIB and max(written) <= WRITE_PIECE_BYTES
