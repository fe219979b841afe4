"""emotion2vec in plain PyTorch: the inference path of FunASR's `funasr/models/emotion2vec/`.

emotion2vec is data2vec 2.0's audio encoder with a linear emotion head:

    waveform ──► normalize (per clip) ──► conv feature extractor (stride 320 = 20 ms)
      ──► LayerNorm + Linear to D ──► + relative positional convs ──► [10 extra tokens | frames]
      ──► LayerNorm ──► prenet blocks + main blocks (ALiBi-biased attention) ──► frames (T×D)
      ──► mean over frames ──► proj (D → 9 labels)

Clips of different lengths run in one padded batch and give the same numbers as each clip alone:
normalization uses each clip's own samples, padded frames are zeroed before every positional
conv, and attention never looks at padded keys.

The forward has no data-dependent control flow or shapes: padding is masked by arithmetic
whether or not a batch has any (multiplying by 1 and adding 0 change nothing), and per-clip
statistics are masked sums. So the same code runs eagerly, under torch.compile, and exports to
ONNX with dynamic batch and length (`emoserve.model.export`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Emotion2vecConfig


def conv_lengths(lengths: Tensor, kernel: int, stride: int) -> Tensor:
    """Valid outputs of an unpadded conv over `lengths` valid inputs: floor((L - k) / s) + 1, at least 0."""
    return (torch.div(lengths - kernel, stride, rounding_mode="floor") + 1).clamp_min(0)


def frame_counts(config: Emotion2vecConfig, num_samples: Tensor) -> Tensor:
    """Frames the conv extractor makes from each clip."""
    lengths = num_samples
    for _, kernel, stride in config.feature_encoder_spec:
        lengths = conv_lengths(lengths, kernel, stride)
    return lengths


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi slopes as in fairseq: a geometric series, interleaved when not a power of 2."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_2(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


class TimeMajorConv1d(nn.Conv1d):
    """nn.Conv1d (unpadded) on (B, C, L) views of time-major (B, L, C) tensors, giving the same kind of view.

    It runs as a 2-D convolution over a (B, C, 1, L) channels-last view, which oneDNN computes
    in place of layout: the channel norm and the next conv need no transposes, and the
    extractor runs ~1.7× faster on CPU than with channel-first tensors and a copy per norm.
    """

    def forward(self, x: Tensor) -> Tensor:
        out = F.conv2d(x.unsqueeze(2), self.weight.unsqueeze(2), self.bias, stride=(1, self.stride[0]))
        return out.squeeze(2)


class ConvLayer(nn.Module):
    """Conv1d (no bias) → norm over channels (fp32) → GELU, on time-major (B, L, C) tensors."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, norm: str | None):
        super().__init__()
        self.conv = TimeMajorConv1d(in_channels, out_channels, kernel, stride=stride, bias=False)
        self.norm: nn.Module | None = None
        if norm == "layer":
            self.norm = nn.LayerNorm(out_channels)
        elif norm == "group":
            self.norm = nn.GroupNorm(out_channels, out_channels)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, L, C), lengths: (B,) valid steps per clip → (B, L', C') and the valid steps of that."""
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, L', C'), contiguous: oneDNN kept the layout
        lengths = conv_lengths(lengths, self.conv.kernel_size[0], self.conv.stride[0])
        if isinstance(self.norm, nn.LayerNorm):
            x = F.layer_norm(x.float(), self.norm.normalized_shape, self.norm.weight.float(),
                             self.norm.bias.float(), self.norm.eps).type_as(x)
        elif isinstance(self.norm, nn.GroupNorm):  # one group per channel: each channel over its valid steps
            norm = self.norm
            x = (masked_standardize(x.float(), valid_mask(lengths, x.shape[1]), lengths, dim=1, eps=norm.eps)
                 * norm.weight.float() + norm.bias.float()).type_as(x)
        return F.gelu(x), lengths


class FeatureExtractor(nn.Module):
    """The waveform → frames conv stack (wav2vec 2.0 style), 20 ms per frame."""

    def __init__(self, config: Emotion2vecConfig):
        super().__init__()
        layers = []
        in_channels = 1
        for i, (channels, kernel, stride) in enumerate(config.feature_encoder_spec):
            norm = "layer" if config.extractor_mode == "layer_norm" else "group" if i == 0 else None
            layers.append(ConvLayer(in_channels, channels, kernel, stride, norm))
            in_channels = channels
        self.layers = nn.ModuleList(layers)

    def forward(self, waveforms: Tensor, num_samples: Tensor) -> Tensor:  # (B, N) → (B, T, C)
        x, lengths = waveforms.unsqueeze(-1), num_samples
        for layer in self.layers:
            x, lengths = layer(x, lengths)
        return x


class PositionalConv(nn.Module):
    """Relative positional encoding: a stack of grouped convs over time (no fixed positions)."""

    def __init__(self, config: Emotion2vecConfig):
        super().__init__()
        dim, kernel = config.embed_dim, config.conv_pos_kernel
        self.pre_norm = nn.LayerNorm(dim, eps=config.norm_eps) if config.conv_pos_pre_ln else None
        self.convs = nn.ModuleList(
            nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=config.conv_pos_groups)
            for _ in range(config.conv_pos_depth)
        )
        self.trim = 1 if kernel % 2 == 0 else 0  # fairseq's SamePad
        self.dim = dim
        self.eps = config.norm_eps

    def forward(self, x: Tensor, frame_mask: Tensor) -> Tensor:
        """x: (B, T, D); frame_mask: (B, T, 1), 1 on real frames and 0 on padding."""
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        for conv in self.convs:
            x = x * frame_mask  # a clip alone sees zeros past its end: so must a padded one
            x = conv(x.transpose(1, 2))
            if self.trim:
                x = x[:, :, : -self.trim]
            x = F.gelu(F.layer_norm(x.transpose(1, 2), (self.dim,), eps=self.eps))
        return x


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        batch, length, dim = x.shape
        # (B, N, 3D) → 3 × (B, H, N, D/H)
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads) \
            .permute(2, 0, 3, 1, 4)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(x.transpose(1, 2).reshape(batch, length, dim))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """data2vec 2.0's AltBlock: post-LN, or pre-LN as fairseq computes it."""

    def __init__(self, config: Emotion2vecConfig):
        super().__init__()
        dim = config.embed_dim
        self.pre_norm = config.layer_norm_first
        self.attn = MultiHeadAttention(dim, config.num_heads)
        self.attn_norm = nn.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=config.norm_affine)
        self.mlp = MLP(dim, int(dim * config.mlp_ratio))
        self.mlp_norm = nn.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=config.norm_affine)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        if self.pre_norm:
            x = x + self.attn(self.attn_norm(x), attn_mask)
            # fairseq's pre-LN AltBlock returns mlp(x) + mlp(x): the residual is dropped.
            # Checkpoints trained with it expect exactly that, so we reproduce it.
            x = self.mlp(self.mlp_norm(x))
            return x + x
        x = self.attn_norm(x + self.attn(x, attn_mask))
        return self.mlp_norm(x + self.mlp(x))


@dataclass
class EncoderOutput:
    features: Tensor  # (B, T, D) frame features; rows past `frame_lengths` are padding
    frame_lengths: Tensor  # (B,) valid frames per clip
    frame_mask: Tensor = field(repr=False)  # (B, T) bool, True on valid frames


class Emotion2vec(nn.Module):
    """The network. Knows nothing of files, batching policy or labels: tensors in, tensors out."""

    def __init__(self, config: Emotion2vecConfig):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        channels = config.feature_encoder_spec[-1][0]
        self.feature_extractor = FeatureExtractor(config)
        self.feature_norm = nn.LayerNorm(channels)
        self.feature_proj = nn.Linear(channels, dim)
        self.pos_conv = PositionalConv(config)
        self.extra_tokens = nn.Parameter(torch.zeros(1, config.num_extra_tokens, dim))
        self.alibi_scale: nn.Parameter | None = None
        if config.use_alibi:
            layers = config.num_blocks if config.alibi_scale_per_layer else 1
            heads = config.num_alibi_heads if config.alibi_scale_per_head else 1
            self.alibi_scale = nn.Parameter(torch.ones(layers, 1, heads, 1, 1))
        self.context_norm = None if config.layer_norm_first else nn.LayerNorm(
            dim, eps=config.norm_eps, elementwise_affine=config.norm_affine)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_blocks))
        self.final_norm = nn.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=config.norm_affine) \
            if config.layer_norm_first else None
        self.proj = nn.Linear(dim, config.num_labels) if config.num_labels > 0 else None

    def forward(self, waveforms: Tensor, num_samples: Tensor | None = None) -> EncoderOutput:
        """waveforms: (B, N) 16 kHz float; num_samples: (B,) valid samples per row (None: all N)."""
        batch, width = waveforms.shape
        if num_samples is None:
            num_samples = torch.full((batch,), width, dtype=torch.long, device=waveforms.device)
        sample_mask = valid_mask(num_samples, width)  # (B, N)
        if self.config.normalize:  # layer norm of each clip over its own samples
            waveforms = masked_standardize(waveforms, sample_mask, num_samples, dim=1, eps=self.config.norm_eps)
        else:
            waveforms = waveforms * sample_mask

        x = self.feature_extractor(waveforms, num_samples)  # (B, T, C)
        x = self.feature_proj(self.feature_norm(x))  # (B, T, D)
        frames = x.shape[1]
        frame_lengths = frame_counts(self.config, num_samples).clamp_max(frames)
        frame_mask = valid_mask(frame_lengths, frames)  # (B, T)
        x = x + self.pos_conv(x, frame_mask[..., None].to(x.dtype))

        extra = self.config.num_extra_tokens
        x = torch.cat([self.extra_tokens.expand(batch, -1, -1).to(x.dtype), x], dim=1)
        masks = self.attention_masks(frame_mask)

        x = self.transformer(x, masks)
        return EncoderOutput(x[:, extra:], frame_lengths, frame_mask)

    def transformer(self, x: Tensor, masks: list[Tensor]) -> Tensor:
        """The blocks, with their norms: (B, N, D) → (B, N, D). One region, so it compiles as one graph."""
        if self.context_norm is not None:
            x = self.context_norm(x)
        for i, block in enumerate(self.blocks):
            x = block(x, masks[i] if len(masks) > 1 else masks[0])
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x

    def attention_masks(self, frame_mask: Tensor) -> list[Tensor]:
        """Additive masks (B, H|1, N, N): scaled ALiBi on frames (0 for extra tokens), -inf on padded keys.

        One mask serves every block, unless the checkpoint learned one ALiBi scale per layer.
        """
        cfg = self.config
        device, frames = frame_mask.device, frame_mask.shape[1]
        key_mask = torch.cat([frame_mask.new_ones(frame_mask.shape[0], cfg.num_extra_tokens), frame_mask], dim=1)
        padding = torch.zeros(key_mask.shape, device=device).masked_fill(~key_mask, float("-inf"))[:, None, None, :]
        if self.alibi_scale is None:
            return [padding]
        positions = torch.arange(frames, device=device)
        distance = -(positions[None, :] - positions[:, None]).abs().float()  # (T, T)
        slopes = torch.tensor(alibi_slopes(cfg.num_alibi_heads), device=device)
        bias = slopes[:, None, None] * distance  # (H_alibi, T, T), float32 as fairseq
        masks = []
        for scale in self.alibi_scale.clamp_min(0).float():  # (1, H|1, 1, 1) per layer, or one for all
            scaled = F.pad(bias * scale[0], (cfg.num_extra_tokens, 0, cfg.num_extra_tokens, 0))
            if cfg.num_alibi_heads < cfg.num_heads:
                scaled = F.pad(scaled, (0, 0, 0, 0, 0, cfg.num_heads - cfg.num_alibi_heads))
            masks.append(scaled[None] + padding)  # (B, H, N, N)
        return masks

    def pool(self, out: EncoderOutput) -> Tensor:
        """Utterance embedding: the mean of each clip's valid frames, (B, D)."""
        mask = out.frame_mask[..., None].to(out.features.dtype)
        return (out.features * mask).sum(1) / out.frame_lengths[:, None].to(out.features.dtype)


def emotion_scores(head: nn.Linear, label_index: Tensor, x: Tensor) -> Tensor:
    """softmax(head(x)) in float32 over the labels in use (`label_index`; labels named "unuse*" are left out)."""
    logits = F.linear(x.float(), head.weight.float(), head.bias.float())
    return torch.softmax(logits.index_select(-1, label_index), dim=-1)


def valid_mask(lengths: Tensor, width: int) -> Tensor:
    """(B, width) bool, True on each row's first `lengths[row]` steps."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def masked_standardize(x: Tensor, mask: Tensor, lengths: Tensor, dim: int, eps: float) -> Tensor:
    """(x - mean) / sqrt(var + eps) over each row's valid steps along `dim` (a layer norm per clip), 0 elsewhere.

    Masked sums instead of a norm per clip: no data-dependent shapes, and for a clip alone the
    same statistics as F.layer_norm / F.group_norm (within fp32 rounding).
    mask: (B, L) bool over `dim` = 1; lengths: (B,) valid steps.
    """
    weight = mask.to(x.dtype)
    if x.dim() == 3:
        weight = weight[..., None]
    count = lengths.to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))
    mean = (x * weight).sum(dim, keepdim=True) / count
    centered = (x - mean) * weight
    variance = (centered * centered).sum(dim, keepdim=True) / count
    return centered * torch.rsqrt(variance + eps)
