"""The custom integration inside a real Home Assistant (its test harness) against a live emoserve."""

from __future__ import annotations

import pytest
import pytest_socket
from homeassistant import config_entries, data_entry_flow
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import async_capture_events

from ..live import analyze_directly, serve_directory, serve_in_subprocess, tone_wav

DOMAIN = "emoserve"


@pytest.fixture(scope="module")
def server():
    pytest_socket.enable_socket()  # module fixtures set up before the tests' own `socket_enabled`
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


async def test_config_flow_checks_the_server_and_sets_up_the_service(hass, server, clip, tmp_path):
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    assert result["type"] == data_entry_flow.FlowResultType.FORM and result["step_id"] == "user"
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"url": "http://127.0.0.1:9"})
    assert result["type"] == data_entry_flow.FlowResultType.FORM and result["errors"] == {"base": "cannot_connect"}
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"url": server + "/"})
    assert result["type"] == data_entry_flow.FlowResultType.CREATE_ENTRY
    assert result["title"] == "emoserve (random:tiny)" and result["data"] == {"url": server}
    await hass.async_block_till_done()
    hass.config.allowlist_external_dirs = {str(tmp_path)}
    response = await hass.services.async_call(DOMAIN, "analyze", {"file": str(clip)}, blocking=True,
                                              return_response=True)
    assert response["emotion"] == analyze_directly(server, clip)["emotion"]
    entry = hass.config_entries.async_entries(DOMAIN)[0]
    assert await hass.config_entries.async_unload(entry.entry_id)
    assert not hass.services.has_service(DOMAIN, "analyze")
