"""Set up emoserve from the UI: the server's URL (and API key), checked before the entry is made."""

from __future__ import annotations

from typing import Any

import voluptuous as vol
from homeassistant import config_entries
from homeassistant.data_entry_flow import FlowResult
from homeassistant.helpers.aiohttp_client import async_get_clientsession

from .api import EmoserveApiError, check
from .const import CONF_API_KEY, CONF_URL, DEFAULT_URL, DOMAIN


class EmoserveConfigFlow(config_entries.ConfigFlow, domain=DOMAIN):
    VERSION = 1

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> FlowResult:
        errors: dict[str, str] = {}
        if user_input is not None:
            url = user_input[CONF_URL].rstrip("/")
            await self.async_set_unique_id(url)
            self._abort_if_unique_id_configured()
            try:
                model = await check(async_get_clientsession(self.hass), url, user_input.get(CONF_API_KEY))
            except EmoserveApiError as e:
                errors["base"] = "invalid_auth" if e.code == "unauthorized" else "cannot_connect"
            else:
                return self.async_create_entry(title=f"emoserve ({model})", data={**user_input, CONF_URL: url})
        schema = vol.Schema({vol.Required(CONF_URL, default=DEFAULT_URL): str, vol.Optional(CONF_API_KEY): str})
        return self.async_show_form(step_id="user", data_schema=schema, errors=errors)
