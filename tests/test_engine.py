import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from emoserve import AudioError, EmotionModel, InvalidParameterError
from emoserve.config import EngineConfig
from emoserve.errors import EmoserveError
from emoserve.inference.engine import (
    BatchStats,
    ClipTooLarge,
    Engine,
    EngineNotRunning,
    EngineOverloaded,
    EngineThread,
    is_out_of_memory,
)

from .samples import noise, sweep, wav_bytes


@pytest.fixture
def model():
    """A fresh tiny model per test: tests patch its predict."""
    return EmotionModel.from_pretrained("random:tiny", device="cpu")


def clips(seed: int, count: int, low: int = 400, high: int = 40_000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [noise(int(n), seed=i) for i, n in enumerate(rng.integers(low, high, count))]


def alone(model: EmotionModel, wav: np.ndarray, granularity: str = "utterance"):
    return model.predict([wav], frames=granularity == "frame")[0]


class Gate:
    """Wraps model.predict so a test can hold the compute thread and see what reached the model."""

    def __init__(self, model: EmotionModel):
        self.predict = model.predict
        self.open = threading.Event()
        self.entered = threading.Event()
        self.seen: list[int] = []  # clip lengths that reached the model
        model.predict = self

    def __call__(self, waveforms, frames=False):
        self.entered.set()
        self.open.wait(10)
        self.seen.extend(len(w) for w in waveforms)
        return self.predict(waveforms, frames=frames)


async def wait_until(condition, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


def test_concurrent_callers_each_get_their_own_result(model):
    waveforms = clips(seed=1, count=24)
    granularities = ["frame" if i % 3 == 0 else "utterance" for i in range(len(waveforms))]
    observed: list[BatchStats] = []

    async def run():
        async with Engine(model, max_batch_size=8, max_batch_samples=8 * 40_000, max_wait_ms=20,
                          warmup=False, observers=[observed.append]) as engine:
            results = await asyncio.gather(*(engine.submit(w, granularity=g, return_embedding=True)
                                             for w, g in zip(waveforms, granularities, strict=True)))
            return results, engine.stats

    results, stats = asyncio.run(run())
    assert stats.batches < len(waveforms) and max(stats.batch_sizes) > 1  # clips really shared batches
    assert stats.completed == len(waveforms) and stats.failed == 0
    assert sum(s.size for s in observed) == len(waveforms)
    assert all(0.0 <= s.padding_ratio <= 0.1 for s in observed)  # the CPU cap
    for wav, granularity, result in zip(waveforms, granularities, results, strict=True):
        expected = alone(model, wav, granularity)
        assert result.granularity == granularity
        assert result.duration_s == pytest.approx(len(wav) / 16_000, abs=1e-6)
        np.testing.assert_allclose(list(result.utterance_scores.values()), expected.probs, atol=1e-5)
        if granularity == "frame":
            np.testing.assert_allclose(result.embedding, expected.frame_features, atol=1e-4)
            np.testing.assert_allclose(result.scores, expected.frame_probs, atol=1e-5)
        else:
            np.testing.assert_allclose(result.embedding, expected.embedding, atol=1e-4)


def test_out_of_memory_splits_the_batch_and_fails_only_the_clip_that_cannot_fit(model):
    predict = model.predict
    calls: list[int] = []

    def predict_within_budget(waveforms, frames=False):
        calls.append(len(waveforms))
        if sum(len(w) for w in waveforms) > 30_000:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return predict(waveforms, frames=frames)

    model.predict = predict_within_budget
    fitting = [noise(9_000, seed=i) for i in range(4)]  # 36 000 samples together: one halving needed
    too_big = noise(31_000, seed=9)

    async def run():
        async with Engine(model, max_batch_size=4, max_batch_samples=10**6, max_wait_ms=50, warmup=False) as engine:
            results = await asyncio.gather(*(engine.submit(w) for w in fitting))
            with pytest.raises(ClipTooLarge) as refused:
                await engine.submit(too_big)
            after = await engine.submit(fitting[0])  # the engine keeps serving
            return results, refused.value, after, engine.stats

    results, refused, after, stats = asyncio.run(run())
    assert calls[:3] == [4, 2, 2]
    assert stats.oom_splits == 1 and stats.failed == 1
    assert refused.code == "audio_too_long"
    model.predict = predict
    for wav, result in zip(fitting, results, strict=True):
        np.testing.assert_allclose(list(result.utterance_scores.values()), alone(model, wav).probs, atol=1e-5)
    np.testing.assert_allclose(list(after.utterance_scores.values()), alone(model, fitting[0]).probs, atol=1e-5)


def test_a_full_queue_refuses_with_a_retry_after_hint(model):
    gate = Gate(model)

    async def run():
        async with Engine(model, max_batch_size=1, max_queue=2, max_wait_ms=0, warmup=False) as engine:
            first = asyncio.create_task(engine.submit(noise(4_000)))
            await wait_until(gate.entered.is_set)  # the first clip is computing, the queue is empty
            queued = [asyncio.create_task(engine.submit(noise(4_000, seed=s))) for s in (1, 2)]
            await wait_until(lambda: engine.queue_depth == 2)
            with pytest.raises(EngineOverloaded) as overloaded:
                await engine.submit(noise(4_000, seed=3))
            gate.open.set()
            await asyncio.gather(first, *queued)
            return overloaded.value, engine.stats

    overloaded, stats = asyncio.run(run())
    assert overloaded.code == "overloaded" and overloaded.retry_after >= 1
    assert stats.rejected == 1 and stats.completed == 3


def test_cancelled_callers_are_dropped_before_compute(model):
    gate = Gate(model)

    async def run():
        async with Engine(model, max_batch_size=4, max_wait_ms=0, warmup=False) as engine:
            first = asyncio.create_task(engine.submit(noise(4_000)))
            await wait_until(gate.entered.is_set)
            gone = asyncio.create_task(engine.submit(noise(5_555)))
            stays = asyncio.create_task(engine.submit(noise(6_000)))
            await wait_until(lambda: engine.queue_depth == 2)
            gone.cancel()
            gate.open.set()
            await asyncio.gather(first, stays)
            return gone, engine.stats

    gone, stats = asyncio.run(run())
    assert gone.cancelled()
    assert 5_555 not in gate.seen and 6_000 in gate.seen
    assert stats.cancelled == 1 and stats.completed == 2


def test_stop_finishes_queued_work_then_refuses_new_work(model):
    gate = Gate(model)

    async def run():
        engine = Engine(model, max_batch_size=2, max_wait_ms=0, warmup=False)
        await engine.start()
        tasks = [asyncio.create_task(engine.submit(w)) for w in clips(seed=2, count=5)]
        await wait_until(gate.entered.is_set)
        stopping = asyncio.create_task(engine.stop(drain=True))
        await asyncio.sleep(0.01)
        with pytest.raises(EngineNotRunning):
            await engine.submit(noise(4_000))
        gate.open.set()
        await stopping
        return await asyncio.gather(*tasks), engine

    results, engine = asyncio.run(run())
    assert len(results) == 5 and not engine.is_running


def test_stop_without_drain_fails_the_queue_but_finishes_the_batch_in_flight(model):
    gate = Gate(model)

    async def run():
        engine = Engine(model, max_batch_size=1, max_wait_ms=0, warmup=False)
        await engine.start()
        in_flight = asyncio.create_task(engine.submit(noise(4_000)))
        await wait_until(gate.entered.is_set)
        queued = asyncio.create_task(engine.submit(noise(5_000)))
        await wait_until(lambda: engine.queue_depth == 1)
        stopping = asyncio.create_task(engine.stop(drain=False))
        await asyncio.sleep(0.01)
        gate.open.set()
        await stopping
        return await asyncio.gather(in_flight, queued, return_exceptions=True)

    finished, failed = asyncio.run(run())
    assert finished.duration_s == 0.25
    assert isinstance(failed, EngineNotRunning)


def test_analyze_decodes_beside_compute_and_keeps_each_result_with_its_audio(model):
    seconds = [0.9, 0.2, 1.7, 0.5, 1.2, 0.3]
    files = [wav_bytes(sweep(s, f0=100 + 50 * i)) for i, s in enumerate(seconds)]

    async def run():
        async with Engine(model, max_batch_size=4, max_wait_ms=10, decode_workers=3, warmup=False) as engine:
            return await asyncio.gather(*(engine.analyze(f, granularity="frame") for f in files))

    async def too_long():
        async with Engine(model, warmup=False) as engine:
            with pytest.raises(AudioError) as refused:
                await engine.analyze(files[2], max_seconds=1.0)
            return refused.value.code

    assert asyncio.run(too_long()) == "audio_too_long"  # decode limits reach the decoder
    outputs = asyncio.run(run())
    for data, s, (wav, result) in zip(files, seconds, outputs, strict=True):
        assert len(wav) == round(s * 16_000)
        expected = model.analyze(data, granularity="frame")
        assert result.duration_s == expected.duration_s
        np.testing.assert_allclose(result.scores, expected.scores, atol=1e-5)


def test_an_engine_thread_serves_synchronous_code_and_stops(model):
    with EngineThread(Engine(model, warmup=False)) as engine:
        wav = sweep(0.5)
        [out] = engine.submit_blocking([wav])
        assert engine.is_running and out.num_samples == 8_000 and out.frame_probs is None
        np.testing.assert_allclose(out.embedding, alone(model, wav).embedding, atol=1e-4)
        with pytest.raises(AudioError) as short:
            engine.submit_blocking([noise(100)])
        assert short.value.code == "too_short"
        assert engine.submit_blocking([]) == []
    assert not engine.is_running
    with pytest.raises(EngineNotRunning):
        engine.submit_blocking([noise(4_000)])


def test_submit_refuses_bad_input_and_a_stopped_engine(model):
    engine = Engine(model, warmup=False)

    async def run():
        with pytest.raises(EngineNotRunning):
            await engine.submit(noise(4_000))
        async with engine:
            with pytest.raises(AudioError):
                await engine.submit(noise(399))
            with pytest.raises(Exception, match="mono"):
                await engine.submit(np.zeros((2, 4_000), np.float32))

    asyncio.run(run())


def test_warm_up_runs_before_the_engine_accepts_work(model):
    gate = Gate(model)
    gate.open.set()

    async def run():
        async with Engine(model, warmup=True):
            return list(gate.seen)

    assert asyncio.run(run()) == [16_000, 80_000, 160_000]


def test_engine_from_its_config_section(tiny_model):
    engine = Engine.from_config(EngineConfig(max_batch_size=3, max_queue=7, threads=1), tiny_model)
    assert (engine.max_batch_size, engine.max_queue, engine.threads) == (3, 7, 1)
    assert engine.max_batch_samples == 4 * 10 * 16_000  # the CPU default


def test_out_of_memory_is_recognised_on_cpu_and_cuda():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_bench_quick_mode_measures_both_systems_and_writes_json_and_markdown(tmp_path):
    import json

    from typer.testing import CliRunner

    from emoserve.cli import app

    result = CliRunner().invoke(app, ["bench", "--load", "--quick", "--clips", "3", "--modes", "fp32,int8",
                                      "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [report_file] = tmp_path.glob("*.json")
    report = json.loads(report_file.read_text())
    systems = {(r["system"], r["mode"], r["concurrency"]) for r in report["runs"]}
    assert {("engine", "fp32", 1), ("engine", "fp32", 8), ("engine", "int8", 8)} <= systems
    assert all(r["x_realtime"] > 0 and r["p50_ms"] > 0 and r["peak_rss_mib"] > 0 for r in report["runs"])
    assert report["accuracy"]["int8"]["clips"] == 6
    if any(r["system"] == "funasr" for r in report["runs"]):  # FunASR is a dev dependency
        assert report["funasr_agreement"]["max_score_diff"] < 1e-5
    assert "| engine | fp32 |" in next(tmp_path.glob("*.md")).read_text()


@pytest.mark.slow
def test_the_fast_paths_stay_close_to_the_exact_model():
    """torch.compile keeps fp32 results; int8 moves them a little and refuses to combine with compile."""
    waveforms = clips(seed=3, count=3, low=8_000, high=40_000)
    exact = EmotionModel.from_pretrained("random:tiny", device="cpu").predict(waveforms)
    compiled = EmotionModel.from_pretrained("random:tiny", device="cpu", compile=True)
    quantized = EmotionModel.from_pretrained("random:tiny", device="cpu", quantize=True)
    assert quantized.info.quantization == "int8-dynamic" and compiled.info.quantization is None
    for fast, tolerance in ((compiled.predict(waveforms), 1e-5), (quantized.predict(waveforms), 0.05)):
        for a, b in zip(exact, fast, strict=True):
            assert np.abs(a.probs - b.probs).max() <= tolerance
    with pytest.raises(InvalidParameterError):
        compiled.quantize_int8()


@pytest.mark.gpu
def test_gpu_engine_batches_in_bf16_close_to_cpu_fp32():
    waveforms = clips(seed=4, count=6, low=8_000, high=80_000)
    reference = EmotionModel.from_pretrained("random:tiny", device="cpu").predict(waveforms)
    gpu = EmotionModel.from_pretrained("random:tiny", device="cuda", precision="fast")

    async def run():
        async with Engine(gpu, max_wait_ms=20) as engine:
            return await asyncio.gather(*(engine.submit(w) for w in waveforms)), engine.stats

    results, stats = asyncio.run(run())
    assert max(stats.batch_sizes) > 1
    for expected, result in zip(reference, results, strict=True):
        assert np.abs(np.array(list(result.utterance_scores.values())) - expected.probs).max() < 0.05


def test_blocking_and_async_callers_share_one_queue_and_its_batches(model):
    """Worker threads (jobs, the UI's long files) and the event loop's callers batch together on the compute thread."""
    waveforms = [noise(8_000, seed=s) for s in range(6)]
    expected = [alone(model, w, "frame") for w in waveforms]
    gate = Gate(model)
    threads: list[str] = []
    model.predict = lambda waveforms, frames=False: threads.append(threading.current_thread().name) or \
        gate(waveforms, frames)
    observed: list[BatchStats] = []
    engine = Engine(model, max_batch_size=8, max_wait_ms=0, warmup=False, observers=[observed.append])
    host = EngineThread(engine)
    with host, ThreadPoolExecutor(1) as pool:
        first = asyncio.run_coroutine_threadsafe(engine.submit(noise(4_000)), host.loop)
        assert gate.entered.wait(10)  # the compute thread is held: what follows queues up
        job = pool.submit(engine.submit_blocking, waveforms[:3], origin="job")
        live = [asyncio.run_coroutine_threadsafe(engine.submit(w, granularity="frame"), host.loop)
                for w in waveforms[3:]]
        asyncio.run_coroutine_threadsafe(wait_until(lambda: engine.queue_depth == 6), host.loop).result()
        gate.open.set()
        outputs, results = job.result(10), [f.result(10) for f in live]
        first.result(10)
    assert [sorted(b.origins) for b in observed] == [["request"], ["job"] * 3 + ["request"] * 3]  # one shared batch
    assert threads and all(name.startswith("emoserve-compute") for name in threads)
    for out, want in zip(outputs, expected[:3], strict=True):
        np.testing.assert_allclose(out.probs, want.probs, atol=1e-5)
        assert out.frame_probs is None  # computed beside frame requests, returned as asked for
    for result, want in zip(results, expected[3:], strict=True):
        np.testing.assert_allclose(result.scores, want.frame_probs, atol=1e-5)
    assert engine.stats.completed == engine.stats.submitted == 7 and engine.stats.rejected == 0


def test_a_full_queue_refuses_live_requests_while_blocking_ones_wait_for_room(model):
    gate = Gate(model)
    engine = Engine(model, max_batch_size=1, max_queue=2, max_wait_ms=0, warmup=False)
    host = EngineThread(engine)
    with host, ThreadPoolExecutor(1) as pool:
        held = asyncio.run_coroutine_threadsafe(engine.submit(noise(4_000)), host.loop)
        assert gate.entered.wait(10)
        live = [asyncio.run_coroutine_threadsafe(engine.submit(noise(4_000, seed=s)), host.loop) for s in (1, 2)]
        asyncio.run_coroutine_threadsafe(wait_until(lambda: engine.queue_depth == 2), host.loop).result()
        job = pool.submit(engine.submit_blocking, [noise(5_000, seed=3), noise(6_000, seed=4)], origin="job")
        with pytest.raises(EngineOverloaded):
            asyncio.run_coroutine_threadsafe(engine.submit(noise(4_000, seed=5)), host.loop).result(10)
        assert not job.done()  # waiting for room, not refused
        gate.open.set()
        outputs = job.result(10)
        for future in [held, *live]:
            future.result(10)
    assert [out.num_samples for out in outputs] == [5_000, 6_000]
    assert engine.stats.rejected == 1 and engine.stats.completed == 5


def test_submit_blocking_raises_the_models_failure_to_its_caller(model):
    def broken(waveforms, frames=False):
        raise ValueError("weights on fire")

    with EngineThread(Engine(model, warmup=False)) as engine:
        model.predict = broken
        with pytest.raises(EmoserveError, match="weights on fire"):
            engine.submit_blocking([noise(4_000), noise(5_000)])
    assert engine.stats.failed == 2
