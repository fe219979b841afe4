import importlib
import re
from pathlib import Path

import pytest

from emoserve import EmotionModel, ModelNotFoundError
from emoserve.config import ModelConfig
from emoserve.model import hub
from emoserve.model.config import TINY

from ..conftest import write_checkpoint


def test_every_known_model_has_a_source():
    for spec in hub.MODELS.values():
        assert spec.hf_repo or spec.modelscope_repo


def test_unknown_names_list_the_known_ones(tmp_path):
    with pytest.raises(ModelNotFoundError, match="emotion2vec_plus_large"):
        hub.resolve("emotion2vec_huge", tmp_path)


def test_a_missing_local_directory_is_named(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        hub.resolve(str(tmp_path / "nope" / "model"), tmp_path)


def test_a_cached_model_resolves_without_network(tmp_path, monkeypatch):
    write_checkpoint(hub.model_dir("emotion2vec_plus_base", tmp_path), TINY)

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(hub, "pull", no_download)
    assert hub.resolve("emotion2vec_plus_base", tmp_path) == hub.model_dir("emotion2vec_plus_base", tmp_path)


def test_not_cached_and_no_download_says_how_to_pull(tmp_path):
    with pytest.raises(ModelNotFoundError, match="emoserve models pull emotion2vec_plus_base"):
        hub.resolve("emotion2vec_plus_base", tmp_path, download=False)


def test_offline_pull_fails_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the real huggingface_hub download, with no network
    with pytest.raises(ModelNotFoundError) as info:
        hub.pull("emotion2vec_plus_large", tmp_path, "hf")
    assert "offline" in info.value.message and "--model" in info.value.message
    assert not hub.is_cached("emotion2vec_plus_large", tmp_path)


def test_a_failing_modelscope_download_says_what_to_do(tmp_path, monkeypatch):
    def offline(repo, revision, directory):
        raise ConnectionError("Name or service not known")

    monkeypatch.setitem(hub.DOWNLOADERS, "modelscope", offline)
    with pytest.raises(ModelNotFoundError, match="(?s)Name or service not known.*offline"):
        hub.pull("emotion2vec_plus_large", tmp_path, "modelscope")


def test_pull_places_a_downloaded_directory_in_the_cache(tmp_path, monkeypatch):
    calls = []

    def fake_download(repo, revision, directory):
        calls.append(repo)
        write_checkpoint(directory, TINY)

    monkeypatch.setitem(hub.DOWNLOADERS, "hf", fake_download)
    path = hub.pull("emotion2vec_plus_large", tmp_path, "hf")
    assert calls == ["emotion2vec/emotion2vec_plus_large"]
    assert path == hub.model_dir("emotion2vec_plus_large", tmp_path) and hub.is_cached("emotion2vec_plus_large",
                                                                                         tmp_path)
    assert hub.pull("emotion2vec_plus_large", tmp_path, "hf") == path and len(calls) == 1  # cached: no download


def test_a_download_that_is_not_a_model_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(hub.DOWNLOADERS, "hf", lambda repo, revision, directory: None)
    with pytest.raises(ModelNotFoundError, match="not a usable model directory"):
        hub.pull("emotion2vec_plus_base", tmp_path, "hf")


def test_a_model_only_on_modelscope_says_so(tmp_path):
    with pytest.raises(ModelNotFoundError, match="--source modelscope"):
        hub.pull("emotion2vec_base_finetuned", tmp_path, "hf")


def test_every_published_model_has_a_pinned_revision():
    for spec in hub.MODELS.values():
        for source in hub.SOURCES:
            assert (spec.repo(source) is None) == (spec.revision(source) is None), (spec.name, source)


LIBRARIES = {"hf": ("huggingface_hub", "repo_id"), "modelscope": ("modelscope.hub.snapshot_download", "model_id")}


@pytest.mark.parametrize("source", sorted(LIBRARIES))
def test_downloads_ask_the_library_for_the_pinned_revision_or_the_one_given(tmp_path, monkeypatch, source):
    module, repo_argument = LIBRARIES[source]
    calls = []

    def snapshot_download(**kwargs):
        calls.append((kwargs[repo_argument], kwargs["revision"]))
        write_checkpoint(Path(kwargs["local_dir"]), TINY)

    monkeypatch.setattr(importlib.import_module(module), "snapshot_download", snapshot_download)
    spec = hub.MODELS["emotion2vec_plus_base"]
    hub.pull(spec.name, tmp_path / "pinned", source)
    hub.pull(spec.name, tmp_path / "given", source, revision="0f1e2d3c")
    model = EmotionModel.from_config(ModelConfig(model=spec.name, cache=tmp_path / "settings", source=source,
                                                 revision="v2", device="cpu"))
    assert model.name == spec.name
    assert calls == [(spec.repo(source), spec.revision(source)), (spec.repo(source), "0f1e2d3c"),
                     (spec.repo(source), "v2")]


def test_each_pin_is_a_commit_hash_the_docs_cite_or_the_default_branch():
    """A moving branch stays only where no hash is known, and the docs' table names every hash pinned."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text(encoding="utf-8")
    default_branch = {"hf": "main", "modelscope": "master"}
    for spec in hub.MODELS.values():
        for source in hub.SOURCES:
            revision = spec.revision(source)
            if revision is not None and not re.fullmatch(r"[0-9a-f]{40}", revision):
                assert revision == default_branch[source], (spec.name, source)
            elif revision is not None:
                assert f"`{spec.name}` | commit `{revision}`" in docs, (spec.name, source)
    assert re.fullmatch(r"[0-9a-f]{40}", hub.MODELS["emotion2vec_plus_large"].hf_revision)  # the default model
