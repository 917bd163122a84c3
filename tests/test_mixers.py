"""The baselines: chunkwise forms equal the per-step recurrences (outputs and gradients), causality, loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixerlab.mixers import MixerLoadError, preflight, resolve_mixer
from mixerlab.mixers.delta_net import DeltaNet, delta_rule_chunkwise
from mixerlab.mixers.gated_delta_net import GatedDeltaNet, gated_delta_rule_chunkwise
from mixerlab.ops import delta_rule_recurrent, gated_delta_rule_recurrent


def random_inputs(length: int, seed: int, dk: int = 16, dv: int = 24):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(2, 3, length, dk, generator=gen), dim=-1)
    k = F.normalize(torch.randn(2, 3, length, dk, generator=gen), dim=-1)
    v = torch.randn(2, 3, length, dv, generator=gen)
    beta = torch.rand(2, 3, length, generator=gen)
    g = -torch.rand(2, 3, length, generator=gen) * 0.7
    return [t.requires_grad_() for t in (q, k, v, beta, g)]


def assert_close_with_grads(fast, slow, inputs) -> None:
    out_fast, out_slow = fast(*inputs), slow(*inputs)
    assert out_fast.shape == out_slow.shape
    torch.testing.assert_close(out_fast, out_slow, rtol=1e-4, atol=1e-5)
    weights = torch.randn_like(out_fast)
    grads_fast = torch.autograd.grad((out_fast * weights).sum(), inputs, allow_unused=True)
    grads_slow = torch.autograd.grad((out_slow * weights).sum(), inputs, allow_unused=True)
    for gf, gs in zip(grads_fast, grads_slow):
        if gs is None:
            assert gf is None or gf.abs().max() == 0
            continue
        torch.testing.assert_close(gf, gs, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("length", [1, 16, 33, 64, 100, 128])
def test_delta_rule_chunk_equals_recurrence(length: int) -> None:
    q, k, v, beta, _ = random_inputs(length, seed=length)
    assert_close_with_grads(
        lambda q, k, v, b: delta_rule_chunkwise(q, k, v, b, chunk_size=16),
        lambda q, k, v, b: delta_rule_recurrent(q, k, v, b)[0],
        [q, k, v, beta],
    )


@pytest.mark.parametrize("length", [1, 16, 33, 64, 100, 128])
def test_gated_delta_rule_chunk_equals_recurrence(length: int) -> None:
    inputs = random_inputs(length, seed=100 + length)
    assert_close_with_grads(
        lambda q, k, v, b, g: gated_delta_rule_chunkwise(q, k, v, b, g, chunk_size=16),
        lambda q, k, v, b, g: gated_delta_rule_recurrent(q, k, v, b, g)[0],
        inputs,
    )


def test_chunk_size_does_not_change_the_result() -> None:
    q, k, v, beta, g = random_inputs(96, seed=7)
    outs = [gated_delta_rule_chunkwise(q, k, v, beta, g, chunk_size=c) for c in (8, 32, 64, 96)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [DeltaNet, GatedDeltaNet])
def test_layer_with_recurrence_equals_layer_with_chunks(cls, monkeypatch) -> None:
    torch.manual_seed(0)
    layer = cls(d_model=32, num_heads=2, chunk_size=8)
    x = torch.randn(2, 21, 32)
    fast = layer(x)
    if cls is DeltaNet:
        monkeypatch.setattr(layer, "mix", lambda q, k, v, b: delta_rule_recurrent(q, k, v, b)[0])
    else:
        monkeypatch.setattr(layer, "mix", lambda q, k, v, b, g: gated_delta_rule_recurrent(q, k, v, b, g)[0])
    torch.testing.assert_close(fast, layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [DeltaNet, GatedDeltaNet])
@pytest.mark.parametrize("t", [0, 17, 63, 64, 90])
def test_layers_are_causal(cls, t: int) -> None:
    torch.manual_seed(1)
    layer = cls(d_model=32, num_heads=4, chunk_size=16)
    x = torch.randn(3, 100, 32)
    y = x.clone()
    y[:, t + 1 :] = torch.randn_like(y[:, t + 1 :]) * 3
    out_x, out_y = layer(x), layer(y)
    torch.testing.assert_close(out_x[:, : t + 1], out_y[:, : t + 1], rtol=1e-5, atol=1e-6)
    assert (out_x[:, t + 1 :] - out_y[:, t + 1 :]).abs().max() > 1e-3, "later outputs do see the change"


def test_parameter_counts_at_width_128() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(DeltaNet(128)) == 67_616
    assert count(GatedDeltaNet(128)) == 134_216


def test_resolve_and_load(tmp_path) -> None:
    spec = resolve_mixer("delta_net")
    assert spec.name == "delta_net_4layer" and spec.load_class().__name__ == "DeltaNet"
    assert resolve_mixer("gated_delta_net").name == "gated_delta_net_4layer"
    copy = tmp_path / "my_mixer.py"
    copy.write_text(spec.source)
    loaded = resolve_mixer(str(copy))
    assert loaded.code_hash == spec.code_hash and loaded.name == "my_mixer"
    preflight(loaded, 64)


@pytest.mark.parametrize(
    "source, message",
    [
        ("def broken(:\n", "syntax error"),
        ("import torch\nx = 1\n", "defines no nn.Module class"),
        ("raise RuntimeError('boom')\n", "importing the mixer raised RuntimeError: boom"),
        ("from torch import nn\nclass DeltaNet(nn.Module):\n    def __init__(self, d_model, heads):\n        super().__init__()\n",
         "the constructor must accept d_model"),
        ("import torch\nfrom torch import nn\nclass DeltaNet(nn.Module):\n    def forward(self, x):\n        return x[:, :, :3]\n"
         "    def __init__(self, d_model):\n        super().__init__()\n", "must map"),
    ],
)
def test_bad_mixer_files_are_explained(tmp_path, source: str, message: str) -> None:
    path = tmp_path / "bad.py"
    path.write_text(source)
    with pytest.raises(MixerLoadError, match=message):
        preflight(resolve_mixer(str(path)), 16)


def test_unknown_mixer_names() -> None:
    with pytest.raises(MixerLoadError, match="unknown mixer 'deltanet'"):
        resolve_mixer("deltanet")
    with pytest.raises(MixerLoadError, match="does not exist"):
        resolve_mixer("missing/file.py")


def test_parsing_is_safe_from_several_threads() -> None:
    """Proposal threads parse candidates at once; CPython 3.11's AST conversion is not re-entrant across
    threads when a finaliser switches threads mid-parse (SystemError: recursion depth mismatch)."""
    import threading
    import time

    from mixerlab.mixers import template_source
    from mixerlab.mixers.loading import parse_source

    class CycleWithFinaliser:  # cyclic garbage whose __del__ yields: the GC then switches threads mid-parse
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            time.sleep(0)

    source, errors = template_source("gated_delta_net"), []

    def parse_many() -> None:
        try:
            for _ in range(60):
                for _ in range(50):
                    CycleWithFinaliser()
                parse_source(source)
        except SystemError as err:
            errors.append(err)

    threads = [threading.Thread(target=parse_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_code_hash_ignores_fields_newer_pythons_add(monkeypatch) -> None:
    """A result computed under Python 3.12 (the GPU machine) must be found under 3.11 (CI) and back:
    3.12 gives every function and class an empty `type_params` field; the hash must not see it."""
    import ast

    from mixerlab.mixers.loading import normalized_code

    spec = resolve_mixer("gated_delta_net")
    before = normalized_code(spec.source)
    original_parse = ast.parse

    def parse_like_312(*args, **kwargs):
        tree = original_parse(*args, **kwargs)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                node.type_params = []
        return tree

    for cls in (ast.FunctionDef, ast.ClassDef):
        if "type_params" not in cls._fields:
            monkeypatch.setattr(cls, "_fields", cls._fields + ("type_params",))
    monkeypatch.setattr(ast, "parse", parse_like_312)
    after = normalized_code(spec.source)
    assert "FunctionDef(" in after and after == before
    assert normalized_code(spec.source.replace("beta", "gamma")) != before  # and it still sees real changes
