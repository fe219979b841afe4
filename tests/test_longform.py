import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pydantic import ValidationError

from emoserve.audio import decode_audio
from emoserve.config import LongformConfig
from emoserve.errors import AudioError, InvalidParameterError
from emoserve.inference.results import ClipOutput, Segment, overall_of
from emoserve.model.config import HOP
from emoserve.timeline.framing import frame_count, owned_frames, plan_windows
from emoserve.timeline.longform import DECODE_SHARE, analyze_long, first_pass

from .samples import SAMPLE_RATE, conversation, encode, espeak_available, noise, speech, sweep, tone, wav_bytes

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
LABELS3 = ("a", "b", "c")


def local_predict(waveforms, frames):
    """A stand-in model whose frame t depends only on samples [320t, 320t + 400), as a convolution would.

    With it, any misalignment of the stitched frame grid shows as a mismatch against one pass.
    """
    outputs = []
    for wav in waveforms:
        t = frame_count(len(wav))
        windows = np.lib.stride_tricks.sliding_window_view(wav, 400)[::HOP][:t]
        features = np.stack([windows.mean(1), windows.std(1), np.abs(windows).max(1)], axis=1).astype(np.float32)
        probs = np.exp(features) / np.exp(features).sum(1, keepdims=True)
        outputs.append(ClipOutput(len(wav), features.mean(0), probs.mean(0), features if frames else None,
                                  probs if frames else None))
    return outputs


def test_stitched_frames_equal_one_pass_on_a_local_model():
    wav = np.concatenate([sweep(7.0), noise(SAMPLE_RATE * 5 + 123, seed=3, amplitude=0.1)])  # peak < 1: not rescaled
    options = LongformConfig(window_s=3.0, window_overlap_s=0.6)
    result = analyze_long(wav, local_predict, labels=LABELS3, model_name="local", granularity="frame",
                          return_embedding=True, regions=[], options=options)
    single = local_predict([wav], True)[0]
    assert len(plan_windows(len(wav), options.window_samples, options.overlap_samples)) > 3
    assert result.frame_scores.shape == single.frame_probs.shape
    np.testing.assert_allclose(result.frame_scores, single.frame_probs, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result.embedding, single.frame_features, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(result.timestamps, np.arange(len(single.frame_probs)) / 50)


def test_stitched_frames_of_the_model_come_from_the_window_that_owns_them(tiny_model):
    wav = np.concatenate([sweep(6.0), noise(SAMPLE_RATE * 5 + 777, seed=5)])
    options = LongformConfig(window_s=4.0, window_overlap_s=1.0)
    result = tiny_model.analyze_long(wav, granularity="frame", return_embedding=True, regions=[], options=options)
    assert result.frame_scores.shape == (frame_count(len(wav)), len(tiny_model.labels))
    assert result.timestamps[-1] == pytest.approx((frame_count(len(wav)) - 1) * 0.02)
    starts = plan_windows(len(wav), options.window_samples, options.overlap_samples)
    for start, (first, last) in zip(starts, owned_frames(starts, len(wav), options.window_samples)):
        alone = tiny_model.predict([wav[start: start + options.window_samples]], frames=True)[0]
        offset = start // HOP
        np.testing.assert_allclose(result.frame_scores[first:last], alone.frame_probs[first - offset: last - offset],
                                   atol=1e-6)
        np.testing.assert_allclose(result.embedding[first:last], alone.frame_features[first - offset: last - offset],
                                   atol=1e-5)
    # away from the edges of its window, a frame barely depends on how far the audio goes on
    whole = tiny_model.predict([wav], frames=True)[0].frame_probs
    middle = slice(options.window_samples // HOP // 2 - 10, options.window_samples // HOP // 2 + 10)
    assert np.abs(result.frame_scores[middle] - whole[middle]).max() < 0.05


def test_given_regions_become_segments_of_at_most_30_s_scored_alone(tiny_model):
    wav = noise(SAMPLE_RATE * 70, seed=2)
    result = tiny_model.analyze_long(wav, regions=[(1.0, 66.0), (67.0, 68.5)])
    edges = [edge for s in result.segments for edge in (s.start, s.end)]
    thirds = [1.0, 1.0 + 65 / 3, 1.0 + 65 / 3, 1.0 + 130 / 3, 1.0 + 130 / 3, 66.0]
    assert edges == pytest.approx([*thirds, 67.0, 68.5], abs=1e-4)
    assert all(s.end - s.start <= 30.0 for s in result.segments)
    alone = tiny_model.analyze(wav[67 * SAMPLE_RATE: int(68.5 * SAMPLE_RATE)])
    assert result.segments[3].scores == pytest.approx(alone.scores, abs=1e-6)


def test_overall_weights_segments_by_duration():
    segments = [Segment(0.0, 1.0, "a", 0.8, {"a": 0.8, "b": 0.2}), Segment(2.0, 5.0, "b", 0.6, {"a": 0.4, "b": 0.6})]
    overall = overall_of(segments, ("a", "b"))
    assert overall.scores == pytest.approx({"a": 0.5, "b": 0.5})
    assert overall.speech_s == 4.0
    segments[1] = Segment(2.0, 3.0, "b", 0.6, {"a": 0.4, "b": 0.6})
    assert overall_of(segments, ("a", "b")).emotion == "a"


def test_no_segments_means_no_overall_emotion(tiny_model):
    result = tiny_model.analyze_long(np.zeros(SAMPLE_RATE * 3, np.float32))
    assert result.segments == [] and result.overall.emotion is None and result.overall.speech_s == 0
    assert result.to_dict()["overall"] == {"emotion": None, "confidence": None, "scores": {}, "speech_s": 0.0}


@needs_espeak
def test_vad_finds_the_phrases_between_silences(tiny_model):
    wav, regions = conversation([2.0, 2.5, 1.5, 1.0], seed=1)
    result = tiny_model.analyze_long(wav)
    assert len(result.segments) == len(regions)
    for segment, (start, end) in zip(result.segments, regions):
        assert abs(segment.start - start) < 0.35 and abs(segment.end - end) < 0.35
    assert result.overall.speech_s == pytest.approx(sum(e - s for s, e in regions), abs=1.0)


@needs_espeak
def test_vad_segments_stay_under_the_limit_in_long_speech(tiny_model):
    wav = np.concatenate([speech("one two three four five six seven eight nine ten")] * 4)
    result = tiny_model.analyze_long(wav, options=LongformConfig(max_segment_s=3.0))
    assert len(result.segments) >= 4
    assert all(s.end - s.start <= 3.0 for s in result.segments)


def test_silence_and_noise_have_no_speech(tiny_model):
    wav = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), noise(SAMPLE_RATE * 3, amplitude=0.05)])
    result = tiny_model.analyze_long(wav, granularity="frame")
    assert result.segments == []
    assert result.frame_scores.shape[0] == frame_count(len(wav))


def test_file_and_waveform_give_the_same_timeline(tiny_model, tmp_path):
    wav = np.concatenate([sweep(3.0), noise(SAMPLE_RATE * 2, seed=4)])
    path = tmp_path / "clip.wav"
    sf.write(path, wav, SAMPLE_RATE, subtype="FLOAT")
    regions = [(0.5, 2.5), (3.0, 4.9)]
    from_file = tiny_model.analyze_long(path, granularity="frame", regions=regions)
    from_array = tiny_model.analyze_long(wav, granularity="frame", regions=regions)
    assert from_file.to_dict() == from_array.to_dict()


def test_a_resampled_file_is_close_to_decoding_it_whole(tiny_model, tmp_path):
    wav44 = np.concatenate([sweep(3.0, rate=44_100), noise(44_100 * 2, seed=4)])
    path = tmp_path / "clip.flac"
    sf.write(path, wav44, 44_100)
    streamed = tiny_model.analyze_long(path, granularity="frame", regions=[(0.5, 4.5)])
    whole = tiny_model.analyze_long(decode_audio(path), granularity="frame", regions=[(0.5, 4.5)])
    assert streamed.duration_s == whole.duration_s
    np.testing.assert_allclose(streamed.frame_scores, whole.frame_scores, atol=1e-3)


def test_formats_soundfile_cannot_read_decode_with_pyav(tiny_model, tmp_path):
    path = tmp_path / "clip.m4a"
    path.write_bytes(encode(sweep(4.0), SAMPLE_RATE, "m4a_aac"))
    result = tiny_model.analyze_long(path, regions=[(0.5, 3.5)])
    assert result.duration_s == pytest.approx(4.0, abs=0.1)
    assert len(result.segments) == 1


def test_eight_channel_aac_is_decoded_as_a_request_decodes_it(tiny_model, tmp_path):
    """7.1 AAC: planar frames whose ninth, garbage plane crashed the process when read."""
    path = tmp_path / "surround.m4a"
    path.write_bytes(encode(tone(4.0, 48_000, channels=8), 48_000, "m4a_aac"))
    result = tiny_model.analyze_long(path, regions=[(0.5, 3.5)])
    whole = tiny_model.analyze_long(decode_audio(path), regions=[(0.5, 3.5)])
    assert result.duration_s == pytest.approx(4.0, abs=0.1)
    assert result.to_dict() == whole.to_dict()


def test_the_first_pass_of_a_long_call_holds_a_few_blocks_not_the_file(tmp_path):
    """10 minutes at 8 kHz, 38.4 MB at 16 kHz float32: decoded to the scratch file and scored for speech in blocks."""
    path = tmp_path / "call.wav"
    path.write_bytes(wav_bytes(np.tile(tone(1.0, 8_000), 600), 8_000))
    seen = []
    tracemalloc.start()
    try:
        (audio,), (speech_probs,) = first_pass(path, tmp_path, None, LongformConfig(), detect_speech=True,
                                               progress=seen.append, min_samples=400)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12e6
    assert isinstance(audio, np.memmap) and len(audio) == 600 * SAMPLE_RATE
    assert len(speech_probs) == 600 * SAMPLE_RATE // 512
    assert len(seen) > 5 and seen == sorted(seen) and seen[-1] == DECODE_SHARE
    np.testing.assert_array_equal(audio, decode_audio(path))


def test_progress_rises_to_one(tiny_model, tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, noise(SAMPLE_RATE * 20, seed=9), SAMPLE_RATE)
    seen = []
    tiny_model.analyze_long(path, granularity="frame", progress=seen.append, regions=[(0, 5), (6, 9), (12, 19)],
                            options=LongformConfig(window_s=5, window_overlap_s=1, batch_size=1))
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert 0 < seen[0] <= 0.1 and len(seen) > 5


def test_a_progress_callback_can_abort(tiny_model):
    def stop(fraction):
        if fraction > 0.1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny_model.analyze_long(noise(SAMPLE_RATE * 20), granularity="frame", regions=[], progress=stop,
                                options=LongformConfig(window_s=5, window_overlap_s=1, batch_size=1))


def test_embeddings_per_segment_or_per_frame_and_into_a_file(tiny_model, tmp_path):
    wav = noise(SAMPLE_RATE * 12, seed=6)
    utterance = tiny_model.analyze_long(wav, return_embedding=True, regions=[(0, 4), (5, 11)])
    assert utterance.embedding.shape == (2, tiny_model.config.embed_dim)
    path = tmp_path / "frames.npy"
    frames = analyze_long(wav, tiny_model.predict, labels=tiny_model.labels, model_name="tiny", granularity="frame",
                          return_embedding=True, regions=[], embedding_path=path,
                          options=LongformConfig(window_s=5, window_overlap_s=1))
    assert np.load(path).shape == (frame_count(len(wav)), tiny_model.config.embed_dim)
    np.testing.assert_array_equal(np.load(path), frames.embedding)
    assert tiny_model.analyze_long(wav, regions=[(0, 4)]).embedding is None


def test_the_result_json_matches_the_api_contract(tiny_model):
    body = tiny_model.analyze_long(noise(SAMPLE_RATE * 6), granularity="frame", regions=[(1, 3)]).to_dict()
    json.dumps(body)
    assert set(body) == {"segments", "overall", "scores", "timestamps", "labels", "duration_s", "model", "granularity"}
    assert set(body["segments"][0]) == {"start", "end", "emotion", "confidence", "scores"}
    assert len(body["scores"]) == len(body["timestamps"]) and len(body["scores"][0]) == len(body["labels"])
    utterance = tiny_model.analyze_long(noise(SAMPLE_RATE * 6), regions=[(1, 3)]).to_dict()
    assert "scores" not in utterance and "timestamps" not in utterance


@pytest.mark.parametrize(("audio", "code"), [
    (b"", "empty_audio"),
    (np.zeros(300, np.float32), "too_short"),
    (np.array([0.0, np.nan] * 400, np.float32), "corrupt_audio"),
    (b"not audio at all" * 50, "unsupported_format"),
    (Path("/no/such/recording.wav"), "not_found"),
])
def test_bad_audio_is_a_typed_error(tiny_model, audio, code):
    with pytest.raises(AudioError) as info:
        tiny_model.analyze_long(audio)
    assert info.value.code == code


def test_files_over_the_duration_limit_are_refused_while_decoding(tiny_model, tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, noise(SAMPLE_RATE * 20), SAMPLE_RATE)
    with pytest.raises(AudioError) as info:
        tiny_model.analyze_long(path, options=LongformConfig(max_duration_s=10))
    assert info.value.code == "audio_too_long"
    assert info.value.details == {"max_duration_s": 10} and "10 s for long files" in info.value.message


def test_bad_options_and_regions_are_refused(tiny_model):
    with pytest.raises(ValidationError, match="half the window"):
        LongformConfig(window_s=10, window_overlap_s=6)
    with pytest.raises(InvalidParameterError):
        tiny_model.analyze_long(noise(SAMPLE_RATE * 2), regions=[(1.5, 1.0)])
    with pytest.raises(InvalidParameterError):
        tiny_model.analyze_long(noise(SAMPLE_RATE * 2), granularity="word")


# ---- channels="split": a timeline per channel, and the call ----

@pytest.fixture(scope="module")
def stereo_call() -> tuple[bytes, list[bytes], list[list[tuple[float, float]]]]:
    """A two-speaker stereo WAV at 22.05 kHz, each of its channels alone as a mono WAV, and the phrase positions."""
    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    from .samples import two_speaker_call

    call, regions = two_speaker_call(22_050)
    return wav_bytes(call, 22_050), [wav_bytes(call[:, k], 22_050) for k in range(2)], regions


def assert_same_timeline(got, want):
    assert [(s.start, s.end, s.emotion) for s in got.segments] == [(s.start, s.end, s.emotion) for s in want.segments]
    for mine, theirs in zip(got.segments, want.segments, strict=True):
        np.testing.assert_allclose(list(mine.scores.values()), list(theirs.scores.values()), rtol=0, atol=1e-5)
    np.testing.assert_allclose(list(got.overall.scores.values()), list(want.overall.scores.values()), rtol=0,
                               atol=1e-5)
    assert got.overall.speech_s == want.overall.speech_s and got.duration_s == want.duration_s
    if want.frame_scores is not None:
        np.testing.assert_allclose(got.frame_scores, want.frame_scores, rtol=0, atol=1e-5)
    if want.embedding is not None:
        np.testing.assert_allclose(got.embedding, want.embedding, rtol=0, atol=1e-5)


@pytest.mark.parametrize("granularity", ["utterance", "frame"])
def test_split_long_gives_each_channel_what_it_gives_alone_as_a_mono_file(tiny_model, stereo_call, granularity):
    stereo, alone, regions = stereo_call
    options = LongformConfig(window_s=4.0, window_overlap_s=1.0, batch_size=3)  # windows and batches mix channels
    split = tiny_model.analyze_long(stereo, granularity=granularity, return_embedding=True, options=options,
                                    channels="split", channel_names="agent,customer")
    assert [(c.channel, c.name) for c in split.channels] == [(0, "agent"), (1, "customer")]
    for entry, mono, phrases in zip(split.channels, alone, regions, strict=True):
        want = tiny_model.analyze_long(mono, granularity=granularity, return_embedding=True, options=options)
        assert_same_timeline(entry.result, want)
        assert len(entry.result.segments) == len(phrases)  # its own voice activity: the other channel is not there
        for segment, (start, end) in zip(entry.result.segments, phrases, strict=True):
            assert segment.start == pytest.approx(start, abs=0.25) and segment.end == pytest.approx(end, abs=0.25)
    assert split.duration_s == split.channels[0].result.duration_s
    assert [(t.speaker, t.start) for t in split.turns] == [(c.name, s.start) for c, s in sorted(
        ((c, s) for c in split.channels for s in c.result.segments), key=lambda cs: cs[1].start)]
    (overlap,) = split.overlaps  # the customer's second phrase starts before the agent's second one ends
    assert overlap.speakers == ("agent", "customer")
    assert overlap.start == split.channels[1].result.segments[1].start
    assert overlap.end == split.channels[0].result.segments[1].end
    body = split.to_dict()
    assert set(body) == {"channels", "turns", "overlaps", "summary", "labels", "duration_s", "model", "granularity"}
    assert body["channels"][1]["name"] == "customer" and body["summary"]["speakers"][0]["speaker"] == "agent"


def test_split_long_refuses_mono_files(tiny_model):
    with pytest.raises(InvalidParameterError, match="one channel"):
        tiny_model.analyze_long(wav_bytes(noise(SAMPLE_RATE * 2)), channels="split")


@pytest.mark.parametrize("granularity", ["utterance", "frame"])
def test_split_long_writes_each_channels_embedding_to_its_own_file(tiny_model, tmp_path, granularity):
    samples = np.stack([noise(SAMPLE_RATE * 4, seed=s) for s in range(2)], axis=1)
    split = analyze_long(wav_bytes(samples), tiny_model.predict, labels=tiny_model.labels, model_name="m",
                         channels="split", granularity=granularity, return_embedding=True, regions=[(0.5, 3)],
                         embedding_path=tmp_path / "e.npy")
    assert not (tmp_path / "e.npy").exists()
    for k in (0, 1):
        alone = tiny_model.analyze_long(wav_bytes(samples[:, k]), granularity=granularity, return_embedding=True,
                                        regions=[(0.5, 3)]).embedding
        written = np.load(tmp_path / f"e.ch{k}.npy")
        np.testing.assert_allclose(written, alone, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(split.channels[k].result.embedding, written)
