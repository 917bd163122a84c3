"""What the loop prints and keeps beside the record: the iteration block in the seeds' shape, the check report as
the repair step reads it, and each task's learning curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixerlab.check import CHECK_TITLES, CheckReport
from mixerlab.insights import Insights, render_block
from mixerlab.propose import ExperimentView
from mixerlab.store import Experiment
from mixerlab.table import accuracies_df
from mixerlab.tasks import TASK_NAMES
from mixerlab.train.result import TrainResult


def view(e: Experiment, names: dict[int, str]) -> ExperimentView:
    """A record row as proposers see it (`names`: experiment id -> name, for the parent's name)."""
    return ExperimentView(name=e.name, kind=e.kind, parent=names.get(e.parent_id) if e.parent_id else None,
                          edits=list(e.edits or []), status=e.status, success=e.success, scores=e.scores or {},
                          mean_score=e.mean_score, failure_reason=e.failure_reason, expected=e.expected or {}, code=e.code)


def report_text(report: CheckReport) -> str:
    """The check report as a repair request quotes it: the summary, then every check's status and reason."""
    lines = [report.summary(), ""]
    for c in report.checks:
        lines.append(f"[{c.status}] {CHECK_TITLES[c.name]}: {c.reason}")
    return "\n".join(lines)


def curves(trainings: list[TrainResult]) -> dict[str, Any]:
    """Per task, the learning curve of its first setting's best training (seed 0)."""
    out: dict[str, Any] = {}
    for task in TASK_NAMES:
        runs = [t for t in trainings if t.task == task and t.seed == 0]
        if not runs:
            continue
        first = sorted({t.setting for t in runs})[0]
        best = max((t for t in runs if t.setting == first), key=lambda t: t.score)
        out[task] = {"setting": first, "lr": best.lr, "weight_decay": best.weight_decay,
                     "test_acc": [h.test_acc for h in best.history], "train_loss": [h.train_loss for h in best.history]}
    return out


def iteration_block(row: Experiment, done_before: list[Experiment], stamp: str) -> str:
    """The seeds' iteration block: the history table of the experiments finished before this one, the Insights,
    the name and `success`."""
    table = accuracies_df({e.name: {t: s["mean"] for t, s in e.scores.items()} for e in done_before})
    insights = Insights(**row.insights) if row.insights else Insights(
        observations="(no proposal)", code_issues="(no proposal)", reasoning=row.failure_reason or "(no proposal)",
        expected="(no proposal)", lessons="(no proposal)")
    return render_block(table, row.timestamp or stamp, insights, row.name, bool(row.success))


def block_path(run_dir: Path, row: Experiment) -> Path:
    return run_dir / "iterations" / f"{row.iteration:03d}_{(row.code_hash or 'none')[:16]}.txt"
