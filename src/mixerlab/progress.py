"""Progress display for long work (rich): trainings done, optimiser steps, ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mixerlab.train.result import TrainResult


class EvalProgress:
    """Two bars: trainings finished (cached ones count at once) and member-steps (an upper bound: early
    stopping makes the real total smaller, so the ETA is pessimistic)."""

    def __init__(self, console: Console | None = None, label: str = "") -> None:
        self.console = console or Console(stderr=True)
        self.label = label
        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=False,
        )

    def start(self, total_trainings: int, cached: int, total_steps: int) -> None:
        self._bar.start()
        self._trainings = self._bar.add_task(f"{self.label} trainings", total=total_trainings, completed=cached)
        self._steps = self._bar.add_task(f"{self.label} steps (max)", total=max(1, total_steps))

    def advance_steps(self, member_steps: int) -> None:
        self._bar.advance(self._steps, member_steps)

    def finished(self, result: TrainResult) -> None:
        self._bar.advance(self._trainings)
        self.console.print(
            f"{result.setting} lr={result.lr:g} wd={result.weight_decay:g} seed={result.seed}: "
            f"acc {result.score:.4f} (epoch {result.best_epoch + 1}/{result.epochs_trained})"
        )

    def forget_steps(self, member_steps: int) -> None:
        """A training stopped early: its remaining steps leave the total, which keeps the ETA honest."""
        task = self._bar.tasks[self._steps]
        self._bar.update(self._steps, total=max(task.completed, (task.total or 0) - member_steps))

    def stop(self) -> None:
        self._bar.stop()
