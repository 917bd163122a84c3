"""The baselines with flash-linear-attention's Triton kernels in place of the PyTorch chunkwise op.

Optional (`pip install mixerlab[fla]`). Same parameters and layer as the PyTorch templates; only `mix`
differs. fla's ops are time-first ([B, T, H, D]) and refuse float32 inputs, hence the casts. The op is
wrapped by `fold_vmap`, so the batched trainer can train many members at once through one kernel call.
On CPU tensors (fla has no CPU kernels) the PyTorch chunkwise form stands in, through the same wrapper, so
the module loads, checks and trains anywhere.
"""

from __future__ import annotations

import torch

from mixerlab.mixers.delta_net import DeltaNet, delta_rule_chunkwise
from mixerlab.mixers.gated_delta_net import GatedDeltaNet, gated_delta_rule_chunkwise
from mixerlab.ops.fold import fold_vmap


def _import_fla():
    try:
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError("the fla kernels need `pip install flash-linear-attention` and a CUDA GPU") from err
    return chunk_delta_rule, chunk_gated_delta_rule


def _time_first(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.transpose(1, 2).to(torch.bfloat16).contiguous() for t in tensors]


def _delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Head-first in and out (as `delta_rule_chunkwise`), float32 out."""
    if not q.is_cuda:
        return delta_rule_chunkwise(q, k, v, beta).float()
    chunk_delta_rule, _ = _import_fla()
    o, _ = chunk_delta_rule(*_time_first(q, k, v, beta))
    return o.transpose(1, 2).float()


def _gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Head-first in and out (as `gated_delta_rule_chunkwise`, g = log decay <= 0), float32 out."""
    if not q.is_cuda:
        return gated_delta_rule_chunkwise(q, k, v, beta, g).float()
    _, chunk_gated_delta_rule = _import_fla()
    q, k, v, beta = _time_first(q, k, v, beta)
    o, _ = chunk_gated_delta_rule(q=q, k=k, v=v, g=g.transpose(1, 2).float().contiguous(), beta=beta)
    return o.transpose(1, 2).float()


delta_rule = fold_vmap(_delta_rule)
gated_delta_rule = fold_vmap(_gated_delta_rule)


class FlaDeltaNet(DeltaNet):
    def mix(self, q, k, v, beta):  # type: ignore[override]
        return delta_rule(q, k, v, beta)


class FlaGatedDeltaNet(GatedDeltaNet):
    def mix(self, q, k, v, beta, g):  # type: ignore[override]
        return gated_delta_rule(q, k, v, beta, g)
