"""The MAD backbones: layout, shapes, initialisation."""

from __future__ import annotations

import torch
from torch import nn

from mixerlab.mixers.delta_net import DeltaNet
from mixerlab.model import AutoEncoder, LanguageModel, SwiGLU, build_model


def test_language_model_layout_and_shapes() -> None:
    model = LanguageModel(vocab_size=16, d_model=128, mixer_factory=lambda d: DeltaNet(d))
    kinds = [type(block.layer).__name__ for block in model.blocks]
    assert kinds == ["DeltaNet", "SwiGLU", "DeltaNet", "SwiGLU"]
    assert model.blocks[1].layer.w1.out_features == 352  # mad-lab's SwiGLU width at 128
    logits = model(torch.randint(0, 16, (2, 37)))
    assert logits.shape == (2, 37, 16)
    assert all(m.bias is None or m.bias.abs().max() == 0 for m in model.modules() if isinstance(m, nn.Linear))
    assert abs(model.embed.weight.std().item() - 0.02) < 0.003


def test_autoencoder_reconstructs_from_last_position() -> None:
    torch.manual_seed(0)
    model = AutoEncoder(vocab_size=16, d_model=64, mixer_factory=lambda d: DeltaNet(d), seq_len=32)
    tokens = torch.randint(0, 15, (2, 32))
    logits = model(tokens)
    assert logits.shape == (2, 32, 16)
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 15
    assert not torch.allclose(model(changed), logits), "earlier tokens reach the code vector"
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear) and m.weight.numel() > 1000]
    assert all(abs(w.std().item() - 0.02) < 0.004 for w in weights), "every Linear re-initialised N(0, 0.02)"


def test_build_model_rejects_unknown_backbone() -> None:
    try:
        build_model("transformer", 16, 32, 64, lambda d: SwiGLU(d))
    except ValueError as err:
        assert "unknown backbone 'transformer'" in str(err)
    else:  # pragma: no cover
        raise AssertionError("expected a ValueError")


def test_normal_init_reinitialises_every_linear_of_the_language_model() -> None:
    """init="normal" is mad-lab before Dec 2024: the mixer's and SwiGLU's Linears N(0, 0.02) too."""
    default = LanguageModel(vocab_size=64, d_model=128, mixer_factory=lambda d: DeltaNet(d))
    normal = build_model("language_model", 64, 32, 128, lambda d: DeltaNet(d), init="normal")
    q_default, q_normal = default.blocks[0].layer.q_proj.weight, normal.blocks[0].layer.q_proj.weight
    assert abs(q_default.std().item() - 128**-0.5 / 3**0.5) < 0.005  # PyTorch's kaiming-uniform default
    assert abs(q_normal.std().item() - 0.02) < 0.003
    big = [m.weight for m in normal.modules() if isinstance(m, nn.Linear) and m.weight.numel() > 1000]
    assert len(big) >= 9 and all(abs(w.std().item() - 0.02) < 0.004 for w in big)
    assert all(m.bias is None or m.bias.abs().max() == 0 for m in normal.modules() if isinstance(m, nn.Linear))
    try:
        build_model("language_model", 64, 32, 128, lambda d: DeltaNet(d), init="xavier")
    except ValueError as err:
        assert "unknown init 'xavier'" in str(err)
    else:
        raise AssertionError("an unknown init must be refused")


def test_fla_xavier_init_rescales_the_mixers_linears_only() -> None:
    """init="fla-xavier": the mixers' Linears xavier-uniform with gain 2^-2.5 (std = gain * sqrt(2 / (in + out))),
    the SwiGLUs and the head keep PyTorch's default, and the CLI's choices (read off TrainConfig) offer it."""
    from mixerlab.config import train_choices

    assert "fla-xavier" in train_choices("init")
    model = build_model("language_model", 64, 32, 128, lambda d: DeltaNet(d), init="fla-xavier")
    gain = 2**-2.5
    for index in (0, 2):  # the two mixer blocks
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            weight = getattr(model.blocks[index].layer, name).weight
            fan_out, fan_in = weight.shape
            bound = gain * (6 / (fan_in + fan_out)) ** 0.5
            assert weight.abs().max().item() <= bound + 1e-7
            assert abs(weight.std().item() - bound / 3**0.5) < 0.1 * bound / 3**0.5
    default_std = 128**-0.5 / 3**0.5  # kaiming-uniform(a=sqrt(5)) on fan-in 128
    assert abs(model.blocks[1].layer.w1.weight.std().item() - default_std) < 0.005, "SwiGLU keeps its init"
    assert abs(model.head.weight.std().item() - default_std) < 0.005, "the head keeps its init"
