"""A stream's analysis without a socket: PCM bytes, frame windows, silero's segmentation, the session."""

import asyncio
import threading

import numpy as np
import pytest
from pydantic import ValidationError

from emoserve import EmotionModel
from emoserve.audio import decode_audio
from emoserve.config import LongformConfig, Settings, StreamConfig
from emoserve.errors import AudioError, PayloadTooLargeError
from emoserve.inference.engine import Engine
from emoserve.inference.results import ClipOutput
from emoserve.model.config import HOP
from emoserve.timeline.framing import frame_count
from emoserve.timeline.streaming import (
    FrameWindows,
    PcmDecoder,
    SampleBuffer,
    StreamSession,
    UtteranceTracker,
)

from .samples import SAMPLE_RATE, conversation, espeak_available, noise, speech, sweep, wav_bytes

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
OPTIONS = StreamConfig(window_s=2.0, hop_s=0.5)  # short windows: many of them in a few seconds of audio


def pcm16(wav: np.ndarray) -> bytes:
    return (np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes()


def heard(pcm: bytes) -> np.ndarray:
    """The samples the server hears from `pcm`: what decoding the same PCM16 as a WAV gives."""
    return decode_audio(wav_bytes(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768))


def chunks(data: bytes, sizes) -> list[bytes]:
    out, position, k = [], 0, 0
    while position < len(data):
        out.append(data[position: position + sizes[k % len(sizes)]])
        position += sizes[k % len(sizes)]
        k += 1
    return out


def run_stream(model: EmotionModel, messages: list[bytes], options: StreamConfig = OPTIONS, **engine_options):
    """Every message the session sends for this audio, after `end`."""

    async def main():
        sent = []

        async def send(message):
            sent.append(message)

        async with Engine(model, warmup=False, **engine_options) as engine:
            session = StreamSession(engine, options, send)
            analysis = asyncio.create_task(session.run())
            for message in messages:
                session.feed(message)
                await asyncio.sleep(0)
            session.end()
            await analysis
        return sent

    return asyncio.run(main())


def frame_rows(messages) -> np.ndarray:
    """The frames of all messages on one grid; asserts the grid is continuous from 0."""
    frames = [m for m in messages if m["type"] == "frames"]
    expected_start = 0
    for m in frames:
        assert m["start"] == pytest.approx(expected_start * 0.02, abs=1e-9)
        expected_start += len(m["scores"])
    return np.array([row for m in frames for row in m["scores"]], np.float64)


def local_model() -> EmotionModel:
    """random:tiny whose frame t depends only on samples [320t, 320t + 400), as a convolution would.

    Any misalignment of the stitched grid (a frame from the wrong window offset) shows as a mismatch.
    """
    model = EmotionModel.from_pretrained("random:tiny", device="cpu")

    def predict(waveforms, frames=False):
        outputs = []
        for wav in waveforms:
            t = frame_count(len(wav))
            windows = np.lib.stride_tricks.sliding_window_view(wav, 400)[::HOP][:t]
            features = np.stack([windows[:, 40 * k: 40 * k + 40].std(1) for k in range(9)], 1).astype(np.float32)
            probs = np.exp(10 * features) / np.exp(10 * features).sum(1, keepdims=True)
            outputs.append(ClipOutput(len(wav), features.mean(0), probs.mean(0), features, probs))
        return outputs

    model.predict = predict
    return model


# ---- bytes → samples ----


def test_pcm_split_anywhere_decodes_as_the_wav_of_the_same_samples():
    pcm = pcm16(noise(5_001, seed=2, amplitude=0.4))
    decoder = PcmDecoder()
    pieces = [decoder.decode(piece) for piece in chunks(pcm, [1, 3, 2, 7, 1000, 999])]
    assert decoder.carry == b""
    np.testing.assert_array_equal(np.concatenate(pieces), heard(pcm))


def test_a_half_sample_waits_for_its_other_byte():
    decoder = PcmDecoder()
    assert len(decoder.decode(b"\x00")) == 0 and decoder.carry == b"\x00"
    np.testing.assert_array_equal(decoder.decode(b"\x80\xff\x7f"), [-1.0, 32767 / 32768])


def test_sample_buffer_keeps_what_is_not_dropped():
    buffer = SampleBuffer()
    for block in np.array_split(np.arange(100, dtype=np.float32), 7):
        buffer.append(block)
    buffer.drop_before(33)
    np.testing.assert_array_equal(buffer.slice(40, 60), np.arange(40, 60))
    with pytest.raises(ValueError):
        buffer.slice(30, 40)


# ---- frame windows ----


@pytest.mark.parametrize("num_samples", [399, 400, 9_000, 32_000, 32_001, 48_320, 100_000, 123_457])
def test_windows_hand_out_every_frame_once_from_a_window_that_computed_it(num_samples):
    windows = FrameWindows(OPTIONS.window_samples, OPTIONS.hop_samples)
    handed = []
    for block in np.array_split(np.zeros(num_samples, np.float32), 13):
        windows.append(block)
        while (window := windows.next_window()) is not None:
            handed.append(window)
            windows.done(window)
    if (window := windows.last_window()) is not None:
        handed.append(window)
        windows.done(window)
    assert windows.last_window() is None
    frames = [t for w in handed for t in range(w.first, w.last)]
    assert frames == list(range(frame_count(num_samples)))
    for w in handed:
        assert w.start % HOP == 0 and len(w.samples) <= OPTIONS.window_samples
        assert w.start // HOP <= w.first and w.last <= w.start // HOP + frame_count(len(w.samples))
    # a regular window keeps at least (window - hop) / 2 of audio after its last frame
    context = (OPTIONS.window_samples - OPTIONS.hop_samples) // 2 - HOP
    for w in handed[:-1]:
        assert (w.start + len(w.samples)) - (w.last * HOP + 400) >= context


def test_stream_frames_equal_one_pass_with_a_local_model():
    wav = np.concatenate([sweep(3.3), noise(SAMPLE_RATE * 2 + 123, seed=3, amplitude=0.3)])
    pcm = pcm16(wav)
    model = local_model()
    rows = frame_rows(run_stream(model, chunks(pcm, [4_001, 17, 10_000])))
    single = model.predict([heard(pcm)], frames=True)[0].frame_probs
    assert rows.shape == single.shape and len(rows) > 5 * 50
    np.testing.assert_allclose(rows, single, rtol=1e-6, atol=1e-7)


def test_stream_frames_are_their_windows_frames_and_close_to_one_pass(tiny_model):
    wav = np.concatenate([sweep(3.0), noise(SAMPLE_RATE * 3 + 777, seed=5)])
    pcm = pcm16(wav)
    audio = heard(pcm)
    rows = frame_rows(run_stream(tiny_model, [pcm]))
    assert len(rows) == frame_count(len(audio))
    window, hop = OPTIONS.window_samples, OPTIONS.hop_samples
    windows = FrameWindows(window, hop)
    windows.append(audio)
    while (w := windows.next_window()) or (w := windows.last_window()):
        alone = tiny_model.predict([audio[w.start: w.start + len(w.samples)]], frames=True)[0].frame_probs
        np.testing.assert_allclose(rows[w.first: w.last], w.owned(alone), atol=1e-6)
        windows.done(w)
    # a window sees 2 s, not the whole clip: its frames differ a little from one pass over all 6 s
    whole = tiny_model.predict([audio], frames=True)[0].frame_probs
    assert np.abs(rows - whole).max() < 0.05


def test_any_message_sizes_give_the_same_messages(tiny_model):
    pcm = pcm16(np.concatenate([sweep(2.5), noise(SAMPLE_RATE * 2, seed=7)]))
    one = run_stream(tiny_model, [pcm])
    for sizes in ([1, 2, 3, 5, 7, 11, 13, 3_333], [31_999], [641, 640, 639]):
        other = run_stream(tiny_model, chunks(pcm, sizes))
        np.testing.assert_allclose(frame_rows(other), frame_rows(one), atol=1e-6)
        assert [m["type"] for m in other if m["type"] != "frames"] == [m["type"] for m in one if m["type"] != "frames"]


def test_end_flushes_a_stream_shorter_than_one_window(tiny_model):
    pcm = pcm16(noise(SAMPLE_RATE // 2 + 5, seed=1))
    rows = frame_rows(run_stream(tiny_model, [pcm]))
    assert len(rows) == frame_count(SAMPLE_RATE // 2 + 5)
    assert run_stream(tiny_model, [pcm[:700]]) == []  # 350 samples: shorter than one frame


# ---- utterances: the stretches silero-vad finds, as they close ----


@needs_espeak
def test_utterances_are_the_segments_of_a_long_audio_job(tiny_model):
    wav, regions = conversation([1.5, 2.0, 1.0, 0.8], seed=2)
    pcm = pcm16(wav)
    messages = run_stream(tiny_model, chunks(pcm, [3_201, 640, 12_345]))
    utterances = [m for m in messages if m["type"] == "utterance"]
    expected = tiny_model.analyze_long(heard(pcm)).segments
    assert len(utterances) == len(expected) == len(regions)
    for got, want in zip(utterances, expected):
        assert (got["start"], got["end"]) == (want.start, want.end)
        assert got["scores"] == pytest.approx(want.scores, abs=1e-5) and got["emotion"] in want.scores


@needs_espeak
def test_an_utterance_is_sent_once_its_silence_is_long_enough_not_at_the_end(tiny_model):
    wav, regions = conversation([1.0, 2.0, 1.0], seed=3)
    pcm = pcm16(wav)
    first_closes = 2 * int((regions[0][1] + 0.5) * SAMPLE_RATE)  # 0.5 s of silence: over 300 ms + padding

    async def main():
        async with Engine(tiny_model, warmup=False) as engine:
            sent = []

            async def send(message):
                sent.append(message)

            session = StreamSession(engine, OPTIONS, send)
            analysis = asyncio.create_task(session.run())
            session.feed(pcm[:first_closes])
            for _ in range(1000):
                if any(m["type"] == "utterance" for m in sent):
                    break
                await asyncio.sleep(0.01)
            early = [m for m in sent if m["type"] == "utterance"]
            session.feed(pcm[first_closes:])
            session.end()
            await analysis
            return early, [m for m in sent if m["type"] == "utterance"]

    early, utterances = asyncio.run(main())
    assert early == utterances[:1] and len(utterances) == 2
    assert early[0]["end"] == pytest.approx(regions[0][1] + 0.1, abs=0.3)


@needs_espeak
def test_long_speech_is_cut_into_utterances_of_at_most_the_segment_limit(tiny_model):
    wav = np.concatenate([speech("one two three four five six seven eight nine ten")] * 3)
    tracker = UtteranceTracker(LongformConfig(max_segment_s=2.0), min_samples=400)
    voiced = [v for block in np.array_split(wav, 37) for v in tracker.feed(block)] + tracker.finish()
    assert len(voiced) >= 4
    assert all(len(v.samples) <= 2.0 * SAMPLE_RATE for v in voiced)
    for v in voiced:
        np.testing.assert_array_equal(v.samples, wav[v.start: v.end])


def test_silence_and_noise_make_frames_but_no_utterances(tiny_model):
    pcm = pcm16(np.concatenate([np.zeros(SAMPLE_RATE, np.float32), noise(SAMPLE_RATE * 2, amplitude=0.05)]))
    messages = run_stream(tiny_model, [pcm])
    assert {m["type"] for m in messages} == {"frames"}


# ---- limits, overload, cancellation ----


def test_options_are_checked_and_read_from_settings():
    for bad in ({"hop_s": 0.0}, {"hop_s": 1.5, "window_s": 2.0}, {"window_s": 0.02}, {"max_buffer_s": 0.5},
                {"max_duration_s": 0}):
        with pytest.raises(ValidationError):
            StreamConfig(**bad)
    with pytest.raises(ValidationError, match="at most half of window_s"):
        Settings.from_flat(stream_window_s=4.0, stream_hop_s=2.5)
    with pytest.raises(ValidationError, match="at least hop_s"):
        Settings.from_flat(stream_max_buffer_s=0.5)
    settings = Settings.from_flat(stream_window_s=6.0, stream_hop_s=2.0, vad_min_silence_ms=500)
    assert (settings.stream.window_samples, settings.stream.hop_samples) == (96_000, 32_000)
    assert settings.longform.vad.min_silence_ms == 500


def test_duration_limit_keeps_the_audio_before_it(tiny_model):
    async def main():
        async with Engine(tiny_model, warmup=False) as engine:
            session = StreamSession(engine, StreamConfig(window_s=2.0, hop_s=0.5, max_duration_s=1.0), send=None)
            session.feed(pcm16(noise(SAMPLE_RATE // 2)))
            with pytest.raises(AudioError) as refused:
                session.feed(pcm16(noise(SAMPLE_RATE)))
            with pytest.raises(PayloadTooLargeError):
                StreamSession(engine, StreamConfig(max_buffer_s=1.0), send=None).feed(bytes(2 * SAMPLE_RATE + 2))
            return session.received, refused.value.code

    assert asyncio.run(main()) == (SAMPLE_RATE, "audio_too_long")


def test_backlog_over_the_buffer_holds_the_reader_until_the_workers_catch_up(tiny_model):
    async def main():
        async with Engine(tiny_model, warmup=False) as engine:
            sent = []

            async def send(message):
                sent.append(message)

            session = StreamSession(engine, StreamConfig(window_s=2.0, hop_s=0.5, max_buffer_s=2.0), send)
            for message in chunks(pcm16(noise(SAMPLE_RATE * 5)), [2 * SAMPLE_RATE]):
                session.feed(message)
            room = asyncio.create_task(session.wait_for_room())
            await asyncio.sleep(0)
            held = not room.done()
            analysis = asyncio.create_task(session.run())
            await asyncio.wait_for(room, 30)
            backlog = session.backlog()
            session.end()
            await analysis
            return held, backlog, len(frame_rows(sent))

    held, backlog, frames = asyncio.run(main())
    assert held and backlog <= 2 * SAMPLE_RATE and frames == frame_count(SAMPLE_RATE * 5)


def test_an_overloaded_engine_is_reported_and_the_frames_still_come(monkeypatch):
    model = EmotionModel.from_pretrained("random:tiny", device="cpu")
    predict, entered, release = model.predict, threading.Event(), threading.Event()

    def slow_predict(waveforms, frames=False):
        entered.set()
        release.wait(10)
        return predict(waveforms, frames=frames)

    model.predict = slow_predict
    monkeypatch.setattr("emoserve.timeline.streaming.MAX_RETRY_WAIT_S", 0.05)

    async def main():
        async with Engine(model, warmup=False, max_batch_size=1, max_queue=1, max_wait_ms=0) as engine:
            others = [asyncio.create_task(engine.submit(noise(8_000)))]  # in compute, held
            await asyncio.to_thread(entered.wait, 10)
            others.append(asyncio.create_task(engine.submit(noise(8_000))))  # fills the queue
            sent = []

            async def send(message):
                sent.append(message)
                if message["type"] == "error":
                    release.set()

            session = StreamSession(engine, OPTIONS, send)
            analysis = asyncio.create_task(session.run())
            session.feed(pcm16(noise(SAMPLE_RATE * 4, seed=3)))
            session.end()
            await asyncio.wait_for(analysis, 60)
            await asyncio.gather(*others)
            return sent

    sent = asyncio.run(main())
    errors = [m for m in sent if m["type"] == "error"]
    assert errors and errors[0]["code"] == "overloaded" and errors[0]["retry_after"] >= 1
    assert len(frame_rows(sent)) == frame_count(SAMPLE_RATE * 4)


def test_a_cancelled_stream_drops_its_queued_work():
    model = EmotionModel.from_pretrained("random:tiny", device="cpu")
    predict, entered, release, seen = model.predict, threading.Event(), threading.Event(), []

    def held_predict(waveforms, frames=False):
        entered.set()
        release.wait(10)
        seen.extend(len(w) for w in waveforms)
        return predict(waveforms, frames=frames)

    model.predict = held_predict

    async def main():
        async with Engine(model, warmup=False, max_batch_size=1, max_wait_ms=0) as engine:
            blocker = asyncio.create_task(engine.submit(noise(8_000)))  # holds the compute thread
            await asyncio.to_thread(entered.wait, 10)

            async def send(message):
                pass

            session = StreamSession(engine, OPTIONS, send)
            analysis = asyncio.create_task(session.run())
            session.feed(pcm16(noise(SAMPLE_RATE * 6, seed=4)))
            while engine.stats.submitted < 2:  # the first window is queued behind the blocker
                await asyncio.sleep(0.01)
            analysis.cancel()
            await asyncio.gather(analysis, return_exceptions=True)
            release.set()
            await blocker
            await asyncio.sleep(0.1)
            return engine.stats

    stats = asyncio.run(main())
    assert stats.submitted == 2 and stats.cancelled == 1 and seen == [8_000]
