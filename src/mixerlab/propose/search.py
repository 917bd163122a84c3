"""The searching offline proposer: mutation and crossover over the design space (space.py), a quality-diversity
archive for parents, and the knowledge cards as priors.

Parents. The archive keeps, for each niche, the best experiment in it; an experiment's niche is the task where
it stands furthest above the run's median (a mixer that is good at Noisy Recall competes only with others good
at it), so a strong specialist survives beside the best all-rounder. The parent is an elite of a random niche;
with probability `crossover_rate` a second elite from another niche is crossed with it first.

Changes. One axis changes (two, with probability 0.3). An option's chance grows with what the run measured for
it (the mean change of the six-task mean when a child introduced it) or, before any measurement, with its cards'
claims for the parent's weakest tasks, and with the cards the retriever returns for those weaknesses.

Novelty. A vector already evaluated, proposed or in flight is never proposed again (by vector); the loop's
behavioural fingerprint then catches vectors that render different code with the same behaviour (inert).
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass

from mixerlab.knowledge import Retriever, card

from . import space
from .base import BaseProposer, ExperimentView, Proposal, ProposalContext, ProposerError, TASK_NAMES, unique_name
from .writer import InsightsWriter


def vector_of(e: ExperimentView) -> space.Choices | None:
    """The design-space vector of an experiment (baselines by name, searched candidates by their edits)."""
    if e.name in space.BASELINE_CHOICES:
        return dict(space.BASELINE_CHOICES[e.name])
    if e.kind == "candidate" and e.edits:
        return space.from_edits(e.edits)
    return None


def niche_of(e: ExperimentView, medians: dict[str, float]) -> str:
    gaps = {t: (e.score(t) or 0.0) - medians.get(t, 0.0) for t in TASK_NAMES if e.score(t) is not None}
    return max(gaps, key=lambda t: (gaps[t], t)) if gaps else "none"


def archive(history: list[ExperimentView]) -> dict[str, ExperimentView]:
    """niche -> its elite (the best mean score among the experiments in that niche)."""
    done = [e for e in history if e.status == "done" and e.success is not False and e.mean_score is not None
            and vector_of(e) is not None]
    if not done:
        return {}
    medians = {t: statistics.median([e.score(t) for e in done if e.score(t) is not None] or [0.0]) for t in TASK_NAMES}
    elites: dict[str, ExperimentView] = {}
    for e in done:
        niche = niche_of(e, medians)
        if niche not in elites or e.mean_score > elites[niche].mean_score:
            elites[niche] = e
    return elites


def option_effects(history: list[ExperimentView]) -> dict[tuple[str, str], dict[str, list[float]]]:
    """(axis, option) -> task (and "mean") -> changes measured when a child introduced that option."""
    by_name = {e.name: e for e in history}
    effects: dict[tuple[str, str], dict[str, list[float]]] = {}
    for child in history:
        parent = by_name.get(child.parent or "")
        if child.status != "done" or not child.scores or parent is None or not parent.scores:
            continue
        cv, pv = vector_of(child), vector_of(parent)
        if cv is None or pv is None:
            continue
        for axis, option in cv.items():
            if pv[axis] == option:
                continue
            per = effects.setdefault((axis, option), {})
            for task in TASK_NAMES:
                if child.score(task) is not None and parent.score(task) is not None:
                    per.setdefault(task, []).append(child.score(task) - parent.score(task))
            if child.mean_score is not None and parent.mean_score is not None:
                per.setdefault("mean", []).append(child.mean_score - parent.mean_score)
    return effects


def card_prior(axis: str, option: str, tasks: list[str], step: float = 0.02) -> dict[str, float]:
    """Expected change per task from the option's cards: +step where a card helps, -step where it hurts."""
    cards = [card(c) for c in space.AXES_BY_NAME[axis].option(option).cards]
    if option == space.DEFAULTS[axis] or not cards:
        return {t: 0.0 for t in tasks}
    return {t: step * statistics.fmean((t in c.helps) - (t in c.hurts) for c in cards) for t in tasks}


@dataclass
class _Plan:
    parent: ExperimentView
    mate: ExperimentView | None
    child: space.Choices
    cards: list[str]  # retrieved for the parent's weaknesses
    weak: list[str]


def tried_designs(history: list[ExperimentView]) -> set[tuple]:
    """The design-space vectors already in the history (as sorted item tuples): never proposed again."""
    return {tuple(sorted(v.items())) for e in history if (v := vector_of(e)) is not None}


class SearchProposer(BaseProposer):
    name = "search"

    def __init__(self, seed: int = 0, crossover_rate: float = 0.25, cards_per_proposal: int = 4,
                 retriever: Retriever | None = None) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.crossover_rate = crossover_rate
        self.k = cards_per_proposal
        self.retriever = retriever or Retriever(backend="lexical")

    # the loop asks these two before proposing ---------------------------------------------------------------

    @staticmethod
    def eligible(e: ExperimentView) -> bool:
        return vector_of(e) is not None

    def choose_parent(self, history: list[ExperimentView], ucb_c: float = 0.0) -> ExperimentView | None:
        """A random niche of the MAP-Elites archive (UCB is not used: the archive spreads the search)."""
        elites = archive(history)
        if not elites:
            return None
        niches = sorted(elites)
        return elites[self.rng.choice(niches)]

    # proposing ----------------------------------------------------------------------------------------------

    def propose(self, ctx: ProposalContext) -> Proposal:
        return self._proposal(ctx, refused=set())

    def repair(self, ctx: ProposalContext, proposal: Proposal, report: str) -> Proposal:
        """Rendered code that fails its checks is a fault of the space, not of the vector's idea: try another."""
        failed = space.from_edits(proposal.edits)
        refused = {tuple(sorted(failed.items()))} if failed else set()
        return self._proposal(ctx, refused=refused, repair_note=report)

    def _weights(self, ctx: ProposalContext, weak: list[str], retrieved: list[str]) -> dict[tuple[str, str], float]:
        effects = option_effects(ctx.history)
        weights = {}
        for axis in space.AXES:
            for option in axis.options:
                measured = effects.get((axis.name, option.name), {}).get("mean")
                if measured:
                    gain = 20 * statistics.fmean(measured)  # a +0.05 mean change: e^1 times likelier
                else:
                    prior = card_prior(axis.name, option.name, weak)
                    gain = 25 * sum(prior.values()) / max(1, len(weak)) + 0.5 * bool(set(option.cards) & set(retrieved))
                weights[(axis.name, option.name)] = math.exp(max(-3.0, min(3.0, gain)))
        return weights

    def _plan(self, ctx: ProposalContext, refused: set[tuple]) -> _Plan:
        parent = ctx.parent
        base = vector_of(parent)
        if base is None:
            raise ProposerError(f"parent {parent.name!r} is not in the design space (no vector); choose a searched "
                                "candidate or a baseline")
        weak = ctx.weak_tasks()
        retrieved = [h.card.id for h in self.retriever.for_weaknesses(weak, parent.code, k=self.k)] if weak else []
        weights = self._weights(ctx, weak, retrieved)
        taken = tried_designs(ctx.history) | refused
        elites = [e for e in archive(ctx.history).values() if e.name != parent.name]
        for _ in range(400):
            mate = None
            start = base
            if elites and self.rng.random() < self.crossover_rate:
                mate = self.rng.choice(elites)
                start = space.crossover(base, vector_of(mate), self.rng)
            changes = 2 if self.rng.random() < 0.3 else 1
            child = space.mutate(start, self.rng, weights, changes=changes)
            if tuple(sorted(child.items())) not in taken and child != space.canonical(base):
                return _Plan(parent, mate if mate and space.distance(child, base) > 0 else None, child, retrieved, weak)
        raise ProposerError(f"no new vector found near {parent.name!r} in 400 tries (its neighbourhood is exhausted)")

    def _proposal(self, ctx: ProposalContext, refused: set[tuple], repair_note: str = "") -> Proposal:
        plan = self._plan(ctx, refused)
        return self._write(ctx, plan, repair_note)

    def proposal_for(self, ctx: ProposalContext, child: space.Choices, weak_cards: list[str] | None = None) -> Proposal:
        """The proposal (code, Insights, targets) for a vector chosen elsewhere, e.g. by a language model."""
        parent = ctx.parent
        weak = ctx.weak_tasks()
        return self._write(ctx, _Plan(parent, None, space.canonical(child), weak_cards or [], weak))

    def _write(self, ctx: ProposalContext, plan: _Plan, repair_note: str = "") -> Proposal:
        base = vector_of(plan.parent)
        changed = [(a, base[a], plan.child[a]) for a in space.AXES_BY_NAME if base[a] != plan.child[a]]
        name = "delta_net_4layer_" + "_and_".join(f"{a}_{new}" for a, _, new in changed[:3])
        if name in ctx.taken_names and plan.parent.name != "delta_net_4layer":  # the same change on another parent
            name += "_on_" + plan.parent.name.removeprefix("delta_net_4layer_").removesuffix("_4layer")[:40]
        name = unique_name(name, ctx.taken_names)
        expected = self._expected(ctx, plan, changed)
        writer = _SearchWriter(ctx, plan, changed, expected, repair_note)
        return Proposal(name=name, code=space.render(plan.child), insights=writer.insights(), expected=expected,
                        edits=space.to_edits(plan.child))

    def _expected(self, ctx: ProposalContext, plan: _Plan, changed: list[tuple[str, str, str]]) -> dict[str, float]:
        effects = option_effects(ctx.history)
        out = {}
        for task in TASK_NAMES:
            now = plan.parent.score(task)
            if now is None:
                continue
            delta = 0.0
            for axis, _, new in changed:
                measured = effects.get((axis, new), {}).get(task)
                delta += statistics.fmean(measured) if measured else card_prior(axis, new, [task])[task]
            out[task] = round(min(1.0, max(0.0, now + delta)), 4)
        return out


class _SearchWriter(InsightsWriter):
    """The search's sections: the axes changed, the archive and the cards drawn on (English only)."""

    def __init__(self, ctx: ProposalContext, plan: _Plan, changed: list[tuple[str, str, str]],
                 expected: dict[str, float], repair_note: str) -> None:
        super().__init__(ctx, expected, repair_note)
        self.zh = False
        self.parent, self.plan, self.changed = plan.parent, plan, changed

    def observations(self) -> str:
        lines = [self.parent_line()]
        if self.plan.weak:
            lines.append(f"• Weakest against the best so far: {', '.join(self.plan.weak)}.")
        elites = archive(self.ctx.history)
        if elites:
            lines.append("• Archive (niche: elite, mean): " + "; ".join(
                f"{n}: `{e.name}` {e.mean_score:.4f}" for n, e in sorted(elites.items())) + ".")
        done = self.ctx.evaluated
        lines.append(f"• {len(done)} architectures evaluated; {sum(e.status == 'inert' for e in self.ctx.history)} inert, "
                     f"{sum(e.status == 'failed' for e in self.ctx.history)} failed; {self.noise_summary()}.")
        return "\n".join(lines)

    def code_issues(self) -> str:
        lines = []
        for i, (axis, old, new) in enumerate(self.changed, 1):
            a = space.AXES_BY_NAME[axis]
            lines.append(f"{i}. `{axis}` ({a.question}): the parent has `{old}`, that is, {a.option(old).summary}.")
        if self.plan.mate:
            lines.append(f"{len(lines) + 1}. Crossed with `{self.plan.mate.name}` (another niche's elite) before the change.")
        if self.repair_note:
            lines.append(f"{len(lines) + 1}. The previous vector failed its checks ({self.repair_note[:200]}); this is another.")
        return "\n".join(lines)

    def reasoning(self) -> str:
        lines = []
        drawn: list[str] = []
        for axis, old, new in self.changed:
            option = space.AXES_BY_NAME[axis].option(new)
            lines.append(f"• {axis}: `{old}` -> `{new}`: {option.summary}.")
            drawn += [c for c in option.cards if c not in drawn]
        drawn += [c for c in self.plan.cards if c not in drawn]
        lines.append("• Cards drawn on: " + "; ".join(
            f"[{c}] {card(c).name} ({card(c).citation.authors} {card(c).citation.year})" for c in drawn) + ".")
        for c in drawn[:3]:
            k = card(c)
            helped = [t for t in self.plan.weak if t in k.helps]
            if helped:
                lines.append(f"• [{c}] for {', '.join(helped)}: {k.helps[helped[0]].why} ({k.helps[helped[0]].tag()}).")
        lines.append("• Rendered from the design space (`mixerlab.propose.space`): causal, chunkwise and linear in T; "
                     "the checker verifies it before training.")
        return "\n".join(lines)

    def targets_basis(self) -> str:
        return ("Targets = parent + the options' changes measured in this run where they were tried, else the cards' "
                "claims (+-0.02 per task a card says the option helps or hurts).")

    def lessons(self) -> str:
        effects = option_effects(self.ctx.history)
        lines = []
        ranked = sorted(((statistics.fmean(v["mean"]), k, len(v["mean"])) for k, v in effects.items() if v.get("mean")),
                        reverse=True)
        for value, (axis, option), n in ranked[:3]:
            lines.append(f"• {axis}={option}: mean change {value:+.4f} over {n} child(ren).")
        for value, (axis, option), n in ranked[-2:] if len(ranked) > 3 else []:
            lines.append(f"• {axis}={option}: mean change {value:+.4f} over {n} child(ren) (worst so far).")
        for e in [e for e in self.ctx.history if e.kind == "candidate" and e.status in ("failed", "inert")][-3:]:
            lines.append(f"• `{e.name}` {e.status}: {e.failure_reason[:140]}")
        if not lines:
            lines.append("• No searched candidate measured yet: options are weighted by their cards' claims for the "
                         "parent's weakest tasks.")
        return "\n".join(lines)


__all__ = ["SearchProposer", "archive", "card_prior", "niche_of", "option_effects", "vector_of"]
