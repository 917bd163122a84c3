"""The design space: at least 40 options, over 1,000 distinct candidates that pass the static checks, the
defaults render DeltaNet exactly, and rendered candidates are causal, finite and within the parameter budget."""

from __future__ import annotations

import random

import pytest
import torch

from mixerlab.check.static import static_check
from mixerlab.mixers import builtin_spec
from mixerlab.mixers.loading import find_mixer_class, load_module
from mixerlab.propose import space


def build(source: str, tag: str, seed: int = 0) -> torch.nn.Module:
    cls = find_mixer_class(load_module(source, f"{tag}.py", f"space_test_{tag}"), None, f"{tag}.py")
    torch.manual_seed(seed)
    return cls(d_model=128)


def test_the_space_has_at_least_forty_options_on_orthogonal_axes() -> None:
    assert space.option_count() >= 40
    assert len({a.name for a in space.AXES}) == len(space.AXES)
    assert all(len(a.options) >= 2 for a in space.AXES)


def test_over_a_thousand_distinct_candidates_pass_the_static_checks() -> None:
    rng, sources = random.Random(0), set()
    while len(sources) < 1000:
        source = space.render(space.random_vector(rng))
        if source in sources:
            continue
        result, _ = static_check(source)
        assert result.passed, result.message
        sources.add(source)
    assert len(sources) == 1000


def test_the_defaults_render_deltanet_with_its_weights_and_outputs() -> None:
    reference, rendered = build(builtin_spec("delta_net").source, "ref", 3), build(space.render({}), "defaults", 3)
    assert [n for n, _ in reference.named_parameters()] == [n for n, _ in rendered.named_parameters()]
    x = torch.randn(2, 70, 128)
    assert torch.equal(reference(x), rendered(x))


@pytest.mark.parametrize("seed", range(6))
def test_rendered_candidates_are_causal_finite_trainable_and_within_budget(seed: int) -> None:
    rng = random.Random(100 + seed)
    vector = space.mutate(space.random_vector(rng), rng, changes=2)
    mixer = build(space.render(vector), f"v{seed}")
    params = sum(p.numel() for p in mixer.parameters())
    assert 0.5 * 67_616 <= params <= 1.5 * 67_616, space.describe(vector)
    x = torch.randn(2, 90, 128, requires_grad=True)
    y = mixer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None for p in mixer.parameters()), space.describe(vector)
    changed = x.detach().clone()
    changed[:, 60:] += torch.randn_like(changed[:, 60:])
    with torch.no_grad():
        assert torch.allclose(mixer(x.detach())[:, :60], mixer(changed)[:, :60], atol=1e-5), space.describe(vector)


def test_vectors_round_trip_through_edits_and_equivalent_choices_fold() -> None:
    vector = space.canonical({"decay": "data_dependent", "conv": "8", "heads": "2"})
    assert space.from_edits(space.to_edits(vector)) == vector
    assert space.to_edits({}) == []
    assert space.canonical({"conv": "0", "conv_on": "qk"}) == space.canonical({"conv": "0"})
    assert space.from_edits(["tanh_on_error"]) is None  # a catalog edit is not a vector
    with pytest.raises(KeyError, match="axis 'decay' has no option 'slow'"):
        space.canonical({"decay": "slow"})
    with pytest.raises(KeyError, match="unknown design axes"):
        space.canonical({"colour": "red"})


def test_mutation_changes_the_asked_number_of_axes_and_crossover_mixes_parents() -> None:
    rng = random.Random(1)
    base = space.canonical({})
    for changes in (1, 2, 3):
        child = space.mutate(base, rng, changes=changes)
        assert space.distance(base, child) in range(1, changes + 1)  # conv=0 may fold conv_on back
    other = space.canonical({"decay": "fixed_multiscale", "output_gate": "silu", "heads": "8"})
    for _ in range(20):
        child = space.crossover(base, other, rng)
        assert all(child[a] in (base[a], other[a]) for a in space.AXES_BY_NAME)
    weights = {("decay", "data_dependent"): 1e6}  # every axis changes, and decay goes where the weight is
    assert all(space.mutate(base, random.Random(s), weights, changes=len(space.AXES))["decay"] == "data_dependent"
               for s in range(20))


@pytest.mark.parametrize("edit, card", [("position=data_rope", "mamba3"), ("read_correction=comba", "comba")])
def test_the_2025_2026_mechanisms_render_as_causal_trainable_options(edit: str, card: str) -> None:
    """Mamba-3's data-dependent rotation (angles summed over the prefix) and Comba's read correction are options of
    the space, named for their cards; each renders a candidate that passes the static checks, stays causal and
    trains, and retrieval sees that a parent already has it."""
    from mixerlab.knowledge.retrieve import implemented_by

    axis, option = edit.split("=")
    assert card in space.AXES_BY_NAME[axis].option(option).cards
    source = space.render(space.from_edits([edit]))
    result, _ = static_check(source)
    assert result.passed, result.message
    mixer = build(source, option)
    x = torch.randn(2, 90, 128, requires_grad=True)
    mixer(x).square().mean().backward()
    assert all(p.grad is not None for p in mixer.parameters())
    changed = x.detach().clone()
    changed[:, 60:] += torch.randn_like(changed[:, 60:])
    with torch.no_grad():
        assert torch.allclose(mixer(x.detach())[:, :60], mixer(changed)[:, :60], atol=1e-5)
        assert not torch.allclose(mixer(x.detach())[:, 60:], mixer(changed)[:, 60:], atol=1e-3)
    assert card in implemented_by(source) and card not in implemented_by(space.render({}))
