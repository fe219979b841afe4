"""Set up an emoserve server from the UI (or configuration.yaml): its URL and API key, checked before the
entry is made. Each server is one entry, identified by its URL, so the same server is not added twice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import voluptuous as vol
from homeassistant import config_entries
from homeassistant.helpers.aiohttp_client import async_get_clientsession

from .api import EmoserveApiError, check
from .const import CONF_API_KEY, CONF_URL, DEFAULT_URL, DOMAIN

if TYPE_CHECKING:  # ConfigFlowResult exists from Home Assistant 2024.4 on (FlowResult before)
    from homeassistant.config_entries import ConfigFlowResult


class EmoserveConfigFlow(config_entries.ConfigFlow, domain=DOMAIN):
    VERSION = 1

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
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
                return self.async_create_entry(title=f"emoserve {urlsplit(url).netloc} ({model})",
                                               data={**user_input, CONF_URL: url})
        schema = vol.Schema({vol.Required(CONF_URL, default=DEFAULT_URL): str, vol.Optional(CONF_API_KEY): str})
        return self.async_show_form(step_id="user", data_schema=schema, errors=errors)

    async def async_step_import(self, import_data: dict[str, Any]) -> ConfigFlowResult:
        """A server from configuration.yaml: made an entry once, as if typed in the form."""
        result = await self.async_step_user(import_data)
        if result.get("errors"):
            return self.async_abort(reason=result["errors"]["base"])
        return result
