"""What every `wmlab bench NAME` shares: its arguments and where its results go."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import tyro

from wmlab.core.errors import RunDirectoryError


@dataclass(frozen=True)
class BenchArguments:
    """Arguments of every benchmark."""

    seeds: int | None = None
    """Independent runs (seeds 0 .. seeds-1); the benchmark's own default when omitted."""
    quick: bool = False
    """A small version for smoke tests: a few seconds, numbers not comparable."""
    out: Path | None = None
    """Write every measured figure and the settings as JSON here."""
    run_dir: Path | None = None
    """Also write a run directory (results JSON under bench/, figures/) for `wmlab report`."""
    force: bool = False
    """Replace an existing run directory."""
    markdown: Path | None = None
    """Write the results as a markdown section (for docs/benchmarks.md) here."""
    progress: bool = True
    """Show a progress bar."""


def parse_bench_arguments(name: str, argv: list[str], description: str) -> BenchArguments:
    return tyro.cli(BenchArguments, args=argv, prog=f"wmlab bench {name}", description=description)


def prepare_run_dir(arguments: BenchArguments) -> Path | None:
    run_dir = arguments.run_dir
    if run_dir is None:
        return None
    if run_dir.exists() and any(run_dir.iterdir()):
        if not arguments.force:
            raise RunDirectoryError(
                f"{run_dir} already holds results; pass --force to replace them or choose another --run-dir"
            )
        shutil.rmtree(run_dir)
    (run_dir / "figures").mkdir(parents=True)
    (run_dir / "bench").mkdir()
    return run_dir


def machine_description() -> dict[str, Any]:

    return {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def write_results(
    name: str, results: dict[str, Any], arguments: BenchArguments, run_dir: Path | None, markdown: str | None
) -> None:
    results = {**results, "machine": machine_description(), "command": f"wmlab bench {name}"}
    text = json.dumps(results, indent=2)
    if arguments.out is not None:
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(text)
        print(f"results written to {arguments.out}")
    if run_dir is not None:
        (run_dir / "bench" / f"{name}.json").write_text(text)
        (run_dir / "config.json").write_text(
            json.dumps({"benchmark": name, "settings": results.get("settings", {})}, indent=2)
        )
        print(f"run directory: {run_dir}  (wmlab report {run_dir})")
    if arguments.markdown is not None and markdown is not None:
        arguments.markdown.write_text(markdown)
        print(f"markdown written to {arguments.markdown}")
