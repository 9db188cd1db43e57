"""Rich progress bars for the stages of a multi-stage job (pipelines, offline training, benchmarks), or nothing when disabled."""

from __future__ import annotations

from typing import Callable


class StageProgress:
    """Rich progress bars for one stage (or nothing when disabled). The display starts with the
    first bar, so a stage that shows its own (the recording of rollouts) is left alone."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._progress = None

    def __enter__(self) -> "StageProgress":
        return self

    def task(self, name: str, total: int, completed: int = 0) -> Callable[..., None]:
        if not self.enabled:
            return lambda steps, note="": None
        if self._progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            )
            self._progress.__enter__()
        task = self._progress.add_task(name, total=total, completed=completed, note="")

        def advance(steps: int, note: str = "") -> None:
            self._progress.update(task, advance=steps, note=note)

        return advance

    def __exit__(self, *exc_info) -> bool:
        if self._progress is not None:
            self._progress.__exit__(*exc_info)
            self._progress = None
        return False
