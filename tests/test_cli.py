import json
import subprocess
import sys

from typer.testing import CliRunner

from emoserve.cli import app

from .samples import sweep, wav_bytes

runner = CliRunner()


def test_models_list_shows_known_models():
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0
    assert "emotion2vec_plus_large" in result.output and "random:tiny" in result.output


def test_models_pull_offline_is_a_message_not_a_traceback(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = subprocess.run([sys.executable, "-m", "emoserve", "models", "pull", "emotion2vec_plus_base"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "could not download emotion2vec_plus_base" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_models_pull_unknown_name():
    result = runner.invoke(app, ["models", "pull", "nope"])
    assert result.exit_code == 1 and "unknown model" in result.output


def test_analyze_with_a_random_model(tmp_path):
    path = tmp_path / "clip.wav"
    path.write_bytes(wav_bytes(sweep(0.5)))
    result = runner.invoke(app, ["analyze", str(path), "--model", "random:tiny", "--format", "json"])
    assert result.exit_code == 0, result.output
    (body,) = json.loads(result.stdout)
    assert body["file"] == str(path) and body["model"] == "random:tiny" and body["emotion"]
