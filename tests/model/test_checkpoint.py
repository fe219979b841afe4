import json

import pytest
import torch
import yaml

from emoserve import CheckpointError, EmotionModel
from emoserve.model.checkpoint import (
    config_from_yaml,
    converted_path,
    find_model_files,
    load_model_dir,
    parse_conv_spec,
    random_state_dict,
    read_labels,
)
from emoserve.model.config import BASE, PLUS_BASE, PLUS_LARGE, TINY

from ..conftest import write_checkpoint

REFERENCE = "/work/shared/reference"


def rewrite_checkpoint(directory, transform):
    path = directory / "model.pt"
    checkpoint = torch.load(path, weights_only=True)
    torch.save(transform(checkpoint), path)


def test_official_configs_give_the_published_dimensions():
    from pathlib import Path

    large = yaml.safe_load(Path(REFERENCE, "emotion2vec_plus_large.config.yaml").read_text())
    base = yaml.safe_load(Path(REFERENCE, "emotion2vec_base.config.yaml").read_text())
    assert config_from_yaml(large, num_labels=9) == PLUS_LARGE
    assert config_from_yaml(base, num_labels=9) == PLUS_BASE
    assert config_from_yaml(base, num_labels=0) == BASE


def test_conv_spec_is_parsed_without_eval():
    assert parse_conv_spec("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]") == list(
        PLUS_LARGE.feature_encoder_spec)
    with pytest.raises(ValueError):
        parse_conv_spec("__import__('os').system('true')")


def test_a_written_directory_loads_back_exactly(tmp_path):
    write_checkpoint(tmp_path, TINY, seed=5)
    loaded = load_model_dir(tmp_path)
    assert loaded.config == TINY
    assert loaded.labels == ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised",
                             "unknown")
    expected = random_state_dict(TINY, 5)
    assert set(loaded.state_dict) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(loaded.state_dict[key], tensor), key


def test_tokens_file_is_official_utf8_without_trailing_newline(tmp_path):
    write_checkpoint(tmp_path, TINY)
    raw = (tmp_path / "tokens.txt").read_bytes()
    assert raw.startswith("生气/angry\n".encode()) and raw.endswith(b"<unk>")


@pytest.mark.parametrize("wrap", ["model", "state_dict", "model_state_dict", "bare"])
@pytest.mark.parametrize("prefix", ["d2v_model.", "module.", ""])
def test_wrappers_and_prefixes_that_funasr_accepts(tmp_path, wrap, prefix):
    write_checkpoint(tmp_path, TINY, seed=2)

    def transform(checkpoint):
        state = {}
        for key, tensor in checkpoint["model"].items():
            bare = key.removeprefix("d2v_model.")
            state[bare if bare.startswith("proj.") else prefix + bare] = tensor
        return state if wrap == "bare" else {wrap: state}

    rewrite_checkpoint(tmp_path, transform)
    loaded = load_model_dir(tmp_path)
    assert torch.equal(loaded.state_dict["extra_tokens"], random_state_dict(TINY, 2)["extra_tokens"])


def test_a_missing_tensor_is_named(tmp_path):
    write_checkpoint(tmp_path, TINY)
    key = "d2v_model.modality_encoders.AUDIO.context_encoder.blocks.0.norm2.weight"
    rewrite_checkpoint(tmp_path, lambda c: {"model": {k: v for k, v in c["model"].items() if k != key}})
    with pytest.raises(CheckpointError, match="context_encoder.blocks.0.norm2.weight"):
        load_model_dir(tmp_path)


def test_a_misshapen_tensor_is_named_with_both_shapes(tmp_path):
    write_checkpoint(tmp_path, TINY)
    key = "d2v_model.blocks.1.mlp.fc1.weight"

    def transform(c):
        c["model"][key] = torch.zeros(3, 3)
        return c

    rewrite_checkpoint(tmp_path, transform)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc1\.weight has shape \(3, 3\)"):
        load_model_dir(tmp_path)


def test_an_unexpected_inference_tensor_is_named(tmp_path):
    write_checkpoint(tmp_path, TINY)

    def transform(c):
        c["model"]["d2v_model.blocks.7.attn.qkv.weight"] = torch.zeros(1)  # more blocks than the config says
        return c

    rewrite_checkpoint(tmp_path, transform)
    with pytest.raises(CheckpointError, match=r"unexpected .*blocks\.7\.attn\.qkv\.weight"):
        load_model_dir(tmp_path)


def test_training_only_tensors_are_ignored(tmp_path):
    write_checkpoint(tmp_path, TINY, seed=4)  # carries the decoder

    def transform(c):
        c["model"]["d2v_model._ema.blocks.0.attn.qkv.weight"] = torch.zeros(2)
        c["model"]["d2v_model.modality_encoders.IMAGE.extra_tokens"] = torch.zeros(2)
        return c

    rewrite_checkpoint(tmp_path, transform)
    assert load_model_dir(tmp_path).config == TINY


def test_legacy_four_dim_alibi_scale_is_upgraded(tmp_path):
    write_checkpoint(tmp_path, TINY, seed=6)
    key = "d2v_model.modality_encoders.AUDIO.alibi_scale"

    def transform(c):
        c["model"][key] = c["model"][key].squeeze(0)
        return c

    rewrite_checkpoint(tmp_path, transform)
    loaded = load_model_dir(tmp_path)
    assert torch.equal(loaded.state_dict["alibi_scale"], random_state_dict(TINY, 6)["alibi_scale"])


def test_a_pickled_object_is_refused_not_executed(tmp_path):
    write_checkpoint(tmp_path, TINY)
    torch.save({"model": {"x": object()}}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model_dir(tmp_path)


def test_configuration_json_names_the_files(tmp_path):
    write_checkpoint(tmp_path, TINY)
    (tmp_path / "model.pt").rename(tmp_path / "emotion2vec_base.pt")
    (tmp_path / "tokens.txt").unlink()
    meta = {"file_path_metas": {"init_param": "emotion2vec_base.pt", "config": "config.yaml"}}
    (tmp_path / "configuration.json").write_text(json.dumps(meta))
    files = find_model_files(tmp_path)
    assert files.checkpoint.name == "emotion2vec_base.pt" and files.tokens is None
    loaded = load_model_dir(tmp_path)  # no tokens: no head, proj.* in the file is ignored as FunASR does
    assert loaded.config.num_labels == 0 and "proj.weight" not in loaded.state_dict


def test_a_model_without_head_gives_embeddings_only(tmp_path):
    write_checkpoint(tmp_path, TINY)
    (tmp_path / "tokens.txt").unlink()
    (tmp_path / "configuration.json").unlink()
    model = EmotionModel.from_pretrained(str(tmp_path), device="cpu", cache_dir=tmp_path / "cache")
    result = model.analyze(torch.randn(8000).numpy(), return_embedding=True)
    assert result.emotion is None and result.confidence is None and result.scores == {}
    assert result.embedding.shape == (TINY.embed_dim,)


@pytest.mark.parametrize("missing", ["config.yaml", "model.pt"])
def test_an_incomplete_directory_says_what_is_missing(tmp_path, missing):
    write_checkpoint(tmp_path, TINY)
    (tmp_path / "configuration.json").unlink()
    (tmp_path / missing).unlink()
    with pytest.raises(CheckpointError, match=missing):
        load_model_dir(tmp_path)


def test_a_broken_config_is_a_clear_error(tmp_path):
    write_checkpoint(tmp_path, TINY)
    (tmp_path / "config.yaml").write_text("model: Emotion2vec\nmodel_conf: {embed_dim: 64}\n")
    with pytest.raises(CheckpointError, match="not an emotion2vec config"):
        load_model_dir(tmp_path)


def test_duplicate_tokens_are_refused(tmp_path):
    (tmp_path / "tokens.txt").write_text("a\nb\na")
    with pytest.raises(CheckpointError, match="duplicate"):
        read_labels(tmp_path / "tokens.txt")


def test_the_converted_cache_is_written_once_and_used_after(tmp_path, monkeypatch):
    model_dir, cache = tmp_path / "model", tmp_path / "cache"
    write_checkpoint(model_dir, TINY, seed=8)
    first = load_model_dir(model_dir, cache)
    cached = converted_path(model_dir / "model.pt", cache)
    assert cached.exists()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the original checkpoint was read again")

    monkeypatch.setattr(torch, "load", no_unpickling)
    second = load_model_dir(model_dir, cache)
    for key, tensor in first.state_dict.items():
        assert torch.equal(second.state_dict[key], tensor)


def test_a_corrupt_converted_cache_is_rebuilt(tmp_path):
    model_dir, cache = tmp_path / "model", tmp_path / "cache"
    write_checkpoint(model_dir, TINY, seed=8)
    load_model_dir(model_dir, cache)
    cached = converted_path(model_dir / "model.pt", cache)
    cached.write_bytes(b"garbage")
    loaded = load_model_dir(model_dir, cache)
    assert torch.equal(loaded.state_dict["extra_tokens"], random_state_dict(TINY, 8)["extra_tokens"])
