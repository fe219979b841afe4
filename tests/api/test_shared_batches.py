"""Long-audio jobs and live requests go through the engine's one queue: they share its batches."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from emoserve import EmotionModel
from emoserve.inference.engine import BatchStats

from ..samples import noise, wav_bytes
from .test_uploads import finished, send_all

WINDOW = 32_000  # 2 s frame windows; the live clips are as long, so the engine may batch them together


def test_a_jobs_frame_windows_and_concurrent_analyze_requests_share_batches(make_client):
    model = EmotionModel.from_pretrained("random:tiny", device="cpu")  # its predict is held below
    client = make_client(model=model, max_batch_size=4, max_wait_ms=0, longform_window_s=2.0,
                         longform_window_overlap_s=0.5, longform_batch_size=5)
    engine = client.app.state.service.engine
    batches: list[BatchStats] = []
    engine.observers.append(batches.append)
    real_predict, release, busy = model.predict, threading.Event(), threading.Event()

    def held_predict(waveforms, frames=False):
        busy.set()
        release.wait(30)
        return real_predict(waveforms, frames)

    model.predict = held_predict  # after the warm-up
    # 7.5 s of quiet noise: no voiced segments, five 2 s frame windows, all sent to the engine at once
    upload_id = send_all(client, wav_bytes(noise(120_000, seed=1, amplitude=0.02)))
    job = client.post("/v1/upload/complete", json={"upload_id": upload_id, "granularity": "frame"}).json()
    assert busy.wait(10)  # four windows are in the model; the fifth waits in the queue
    with ThreadPoolExecutor(3) as pool:
        answers = [pool.submit(client.post, "/v1/analyze", files={"audio_file": ("a.wav", wav_bytes(clip))})
                   for clip in (noise(WINDOW, seed=s) for s in (2, 3, 4))]
        deadline = time.monotonic() + 10
        while engine.queue_depth < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.queue_depth == 4  # the job's last window and the three clips
        release.set()
        assert [answer.result(30).status_code for answer in answers] == [200, 200, 200]
    assert finished(client, job["job_id"])["status"] == "succeeded"
    assert [sorted(batch.origins) for batch in batches] == [["job"] * 4, ["job", "request", "request", "request"]]
