"""The two emoserve calls the integration makes, on Home Assistant's shared aiohttp session.

Home Assistant's `rest_command` cannot send a file, and the emoserve Python package brings torch,
so the integration speaks the HTTP API itself: POST /v1/analyze (multipart, one clip) and
GET /health + /v1/models to check a server. 503 answers (model loading, queue full) are retried,
waiting Retry-After, like the emoserve clients do.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from .const import RETRIES, TIMEOUT_S


class EmoserveApiError(Exception):
    """The server refused (code, message from its JSON error body) or could not be reached."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def error_of(response: aiohttp.ClientResponse) -> EmoserveApiError:
    try:
        body = (await response.json(content_type=None))["error"]
        return EmoserveApiError(str(body["code"]), str(body["message"]))
    except (ValueError, KeyError, TypeError, aiohttp.ContentTypeError):
        return EmoserveApiError(f"http_{response.status}", (await response.text())[:200])


async def analyze(session: aiohttp.ClientSession, base_url: str, api_key: str | None, audio: bytes,
                  filename: str) -> dict[str, Any]:
    """The utterance result of one clip (docs/API.md), or EmoserveApiError."""
    attempt = 0
    while True:
        form = aiohttp.FormData()
        form.add_field("audio_file", audio, filename=filename, content_type="application/octet-stream")
        try:
            async with session.post(f"{base_url.rstrip('/')}/v1/analyze", data=form, headers=headers(api_key),
                                    timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as response:
                if response.status == 200:
                    return await response.json()
                error = await error_of(response)
                retry_after = float(response.headers.get("Retry-After", 2 ** attempt))
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            error, retry_after = EmoserveApiError("cannot_connect", f"{base_url}: {e}"), 2.0 ** attempt
        if error.code not in ("model_loading", "overloaded", "cannot_connect") or attempt == RETRIES:
            raise error
        await asyncio.sleep(min(retry_after, 30.0))
        attempt += 1


async def check(session: aiohttp.ClientSession, base_url: str, api_key: str | None) -> str:
    """The model name, once the server is healthy and takes our key; else EmoserveApiError."""
    base = base_url.rstrip("/")
    try:
        async with session.get(f"{base}/health", timeout=aiohttp.ClientTimeout(total=10)) as response:
            health = await response.json(content_type=None)
        async with session.get(f"{base}/v1/models", headers=headers(api_key),
                               timeout=aiohttp.ClientTimeout(total=10)) as response:
            if response.status != 200:
                raise await error_of(response)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
        raise EmoserveApiError("cannot_connect", f"{base}: {e}") from e
    return str(health.get("model", "emoserve"))
