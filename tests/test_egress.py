"""The address policy of requests to URLs that callers choose (callbacks, chat audio). Only loopback spellings
appear here: the policy is a function of addresses, so refusing every spelling of loopback (and admitting it once
allow-listed) exercises it without naming any other network."""

import ipaddress
import socket

import pytest

from emoserve import egress
from emoserve.egress import address_allowed
from emoserve.errors import InvalidParameterError

LOOPBACK_V4 = (ipaddress.ip_network("127.0.0.0/8"),)
LOOPBACK = (*LOOPBACK_V4, ipaddress.ip_network("::1/128"))  # localhost may resolve to both
LOOPBACK_URLS = ["http://127.0.0.1/a.wav", "http://2130706433/a.wav", "http://0x7f000001:8080/a.wav",
                 "http://127.1/a.wav", "https://localhost/a.wav", "http://[::ffff:127.0.0.1]/a.wav"]
THIS_HOST = ["127.0.0.1", "127.255.255.254", "::1", "::ffff:127.0.0.1", "::127.0.0.1", "0.0.0.0", "::"]


def vet_url(url: str, allow=()) -> egress.Target:
    return egress.vet_url(url, allow, "audio_url", "EMOSERVE_SOME_ALLOW_NETWORKS")


@pytest.mark.parametrize("url", [*LOOPBACK_URLS, "http://[::1]:9/a.wav"])
def test_every_spelling_of_loopback_is_refused_by_default(url):
    with pytest.raises(InvalidParameterError, match="audio_url host .* EMOSERVE_SOME_ALLOW_NETWORKS"):
        vet_url(url)


def test_an_octal_host_is_refused_as_a_url_and_as_the_address_it_resolves_to():
    with pytest.raises(InvalidParameterError):
        vet_url("http://0177.0.0.1/a.wav")
    assert egress.resolve("0177.0.0.1", 80) == [ipaddress.ip_address("127.0.0.1")]
    assert not address_allowed(ipaddress.ip_address("127.0.0.1"))


@pytest.mark.parametrize("address", THIS_HOST)
def test_addresses_of_this_host_are_refused_unless_allow_listed(address):
    ip = ipaddress.ip_address(address)
    assert not address_allowed(ip)
    assert address_allowed(ip, (ipaddress.ip_network(ip),))


@pytest.mark.parametrize("url", LOOPBACK_URLS)
def test_the_allow_list_admits_its_networks_and_pins_the_address(url):
    target = vet_url(url, LOOPBACK)
    assert target.address in {ipaddress.ip_address(a) for a in ("127.0.0.1", "::ffff:127.0.0.1", "::1")}
    assert str(target.url) == url


def test_an_allow_listed_ipv4_network_does_not_admit_ipv6_loopback():
    with pytest.raises(InvalidParameterError):
        vet_url("http://[::1]/a.wav", LOOPBACK_V4)
    target = vet_url("http://[::1]/a.wav", (ipaddress.ip_network("::1/128"),))
    assert target.address == ipaddress.ip_address("::1")


def test_a_name_that_also_resolves_to_a_refused_address_is_refused(monkeypatch):
    monkeypatch.setattr(egress, "resolve", lambda host, port: [ipaddress.ip_address("127.0.0.1"),
                                                                 ipaddress.ip_address("::1")])
    with pytest.raises(InvalidParameterError, match="::1"):
        vet_url("http://audio.invalid/x", LOOPBACK_V4)


def test_a_host_that_does_not_resolve_is_refused(monkeypatch):
    def no_such_host(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(egress, "resolve", no_such_host)
    with pytest.raises(InvalidParameterError, match="does not resolve"):
        vet_url("http://audio.invalid/x", LOOPBACK_V4)


@pytest.mark.parametrize("url", ["ftp://localhost/x", "not a url", "http://", "http://h/" + "x" * 3000])
def test_urls_that_are_not_http_are_refused_before_any_lookup(monkeypatch, url):
    monkeypatch.setattr(egress, "resolve", lambda host, port: pytest.fail("resolved a refused URL"))
    with pytest.raises(InvalidParameterError):
        vet_url(url, LOOPBACK_V4)


def test_the_connection_goes_to_the_vetted_address_with_the_urls_host_name():
    url, headers, extensions = vet_url("https://localhost:8443/a.wav?x=1", LOOPBACK).connection()
    assert url.host in ("127.0.0.1", "::1") and url.port == 8443 and url.path == "/a.wav" and url.query == b"x=1"
    assert headers == {"Host": "localhost:8443"} and extensions == {"sni_hostname": "localhost"}
