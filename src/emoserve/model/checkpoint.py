"""Official emotion2vec model directories (FunASR format) → our network (`emoserve.testing` writes them).

A directory as published on Hugging Face (`emotion2vec/...`) or ModelScope (`iic/...`) holds
`config.yaml` (dimensions under `model_conf`), a checkpoint (`model.pt`, or the file named by
`configuration.json`'s `init_param`) and `tokens.txt` (the labels; absent for emotion2vec_base).

Checkpoint keys are FunASR module names, prefixed `d2v_model.` (except `proj.*`). Every key of
our network is mapped explicitly from one FunASR key; a missing or misshapen key is an error
naming it, and so is an unknown key among the tensors inference uses. Training-only state (the
decoder, EMA teachers, other modalities) is ignored, as FunASR does.

The first load converts the checkpoint to safetensors in the cache, so later starts read a
memory-mapped file instead of unpickling the (up to 2 GB) original.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..labels import label_from_token
from .config import Emotion2vecConfig
from .emotion2vec import Emotion2vec

log = logging.getLogger(__name__)

KEY_PREFIXES = ("d2v_model.", "module.", "")  # FunASR tries these, in this order
AUDIO = "modality_encoders.AUDIO."
# FunASR tensors that inference reads; an unknown key under one of these is an error.
INFERENCE_NAMESPACES = (AUDIO, "blocks.", "norm.", "proj.")
TRAINING_ONLY = (AUDIO + "decoder.",)

# Our block names → FunASR's AltBlock names.
BLOCK_PARTS = {"attn.qkv": "attn.qkv", "attn.out": "attn.proj", "attn_norm": "norm1",
               "mlp_norm": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def funasr_key(key: str, config: Emotion2vecConfig) -> str:
    """The FunASR state-dict name of one of our parameters (without the `d2v_model.` prefix)."""
    if m := re.fullmatch(r"feature_extractor\.layers\.(\d+)\.(conv|norm)\.(weight|bias)", key):
        layer, part, kind = m.groups()
        if part == "conv":
            return f"{AUDIO}local_encoder.conv_layers.{layer}.0.{kind}"
        norm = "2.1" if config.extractor_mode == "layer_norm" else "2"
        return f"{AUDIO}local_encoder.conv_layers.{layer}.{norm}.{kind}"
    if m := re.fullmatch(r"feature_(norm|proj)\.(weight|bias)", key):
        return f"{AUDIO}project_features.{1 if m[1] == 'norm' else 2}.{m[2]}"
    pos = "relative_positional_encoder." + ("1." if config.conv_pos_pre_ln else "")
    if m := re.fullmatch(r"pos_conv\.convs\.(\d+)\.(weight|bias)", key):
        return f"{AUDIO}{pos}{int(m[1]) + 1}.0.{m[2]}"
    if m := re.fullmatch(r"pos_conv\.pre_norm\.(weight|bias)", key):
        return f"{AUDIO}relative_positional_encoder.0.{m[1]}"
    if key in ("extra_tokens", "alibi_scale"):
        return AUDIO + key
    if m := re.fullmatch(r"context_norm\.(weight|bias)", key):
        return f"{AUDIO}context_encoder.norm.{m[1]}"
    if m := re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key):
        index, part, kind = int(m[1]), m[2], m[3]
        if index < config.prenet_depth:
            return f"{AUDIO}context_encoder.blocks.{index}.{BLOCK_PARTS[part]}.{kind}"
        return f"blocks.{index - config.prenet_depth}.{BLOCK_PARTS[part]}.{kind}"
    if m := re.fullmatch(r"final_norm\.(weight|bias)", key):
        return f"norm.{m[1]}"
    if m := re.fullmatch(r"proj\.(weight|bias)", key):
        return key
    raise KeyError(f"no FunASR name for parameter {key!r}")


def config_from_yaml(conf: dict, num_labels: int) -> Emotion2vecConfig:
    """Read the dimensions from a config.yaml's `model_conf` (never assume one model's numbers)."""
    try:
        model_conf = conf["model_conf"]
        audio = model_conf["modalities"]["audio"]
        if audio.get("learned_alibi"):
            raise CheckpointError("learned_alibi=true checkpoints are not supported (no published model uses it)")
        return Emotion2vecConfig(
            embed_dim=int(model_conf["embed_dim"]),
            num_heads=int(model_conf["num_heads"]),
            prenet_depth=int(audio["prenet_depth"]),
            depth=int(model_conf["depth"]),
            mlp_ratio=float(model_conf["mlp_ratio"]),
            norm_eps=float(model_conf.get("norm_eps", 1e-5)),
            norm_affine=bool(model_conf.get("norm_affine", True)),
            layer_norm_first=bool(model_conf.get("layer_norm_first", False)),
            normalize=bool(model_conf.get("normalize", True)),
            feature_encoder_spec=tuple(tuple(int(v) for v in layer)
                                       for layer in parse_conv_spec(audio["feature_encoder_spec"])),
            extractor_mode=str(audio.get("extractor_mode", "layer_norm")),
            conv_pos_width=int(audio["conv_pos_width"]),
            conv_pos_depth=int(audio["conv_pos_depth"]),
            conv_pos_groups=int(audio["conv_pos_groups"]),
            conv_pos_pre_ln=bool(audio.get("conv_pos_pre_ln", False)),
            num_extra_tokens=int(audio["num_extra_tokens"]),
            use_alibi=bool(audio.get("use_alibi_encoder", True)),
            num_alibi_heads=int(audio.get("num_alibi_heads", model_conf["num_heads"])),
            alibi_scale_per_head=bool(audio.get("learned_alibi_scale_per_head", False)),
            alibi_scale_per_layer=bool(audio.get("learned_alibi_scale_per_layer", False)),
            num_labels=num_labels,
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"config.yaml is not an emotion2vec config: {type(e).__name__} {e}") from e


def parse_conv_spec(spec: str | list) -> list:
    """`'[(512, 10, 5)] + [(512, 3, 2)] * 4'` → list of tuples, without eval() of file contents."""
    if isinstance(spec, list):
        return spec
    layers: list = []
    for term in spec.split("+"):
        m = re.fullmatch(r"\s*\[\s*\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)\s*\]\s*(?:\*\s*(\d+))?\s*", term)
        if not m:
            raise ValueError(f"cannot read feature_encoder_spec term {term!r}")
        layers += [(int(m[1]), int(m[2]), int(m[3]))] * int(m[4] or 1)
    return layers


def read_labels(tokens_file: Path | None) -> tuple[str, ...]:
    if tokens_file is None or not tokens_file.exists():
        return ()
    tokens = [line.rstrip() for line in tokens_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(set(tokens)) != len(tokens):
        raise CheckpointError(f"{tokens_file} has duplicate tokens")
    return tuple(label_from_token(t) for t in tokens)


@dataclass(frozen=True)
class ModelFiles:
    config: Path
    checkpoint: Path
    tokens: Path | None


def find_model_files(directory: Path) -> ModelFiles:
    """The files of a model directory, as FunASR's AutoModel finds them."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory")
    config, checkpoint, tokens = directory / "config.yaml", directory / "model.pt", directory / "tokens.txt"
    meta_file = directory / "configuration.json"
    if meta_file.exists():
        try:
            metas = json.loads(meta_file.read_text(encoding="utf-8")).get("file_path_metas", {})
        except (json.JSONDecodeError, AttributeError) as e:
            raise CheckpointError(f"{meta_file} is not valid JSON: {e}") from e
        config = directory / metas.get("config", "config.yaml")
        checkpoint = directory / metas.get("init_param", "model.pt")
        token_list = (metas.get("tokenizer_conf") or {}).get("token_list")
        tokens = directory / token_list if token_list else None
    for required in (config, checkpoint):
        if not required.exists():
            raise CheckpointError(f"model directory {directory} has no {required.name}")
    return ModelFiles(config, checkpoint, tokens if tokens is not None and tokens.exists() else None)


@dataclass
class LoadedCheckpoint:
    config: Emotion2vecConfig
    labels: tuple[str, ...]
    state_dict: dict[str, torch.Tensor]  # our key names


def load_model_dir(directory: str | Path, cache_dir: Path | None = None) -> LoadedCheckpoint:
    """Read an official model directory; convert once to a cached safetensors file."""
    files = find_model_files(Path(directory))
    try:
        conf = yaml.safe_load(files.config.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise CheckpointError(f"{files.config} is not valid YAML: {e}") from e
    labels = read_labels(files.tokens)
    config = config_from_yaml(conf if isinstance(conf, dict) else {}, num_labels=len(labels))

    cached = converted_path(files.checkpoint, cache_dir) if cache_dir else None
    if cached is not None and cached.exists():
        try:
            state = load_file(cached)
            check_state_dict(state, config)
            log.info("loaded %s from converted cache %s", files.checkpoint, cached)
            return LoadedCheckpoint(config, labels, state)
        except Exception as e:  # a stale or broken cache is rebuilt, never fatal
            log.warning("ignoring converted cache %s: %s", cached, e)

    state = convert_state_dict(read_checkpoint(files.checkpoint), config)
    if cached is not None:
        write_converted(cached, state)
    return LoadedCheckpoint(config, labels, state)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict")
    return obj


def expected_shapes(config: Emotion2vecConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in Emotion2vec(config).state_dict().items()}


def convert_state_dict(checkpoint: dict[str, torch.Tensor], config: Emotion2vecConfig) -> dict[str, torch.Tensor]:
    """FunASR-named checkpoint → our names, with explicit errors for anything off."""
    shapes = expected_shapes(config)
    ours: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing = []
    for key, shape in shapes.items():
        name = funasr_key(key, config)
        found = next((p + name for p in KEY_PREFIXES if p + name in checkpoint), None)
        if found is None:
            missing.append(name)
            continue
        tensor = checkpoint[found]
        if key == "alibi_scale" and tensor.dim() == 4:  # older fairseq layout, as FunASR upgrades it
            tensor = tensor.unsqueeze(0)
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(
                f"checkpoint tensor {found} has shape {tuple(tensor.shape)}, the config needs {tuple(shape)}")
        if not tensor.is_floating_point():
            raise CheckpointError(f"checkpoint tensor {found} is {tensor.dtype}, not floating point")
        ours[key] = tensor.float().contiguous()
        used.add(found)
    if missing:
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s): {', '.join(missing[:8])}"
                              + (" ..." if len(missing) > 8 else ""))
    unexpected = [k for k in checkpoint if k not in used and is_inference_key(k, config)]
    if unexpected:
        raise CheckpointError(f"checkpoint has {len(unexpected)} unexpected tensor(s) for this config: "
                              f"{', '.join(sorted(unexpected)[:8])}")
    ignored = len(checkpoint) - len(used)
    if ignored:
        log.debug("ignored %d training-only checkpoint tensors", ignored)
    return ours


def is_inference_key(key: str, config: Emotion2vecConfig) -> bool:
    for prefix in KEY_PREFIXES[:-1]:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    if key.startswith(TRAINING_ONLY):
        return False
    if key.startswith("proj.") and config.num_labels == 0:
        return False  # no tokens.txt: FunASR builds no head and ignores it
    return key.startswith(INFERENCE_NAMESPACES)


def check_state_dict(state: dict[str, torch.Tensor], config: Emotion2vecConfig) -> None:
    shapes = expected_shapes(config)
    if set(state) != set(shapes) or any(tuple(state[k].shape) != tuple(s) for k, s in shapes.items()):
        raise CheckpointError("converted cache does not match the config")


def converted_path(checkpoint: Path, cache_dir: Path) -> Path:
    stat = checkpoint.stat()
    ident = f"{checkpoint.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_dir / "converted" / f"{checkpoint.stem}-{digest}.safetensors"


def write_converted(path: Path, state: dict[str, torch.Tensor]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save_file(state, tmp)
        os.replace(tmp, path)
        log.info("cached converted checkpoint at %s", path)
    except OSError as e:
        log.warning("cannot cache converted checkpoint at %s: %s", path, e)


# ---- random weights: the `random:` models, and the writers in emoserve.testing ----

def random_state_dict(config: Emotion2vecConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random weights for every tensor, norms and ALiBi scales included.

    Scales keep activations in a realistic range, so a tensor loaded into the wrong place
    changes the outputs visibly instead of hiding in saturated or vanishing values.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Emotion2vec(config).state_dict().items()}
    state = {}
    for key, shape in shapes.items():
        if key == "alibi_scale":
            tensor = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith("norm.weight"):
            tensor = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith(".bias") or key == "extra_tokens":
            tensor = 0.1 * torch.randn(shape, generator=gen)
        else:  # conv and linear weights: variance-preserving
            fan_in = shape[1] * (shape[2] if len(shape) == 3 else 1)
            tensor = torch.randn(shape, generator=gen) / fan_in**0.5
        state[key] = tensor.contiguous()
    return state
