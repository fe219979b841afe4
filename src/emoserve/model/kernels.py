"""Drop-in replacements for the network's nn.Linear and nn.Conv1d layers, chosen per CPU by `emoserve.model.precision`.

The network itself is plain PyTorch (`nn.Linear`, `nn.Conv1d`); these classes change who computes
a layer, not what it computes:

- `OneDNNLinear`: the same fp32 matmul as a 1×1 channels-last convolution, which oneDNN runs
  with AVX-512 on any vendor (MKL, torch's default, only on Intel). Exact within fp32 rounding.
- `Int8Linear`: int8 weights (per output channel) × int8 activations (per tensor, quantized on
  the fly) through oneDNN's int8 matmul (`torch.ops.onednn.qlinear_pointwise`, the kernel
  torch's x86 Inductor quantization lowers to). Not exact: ~2× faster matmuls than fp32.
- `Int8Conv`: the same for a convolution, through oneDNN's int8 convolution
  (`torch.ops.onednn.qconv_pointwise`). Not exact either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class OneDNNLinear(nn.Linear):
    """nn.Linear computed as a 1×1 channels-last convolution by oneDNN: (B, N, D) → (B, N, D').

    The output stays contiguous. Anything but a 3-D fp32 CPU input outside autocast and
    torch.compile/export (which pack linears for their own kernels) takes the plain path.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 3 \
                or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
            return super().forward(x)
        out = F.conv2d(x.transpose(1, 2).unsqueeze(2), self.weight[:, :, None, None], self.bias)  # (B, D', 1, N)
        return out.squeeze(2).transpose(1, 2)


class Int8Linear(nn.Module):
    """y ≈ x Wᵀ + b: weights int8 per output channel (symmetric), activations uint8 per call (asymmetric).

    `activation_levels`: 255 where the CPU has VNNI; 127 (7-bit activations) on AVX2 without it,
    whose 8-bit multiply-add saturates in 16 bits otherwise (fbgemm's `reduce_range` does the same).
    The activation range is taken over the whole call, so in a padded batch a clip's result
    depends slightly on the others: int8 is a fast path, not an exact one.
    """

    def __init__(self, linear: nn.Linear, activation_levels: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.activation_levels = activation_levels
        quantized, scale = quantize_weight(linear.weight)
        self.register_buffer("packed_weight", torch.ops.onednn.qlinear_prepack(quantized, None))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", torch.zeros(self.out_features, dtype=torch.long))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: Tensor) -> Tensor:
        quantized, scale, zero_point = quantize_activations(x.reshape(-1, self.in_features), self.activation_levels)
        out = torch.ops.onednn.qlinear_pointwise.tensor(
            quantized, scale, zero_point, self.packed_weight, self.weight_scale, self.weight_zero_point, self.bias,
            1.0, 0, torch.float32, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"activation_levels={self.activation_levels}"


class Int8Conv(nn.Module):
    """nn.Conv1d's (B, C, L) → (B, C', L') with int8 weights per output channel, uint8 activations per call.

    Computed as a 2-D convolution over a (B, C, 1, L) view by oneDNN; an input laid out time-major
    in memory (a transposed (B, L, C) tensor) is already channels-last for it, and the output is
    too. Activations as in `Int8Linear` (7 bits without VNNI; one range per call, holding 0, so
    zero padding stays exact).
    """

    def __init__(self, conv: nn.Conv1d, activation_levels: int):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("Int8Conv takes convolutions with numeric zero padding")
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.activation_levels = activation_levels
        self.stride, self.padding = [1, conv.stride[0]], [0, conv.padding[0]]
        self.dilation, self.groups = [1, conv.dilation[0]], conv.groups
        quantized, scale = quantize_weight(conv.weight.unsqueeze(2))  # (C', C/groups, 1, K)
        self.register_buffer("packed_weight", torch.ops.onednn.qconv_prepack(
            quantized, scale, 1.0, 0, self.stride, self.padding, self.dilation, self.groups, None))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", torch.zeros(self.out_channels, dtype=torch.long))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float())

    def forward(self, x: Tensor) -> Tensor:
        quantized, scale, zero_point = quantize_activations(x, self.activation_levels)
        out = torch.ops.onednn.qconv_pointwise.tensor(
            quantized.unsqueeze(2), scale, zero_point, self.packed_weight, self.weight_scale, self.weight_zero_point,
            self.bias, self.stride, self.padding, self.dilation, self.groups, 1.0, 0, torch.float32, "none", [], "")
        return out.squeeze(2)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, " \
               f"stride={self.stride[1]}, padding={self.padding[1]}, groups={self.groups}, " \
               f"activation_levels={self.activation_levels}"


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """int8 codes of `weight`, symmetric per output channel (dim 0), and the scale of each channel."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=tuple(range(1, weight.dim()))).clamp_min(torch.finfo(torch.float32).tiny) / 127
    quantized = torch.round(weight / scale.view(-1, *(1,) * (weight.dim() - 1))).clamp(-127, 127)
    return quantized.to(torch.int8), scale


def quantize_activations(x: Tensor, levels: int) -> tuple[Tensor, Tensor, Tensor]:
    """uint8 codes in [0, levels] of `x` (same layout), asymmetric over the whole tensor: codes, scale, zero point.

    The range holds 0, so zeros (padding) stay exact. Rounds half up (+0.5, then truncation by
    the cast, in place): one pass fewer over the tensor than round() then clamp(). 7-bit codes
    are cast through int8 (the same bits): torch casts float to int8 ~4× faster than to uint8.
    """
    x = x.float()
    low, high = torch.aminmax(x)
    low, high = low.clamp(max=0), high.clamp(min=0)
    scale = ((high - low) / levels).clamp_min(torch.finfo(torch.float32).eps)
    zero_point = torch.round(-low / scale)
    codes = x.mul(1 / scale).add_(zero_point + 0.5).clamp_(0, levels)
    codes = codes.to(torch.int8).view(torch.uint8) if levels <= 127 else codes.to(torch.uint8)
    return codes, scale, zero_point.long()


def replace_modules(network: nn.Module, names: Iterable[str], make: Callable[[nn.Module], nn.Module]) -> None:
    """Swap the modules called `names` for `make(module)`, in place."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = network.get_submodule(parent_name)
        setattr(parent, child, make(getattr(parent, child)))


def to_onednn(linear: nn.Linear) -> OneDNNLinear:
    replacement = OneDNNLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                               device="meta")
    replacement.weight, replacement.bias = linear.weight, linear.bias
    return replacement
