"""What `analyze --ray` reads: folders, globs, manifests and URLs listed on the driver; no Ray needed."""

from __future__ import annotations

import sys

from typer.testing import CliRunner

from emoserve.cli import app
from emoserve.scale.corpus import list_inputs

runner = CliRunner()


def make_tree(root):
    (root / "sub").mkdir(parents=True)
    for name in ("b.wav", "a.flac", "sub/c.mp3", "notes.md"):
        (root / name).write_bytes(b"x")
    return root


def test_folders_globs_and_missing_paths(tmp_path):
    root = make_tree(tmp_path / "r")
    files, failures = list_inputs([str(root), str(root / "**" / "*.mp3"), str(root / "a.flac"),
                                   str(tmp_path / "nope.wav"), str(tmp_path / "*.ogg")], recursive=False)
    assert files == [str(root / "a.flac"), str(root / "b.wav"), str(root / "sub" / "c.mp3")]  # each once, in order
    assert [(f.file, f.code) for f in failures] == [(str(tmp_path / "nope.wav"), "not_found"),
                                                    (str(tmp_path / "*.ogg"), "not_found")]
    recursive, _ = list_inputs([str(root)], recursive=True)
    assert recursive == [str(root / "a.flac"), str(root / "b.wav"), str(root / "sub" / "c.mp3")]


def test_manifest_lines_are_relative_to_the_manifest_and_urls_pass_through(tmp_path):
    manifest = tmp_path / "lists" / "corpus.lst"
    manifest.parent.mkdir()
    manifest.write_text("# recordings\nday1/a.wav\n\n/data/b.wav   # absolute\ns3://bucket/c.wav\n")
    files, failures = list_inputs([str(manifest)], recursive=False)
    assert files == [str(tmp_path / "lists" / "day1" / "a.wav"), "/data/b.wav", "s3://bucket/c.wav"]
    assert failures == []


def test_urls_are_listed_through_fsspec(tmp_path):
    root = make_tree(tmp_path / "r")
    (tmp_path / "remote.txt").write_text("r/b.wav\n")
    url = root.as_uri()
    files, _ = list_inputs([url, f"{url}/sub/*.mp3", (tmp_path / "remote.txt").as_uri()], recursive=False)
    assert files == [f"{url}/a.flac", f"{url}/b.wav", f"{url}/sub/c.mp3"]  # the manifest's b.wav is the same URL
    everything, _ = list_inputs([url], recursive=True)
    assert everything == [f"{url}/a.flac", f"{url}/b.wav", f"{url}/sub/c.mp3"]


def test_an_unknown_url_scheme_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["analyze", "nosuchfs://bucket/x.wav", "--ray", "local"])
    assert result.exit_code == 1 and "cannot open nosuchfs://bucket/x.wav" in result.stderr


def test_without_ray_the_option_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as it does without the extra
    (tmp_path / "a.wav").write_bytes(b"x")
    result = runner.invoke(app, ["analyze", str(tmp_path / "a.wav"), "--model", "random:tiny", "--ray", "local"])
    assert result.exit_code == 1 and "pip install 'emoserve[ray]'" in result.stderr
    both = runner.invoke(app, ["analyze", str(tmp_path), "--server", "http://127.0.0.1:9", "--ray", "auto"])
    assert both.exit_code == 1 and "not --server" in both.stderr
