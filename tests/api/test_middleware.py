"""Auth, rate limit, metrics and logs around every request."""

import json
import re
import uuid

import pytest
import torch

from ..samples import noise, wav_bytes
from .test_app import post


def test_auth_is_off_by_default(client):
    assert client.get("/v1/models").status_code == 200


def test_keys_protect_v1_routes_but_not_health(make_client, tmp_path):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# ops keys\nfile-key\n")
    client = make_client(api_keys="env-key-1, env-key-2", api_keys_file=keys_file)
    assert client.get("/health").status_code == 200
    missing = client.get("/v1/models")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "the API key is not valid"
    assert client.get("/v1/models", headers={"Authorization": "Bearer env-key-2"}).status_code == 200
    assert client.get("/v1/models", headers={"X-API-Key": "file-key"}).status_code == 200
    assert post(client, wav_bytes(noise(16000)), headers={"X-API-Key": "env-key-1"}).status_code == 200
    assert post(client, wav_bytes(noise(16000))).status_code == 401


def test_keys_never_reach_the_logs(make_client, tmp_path):
    client = make_client(api_keys="super-secret-key")
    client.get("/v1/models", headers={"Authorization": "Bearer super-secret-key"})
    client.get("/v1/models", headers={"Authorization": "Bearer wrong-secret-key"})
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert "secret" not in logs


def test_rate_limit_answers_429_with_retry_after(make_client):
    client = make_client(rate_limit_per_minute=2)
    codes = [client.get("/v1/models").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    limited = client.get("/v1/models")
    assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
    assert client.get("/health").status_code == 200  # health is never limited


def test_wrong_keys_get_429_once_the_failed_key_budget_is_spent(make_client):
    client = make_client(api_keys="right-key")  # the default budget: 10 wrong keys a minute per address
    wrong = [client.get("/v1/models", headers={"X-API-Key": f"guess-{n}"}).status_code for n in range(11)]
    assert wrong == [401] * 10 + [429]
    refused = client.get("/v1/models", headers={"X-API-Key": "right-key"})  # even the right key waits: no oracle
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert client.get("/health").status_code == 200


def test_missing_keys_do_not_spend_the_failed_key_budget(make_client):
    client = make_client(api_keys="right-key", auth_failures_per_minute=1)
    assert [client.get("/v1/models").status_code for _ in range(3)] == [401] * 3
    assert client.get("/v1/models", headers={"X-API-Key": "right-key"}).status_code == 200


def test_the_metrics_key_protects_metrics(make_client):
    client = make_client(metrics_key="scrape-key")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-key"}).status_code == 200
    assert "emoserve_requests_total" in client.get("/metrics", headers={"X-API-Key": "scrape-key"}).text
    assert client.get("/v1/models").status_code == 200  # the API's own auth is unchanged (off here)


def series(scrape: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in scrape.splitlines() if not line.startswith("#")}


def test_metrics_label_route_templates_only_whatever_clients_send(make_client):
    client = make_client(api_keys="api-key", metrics_key="scrape-key", auth_failures_per_minute=0)
    key = {"X-API-Key": "api-key"}

    def hostile(n: int, token: str) -> None:  # what an outsider can send: each kind in turn
        [lambda: client.get(f"/v1/jobs/{token}"),  # refused before any route: 401
         lambda: client.get(f"/v1/jobs/{token}", headers=key),  # a route template, an unknown id: 404
         lambda: client.get(f"/{token}/x"),  # no route: 404
         lambda: client.request("X" + token[:12].upper(), "/v1/models", headers=key)][n % 4]()  # invented method

    def scrape() -> str:
        return client.get("/metrics", headers={"Authorization": "Bearer scrape-key"}).text

    for n in range(4):
        hostile(n, uuid.uuid4().hex)
    scrape()  # the scrape's own series
    before = scrape()
    tokens = [uuid.uuid4().hex for _ in range(1000)]
    for n, token in enumerate(tokens):
        hostile(n, token)
    after = scrape()
    assert series(after) == series(before)  # the same series, only their counts moved
    assert len(after) - len(before) < 1024
    assert not any(token[:12] in after or token[:12].upper() in after for token in tokens)
    labels = set(re.findall(r'route="([^"]*)"', after))
    assert labels <= {"/v1/jobs/{job_id}", "/v1/models", "/metrics", "/health", "unmatched"}
    assert 'method="other"' in after


def test_cors_when_configured(make_client):
    client = make_client(cors_origins="https://app.example")
    response = client.options("/v1/analyze", headers={"Origin": "https://app.example",
                                                      "Access-Control-Request-Method": "POST"})
    assert response.headers["access-control-allow-origin"] == "https://app.example"


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{" if labels else name + " ") and all(f'{k}="{v}"' in line
                                                                           for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_move(client):
    before = client.get("/metrics").text
    post(client, wav_bytes(noise(16000)))
    post(client, b"")
    after = client.get("/metrics").text
    ok = dict(route="/v1/analyze", method="POST", status="200")
    assert metric(after, "emoserve_requests_total", **ok) == metric(before, "emoserve_requests_total", **ok) + 1
    bad = dict(route="/v1/analyze", method="POST", status="400")
    assert metric(after, "emoserve_requests_total", **bad) == metric(before, "emoserve_requests_total", **bad) + 1
    assert metric(after, "emoserve_audio_seconds_total") == metric(before, "emoserve_audio_seconds_total") + 1.0
    assert metric(after, "emoserve_batch_size_count") > metric(before, "emoserve_batch_size_count")
    assert metric(after, "emoserve_model_ready") == 1.0
    assert "emoserve_queue_depth" in after and "emoserve_request_latency_seconds_bucket" in after


def test_access_and_model_load_logs_are_written(make_client, tmp_path):
    client = make_client()
    post(client, wav_bytes(noise(16000)), headers={"X-Request-ID": "req-42"})
    access = (tmp_path / "logs" / "access.log").read_text()
    line = next(line for line in access.splitlines() if "req-42" in line)
    assert "POST /v1/analyze 200" in line and "latency_ms=" in line and "audio_s=1.0" in line
    assert "client=testclient" in line
    model_load = (tmp_path / "logs" / "model_load.log").read_text()
    assert "model=random:tiny" in model_load and "device=cpu" in model_load and "warmup_s=" in model_load


def test_json_lines_logs(make_client, tmp_path):
    client = make_client(log_json=True)
    post(client, wav_bytes(noise(16000)), headers={"X-Request-ID": "req-json"})
    entries = [json.loads(line) for line in (tmp_path / "logs" / "access.log").read_text().splitlines()]
    entry = next(e for e in entries if e.get("request_id") == "req-json")
    assert entry["status"] == 200 and entry["path"] == "/v1/analyze" and entry["audio_s"] == 1.0


def test_nan_model_output_is_a_500_json_and_logged(make_client, tmp_path):
    from emoserve import EmotionModel

    model = EmotionModel.from_pretrained("random:tiny")
    with torch.no_grad():
        model.network.feature_proj.weight.fill_(float("nan"))
    client = make_client(model=model)
    response = post(client, wav_bytes(noise(16000)), headers={"X-Request-ID": "req-nan"})
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
    assert set(response.json()) == {"error"}  # no numbers leak out
    errors = (tmp_path / "logs" / "error.log").read_text()
    assert "req-nan" in errors and "NaN" in errors
    assert client.get("/health").status_code == 200


def test_decode_failures_go_to_the_error_log_and_backpressure_does_not(make_client, tmp_path):
    client = make_client()
    response = post(client, b"RIFF\x00\x00\x00\x00WAVEnot really", headers={"X-Request-ID": "req-corrupt"})
    assert response.status_code == 400 and response.json()["error"]["code"] in ("corrupt_audio", "unsupported_format")
    assert post(client, wav_bytes(noise(16000)), headers={"X-Request-ID": "req-fine"}).status_code == 200
    errors = (tmp_path / "logs" / "error.log").read_text()
    assert "req-corrupt" in errors and "WARNING" in errors and "req-fine" not in errors


@pytest.mark.parametrize("json_lines", [False, True])
def test_control_characters_in_requests_cannot_forge_log_lines(make_client, tmp_path, json_lines):
    client = make_client(log_json=json_lines)
    forged = "2026-01-01T00:00:00.000Z INFO GET /v1/models 200 request_id=forged"
    client.get("/v1/x%0a" + forged.replace(" ", "%20") + "%0d%1b[2J", headers={"X-Request-ID": "req-ctl"})
    lines = (tmp_path / "logs" / "access.log").read_text(encoding="utf-8").split("\n")
    assert not any(line.startswith(forged[:24]) or "\x1b" in line or "\r" in line for line in lines)
    mine = [line for line in lines if "req-ctl" in line]
    assert len(mine) == 1
    if json_lines:
        assert json.loads(mine[0])["path"] == "/v1/x\n" + forged + "\r\x1b[2J"  # the value itself, read back
    else:
        assert "/v1/x\\n2026-01-01T00:00:00.000Z" in mine[0] and "\\r\\x1b[2J" in mine[0]
