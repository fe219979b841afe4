"""The UI's analysis: the running engine's answers (clips, long files), its refusals, and the downloads."""

from __future__ import annotations

import asyncio
import csv
import json

import numpy as np
import pytest

from emoserve.config import Settings
from emoserve.errors import AudioError
from emoserve.inference.engine import Engine
from emoserve.timeline.longform import analyze_long
from emoserve.ui.analysis import DownloadDir, analyze_clip, analyze_file, export_files, safe_stem

from ..samples import conversation, espeak_available, noise, wav_bytes

SETTINGS = Settings.from_flat(model="random:tiny", max_duration_s=5.0, ui_max_long_s=60.0)


def run_with_engine(model, work):
    """`work(engine)` on a started engine, on one event loop, as the server runs it."""
    async def main():
        async with Engine(model, warmup=False) as engine:
            return await work(engine)
    return asyncio.run(main())


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "clip.wav"
    path.write_bytes(wav_bytes(noise(32000, seed=3)))
    return path


def test_a_clip_gets_the_answer_the_model_gives(tiny_model, clip):
    analysis = run_with_engine(tiny_model, lambda e: analyze_clip(e, clip, "utterance", SETTINGS))
    direct = tiny_model.analyze(clip)
    assert analysis.emotion == direct.emotion and analysis.confidence == pytest.approx(direct.confidence, abs=1e-6)
    assert list(analysis.scores) == list(tiny_model.labels)
    assert analysis.frame_scores is None and analysis.segments == [] and not analysis.is_long
    assert len(analysis.waveform) == 32000
    assert analysis.result.embedding.shape == (tiny_model.config.embed_dim,)


def test_frame_mode_gives_a_row_of_scores_every_20_ms(tiny_model, clip):
    analysis = run_with_engine(tiny_model, lambda e: analyze_clip(e, clip, "frame", SETTINGS))
    assert analysis.frame_scores.shape == (99, 9)  # floor((32000 - 400) / 320) + 1
    assert np.allclose(analysis.frame_scores.sum(axis=1), 1.0, atol=1e-5)
    assert analysis.timestamps[:3].tolist() == [0.0, 0.02, 0.04]


@pytest.mark.parametrize(("payload", "code"), [
    (b"RIFF definitely not audio" * 4, "unsupported_format"),
    (wav_bytes(noise(6 * 16000)), "audio_too_long"),  # over max_duration_s = 5
    (wav_bytes(noise(200)), "too_short"),
])
def test_clips_are_refused_with_the_apis_codes(tiny_model, tmp_path, payload, code):
    path = tmp_path / "bad.wav"
    path.write_bytes(payload)
    with pytest.raises(AudioError) as refused:
        run_with_engine(tiny_model, lambda e: analyze_clip(e, path, "utterance", SETTINGS))
    assert refused.value.code == code


def test_a_long_file_through_the_engine_equals_longform_on_the_model(tiny_model):
    samples = np.concatenate([noise(3 * 16000, seed=1, amplitude=0.3), np.zeros(16000, np.float32),
                              noise(4 * 16000, seed=2, amplitude=0.3)])
    regions = [(0.0, 3.0), (4.0, 8.0)]  # VAD replaced by known segments: this test is about the engine adapter
    progress = []

    async def with_regions(engine):
        return await asyncio.to_thread(analyze_long, samples, engine.submit_blocking, labels=tiny_model.labels,
                                       model_name=tiny_model.name, granularity="frame", return_embedding=True,
                                       regions=regions, progress=progress.append)

    through_engine = run_with_engine(tiny_model, with_regions)
    direct = analyze_long(samples, tiny_model.predict, labels=tiny_model.labels, model_name=tiny_model.name,
                          granularity="frame", return_embedding=True, regions=regions)
    assert [(s.start, s.end, s.emotion) for s in through_engine.segments] == \
        [(s.start, s.end, s.emotion) for s in direct.segments]
    for ours, theirs in zip(through_engine.segments, direct.segments):
        assert ours.scores == pytest.approx(theirs.scores, abs=1e-5)
    assert np.allclose(through_engine.frame_scores, direct.frame_scores, atol=1e-5)
    assert np.allclose(through_engine.embedding, direct.embedding, atol=1e-4)
    assert progress[-1] == 1.0


@pytest.mark.skipif(not espeak_available(), reason="needs espeak-ng for speech that voice-activity detection finds")
def test_long_mode_finds_the_voiced_segments_of_a_file(tiny_model, tmp_path):
    samples, regions = conversation([0.5, 1.5, 1.0])
    path = tmp_path / "talk.wav"
    path.write_bytes(wav_bytes(samples))
    analysis = run_with_engine(tiny_model, lambda e: analyze_file(e, path, "utterance", SETTINGS))
    assert analysis.is_long and len(analysis.segments) == len(regions)
    for segment, (start, end) in zip(analysis.segments, regions):
        assert abs(segment.start - start) < 0.3 and abs(segment.end - end) < 0.3
    assert analysis.emotion == analysis.result.overall.emotion


def test_long_mode_has_its_own_duration_limit(tiny_model, tmp_path):
    path = tmp_path / "long.wav"
    path.write_bytes(wav_bytes(noise(8 * 16000)))
    settings = Settings.from_flat(model="random:tiny", ui_max_long_s=6.0)
    with pytest.raises(AudioError) as refused:
        run_with_engine(tiny_model, lambda e: analyze_file(e, path, "utterance", settings))
    assert refused.value.code == "audio_too_long"


def test_downloads_hold_the_result_the_scores_and_the_embedding(tiny_model, clip, tmp_path):
    analysis = run_with_engine(tiny_model, lambda e: analyze_clip(e, clip, "frame", SETTINGS))
    files = {p.name: p for p in export_files(analysis, tmp_path / "out")}
    assert set(files) == {"clip.json", "clip.frames.csv", "clip.embedding.npy"}
    body = json.loads(files["clip.json"].read_text())
    assert body["granularity"] == "frame" and len(body["scores"]) == 99
    rows = list(csv.reader(files["clip.frames.csv"].open()))
    assert rows[0] == ["time_s", *tiny_model.labels] and len(rows) == 100 and rows[2][0] == "0.02"
    assert np.load(files["clip.embedding.npy"]).shape == (99, tiny_model.config.embed_dim)


def test_an_utterance_download_has_one_row_per_label(tiny_model, clip, tmp_path):
    analysis = run_with_engine(tiny_model, lambda e: analyze_clip(e, clip, "utterance", SETTINGS))
    files = {p.name: p for p in export_files(analysis, tmp_path / "out")}
    rows = list(csv.reader(files["clip.scores.csv"].open()))
    assert rows[0] == ["emotion", "score"] and [r[0] for r in rows[1:]] == list(tiny_model.labels)
    assert sum(float(r[1]) for r in rows[1:]) == pytest.approx(1.0, abs=1e-5)


def test_download_names_are_safe_whatever_the_upload_was_called():
    assert safe_stem("../../etc/passwd") == "etc_passwd"
    assert safe_stem("<script>alert(1)</script>") == "script_alert_1_script"
    assert safe_stem("...") == "audio"


def test_download_folders_are_removed_once_old(tmp_path):
    downloads = DownloadDir(keep_s=0.0)
    first = downloads.new()
    (first / "x.json").write_text("{}")
    second = downloads.new()
    assert not first.exists() and second.exists()


@pytest.mark.parametrize("long_file", [False, True])
def test_split_gives_a_lane_per_channel_equal_to_the_library(tiny_model, tmp_path, long_file):
    from emoserve.audio import decode_channels
    from emoserve.ui.analysis import analyze_channels, export_call_files

    stereo = np.stack([noise(3 * 16000, seed=1, amplitude=0.3), noise(3 * 16000, seed=2, amplitude=0.05)], axis=1)
    path = tmp_path / "call.wav"
    path.write_bytes(wav_bytes(stereo))
    call = run_with_engine(tiny_model, lambda e: analyze_channels(e, path, "frame", SETTINGS, long_file))
    assert [name for name, _ in call.channels] == ["left", "right"] and call.is_long == long_file
    if long_file:
        want = tiny_model.analyze_long(path, granularity="frame", channels="split")
        for (_, analysis), entry in zip(call.channels, want.channels, strict=True):
            np.testing.assert_allclose(analysis.frame_scores, entry.result.frame_scores, rtol=0, atol=1e-5)
    else:
        want = tiny_model.analyze(path, granularity="frame", channels="split")
        for (_, analysis), entry in zip(call.channels, want.channels, strict=True):
            np.testing.assert_allclose(analysis.frame_scores, entry.result.scores, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(call.channels[1][1].waveform, decode_channels(path)[1])
    names = sorted(p.name for p in export_call_files(call, tmp_path / "out"))
    assert "call.json" in names and "call.left.frames.csv" in names and "call.right.embedding.npy" in names
    assert set(json.loads((tmp_path / "out" / "call.json").read_text())["channels"][0]) >= {"channel", "name"}


def test_split_of_a_mono_file_is_refused_in_words(tiny_model, clip):
    from emoserve.errors import InvalidParameterError
    from emoserve.ui.analysis import analyze_channels

    with pytest.raises(InvalidParameterError, match="one channel"):
        run_with_engine(tiny_model, lambda e: analyze_channels(e, clip, "utterance", SETTINGS, False))
