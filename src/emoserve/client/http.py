"""The two interpreters of the flows: `EmoClient` (blocking httpx, threads) and `AsyncEmoClient` (asyncio)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from ..inference.results import LongformResult, SplitLongformResult, SplitResult
from .flows import Call, Flow, Flows, Sleep, Together
from .local import LocalClient
from .parse import ClientResult, Job, error_from_response

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"


class EmoClient(Flows):
    """The HTTP API from blocking code. Thread-safe; use as a context manager or call `close()`."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 3, preconvert: bool = False, preconvert_format: str = "flac",
                 resume_dir: str | Path | None = None, transport: httpx.BaseTransport | None = None):
        super().__init__(base_url, api_key, timeout, retries, preconvert, preconvert_format, resume_dir)
        self.http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport)

    @staticmethod
    def local(model, **kwargs) -> LocalClient:
        """The same methods on a local `EmotionModel` (no server): see `LocalClient`."""
        return LocalClient(model, **kwargs)

    def __enter__(self) -> EmoClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def health(self) -> dict:
        """`GET /health`: {"status": "healthy" | "loading" | "failed", "model": ...}, never raising for 503."""
        return self.run(self.health_flow())

    def models(self) -> list:
        """The loaded model(s) as `ModelInfo`."""
        return self.run(self.models_flow())

    def analyze(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False,
                return_processed_audio: bool = False, *, sample_rate: int | None = None,
                preconvert: bool | None = None, filename: str | None = None, channels: str = "mix",
                channel_names: str | Sequence[str] | None = None) -> ClientResult | SplitResult:
        """One clip (≤ the server's single-request limits): a path, bytes, a file object or a float array
        (at `sample_rate`, default 16 kHz). The result is `EmotionModel.analyze`'s, as `ClientResult`
        (channels="split": a `SplitResult` of them, one per channel, named from `channel_names`)."""
        return self.run(self.analyze_flow(audio, granularity, return_embedding, return_processed_audio,
                                          sample_rate, preconvert, filename, channels, channel_names))

    def analyze_long(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False, *,
                     chunk_size: int | None = None, parallel: int = 4, callback_url: str | None = None,
                     preconvert: bool | None = None, resume: bool = True, timeout: float | None = None,
                     channels: str = "mix", channel_names: str | Sequence[str] | None = None,
                     ) -> LongformResult | SplitLongformResult:
        """A file of any length: a chunked upload (`parallel` chunks at a time, resumed after a crash),
        a job, and its `LongformResult` once done; `timeout` bounds the wait for the job (None: no bound).
        channels="split": a `SplitLongformResult`, a timeline per channel and the call's turns (docs/calls.md)."""
        return self.run(self.analyze_long_flow(audio, granularity, return_embedding, chunk_size, parallel,
                                               callback_url, preconvert, resume, timeout, channels, channel_names))

    def submit_long(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False, *,
                    chunk_size: int | None = None, parallel: int = 4, callback_url: str | None = None,
                    preconvert: bool | None = None, resume: bool = True, channels: str = "mix",
                    channel_names: str | Sequence[str] | None = None) -> Job:
        """Upload and start the job without waiting (poll with `job`/`wait`, or let it call `callback_url`)."""
        return self.run(self.submit_long_flow(audio, granularity, return_embedding, chunk_size, parallel,
                                              callback_url, preconvert, resume, channels, channel_names))

    def job(self, job_id: str) -> Job:
        return self.run(self.job_flow(job_id))

    def wait(self, job: Job | str, timeout: float | None = None) -> Job:
        """The finished job (succeeded or failed); TimeoutError after `timeout` seconds."""
        return self.run(self.wait_flow(job, timeout))

    def delete_job(self, job_id: str) -> None:
        self.run(self.delete_job_flow(job_id))

    # ---- running flows with blocking I/O ----

    def run(self, flow: Flow[T]) -> T:
        value, error = None, None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                value = self.perform(step)
            except Exception as e:
                error = e

    def perform(self, step: Call | Sleep | Together) -> Any:
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
        if isinstance(step, Together):
            if not step.flows:
                return []
            with ThreadPoolExecutor(min(step.limit, len(step.flows)), thread_name_prefix="emoserve-upload") as pool:
                return list(pool.map(self.run, step.flows))
        response = self.http.request(step.method, step.url, params=step.params, json=step.json, data=step.data,
                                     files=step.files, content=step.content, headers=step.headers,
                                     timeout=step.timeout or self.timeout)
        if response.is_success or response.status_code in step.ok:
            return response
        raise error_from_response(response)


class AsyncEmoClient(Flows):
    """The HTTP API from asyncio code: `EmoClient`'s methods, awaited."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 3, preconvert: bool = False, preconvert_format: str = "flac",
                 resume_dir: str | Path | None = None, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(base_url, api_key, timeout, retries, preconvert, preconvert_format, resume_dir)
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=timeout,
                                      transport=transport)

    async def __aenter__(self) -> AsyncEmoClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def health(self) -> dict:
        return await self.run(self.health_flow())

    async def models(self) -> list:
        return await self.run(self.models_flow())

    async def analyze(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False,
                      return_processed_audio: bool = False, *, sample_rate: int | None = None,
                      preconvert: bool | None = None, filename: str | None = None, channels: str = "mix",
                      channel_names: str | Sequence[str] | None = None) -> ClientResult | SplitResult:
        # encoding (and pre-conversion) is CPU work: off the event loop
        flow = await asyncio.to_thread(self.started, self.analyze_flow(
            audio, granularity, return_embedding, return_processed_audio, sample_rate, preconvert, filename,
            channels, channel_names))
        return await self.run(flow)

    async def analyze_long(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False, *,
                           chunk_size: int | None = None, parallel: int = 4, callback_url: str | None = None,
                           preconvert: bool | None = None, resume: bool = True, timeout: float | None = None,
                           channels: str = "mix", channel_names: str | Sequence[str] | None = None,
                           ) -> LongformResult | SplitLongformResult:
        flow = await asyncio.to_thread(self.started, self.analyze_long_flow(
            audio, granularity, return_embedding, chunk_size, parallel, callback_url, preconvert, resume, timeout,
            channels, channel_names))
        return await self.run(flow)

    async def submit_long(self, audio: Any, granularity: str = "utterance", return_embedding: bool = False, *,
                          chunk_size: int | None = None, parallel: int = 4, callback_url: str | None = None,
                          preconvert: bool | None = None, resume: bool = True, channels: str = "mix",
                          channel_names: str | Sequence[str] | None = None) -> Job:
        flow = await asyncio.to_thread(self.started, self.submit_long_flow(
            audio, granularity, return_embedding, chunk_size, parallel, callback_url, preconvert, resume,
            channels, channel_names))
        return await self.run(flow)

    async def job(self, job_id: str) -> Job:
        return await self.run(self.job_flow(job_id))

    async def wait(self, job: Job | str, timeout: float | None = None) -> Job:
        return await self.run(self.wait_flow(job, timeout))

    async def delete_job(self, job_id: str) -> None:
        await self.run(self.delete_job_flow(job_id))

    # ---- running flows on the event loop ----

    @staticmethod
    def started(flow: Flow[T]) -> StartedFlow:
        """Run a flow up to its first request (its file reading and encoding), in the calling thread."""
        try:
            return StartedFlow(flow, flow.send(None), None)
        except StopIteration as stop:
            return StartedFlow(flow, None, stop)

    async def run(self, flow: Flow[T] | StartedFlow) -> T:
        started = flow if isinstance(flow, StartedFlow) else self.started(flow)
        if started.done is not None:
            return started.done.value
        flow, step = started.flow, started.step
        while True:
            value, error = None, None
            try:
                value = await self.perform(step)
            except Exception as e:
                error = e
            try:
                step = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                return stop.value

    async def perform(self, step: Call | Sleep | Together) -> Any:
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        if isinstance(step, Together):
            gate = asyncio.Semaphore(step.limit)

            async def gated(flow: Flow) -> Any:
                async with gate:  # each chunk is read from disk in a thread
                    return await self.run(await asyncio.to_thread(self.started, flow))

            tasks = [asyncio.ensure_future(gated(flow)) for flow in step.flows]
            try:
                return await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
        response = await self.http.request(step.method, step.url, params=step.params, json=step.json,
                                           data=step.data, files=step.files, content=step.content,
                                           headers=step.headers, timeout=step.timeout or self.timeout)
        if response.is_success or response.status_code in step.ok:
            return response
        raise error_from_response(response)


@dataclass
class StartedFlow:
    flow: Generator
    step: Any
    done: StopIteration | None
