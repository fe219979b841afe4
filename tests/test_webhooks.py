"""Callback address policy and signatures. Only loopback spellings appear here: the policy is a function of
addresses, so refusing every spelling of loopback (and admitting it once allow-listed) exercises it without
naming any other network."""

import ipaddress
import os
import socket
import stat

import pytest

from emoserve import webhooks
from emoserve.errors import InvalidParameterError
from emoserve.webhooks import (
    address_allowed,
    load_or_create_secret,
    signature_headers,
    signing_key,
    vet_callback_url,
)

LOOPBACK_V4 = (ipaddress.ip_network("127.0.0.0/8"),)
LOOPBACK = (*LOOPBACK_V4, ipaddress.ip_network("::1/128"))  # localhost may resolve to both
LOOPBACK_URLS = ["http://127.0.0.1/hook", "http://2130706433/hook", "http://0x7f000001:8080/hook",
                 "http://127.1/hook", "https://localhost/hook", "http://[::ffff:127.0.0.1]/hook"]
THIS_HOST = ["127.0.0.1", "127.255.255.254", "::1", "::ffff:127.0.0.1", "::127.0.0.1", "0.0.0.0", "::"]


@pytest.mark.parametrize("url", [*LOOPBACK_URLS, "http://[::1]:9/hook"])
def test_every_spelling_of_loopback_is_refused_by_default(url):
    with pytest.raises(InvalidParameterError, match="EMOSERVE_CALLBACK_ALLOW_NETWORKS"):
        vet_callback_url(url)


def test_an_octal_host_is_refused_as_a_url_and_as_the_address_it_resolves_to():
    with pytest.raises(InvalidParameterError):
        vet_callback_url("http://0177.0.0.1/hook")
    assert webhooks.resolve("0177.0.0.1", 80) == [ipaddress.ip_address("127.0.0.1")]
    assert not address_allowed(ipaddress.ip_address("127.0.0.1"))


@pytest.mark.parametrize("address", THIS_HOST)
def test_addresses_of_this_host_are_refused_unless_allow_listed(address):
    ip = ipaddress.ip_address(address)
    assert not address_allowed(ip)
    assert address_allowed(ip, (ipaddress.ip_network(ip),))


@pytest.mark.parametrize("url", LOOPBACK_URLS)
def test_the_allow_list_admits_its_networks_and_pins_the_address(url):
    target = vet_callback_url(url, LOOPBACK)
    assert target.address in {ipaddress.ip_address(a) for a in ("127.0.0.1", "::ffff:127.0.0.1", "::1")}
    assert str(target.url) == url


def test_an_allow_listed_ipv4_network_does_not_admit_ipv6_loopback():
    with pytest.raises(InvalidParameterError):
        vet_callback_url("http://[::1]/hook", LOOPBACK_V4)
    target = vet_callback_url("http://[::1]/hook", (ipaddress.ip_network("::1/128"),))
    assert target.address == ipaddress.ip_address("::1")


def test_a_name_that_also_resolves_to_a_refused_address_is_refused(monkeypatch):
    monkeypatch.setattr(webhooks, "resolve", lambda host, port: [ipaddress.ip_address("127.0.0.1"),
                                                                 ipaddress.ip_address("::1")])
    with pytest.raises(InvalidParameterError, match="::1"):
        vet_callback_url("http://hooks.invalid/x", LOOPBACK_V4)


def test_a_host_that_does_not_resolve_is_refused(monkeypatch):
    def no_such_host(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(webhooks, "resolve", no_such_host)
    with pytest.raises(InvalidParameterError, match="does not resolve"):
        vet_callback_url("http://hooks.invalid/x", LOOPBACK_V4)


@pytest.mark.parametrize("url", ["ftp://localhost/x", "not a url", "http://", "http://h/" + "x" * 3000])
def test_urls_that_are_not_http_are_refused_before_any_lookup(monkeypatch, url):
    monkeypatch.setattr(webhooks, "resolve", lambda host, port: pytest.fail("resolved a refused URL"))
    with pytest.raises(InvalidParameterError):
        vet_callback_url(url, LOOPBACK_V4)


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
