"""The API on a graph backend (EMOSERVE_BACKEND): the same answers as on torch, within 1e-5."""

from __future__ import annotations

import importlib.util
import io
import json

import numpy as np
import pytest

from ..samples import sweep, wav_bytes
from .conftest import wait_healthy
from .test_app import parse_mixed, post

BACKENDS = [pytest.param(backend, marks=pytest.mark.skipif(importlib.util.find_spec(backend) is None,
                                                           reason=f"{backend} is not installed"))
            for backend in ("onnxruntime", "openvino")]


def analyze(client, granularity: str) -> tuple[dict, np.ndarray]:
    response = post(client, wav_bytes(sweep(1.3)), granularity=granularity, return_embedding="true")
    assert response.status_code == 200, response.text
    json_part, embedding_part = parse_mixed(response)[:2]
    return json.loads(json_part[2]), np.load(io.BytesIO(embedding_part[2]), allow_pickle=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_analyze_answers_as_on_torch_with_the_backend_set_by_its_variable(backend, make_client, monkeypatch):
    torch_client = make_client()
    monkeypatch.setenv("EMOSERVE_BACKEND", backend)
    graph_client = make_client(model=None)  # loaded by the service from the settings, as `emoserve serve` does
    wait_healthy(graph_client, timeout=300)
    [described] = graph_client.get("/v1/models").json()["models"]
    assert (described["backend"], described["precision"]) == (backend, "exact")
    assert described["execution"].startswith(f"{backend} fp32 graph")
    for granularity in ("utterance", "frame"):
        want, want_embedding = analyze(torch_client, granularity)
        got, got_embedding = analyze(graph_client, granularity)
        assert got["emotion"] == want["emotion"] and got.get("labels") == want.get("labels")
        assert got_embedding.shape == want_embedding.shape
        scale = np.abs(want_embedding).max()
        assert np.abs(got_embedding - want_embedding).max() <= 1e-5 * scale
        if granularity == "utterance":
            assert got["scores"].keys() == want["scores"].keys()
            assert max(abs(got["scores"][k] - want["scores"][k]) for k in want["scores"]) <= 1e-5
        else:
            assert got["timestamps"] == want["timestamps"]
            assert np.abs(np.array(got["scores"]) - np.array(want["scores"])).max() <= 1e-5
