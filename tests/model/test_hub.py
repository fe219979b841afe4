import pytest

from emoserve import ModelNotFoundError
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
    def offline(repo, directory):
        raise ConnectionError("Name or service not known")

    monkeypatch.setitem(hub.DOWNLOADERS, "modelscope", offline)
    with pytest.raises(ModelNotFoundError, match="(?s)Name or service not known.*offline"):
        hub.pull("emotion2vec_plus_large", tmp_path, "modelscope")


def test_pull_places_a_downloaded_directory_in_the_cache(tmp_path, monkeypatch):
    calls = []

    def fake_download(repo, directory):
        calls.append(repo)
        write_checkpoint(directory, TINY)

    monkeypatch.setitem(hub.DOWNLOADERS, "hf", fake_download)
    path = hub.pull("emotion2vec_plus_large", tmp_path, "hf")
    assert calls == ["emotion2vec/emotion2vec_plus_large"]
    assert path == hub.model_dir("emotion2vec_plus_large", tmp_path) and hub.is_cached("emotion2vec_plus_large",
                                                                                         tmp_path)
    assert hub.pull("emotion2vec_plus_large", tmp_path, "hf") == path and len(calls) == 1  # cached: no download


def test_a_download_that_is_not_a_model_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(hub.DOWNLOADERS, "hf", lambda repo, directory: None)
    with pytest.raises(ModelNotFoundError, match="not a usable model directory"):
        hub.pull("emotion2vec_plus_base", tmp_path, "hf")


def test_a_model_only_on_modelscope_says_so(tmp_path):
    with pytest.raises(ModelNotFoundError, match="--source modelscope"):
        hub.pull("emotion2vec_base_finetuned", tmp_path, "hf")
