"""The Insights document as the offline proposers write it from the run's numbers: the five sections in the seeds'
order, in English or Chinese. `InsightsWriter` holds what every such document says the same way (the parent's
scores, the profile's noise, the per-task targets and the rule that judges them); the catalog and the search
proposers subclass it for what is their own (which change, why, what the history taught)."""

from __future__ import annotations

from mixerlab.insights import Insights
from mixerlab.noise import Z
from mixerlab.tasks import TASK_NAMES, TASK_ORDER

from .base import ProposalContext

COLUMN = {t.value: t.column for t in TASK_ORDER}


class InsightsWriter:
    """Subclasses write `code_issues`, `reasoning` and `lessons`, and may extend `observations`."""

    def __init__(self, ctx: ProposalContext, expected: dict[str, float], repair_note: str = "") -> None:
        self.ctx, self.parent, self.expected, self.repair_note = ctx, ctx.parent, expected, repair_note
        self.zh = ctx.language == "zh"

    def t(self, en: str, zh: str) -> str:
        return zh if self.zh else en

    def col(self, task: str) -> str:
        return COLUMN[task]

    def insights(self) -> Insights:
        return Insights(observations=self.observations(), code_issues=self.code_issues(), reasoning=self.reasoning(),
                        expected=self.expected_text(), lessons=self.lessons())

    # 1. Key Observations ------------------------------------------------------------------------------------------

    def observations(self) -> str:
        return self.parent_line()

    def parent_line(self) -> str:
        p = self.parent
        scores = ", ".join(f"{self.col(t)} {p.score(t):.3f}" for t in TASK_NAMES if p.score(t) is not None)
        mean = f"{p.mean_score:.4f}" if p.mean_score is not None else "n/a"
        return self.t(f"• Parent `{p.name}` (mean {mean}): {scores}.", f"• 父架构 `{p.name}`（均值 {mean}）：{scores}。")

    def noise_summary(self) -> str:
        noise = self.ctx.noise
        if noise is None:
            return self.t("seed noise of this profile: unknown (never measured; `python benchmarks/reproduction/noise.py` measures "
                          "it), so no difference is called beyond noise",
                          "本配置的种子噪声：未知（从未测量；`python benchmarks/reproduction/noise.py` 可测量），因此任何差异都不判定为超出噪声")
        return self.t(f"noise: {noise.describe()}", f"噪声：{noise.describe()}")

    def beyond_noise(self, delta: float) -> str:
        """Whether a change of the six-task mean is beyond the profile's measured noise."""
        noise = self.ctx.noise
        threshold = noise.mean_threshold() if noise is not None else None
        if threshold is None:
            return self.t("noise unknown", "噪声未知")
        beyond = abs(delta) > threshold
        return self.t("beyond noise" if beyond else "within noise", "超出噪声" if beyond else "在噪声范围内")

    # 2-3. Code Issues and Technical Reasoning: the proposer's own --------------------------------------------------

    def code_issues(self) -> str:
        raise NotImplementedError

    def reasoning(self) -> str:
        raise NotImplementedError

    # 4. Expected Improvements --------------------------------------------------------------------------------------

    def expected_text(self) -> str:
        return "\n".join(self.target_lines() + [f"• {self.targets_basis()}", f"• {self.noise_rule()}"])

    def target_lines(self) -> list[str]:
        """One line per task with a target: the parent's score, the target and the change between them."""
        lines = []
        for task in TASK_NAMES:
            now = self.parent.score(task)
            if task in self.expected and now is not None:
                lines.append(f"• {self.col(task)}: {now:.3f} -> {self.expected[task]:.3f} ({self.change(task):+.3f})")
        return lines

    def change(self, task: str) -> float:
        return self.expected[task] - (self.parent.score(task) or 0.0)

    def targets_basis(self) -> str:
        raise NotImplementedError

    def noise_rule(self) -> str:
        noise = self.ctx.noise
        if noise is not None:
            return self.t(f"Changes within {Z:g} standard deviations of the measured seed noise (per task "
                          f"{Z:g} x sqrt(2) x std, {noise.source}) will not be called improvements.",
                          f"小于实测种子噪声 {Z:g} 个标准差（每个任务 {Z:g} x sqrt(2) x std，{noise.source}）的变化不算改进。")
        return self.t("This profile's seed noise was never measured: no change will be called an improvement "
                      "(`python benchmarks/reproduction/noise.py` measures it).",
                      "本配置的种子噪声从未测量：任何变化都不算改进（`python benchmarks/reproduction/noise.py` 可测量）。")

    # 5. Lessons from Historical Attempts: the proposer's own -----------------------------------------------------

    def lessons(self) -> str:
        raise NotImplementedError
