"""`emoserve analyze`: folders, every output format, failures that do not stop the run, resume, server mode."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from emoserve.api.app import create_app
from emoserve.cli import app
from emoserve.config import Settings

from ..api.test_uploads import close_to
from ..integrations.live import serve_in_thread
from ..samples import audio_file, espeak_available, long_recording, noise, sweep, two_speaker_call, wav_bytes

runner = CliRunner()


@pytest.fixture
def folder(tmp_path) -> Path:
    """a/one.wav, a/two.flac, a/sub/three.mp3, a broken a/bad.wav, and a/notes.txt that is not audio."""
    root = tmp_path / "a"
    (root / "sub").mkdir(parents=True)
    (root / "one.wav").write_bytes(wav_bytes(sweep(1.0)))
    (root / "two.flac").write_bytes(audio_file("flac", noise(24000, seed=2), 16000))
    (root / "sub" / "three.mp3").write_bytes(audio_file("mp3", sweep(1.5, rate=44100), 44100))
    (root / "bad.wav").write_bytes(b"RIFF" + b"garbage" * 20)
    (root / "notes.txt").write_text("not audio")
    return root


def invoke(*args: str):
    return runner.invoke(app, ["analyze", *args])


def test_folder_recursive_to_jsonl_with_embeddings_and_a_failure_list(folder, tmp_path, tiny_model):
    out, embeddings = tmp_path / "out.jsonl", tmp_path / "emb"
    result = invoke(str(folder), "-r", "--model", "random:tiny", "-o", str(out), "--embeddings-dir", str(embeddings))
    assert result.exit_code == 1, result.output  # one file failed; the others are all there
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(r["file"]).name for r in rows) == ["one.wav", "three.mp3", "two.flac"]
    assert "bad.wav" in result.stderr and "unsupported_format" in result.stderr and "summary" in result.stderr
    one = next(r for r in rows if r["file"].endswith("one.wav"))
    want = tiny_model.analyze(folder / "one.wav", return_embedding=True)
    assert one["emotion"] == want.emotion and one["scores"] == pytest.approx(want.utterance_scores, abs=1e-5)
    np.testing.assert_allclose(np.load(one["embedding"]), want.embedding, atol=1e-5)
    assert Path(one["embedding"]).is_relative_to(embeddings)
    flat = invoke(str(folder), "--model", "random:tiny", "--format", "csv")  # not recursive: no three.mp3
    assert {r["file"] for r in csv.DictReader(io.StringIO(flat.stdout))} == {str(folder / "one.wav"),
                                                                             str(folder / "two.flac")}


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")
def test_a_local_model_runs_on_the_backend_asked_for(folder, tmp_path, tiny_model):
    out = tmp_path / "out.json"
    result = invoke(str(folder / "one.wav"), "--model", "random:tiny", "--backend", "onnxruntime", "-o", str(out))
    assert result.exit_code == 0, result.output
    [row] = json.loads(out.read_text())
    want = tiny_model.analyze(folder / "one.wav")
    assert row["emotion"] == want.emotion and row["scores"] == pytest.approx(want.utterance_scores, abs=1e-5)
    assert list((Path(os.environ["EMOSERVE_CACHE"]) / "graphs").glob("*-fp32/model.onnx"))


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet", "table"])
def test_output_formats(fmt, folder, tmp_path):
    out = tmp_path / f"out.{ 'txt' if fmt == 'table' else fmt}"
    result = invoke(str(folder / "one.wav"), str(folder / "two.flac"), "--model", "random:tiny", "--granularity",
                    "frame", "--format", fmt, "-o", str(out))
    assert result.exit_code == 0, result.output
    if fmt == "json":
        rows = json.loads(out.read_text())
        assert len(rows) == 2 and len(rows[0]["scores"]) == len(rows[0]["timestamps"]) > 40  # frames kept
    elif fmt == "csv":
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == 2 and float(rows[0]["score_happy"]) > 0 and rows[0]["granularity"] == "frame"
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
        assert len(rows) == 2 and rows[0]["kind"] == "clip" and 0 < rows[0]["confidence"] <= 1
    else:
        text = out.read_text()
        assert "one.wav" in text and "two.flac" in text and "confidence" in text


def test_resume_skips_what_the_output_has_and_drops_a_half_written_line(folder, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"file": str(folder / "one.wav"), "emotion": "sentinel"}) + "\n"
                   + '{"file": "' + str(folder / "two.fl"))  # a run killed in the middle of a line
    result = invoke(str(folder), "-r", "--model", "random:tiny", "-o", str(out), "--resume")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["emotion"] for r in rows if r["file"].endswith("one.wav")] == ["sentinel"]
    assert sorted(Path(r["file"]).name for r in rows) == ["one.wav", "three.mp3", "two.flac"]
    assert "skipped" in result.stderr
    again = invoke(str(folder), "-r", "--model", "random:tiny", "-o", str(out), "--resume")
    assert len(out.read_text().splitlines()) == 3
    assert "1/1" in again.stderr  # only the failed file is tried again


def test_long_files_take_the_long_audio_path(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOSERVE_MAX_DURATION_S", "3")
    long = tmp_path / "long.wav"
    long.write_bytes(wav_bytes(long_recording(8.0, seed=1)))
    result = invoke(str(long), "--model", "random:tiny", "--format", "json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["duration_s"] == pytest.approx(8.0) and "segments" in row and row["overall"]["speech_s"] > 0


def test_usage_errors(folder, tmp_path):
    both = invoke(str(folder), "--model", "random:tiny", "--server", "http://127.0.0.1:9")
    assert both.exit_code == 1 and "not both" in both.stderr
    assert invoke(str(folder), "--resume").exit_code == 1
    missing = invoke(str(tmp_path / "nope.wav"), "--model", "random:tiny")
    assert missing.exit_code == 1 and "not_found" in missing.stderr


def test_against_a_server_with_preconvert(folder, tmp_path, tiny_model):
    settings = Settings.from_flat(model="random:tiny", log_dir=tmp_path / "logs", data_dir=tmp_path / "data",
                                  max_duration_s=3)
    long = folder / "long.wav"
    long.write_bytes(wav_bytes(long_recording(6.0, seed=2)))
    with serve_in_thread(create_app(settings, model=tiny_model)) as base:
        result = invoke(str(folder), "--server", base, "--preconvert", "--format", "jsonl", "-j", "3")
    rows = {Path(r["file"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(rows) == {"one.wav", "two.flac", "long.wav"} and result.exit_code == 1  # bad.wav failed
    assert rows["long.wav"]["segments"] is not None and rows["one.wav"]["model"] == "random:tiny"


def test_a_real_subprocess(folder, tmp_path):
    out = tmp_path / "out.csv"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    done = subprocess.run([sys.executable, "-m", "emoserve", "analyze", str(folder / "one.wav"), "--model",
                           "random:tiny", "-o", str(out)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    (row,) = csv.DictReader(out.open())
    assert row["model"] == "random:tiny" and "summary" in done.stderr and "Traceback" not in done.stderr


# ---- --channels split: a row per channel ----

@pytest.fixture
def call(tmp_path) -> tuple[Path, list[Path]]:
    """call.wav (stereo, 44.1 kHz: a sweep left, noise right) and each of its channels alone as a mono file."""
    left, right = sweep(1.2, rate=44100), noise(int(1.2 * 44100), seed=7, amplitude=0.3)
    stereo = tmp_path / "call.wav"
    stereo.write_bytes(wav_bytes(np.stack([left, right], axis=1), 44100))
    alone = [tmp_path / "left.wav", tmp_path / "right.wav"]
    for path, channel in zip(alone, (left, right), strict=True):
        path.write_bytes(wav_bytes(channel, 44100))
    return stereo, alone


def test_split_rows_are_each_channel_alone_as_a_mono_file(call, tmp_path):
    stereo, alone = call
    out, embeddings = tmp_path / "split.jsonl", tmp_path / "emb"
    result = invoke(str(stereo), "--model", "random:tiny", "--channels", "split", "--channel-names", "agent,customer",
                    "-o", str(out), "--embeddings-dir", str(embeddings))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["channel"], r["channel_name"]) for r in rows] == [(0, "agent"), (1, "customer")]
    mono = invoke(*map(str, alone), "--model", "random:tiny", "--format", "json", "--embeddings-dir",
                  str(tmp_path / "mono"))
    by_file = {Path(r["file"]).name: r for r in json.loads(mono.stdout)}
    for row, path in zip(rows, alone, strict=True):
        want = by_file[path.name]
        assert row["file"] == str(stereo) and row["emotion"] == want["emotion"]
        assert row["scores"] == pytest.approx(want["scores"], abs=1e-5)
        assert row["duration_s"] == want["duration_s"]
        np.testing.assert_allclose(np.load(row["embedding"]), np.load(want["embedding"]), rtol=0, atol=1e-5)
    assert Path(rows[1]["embedding"]).name == "call.wav.ch1.npy"


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet", "table"])
def test_split_output_formats_have_channel_columns(fmt, call, tmp_path):
    out = tmp_path / f"out.{'txt' if fmt == 'table' else fmt}"
    result = invoke(str(call[0]), "--model", "random:tiny", "--channels", "split", "--format", fmt, "-o", str(out))
    assert result.exit_code == 0, result.output
    if fmt == "json":
        rows = json.loads(out.read_text())
    elif fmt == "csv":
        rows = [{**r, "channel": int(r["channel"])} for r in csv.DictReader(out.open())]
        assert list(rows[0])[:3] == ["file", "channel", "channel_name"]
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    else:
        text = out.read_text()
        assert "channel_name" in text and "left" in text and "right" in text
        return
    assert [(r["channel"], r["channel_name"]) for r in rows] == [(0, "left"), (1, "right")]
    assert rows[0]["emotion"] and rows[0]["file"] == rows[1]["file"] == str(call[0])


def test_split_of_a_mono_file_fails_that_file_only(call, folder):
    result = invoke(str(call[0]), str(folder / "one.wav"), "--model", "random:tiny", "--channels", "split",
                    "--format", "jsonl")
    assert result.exit_code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["channel"] for r in rows] == [0, 1]
    assert "one.wav: invalid_parameter: channels=split needs a file with two or more channels" in result.stderr


def test_split_usage_errors(call):
    names_without_split = invoke(str(call[0]), "--model", "random:tiny", "--channel-names", "a,b")
    assert names_without_split.exit_code == 1 and "--channels split" in names_without_split.stderr
    with_ray = invoke(str(call[0]), "--ray", "local", "--channels", "split")
    assert with_ray.exit_code == 1 and "without --ray" in with_ray.stderr
    unknown = invoke(str(call[0]), "--channels", "both")
    assert unknown.exit_code == 2 and "mix" in unknown.stderr and "split" in unknown.stderr


def test_split_against_a_server(call, tmp_path, tiny_model):
    settings = Settings.from_flat(model="random:tiny", log_dir=tmp_path / "logs", data_dir=tmp_path / "data")
    with serve_in_thread(create_app(settings, model=tiny_model)) as base:
        remote = invoke(str(call[0]), "--server", base, "--channels", "split", "--format", "json")
    local = invoke(str(call[0]), "--model", "random:tiny", "--channels", "split", "--format", "json")
    assert remote.exit_code == local.exit_code == 0, remote.output
    for mine, theirs in zip(json.loads(remote.stdout), json.loads(local.stdout), strict=True):
        assert (mine["channel"], mine["channel_name"], mine["emotion"]) == (theirs["channel"], theirs["channel_name"],
                                                                           theirs["emotion"])
        assert mine["scores"] == pytest.approx(theirs["scores"], abs=1e-5)


@pytest.mark.parametrize("where", ["local", "server"])
def test_split_long_files_give_each_channels_long_rows(where, tmp_path, monkeypatch, tiny_model):
    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    monkeypatch.setenv("EMOSERVE_MAX_DURATION_S", "3")
    call, _ = two_speaker_call(22_050)
    stereo = tmp_path / "call.wav"
    stereo.write_bytes(wav_bytes(call, 22_050))
    alone = [tmp_path / "left.wav", tmp_path / "right.wav"]
    for k, path in enumerate(alone):
        path.write_bytes(wav_bytes(call[:, k], 22_050))
    settings = Settings.from_flat(model="random:tiny", log_dir=tmp_path / "logs", data_dir=tmp_path / "data",
                                  max_duration_s=3)
    with serve_in_thread(create_app(settings, model=tiny_model)) as base:
        target = ("--server", base) if where == "server" else ("--model", "random:tiny")
        result = invoke(str(stereo), *target, "--channels", "split", "--format", "json", "--embeddings-dir",
                        str(tmp_path / "split"))
        mono = invoke(*map(str, alone), *target, "--format", "json", "--embeddings-dir", str(tmp_path / "mono"))
    assert result.exit_code == mono.exit_code == 0, result.output
    rows, want = json.loads(result.stdout), {Path(r["file"]).name: r for r in json.loads(mono.stdout)}
    assert [(r["channel"], r["channel_name"]) for r in rows] == [(0, "left"), (1, "right")]
    for row, path in zip(rows, alone, strict=True):
        theirs = want[path.name]
        assert row["overall"] == close_to(theirs["overall"]) and row["segments"] == close_to(theirs["segments"])
        assert row["emotion"] == theirs["emotion"] and row["duration_s"] == theirs["duration_s"]
        assert Path(row["embedding"]).name == f"call.wav.ch{row['channel']}.npy"
        np.testing.assert_allclose(np.load(row["embedding"]), np.load(theirs["embedding"]), rtol=0, atol=1e-5)
