"""The baselines with flash-linear-attention's Triton kernels in place of the PyTorch chunkwise op.

Optional (`pip install mixerlab[fla]`). Same parameters and layer as the PyTorch templates; only `mix`
differs: it calls fla's kernels through the custom ops of `mixerlab.mixers.fla_ops`, which autograd, vmap (the
batched trainer) and torch.compile (the compiled step) treat as one opaque operator each. fla's ops are
time-first ([B, T, H, D]) and refuse float32 inputs on CUDA, hence the transposes and casts, which the
compiler fuses with their neighbours. On CPU tensors (fla has no CPU kernels) the ops run the PyTorch
chunkwise forms in float32, so the module loads, checks and trains anywhere.
"""

from __future__ import annotations

import torch

from mixerlab.mixers.delta_net import DeltaNet
from mixerlab.mixers.gated_delta_net import GatedDeltaNet
from mixerlab.mixers.fla_ops import fla_delta_rule, fla_gated_delta_rule


def _time_first(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Head-first -> fla's time-first layout, contiguous here, where the compiler fuses the copy into the ops
    before it (inside the opaque op it would be one more pass over memory per tensor)."""
    dtype = torch.bfloat16 if tensors[0].is_cuda else torch.float32
    return [t.transpose(1, 2).to(dtype).contiguous() for t in tensors]


class FlaDeltaNet(DeltaNet):
    def mix(self, q, k, v, beta):  # type: ignore[override]
        o, _ = fla_delta_rule(*_time_first(q, k, v, beta))
        return o.transpose(1, 2).float()


class FlaGatedDeltaNet(GatedDeltaNet):
    def mix(self, q, k, v, beta, g):  # type: ignore[override]
        q, k, v, beta = _time_first(q, k, v, beta)
        o, _, _ = fla_gated_delta_rule(q, k, v, beta, g.transpose(1, 2).float().contiguous())
        return o.transpose(1, 2).float()
