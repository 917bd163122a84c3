"""Read-only views of the research record for the dashboard and the report (no writes, ever)."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from sqlalchemy import select

from mixerlab.store import Attempt, Event, Experiment, Run, Store
from mixerlab.store.models import is_damaged, summarize
from mixerlab.tasks import TASK_NAMES, TASK_ORDER

COLUMNS = {t.value: t.column for t in TASK_ORDER}
SORT_KEYS = ("mean_score", "name", "iteration", "status", *TASK_NAMES)
BASELINE_NAME = "delta_net_4layer"
CODES = {"b": "better", "w": "worse", "n": "within noise", "u": "noise unknown"}


@dataclass
class Row:
    id: int
    run: str
    name: str
    kind: str
    iteration: int
    parent: str | None
    parent_id: int | None
    status: str
    success: bool | None
    mean_score: float | None
    scores: dict[str, dict]
    verdicts: dict[str, dict[str, str]]  # "parent" / "baseline" -> task -> better | worse | within noise | noise unknown

    def score(self, task: str) -> float | None:
        value = self.scores.get(task)
        return None if value is None else value.get("mean")

    def std(self, task: str) -> float:
        value = self.scores.get(task)
        return 0.0 if value is None else value.get("std", 0.0)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "run": self.run, "name": self.name, "kind": self.kind, "iteration": self.iteration,
                "parent": self.parent, "parent_id": self.parent_id, "status": self.status, "success": self.success,
                "mean_score": self.mean_score, "scores": self.scores, "verdicts": self.verdicts}


@contextmanager
def bulk() -> Iterator[None]:
    """Building thousands of small objects triggers repeated GC passes over them; pause the collector."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Queries:
    def __init__(self, store: Store) -> None:
        self.store = store

    def runs(self) -> list[dict[str, Any]]:
        with self.store.session() as s:
            return [{"id": r.id, "name": r.name, "status": r.status, "created": r.created.isoformat(), "config": public_config(r.config)}
                    for r in s.scalars(select(Run).order_by(Run.id))]

    def rows(self, run: str | None = None) -> list[Row]:
        with bulk():
            return self._rows(run)

    def _rows(self, run: str | None) -> list[Row]:
        with self.store.session() as s:
            query = select(Experiment.id, Experiment.name, Experiment.kind, Experiment.iteration, Experiment.parent_id,
                           Experiment.status, Experiment.success, Experiment.mean_score, Experiment.summary,
                           Run.name).join(Run, Run.id == Experiment.run_id)
            if run:
                query = query.where(Run.name == run)
            records = s.execute(query.order_by(Experiment.id)).all()
        names = {r[0]: r[1] for r in records}
        rows = []
        for (id_, name, kind, iteration, parent_id, status, success, mean, summary, run_name) in records:
            if is_damaged(summary):  # listed, marked, without numbers: one damaged row does not take the page down
                summary, status = {}, "damaged"
            elif summary is None or (mean is not None and not summary.get("m")):  # written before summaries existed
                summary = self._summary_of(id_)
            scores = {t: {"mean": m, "std": summary.get("s", {}).get(t, 0.0)} for t, m in summary.get("m", {}).items()}
            verdicts = {"parent": {t: CODES[v] for t, v in summary.get("vp", {}).items()},
                        "baseline": {t: CODES[v] for t, v in summary.get("vb", {}).items()}}
            rows.append(Row(id_, run_name, name, kind, iteration or 0, names.get(parent_id), parent_id, status, success,
                            mean, scores, verdicts))
        return rows

    def _summary_of(self, experiment_id: int) -> dict[str, Any]:
        with self.store.session() as s:
            e = s.get(Experiment, experiment_id)
            return {} if is_damaged(e.scores, e.judgement) else summarize(e.scores, e.judgement)

    def lineage(self, run: str | None = None) -> list[dict[str, Any]]:
        """Only what the tree needs (no JSON columns: fast for thousands of experiments)."""
        with self.store.session() as s:
            query = select(Experiment.id, Experiment.name, Experiment.parent_id, Experiment.mean_score,
                           Experiment.status).join(Run, Run.id == Experiment.run_id)
            if run:
                query = query.where(Run.name == run)
            return [{"id": i, "name": n, "parent_id": p, "mean_score": m, "status": st}
                    for i, n, p, m, st in s.execute(query.order_by(Experiment.id))]

    def leaderboard(self, run: str | None, sort: str, descending: bool, query: str, status: str | None) -> list[Row]:
        with bulk():
            return self._leaderboard(run, sort, descending, query, status)

    def _leaderboard(self, run: str | None, sort: str, descending: bool, query: str, status: str | None) -> list[Row]:
        rows = self._rows(run)
        if query:
            rows = [r for r in rows if query.lower() in r.name.lower()]
        if status:
            rows = [r for r in rows if r.status == status]

        def key(r: Row):
            if sort == "mean_score":
                value = r.mean_score
            elif sort in TASK_NAMES:
                value = r.score(sort)
            else:
                value = getattr(r, sort)
            missing = value is None
            return (missing, value if not missing else 0) if not descending else (missing, _neg(value) if not missing else 0)

        body = sorted((r for r in rows if r.kind != "baseline"), key=key)
        return [r for r in rows if r.kind == "baseline"] + body  # baselines pinned on top

    def experiment(self, experiment_id: int) -> dict[str, Any] | None:
        with self.store.session() as s:
            e = s.get(Experiment, experiment_id)
            if e is None:
                return None
            fields = ("edits", "insights", "expected", "check_report", "scores", "promoted", "judgement", "curves",
                      "timings", "tokens")
            damaged = [f for f in fields if is_damaged(getattr(e, f))]
            if damaged:  # shown as damaged: the record's other parts, and empty values where a column does not parse
                return self._damaged(e, s.get(Run, e.run_id), damaged)
            parent = s.get(Experiment, e.parent_id) if e.parent_id else None
            attempts = list(s.scalars(select(Attempt).where(Attempt.experiment_id == e.id).order_by(Attempt.number)))
            children = s.execute(select(Experiment.id, Experiment.name, Experiment.mean_score)
                                 .where(Experiment.parent_id == e.id)).all()
            baselines = s.execute(select(Experiment.name, Experiment.scores).where(
                Experiment.run_id == e.run_id, Experiment.kind == "baseline")).all()
            run = s.get(Run, e.run_id)
            return {
                "id": e.id, "run": run.name, "name": e.name, "kind": e.kind, "iteration": e.iteration, "status": e.status,
                "success": e.success, "failure_reason": e.failure_reason, "proposer": e.proposer, "edits": e.edits,
                "code": e.code, "diff": e.diff, "insights": e.insights, "expected": e.expected, "scores": e.scores,
                "mean_score": e.mean_score, "promoted": e.promoted, "judgement": e.judgement, "curves": e.curves,
                "timings": e.timings, "tokens": e.tokens, "check_report": e.check_report, "profile": e.profile,
                "timestamp": e.timestamp, "created": e.created.isoformat(), "updated": e.updated.isoformat(),
                "parent": {"id": parent.id, "name": parent.name, "scores": parent.scores} if parent else None,
                "children": [{"id": c[0], "name": c[1], "mean_score": c[2]} for c in children],
                "baselines": {name: scores for name, scores in baselines if scores},
                "attempts": [{"number": a.number, "passed": a.passed, "reason": a.reason, "code": a.code,
                              "check_report": a.check_report, "tokens": a.tokens} for a in attempts],
            }

    @staticmethod
    def _damaged(e: Experiment, run: Run, damaged: list[str]) -> dict[str, Any]:
        return {"id": e.id, "run": run.name, "name": e.name, "kind": e.kind, "iteration": e.iteration, "status": "damaged",
                "success": e.success, "failure_reason": f"this record is damaged: {', '.join(damaged)} do not parse",
                "proposer": e.proposer, "edits": [], "code": e.code or "", "diff": e.diff or "", "insights": {},
                "expected": {}, "scores": {}, "mean_score": None, "promoted": {}, "judgement": {}, "curves": {},
                "timings": {}, "tokens": {}, "check_report": {}, "profile": e.profile, "timestamp": e.timestamp,
                "created": e.created.isoformat(), "updated": e.updated.isoformat(), "parent": None, "children": [],
                "baselines": {}, "attempts": [], "damaged": damaged}

    def live(self, run: str | None) -> dict[str, Any]:
        with self.store.session() as s:
            run_row = s.scalar(select(Run).where(Run.name == run)) if run else s.scalar(select(Run).order_by(Run.id.desc()))
            if run_row is None:
                return {"run": None, "status": "no runs", "events": [], "in_flight": []}
            events = s.scalars(select(Event).where(Event.run_id == run_row.id).order_by(Event.id.desc()).limit(20)).all()
            in_flight = s.execute(select(Experiment.id, Experiment.name, Experiment.status, Experiment.iteration).where(
                Experiment.run_id == run_row.id, Experiment.status.in_(("proposed", "checking", "evaluating")))).all()
            best = s.execute(select(Experiment.id, Experiment.name, Experiment.mean_score).where(
                Experiment.run_id == run_row.id, Experiment.mean_score.is_not(None)).order_by(Experiment.mean_score.desc()).limit(1)).first()
            return {
                "run": run_row.name, "status": run_row.status,
                "iteration": events[0].iteration if events else 0,
                "stage": events[0].stage if events else "",
                "candidate": events[0].experiment if events else "",
                "best": {"id": best[0], "name": best[1], "mean_score": best[2]} if best else None,
                "in_flight": [{"id": i, "name": n, "status": st, "iteration": it} for i, n, st, it in in_flight],
                "events": [{"time": e.created.isoformat(timespec="seconds"), "iteration": e.iteration, "stage": e.stage,
                            "experiment": e.experiment, "message": e.message} for e in events],
            }


def _neg(value: Any) -> Any:
    if isinstance(value, (int, float)):
        return -value
    if isinstance(value, str):
        return tuple(-ord(c) for c in value)
    return value


def public_config(config: dict | None) -> dict:
    """A run's config as served: a database URL without its password (runs recorded before URLs were stored
    without one still hold it)."""
    from mixerlab.store.db import without_password

    config = dict(config or {})
    if isinstance(config.get("db_url"), str):
        config["db_url"] = without_password(config["db_url"])
    return config
