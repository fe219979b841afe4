from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from emoserve import EmotionModel
from emoserve.api.app import create_app
from emoserve.config import Settings

from .contract import ContractChecker


def wait_healthy(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"service not healthy: {client.get('/health').json()}")


@pytest.fixture
def make_client(tmp_path, tiny_model):
    """A started service on random:tiny; keyword arguments override settings."""
    clients = []

    def make(model=tiny_model, **overrides) -> TestClient:
        overrides.setdefault("api_only", True)  # the UI has its own tests (tests/ui)
        settings = Settings.from_flat(**{"model": "random:tiny", "log_dir": tmp_path / "logs",
                                         "data_dir": tmp_path / "data", **overrides})
        client = TestClient(create_app(settings, model=model), raise_server_exceptions=False)
        client.contract = ContractChecker(client.app)  # every JSON answer is held against the wire contract
        client.event_hooks = {**client.event_hooks, "response": [*client.event_hooks["response"], client.contract]}
        client.__enter__()
        clients.append(client)
        if model is not None:
            wait_healthy(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def held_model_load(monkeypatch, tiny_model) -> threading.Event:
    """Model loading waits until the test sets the returned event (then it yields the tiny model)."""
    release = threading.Event()

    def slow_load(*args, **kwargs):
        release.wait(30)
        return tiny_model

    monkeypatch.setattr(EmotionModel, "from_pretrained", slow_load)
    yield release
    release.set()


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()
