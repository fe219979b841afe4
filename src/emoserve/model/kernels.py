"""Drop-in replacements for the network's nn.Linear layers, chosen per CPU by `emoserve.model.precision`.

The network itself is plain PyTorch (`nn.Linear` everywhere); these classes change who computes
a layer, not what it computes:

- `OneDNNLinear`: the same fp32 matmul as a 1×1 channels-last convolution, which oneDNN runs
  with AVX-512 on any vendor (MKL, torch's default, only on Intel). Exact within fp32 rounding.
- `Int8Linear`: int8 weights (per output channel) × int8 activations (per tensor, quantized on
  the fly) through oneDNN's int8 matmul (`torch.ops.onednn.qlinear_pointwise`, the kernel
  torch's x86 Inductor quantization lowers to). Not exact: ~2× faster matmuls than fp32.
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
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
        quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("packed_weight", torch.ops.onednn.qlinear_prepack(quantized, None))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", torch.zeros(self.out_features, dtype=torch.long))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features).float()
        low, high = torch.aminmax(rows)
        low, high = low.clamp(max=0), high.clamp(min=0)  # the range holds 0, so padding zeros stay exact
        scale = ((high - low) / self.activation_levels).clamp_min(torch.finfo(torch.float32).eps)
        zero_point = torch.round(-low / scale).long()
        quantized = (torch.round(rows / scale) + zero_point).clamp(0, self.activation_levels).to(torch.uint8)
        out = torch.ops.onednn.qlinear_pointwise.tensor(
            quantized, scale, zero_point, self.packed_weight, self.weight_scale, self.weight_zero_point, self.bias,
            1.0, 0, torch.float32, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"activation_levels={self.activation_levels}"


def replace_linears(network: nn.Module, names: Iterable[str], make: Callable[[nn.Linear], nn.Module]) -> None:
    """Swap the nn.Linear modules called `names` for `make(linear)`, in place."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = network.get_submodule(parent_name)
        setattr(parent, child, make(getattr(parent, child)))


def to_onednn(linear: nn.Linear) -> OneDNNLinear:
    replacement = OneDNNLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                               device="meta")
    replacement.weight, replacement.bias = linear.weight, linear.bias
    return replacement
