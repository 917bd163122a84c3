"""The store's operations. Each call is one short transaction, so a kill at any moment leaves every row
either fully written or not written at all."""

from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .db import open_engine, session_factory
from .models import EXPERIMENT_STATUSES, RUN_STATUSES, Attempt, Event, Experiment, Run, is_damaged, summarize

UNFINISHED = ("proposed", "checking", "evaluating")


class Store:
    """The research record. `read_only=True` (history, serve, report) never writes, not even a missing file."""

    def __init__(self, url: str, read_only: bool = False, follow_writers: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        self.engine = open_engine(url, read_only=read_only, follow_writers=follow_writers)
        self.session = session_factory(self.engine)
        self.damaged: dict[int, str] = {}  # experiment id -> name, of rows skipped because a column does not parse

    # runs -----------------------------------------------------------------------------------

    def find_run(self, name: str) -> Run | None:
        with self.session() as s:
            return s.scalar(select(Run).where(Run.name == name))

    def create_run(self, name: str, config: dict[str, Any]) -> Run:
        with self.session.begin() as s:
            run = Run(name=name, config=config)
            s.add(run)
        return run

    def runs(self) -> list[Run]:
        with self.session() as s:
            return list(s.scalars(select(Run).order_by(Run.id)))

    def set_run_status(self, run_id: int, status: str) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}; use one of {', '.join(RUN_STATUSES)}")
        with self.session.begin() as s:
            s.get(Run, run_id).status = status

    # experiments ----------------------------------------------------------------------------

    def add_experiment(self, **fields: Any) -> Experiment:
        if fields.get("status", "proposed") not in EXPERIMENT_STATUSES:
            raise ValueError(f"unknown experiment status {fields['status']!r}; use one of {', '.join(EXPERIMENT_STATUSES)}")
        with self.session.begin() as s:
            experiment = Experiment(**fields)
            experiment.summary = summarize(fields.get("scores"), fields.get("judgement"))
            s.add(experiment)
        return experiment

    def update_experiment(self, experiment_id: int, **fields: Any) -> Experiment:
        if "status" in fields and fields["status"] not in EXPERIMENT_STATUSES:
            raise ValueError(f"unknown experiment status {fields['status']!r}; use one of {', '.join(EXPERIMENT_STATUSES)}")
        with self.session.begin() as s:
            experiment = s.get(Experiment, experiment_id)
            for key, value in fields.items():
                setattr(experiment, key, value)
            if "scores" in fields or "judgement" in fields:
                experiment.summary = summarize(experiment.scores, experiment.judgement)
        return experiment

    def experiment(self, experiment_id: int) -> Experiment | None:
        with self.session() as s:
            return s.get(Experiment, experiment_id)

    def experiments(self, run_id: int | None = None, statuses: Iterable[str] | None = None) -> list[Experiment]:
        with self.session() as s:
            query = select(Experiment).order_by(Experiment.id)
            if run_id is not None:
                query = query.where(Experiment.run_id == run_id)
            if statuses is not None:
                query = query.where(Experiment.status.in_(list(statuses)))
            rows = []
            for e in s.scalars(query):
                if is_damaged(e.edits, e.insights, e.expected, e.check_report, e.scores, e.promoted, e.judgement,
                              e.curves, e.summary, e.timings, e.tokens):
                    self.damaged[e.id] = e.name
                else:
                    rows.append(e)
            return rows

    def fingerprints(self, run_id: int, statuses: Iterable[str] | None = None) -> dict[int, list[float]]:
        """Experiment id -> its behavioural fingerprint, for the run's experiments that have one."""
        with self.session() as s:
            query = select(Experiment.id, Experiment.fingerprint).where(Experiment.run_id == run_id).order_by(Experiment.id)
            if statuses is not None:
                query = query.where(Experiment.status.in_(list(statuses)))
            return {ident: values for ident, values in s.execute(query) if isinstance(values, list)}

    def name_taken(self, run_id: int, name: str) -> bool:
        with self.session() as s:
            return s.scalar(select(Experiment.id).where(Experiment.run_id == run_id, Experiment.name == name)) is not None

    def known_novelty(self) -> dict[str, str]:
        """novelty hash -> experiment name, over every experiment that passed its checks."""
        with self.session() as s:
            rows = s.execute(select(Experiment.novelty_hash, Experiment.name).where(
                Experiment.status.in_(("done", "evaluating", "inert"))))
            return {h: n for h, n in rows}

    # attempts and events ------------------------------------------------------------------------

    def add_attempt(self, experiment_id: int, **fields: Any) -> Attempt:
        with self.session.begin() as s:
            attempt = Attempt(experiment_id=experiment_id, **fields)
            s.add(attempt)
        return attempt

    def attempts(self, experiment_id: int) -> list[Attempt]:
        with self.session() as s:
            return list(s.scalars(select(Attempt).where(Attempt.experiment_id == experiment_id).order_by(Attempt.number)))

    def log_event(self, run_id: int, stage: str, message: str = "", iteration: int = 0, experiment: str = "") -> None:
        with self.session.begin() as s:
            s.add(Event(run_id=run_id, stage=stage, message=message, iteration=iteration, experiment=experiment))

    def events(self, run_id: int, limit: int = 50) -> list[Event]:
        with self.session() as s:
            rows = s.scalars(select(Event).where(Event.run_id == run_id).order_by(Event.id.desc()).limit(limit))
            return list(rows)


__all__ = ["IntegrityError", "Store", "UNFINISHED"]
