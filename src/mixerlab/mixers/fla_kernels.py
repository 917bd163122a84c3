"""The baselines with flash-linear-attention's Triton kernels in place of the PyTorch chunkwise op.

CUDA only, optional (`pip install mixerlab[fla]`). Same parameters and layer as the PyTorch templates; only
`mix` differs. fla's ops are time-first ([B, T, H, D]) and refuse float32 inputs, hence the casts.
"""

from __future__ import annotations

import torch

from mixerlab.mixers.delta_net import DeltaNet
from mixerlab.mixers.gated_delta_net import GatedDeltaNet


def _import_fla():
    try:
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError("the fla kernels need `pip install flash-linear-attention` and a CUDA GPU") from err
    return chunk_delta_rule, chunk_gated_delta_rule


def _time_first(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.transpose(1, 2).to(torch.bfloat16).contiguous() for t in tensors]


class FlaDeltaNet(DeltaNet):
    def mix(self, q, k, v, beta):  # type: ignore[override]
        chunk_delta_rule, _ = _import_fla()
        q, k, v, beta = _time_first(q, k, v, beta)
        o, _ = chunk_delta_rule(q=q, k=k, v=v, beta=beta)
        return o.transpose(1, 2).to(v.dtype if v.dtype != torch.bfloat16 else torch.float32)


class FlaGatedDeltaNet(GatedDeltaNet):
    def mix(self, q, k, v, beta, g):  # type: ignore[override]
        _, chunk_gated_delta_rule = _import_fla()
        q, k, v, beta = _time_first(q, k, v, beta)
        g = g.transpose(1, 2).float().contiguous()
        o, _ = chunk_gated_delta_rule(q=q, k=k, v=v, g=g, beta=beta)
        return o.transpose(1, 2).float()
