"""Evaluation of a mixer on a MAD profile: planning, grouping, the result cache and the scores."""

from .aggregate import Score, Scores, TaskScore, aggregate, as_scores, recorded
from .cache import ResultCache, default_cache_path
from .runner import EvalOptions, EvalReport, evaluate_mixer

__all__ = ["EvalOptions", "EvalReport", "ResultCache", "Score", "Scores", "TaskScore", "aggregate", "as_scores", "recorded", "default_cache_path", "evaluate_mixer"]
