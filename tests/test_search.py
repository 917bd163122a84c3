"""The searching offline proposer: the quality-diversity archive keeps specialists, proposals are new vectors
near their parent with grounded Insights, repairs move to another vector, and the loop runs it end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mixerlab.check.static import static_check
from mixerlab.insights import valid_name
from mixerlab.mixers import template_source
from mixerlab.propose import ExperimentView, ProposalContext, space
from mixerlab.propose.base import TASK_NAMES
from mixerlab.propose.search import SearchProposer, archive, option_effects, vector_of
from mixerlab.store import Store


def view(name: str, scores: dict[str, float], edits: list[str] | None = None, parent: str | None = None,
         kind: str = "candidate") -> ExperimentView:
    full = {t: {"mean": scores.get(t, 0.5), "std": 0.0, "seeds": [scores.get(t, 0.5)]} for t in TASK_NAMES}
    mean = sum(v["mean"] for v in full.values()) / len(full)
    code = space.render(space.from_edits(edits or []) or {}) if kind == "candidate" else template_source("delta_net")
    return ExperimentView(name=name, kind=kind, parent=parent, edits=edits or [], status="done", success=True,
                          scores=full, mean_score=mean, code=code)


def history() -> list[ExperimentView]:
    dn = view("delta_net_4layer", {"fuzzy_recall": 0.6}, kind="baseline")
    gdn = view("gated_delta_net_4layer", {"fuzzy_recall": 0.7, "noisy_recall": 0.4}, kind="baseline")
    gdn.code = template_source("gated_delta_net")
    specialist = view("delta_net_4layer_conv_8", {"fuzzy_recall": 0.95, "compress": 0.3}, ["conv=8"], "delta_net_4layer")
    allround = view("delta_net_4layer_output_gate_silu", {t: 0.6 for t in TASK_NAMES}, ["output_gate=silu"],
                    "delta_net_4layer")
    return [dn, gdn, specialist, allround]


def context(hist: list[ExperimentView], parent: ExperimentView) -> ProposalContext:
    return ProposalContext(history=hist, parent=parent, references=[], iteration=len(hist),
                           taken_names={e.name for e in hist})


def test_vectors_of_baselines_and_searched_candidates() -> None:
    hist = history()
    assert vector_of(hist[0]) == space.canonical({})
    assert vector_of(hist[1])["decay"] == "data_dependent"
    assert vector_of(hist[2])["conv"] == "8"
    catalog_child = ExperimentView(name="x", kind="candidate", parent="delta_net_4layer", edits=["tanh_on_error"],
                                   status="done", success=True, scores={}, mean_score=None)
    assert vector_of(catalog_child) is None and not SearchProposer.eligible(catalog_child)


def test_the_archive_keeps_a_specialist_beside_a_better_all_rounder() -> None:
    elites = archive(history())
    names = {e.name for e in elites.values()}
    assert "delta_net_4layer_conv_8" in names  # worse mean, but the best at Fuzzy Recall
    assert elites["fuzzy_recall"].name == "delta_net_4layer_conv_8"
    assert max(e.mean_score for e in elites.values()) == max(e.mean_score for e in history())


def test_option_effects_are_measured_against_the_parent() -> None:
    effects = option_effects(history())
    assert effects[("conv", "8")]["fuzzy_recall"] == [pytest.approx(0.35)]
    assert effects[("output_gate", "silu")]["mean"] == [pytest.approx(0.6 - history()[0].mean_score)]


@pytest.mark.parametrize("seed", range(5))
def test_a_proposal_is_a_new_nearby_vector_with_grounded_insights(seed: int) -> None:
    hist = history()
    proposer = SearchProposer(seed=seed, crossover_rate=0.0)  # a mutation alone: one axis, or two (p = 0.3)
    parent = proposer.choose_parent(hist)
    assert parent is not None and parent.name in {e.name for e in archive(hist).values()}
    proposal = proposer.propose(context(hist, parent))
    child = space.from_edits(proposal.edits)
    assert child is not None and child not in [vector_of(e) for e in hist]
    assert 1 <= space.distance(child, vector_of(parent)) <= 2  # the bound it had could never fail (<= 2 x axes)
    assert valid_name(proposal.name) and proposal.name.startswith("delta_net_4layer_")
    assert static_check(proposal.code)[0].passed
    assert proposal.code == space.render(child)
    assert re.search(r"Cards drawn on: \[[a-z_0-9]+\]", proposal.insights.reasoning)
    assert set(proposal.expected) == set(TASK_NAMES) and all(0 <= v <= 1 for v in proposal.expected.values())
    for section in ("observations", "code_issues", "reasoning", "expected", "lessons"):
        assert getattr(proposal.insights, section).strip()


def test_repeated_proposals_never_repeat_a_vector_and_repairs_move_on() -> None:
    hist = history()
    proposer = SearchProposer(seed=7)
    seen = {tuple(sorted(vector_of(e).items())) for e in hist}
    for i in range(12):
        parent = proposer.choose_parent(hist)
        proposal = proposer.propose(context(hist, parent))
        key = tuple(sorted(space.from_edits(proposal.edits).items()))
        assert key not in seen
        seen.add(key)
        hist.append(view(proposal.name, {t: 0.5 for t in TASK_NAMES}, proposal.edits, parent.name))
    parent = hist[0]
    first = proposer.propose(context(hist, parent))
    again = proposer.repair(context(hist, parent), first, "checks failed: cost")
    assert space.from_edits(again.edits) != space.from_edits(first.edits)
    assert "failed its checks" in again.insights.code_issues


@pytest.mark.slow
def test_discover_with_the_search_proposer_end_to_end(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"  # `smoke`: the loop's plumbing with this proposer, not its scores
    proc = subprocess.run([sys.executable, "-m", "mixerlab.cli", "discover", "--proposer", "search", "--search-seed", "3",
                           "--device", "cpu", "--profile", "smoke", "--iterations", "1", "--run-dir", str(run_dir),
                           "--cache", str(tmp_path / "cache.sqlite")],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = Store(f"sqlite:///{run_dir / 'mixerlab.db'}", read_only=True).experiments()
    candidates = [r for r in rows if r.kind == "candidate"]
    assert len(candidates) == 1 and candidates[0].proposer == "search"
    row = candidates[0]
    assert space.from_edits(row.edits) is not None and row.status in ("done", "inert"), row.failure_reason
    assert "Cards drawn on" in row.insights["reasoning"]
    if row.status == "done":
        assert set(row.scores) == set(TASK_NAMES)
