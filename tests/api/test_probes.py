"""/livez and /readyz: the two questions an orchestrator asks, answered in-process."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient

from emoserve.api.app import create_app
from emoserve.config import Settings

from .conftest import wait_healthy


def test_livez_answers_while_the_model_loads_and_readyz_waits_for_it(make_client, held_model_load):
    client = make_client(model=None)
    assert client.get("/livez").json() == {"status": "alive"}
    loading = client.get("/readyz")
    assert loading.status_code == 503 and loading.json() == {"status": "loading", "model": "random:tiny"}
    assert int(loading.headers["retry-after"]) >= 1
    held_model_load.set()
    wait_healthy(client)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "model": "random:tiny"}
    assert client.get("/livez").status_code == 200


def test_readyz_says_failed_without_retry_after_when_the_model_cannot_load(tmp_path):
    settings = Settings.from_flat(model=str(tmp_path / "missing-model-dir"), log_dir=tmp_path / "logs",
                                  data_dir=tmp_path / "data", api_only=True)
    with TestClient(create_app(settings)) as client:
        for _ in range(200):
            ready = client.get("/readyz")
            if ready.json()["status"] != "loading":
                break
            threading.Event().wait(0.02)
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "does not exist" in ready.json()["error"] and "retry-after" not in ready.headers
        assert client.get("/livez").status_code == 200  # in-process the app reports; `serve` exits instead


def test_readyz_is_503_once_the_engine_stops_taking_work(client):
    assert client.get("/readyz").status_code == 200
    client.portal.call(client.app.state.service.engine.stop)
    stopping = client.get("/readyz")
    assert stopping.status_code == 503 and stopping.json()["status"] == "stopping"
    assert "retry-after" in stopping.headers
    assert client.get("/livez").status_code == 200


def test_probes_need_no_api_key(make_client):
    client = make_client(api_keys="secret-key")
    assert client.get("/v1/models").status_code == 401
    assert client.get("/livez").status_code == 200 and client.get("/readyz").status_code == 200
