"""Metrics: a JSONL file (one object per log event) and TensorBoard, written by rank 0 only."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from wmlab.core.distributed import is_main_process


class MetricsLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.enabled = is_main_process()
        self.path = run_dir / "metrics.jsonl"
        self._writer = None
        if self.enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, step: int, wall_time: float, metrics: dict[str, float]) -> None:
        if not self.enabled or not metrics:
            return
        record = {"step": int(step), "time": round(float(wall_time), 3)}
        record.update({key: float(value) for key, value in metrics.items()})
        with self.path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in metrics.items():
                if math.isfinite(value):
                    self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


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
