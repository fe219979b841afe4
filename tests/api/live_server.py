"""A real `emoserve serve` process on a free port, for tests that need real HTTP, real threads and kill -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`python -m emoserve serve` with its logs and data under `root`; EMOSERVE_* overrides in `env`."""

    def __init__(self, root: Path, model: str = "random:tiny", **env: str):
        self.root, self.model, self.env = root, model, env
        self.process: subprocess.Popen | None = None
        self.port = free_port()  # kept across restarts, as a real restart would: URLs handed out stay valid
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LiveServer:
        env = {**os.environ, "EMOSERVE_LOG_DIR": str(self.root / "logs"), "EMOSERVE_DATA_DIR": str(self.root / "data"),
               **{f"EMOSERVE_{k.upper()}": str(v) for k, v in self.env.items()}}
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "server.out", "ab") as out:  # a file, not a pipe nobody reads that could fill up
            command = [sys.executable, "-m", "emoserve", "serve", "--model", self.model, "--port", str(self.port),
                       "--api-only"]
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, (self.root / "server.out").read_text()
            time.sleep(0.05)
        self.process.kill()
        raise AssertionError("server did not become healthy")

    def kill_9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(30) == -signal.SIGKILL

    def stop(self) -> int | None:
        """SIGTERM (a graceful shutdown); the exit status, or None if it had already exited."""
        if self.process is None or self.process.poll() is not None:
            return None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def url(self, path: str) -> str:
        return self.base + path
