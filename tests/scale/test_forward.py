"""`ForwardToOwner` (no cluster): the ingress holds a forwarded body whole, so it bounds it before the store owner
sees it (413 past one chunk, 408 when the body stalls) and forwards what fits as it came."""

from __future__ import annotations

import asyncio
import json

import pytest

pytestmark = pytest.mark.ray
pytest.importorskip("ray.serve.exceptions", reason="needs Ray: pip install 'emoserve[ray]'")

from emoserve.scale.forward import ForwardedResponse, ForwardToOwner  # noqa: E402 (after the skip)

CAP = 1000


class Owner:
    """The store owner's handle: records what it was sent and answers 200."""

    def __init__(self):
        self.sent = []
        owner = self

        class Handle:
            def remote(self, request):
                owner.sent.append(request)

                async def answer():
                    return ForwardedResponse(200, [(b"content-type", b"text/plain")], b"stored")

                return answer()

        self.handle = Handle()


async def not_forwarded(scope, receive, send):
    raise AssertionError("only the store's routes are tested here")


def call(owner: Owner, pieces: list[bytes], headers=(), stall_after: int | None = None, timeout_s: float = 5.0):
    """One PATCH through the middleware: the body in `pieces` (the stream stalls after `stall_after` of them)."""
    middleware = ForwardToOwner(not_forwarded, owner, ("/v1/tus",), max_body_bytes=CAP, idle_timeout_s=timeout_s)
    scope = {"type": "http", "method": "PATCH", "path": "/v1/tus/abc", "raw_path": b"/v1/tus/abc",
             "query_string": b"", "headers": [(k.encode(), v.encode()) for k, v in headers], "scheme": "http",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000)}
    queue = [{"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
             for i, piece in enumerate(pieces)]
    sent = []
    delivered = 0

    async def receive():
        nonlocal delivered
        if delivered == stall_after:
            await asyncio.sleep(3600)  # the client stops sending
        delivered += 1
        return queue.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, body


def test_a_body_within_the_cap_is_forwarded_whole():
    owner = Owner()
    status, body = call(owner, [b"a" * 400, b"b" * 600])
    assert (status, body) == (200, b"stored")
    assert owner.sent[0].body == b"a" * 400 + b"b" * 600


def test_a_declared_length_over_the_cap_is_413_before_any_byte_is_read():
    owner = Owner()
    status, body = call(owner, [b"x" * 10], headers=[("content-length", str(CAP + 1))])
    assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"
    assert json.loads(body)["error"]["max_bytes"] == CAP and not owner.sent


def test_a_body_that_grows_past_the_cap_is_413_and_never_reaches_the_owner():
    owner = Owner()
    status, body = call(owner, [b"x" * 600, b"y" * 600, b"z" * 600])
    assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large" and not owner.sent


def test_a_stalled_body_is_408_and_never_reaches_the_owner():
    owner = Owner()
    status, body = call(owner, [b"x" * 10, b"y" * 10], stall_after=1, timeout_s=0.2)
    assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout" and not owner.sent
