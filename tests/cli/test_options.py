"""The command line as a shell user meets it: completion, choices listed in --help, the serve options."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

import emoserve.api.app
from emoserve.cli import app
from emoserve.cli.common import DTYPES
from emoserve.config import Settings
from emoserve.model.precision import DTYPES as MODEL_DTYPES

REPO_SRC = Path(__file__).resolve().parents[2] / "src"


def help_of(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def completions(words: str) -> list[str]:
    """What bash completion offers after `words` (typer's completion protocol, as the installed script runs it)."""
    env = {**os.environ, "_EMOSERVE_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_SRC), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", "from emoserve.cli import app; app(prog_name='emoserve')"],
                            env=env, capture_output=True, text=True, timeout=60)
    return result.stdout.split()


def test_shell_completion_is_installable_and_completes_choices():
    assert "--install-completion" in help_of() and "--show-completion" in help_of()
    assert completions("emoserve serve --dtype b") == ["bfloat16"]
    assert completions("emoserve analyze --granularity ") == ["utterance", "frame"]
    assert completions("emoserve serve --device cu") == ["cuda", "cuda:0", "cuda:1"]
    assert "analyze" in completions("emoserve an")


def test_help_lists_the_choices():
    assert "<utterance|frame>" in help_of("analyze")
    assert "<table|json|jsonl|csv|parquet>" in help_of("analyze")
    assert "<auto|float32|bfloat16|float16>" in help_of("serve") and "<auto|float32|bfloat16|float16>" in help_of("ui")
    assert "<torch|onnxruntime|openvino>" in help_of("serve") and "<torch|onnxruntime|openvino>" in help_of("analyze")
    assert "[EMOSERVE_BACKEND]" in help_of("serve")


def test_a_choice_that_does_not_exist_is_refused_before_anything_runs():
    result = CliRunner().invoke(app, ["analyze", "--granularity", "word", "clip.wav"])
    assert result.exit_code == 2 and "word" in result.output


def test_the_dtype_choices_are_the_names_the_model_takes():
    assert set(DTYPES) - {"auto"} <= set(MODEL_DTYPES)


def test_serve_exposes_the_settings_operators_change_most(monkeypatch, tmp_path):
    made = []
    service = types.SimpleNamespace(status="healthy", on_load_failure=None)  # what `serve` reads of the app
    fake_app = types.SimpleNamespace(state=types.SimpleNamespace(service=service))
    monkeypatch.setattr(emoserve.api.app, "create_app", lambda settings: made.append(settings) or fake_app)
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, sockets=None: None)
    keys = tmp_path / "keys"
    keys.write_text("k1\n")
    result = CliRunner().invoke(app, [
        "serve", "--model", "random:tiny", "--host", "127.0.0.2", "--port", "8124", "--api-only", "--device", "cpu",
        "--dtype", "float32", "--threads", "2", "--max-batch-size", "3", "--cache", str(tmp_path / "cache"),
        "--api-keys-file", str(keys), "--data-dir", str(tmp_path / "data"), "--log-dir", str(tmp_path / "logs"),
        "--log-json", "--forwarded-allow-ips", "127.0.0.1", "--backend", "openvino"])
    assert result.exit_code == 0, result.output
    settings: Settings = made[0]
    assert (settings.model.model, settings.model.device, settings.model.dtype, settings.model.cache) == (
        "random:tiny", "cpu", "float32", tmp_path / "cache")
    assert settings.model.backend == "openvino"
    assert (settings.engine.threads, settings.engine.max_batch_size) == (2, 3)
    server = settings.server
    assert (server.host, server.port, server.api_only, server.keys(), server.log_dir, server.log_json) == (
        "127.0.0.2", 8124, True, ["k1"], tmp_path / "logs", True)
    assert (settings.store.data_dir, server.forwarded_allow_ips) == (tmp_path / "data", "127.0.0.1")


@pytest.mark.parametrize("option", ["--host", "--port", "--api-keys-file", "--data-dir", "--log-dir", "--threads"])
def test_serve_help_names_each_options_variable(option):
    text = help_of("serve")
    assert option in text
    assert "[EMOSERVE_" + option.lstrip("-").replace("-", "_").upper() + "]" in text


def test_models_pull_takes_a_revision(monkeypatch, tmp_path):
    from emoserve.model import hub

    calls = []
    monkeypatch.setattr(hub, "pull", lambda name, cache, source, force, revision: calls.append(revision) or tmp_path)
    assert CliRunner().invoke(app, ["models", "pull", "emotion2vec_plus_base", "--revision", "abc123"]).exit_code == 0
    monkeypatch.setenv("EMOSERVE_REVISION", "from-env")
    assert CliRunner().invoke(app, ["models", "pull", "emotion2vec_plus_base"]).exit_code == 0
    assert calls == ["abc123", "from-env"]
