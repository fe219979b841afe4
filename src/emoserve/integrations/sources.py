"""The audio of a chat message, fetched within limits: whoever talks to the bot writes the message.

A message may name its audio as an http(s) URL (downloaded with a size cap and a deadline, from public
addresses only unless EMOSERVE_RASA_DOWNLOAD_ALLOW_NETWORKS lists internal networks: `emoserve.egress`,
the policy job callbacks follow too; each redirect is vetted again), carry it
inline as base64 (size checked before decoding), or — only where the operator lists folders — name a
local file inside one of them (resolved, regular files only, size capped before and while reading).
Anything else is refused with an error whose message the sender may read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from .. import egress
from ..config import RasaConfig
from ..errors import InvalidParameterError, PayloadTooLargeError

URL_SCHEMES = ("http", "https")
MAX_REDIRECTS = 5
ALLOW_SETTING = "EMOSERVE_RASA_DOWNLOAD_ALLOW_NETWORKS"


@dataclass(frozen=True)
class AudioPolicy:
    """Where a message's audio may come from, and how much of it."""

    folders: tuple[Path, ...]  # local files only inside these; empty: local paths are refused
    max_bytes: int
    timeout_s: float  # a whole URL download, start to end
    allow_networks: tuple[egress.IPNetwork, ...] = ()  # URLs may lead here besides public addresses

    @classmethod
    def for_rasa(cls, config: RasaConfig) -> AudioPolicy:
        folders = (part.strip() for part in config.audio_dirs.split(os.pathsep))
        return cls(tuple(Path(f) for f in folders if f), config.max_audio_bytes, config.download_timeout_s,
                   config.download_allow_networks)


async def load_audio(value: str, policy: AudioPolicy, inline: bool = False) -> tuple[bytes, str]:
    """(audio, file name) of `value`: an http(s) URL, a data: URI, base64 when `inline`, else a local path."""
    scheme = urlsplit(value).scheme.lower()
    if scheme in URL_SCHEMES:
        return await download(value, policy), Path(urlsplit(value).path).name or "audio"
    if scheme == "data" or inline:
        return decode_base64_audio(value, policy.max_bytes), "audio"
    if len(scheme) > 1:  # one letter is a Windows drive
        raise InvalidParameterError(f"{scheme}: URLs are not accepted; send an http(s) URL or the audio itself")
    path = confined_path(value, policy.folders)
    return await asyncio.to_thread(read_regular_file, path, policy.max_bytes), path.name


def too_large(what: str, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"{what} is over {limit} bytes, the limit of one voice message")


def confined_path(path: str, folders: Sequence[Path]) -> Path:
    """`path` with every symlink followed, when that lies inside one of `folders` (resolved too); else refused."""
    if not folders:
        raise InvalidParameterError("local audio files are not accepted; send an http(s) URL or the audio itself")
    try:
        resolved = Path(path).resolve(strict=True)
    except (OSError, RuntimeError) as e:  # missing, unreadable folder, or a symlink loop
        raise InvalidParameterError(f"there is no audio file {path}") from e
    if not any(resolved.is_relative_to(folder.resolve()) for folder in folders):
        raise InvalidParameterError(f"{path} is not in a folder that audio may be read from")
    return resolved


def read_regular_file(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file: refused before reading when larger, and when it grows while read.

    Devices, FIFOs and sockets are refused before they are opened (opening some has effects, reading
    /dev/zero never ends), and again on the opened descriptor, in case the path was swapped meanwhile.
    """
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise InvalidParameterError(f"{path} is not a regular file")
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        with open(os.open(path, flags), "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise InvalidParameterError(f"{path} is not a regular file")
            if info.st_size > limit:
                raise too_large(str(path), limit)
            data = file.read(limit + 1)
    except OSError as e:
        raise InvalidParameterError(f"cannot read {path}: {e.strerror}") from e
    if len(data) > limit:
        raise too_large(str(path), limit)
    return data


def decode_base64_audio(text: str, limit: int) -> bytes:
    """Audio sent as base64 or as a `data:<type>;base64,` URI; refused before decoding when too large."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise InvalidParameterError("a data: URI of audio must be base64 (data:audio/wav;base64,...)")
    encoded = "".join(text.split())  # MIME base64 breaks lines
    if len(encoded) > 4 * -(-limit // 3):
        raise too_large("the audio", limit)
    try:
        audio = base64.b64decode(encoded, validate=True)
    except binascii.Error as e:
        raise InvalidParameterError("the audio is neither an http(s) URL nor valid base64") from e
    if not audio:
        raise InvalidParameterError("the audio is empty")
    return audio


async def download(url: str, policy: AudioPolicy) -> bytes:
    """The body of an http(s) URL at an allowed address; refused when it announces or sends more than the
    policy's limit or takes too long."""
    try:
        return await asyncio.wait_for(read_url(url, policy), policy.timeout_s)
    except asyncio.TimeoutError as e:
        raise InvalidParameterError(f"downloading {url} took more than {policy.timeout_s:g} s") from e
    except httpx.HTTPStatusError as e:
        raise InvalidParameterError(f"could not download {url}: HTTP {e.response.status_code}") from e
    except httpx.HTTPError as e:
        raise InvalidParameterError(f"could not download {url}: {str(e) or type(e).__name__}") from e


async def read_url(url: str, policy: AudioPolicy) -> bytes:
    """Each hop (the URL, then every redirect) vetted and connected to at its vetted address."""
    async with httpx.AsyncClient(timeout=policy.timeout_s) as http:
        for _ in range(MAX_REDIRECTS + 1):
            target = await asyncio.to_thread(egress.vet_url, url, policy.allow_networks, "the audio URL",
                                             ALLOW_SETTING)
            pinned, host_headers, extensions = target.connection()
            # Raw bytes, no content-encoding asked for: a small compressed body cannot inflate past the cap.
            async with http.stream("GET", pinned, headers={"Accept-Encoding": "identity", **host_headers},
                                   extensions=extensions) as response:
                if not response.is_redirect:
                    response.raise_for_status()
                    return await read_body(response, url, policy.max_bytes)
                url = str(target.url.join(response.headers["location"]))
    raise InvalidParameterError(f"the audio URL redirects more than {MAX_REDIRECTS} times")


async def read_body(response: httpx.Response, url: str, limit: int) -> bytes:
    announced = response.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit:
        raise too_large(url, limit)
    data = bytearray()
    async for piece in response.aiter_raw():
        data += piece
        if len(data) > limit:
            raise too_large(url, limit)
    return bytes(data)
