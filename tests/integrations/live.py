"""Live emoserve servers for client and integration tests: in a thread (fast), or a subprocess.

Only the standard library and httpx at import time, so the integration venvs (Home Assistant, Rasa),
which do not have torch, can start a server with another interpreter.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(base: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stdout.read().decode(errors='replace')}")
        time.sleep(0.05)
    raise AssertionError(f"{base} did not become healthy in {timeout} s")


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free port in a daemon thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base)
        yield base
    finally:
        server.should_exit = True
        thread.join(30)


@contextlib.contextmanager
def serve_in_subprocess(python: str | None = None, model: str = "random:tiny", env: dict | None = None,
                        cwd: Path | None = None) -> Iterator[str]:
    """`python -m emoserve serve` on a free port. `python` defaults to $EMOSERVE_SERVER_PYTHON, else this one."""
    python = python or os.environ.get("EMOSERVE_SERVER_PYTHON") or sys.executable
    port = free_port()
    process = subprocess.Popen([python, "-m", "emoserve", "serve", "--model", model, "--port", str(port),
                                "--api-only"], env={**os.environ, **(env or {})}, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, timeout=120, process=process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tone_wav(seconds: float = 1.0, frequency: float = 220.0, rate: int = 16_000) -> bytes:
    """A 16-bit mono WAV of a sine with a slow tremolo, from the standard library alone."""
    n = int(seconds * rate)
    frames = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * frequency * i / rate)
                                            * (0.6 + 0.4 * math.sin(2 * math.pi * 3 * i / rate))))
                      for i in range(n))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return buffer.getvalue()


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """A static file server for `directory` (audio behind a URL); yields its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler,
                                                                    directory=str(directory)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def analyze_directly(base: str, path: Path) -> dict:
    """The server's own answer for a file: what an integration must report."""
    with open(path, "rb") as f:
        return httpx.post(base + "/v1/analyze", files={"audio_file": f}, timeout=60).json()


def main(command: list[str]) -> int:
    """`python tests/integrations/live.py COMMAND...`: COMMAND's exit status, run with $EMOSERVE_TEST_SERVER set
    to a live server started with this interpreter, for tests where the project cannot run (another Python)."""
    with serve_in_subprocess(sys.executable) as base:
        return subprocess.run(command, env={**os.environ, "EMOSERVE_TEST_SERVER": base}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
