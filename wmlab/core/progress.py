"""Rich progress bars: the training loop's (steps and the clock) and the stages of a multi-stage
job (pipelines, offline training, benchmarks), or nothing when disabled."""

from __future__ import annotations

from typing import Callable


class _Display:
    """A rich display (`_progress`, started by the subclass when enabled), stopped on exit."""

    _progress = None

    def __exit__(self, *exc_info) -> bool:
        if self._progress is not None:
            self._progress.__exit__(*exc_info)
            self._progress = None
        return False


class StageProgress(_Display):
    """Rich progress bars for one stage (or nothing when disabled). The display starts with the
    first bar, so a stage that shows its own (the recording of rollouts) is left alone."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self) -> "StageProgress":
        return self

    def task(self, name: str, total: int, completed: int = 0) -> Callable[..., None]:
        if not self.enabled:
            return lambda steps, note="": None
        if self._progress is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._progress.__enter__()
        task = self._progress.add_task(name, total=total, completed=completed, note="")

        def advance(steps: int, note: str = "") -> None:
            self._progress.update(task, advance=steps, note=note)

        return advance


def seconds_left(
    steps: int, target: int, elapsed: float, time_limit: float, session_steps: int, session_seconds: float
) -> float | None:
    """The estimate a training bar shows: seconds until the run stops, the sooner of the step
    target (at this session's pace) and the time limit (0: none). None when neither is known yet.
    With a time limit the estimate never exceeds what is left of it."""
    by_steps = None
    if steps >= target:
        by_steps = 0.0
    elif session_steps > 0 and session_seconds > 0:
        by_steps = (target - steps) * session_seconds / session_steps
    if time_limit <= 0:
        return by_steps
    by_clock = max(time_limit - elapsed, 0.0)
    return by_clock if by_steps is None else min(by_steps, by_clock)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TrainingProgress(_Display):
    """The training loop's bar. Its length and estimate follow whichever ends the run first: the
    step target or, with a time limit, the clock (so a run of 10^6 steps stopped after 9 minutes
    shows 9 minutes, not the days its steps would take). `update(steps, elapsed, note)` takes the
    global step count and the training seconds (over resumed sessions); returns the estimate."""

    def __init__(self, enabled: bool, target: int, time_limit: float, done: int, elapsed: float):
        self.enabled, self.target, self.time_limit = enabled, target, time_limit
        self._start_steps, self._start_elapsed = done, elapsed
        self._task = None

    def __enter__(self) -> "TrainingProgress":
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("{task.fields[steps]}"),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                TextColumn("left {task.fields[left]}"),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                "train", total=1.0, completed=0.0, steps="", note="", left=_clock(None)
            )
        return self

    def update(self, steps: int, elapsed: float, note: str = "") -> float | None:
        left = seconds_left(
            steps, self.target, elapsed, self.time_limit, steps - self._start_steps, elapsed - self._start_elapsed
        )
        if self._progress is not None:
            by_steps = min(steps / max(self.target, 1), 1.0)
            fraction = by_steps if left is None else max(by_steps, elapsed / max(elapsed + left, 1e-9))
            limit = f" ({_clock(self.time_limit)} limit)" if self.time_limit > 0 else ""
            self._progress.update(
                self._task, completed=fraction, steps=f"step {steps}/{self.target}{limit}", note=note, left=_clock(left)
            )
        return left
