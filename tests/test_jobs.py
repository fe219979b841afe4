import base64
import hashlib
import hmac
import ipaddress
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pydantic import SecretStr

from emoserve import egress
from emoserve.config import JobsConfig, LongformConfig, StoreConfig
from emoserve.errors import ConflictError, EmoserveError, InvalidParameterError, NotFoundError, UploadIncompleteError
from emoserve.jobs.runner import JobRunner, ProgressWriter
from emoserve.jobs.store import Store

from .polling import wait_for
from .samples import SAMPLE_RATE, conversation, espeak_available, noise, wav_bytes
from .test_store import looking_slowly

REPO = Path(__file__).resolve().parent.parent
OPTIONS = LongformConfig(window_s=3.0, window_overlap_s=0.6)
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)  # callbacks in tests go to receivers on this machine
FAST = JobsConfig(callback_attempts=3, callback_backoff_s=0.1, callback_timeout_s=2.0,
                  callback_allow_networks=LOOPBACK)
POLL_S = 0.05


def recording(seconds_of_gaps=(1.0, 1.5, 1.0)) -> bytes:
    if espeak_available():
        samples, _ = conversation(list(seconds_of_gaps), seed=2)
    else:
        samples = noise(int(sum(seconds_of_gaps) + 4) * SAMPLE_RATE, seed=2)
    return wav_bytes(samples)


def uploaded(store: Store, data: bytes) -> str:
    upload = store.create_upload("a.wav", len(data), min(len(data), store.config.upload_max_chunk_bytes))
    for index in range(upload.chunk_count):
        store.put_chunk(upload.upload_id, index, data[index * upload.chunk_size: (index + 1) * upload.chunk_size])
    store.complete_upload(upload.upload_id)
    return upload.upload_id


def slowed(predict, delay_s: float):
    def predict_slowly(waveforms, frames):
        time.sleep(delay_s)
        return predict(waveforms, frames)

    return predict_slowly


def make_runner(store, model, predict=None, config=FAST) -> JobRunner:
    return JobRunner(store, predict or model.predict, labels=model.labels, model_name=model.name,
                     min_samples=model.config.min_samples, options=OPTIONS, config=config, poll_s=POLL_S)


@pytest.fixture
def store(tmp_path):
    s = Store(StoreConfig(data_dir=tmp_path / "data"))
    yield s
    s.close()


@pytest.fixture
def runner(store, tiny_model):
    r = make_runner(store, tiny_model)
    yield r
    r.stop()


def test_a_job_goes_from_queued_to_succeeded_with_the_library_result(store, runner, tiny_model):
    upload_id = uploaded(store, recording())
    job = runner.submit(upload_id, "frame")
    assert job.status == "queued" and job.progress == 0 and job.result is None
    runner.start()
    done = runner.wait(job.job_id, 60)
    assert done.status == "succeeded" and done.progress == 1.0 and done.error is None
    expected = tiny_model.analyze_long(store.upload_file(upload_id), granularity="frame", options=OPTIONS)
    assert done.result == json.loads(json.dumps(expected.to_dict()))
    assert done.to_dict()["status"] == "succeeded" and done.to_dict()["finished_at"].endswith("Z")


def test_wait_returns_the_unfinished_job_when_time_runs_out(store, runner):
    job = runner.submit(uploaded(store, recording()))
    started = time.monotonic()
    assert runner.wait(job.job_id, 0.3).status == "queued"
    assert 0.25 < time.monotonic() - started < 2.0


def test_embeddings_are_kept_as_npy_when_asked(store, runner, tiny_model):
    upload_id = uploaded(store, recording())
    frames = runner.submit(upload_id, "frame", return_embedding=True)
    plain = runner.submit(upload_id, "utterance")
    with pytest.raises(ConflictError):
        runner.embedding_file(frames.job_id)
    runner.start()
    done = runner.wait(frames.job_id, 60)
    embedding = np.load(runner.embedding_file(frames.job_id))
    assert embedding.shape == (len(done.result["timestamps"]), tiny_model.config.embed_dim)
    runner.wait(plain.job_id, 60)
    with pytest.raises(NotFoundError):
        runner.embedding_file(plain.job_id)


def test_a_bad_file_fails_its_job_and_the_runner_goes_on(store, runner):
    bad = runner.submit(uploaded(store, os.urandom(5000)))
    good = runner.submit(uploaded(store, recording()))
    runner.start()
    failed = runner.wait(bad.job_id, 60)
    assert failed.status == "failed" and failed.error["code"] in ("unsupported_format", "corrupt_audio")
    assert failed.result is None
    assert runner.wait(good.job_id, 60).status == "succeeded"


def test_submitting_checks_its_input_and_repeats_are_the_same_job(store, runner):
    upload_id = uploaded(store, recording())
    first = runner.submit(upload_id, "utterance", callback_url="http://127.0.0.1:9/cb")
    assert runner.submit(upload_id, "utterance", callback_url="http://127.0.0.1:9/cb").job_id == first.job_id
    assert runner.submit(upload_id, "frame").job_id != first.job_id
    with pytest.raises(InvalidParameterError):
        runner.submit(upload_id, "word")
    for url in ("ftp://host/x", "not a url", "http://", "http://h/" + "x" * 3000):
        with pytest.raises(InvalidParameterError):
            runner.submit(upload_id, callback_url=url)
    partial = store.create_upload("b.wav", 20, 10)
    with pytest.raises(UploadIncompleteError) as info:
        runner.submit(partial.upload_id)
    assert info.value.details == {"missing": [0, 1]}
    with pytest.raises(NotFoundError):
        runner.submit("0" * 32)


def test_identical_parallel_submissions_make_one_job(store, runner, monkeypatch):
    upload_id = uploaded(store, recording())
    looking_slowly(store, monkeypatch)
    start = threading.Barrier(16)

    def submit(_) -> str:
        start.wait()
        return runner.submit(upload_id, "frame", callback_url="http://127.0.0.1:9/cb").job_id

    with ThreadPoolExecutor(16) as pool:
        job_ids = set(pool.map(submit, range(16)))
    assert len(job_ids) == 1
    with store.lock:
        assert store.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 1


def test_a_failed_job_is_not_handed_out_again_for_a_new_request(store, runner):
    upload_id = uploaded(store, recording())
    failed = runner.submit(upload_id)
    store.finish_job(failed.job_id, error={"code": "internal_error", "message": "boom"})
    retried = runner.submit(upload_id)
    assert retried.job_id != failed.job_id and retried.status == "queued"
    assert runner.submit(upload_id).job_id == retried.job_id


def test_callbacks_to_this_host_are_refused_unless_allow_listed(store, tiny_model):
    upload_id = uploaded(store, recording())
    strict = make_runner(store, tiny_model, config=JobsConfig())
    for url in ("http://127.0.0.1:9/cb", "http://localhost:9/cb", "http://2130706433:9/cb", "http://[::1]:9/cb"):
        with pytest.raises(InvalidParameterError, match="EMOSERVE_CALLBACK_ALLOW_NETWORKS"):
            strict.submit(upload_id, callback_url=url)
    with store.lock:
        assert store.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0


def test_deleting_a_job_removes_its_result_and_files(store, runner):
    job = runner.submit(uploaded(store, recording()), return_embedding=True)
    runner.start()
    runner.wait(job.job_id, 60)
    assert store.job_dir(job.job_id).is_dir()
    runner.delete(job.job_id)
    assert not store.job_dir(job.job_id).exists()
    with pytest.raises(NotFoundError):
        runner.get(job.job_id)


def test_deleting_a_running_job_stops_it(store, tiny_model):
    runner = make_runner(store, tiny_model, slowed(tiny_model.predict, 0.2))
    job = runner.submit(uploaded(store, wav_bytes(noise(SAMPLE_RATE * 20))), "frame")
    runner.start()
    try:
        wait_for(lambda: store.get_job(job.job_id).progress > 0.1)
        runner.delete(job.job_id)
        wait_for(lambda: not store.job_dir(job.job_id).exists())
        follow_up = runner.submit(uploaded(store, recording()))
        assert runner.wait(follow_up.job_id, 60).status == "succeeded"
    finally:
        runner.stop()


def test_stopping_puts_a_running_job_back_in_the_queue(store, tiny_model):
    runner = make_runner(store, tiny_model, slowed(tiny_model.predict, 0.2))
    job = runner.submit(uploaded(store, wav_bytes(noise(SAMPLE_RATE * 20))), "frame")
    runner.start()
    wait_for(lambda: store.get_job(job.job_id).progress > 0.1)
    runner.stop()
    stopped = store.get_job(job.job_id)
    assert stopped.status == "queued" and stopped.attempts == 0


def test_a_model_gone_while_the_runner_stops_requeues_the_job_instead_of_failing_it(store, tiny_model):
    runner = None

    def engine_stopping(waveforms, frames):
        runner.stopping.set()  # as when the service shuts down: the engine stops under the running job
        raise EmoserveError("the engine is shutting down", code="model_loading")

    runner = make_runner(store, tiny_model, engine_stopping)
    job = runner.submit(uploaded(store, recording()))
    runner.start()
    wait_for(lambda: store.get_job(job.job_id).status != "running" and store.get_job(job.job_id).attempts == 0
             and runner.stopping.is_set())
    runner.stop()
    stopped = store.get_job(job.job_id)
    assert stopped.status == "queued" and stopped.error is None


def test_progress_is_written_in_steps_and_stops_a_deleted_job(store):
    upload_id = uploaded(store, b"x" * 10)
    job = store.create_job(upload_id, {"granularity": "utterance"})
    store.claim_job()
    writer = ProgressWriter(store, job.job_id, threading.Event())
    writer(0.3)
    assert store.get_job(job.job_id).progress == 0.3
    writer(0.305)  # under 1% and under a second later: not worth a write
    assert store.get_job(job.job_id).progress == 0.3
    store.delete_job(job.job_id)
    with pytest.raises(Exception, match=job.job_id):
        writer(0.9)


def test_jobs_left_running_by_a_crash_are_requeued_or_given_up(store, tiny_model):
    upload_id = uploaded(store, recording())
    poisonous = store.create_job(upload_id, {"granularity": "frame", "return_embedding": False})
    for _ in range(3):  # crashed the server three times already
        store.claim_job()
        store.requeue_running(max_attempts=99)
    interrupted = store.create_job(upload_id, {"granularity": "utterance", "return_embedding": False})
    store.claim_job()
    store.claim_job()
    assert store.get_job(interrupted.job_id).status == "running"
    runner = make_runner(store, tiny_model)
    runner.start()
    try:
        assert runner.wait(interrupted.job_id, 60).status == "succeeded"
        gave_up = runner.get(poisonous.job_id)
        assert gave_up.status == "failed" and gave_up.error["code"] == "internal_error"
    finally:
        runner.stop()


class CallbackServer:
    """A local HTTP server that answers 500 `failures` times, then 200, recording each POST."""

    def __init__(self, failures: int):
        self.failures, self.received, self.raw = failures, [], []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                server.raw.append((self.headers, raw))
                body = json.loads(raw)
                server.received.append((time.monotonic(), body))
                status = 500 if len(server.received) <= server.failures else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.http.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/done"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.http.shutdown()
        self.http.server_close()


def test_callbacks_are_retried_with_exponential_backoff(store, runner):
    server = CallbackServer(failures=2)
    try:
        job = runner.submit(uploaded(store, recording()), callback_url=server.url)
        runner.start()
        wait_for(lambda: store.get_job(job.job_id).callback_state == "delivered")
        times = [t for t, _ in server.received]
        assert len(times) == 3
        assert times[1] - times[0] >= 0.1 and times[2] - times[1] >= 0.2
        body = server.received[-1][1]
        assert body["job_id"] == job.job_id and body["status"] == "succeeded" and body["result"]["segments"] is not None
        assert store.get_job(job.job_id).callback_attempts == 3
    finally:
        server.close()


def test_a_callback_that_never_answers_is_given_up_and_jobs_go_on(store, runner):
    server = CallbackServer(failures=100)
    try:
        job = runner.submit(uploaded(store, recording()), callback_url=server.url)
        unreachable = runner.submit(uploaded(store, recording((1.0, 1.2))), callback_url="http://127.0.0.1:9/x")
        runner.start()
        wait_for(lambda: store.get_job(job.job_id).callback_state == "failed")
        wait_for(lambda: store.get_job(unreachable.job_id).callback_state == "failed")
        assert len(server.received) == FAST.callback_attempts
        assert runner.submit(uploaded(store, recording((0.5, 0.5)))).status == "queued"
        assert all(t.is_alive() for t in runner.threads if t.name.startswith("emoserve-job-worker"))
    finally:
        server.close()


def verify_signature(secret: str, headers, body: bytes, tolerance_s: int = 300) -> bool:
    """What a receiver does: the snippet of docs/API.md."""
    key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance_s:
        return False  # too old (or a replay)
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    return any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split())


def test_callbacks_are_signed_with_the_secret_kept_in_the_data_dir(store, runner):
    server = CallbackServer(failures=1)
    try:
        job = runner.submit(uploaded(store, recording()), callback_url=server.url)
        runner.start()
        wait_for(lambda: store.get_job(job.job_id).callback_state == "delivered")
    finally:
        server.close()
    secret_file = store.root / "callback_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    (first_headers, first_body), (headers, body) = server.raw
    assert first_body == body and first_headers["webhook-id"] == headers["webhook-id"] == job.job_id
    assert headers["content-type"] == "application/json"
    assert verify_signature(secret, headers, body)
    assert not verify_signature(secret, headers, body.replace(b'"succeeded"', b'"failed"'))
    assert not verify_signature("whsec_" + base64.b64encode(b"another key").decode(), headers, body)
    assert json.loads(body) == store.get_job(job.job_id).to_dict()


def test_a_callback_goes_to_the_vetted_address_with_its_own_host_name(store, tiny_model, monkeypatch):
    monkeypatch.setattr(egress, "resolve", lambda host, port: [ipaddress.ip_address("127.0.0.1")])
    secret = "any text works as a secret"
    runner = make_runner(store, tiny_model, config=FAST.model_copy(update={"callback_secret": SecretStr(secret)}))
    server = CallbackServer(failures=0)
    try:
        url = f"http://hooks.invalid:{server.port}/done"  # no resolver knows it: only the vetted address leads there
        job = runner.submit(uploaded(store, recording()), callback_url=url)
        runner.start()
        wait_for(lambda: store.get_job(job.job_id).callback_state == "delivered")
    finally:
        runner.stop()
        server.close()
    [(headers, body)] = server.raw
    assert headers["host"] == f"hooks.invalid:{server.port}"
    assert verify_signature(secret, headers, body)  # a secret without whsec_: its UTF-8 bytes are the key


def test_a_callback_host_that_turns_to_a_refused_address_is_not_sent_to(store, tiny_model, monkeypatch):
    answers = {"address": "127.0.0.2"}
    monkeypatch.setattr(egress, "resolve", lambda host, port: [ipaddress.ip_address(answers["address"])])
    config = FAST.model_copy(update={"callback_allow_networks": (ipaddress.ip_network("127.0.0.2/32"),)})
    runner = make_runner(store, tiny_model, config=config)
    server = CallbackServer(failures=0)
    try:
        job = runner.submit(uploaded(store, recording()), callback_url=f"http://rebinding.invalid:{server.port}/x")
        answers["address"] = "127.0.0.1"  # DNS rebinding: the name now points where callbacks may not go
        runner.start()
        wait_for(lambda: store.get_job(job.job_id).callback_state == "failed")
    finally:
        runner.stop()
        server.close()
    assert server.raw == [] and store.get_job(job.job_id).callback_attempts == FAST.callback_attempts


def test_the_sweeper_runs_in_the_background(tmp_path, tiny_model):
    store = Store(StoreConfig(data_dir=tmp_path, upload_expiry_s=0.1))
    upload = store.create_upload("a.wav", 10, 10)
    runner = make_runner(store, tiny_model, config=JobsConfig(sweep_interval_s=0.05))
    runner.start()
    try:
        wait_for(lambda: store.get_upload(upload.upload_id).state == "expired", timeout=5)
        wait_for(lambda: not store.upload_dir(upload.upload_id).exists(), timeout=5)
    finally:
        runner.stop()
        store.close()


def run_jobs_until_killed(data_dir: str) -> None:
    """Runs in a child process: a job runner whose model is slowed down, so the parent can kill it mid-job."""
    from emoserve import EmotionModel

    model = EmotionModel.from_pretrained("random:tiny", device="cpu")
    runner = make_runner(Store(StoreConfig(data_dir=data_dir)), model, slowed(model.predict, 0.3))
    runner.start()
    time.sleep(600)


def test_a_kill_9_mid_job_keeps_finished_results_and_the_restart_finishes_the_rest(tmp_path, tiny_model):
    data_dir = tmp_path / "data"
    store = Store(StoreConfig(data_dir=data_dir))
    runner = make_runner(store, tiny_model)
    finished = runner.submit(uploaded(store, recording()), return_embedding=True)
    runner.start()
    finished = runner.wait(finished.job_id, 60)
    runner.stop()
    embedding_before = runner.embedding_file(finished.job_id).read_bytes()
    path = tmp_path / "long.wav"
    sf.write(path, noise(SAMPLE_RATE * 20, seed=8), SAMPLE_RATE)
    interrupted = runner.submit(uploaded(store, path.read_bytes()), "frame", return_embedding=True)

    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tests.test_jobs import run_jobs_until_killed; "
                               "run_jobs_until_killed(sys.argv[1])", str(data_dir)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}"})
    try:
        wait_for(lambda: store.get_job(interrupted.job_id).progress > 0.2, timeout=60)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert store.get_job(interrupted.job_id).status == "running"

    restarted = make_runner(store, tiny_model)
    restarted.start()
    try:
        done = restarted.wait(interrupted.job_id, 60)
        assert done.status == "succeeded" and done.attempts == 2
        expected = tiny_model.analyze_long(path, granularity="frame", options=OPTIONS)
        assert done.result == json.loads(json.dumps(expected.to_dict()))
        assert restarted.get(finished.job_id) == finished
        assert restarted.embedding_file(finished.job_id).read_bytes() == embedding_before
        job_dir = store.job_dir(interrupted.job_id)
        assert sorted(job_dir.iterdir()) == [job_dir / "embedding.npy", job_dir / "result.json"]  # no scratch left
    finally:
        restarted.stop()
        store.close()
