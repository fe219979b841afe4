"""Per-client budgets shared by the HTTP API and the web UI: requests, and failed sign-ins.

Counts live in the `limits` library's memory storage, in fixed windows of one minute that start
at a client's first hit. A window's count expires with it, so the state holds only the clients
seen in the last minute, however many addresses come and go.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from .config import ServerConfig
from .errors import EmoserveError


class Throttle:
    """`requests_per_minute` per client (0: off) and `auth_failures_per_minute` wrong keys per address (0: off)."""

    def __init__(self, requests_per_minute: int, auth_failures_per_minute: int):
        self.storage = MemoryStorage()
        self.limiter = FixedWindowRateLimiter(self.storage)
        self.requests = per_minute(requests_per_minute, "requests")
        self.auth_failures = per_minute(auth_failures_per_minute, "auth-failures")

    @classmethod
    def from_config(cls, config: ServerConfig) -> Throttle:
        return cls(config.rate_limit_per_minute, config.auth_failures_per_minute)

    def take_request(self, client: str) -> None:
        """Count one request of `client` (an API key, or an address); raise `rate_limited` past the budget."""
        if self.requests is not None and not self.limiter.hit(self.requests, client):
            raise self.refusal(self.requests, client, "rate limit reached")

    def check_sign_in(self, address: str) -> None:
        """Raise `rate_limited` while `address` has no failed sign-ins left this window.

        Checked before the key, and even a right key waits: a guesser learns nothing from a 429."""
        if self.auth_failures is not None and not self.limiter.test(self.auth_failures, address):
            raise self.refusal(self.auth_failures, address, "too many wrong API keys from this address")

    def sign_in_failed(self, address: str) -> None:
        if self.auth_failures is not None:
            self.limiter.hit(self.auth_failures, address)

    def refusal(self, item: RateLimitItem, client: str, reason: str) -> EmoserveError:
        reset = self.limiter.get_window_stats(item, client).reset_time
        wait = max(1, math.ceil(reset - time.time()))
        return EmoserveError(f"{reason}; retry in {wait} s", code="rate_limited", details={"retry_after": wait})


def per_minute(amount: int, namespace: str) -> RateLimitItem | None:
    return RateLimitItemPerMinute(amount, namespace=namespace) if amount > 0 else None


def client_address(scope: Mapping) -> str:
    """The address an ASGI request came from: the peer, or the client a trusted proxy named (uvicorn's job)."""
    return (scope.get("client") or ("-", 0))[0]
