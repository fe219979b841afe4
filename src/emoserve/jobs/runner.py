"""Long-audio jobs: queued → running → succeeded | failed, on worker threads, surviving restarts.

The store holds every job's state, so the runner keeps nothing that a crash could lose: on start,
jobs left `running` by a killed server go back to the queue (and fail for good after
`max_attempts`, so one poisonous file cannot crash-loop the server); results and embeddings are on
disk before the status says succeeded. Callbacks are POSTed from their own threads with
exponential backoff, signed, and only to addresses `emoserve.webhooks` allows; a failing callback
only logs.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from .. import webhooks, wire
from ..audio import check_splittable
from ..config import JobsConfig, LongformConfig
from ..errors import ConflictError, EmoserveError, InvalidParameterError, NotFoundError
from ..files import fsync_dir
from ..inference.results import SplitLongformResult, check_channel_mode, check_granularity, parse_channel_names
from ..model.config import RECEPTIVE_FIELD
from ..timeline.longform import BatchPredict, analyze_long, channel_path
from .records import Job
from .store import Store

log = logging.getLogger(__name__)

EMBEDDING_FILE = "embedding.npy"


class JobCancelled(Exception):
    """The job was deleted while it ran: stop, keep nothing."""


class RunnerStopping(Exception):
    """The runner is stopping: put the job back in the queue for the next start."""


class JobRunner:
    """Pulls queued jobs from the store and analyses their uploads with `emoserve.timeline.longform`.

    `predict` is the batch-predict callable (`EmotionModel.predict`, or the engine's); `labels`,
    `model_name` and `min_samples` describe the model behind it. `poll_s`: how often idle workers
    look for jobs queued by another process.
    """

    def __init__(self, store: Store, predict: BatchPredict, *, labels: Sequence[str], model_name: str,
                 min_samples: int = RECEPTIVE_FIELD, options: LongformConfig | None = None,
                 config: JobsConfig | None = None, poll_s: float = 1.0):
        self.store = store
        self.predict = predict
        self.labels = tuple(labels)
        self.model_name = model_name
        self.min_samples = min_samples
        self.options = options or LongformConfig()
        self.config = config or JobsConfig()
        self.poll_s = poll_s
        self.stopping = threading.Event()
        self.changed = threading.Condition()  # notified when a job is queued or finishes
        self.threads: list[threading.Thread] = []
        self.signing_key = b""  # set by start(): callbacks are sent only once the runner runs

    # ---- lifecycle ----

    def start(self) -> None:
        """Re-queue what a crash left running, resume undelivered callbacks, start workers and the sweeper."""
        if any(t.is_alive() for t in self.threads):
            raise RuntimeError("the job runner is already running")
        secret = self.config.callback_secret.get_secret_value() or \
            webhooks.load_or_create_secret(self.store.root / webhooks.SECRET_FILE)
        self.signing_key = webhooks.signing_key(secret)
        requeued, failed = self.store.requeue_running(self.config.job_max_attempts)
        if requeued or failed:
            log.warning("restart: re-queued %d interrupted job(s), failed %d that kept crashing", len(requeued),
                        len(failed))
        self.stopping.clear()
        for i in range(self.config.job_workers):
            self.spawn(self.work, f"emoserve-job-worker-{i}")
        self.spawn(self.sweep_periodically, "emoserve-sweeper")
        for job in self.store.jobs_with_callbacks_due():
            self.spawn(lambda job=job: self.deliver_callback(job), f"emoserve-callback-{job.job_id}")

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop: a job being analysed goes back to the queue at its next progress step."""
        self.stopping.set()
        with self.changed:
            self.changed.notify_all()
        for thread in self.threads:
            thread.join(timeout)
        self.threads = [t for t in self.threads if t.is_alive()]

    def spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]

    # ---- what the API calls ----

    def submit(self, upload_id: str, granularity: str = "utterance", return_embedding: bool = False,
               callback_url: str | None = None, channels: str = "mix",
               channel_names: str | Sequence[str] | None = None) -> Job:
        """Queue the analysis of a complete upload; the same request again returns the same job.

        A `callback_url` whose host resolves to an address callbacks may not reach is refused here
        (and checked again when the callback is sent: the name may point elsewhere by then).
        `channels="split"` analyses each channel on its own (a stereo call); its options name the channels
        only then, so a mixed job's options are what they always were. A file whose header says it is mono is
        refused for it here, before any job exists.
        """
        options = {"granularity": check_granularity(granularity), "return_embedding": bool(return_embedding)}
        if check_channel_mode(channels) == "split":
            options |= {"channels": "split", "channel_names": parse_channel_names(channel_names)}
            check_splittable(self.store.upload_file(upload_id))
        if callback_url is not None:
            webhooks.vet_callback_url(callback_url, self.config.callback_allow_networks)
        job = self.store.create_job(upload_id, options, callback_url)
        with self.changed:
            self.changed.notify_all()
        return job

    def get(self, job_id: str) -> Job:
        return self.store.get_job(job_id)

    def wait(self, job_id: str, timeout: float) -> Job:
        """The job once finished, or as it stands when `timeout` seconds ran out (`?wait=S`)."""
        deadline = time.monotonic() + max(0.0, timeout)
        job = self.store.get_job(job_id)
        while not job.finished and (remaining := deadline - time.monotonic()) > 0:
            with self.changed:
                self.changed.wait(min(remaining, self.poll_s))
            job = self.store.get_job(job_id)
        return job

    def delete(self, job_id: str) -> None:
        """Remove a job, its result and its embedding; a running job stops at its next progress step."""
        self.store.delete_job(job_id)

    def embedding_file(self, job_id: str, channel: int | None = None) -> Path:
        """The job's embedding file; a channels=split job keeps one per channel, named by `channel`."""
        job = self.store.get_job(job_id)
        if not job.options.get("return_embedding"):
            raise NotFoundError(f"job {job_id} was not asked for an embedding (return_embedding=true)")
        split = job.options.get("channels") == "split"
        if split and channel is None:
            raise InvalidParameterError(f"job {job_id} analysed each channel on its own (channels=split): ask for "
                                        "one channel's embedding with ?channel=K (0 for the first)")
        if not split and channel is not None:
            raise InvalidParameterError(f"job {job_id} mixed its channels (channels=mix): its one embedding has no "
                                        "channel; leave out ?channel")
        if not job.finished:
            raise ConflictError(f"job {job_id} is {job.status}: the embedding comes when it succeeds")
        path = self.store.job_dir(job_id) / embedding_name(channel)
        if job.status != "succeeded":
            raise NotFoundError(f"job {job_id} {job.status} without an embedding")
        if not path.is_file():
            raise NotFoundError(f"job {job_id} has no channel {channel}" if split else
                                f"job {job_id} {job.status} without an embedding")
        return path

    # ---- workers ----

    def work(self) -> None:
        while not self.stopping.is_set():
            job = self.store.claim_job()
            if job is None:
                with self.changed:
                    self.changed.wait(self.poll_s)
                continue
            self.run(job)

    def run(self, job: Job) -> None:
        job_dir = self.store.job_dir(job.job_id)
        shutil.rmtree(job_dir, ignore_errors=True)  # a crashed attempt's scratch and partial embedding
        job_dir.mkdir(parents=True)
        log.info("job %s: analysing upload %s (%s), attempt %d", job.job_id, job.upload_id, job.options, job.attempts)
        try:
            result = self.analyze(job, job_dir)
            finished = self.store.finish_job(job.job_id, result=result)
        except JobCancelled:
            log.info("job %s was deleted while it ran", job.job_id)
            shutil.rmtree(job_dir, ignore_errors=True)
            return
        except Exception as e:
            if isinstance(e, RunnerStopping) or self.stopping.is_set():  # the model may be gone: not the file's fault
                log.info("job %s goes back to the queue: the runner is stopping", job.job_id)
                self.store.release_job(job.job_id)
                return
            if isinstance(e, EmoserveError):
                finished = self.fail(job, wire.JobError(code=e.code, message=e.message, details=e.details))
            else:  # a bug or the model failing must fail this job, never the runner
                log.exception("job %s failed", job.job_id)
                finished = self.fail(job, wire.JobError(code="internal_error", message=f"{type(e).__name__}: {e}"))
        with self.changed:
            self.changed.notify_all()
        if finished is None:
            shutil.rmtree(job_dir, ignore_errors=True)
        elif finished.callback_url:
            self.spawn(lambda: self.deliver_callback(finished), f"emoserve-callback-{job.job_id}")

    def fail(self, job: Job, error: wire.JobError) -> Job | None:
        try:
            return self.store.finish_job(job.job_id, error=error.to_dict())
        except NotFoundError:
            return None

    def analyze(self, job: Job, job_dir: Path) -> bytes:
        """The job's result as its JSON (`wire.LongformResult`, or `SplitLongformResult`), the embedding file
        (one per channel for channels=split) written."""
        path = self.store.upload_file(job.upload_id)
        want_embedding = bool(job.options.get("return_embedding"))
        partial = job_dir / "embedding.part.npy"
        result = analyze_long(
            path, self.predict, labels=self.labels, model_name=self.model_name,
            granularity=job.options.get("granularity", "utterance"), return_embedding=want_embedding,
            options=self.options, progress=ProgressWriter(self.store, job.job_id, self.stopping),
            min_samples=self.min_samples, scratch_dir=job_dir, embedding_path=partial if want_embedding else None,
            channels=job.options.get("channels", "mix"), channel_names=job.options.get("channel_names"))
        if want_embedding:
            channels = [entry.channel for entry in result.channels] if isinstance(result, SplitLongformResult) \
                else [None]
            for channel in channels:
                keep_durably(partial if channel is None else channel_path(partial, channel),
                             job_dir / embedding_name(channel))
            fsync_dir(job_dir)
        return result.to_wire().to_json()

    # ---- callbacks and expiry ----

    def deliver_callback(self, job: Job) -> None:
        """POST the final job JSON, signed; retry with exponential backoff; give up with a log line, never raise.

        Each attempt resolves and vets the host again and connects to the address it vetted.
        """
        try:
            body = job_json(job)
        except FileNotFoundError:
            log.info("job %s was deleted before its callback was sent", job.job_id)
            return
        attempts = self.config.callback_attempts
        for attempt in range(job.callback_attempts + 1, attempts + 1):
            try:
                target = webhooks.vet_callback_url(job.callback_url, self.config.callback_allow_networks)
                headers = {"Content-Type": "application/json",
                           **webhooks.signature_headers(self.signing_key, job.job_id, body)}
                response = webhooks.post_pinned(target, body, headers, self.config.callback_timeout_s)
                if response.is_success:
                    self.store.set_callback_state(job.job_id, "delivered", attempt)
                    log.info("job %s: callback delivered (attempt %d)", job.job_id, attempt)
                    return
                log.warning("job %s: callback %s answered %d (attempt %d of %d)", job.job_id, job.callback_url,
                            response.status_code, attempt, attempts)
            except (httpx.HTTPError, EmoserveError) as e:
                log.warning("job %s: callback %s failed: %s (attempt %d of %d)", job.job_id, job.callback_url, e,
                            attempt, attempts)
            except Exception:
                log.exception("job %s: callback %s failed", job.job_id, job.callback_url)
            self.store.set_callback_state(job.job_id, "pending" if attempt < attempts else "failed", attempt)
            if attempt < attempts and self.stopping.wait(self.config.callback_backoff_s * 2 ** (attempt - 1)):
                return
        log.error("job %s: callback %s not delivered after %d attempts", job.job_id, job.callback_url, attempts)

    def sweep_periodically(self) -> None:
        while not self.stopping.wait(self.config.sweep_interval_s):
            try:
                report = self.store.sweep()
                if report != type(report)():
                    log.info("sweep: %s", report)
            except Exception:
                log.exception("sweep failed")


class ProgressWriter:
    """Progress into the store, at most every 1% or second; stops the analysis once the job is gone
    (JobCancelled) or the runner is stopping (RunnerStopping)."""

    def __init__(self, store: Store, job_id: str, stopping: threading.Event):
        self.store, self.job_id, self.stopping = store, job_id, stopping
        self.last_value, self.last_time = 0.0, 0.0

    def __call__(self, fraction: float) -> None:
        if self.stopping.is_set():
            raise RunnerStopping(self.job_id)
        now = time.monotonic()
        if fraction < 1.0 and fraction - self.last_value < 0.01 and now - self.last_time < 1.0:
            return
        self.last_value, self.last_time = fraction, now
        if not self.store.set_progress(self.job_id, fraction):
            raise JobCancelled(self.job_id)


def embedding_name(channel: int | None) -> str:
    """`embedding.npy`, or channel K's `embedding.chK.npy` in a channels=split job."""
    return EMBEDDING_FILE if channel is None else channel_path(EMBEDDING_FILE, channel).name


def keep_durably(written: Path, target: Path) -> None:
    """Move a finished file into place, its bytes on disk first (the caller fsyncs the directory)."""
    with open(written, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(written, target)


def job_json(job: Job) -> bytes:
    """The job JSON as sent: the stored result bytes between the status fields, never parsed."""
    head, tail = job.json_parts()
    return head + (job.result_path.read_bytes() if job.result_path is not None else b"null") + tail
