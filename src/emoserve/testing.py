"""Official-format model directories with random weights, for tests and benchmarks.

What FunASR's `AutoModel` and `load_model_dir` both load: the same files, the same tensors, so
the loader and the network can be checked against FunASR without downloading a model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml

from .labels import LABELS
from .model.checkpoint import TRAINING_ONLY, funasr_key, random_state_dict
from .model.config import Emotion2vecConfig

TEMPLATES = Path(__file__).parent / "model" / "templates"  # the official emotion2vec_plus_large config files
TOKENS_OFFICIAL = ("生气/angry", "厌恶/disgusted", "恐惧/fearful", "开心/happy", "中立/neutral",
                   "其他/other", "难过/sad", "吃惊/surprised", "<unk>")


def to_funasr_state_dict(state: dict[str, torch.Tensor], config: Emotion2vecConfig) -> dict[str, torch.Tensor]:
    """Our names → the official checkpoint names (`d2v_model.` prefix, bare `proj.*`)."""
    out = {}
    for key, tensor in state.items():
        name = funasr_key(key, config)
        out[name if name.startswith("proj.") else "d2v_model." + name] = tensor
    return out


def funasr_config(config: Emotion2vecConfig, decoder_dim: int) -> dict:
    """A config.yaml for `config`, from the official emotion2vec_plus_large file as template."""
    conf = copy.deepcopy(yaml.safe_load((TEMPLATES / "config.yaml").read_text(encoding="utf-8")))
    mc = conf["model_conf"]
    audio = mc["modalities"]["audio"]
    mc.update(embed_dim=config.embed_dim, num_heads=config.num_heads, depth=config.depth,
              mlp_ratio=config.mlp_ratio, norm_eps=config.norm_eps, norm_affine=config.norm_affine,
              layer_norm_first=config.layer_norm_first, normalize=config.normalize)
    spec = " + ".join(f"[({c}, {k}, {s})]" for c, k, s in config.feature_encoder_spec)
    audio.update(prenet_depth=config.prenet_depth, model_depth=config.depth, feature_encoder_spec=spec,
                 extractor_mode=config.extractor_mode, conv_pos_width=config.conv_pos_width,
                 conv_pos_depth=config.conv_pos_depth, conv_pos_groups=config.conv_pos_groups,
                 conv_pos_pre_ln=config.conv_pos_pre_ln, num_extra_tokens=config.num_extra_tokens,
                 use_alibi_encoder=config.use_alibi, num_alibi_heads=config.num_alibi_heads,
                 learned_alibi_scale_per_head=config.alibi_scale_per_head,
                 learned_alibi_scale_per_layer=config.alibi_scale_per_layer)
    audio["decoder"]["decoder_dim"] = decoder_dim
    return conf


def save_model_dir(directory: str | Path, config: Emotion2vecConfig, state: dict[str, torch.Tensor],
                   labels: tuple[str, ...] | None = None, extra_tensors: dict[str, torch.Tensor] | None = None,
                   decoder_dim: int = 384) -> Path:
    """Write an official-format directory that FunASR's AutoModel (and we) can load.

    `state` uses our names; `extra_tensors` (FunASR names) adds training-only state such as a
    decoder, so a loader that must ignore it can be tested on realistic files.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = to_funasr_state_dict(state, config) | dict(extra_tensors or {})
    torch.save({"model": checkpoint}, directory / "model.pt")
    (directory / "config.yaml").write_text(
        yaml.safe_dump(funasr_config(config, decoder_dim), allow_unicode=True, sort_keys=False), encoding="utf-8")
    (directory / "configuration.json").write_text((TEMPLATES / "configuration.json").read_text(encoding="utf-8"),
                                                  encoding="utf-8")
    if config.num_labels:
        labels = labels or LABELS[: config.num_labels]
        tokens = [TOKENS_OFFICIAL[LABELS.index(lb)] if lb in LABELS else lb for lb in labels]
        (directory / "tokens.txt").write_text("\n".join(tokens), encoding="utf-8")
    return directory



def random_decoder_tensors(config: Emotion2vecConfig, decoder_dim: int, seed: int = 99) -> dict[str, torch.Tensor]:
    """Random training-only decoder tensors (FunASR names), as official checkpoints carry them."""
    gen = torch.Generator().manual_seed(seed)
    prefix = "d2v_model." + TRAINING_ONLY[0]
    tensors = {}
    in_dim = config.embed_dim
    for i in range(4):
        tensors[f"{prefix}blocks.{i}.0.weight"] = torch.randn(decoder_dim, in_dim // 16, 7, generator=gen)
        tensors[f"{prefix}blocks.{i}.0.bias"] = torch.randn(decoder_dim, generator=gen)
        in_dim = decoder_dim
    tensors[f"{prefix}proj.weight"] = torch.randn(config.embed_dim, decoder_dim, generator=gen)
    tensors[f"{prefix}proj.bias"] = torch.randn(config.embed_dim, generator=gen)
    return tensors


def write_random_model_dir(directory: str | Path, config: Emotion2vecConfig, seed: int = 0,
                           decoder_dim: int = 384) -> Path:
    """An official-format model directory with every tensor random, the training-only decoder included.

    What tests and benchmarks load into both FunASR and emoserve: the same file, the same tensors.
    """
    return save_model_dir(directory, config, random_state_dict(config, seed),
                          extra_tensors=random_decoder_tensors(config, decoder_dim, seed + 1), decoder_dim=decoder_dim)
