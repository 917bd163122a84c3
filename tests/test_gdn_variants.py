"""benchmarks/probes/gdn_variants.py: the Gated DeltaNet probes are the baseline with exactly one part switched off or swapped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.probes import gdn_variants as variants
from mixerlab.mixers import builtin_spec, resolve_mixer

def build(path_or_name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return resolve_mixer(path_or_name).factory()(32)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("variants")
    template = variants.TEMPLATE.read_text()
    for name in variants.VARIANTS:
        (out / f"{name}.py").write_text(variants.variant_source(name, template))
    return out


def test_every_variant_builds_and_keeps_the_shape(files: Path) -> None:
    x = torch.randn(2, 21, 32)
    for name in variants.VARIANTS:
        assert build(str(files / f"{name}.py"))(x).shape == x.shape, name


def test_paired_variants_start_from_the_baselines_weights(files: Path) -> None:
    base = build("gated_delta_net").state_dict()
    for name in ("gdn_no_decay", "gdn_no_gate", "gdn_sigmoid_gate"):
        probe = build(str(files / f"{name}.py")).state_dict()
        assert all(torch.equal(base[k], probe[k]) for k in base), name


def test_no_decay_is_the_baseline_with_its_decay_at_zero(files: Path) -> None:
    x = torch.randn(2, 21, 32)
    base, probe = build("gated_delta_net"), build(str(files / "gdn_no_decay.py"))
    assert not torch.allclose(base(x), probe(x)), "the decay should matter at init"
    with torch.no_grad():
        base.A_log.fill_(-1e4)  # exp(A_log) = 0: every step's decay factor is exactly 1
    torch.testing.assert_close(base(x), probe(x))


def test_sigmoid_gate_is_the_baseline_with_sigmoid_for_silu(files: Path) -> None:
    x = torch.randn(2, 21, 32)
    base, probe = build("gated_delta_net"), build(str(files / "gdn_sigmoid_gate.py"))
    assert not torch.allclose(base(x), probe(x)), "the gate's form should matter at init"
    norm = base.o_norm  # the baseline with its gate swapped by hand must give the probe's output
    norm.forward = lambda o, gate: torch.nn.RMSNorm.forward(norm, o) * torch.sigmoid(gate)
    torch.testing.assert_close(base(x), probe(x))


def test_a_template_edit_that_no_longer_matches_fails_loudly() -> None:
    with pytest.raises(SystemExit, match="gdn_no_gate"):
        variants.variant_source("gdn_no_gate", builtin_spec("gated_delta_net").source.replace("self.g_proj(x)", "gate"))
