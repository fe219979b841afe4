"""Job callbacks: which hosts a callback may reach (`emoserve.egress`: public addresses, or the
networks of EMOSERVE_CALLBACK_ALLOW_NETWORKS; the POST goes to the vetted address), and how each
POST is signed.

Every callback is signed the Standard Webhooks way (https://www.standardwebhooks.com/), so a
receiver can check it came from this server: `webhook-signature: v1,<base64 HMAC-SHA256 of
"{webhook-id}.{webhook-timestamp}.{body}">`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from . import egress

log = logging.getLogger(__name__)

SECRET_FILE = "callback_secret"
SECRET_PREFIX = "whsec_"  # Standard Webhooks: the base64 of the key follows
ALLOW_SETTING = "EMOSERVE_CALLBACK_ALLOW_NETWORKS"


def vet_callback_url(url: str, allow: Sequence[egress.IPNetwork] = ()) -> egress.Target:
    """The callback's vetted address; refused unless every address its host resolves to is allowed."""
    return egress.vet_url(url, allow, "callback_url", ALLOW_SETTING)


def post_pinned(target: egress.Target, body: bytes, headers: dict[str, str], timeout: float) -> httpx.Response:
    """POST to the vetted address; redirects are not followed, as they could lead anywhere."""
    url, host_headers, extensions = target.connection()
    with httpx.Client(timeout=timeout) as client:
        return client.post(url, content=body, headers={**headers, **host_headers}, extensions=extensions)


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
