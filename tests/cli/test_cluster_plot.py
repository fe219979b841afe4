"""`emoserve cluster` recovers known clusters; `emoserve plot` draws frame and long-audio timelines."""

from __future__ import annotations

import csv
import json

import numpy as np
from PIL import Image
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

from emoserve.cli import app
from emoserve.cli.cluster import choose_k, normalise

from ..samples import long_recording, sweep

runner = CliRunner()


def synthetic_embeddings(directory, sizes=(8, 12, 10), dim=64, seed=0):
    """Clusters of embeddings around random directions, some as (T, D) frame embeddings; their true labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), dim)) * 3
    truth = {}
    for c, size in enumerate(sizes):
        for i in range(size):
            name = f"c{c}_{i}.wav.npy"
            if i % 3 == 0:
                frames = centres[c] + rng.standard_normal((20, dim)) * 0.5
                np.save(directory / name, frames.astype(np.float32))
            else:
                np.save(directory / name, (centres[c] + rng.standard_normal(dim) * 0.5).astype(np.float32))
            truth[name] = c
    return truth


def read_labels(path):
    return {row["file"]: int(row["cluster"]) for row in csv.DictReader(path.open())}


def test_cluster_auto_finds_the_three_clusters(tmp_path):
    truth = synthetic_embeddings(tmp_path)
    result = runner.invoke(app, ["cluster", str(tmp_path), "--k", "auto", "--max-k", "6"])
    assert result.exit_code == 0, result.output
    labels = read_labels(tmp_path / "clusters.csv")
    assert labels.keys() == truth.keys()
    assert adjusted_rand_score([truth[n] for n in truth], [labels[n] for n in truth]) == 1.0
    assert "k = 3" in result.stderr
    with Image.open(tmp_path / "clusters.png") as png:
        assert png.size[0] > 400 and png.size[1] > 400


def test_choose_k_prefers_the_true_number_of_clusters():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((4, 32)) * 4
    matrix = normalise(np.vstack([c + rng.standard_normal((15, 32)) for c in centres]))
    k, scores = choose_k(matrix, max_k=8, seed=0)
    assert k == 4 and set(scores) == set(range(2, 9))


def test_cluster_a_results_file_with_a_fixed_k(tmp_path):
    (tmp_path / "emb").mkdir()
    truth = synthetic_embeddings(tmp_path / "emb", sizes=(5, 5))
    rows = [{"file": name[:-4], "emotion": ("happy", "sad")[c], "embedding": str(tmp_path / "emb" / name)}
            for name, c in truth.items()]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = runner.invoke(app, ["cluster", str(results), "--k", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    labels = read_labels(out / "clusters.csv")
    assert adjusted_rand_score([truth[n + ".npy"] for n in labels], list(labels.values())) == 1.0
    assert "happy 5" in result.stderr and "sad 5" in result.stderr


def test_cluster_refuses_what_it_cannot_use(tmp_path):
    empty = runner.invoke(app, ["cluster", str(tmp_path)])
    assert empty.exit_code == 1 and "no embeddings" in empty.stderr
    synthetic_embeddings(tmp_path, sizes=(2,))
    assert "--k must be" in runner.invoke(app, ["cluster", str(tmp_path), "--k", "5"]).stderr


def test_plot_a_frame_result(tmp_path, tiny_model):
    result = {"file": "clip.wav", **tiny_model.analyze(sweep(2.0), granularity="frame").to_dict()}
    (tmp_path / "r.json").write_text(json.dumps(result))
    done = runner.invoke(app, ["plot", str(tmp_path / "r.json"), "-o", str(tmp_path / "t.png")])
    assert done.exit_code == 0, done.output
    with Image.open(tmp_path / "t.png") as png:
        pixels = np.asarray(png.convert("RGB"))
    happy = np.array([0xED, 0xC9, 0x48])
    assert (np.abs(pixels.astype(int) - happy).sum(axis=2) < 10).sum() > 500  # the happy band is drawn


def test_plot_a_long_result_from_a_list_and_refuse_an_utterance(tmp_path, tiny_model):
    long = {"file": "call.wav", **tiny_model.analyze_long(long_recording(10.0), granularity="frame").to_dict()}
    clip = {"file": "clip.wav", **tiny_model.analyze(sweep(1.0)).to_dict()}
    (tmp_path / "rows.json").write_text(json.dumps([clip, long]))
    done = runner.invoke(app, ["plot", str(tmp_path / "rows.json"), "--file", "call.wav", "-o",
                               str(tmp_path / "long.png")])
    assert done.exit_code == 0, done.output
    with Image.open(tmp_path / "long.png") as png:
        assert png.size[1] > 600  # two lanes: frames and segments
    refused = runner.invoke(app, ["plot", str(tmp_path / "rows.json"), "--file", "clip.wav"])
    assert refused.exit_code == 1 and "granularity frame" in refused.stderr


def test_a_missing_input_is_a_usage_error(tmp_path):
    for command in ("plot", "cluster"):
        done = runner.invoke(app, [command, str(tmp_path / "missing.json")])
        assert done.exit_code == 2 and "does not exist" in done.output


def test_plot_a_split_long_result_draws_a_lane_per_channel(tmp_path, tiny_model):
    from emoserve.cli.plot import lanes_of, load_result

    stereo = np.stack([long_recording(8.0, seed=1), long_recording(8.0, seed=2)], axis=1)
    split = tiny_model.analyze_long(stereo, granularity="frame", channels="split", channel_names="agent,customer")
    (tmp_path / "call.json").write_text(json.dumps({"file": "call.wav", **split.to_dict()}))
    assert [(kind, label) for kind, label, _ in lanes_of(load_result(tmp_path / "call.json", None))] == [
        ("frames", "agent score"), ("segments", "agent segments"),
        ("frames", "customer score"), ("segments", "customer segments")]
    done = runner.invoke(app, ["plot", str(tmp_path / "call.json"), "-o", str(tmp_path / "call.png")])
    assert done.exit_code == 0, done.output
    mono = {"file": "left.wav", **split.channels[0].result.to_dict()}
    (tmp_path / "left.json").write_text(json.dumps(mono))
    assert runner.invoke(app, ["plot", str(tmp_path / "left.json"), "-o", str(tmp_path / "left.png")]).exit_code == 0
    with Image.open(tmp_path / "call.png") as both, Image.open(tmp_path / "left.png") as one:
        assert both.size[1] > 1.7 * one.size[1]


def test_plot_joins_the_channel_rows_of_analyze_split(tmp_path):
    from emoserve.cli.plot import lanes_of, load_result

    segments = [{"start": 0.5, "end": 1.5, "emotion": "angry", "confidence": 0.9, "scores": {}}]
    rows = [{"file": "call.wav", "channel": k, "channel_name": name, "duration_s": 2.0, "segments": segments,
             "overall": {"emotion": "angry"}} for k, name in enumerate(("agent", "customer"))]
    rows.append({"file": "other.wav", "duration_s": 1.0, "segments": segments})
    (tmp_path / "rows.jsonl").write_text("\n".join(map(json.dumps, rows)))
    result = load_result(tmp_path / "rows.jsonl", "call.wav")
    assert [label for _, label, _ in lanes_of(result)] == ["agent segments", "customer segments"]
    done = runner.invoke(app, ["plot", str(tmp_path / "rows.jsonl"), "--file", "call.wav", "-o",
                               str(tmp_path / "rows.png")])
    assert done.exit_code == 0, done.output
