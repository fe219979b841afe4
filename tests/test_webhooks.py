"""Job callbacks: the shared address policy (tests/test_egress.py) with the callback's own setting, and signatures."""

import ipaddress
import os
import stat

import pytest

from emoserve import webhooks
from emoserve.errors import InvalidParameterError
from emoserve.webhooks import load_or_create_secret, signature_headers, signing_key, vet_callback_url


@pytest.mark.parametrize("url", ["http://127.0.0.1/hook", "http://localhost:9/hook", "http://[::1]/hook"])
def test_a_loopback_callback_is_refused_unless_its_network_is_in_the_callback_setting(url):
    with pytest.raises(InvalidParameterError, match="callback_url host .* EMOSERVE_CALLBACK_ALLOW_NETWORKS"):
        vet_callback_url(url)
    target = vet_callback_url(url, (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")))
    assert target.address.is_loopback and str(target.url) == url


def test_signatures_match_the_standard_webhooks_test_vector():
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    headers = signature_headers(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", b'{"test": 2432232314}', 1614265330)
    assert headers == {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
                       "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    assert signing_key("plain words") == b"plain words"
    with pytest.raises(ValueError):
        signing_key("whsec_not base64!")


def test_the_secret_is_made_once_private_and_kept(tmp_path):
    path = tmp_path / webhooks.SECRET_FILE
    secret = load_or_create_secret(path)
    assert secret.startswith("whsec_") and len(signing_key(secret)) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_secret(path) == secret
    assert [p.name for p in tmp_path.iterdir()] == [webhooks.SECRET_FILE]
