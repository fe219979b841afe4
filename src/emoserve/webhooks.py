"""Job callbacks: which hosts a callback may reach, and how each POST is signed.

A `callback_url` is chosen by the caller but POSTed by the server, so without a policy any client
could make the server send requests into its own network (loopback, private ranges, cloud
metadata at link-local addresses). The policy looks at addresses, not spellings: the host is
resolved the way a connection would resolve it (so `2130706433`, `0x7f000001`, `0177.0.0.1`,
`[::ffff:127.0.0.1]` and names all count as what they point to), every address must be public
unicast or inside `EMOSERVE_CALLBACK_ALLOW_NETWORKS`, and the POST then goes to the vetted address
itself, so a name that resolves differently a moment later (DNS rebinding) cannot redirect it.

Every callback is signed the Standard Webhooks way (https://www.standardwebhooks.com/), so a
receiver can check it came from this server: `webhook-signature: v1,<base64 HMAC-SHA256 of
"{webhook-id}.{webhook-timestamp}.{body}">`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from .errors import InvalidParameterError

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_CALLBACK_URL = 2048
SECRET_FILE = "callback_secret"
SECRET_PREFIX = "whsec_"  # Standard Webhooks: the base64 of the key follows


@dataclass(frozen=True)
class CallbackTarget:
    """A callback URL and the address it was vetted to: the POST connects there and nowhere else."""

    url: httpx.URL
    address: IPAddress


def parse_callback_url(url: str) -> httpx.URL:
    """The URL, if it is an http(s) URL with a host and of a sane length (nothing is resolved yet)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as e:
        raise InvalidParameterError(f"callback_url is not a URL: {e}") from e
    if parsed.scheme not in ("http", "https") or not parsed.host or len(url) > MAX_CALLBACK_URL:
        raise InvalidParameterError(f"callback_url must be an http(s) URL of at most {MAX_CALLBACK_URL} characters")
    return parsed


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address a connection to `host` could use, as the system resolver reads the name."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, 6to4): the packets may end up there."""
    if address.version == 4:
        return []
    return [ip for ip in (address.ipv4_mapped, address.sixtofour) if ip is not None]


def address_allowed(address: IPAddress, allow: Sequence[IPNetwork] = ()) -> bool:
    """Inside an allow-listed network, or public unicast (any IPv4 address it embeds too).

    Loopback, private, link-local, shared (CGNAT), unspecified, multicast and reserved addresses
    are refused unless allow-listed.
    """
    candidates = [address, *embedded_ipv4(address)]
    if any(ip in network for ip in candidates for network in allow):
        return True
    return all(ip.is_global and not ip.is_multicast and not ip.is_reserved for ip in candidates)


def vet_callback_url(url: str, allow: Sequence[IPNetwork] = ()) -> CallbackTarget:
    """Resolve the URL's host and refuse it unless every address it resolves to is allowed."""
    parsed = parse_callback_url(url)
    host = parsed.raw_host.decode("ascii")
    try:
        addresses = resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80))
    except (OSError, UnicodeError, ValueError) as e:
        raise InvalidParameterError(f"callback_url host {parsed.host!r} does not resolve: {e}") from e
    refused = [str(a) for a in addresses if not address_allowed(a, allow)]
    if refused or not addresses:
        raise InvalidParameterError(
            f"callback_url host {parsed.host!r} resolves to {', '.join(refused) or 'nothing'}: callbacks go to public "
            "addresses only, not loopback, private, link-local, multicast or reserved ones (a deployment that needs "
            "internal callbacks lists their networks in EMOSERVE_CALLBACK_ALLOW_NETWORKS)")
    return CallbackTarget(parsed, addresses[0])


def post_pinned(target: CallbackTarget, body: bytes, headers: dict[str, str], timeout: float) -> httpx.Response:
    """POST to the vetted address, with the URL's own Host header and TLS server name (certificate checked
    against the host name); redirects are not followed, as they could lead anywhere."""
    url = target.url
    with httpx.Client(timeout=timeout) as client:
        return client.post(url.copy_with(host=str(target.address)), content=body,
                           headers={**headers, "Host": url.netloc.decode("ascii")},
                           extensions={"sni_hostname": url.raw_host.decode("ascii")})


# ---- signatures ----


def signing_key(secret: str) -> bytes:
    """The HMAC key: the decoded bytes of a `whsec_<base64>` secret (Standard Webhooks), else the text's UTF-8."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except binascii.Error as e:
            raise ValueError(f"a {SECRET_PREFIX} callback secret must be followed by base64: {e}") from e
    return secret.encode()


def signature_headers(key: bytes, message_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """`webhook-id`, `webhook-timestamp` and `webhook-signature` for one delivery of `body`."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{message_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": f"v1,{signature}"}


def load_or_create_secret(path: Path) -> str:
    """The secret kept at `path`, made (32 random bytes, mode 0600) on the first start without one.

    The file appears whole or not at all (written aside, then linked into place), so a second
    process starting at the same moment reads the same secret instead of making its own.
    """
    if not path.exists():
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(temp, path)
            log.warning("made a secret for signing job callbacks: %s (set EMOSERVE_CALLBACK_SECRET to choose one)",
                        path)
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
    log.info("job callbacks are signed with the secret in %s", path)
    return path.read_text(encoding="ascii").strip()
