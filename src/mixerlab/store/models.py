"""The research record: runs, experiments, repair attempts and live events (SQLAlchemy 2.0 ORM)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

DAMAGED = "__damaged__"  # the key of what a JSON column holds when its stored text does not parse


def now() -> datetime:
    return datetime.now(timezone.utc)


class SafeJSON(TypeDecorator):
    """JSON that reads a damaged value (text that does not parse) as {DAMAGED: the text's start} instead of
    failing the whole query: one damaged row is reported and skipped (Store.damaged), not fatal."""

    impl = JSON
    cache_ok = True

    def result_processor(self, dialect, coltype):
        inner = self.impl_instance.result_processor(dialect, coltype)

        def process(value):
            try:
                return inner(value) if inner else value
            except (ValueError, TypeError):
                return {DAMAGED: str(value)[:200]}
        return process


def is_damaged(*values: Any) -> bool:
    return any(isinstance(v, dict) and DAMAGED in v for v in values)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: SafeJSON, list[Any]: SafeJSON}


# what a run's and an experiment's `status` may be (the repository refuses anything else)
RUN_STATUSES = ("running", "finished", "failed", "interrupted", "stopped")  # stopped: by budget or a signal, resumable
EXPERIMENT_STATUSES = ("proposed", "checking", "evaluating", "done", "failed", "inert")  # inert: the parent's behaviour


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="running")  # one of RUN_STATUSES
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)

    experiments: Mapped[list[Experiment]] = relationship(back_populates="run", order_by="Experiment.id")


class Experiment(Base):
    """One architecture: a baseline or a proposed candidate, with everything learned about it."""

    __tablename__ = "experiments"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    name: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(20))  # baseline | candidate
    iteration: Mapped[int] = mapped_column(Integer, default=0)  # 0 for baselines
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id"), nullable=True)
    proposer: Mapped[str] = mapped_column(String(40), default="")
    edits: Mapped[list[Any]] = mapped_column(SafeJSON, default=list)  # catalog edits composing this code
    code: Mapped[str] = mapped_column(Text)
    code_hash: Mapped[str] = mapped_column(String(32), index=True)
    novelty_hash: Mapped[str] = mapped_column(String(32), index=True)
    diff: Mapped[str] = mapped_column(Text, default="")  # unified diff against the parent's code
    insights: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)  # the five sections
    expected: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)  # task -> target accuracy
    status: Mapped[str] = mapped_column(String(20), default="proposed")  # one of EXPERIMENT_STATUSES
    success: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    failure_reason: Mapped[str] = mapped_column(Text, default="")
    check_report: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)
    # what it does under the run's conditions (check.dynamic.fingerprint): the inert stage compares these. Deferred:
    # read only through Store.fingerprints, so listings never load it and a database from before it reads as ever
    fingerprint: Mapped[list[Any] | None] = mapped_column(SafeJSON, nullable=True, deferred=True)
    profile: Mapped[str] = mapped_column(String(20), default="")
    scores: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)  # task -> {mean, std, seeds}
    mean_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    promoted: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)  # scores under the promotion profile
    judgement: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)  # vs parent / baselines / expected
    curves: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)  # task -> per-epoch test accuracy, loss
    summary: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)  # compact means/stds/verdicts for listings
    timings: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)  # stage -> seconds
    tokens: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)  # prompt, completion, cost
    timestamp: Mapped[str] = mapped_column(String(20), default="")  # YYYYMMDD_HHMMSS of the proposal
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)

    run: Mapped[Run] = relationship(back_populates="experiments")
    parent: Mapped[Experiment | None] = relationship(remote_side="Experiment.id")
    attempts: Mapped[list[Attempt]] = relationship(back_populates="experiment", order_by="Attempt.number",
                                                   cascade="all, delete-orphan")


class Attempt(Base):
    """One version of a candidate's code and its check report: the proposal, then each repair."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 0 = the proposal, 1.. = repairs
    code: Mapped[str] = mapped_column(Text)
    passed: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text, default="")
    check_report: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)
    tokens: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    experiment: Mapped[Experiment] = relationship(back_populates="attempts")


class Event(Base):
    """What the loop is doing now (the dashboard's live view reads these)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    stage: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text, default="")
    experiment: Mapped[str] = mapped_column(String(300), default="")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, index=True)


VERDICT_CODES = {"better": "b", "worse": "w", "within noise": "n", "noise unknown": "u"}


def summarize(scores: dict[str, Any] | None, judgement: dict[str, Any] | None) -> dict[str, Any]:
    """What a listing of thousands of experiments needs, small enough to decode fast."""
    scores, judgement = scores or {}, judgement or {}
    parent = judgement.get("vs_parent", {}).get("tasks", {})
    baseline = judgement.get("vs_baselines", {}).get("delta_net_4layer", {}).get("tasks", {})
    return {
        "m": {t: round(v["mean"], 6) for t, v in scores.items()},
        "s": {t: round(v.get("std", 0.0), 6) for t, v in scores.items()},
        "vp": {t: VERDICT_CODES[v["verdict"]] for t, v in parent.items()},
        "vb": {t: VERDICT_CODES[v["verdict"]] for t, v in baseline.items()},
    }
