"""Executors: where candidates are checked and trained. `local` (default) runs sandboxed processes on this
machine; `ray` runs the same sandboxed work as Ray tasks on a cluster (`pip install mixerlab[ray]`)."""

from __future__ import annotations

from .base import EvalOutcome, EvaluationJob, Executor, merge_outcomes
from .local import LocalExecutor

__all__ = ["EvalOutcome", "EvaluationJob", "Executor", "LocalExecutor", "make_executor", "merge_outcomes"]


def make_executor(kind: str, **kwargs) -> Executor:
    if kind == "local":
        return LocalExecutor(**{k: v for k, v in kwargs.items() if k not in ("address", "max_retries", "gpus_per_task", "threads")})
    if kind == "ray":
        from .ray import RayExecutor  # optional dependency, imported only when asked for

        return RayExecutor(**kwargs)
    raise ValueError(f"unknown executor {kind!r}: use local or ray")
