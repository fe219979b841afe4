"""A chat message's audio within limits (emoserve.integrations.sources): no Rasa needed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from emoserve import egress
from emoserve.config import Settings
from emoserve.errors import InvalidParameterError, PayloadTooLargeError
from emoserve.integrations.sources import AudioPolicy, load_audio

from .live import serve_directory

LIMIT = 64 * 1024
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))  # localhost may be either


def policy(*folders: Path, timeout_s: float = 10.0, allow: tuple = LOOPBACK) -> AudioPolicy:
    """The test servers listen on loopback, which a deployment must allow explicitly, as here by default."""
    return AudioPolicy(tuple(folders), LIMIT, timeout_s, allow)


def load(value: str, policy_: AudioPolicy, inline: bool = False) -> tuple[bytes, str]:
    return asyncio.run(load_audio(value, policy_, inline))


@pytest.fixture
def folder(tmp_path) -> Path:
    inside = tmp_path / "voice"
    inside.mkdir()
    (inside / "hello.wav").write_bytes(b"RIFF hello")
    (tmp_path / "secret.txt").write_bytes(b"not for the chat")
    return inside


def test_local_paths_are_off_by_default(folder, monkeypatch):
    monkeypatch.delenv("EMOSERVE_RASA_AUDIO_DIRS", raising=False)
    default = AudioPolicy.for_rasa(Settings().rasa)
    assert default.folders == () and default.max_bytes == 10 * 1024 * 1024
    with pytest.raises(InvalidParameterError, match="local audio files are not accepted"):
        load(str(folder / "hello.wav"), default)


def test_folders_from_the_environment(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("EMOSERVE_RASA_AUDIO_DIRS", f"{folder}{os.pathsep} {tmp_path / 'other'}")
    monkeypatch.setenv("EMOSERVE_RASA_MAX_AUDIO_BYTES", "1000")
    configured = AudioPolicy.for_rasa(Settings().rasa)
    assert configured.folders == (folder, tmp_path / "other") and configured.max_bytes == 1000
    assert load(str(folder / "hello.wav"), configured) == (b"RIFF hello", "hello.wav")


def test_a_path_is_confined_to_the_folders_after_resolving_symlinks(folder, tmp_path):
    (folder / "escape.wav").symlink_to(tmp_path / "secret.txt")
    (folder / "alias.wav").symlink_to(folder / "hello.wav")
    (tmp_path / "voice-link").symlink_to(folder, target_is_directory=True)
    for outside in (tmp_path / "secret.txt", folder / ".." / "secret.txt", folder / "escape.wav"):
        with pytest.raises(InvalidParameterError, match="not in a folder that audio may be read from"):
            load(str(outside), policy(folder))
    with pytest.raises(InvalidParameterError, match="there is no audio file"):
        load(str(folder / "missing.wav"), policy(folder))
    assert load(str(folder / "alias.wav"), policy(folder))[0] == b"RIFF hello"
    assert load(str(folder / "hello.wav"), policy(tmp_path / "voice-link"))[0] == b"RIFF hello"


def test_devices_fifos_and_folders_are_refused_without_reading_them(folder):
    os.mkfifo(folder / "pipe.wav")  # opening it for reading would wait for a writer forever
    for not_a_file in (Path("/dev/zero"), folder / "pipe.wav", folder):
        with pytest.raises(InvalidParameterError, match="not a regular file"):
            load(str(not_a_file), policy(Path("/dev"), folder))


def test_a_file_over_the_cap_is_refused(folder):
    (folder / "long.wav").write_bytes(b"\0" * (LIMIT + 1))
    (folder / "just.wav").write_bytes(b"\0" * LIMIT)
    with pytest.raises(PayloadTooLargeError, match=f"over {LIMIT} bytes"):
        load(str(folder / "long.wav"), policy(folder))
    assert len(load(str(folder / "just.wav"), policy(folder))[0]) == LIMIT


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_file_longer_than_its_size_says_is_capped_while_read():
    """/proc files report size 0 and hold more: what a file that grows after the size check looks like."""
    assert Path("/proc/self/status").stat().st_size == 0
    small = AudioPolicy((Path("/proc"),), 16, 10.0)
    with pytest.raises(PayloadTooLargeError, match="over 16 bytes"):
        load("/proc/self/status", small)


def test_base64_audio_and_data_uris():
    audio = b"RIFF" + bytes(range(256)) * 10
    encoded = base64.b64encode(audio).decode()
    assert load(encoded, policy(), inline=True) == (audio, "audio")
    assert load(base64.encodebytes(audio).decode(), policy(), inline=True)[0] == audio  # MIME line breaks
    assert load(f"data:audio/wav;base64,{encoded}", policy())[0] == audio  # in any key
    with pytest.raises(InvalidParameterError, match="must be base64"):
        load("data:audio/wav,RIFF", policy())
    with pytest.raises(InvalidParameterError, match="nor valid base64"):
        load("/etc/passwd", policy(), inline=True)
    with pytest.raises(PayloadTooLargeError, match=f"over {LIMIT} bytes"):
        load(base64.b64encode(b"\0" * (LIMIT + 3)).decode(), policy(), inline=True)


def test_only_http_and_https_urls():
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/a.wav", "gopher://127.0.0.1/a.wav", "FILE:/etc/passwd"):
        with pytest.raises(InvalidParameterError, match="URLs are not accepted"):
            load(url, policy(Path("/")))


class Streams(BaseHTTPRequestHandler):
    """/endless: 1000 times the cap, no Content-Length; /announced: a Content-Length over the cap, then
    nothing until the client hangs up; /drip: a byte every 50 ms, for 10 s; /to?<url>: a redirect to <url>;
    /host: the Host header it was sent. Every request's path is kept in `server.paths`."""

    def do_GET(self):  # noqa: N802 — the name http.server calls
        self.server.paths.append(self.path)
        if self.path.startswith("/to?"):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/to?"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/host":
            body = self.headers["Host"].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        if self.path == "/announced":
            self.send_header("Content-Length", str(100 * LIMIT))
        self.end_headers()
        try:
            if self.path == "/announced":
                self.wfile.write(b"\0" * 1024)
                self.wfile.flush()
                self.rfile.read(1)  # returns when the client hangs up
            for _ in range(200 if self.path == "/drip" else 0):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.05)
            for _ in range(1000 if self.path == "/endless" else 0):
                self.wfile.write(b"\0" * LIMIT)
        except OSError:
            self.server.hung_up.set()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_streams() -> Iterator[tuple[str, ThreadingHTTPServer]]:
    """The Streams server on 127.0.0.1: its base URL, and the server, whose `hung_up` is set when a client
    hangs up mid-stream and whose `paths` lists the requests it answered."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Streams)
    httpd.hung_up, httpd.paths = threading.Event(), []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_a_url_is_downloaded_whole(folder):
    (folder / "long.wav").write_bytes(os.urandom(LIMIT))
    with serve_directory(folder) as base:
        assert load(f"{base}/long.wav?from=chat", policy()) == ((folder / "long.wav").read_bytes(), "long.wav")
        with pytest.raises(InvalidParameterError, match="HTTP 404"):
            load(f"{base}/missing.wav", policy())


def test_a_download_is_refused_by_its_announced_size_or_at_the_cap_while_streaming():
    with serve_streams() as (base, httpd):
        with pytest.raises(PayloadTooLargeError, match=f"over {LIMIT} bytes"):
            load(base + "/announced", policy(timeout_s=5))  # refused at once, not after waiting for the body
        with pytest.raises(PayloadTooLargeError, match=f"over {LIMIT} bytes"):
            load(base + "/endless", policy())
        assert httpd.hung_up.wait(10)  # the client stopped reading at the cap, long before the end


def test_a_download_is_timed_out_as_a_whole():
    with serve_streams() as (base, _), pytest.raises(InvalidParameterError, match="took more than 0.3 s"):
        load(base + "/drip", policy(timeout_s=0.3))  # every byte within the read timeout, the whole not


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "[::1]", "localhost"])
def test_a_url_at_an_internal_address_is_refused_by_default_without_a_request(host, monkeypatch):
    monkeypatch.delenv("EMOSERVE_RASA_DOWNLOAD_ALLOW_NETWORKS", raising=False)
    default = AudioPolicy.for_rasa(Settings().rasa)
    assert default.allow_networks == ()
    with serve_streams() as (base, httpd):
        port = base.rsplit(":", 1)[1]
        with pytest.raises(InvalidParameterError, match="EMOSERVE_RASA_DOWNLOAD_ALLOW_NETWORKS"):
            load(f"http://{host}:{port}/host", default)
        assert httpd.paths == []


def test_the_setting_admits_internal_networks(folder, monkeypatch):
    monkeypatch.setenv("EMOSERVE_RASA_DOWNLOAD_ALLOW_NETWORKS", "127.0.0.0/8, ::1")
    configured = AudioPolicy.for_rasa(Settings().rasa)
    with serve_directory(folder) as base:
        assert load(f"{base}/hello.wav", configured) == (b"RIFF hello", "hello.wav")


def test_a_redirect_is_vetted_like_the_url():
    only_127_0_0_1 = policy(allow=(ipaddress.ip_network("127.0.0.1/32"),))
    with serve_streams() as (base, httpd):
        port = base.rsplit(":", 1)[1]
        assert load(f"{base}/to?{base}/host", only_127_0_0_1)[0] == f"127.0.0.1:{port}".encode()
        with pytest.raises(InvalidParameterError, match="127.0.0.2"):
            load(f"{base}/to?http://127.0.0.2:{port}/host", only_127_0_0_1)
        assert httpd.paths == ["/to?" + f"{base}/host", "/host", f"/to?http://127.0.0.2:{port}/host"]
        with pytest.raises(InvalidParameterError, match="redirects more than 5 times"):
            load(f"{base}/to?/to?/to?/to?/to?/to?/host", only_127_0_0_1)


def test_the_download_connects_to_the_vetted_address_with_the_urls_host_name(monkeypatch):
    monkeypatch.setattr(egress, "resolve", lambda host, port: [ipaddress.ip_address("127.0.0.1")])
    with serve_streams() as (base, _):
        port = base.rsplit(":", 1)[1]  # no resolver knows the name: only the vetted address leads there
        assert load(f"http://audio.invalid:{port}/host", policy()) == (f"audio.invalid:{port}".encode(), "host")
