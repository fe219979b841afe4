"""Requests the server sends to a URL that somebody else chose: which hosts they may reach, and how.

A job's `callback_url` and a chat message's audio URL are written by callers but fetched by the
server, so without a policy any caller could make the server send requests into its own network
(loopback, private ranges, cloud metadata at link-local addresses). The policy looks at addresses,
not spellings: the host is resolved the way a connection would resolve it (so `2130706433`,
`0x7f000001`, `0177.0.0.1`, `[::ffff:127.0.0.1]` and names all count as what they point to), every
address must be public unicast or inside the deployment's allow-list, and the request then goes to
the vetted address itself, so a name that resolves differently a moment later (DNS rebinding)
cannot redirect it. Redirects are vetted like the first URL, or not followed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from .errors import InvalidParameterError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL = 2048


@dataclass(frozen=True)
class Target:
    """A URL and the address it was vetted to: the request connects there and nowhere else."""

    url: httpx.URL
    address: IPAddress

    def connection(self) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
        """(the URL to request, headers, httpx extensions) that reach the vetted address while keeping the
        URL's own Host header and TLS server name (so the certificate is checked against the host name)."""
        return (self.url.copy_with(host=str(self.address)), {"Host": self.url.netloc.decode("ascii")},
                {"sni_hostname": self.url.raw_host.decode("ascii")})


def parse_url(url: str, what: str) -> httpx.URL:
    """The URL, if it is an http(s) URL with a host and of a sane length (nothing is resolved yet)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as e:
        raise InvalidParameterError(f"{what} is not a URL: {e}") from e
    if parsed.scheme not in ("http", "https") or not parsed.host or len(url) > MAX_URL:
        raise InvalidParameterError(f"{what} must be an http(s) URL of at most {MAX_URL} characters")
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


def vet_url(url: str, allow: Sequence[IPNetwork], what: str, allow_setting: str) -> Target:
    """Resolve the URL's host and refuse it unless every address it resolves to is allowed.

    `what` names the URL in messages (callback_url); `allow_setting` is the setting that widens `allow`.
    """
    parsed = parse_url(url, what)
    host = parsed.raw_host.decode("ascii")
    try:
        addresses = resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80))
    except (OSError, UnicodeError, ValueError) as e:
        raise InvalidParameterError(f"{what} host {parsed.host!r} does not resolve: {e}") from e
    refused = [str(a) for a in addresses if not address_allowed(a, allow)]
    if refused or not addresses:
        raise InvalidParameterError(
            f"{what} host {parsed.host!r} resolves to {', '.join(refused) or 'nothing'}: only public addresses are "
            "reached, not loopback, private, link-local, multicast or reserved ones (a deployment that needs "
            f"internal ones lists their networks in {allow_setting})")
    return Target(parsed, addresses[0])
