"""The dimensions of emotion2vec networks, and the audio rates they run at (no torch needed here)."""

from __future__ import annotations

from dataclasses import dataclass, replace

SAMPLE_RATE = 16_000
FRAME_RATE = 50  # frames per second: the conv extractor's total stride is 320 samples
HOP = SAMPLE_RATE // FRAME_RATE  # samples per frame: the conv extractor's total stride
RECEPTIVE_FIELD = 400  # samples one frame sees; also the shortest clip the emotion2vec models accept


@dataclass(frozen=True)
class Emotion2vecConfig:
    """The dimensions that shape the network; read from a checkpoint's config.yaml."""

    embed_dim: int = 1024
    num_heads: int = 16
    prenet_depth: int = 4  # blocks of the "context encoder" (modality-specific)
    depth: int = 8  # shared blocks after the prenet
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5
    norm_affine: bool = True
    layer_norm_first: bool = False  # False: post-LN blocks (every published checkpoint)
    normalize: bool = True  # layer-norm the waveform of each clip
    # (channels, kernel, stride) of each conv of the feature extractor
    feature_encoder_spec: tuple[tuple[int, int, int], ...] = (
        ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
    )
    extractor_mode: str = "layer_norm"  # or "default": GroupNorm after the first conv only
    conv_pos_width: int = 95
    conv_pos_depth: int = 5
    conv_pos_groups: int = 16
    conv_pos_pre_ln: bool = False
    num_extra_tokens: int = 10
    use_alibi: bool = True
    num_alibi_heads: int = 16
    alibi_scale_per_head: bool = True
    alibi_scale_per_layer: bool = False
    num_labels: int = 9  # 0: no emotion head (emotion2vec_base), features only

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.num_alibi_heads > self.num_heads:
            raise ValueError("num_alibi_heads cannot exceed num_heads")
        if self.extractor_mode not in ("layer_norm", "default"):
            raise ValueError(f"unknown extractor_mode {self.extractor_mode!r}")

    @property
    def conv_pos_kernel(self) -> int:
        return max(3, self.conv_pos_width // self.conv_pos_depth)

    @property
    def num_blocks(self) -> int:
        return self.prenet_depth + self.depth

    @property
    def min_samples(self) -> int:
        """The shortest clip that yields one frame (the extractor's receptive field)."""
        samples = 1
        for _, kernel, stride in reversed(self.feature_encoder_spec):
            samples = (samples - 1) * stride + kernel
        return samples


# Real dimensions of the published models (config.yaml of each), plus a tiny one for tests.
PLUS_LARGE = Emotion2vecConfig()
PLUS_BASE = Emotion2vecConfig(embed_dim=768, num_heads=12, num_alibi_heads=12)
BASE = replace(PLUS_BASE, num_labels=0)  # emotion2vec_base: the pre-trained encoder, no head
TINY = Emotion2vecConfig(
    embed_dim=64,
    num_heads=4,
    num_alibi_heads=4,
    prenet_depth=1,
    depth=2,
    feature_encoder_spec=((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2,
    conv_pos_groups=4,
    conv_pos_depth=2,
    conv_pos_width=10,
    num_extra_tokens=2,
)
