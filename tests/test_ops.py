"""Fast ops against their references: the shifted depthwise convolution against nn.Conv1d, and the vmap
folding wrapper (used to batch fla's kernels) against plain vmap."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from mixerlab.mixers import resolve_mixer
from mixerlab.ops.depthwise import depthwise_conv1d, use_library_depthwise_convs, use_shifted_depthwise_convs
from mixerlab.ops.fold import fold_vmap


@pytest.mark.parametrize("taps, padding, bias", [(4, 3, False), (3, 1, True), (1, 0, False), (5, 4, True)])
def test_shifted_depthwise_conv_equals_conv1d(taps: int, padding: int, bias: bool) -> None:
    conv = nn.Conv1d(6, 6, taps, groups=6, padding=padding, bias=bias)
    x = torch.randn(3, 6, 11, requires_grad=True)
    ref = conv(x)
    fast = depthwise_conv1d(x, conv.weight, conv.bias, padding)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    w = torch.randn_like(ref)
    params = [x, *conv.parameters()]
    for g_fast, g_ref in zip(torch.autograd.grad((fast * w).sum(), params), torch.autograd.grad((ref * w).sum(), params)):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-5, atol=1e-6)


def test_shifted_conv_keeps_the_autocast_dtype_of_conv1d() -> None:
    conv = nn.Conv1d(4, 4, 4, groups=4, padding=3, bias=False)
    x = torch.randn(2, 4, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert depthwise_conv1d(x, conv.weight, None, 3).dtype == conv(x).dtype == torch.bfloat16


def test_only_plain_depthwise_convs_are_rerouted() -> None:
    model = nn.Sequential(
        nn.Conv1d(4, 4, 4, groups=4, padding=3),  # depthwise: rerouted
        nn.Conv1d(4, 8, 3),  # dense: kept
        nn.Conv1d(8, 8, 3, groups=8, stride=2),  # strided: kept
        nn.Conv1d(8, 8, 3, groups=8, padding=1, padding_mode="circular"),  # circular padding: kept
    )
    x = torch.randn(2, 4, 12)
    ref = model(x)
    assert use_shifted_depthwise_convs(model) == 1
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-6)
    # the trainer's eager fallback after a failed compile puts the library kernel back
    assert use_library_depthwise_convs(model) == 1 and use_library_depthwise_convs(model) == 0
    assert all("_conv_forward" not in m.__dict__ for m in model.modules())
    torch.testing.assert_close(model(x), ref)


@pytest.mark.parametrize("name", ["delta_net", "gated_delta_net"])
def test_baseline_layers_give_the_same_result_with_shifted_convs(name: str) -> None:
    layer = resolve_mixer(name).load_class()(d_model=32)
    x = torch.randn(2, 20, 32)
    ref = layer(x)
    fast = copy.deepcopy(layer)
    assert use_shifted_depthwise_convs(fast) == 3  # q, k and v convolutions
    torch.testing.assert_close(fast(x), ref, rtol=1e-5, atol=1e-6)


def test_fold_vmap_equals_plain_vmap_and_calls_the_kernel_once_on_a_folded_batch() -> None:
    seen: list[tuple[int, ...]] = []

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # batch-first, no vmap rule needed
        seen.append(tuple(a.shape))
        return (a * b).cumsum(1).tanh()

    folded = fold_vmap(kernel)
    a = torch.randn(5, 3, 7, requires_grad=True)  # 5 members, batch 3
    b = torch.randn(3, 5, 7, requires_grad=True)  # members on dim 1
    out = torch.vmap(folded, in_dims=(0, 1))(a, b)
    assert seen == [(15, 7)]  # one call, members folded into the batch
    ref = torch.vmap(lambda x, y: (x * y).cumsum(1).tanh(), in_dims=(0, 1))(a, b)
    torch.testing.assert_close(out, ref)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), [a, b])
    grads_ref = torch.autograd.grad((ref * w).sum(), [a, b])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)
    assert folded(a[0], b[:, 0]).shape == (3, 7)  # and plain calls work as the kernel


@pytest.mark.parametrize("name", ["delta_net", "gated_delta_net"])
def test_fla_variants_train_under_vmap_like_the_templates(name: str) -> None:
    """On CPU the fla variants run the PyTorch op through fold_vmap: same outputs and gradients as the template."""
    torch.manual_seed(0)
    template, variant = resolve_mixer(name).load_class(), resolve_mixer(name + "_fla").load_class()
    params, _ = stack_module_state([template(d_model=32) for _ in range(3)])
    x = torch.randn(3, 2, 70, 32)
    results = []
    for cls in (template, variant):
        base = cls(d_model=32).to("meta")
        p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        y = torch.vmap(lambda pp, t: functional_call(base, (pp,), (t,)))(p, x)
        y.square().sum().backward()
        results.append((y.detach(), {k: v.grad for k, v in p.items()}))
    (y_t, g_t), (y_v, g_v) = results
    torch.testing.assert_close(y_v, y_t)
    for key in g_t:
        torch.testing.assert_close(g_v[key], g_t[key])
