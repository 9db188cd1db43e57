"""Metrics: a JSONL file (one object per log event) and TensorBoard, written by rank 0 only."""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path

from wmlab.core.distributed import is_main_process
from wmlab.core.faults import kill_point
from wmlab.core.files import replace_durably, sync


class MetricsLogger:
    """Appends metrics to RUN_DIR/metrics.jsonl and TensorBoard's event files.

    Resuming a run cuts every log back to where the checkpoint found it (`positions()`, saved with
    the checkpoint): the records written after the checkpoint, and a line torn by the crash, are
    removed before the resumed run writes them again, so that each log reads as if the run had
    never stopped. TensorBoard: the event files are cut back the same way (files created after the
    checkpoint are deleted) and the resumed run appends a new file that sorts after them, so that
    TensorBoard's reader sees one history with each step once.
    """

    def __init__(
        self, run_dir: Path, tensorboard: bool = True, resume_from: dict | None = None, resume_step: int | None = None
    ):
        """resume_from: `positions()` as the checkpoint saved them; resume_step: the checkpoint's
        global step, to cut metrics.jsonl by step where the checkpoint predates `positions()`."""
        self.enabled = is_main_process()
        self.path = run_dir / "metrics.jsonl"
        self.tensorboard_directory = run_dir / "tensorboard"
        self._writer = None
        if self.enabled and resume_from is not None:
            self._cut_back(resume_from)
        elif self.enabled and resume_step is not None and self.path.is_file():
            kept = [
                line
                for line in self.path.read_text().splitlines(keepends=True)
                if _complete_record_before(line, resume_step)
            ]
            replace_durably(self.path, "".join(kept))
        if self.enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            _wait_for_a_later_file_name(self.tensorboard_directory)
            self._writer = SummaryWriter(str(self.tensorboard_directory))

    def positions(self) -> dict | None:
        """The size of each log now, on disk (fsynced): what a checkpoint records."""
        if not self.enabled:
            return None
        if self._writer is not None:
            self._writer.flush()
        sizes = {}
        for path in _event_files(self.tensorboard_directory):
            sync(path)
            sizes[path.name] = path.stat().st_size
        if self.path.is_file():
            sync(self.path)
        return {"metrics_bytes": self.path.stat().st_size if self.path.is_file() else 0, "tensorboard": sizes}

    def _cut_back(self, positions: dict) -> None:
        if self.path.is_file():
            _truncate(self.path, positions["metrics_bytes"])
        for path in _event_files(self.tensorboard_directory):
            if path.name in positions["tensorboard"]:
                _truncate(path, positions["tensorboard"][path.name])
            else:
                path.unlink()

    def write(self, step: int, wall_time: float, metrics: dict[str, float]) -> None:
        if not self.enabled or not metrics:
            return
        record = {"step": int(step), "time": round(float(wall_time), 3)}
        record.update({key: float(value) for key, value in metrics.items()})
        text = json.dumps(record) + "\n"
        with self.path.open("a") as stream:
            kill_point("log-torn", before=lambda: (stream.write(text[: len(text) // 2]), stream.flush()))
            stream.write(text)
        kill_point("log-line")
        if self._writer is not None:
            for key, value in metrics.items():
                if math.isfinite(value):
                    self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _event_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("events.out.tfevents.*")) if directory.is_dir() else []


def _truncate(path: Path, size: int) -> None:
    if path.stat().st_size > size:
        with path.open("r+b") as stream:
            stream.truncate(size)
            stream.flush()
            os.fsync(stream.fileno())


def _complete_record_before(line: str, step: int) -> bool:
    try:
        return line.endswith("\n") and json.loads(line)["step"] <= step
    except (ValueError, KeyError, TypeError):
        return False


def _wait_for_a_later_file_name(directory: Path) -> None:
    """TensorBoard reads a folder's event files in the order of their names, which begin with the
    second they were created: wait (at most a second, only for a run resumed within the second
    its previous file was made) until a new file's name sorts after every file there."""
    stamps = [int(path.name.split(".")[3]) for path in _event_files(directory) if path.name.split(".")[3].isdigit()]
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)


class MetricsAverager:
    """Accumulates per-update metrics between log events and returns their means."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._sums[key] += float(value)
            self._counts[key] += 1

    def pop(self) -> dict[str, float]:
        means = {key: self._sums[key] / self._counts[key] for key in self._sums}
        self._sums.clear()
        self._counts.clear()
        return means
