"""The offline proposer: picks an edit from the catalog (propose/edits.py) for the chosen parent and writes
the Insights document from the run's own numbers.

Choice: every edit that is compatible with the parent's edits, applicable to its code and not yet tried on
it is scored by its expected gain on the tasks where the parent has the most room (best score so far minus
the parent's), using the edit's *measured* effect in this run where it has been tried (mean change against
the parent, per task) and its prior otherwise, plus a small bonus for edits never tried. Text: sentence
frames (English or Chinese) filled with the actual scores, deltas, noise and history.
"""

from __future__ import annotations

import difflib
import statistics

from .base import BaseProposer, ExperimentView, Proposal, ProposalContext, ProposerError, TASK_NAMES, unique_name
from .edits import EDITS, EDITS_BY_NAME, Edit, EditNotApplicable, compatible
from .writer import InsightsWriter

ZH_COLUMN = {"compress": "Compress", "context_recall": "Context Recall", "fuzzy_recall": "Fuzzy Recall",
             "memorize": "Memorize", "noisy_recall": "Noisy Recall", "selective_copy": "Selective Copy"}


def measured_effects(history: list[ExperimentView]) -> dict[str, dict[str, list[float]]]:
    """edit -> task -> list of (child - parent) score changes, from experiments that added that edit."""
    by_name = {e.name: e for e in history}
    effects: dict[str, dict[str, list[float]]] = {}
    for child in history:
        if child.status != "done" or not child.edits or not child.scores or child.parent not in by_name:
            continue
        parent = by_name[child.parent]
        if not parent.scores:
            continue
        per_task = effects.setdefault(child.edits[-1], {})
        for task in TASK_NAMES:
            if child.score(task) is not None and parent.score(task) is not None:
                per_task.setdefault(task, []).append(child.score(task) - parent.score(task))
    return effects


def failures_of(history: list[ExperimentView]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in history:
        if e.status in ("failed", "inert") and e.edits:  # an edit that did nothing here is no better than one that broke
            counts[e.edits[-1]] = counts.get(e.edits[-1], 0) + 1
    return counts


def best_scores(history: list[ExperimentView]) -> dict[str, tuple[float, str]]:
    best: dict[str, tuple[float, str]] = {}
    for e in history:
        for task in TASK_NAMES:
            score = e.score(task) if e.status == "done" else None
            if score is not None and (task not in best or score > best[task][0]):
                best[task] = (score, e.name)
    return best


class CatalogProposer(BaseProposer):
    name = "catalog"

    def eligible(self, experiment: ExperimentView) -> bool:
        """Catalog edits apply to DeltaNet-lineage code: the baseline and candidates made of edits."""
        return experiment.name == "delta_net_4layer" or (experiment.kind == "candidate" and bool(experiment.edits))

    def __init__(self, exploration_bonus: float = 0.01) -> None:
        self.exploration_bonus = exploration_bonus

    # choosing ------------------------------------------------------------------------------------

    def ranked_edits(self, ctx: ProposalContext, exclude: set[str] = frozenset()) -> list[tuple[float, Edit, dict[str, float]]]:
        parent = ctx.parent
        effects = measured_effects(ctx.history)
        failed = failures_of(ctx.history)
        best = best_scores(ctx.history)
        ranked = []
        for edit in EDITS:
            if edit.name in exclude or edit.name in parent.edits or (parent.name, edit.name) in ctx.claimed:
                continue
            if not compatible(edit, parent.edits):
                continue
            try:
                edit.apply(parent.code)
            except EditNotApplicable:
                continue
            expected = {}
            gain = 0.0
            for task in TASK_NAMES:
                measured = effects.get(edit.name, {}).get(task)
                delta = statistics.fmean(measured) if measured else edit.priors.get(task, 0.0)
                expected[task] = delta
                room = max(0.0, best.get(task, (0.0, ""))[0] - (parent.score(task) or 0.0)) + 0.01
                gain += room * delta
            if edit.name not in effects:
                gain += self.exploration_bonus
            gain -= 0.02 * failed.get(edit.name, 0)
            ranked.append((gain, edit, expected))
        ranked.sort(key=lambda item: (-item[0], item[1].name))
        return ranked

    def propose(self, ctx: ProposalContext) -> Proposal:
        return self._proposal(ctx, exclude=set())

    def repair(self, ctx: ProposalContext, proposal: Proposal, report: str) -> Proposal:
        """A catalog edit that fails its checks is not patched: the next-best edit is proposed instead."""
        failed = set(proposal.edits[-1:])
        ctx.claimed |= {(ctx.parent.name, e) for e in failed}
        return self._proposal(ctx, exclude=failed, repair_note=report)

    def _proposal(self, ctx: ProposalContext, exclude: set[str], repair_note: str = "") -> Proposal:
        ranked = self.ranked_edits(ctx, exclude)
        if not ranked:
            raise ProposerError(f"no catalog edit left for parent {ctx.parent.name!r} (all tried or incompatible)")
        _, edit, deltas = ranked[0]
        code = edit.apply(ctx.parent.code)
        parent = ctx.parent
        expected = {t: round(min(1.0, max(0.0, (parent.score(t) or 0.0) + deltas[t])), 4) for t in TASK_NAMES
                    if parent.score(t) is not None}
        base = f"delta_net_4layer_{edit.name}"
        if base in ctx.taken_names and parent.edits:
            base = f"{base}_after_{parent.edits[-1]}"
        name = unique_name(base, ctx.taken_names)
        writer = _Writer(ctx, edit, code, deltas, expected, repair_note)
        return Proposal(name=name, code=code, insights=writer.insights(), expected=expected,
                        edits=[*parent.edits, edit.name])


class _Writer(InsightsWriter):
    """The catalog's sections: which edit, the line it changes, what this run measured for it."""

    def __init__(self, ctx: ProposalContext, edit: Edit, code: str, deltas: dict[str, float],
                 expected: dict[str, float], repair_note: str) -> None:
        super().__init__(ctx, expected, repair_note)
        self.edit, self.code, self.deltas = edit, code, deltas
        self.effects = measured_effects(ctx.history)

    def col(self, task: str) -> str:
        return ZH_COLUMN[task] if self.zh else super().col(task)

    def change(self, task: str) -> float:
        return self.deltas[task]  # the edit's change, which the target clips to [0, 1]

    def observations(self) -> str:
        p, lines = self.parent, [self.parent_line()]
        best = best_scores(self.ctx.history)
        gaps = sorted(((best[t][0] - (p.score(t) or 0.0), t) for t in best if p.score(t) is not None), reverse=True)
        top = [f"{self.col(t)} ({p.score(t):.3f} vs {best[t][0]:.3f} by `{best[t][1]}`)" for g, t in gaps[:3] if g > 0]
        if top:
            lines.append(self.t(f"• Largest gaps to the best score so far: {'; '.join(top)}.",
                                f"• 与当前最优分数差距最大的任务：{'；'.join(top)}。"))
        else:
            lines.append(self.t("• The parent holds the best score on every task so far.", "• 父架构目前在所有任务上都是最优。"))
        strong = [self.col(t) for t in TASK_NAMES if (p.score(t) or 0) >= 0.99]
        if strong:
            lines.append(self.t(f"• Near-perfect (>= 0.99) and to be kept: {', '.join(strong)}.",
                                f"• 已接近满分（>= 0.99）、需保持的任务：{'、'.join(strong)}。"))
        done = self.ctx.evaluated
        failed = [e for e in self.ctx.history if e.status == "failed"]
        ranked = sorted((e for e in done if e.mean_score is not None), key=lambda e: -e.mean_score)
        if ranked:
            lines.append(self.t(
                f"• {len(done)} architectures evaluated, {len(failed)} failed; best mean so far `{ranked[0].name}` "
                f"({ranked[0].mean_score:.4f}); {self.noise_summary()}.",
                f"• 已评估 {len(done)} 个架构，失败 {len(failed)} 个；当前最优均值为 `{ranked[0].name}`（{ranked[0].mean_score:.4f}）；"
                f"{self.noise_summary()}。"))
        return "\n".join(lines)

    def code_issues(self) -> str:
        code_lines = self.parent.code.splitlines()
        import re

        pattern = re.compile(self.edit.anchor)
        lineno, line = next(((i + 1, l.strip()) for i, l in enumerate(code_lines) if pattern.match(l)), (0, ""))
        issues = [f"1. {self.edit.issue['zh' if self.zh else 'en'].format(lineno=lineno, line=line[:100])}"]
        targets = sorted(self.deltas.items(), key=lambda kv: -kv[1])
        hoped = [self.col(t) for t, d in targets if d > 0][:3]
        if hoped:
            issues.append(self.t(f"2. This matters most for {', '.join(hoped)}, where the parent scores "
                                 + ", ".join(f"{self.parent.score(t):.3f}" for t, d in targets if d > 0 and self.parent.score(t) is not None)
                                 + ".",
                                 f"2. 这一问题对 {'、'.join(hoped)} 影响最大，父架构在这些任务上的得分为 "
                                 + "、".join(f"{self.parent.score(t):.3f}" for t, d in targets if d > 0 and self.parent.score(t) is not None)
                                 + "。"))
        if self.parent.edits:
            issues.append(self.t(f"3. The parent already carries {', '.join(self.parent.edits)}; this change is compatible and composes with them.",
                                 f"3. 父架构已包含 {'、'.join(self.parent.edits)}；本次修改与之兼容，可叠加。"))
        if self.repair_note:
            issues.append(self.t(f"4. The previous proposal failed its checks ({self.repair_note[:200]}); this is the next-ranked change.",
                                 f"4. 上一个提案未通过检查（{self.repair_note[:200]}）；这是排名其次的修改。"))
        return "\n".join(issues)

    def reasoning(self) -> str:
        title = self.edit.title["zh" if self.zh else "en"]
        mechanism = self.edit.mechanism["zh" if self.zh else "en"]
        diff = [l for l in difflib.unified_diff(self.parent.code.splitlines(), self.code.splitlines(), lineterm="", n=0)
                if l.startswith(("+", "-")) and not l.startswith(("+++", "---"))]
        shown = "\n".join(f"    {l}" for l in diff[:12]) + ("\n    ..." if len(diff) > 12 else "")
        return self.t(f"We {title}.\n• {mechanism}.\n• The change ({len(diff)} changed lines):\n{shown}\n"
                      f"• Causality, sub-quadratic cost and the interface are unchanged; the checker verifies them before training.",
                      f"我们{title}。\n• {mechanism}。\n• 代码修改（共 {len(diff)} 行）：\n{shown}\n"
                      f"• 因果性、次二次复杂度和接口保持不变；训练前由检查器验证。")

    def targets_basis(self) -> str:
        tried = self.effects.get(self.edit.name)
        if tried:
            n = len(next(iter(tried.values()), []))
            return self.t(f"Targets = parent + the change measured for this edit in {n} earlier experiment(s).",
                          f"目标 = 父架构得分 + 本修改在此前 {n} 次实验中测得的变化。")
        return self.t("Targets = parent + the edit's prior (not yet measured in this run).",
                      "目标 = 父架构得分 + 该修改的先验估计（本轮尚未测量）。")

    def lessons(self) -> str:
        lines = []
        by_name = {e.name: e for e in self.ctx.history}
        candidates = [e for e in self.ctx.history if e.kind == "candidate"]
        for e in candidates[-6:]:
            edit = e.edits[-1] if e.edits else "?"
            if e.status == "failed":
                lines.append(self.t(f"• `{e.name}` ({edit}) failed: {e.failure_reason[:160]}",
                                    f"• `{e.name}`（{edit}）失败：{e.failure_reason[:160]}"))
                continue
            if e.status == "inert":
                lines.append(self.t(f"• `{e.name}` ({edit}) changed nothing at this profile's lengths: "
                                    f"{e.failure_reason[:140]}",
                                    f"• `{e.name}`（{edit}）在本配置的长度下没有任何作用：{e.failure_reason[:140]}"))
                continue
            parent = by_name.get(e.parent or "")
            if e.status != "done" or not parent or e.mean_score is None or parent.mean_score is None:
                continue
            delta = e.mean_score - parent.mean_score
            per_task = {t: (e.score(t) or 0) - (parent.score(t) or 0) for t in TASK_NAMES if e.score(t) is not None}
            best_t = max(per_task, key=per_task.get)
            worst_t = min(per_task, key=per_task.get)
            verdict = self.beyond_noise(delta)
            lines.append(self.t(
                f"• `{e.name}` ({edit} on `{parent.name}`): mean {delta:+.4f} ({verdict}); best {self.col(best_t)} "
                f"{per_task[best_t]:+.3f}, worst {self.col(worst_t)} {per_task[worst_t]:+.3f}.",
                f"• `{e.name}`（在 `{parent.name}` 上 {edit}）：均值 {delta:+.4f}（{verdict}）；最佳 {self.col(best_t)} "
                f"{per_task[best_t]:+.3f}，最差 {self.col(worst_t)} {per_task[worst_t]:+.3f}。"))
        if not lines:
            dn, gdn = self.ctx.baseline("delta_net_4layer"), self.ctx.baseline("gated_delta_net_4layer")
            if dn and gdn and dn.mean_score is not None and gdn.mean_score is not None:
                diffs = sorted(((gdn.score(t) or 0) - (dn.score(t) or 0), t) for t in TASK_NAMES if dn.score(t) is not None)
                lines.append(self.t(
                    f"• No candidate evaluated yet. The baselines differ most on {self.col(diffs[-1][1])} "
                    f"({diffs[-1][0]:+.3f} for the gated one) and {self.col(diffs[0][1])} ({diffs[0][0]:+.3f}): "
                    "gating and decay matter where old associations must give way.",
                    f"• 尚无候选架构被评估。两个基线在 {self.col(diffs[-1][1])}（门控版 {diffs[-1][0]:+.3f}）和 "
                    f"{self.col(diffs[0][1])}（{diffs[0][0]:+.3f}）上差异最大：在旧关联需要让位时，门控与衰减很关键。"))
            else:
                lines.append(self.t("• No history yet: the change is chosen by its prior.", "• 尚无历史：按先验选择修改。"))
        untried = [e.name for e in EDITS if e.name not in self.effects and e.name != self.edit.name]
        lines.append(self.t(f"• Not yet measured in this run: {', '.join(untried[:6])}{' ...' if len(untried) > 6 else ''}.",
                            f"• 本轮尚未测量的修改：{'、'.join(untried[:6])}{' ……' if len(untried) > 6 else ''}。"))
        return "\n".join(lines)


__all__ = ["CatalogProposer", "EDITS_BY_NAME", "measured_effects"]
