"""Progress display for long work (rich): trainings done, optimiser steps, ETA. Descriptions carry candidate
names and reasons, so they are shown as plain text, never as Rich markup."""

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
            TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
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


class LoopProgress:
    """What `discover` is doing: the stage and candidate, the best score so far and, for each evaluation under
    way, its trainings done/total and member-steps with an ETA. On a terminal, live bars; elsewhere (a log, CI)
    one plain timestamped line per stage and per finished training."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self._bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True) if self.live else None
        self._status = self._bar.add_task("starting", total=None) if self._bar else None

    def __enter__(self) -> "LoopProgress":
        if self._bar:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar:
            self._bar.stop()

    def stage(self, text: str) -> None:
        if self._bar:
            self._bar.update(self._status, description=text)
        else:
            self._line(text)

    def _line(self, text: str) -> None:
        import time

        self.console.print(f"{time.strftime('%H:%M:%S')} {text}", highlight=False, markup=False, soft_wrap=True)

    def evaluation(self, label: str) -> "EvaluationProgress":
        return EvaluationProgress(self, label)


class EvaluationProgress:
    """One evaluation's trainings and steps inside a LoopProgress (the runner's Progress protocol)."""

    def __init__(self, loop: LoopProgress, label: str) -> None:
        self.loop, self.label = loop, label
        self._trainings = self._steps = None
        self.done = self.total = 0
        self.steps_total = 0

    def start(self, total_trainings: int, cached: int, total_steps: int) -> None:
        self.done, self.total = cached, total_trainings
        bar = self.loop._bar
        if bar:
            self._trainings = bar.add_task(f"  {self.label}: trainings", total=total_trainings, completed=cached)
            self._steps = bar.add_task(f"  {self.label}: steps (max)", total=max(1, total_steps))
            self.steps_total = max(1, total_steps)
        else:
            self.loop._line(f"  {self.label}: {total_trainings} trainings ({cached} cached), at most {total_steps:,} "
                            "member-steps")

    def advance_steps(self, member_steps: int) -> None:
        if self.loop._bar and self._steps is not None:
            self.loop._bar.advance(self._steps, member_steps)

    def finished(self, result: TrainResult) -> None:
        self.done += 1
        if self.loop._bar and self._trainings is not None:
            self.loop._bar.advance(self._trainings)
        else:
            self.loop._line(f"  {self.label}: {self.done}/{self.total} trainings; {result.setting} lr={result.lr:g}: "
                            f"acc {result.score:.4f}")

    def forget_steps(self, member_steps: int) -> None:
        """A training stopped early: its remaining steps leave the total, which keeps the ETA honest."""
        bar = self.loop._bar
        if bar and self._steps is not None:
            self.steps_total = max(1, self.steps_total - member_steps)
            bar.update(self._steps, total=self.steps_total)

    def stop(self) -> None:
        bar = self.loop._bar
        for task in (self._trainings, self._steps):
            if bar and task is not None:
                bar.remove_task(task)
        self._trainings = self._steps = None
