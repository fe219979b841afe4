"""The custom integration inside a real Home Assistant (its test harness) against a live emoserve.

The same tests run against Home Assistant 2024.3 (the oldest the component supports) and a current
release (tests/integrations/run_isolated.sh), so they use only what both harnesses offer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest
import pytest_socket
from aiohttp import web
from homeassistant import config_entries, data_entry_flow
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import async_capture_events

from ..live import analyze_directly, serve_directory, serve_in_subprocess, tone_wav

DOMAIN = "emoserve"


@pytest.fixture(scope="module")
def server():
    """$EMOSERVE_TEST_SERVER when set (a server outside this root: the current Home Assistant runs in a
    Debian root without the project's venv), else one started here."""
    pytest_socket.enable_socket()  # module fixtures set up before the tests' own `socket_enabled`
    if os.environ.get("EMOSERVE_TEST_SERVER"):
        yield os.environ["EMOSERVE_TEST_SERVER"]
        return
    with serve_in_subprocess() as base:
        yield base


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "doorbell.wav"
    path.write_bytes(tone_wav(1.5))
    return path


@pytest.fixture
def file_server(clip):
    with serve_directory(clip.parent) as base:
        yield base


async def setup_yaml(hass, server, tmp_path) -> None:
    hass.config.allowlist_external_dirs = {str(tmp_path)}
    assert await async_setup_component(hass, DOMAIN, {DOMAIN: {"url": server}})
    await hass.async_block_till_done()


async def test_analyze_a_file_fires_the_event_and_answers(hass, server, clip, tmp_path):
    await setup_yaml(hass, server, tmp_path)
    events = async_capture_events(hass, "emoserve_result")
    response = await hass.services.async_call(DOMAIN, "analyze", {"file": str(clip)}, blocking=True,
                                              return_response=True)
    await hass.async_block_till_done()
    want = analyze_directly(server, clip)
    assert len(events) == 1 and events[0].data == response
    assert response["emotion"] == want["emotion"] and response["confidence"] == pytest.approx(want["confidence"])
    assert response["scores"] == pytest.approx(want["scores"]) and response["source"] == str(clip)


async def test_analyze_a_url(hass, server, clip, tmp_path, file_server):
    await setup_yaml(hass, server, tmp_path)
    events = async_capture_events(hass, "emoserve_result")
    await hass.services.async_call(DOMAIN, "analyze", {"url": f"{file_server}/{clip.name}"}, blocking=True)
    await hass.async_block_till_done()
    assert events[0].data["emotion"] == analyze_directly(server, clip)["emotion"]


@contextlib.asynccontextmanager
async def slow_server(clip: bytes, limit: int) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """aiohttp on 127.0.0.1, as a camera or NAS might send a recording: /clip.wav is `clip` in 8 KiB pieces
    with a pause after each (Content-Length set); /endless is zeros past `limit` with no length; /announced
    announces more than `limit`, sends a little, then waits. Yields the base URL and an event set when a
    client hangs up mid-stream."""
    hung_up, release = asyncio.Event(), asyncio.Event()

    async def send(request: web.Request, pieces, length: int | None = None) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = length
        await response.prepare(request)
        try:
            for piece in pieces:
                await response.write(piece)
                await asyncio.sleep(0.001)
        except ConnectionError:
            hung_up.set()
        return response

    async def clip_wav(request):
        return await send(request, (clip[i:i + 8192] for i in range(0, len(clip), 8192)), len(clip))

    async def endless(request):
        return await send(request, [b"\0" * 65536] * (2 * limit // 65536))

    async def announced(request):
        response = await send(request, [b"\0" * 8192], limit + 1)
        await release.wait()
        return response

    app = web.Application()
    app.add_routes([web.get("/clip.wav", clip_wav), web.get("/endless", endless), web.get("/announced", announced)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}", hung_up
    finally:
        release.set()
        await runner.cleanup()


async def test_a_url_sent_slowly_in_small_pieces_is_read_to_the_end(hass, server, tmp_path):
    big = tmp_path / "clip.wav"
    big.write_bytes(tone_wav(25, rate=48_000))  # 2.4 MB, 25 s: within the server's limits
    await setup_yaml(hass, server, tmp_path)
    from custom_components.emoserve.const import MAX_AUDIO_BYTES

    async with slow_server(big.read_bytes(), MAX_AUDIO_BYTES) as (base, _):
        response = await hass.services.async_call(DOMAIN, "analyze", {"url": f"{base}/clip.wav"}, blocking=True,
                                                  return_response=True)
    want = analyze_directly(server, big)
    assert response["duration_s"] == pytest.approx(want["duration_s"]) == pytest.approx(25.0)
    assert response["emotion"] == want["emotion"] and response["scores"] == pytest.approx(want["scores"])


async def test_a_url_over_the_limit_is_refused(hass, server, tmp_path):
    await setup_yaml(hass, server, tmp_path)
    from custom_components.emoserve.const import MAX_AUDIO_BYTES

    async with slow_server(b"", MAX_AUDIO_BYTES) as (base, hung_up):
        for path in ("/announced", "/endless"):  # the length said, or the bytes counted while they arrive
            with pytest.raises(ServiceValidationError, match=f"{path} is over {MAX_AUDIO_BYTES} bytes"):
                await hass.services.async_call(DOMAIN, "analyze", {"url": base + path}, blocking=True)
        await asyncio.wait_for(hung_up.wait(), 10)  # the download stopped at the limit, not at the end


async def test_refusals(hass, server, clip, tmp_path, file_server):
    await setup_yaml(hass, server, tmp_path)
    with pytest.raises(ServiceValidationError, match="allowlist_external_dirs"):
        await hass.services.async_call(DOMAIN, "analyze", {"file": "/etc/hostname"}, blocking=True)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio" * 100)
    with pytest.raises(HomeAssistantError, match="unsupported_format|corrupt_audio"):
        await hass.services.async_call(DOMAIN, "analyze", {"file": str(broken)}, blocking=True)
    with pytest.raises(HomeAssistantError, match="could not download"):
        await hass.services.async_call(DOMAIN, "analyze", {"url": f"{file_server}/missing.wav"}, blocking=True)
    with pytest.raises(Exception, match="at least one|exclusion"):
        await hass.services.async_call(DOMAIN, "analyze", {}, blocking=True)


async def add_server(hass, url: str) -> dict:
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    assert result["type"] == data_entry_flow.FlowResultType.FORM and result["step_id"] == "user"
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"url": url})
    await hass.async_block_till_done()
    return result


async def analyze_file(hass, clip, **target) -> dict:
    return await hass.services.async_call(DOMAIN, "analyze", {"file": str(clip), **target}, blocking=True,
                                          return_response=True)


async def test_config_flow_checks_the_server_and_the_service_outlives_its_entries(hass, server, clip, tmp_path):
    result = await add_server(hass, "http://127.0.0.1:9")
    assert result["type"] == data_entry_flow.FlowResultType.FORM and result["errors"] == {"base": "cannot_connect"}
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"url": server + "/"})
    assert result["type"] == data_entry_flow.FlowResultType.CREATE_ENTRY
    assert result["title"] == f"emoserve {server.removeprefix('http://')} (random:tiny)"
    assert result["data"] == {"url": server}
    await hass.async_block_till_done()
    hass.config.allowlist_external_dirs = {str(tmp_path)}
    entry = hass.config_entries.async_entries(DOMAIN)[0]
    assert entry.unique_id == server and entry.runtime_data.model == "random:tiny"
    response = await analyze_file(hass, clip)
    assert response["emotion"] == analyze_directly(server, clip)["emotion"]
    assert response["config_entry_id"] == entry.entry_id
    assert await hass.config_entries.async_unload(entry.entry_id)
    assert hass.services.has_service(DOMAIN, "analyze")  # registered once, for every entry
    with pytest.raises(ServiceValidationError, match="no emoserve server is loaded"):
        await analyze_file(hass, clip)
    with pytest.raises(ServiceValidationError, match="is not loaded"):
        await analyze_file(hass, clip, config_entry_id=entry.entry_id)


@contextlib.asynccontextmanager
async def forwarder(target: str) -> AsyncIterator[tuple[str, list[str]]]:
    """A second server on 127.0.0.1 (another port) that forwards every request to `target`, keeping the paths
    it forwarded: which of two configured servers a call went to."""
    import aiohttp

    paths: list[str] = []

    async def forward(request: web.Request) -> web.Response:
        paths.append(request.path)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with aiohttp.ClientSession() as session, \
                session.request(request.method, target + request.path_qs, headers=headers,
                                data=await request.read()) as answer:
            return web.Response(status=answer.status, body=await answer.read(),
                                content_type=answer.content_type)

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}", paths
    finally:
        await runner.cleanup()


async def test_several_servers_each_added_once_and_chosen_by_entry_id(hass, server, clip, tmp_path):
    hass.config.allowlist_external_dirs = {str(tmp_path)}
    async with forwarder(server) as (other, forwarded):
        for url in (server, other):
            assert (await add_server(hass, url))["type"] == data_entry_flow.FlowResultType.CREATE_ENTRY
        again = await add_server(hass, server + "/")
        assert again["type"] == data_entry_flow.FlowResultType.ABORT and again["reason"] == "already_configured"
        first, second = entries = hass.config_entries.async_entries(DOMAIN)
        assert [e.unique_id for e in entries] == [e.runtime_data.url for e in entries] == [server, other]
        with pytest.raises(ServiceValidationError, match="2 emoserve servers are set up: choose one with "
                                                         "config_entry_id"):
            await analyze_file(hass, clip)
        forwarded.clear()
        assert (await analyze_file(hass, clip, config_entry_id=first.entry_id))["config_entry_id"] == first.entry_id
        assert forwarded == []
        response = await analyze_file(hass, clip, config_entry_id=second.entry_id)
        assert response["config_entry_id"] == second.entry_id and forwarded == ["/v1/analyze"]
        assert response["emotion"] == analyze_directly(server, clip)["emotion"]
        with pytest.raises(ServiceValidationError, match="config_entry_id nonsense is not an emoserve server"):
            await analyze_file(hass, clip, config_entry_id="nonsense")
        for entry in entries:  # before the forwarder goes
            assert await hass.config_entries.async_unload(entry.entry_id)


async def test_a_server_in_configuration_yaml_is_imported_as_an_entry_once(hass, server, tmp_path):
    await setup_yaml(hass, server, tmp_path)
    entries = hass.config_entries.async_entries(DOMAIN)
    assert [(e.source, e.unique_id) for e in entries] == [(config_entries.SOURCE_IMPORT, server)]
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_IMPORT},
                                                       data={"url": server})
    assert result["type"] == data_entry_flow.FlowResultType.ABORT and result["reason"] == "already_configured"
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_IMPORT},
                                                       data={"url": "http://127.0.0.1:9"})
    assert result["type"] == data_entry_flow.FlowResultType.ABORT and result["reason"] == "cannot_connect"
