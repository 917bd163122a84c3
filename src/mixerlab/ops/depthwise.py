"""Depthwise (per-channel) convolution over time as shifted multiply-adds: the fast form of the short
causal convolutions that DeltaNet-style mixers put on q, k and v.

Under the batched trainer's vmap, `nn.Conv1d(groups=channels)` becomes a depthwise conv over members x
channels, for which PyTorch runs its generic depthwise kernel: 16% of a compiled DeltaNet training step
on the H100 (a torch.profiler trace, now benchmarks/speed/step_anatomy.py --profile). With a kernel of 4 taps the same convolution is 4 shifted
products and a sum, which torch.compile fuses into the neighbouring elementwise work. `nn.Conv1d` is the
reference; tests/test_ops.py holds the two together (outputs and gradients).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


def depthwise_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """`F.conv1d(x, weight, bias, padding=padding, groups=channels)` for x [B, C, T], weight [C, 1, K].

    Accumulates in float32 (as the conv kernels do) and returns the dtype `F.conv1d` would, autocast included.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        out_dtype = torch.get_autocast_dtype(device_type)
    else:
        out_dtype = torch.promote_types(x.dtype, weight.dtype)
    taps = weight.shape[-1]
    length = x.shape[-1] + 2 * padding - taps + 1
    padded = F.pad(x.float(), (padding, padding))
    w = weight[:, 0].float()
    out = padded[..., :length] * w[:, 0:1]
    for j in range(1, taps):
        out = out + padded[..., j : j + length] * w[:, j : j + 1]
    if bias is not None:
        out = out + bias.float()[:, None]
    return out.to(out_dtype)


def _is_plain_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv1d)
        and module.groups == module.in_channels == module.out_channels
        and module.stride == (1,)
        and module.dilation == (1,)
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)
    )


def _shifted_conv_forward(module: nn.Conv1d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    return depthwise_conv1d(x, weight, bias, module.padding[0])


def use_shifted_depthwise_convs(model: nn.Module) -> int:
    """Route every plain depthwise `nn.Conv1d` of `model` (stride 1, no dilation, zero padding) through
    `depthwise_conv1d`; parameters and results stay the same. Returns how many modules it changed."""
    changed = 0
    for module in model.modules():
        if _is_plain_depthwise(module):
            module._conv_forward = functools.partial(_shifted_conv_forward, module)  # type: ignore[method-assign]
            changed += 1
    return changed


def use_library_depthwise_convs(model: nn.Module) -> int:
    """Undo `use_shifted_depthwise_convs` (for eager training, where `nn.Conv1d`'s kernel is faster)."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Conv1d) and "_conv_forward" in module.__dict__:
            del module._conv_forward
            changed += 1
    return changed
