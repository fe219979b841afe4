"""`emoserve analyze --ray auto` on a two-node Ray cluster: the local command's rows, failures and --resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from emoserve.cli import app

from ..samples import audio_file, long_recording, noise, sweep, wav_bytes

pytestmark = pytest.mark.ray
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["analyze", *args])


def jsonl_rows(path: Path) -> dict[str, dict]:
    return {row["file"]: row for row in map(json.loads, path.read_text().splitlines())}


def assert_close(got, want, where: str = "row") -> None:
    """Equal structure and values, floats within 1e-5."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-5), where
    else:
        assert got == want, where


@pytest.fixture
def corpus(tmp_path) -> Path:
    """Two clips, a corrupt file and notes that are not audio."""
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "one.wav").write_bytes(wav_bytes(sweep(1.0)))
    (root / "two.flac").write_bytes(audio_file("flac", noise(24000, seed=2), 16000))
    (root / "bad.wav").write_bytes(b"RIFF" + b"garbage" * 20)
    (root / "notes.txt").write_text("not audio")
    return root


@pytest.mark.slow
def test_a_folder_with_a_corrupt_and_a_10_minute_file_gives_the_local_rows_and_the_same_failure(
        corpus, tmp_path, on_cluster, monkeypatch):
    # replicas unlike a decode task (0.5 CPU): Ray Data keeps decoding in CPU tasks of its own, as with GPU
    # replicas, and the samples cross the object store (the other tests run the fused plan)
    monkeypatch.setenv("EMOSERVE_RAY_REPLICA_CPUS", "0.5")
    (corpus / "call.wav").write_bytes(wav_bytes(long_recording(600.0, seed=3)))  # over the 30 s clip limit
    runs = {}
    for name, extra in (("local", ()), ("ray", ("--ray", "auto"))):
        out = tmp_path / f"{name}.jsonl"
        result = invoke(str(corpus), "--model", "random:tiny", "-o", str(out), "--embeddings-dir",
                        str(tmp_path / f"{name}-emb"), *extra)
        assert result.exit_code == 1, result.output  # the corrupt file failed; the others are all there
        assert f"{corpus / 'bad.wav'}: unsupported_format" in " ".join(result.stderr.split())
        runs[name] = jsonl_rows(out)
    local, ray = runs["local"], runs["ray"]
    assert sorted(Path(f).name for f in ray) == ["call.wav", "one.wav", "two.flac"]
    call = ray[str(corpus / "call.wav")]
    assert call["duration_s"] == pytest.approx(600.0) and len(call["segments"]) > 50  # the long-audio path
    for file in local:
        np.testing.assert_allclose(np.load(ray[file].pop("embedding")), np.load(local[file].pop("embedding")),
                                   atol=1e-5)
        assert_close(ray[file], local[file], file)


def test_resume_skips_the_files_already_in_the_output(corpus, tmp_path, on_cluster):
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"file": str(corpus / "one.wav"), "emotion": "sentinel"}) + "\n")
    result = invoke(str(corpus), "--model", "random:tiny", "-o", str(out), "--resume", "--ray", "auto")
    assert result.exit_code == 1 and "skipped" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["emotion"] for row in rows if row["file"].endswith("one.wav")] == ["sentinel"]  # not analysed again
    assert sorted(Path(row["file"]).name for row in rows) == ["one.wav", "two.flac"]  # bad.wav is a failure, not a row


def test_manifests_globs_and_file_urls_to_parquet_with_the_local_columns(corpus, tmp_path, on_cluster):
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"# the corpus\ncorpus/one.wav\n\n{corpus / 'bad.wav'}  # corrupt\n")
    out, local_out = tmp_path / "ray.parquet", tmp_path / "local.parquet"
    result = invoke(str(manifest), str(corpus / "*.flac"), (corpus / "one.wav").as_uri(), "--model", "random:tiny",
                    "-o", str(out), "--ray", "auto")
    assert result.exit_code == 1 and "unsupported_format" in result.stderr
    rows = {row["file"]: row for row in pq.read_table(out).to_pylist()}
    assert set(rows) == {str(corpus / "one.wav"), str(corpus / "two.flac"), (corpus / "one.wav").as_uri()}
    invoke(str(corpus / "one.wav"), str(corpus / "two.flac"), "--model", "random:tiny", "-o", str(local_out))
    local = {row["file"]: row for row in pq.read_table(local_out).to_pylist()}
    assert pq.read_table(out).schema == pq.read_table(local_out).schema
    for file, want in local.items():
        assert_close(rows[file], want, file)
    assert_close({**rows[(corpus / "one.wav").as_uri()], "file": "-"}, {**local[str(corpus / "one.wav")], "file": "-"})
