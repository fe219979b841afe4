"""emoserve for Home Assistant: the service `emoserve.analyze` (a media file path or URL) that fires
an `emoserve_result` event with the emotion, and returns it to scripts that ask for a response.

Configure with the UI (Settings → Devices & services → Add integration → emoserve) or in
configuration.yaml:

    emoserve:
      url: http://192.168.1.20:8000
      api_key: !secret emoserve_api_key     # only when the server has keys
"""

from __future__ import annotations

from pathlib import Path

import voluptuous as vol
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, ServiceCall, ServiceResponse, SupportsResponse
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.typing import ConfigType

from .api import EmoserveApiError, analyze
from .const import (
    ATTR_FILE,
    ATTR_URL,
    CONF_API_KEY,
    CONF_URL,
    DOMAIN,
    EVENT_RESULT,
    MAX_AUDIO_BYTES,
    SERVICE_ANALYZE,
    TIMEOUT_S,
)

CONFIG_SCHEMA = vol.Schema({DOMAIN: vol.Schema({vol.Required(CONF_URL): cv.url,
                                                vol.Optional(CONF_API_KEY): cv.string})}, extra=vol.ALLOW_EXTRA)
SERVICE_SCHEMA = vol.Schema(vol.All({vol.Exclusive(ATTR_FILE, "source"): cv.string,
                                     vol.Exclusive(ATTR_URL, "source"): cv.url},
                                    cv.has_at_least_one_key(ATTR_FILE, ATTR_URL)))


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """configuration.yaml: one server for the whole installation."""
    if DOMAIN in config:
        start(hass, dict(config[DOMAIN]))
    return True


async def async_setup_entry(hass: HomeAssistant, entry: ConfigEntry) -> bool:
    start(hass, dict(entry.data))
    return True


async def async_unload_entry(hass: HomeAssistant, entry: ConfigEntry) -> bool:
    hass.services.async_remove(DOMAIN, SERVICE_ANALYZE)
    hass.data.pop(DOMAIN, None)
    return True


def start(hass: HomeAssistant, conf: dict) -> None:
    hass.data[DOMAIN] = conf

    async def handle(call: ServiceCall) -> ServiceResponse:
        return await analyze_source(hass, call.data)

    hass.services.async_register(DOMAIN, SERVICE_ANALYZE, handle, schema=SERVICE_SCHEMA,
                                 supports_response=SupportsResponse.OPTIONAL)


async def analyze_source(hass: HomeAssistant, data: dict) -> dict:
    """Read the file (allowlisted folders only) or download the URL, analyse it, fire the event."""
    conf = hass.data[DOMAIN]
    session = async_get_clientsession(hass)
    if ATTR_FILE in data:
        source = data[ATTR_FILE]
        audio = await hass.async_add_executor_job(read_allowed_file, hass, source)
        filename = Path(source).name
    else:
        source = data[ATTR_URL]
        audio, filename = await download(session, source), Path(source.split("?", 1)[0]).name or "audio"
    try:
        result = await analyze(session, conf[CONF_URL], conf.get(CONF_API_KEY), audio, filename)
    except EmoserveApiError as e:
        raise HomeAssistantError(f"emoserve could not analyse {source}: {e}") from e
    event = {"source": source, "emotion": result.get("emotion"), "confidence": result.get("confidence"),
             "scores": result.get("scores", {}), "duration_s": result.get("duration_s"),
             "model": result.get("model")}
    hass.bus.async_fire(EVENT_RESULT, event)
    return event


def read_allowed_file(hass: HomeAssistant, path: str) -> bytes:
    if not hass.config.is_allowed_path(path):
        raise ServiceValidationError(f"{path} is not in allowlist_external_dirs (homeassistant: in "
                                     "configuration.yaml)")
    file = Path(path)
    if not file.is_file():
        raise ServiceValidationError(f"{path} is not a file")
    if file.stat().st_size > MAX_AUDIO_BYTES:
        raise too_large(path)
    with file.open("rb") as f:
        data = f.read(MAX_AUDIO_BYTES + 1)  # the file may have grown since
    if len(data) > MAX_AUDIO_BYTES:
        raise too_large(path)
    return data


def too_large(source: str) -> ServiceValidationError:
    return ServiceValidationError(f"{source} is over {MAX_AUDIO_BYTES} bytes, the limit of one analysis")


async def download(session, url: str) -> bytes:
    """The whole body, however it arrives in pieces; refused once it announces or sends more than the limit."""
    import aiohttp

    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as response:
            response.raise_for_status()
            if (response.content_length or 0) > MAX_AUDIO_BYTES:
                raise too_large(url)
            data = bytearray()
            async for piece in response.content.iter_any():  # each piece is what has arrived: read to the end
                data += piece
                if len(data) > MAX_AUDIO_BYTES:
                    raise too_large(url)
    except (aiohttp.ClientError, TimeoutError) as e:
        raise HomeAssistantError(f"could not download {url}: {e}") from e
    return bytes(data)
