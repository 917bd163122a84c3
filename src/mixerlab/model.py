"""The MAD backbones around a pluggable sequence mixer: `[mixer, SwiGLU, mixer, SwiGLU]`, width 128.

- `LanguageModel`: token embedding -> pre-norm residual blocks `x = x + layer(norm(x))` -> RMSNorm -> linear
  head over the vocabulary. No positional embedding. Used for every task but Compress.
- `AutoEncoder` (Compress): the same encoder, read at its last position; a small MLP decoder with sin-cos
  position embeddings reconstructs every input token from that single vector.

Initialisation follows mad-lab: embeddings N(0, 0.02); in the language model every Linear bias is zeroed
(weights keep PyTorch's default init, the mixer's own init included); in the auto-encoder every Linear,
the mixer's included, is re-initialised N(0, 0.02) with zero bias. RMSNorm eps is 1e-5. `init="normal"`
re-initialises the language model's Linears N(0, 0.02) too, as mad-lab did before December 2024 (the seed
rows may predate that change); `init="fla-xavier"` gives the mixers' Linears the init fla's layers applied
to themselves until early 2025 (xavier-uniform, gain 2^-2.5), which memorises much faster.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mixerlab.config import train_choices

MixerFactory = Callable[[int], nn.Module]  # d_model -> mixer module [B, T, D] -> [B, T, D]
LAYOUT = ("mixer", "swiglu", "mixer", "swiglu")


class SwiGLU(nn.Module):
    """Channel mixer w3(silu(w1 x) * w2 x), no bias; hidden width 8/3 * d rounded up to a multiple of 16."""

    def __init__(self, d_model: int, multiple_of: int = 16) -> None:
        super().__init__()
        hidden = int(2 * d_model * 4 / 3)
        hidden = multiple_of * math.ceil(hidden / multiple_of)
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(d_model, hidden, bias=False)
        self.w3 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class Block(nn.Module):
    """Pre-norm residual block: x + layer(RMSNorm(x))."""

    def __init__(self, d_model: int, layer: nn.Module) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer(self.norm(x))


def make_blocks(d_model: int, mixer_factory: MixerFactory, layout: tuple[str, ...] = LAYOUT) -> nn.ModuleList:
    layers = [mixer_factory(d_model) if kind == "mixer" else SwiGLU(d_model) for kind in layout]
    return nn.ModuleList(Block(d_model, layer) for layer in layers)


def encode(embed: nn.Embedding, blocks: nn.ModuleList, tokens: torch.Tensor) -> torch.Tensor:
    """Token embedding, then the residual blocks: [B, T] -> [B, T, D] (both backbones start this way)."""
    x = embed(tokens)
    for block in blocks:
        x = block(x)
    return x


def reinit_linears_normal(model: nn.Module, std: float = 0.02) -> None:
    """Every Linear (the mixer's included) N(0, std) with zero bias: mad-lab's `_init_weights` for Linears."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def reinit_mixer_linears_xavier(blocks: nn.ModuleList, gain: float = 2**-2.5, layout: tuple[str, ...] = LAYOUT) -> None:
    """Every Linear inside the mixer blocks xavier-uniform(gain) with zero bias; the SwiGLUs keep theirs."""
    for block, kind in zip(blocks, layout):
        if kind != "mixer":
            continue
        for module in block.layer.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, gain=gain)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


INITS = train_choices("init")  # mad-lab, normal, fla-xavier


class LanguageModel(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, mixer_factory: MixerFactory, init: str = "mad-lab") -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = make_blocks(d_model, mixer_factory)
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.head = nn.Linear(d_model, vocab_size)
        if init == "normal":
            reinit_linears_normal(self)
        elif init == "fla-xavier":
            reinit_mixer_linears_xavier(self.blocks)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, features: bool = False) -> torch.Tensor:
        """Logits [B, T, V]; with `features`, the head's inputs [B, T, D] (the trusted scorer applies the head)."""
        x = self.norm(encode(self.embed, self.blocks, tokens))
        return x if features else self.head(x)


def sincos_positions(length: int, dim: int) -> torch.Tensor:
    """Fixed sin-cos position embeddings [length, dim] (sin half, then cos half)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * freqs[None]
    emb = torch.cat([angles.sin(), angles.cos()], 1)
    return F.pad(emb, (0, dim % 2))


class AutoEncoder(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, mixer_factory: MixerFactory, seq_len: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = make_blocks(d_model, mixer_factory)
        self.register_buffer("positions", sincos_positions(seq_len, d_model), persistent=False)
        self.decoder = nn.Sequential(
            nn.RMSNorm(d_model, eps=1e-5), nn.Linear(d_model, d_model), nn.GELU(),
            nn.RMSNorm(d_model, eps=1e-5), nn.Linear(d_model, d_model), nn.GELU(),
        )
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.head = nn.Linear(d_model, vocab_size)
        reinit_linears_normal(self)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        code = encode(self.embed, self.blocks, tokens)[:, -1]  # the encoder's state at the last (compression) token
        y = self.decoder(code[:, None, :] + self.positions[: tokens.shape[1]])
        return self.head(self.norm(y))


def pad_vocabulary(model: nn.Module, vocab_size: int) -> nn.Module:
    """Grow the token embedding and the head to `vocab_size` rows, the new rows zero, in place.

    The batched trainer runs members of different vocabularies at the largest one. Building each member at
    its own vocabulary and padding afterwards keeps its initial weights exactly those it gets alone (built at
    the padded size, the larger draws would shift every later random draw), so a training's result does not
    depend on which partners share its group. The padded rows are never read: the trainer masks their logits.
    """
    old = model.vocab_size
    if vocab_size < old:
        raise ValueError(f"cannot pad a vocabulary of {old} down to {vocab_size}")
    extra = vocab_size - old
    if not extra:
        return model
    for layer, names in ((model.embed, ("weight",)), (model.head, ("weight", "bias"))):
        for name in names:
            param = getattr(layer, name)
            if param is not None:  # rows are the first dimension: pad it at the end with zeros
                setattr(layer, name, nn.Parameter(F.pad(param.detach(), (0, 0) * (param.dim() - 1) + (0, extra))))
    model.embed.num_embeddings = model.head.out_features = model.vocab_size = vocab_size
    return model


def build_model(
    backbone: str, vocab_size: int, seq_len: int, d_model: int, mixer_factory: MixerFactory, init: str = "mad-lab"
) -> nn.Module:
    """`init` (one of INITS) matters for the language model only: the auto-encoder is always normal."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}: use one of {', '.join(INITS)}")
    if backbone == "language_model":
        return LanguageModel(vocab_size, d_model, mixer_factory, init)
    if backbone == "autoencoder":
        return AutoEncoder(vocab_size, d_model, mixer_factory, seq_len)
    raise ValueError(f"unknown backbone {backbone!r}: use 'language_model' or 'autoencoder'")
