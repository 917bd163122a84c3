"""Fast ops against their references: the shifted depthwise convolution against nn.Conv1d, and the plumbing
of the fla custom ops (autograd, vmap folding, torch.compile) on their CPU form against the PyTorch layers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from mixerlab.mixers import resolve_mixer
from mixerlab.ops.depthwise import depthwise_conv1d, use_library_depthwise_convs, use_shifted_depthwise_convs
from mixerlab.mixers import fla_ops


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


def _fla_inputs(gated: bool, batch: int = 2, length: int = 70) -> list[torch.Tensor]:
    """Time-first q, k (L2-normalised), v, beta (and log decay g) as the fla ops take them."""
    q, k = (nn.functional.normalize(torch.randn(batch, length, 2, 8), dim=-1) for _ in range(2))
    v, beta = torch.randn(batch, length, 2, 8), torch.rand(batch, length, 2)
    tensors = [q, k, v, beta] + ([-torch.rand(batch, length, 2)] if gated else [])
    return [t.double().requires_grad_() for t in tensors]


@pytest.mark.parametrize("gated", [False, True])
def test_fla_ops_pass_pytorchs_custom_op_checks(gated: bool) -> None:
    """Fake shapes, autograd registration and schema agree with the kernels (torch.library.opcheck)."""
    op = fla_ops.fla_gated_delta_rule if gated else fla_ops.fla_delta_rule
    torch.library.opcheck(op, _fla_inputs(gated), test_utils=("test_schema", "test_autograd_registration",
                                                              "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("gated", [False, True])
def test_fla_ops_fold_members_and_compile_without_graph_breaks(gated: bool, monkeypatch) -> None:
    """Under vmap the ops run the kernel once on all members folded into its batch and equal a per-member loop
    (outputs and gradients), and a compiled vmapped call traces them as one graph (the point of wrapping fla's
    compile-disabled kernels as custom ops)."""
    op = fla_ops.fla_gated_delta_rule if gated else fla_ops.fla_delta_rule
    name = "_reference_gated" if gated else "_reference_delta"
    kernel, batches = getattr(fla_ops, name), []
    monkeypatch.setattr(fla_ops, name, lambda *t: batches.append(t[0].shape[0]) or kernel(*t))
    members = [_fla_inputs(gated, batch=2, length=40) for _ in range(3)]
    stacked = [torch.stack([m[i] for m in members]).detach().requires_grad_() for i in range(len(members[0]))]

    def first_output(*tensors: torch.Tensor) -> torch.Tensor:
        return op(*tensors)[0]

    out = torch.vmap(first_output)(*stacked)
    assert batches == [6], "one kernel call on 3 members x batch 2"
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), stacked)
    for i, member in enumerate(members):
        ref = first_output(*member)
        torch.testing.assert_close(out[i], ref)
        ref_grads = torch.autograd.grad((ref * weights[i]).sum(), member)
        for g, g_ref in zip(grads, ref_grads):
            torch.testing.assert_close(g[i], g_ref)
    torch._dynamo.reset()
    compiled = torch.compile(torch.vmap(first_output), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*stacked), out)


@pytest.mark.parametrize("name", ["delta_net", "gated_delta_net"])
def test_fla_variants_train_under_vmap_like_the_templates(name: str) -> None:
    """On CPU the fla variants run the PyTorch op through the fla custom ops: same outputs and gradients as the
    template."""
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
