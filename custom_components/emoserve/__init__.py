"""emoserve for Home Assistant: the service `emoserve.analyze` (a media file path or URL) that fires
an `emoserve_result` event with the emotion, and returns it to scripts that ask for a response.

Each emoserve server is a config entry (Settings → Devices & services → Add integration → emoserve;
several servers may be added, each once), whose connection lives in `entry.runtime_data`. The service
is registered once for the integration and sends the clip to the server of `config_entry_id`, or to
the only one when there is one. A server in configuration.yaml is imported as an entry:

    emoserve:
      url: http://192.168.1.20:8000
      api_key: !secret emoserve_api_key     # only when the server has keys
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import voluptuous as vol
from homeassistant.config_entries import SOURCE_IMPORT, ConfigEntry, ConfigEntryState
from homeassistant.core import HomeAssistant, ServiceCall, ServiceResponse, SupportsResponse
from homeassistant.exceptions import ConfigEntryNotReady, HomeAssistantError, ServiceValidationError
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.typing import ConfigType

from .api import EmoserveApiError, analyze, check
from .const import (
    ATTR_CONFIG_ENTRY_ID,
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

if TYPE_CHECKING:
    from typing import TypeAlias

    # ConfigEntry is generic from Home Assistant 2024.4 on; 2024.3 (the oldest supported) is not, so the
    # alias exists for type checkers only and is used in annotations alone.
    EmoserveConfigEntry: TypeAlias = ConfigEntry["EmoserveServer"]

CONFIG_SCHEMA = vol.Schema({DOMAIN: vol.Schema({vol.Required(CONF_URL): cv.url,
                                                vol.Optional(CONF_API_KEY): cv.string})}, extra=vol.ALLOW_EXTRA)
SERVICE_SCHEMA = vol.Schema(vol.All({vol.Optional(ATTR_CONFIG_ENTRY_ID): cv.string,
                                     vol.Exclusive(ATTR_FILE, "source"): cv.string,
                                     vol.Exclusive(ATTR_URL, "source"): cv.url},
                                    cv.has_at_least_one_key(ATTR_FILE, ATTR_URL)))


@dataclass(frozen=True)
class EmoserveServer:
    """One configured server: what each analysis needs (an entry's `runtime_data`)."""

    url: str
    api_key: str | None
    model: str


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """The service, once for all servers; a server from configuration.yaml becomes a config entry."""

    async def handle(call: ServiceCall) -> ServiceResponse:
        entry = target_entry(hass, call.data.get(ATTR_CONFIG_ENTRY_ID))
        return await analyze_source(hass, entry, call.data)

    hass.services.async_register(DOMAIN, SERVICE_ANALYZE, handle, schema=SERVICE_SCHEMA,
                                 supports_response=SupportsResponse.OPTIONAL)
    if DOMAIN in config:
        hass.async_create_task(hass.config_entries.flow.async_init(
            DOMAIN, context={"source": SOURCE_IMPORT}, data=dict(config[DOMAIN])))
    return True


async def async_setup_entry(hass: HomeAssistant, entry: EmoserveConfigEntry) -> bool:
    """Ready once the server answers; until then Home Assistant retries the setup."""
    url, api_key = entry.data[CONF_URL], entry.data.get(CONF_API_KEY)
    try:
        model = await check(async_get_clientsession(hass), url, api_key)
    except EmoserveApiError as e:
        raise ConfigEntryNotReady(f"emoserve at {url}: {e}") from e
    entry.runtime_data = EmoserveServer(url, api_key, model)
    return True


async def async_unload_entry(hass: HomeAssistant, entry: EmoserveConfigEntry) -> bool:
    """Nothing to release (the session is Home Assistant's); the service stays, for the other servers."""
    return True


def target_entry(hass: HomeAssistant, entry_id: str | None) -> EmoserveConfigEntry:
    """The loaded entry a call names, or the only one there is; else a message that says what to choose."""
    entries = hass.config_entries.async_entries(DOMAIN)
    if entry_id is not None:
        entry = next((e for e in entries if e.entry_id == entry_id), None)
        if entry is None:
            raise ServiceValidationError(f"{ATTR_CONFIG_ENTRY_ID} {entry_id} is not an emoserve server")
        if entry.state is not ConfigEntryState.LOADED:
            raise ServiceValidationError(f"the emoserve server {entry.title} is not loaded ({entry.state.value})")
        return entry
    loaded = [e for e in entries if e.state is ConfigEntryState.LOADED]
    if len(loaded) != 1:
        raise ServiceValidationError(
            "no emoserve server is loaded" if not loaded else
            f"{len(loaded)} emoserve servers are set up: choose one with {ATTR_CONFIG_ENTRY_ID} "
            f"({', '.join(f'{e.entry_id}: {e.title}' for e in loaded)})")
    return loaded[0]


async def analyze_source(hass: HomeAssistant, entry: EmoserveConfigEntry, data: dict) -> dict:
    """Read the file (allowlisted folders only) or download the URL, analyse it, fire the event."""
    server: EmoserveServer = entry.runtime_data
    session = async_get_clientsession(hass)
    if ATTR_FILE in data:
        source = data[ATTR_FILE]
        audio = await hass.async_add_executor_job(read_allowed_file, hass, source)
        filename = Path(source).name
    else:
        source = data[ATTR_URL]
        audio, filename = await download(session, source), Path(source.split("?", 1)[0]).name or "audio"
    try:
        result = await analyze(session, server.url, server.api_key, audio, filename)
    except EmoserveApiError as e:
        raise HomeAssistantError(f"emoserve could not analyse {source}: {e}") from e
    event = {"source": source, "emotion": result.get("emotion"), "confidence": result.get("confidence"),
             "scores": result.get("scores", {}), "duration_s": result.get("duration_s"),
             "model": result.get("model"), ATTR_CONFIG_ENTRY_ID: entry.entry_id}
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


async def download(session: aiohttp.ClientSession, url: str) -> bytes:
    """The whole body, however it arrives in pieces; refused once it announces or sends more than the limit."""
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
