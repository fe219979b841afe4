"""`RemoteEngine`'s failure rules against a scripted DeploymentHandle (no cluster): Serve's back-pressure is 503
overloaded, a replica that dies is retried once, a replica's refusal keeps its code, a job's clip waits out a full
queue."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from emoserve.errors import EmoserveError
from emoserve.inference.engine import EngineOverloaded

pytestmark = pytest.mark.ray
ray_exceptions = pytest.importorskip("ray.exceptions", reason="needs Ray: pip install 'emoserve[ray]'")
serve_exceptions = pytest.importorskip("ray.serve.exceptions")

from emoserve.scale.engine import Answer, Refusal, RemoteEngine  # noqa: E402 (after the skip)

CLIP = np.zeros(16000, np.float32)


class Method:
    """`handle.<method>`: `.remote(...)` awaits the next scripted outcome (an exception is raised)."""

    def __init__(self, outcomes: list):
        self.outcomes, self.calls = outcomes, 0

    def remote(self, *args, **kwargs):
        self.calls += 1
        outcome = self.outcomes.pop(0)

        async def answer():
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return answer()


class Handle:
    def __init__(self, **methods: list):
        for name, outcomes in methods.items():
            setattr(self, name, Method(outcomes))


def answered(value) -> Answer:
    return Answer(value, None, "replica-a", "node-a")


def run_engine(handle: Handle, work):
    async def main():
        engine = RemoteEngine(handle, model=None)
        await engine.start()
        try:
            return await work(engine)
        finally:
            await engine.stop()

    return asyncio.run(main())


def test_back_pressure_is_overloaded_with_a_retry_after():
    handle = Handle(submit=[serve_exceptions.BackPressureError(num_queued_requests=8, max_queued_requests=8)])
    with pytest.raises(EngineOverloaded) as refused:
        run_engine(handle, lambda engine: engine.submit(CLIP))
    assert refused.value.code == "overloaded" and refused.value.retry_after >= 1


def test_a_replica_that_dies_is_retried_once_on_another():
    handle = Handle(submit=[ray_exceptions.ActorDiedError(), answered("the result")])
    assert run_engine(handle, lambda engine: engine.submit(CLIP)) == "the result"
    assert handle.submit.calls == 2


def test_two_dead_replicas_in_a_row_are_a_503_to_retry():
    handle = Handle(submit=[ray_exceptions.ActorDiedError(), ray_exceptions.ActorUnavailableError("gone", None)])
    with pytest.raises(EngineOverloaded):
        run_engine(handle, lambda engine: engine.submit(CLIP))


def test_a_replicas_refusal_keeps_its_code_and_details():
    refusal = Refusal("too_short", "the audio is too short", {"min_samples": 400})
    handle = Handle(submit=[Answer(None, refusal, "replica-a", "node-a")])
    with pytest.raises(EmoserveError) as refused:
        run_engine(handle, lambda engine: engine.submit(CLIP))
    assert refused.value.code == "too_short" and refused.value.details == {"min_samples": 400}


def test_a_jobs_clip_waits_out_a_full_queue_and_records_where_it_ran():
    full = Answer(None, Refusal("overloaded", "full", {"retry_after": 0.01}), "replica-a", "node-a")
    done = Answer("outputs", None, "replica-b", "node-b")
    handle = Handle(predict=[full, done])

    async def job(engine):
        outputs = await asyncio.to_thread(engine.submit_blocking, [CLIP], origin="job")
        return outputs, dict(engine.computed_by)

    outputs, computed_by = run_engine(handle, job)
    assert outputs == ["outputs"] and computed_by == {"node-a": 1, "node-b": 1}
