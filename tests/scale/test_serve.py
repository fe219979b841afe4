"""`emoserve serve --ray` on a two-node loopback cluster: the single-process API's own tests, results equal to the
single-process server's, jobs fanned out over both nodes, a model replica killed under load, and the Store replica
killed between an upload's chunks and in the middle of a job.

One deployment serves the whole module (Ingress, Store, two EmotionEngine replicas, one per node). The
API tests imported below are the functions of tests/api, collected again here with this module's
`client`: an HTTP client of the Ray deployment instead of the in-process app.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from emoserve.api.app import create_app
from emoserve.config import Settings, StoreConfig
from emoserve.jobs.store import Store

from ..api.live_server import free_port
from ..api.test_app import (  # noqa: F401 (collected here, against the Ray deployment)
    post,
    test_bad_input_gets_its_error,
    test_embedding_and_processed_audio_as_multipart_mixed,
    test_frame_analysis,
    test_health_and_models,
    test_request_shape_errors,
    test_unknown_routes_and_methods_are_json,
    test_utterance_analysis_is_the_model_answer,
)
from ..api.test_tus import test_the_upload_feeds_a_job  # noqa: F401
from ..api.test_uploads import (  # noqa: F401
    CHUNK,
    close_to,
    finished,
    init,
    recording,
    send_all,
    test_chunks_in_any_order_then_complete_give_the_librarys_timeline,
)
from ..polling import wait_for
from ..samples import long_recording, noise, sweep, wav_bytes
from ..test_streaming import chunks, pcm16

pytestmark = pytest.mark.ray

APP = "emoserve"
SETTINGS = {"model": "random:tiny", "api_only": True, "ray_min_replicas": 2, "ray_max_replicas": 2}



def health(base: str) -> dict:
    return httpx.get(base + "/health", timeout=10).json()


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("serve")
    return Settings.from_flat(**SETTINGS, host="127.0.0.1", port=free_port(), data_dir=root / "data",
                              log_dir=root / "logs")


@pytest.fixture(scope="module")
def deployment(ray_cluster, settings):
    """The application deployed once for the module; Serve and the driver's connection closed after it."""
    import ray
    from ray import serve

    from emoserve.scale.serve import deploy

    ray.init(address=ray_cluster.address)
    try:
        deploy(settings, proxy_location="HeadOnly")  # two nodes on one address: one proxy, one port
        base = f"http://127.0.0.1:{settings.server.port}"
        wait_for(lambda: health(base).get("status") == "healthy", 60, "a healthy deployment")
        yield base
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def client(deployment):
    with httpx.Client(base_url=deployment, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """The single-process server of the same settings, in process."""
    root = tmp_path_factory.mktemp("single")
    settings = Settings.from_flat(**SETTINGS, data_dir=root / "data", log_dir=root / "logs")
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/health").status_code == 200, 60, "the single-process server")
        yield client


def replicas(deployment: str = "EmotionEngine") -> dict[str, tuple[int, str]]:
    """The deployment's live replica actors: name → (pid, node id), from Ray's actor table."""
    import ray

    return {a["Name"]: (a["Pid"], a["Address"]["NodeID"]) for a in ray._private.state.actors().values()
            if a["State"] == "ALIVE" and f"#{deployment}#" in a["Name"]}


def test_results_equal_the_single_process_servers(client, single_process):
    for clip, fields in [(sweep(1.5), {}), (noise(16000), {"granularity": "frame"}),
                         (sweep(1.0), {"return_embedding": "true"})]:
        headers = {"Accept": "application/json"}
        here, there = (post(c, wav_bytes(clip), headers=headers, **fields) for c in (single_process, client))
        assert here.status_code == there.status_code == 200, there.text
        want, got = here.json(), there.json()
        assert got.keys() == want.keys() and got["emotion"] == want["emotion"]
        scores = [list(b["scores"].values()) if isinstance(b["scores"], dict) else b["scores"] for b in (want, got)]
        np.testing.assert_allclose(np.array(scores[1]), np.array(scores[0]), atol=1e-5)
        if "embedding_npy_b64" in want:
            import base64
            import io

            vectors = [np.load(io.BytesIO(base64.b64decode(b["embedding_npy_b64"]))) for b in (want, got)]
            np.testing.assert_allclose(vectors[1], vectors[0], atol=1e-5)


def test_the_request_id_is_echoed_once(client):
    response = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers.get_list("x-request-id") == ["abc-123"]
    assert len(client.get("/health").headers.get_list("x-request-id")) == 1


def test_a_stream_over_the_ray_deployment_equals_the_single_process_stream(deployment, single_process):
    from websockets.sync.client import connect

    messages = chunks(pcm16(np.concatenate([sweep(2.7), noise(16000 * 2 + 99, seed=2)])), [6_400])
    with single_process.websocket_connect("/v1/stream") as ws:
        for message in messages:
            ws.send_bytes(message)
        ws.send_text("end")
        want = [ws.receive_json()]
        while want[-1]["type"] != "end":
            want.append(ws.receive_json())
    import json

    with connect(deployment.replace("http", "ws") + "/v1/stream", subprotocols=["emoserve"]) as ws:
        for message in messages:
            ws.send(message)
        ws.send("end")
        got = [json.loads(ws.recv(timeout=60))]
        while got[-1]["type"] != "end":
            got.append(json.loads(ws.recv(timeout=60)))
    assert [m["type"] for m in got] == [m["type"] for m in want]
    for g, w in zip(got, want):
        if "scores" in w:
            np.testing.assert_allclose(np.array(g["scores"]), np.array(w["scores"]), atol=1e-5)


def test_a_jobs_segments_are_computed_on_both_nodes(client, ray_cluster):
    """The store owner's remote engine records the node of the replica that answered each clip."""
    from ray import serve

    data = wav_bytes(long_recording(20.0, seed=7))
    upload_id = send_all(client, data)
    job = client.post("/v1/upload/complete", json={"upload_id": upload_id}).json()
    assert finished(client, job["job_id"])["status"] == "succeeded"
    computed_by = serve.get_deployment_handle("Store", APP).computed_by.remote().result()
    nodes = {node for _, node in replicas().values()}
    assert len(nodes) == 2 and set(computed_by) == nodes, computed_by
    assert all(count > 0 for count in computed_by.values())


def test_a_killed_model_replica_costs_no_5xx_and_comes_back(deployment):
    """16 clients while one EmotionEngine replica is killed -9: 200s, or 503s with Retry-After; /health degraded
    until Serve has replaced it, then healthy."""
    before = replicas()
    assert len(before) == 2
    answers: list[tuple[int, str | None]] = []
    stop = threading.Event()
    clip = wav_bytes(sweep(1.0))

    def keep_asking() -> None:
        with httpx.Client(base_url=deployment, timeout=60) as c:
            while not stop.is_set():
                response = post(c, clip)
                answers.append((response.status_code, response.headers.get("retry-after")))

    clients = [threading.Thread(target=keep_asking) for _ in range(16)]
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: len(answers) >= 32, 60, "requests under way")
        victim, (pid, _) = next(iter(before.items()))
        os.kill(pid, signal.SIGKILL)
        seen = wait_for(lambda: health(deployment) if health(deployment)["status"] == "degraded" else None, 30,
                        "/health degraded")
        assert "EmotionEngine" in seen["reason"]
        wait_for(lambda: health(deployment)["status"] == "healthy", 90, "/health healthy again")
        after = len(answers)
        wait_for(lambda: len(answers) >= after + 16, 60, "requests after the replacement")
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
    now = replicas()
    assert len(now) == 2 and victim not in now
    statuses = {status for status, _ in answers}
    assert statuses <= {200, 503}, statuses
    assert all(retry_after for status, retry_after in answers if status == 503)



def kill_the_store() -> str:
    (name, (pid, _)), = replicas("Store").items()
    os.kill(pid, signal.SIGKILL)
    return name


def answered(client, method: str, url: str, answers: list[tuple[int, str | None]], **kwargs) -> httpx.Response:
    """The request, sent until it is answered 2xx; every other answer is recorded (status, Retry-After) and waited
    out, as a client that honours Retry-After does."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        response = client.request(method, url, **kwargs)
        if response.status_code < 300:
            return response
        answers.append((response.status_code, response.headers.get("retry-after")))
        time.sleep(float(response.headers.get("retry-after") or 0.2))
    raise AssertionError(f"no 2xx answer in 90 s: {answers[-3:]}")


@contextlib.contextmanager
def asking_meanwhile(base: str, path: str):
    """A client asking for `path` again and again in the background: its answers (status, Retry-After)."""
    answers: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def keep_asking() -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            while not stop.is_set():
                response = c.get(path)
                answers.append((response.status_code, response.headers.get("retry-after")))
                time.sleep(0.05)

    asking = threading.Thread(target=keep_asking)
    asking.start()
    try:
        yield answers
    finally:
        stop.set()
        asking.join(60)


def single_process_job(client, data: bytes, **fields) -> dict:
    upload_id = send_all(client, data)
    job = client.post("/v1/upload/complete", json={"upload_id": upload_id, **fields}).json()
    return finished(client, job["job_id"])


def test_a_killed_store_replica_between_chunks_costs_no_5xx_and_the_upload_resumes(client, single_process):
    """kill -9 of the Store after half the chunks: meanwhile the store routes answer 503 + Retry-After (or wait for
    the new replica) and /health says degraded with the Store's reason; the resumed upload completes and its job
    gives the single-process server's result."""
    data = wav_bytes(long_recording(20.0, seed=11))
    upload = init(client, data).json()
    half = upload["chunk_count"] // 2
    for index in range(half):
        assert client.put(upload["chunk_urls"][index], content=data[index * CHUNK:(index + 1) * CHUNK]).is_success
    with asking_meanwhile(str(client.base_url), f"/v1/upload/{upload['upload_id']}") as answers:
        killed = kill_the_store()
        seen = wait_for(lambda: (h := health(str(client.base_url)))["status"] == "degraded" and h, 30,
                        "/health degraded")
        assert "store" in seen["reason"].lower()
        wait_for(lambda: health(str(client.base_url))["status"] == "healthy", 60, "/health healthy again")
    status = answered(client, "GET", f"/v1/upload/{upload['upload_id']}", answers).json()
    assert status["received"] == list(range(half)) and status["missing"] == list(range(half, upload["chunk_count"]))
    for index in status["missing"]:
        answered(client, "PUT", upload["chunk_urls"][index], answers, content=data[index * CHUNK:(index + 1) * CHUNK])
    job = answered(client, "POST", "/v1/upload/complete", answers, json={"upload_id": upload["upload_id"]})
    done = finished(client, job.json()["job_id"])
    assert done["status"] == "succeeded"
    assert done["result"] == close_to(single_process_job(single_process, data)["result"])
    assert killed not in replicas("Store") and len(replicas("Store")) == 1
    assert all(status in (200, 503) and (status == 200 or retry_after) for status, retry_after in answers), answers


def test_a_killed_store_replica_mid_job_reruns_the_job_to_the_same_result(client, single_process, settings):
    """kill -9 of the Store while a job runs: its replacement re-queues the job left running (the single-process
    server's recovery after a crash), which then succeeds with the single-process server's result."""
    data = wav_bytes(long_recording(120.0, seed=12))
    upload_id = send_all(client, data)
    job_id = client.post("/v1/upload/complete", json={"upload_id": upload_id, "granularity": "frame"}).json()["job_id"]
    running = wait_for(lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["status"] == "running"
                       and j["progress"] > 0 and j, 60, "the job under way")
    assert running["progress"] < 1
    kill_the_store()
    answers: list[tuple[int, str | None]] = []
    deadline = time.monotonic() + 120
    while (job := answered(client, "GET", f"/v1/jobs/{job_id}", answers, params={"wait": 5}).json())["status"] in (
            "queued", "running"):
        assert time.monotonic() < deadline, job
    assert job["status"] == "succeeded", job
    want = single_process_job(single_process, data, granularity="frame")
    assert job["result"] == close_to(want["result"])
    store = Store(StoreConfig(data_dir=settings.store.data_dir))
    try:
        assert store.get_job(job_id).attempts == 2  # re-queued by the new replica and run again
    finally:
        store.close()
    assert all(status == 503 and retry_after for status, retry_after in answers), answers
