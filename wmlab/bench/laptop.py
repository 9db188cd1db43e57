"""`wmlab bench laptop`: the laptop budget — the best evaluation reached in a fixed wall-clock
budget (2 hours by default) on this machine, environment included, several seeds side by side
at one torch thread each.

Each seed is an ordinary `wmlab train` run in RUN_DIR/seed<k> with `--train.time-limit`, launched
as its own process so that the seeds share the cores fairly; rerunning the command resumes
unfinished runs and reuses finished ones. The results (best and final evaluation per seed, the
environment steps, updates and wall-clock at which the best was reached) go to
RUN_DIR/bench/laptop-<task>.json, and a markdown table to --markdown.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tyro

from wmlab.bench.common import machine_description
from wmlab.core.errors import WmlabError
from wmlab.core.registry import UnknownNameError


@dataclass(frozen=True)
class LaptopTask:
    """One benchmark task: a `wmlab train` command line without its run directory and seed."""

    algorithm: str
    env: str
    env_kwargs: dict[str, Any]
    options: tuple[str, ...]
    """Further `wmlab train` options (train schedule and agent settings)."""
    metric: str = "eval/return"
    """The evaluation metric whose best value is the result (higher is better)."""
    published: str = ""


DREAMER_CPU_SCHEDULE = (
    "--train.batch-size",
    "16",
    "--train.sequence-length",
    "16",
    "--train.train-ratio",
    "128",
    "--train.learning-starts",
    "1000",
)

TASKS: dict[str, LaptopTask] = {
    "dreamer-cartpole-swingup": LaptopTask(
        "dreamer-cpu",
        "dmc:cartpole-swingup",
        {"action_repeat": 2},
        (*DREAMER_CPU_SCHEDULE, "--train.eval-every", "2500", "--train.eval-episodes", "5"),
        published="677 +- 33 (DreamerV3 at 100k environment steps)",
    ),
    "dreamer-two-rooms": LaptopTask(
        "dreamer-cpu",
        "two-rooms",
        {"reward": "dense"},
        (*DREAMER_CPU_SCHEDULE, "--train.eval-every", "2000", "--train.eval-episodes", "20"),
        metric="eval/success",
    ),
    "tdmpc2-cartpole-swingup": LaptopTask(
        "tdmpc2",
        "dmc:cartpole-swingup",
        {"action_repeat": 2},
        # The paper's 5M model (the default preset, named here so that the row says it). An evaluation
        # episode plans 500 times (about 0.75 s each at 5M in the 2026-12-03 run): two every 3000 steps.
        (
            "--train.batch-size",
            "256",
            "--train.sequence-length",
            "4",
            "--train.train-ratio",
            "1024",
            "--train.learning-starts",
            "2500",
            "--train.eval-every",
            "3000",
            "--train.eval-episodes",
            "2",
            "--agent.random-steps",
            "2500",
            "--agent.model.size",
            "5M",
        ),
        published="839 +- 35 (TD-MPC2 5M at 100k environment steps)",
    ),
}


@dataclass(frozen=True)
class LaptopArguments:
    """Arguments of `wmlab bench laptop`."""

    task: str = "dreamer-cartpole-swingup"
    """One of the tasks in wmlab.bench.laptop.TASKS."""
    run_dir: Path = Path("runs/laptop")
    """Parent directory: the task's seeds go to RUN_DIR/<task>/seed<k>."""
    seeds: int = 2
    """Runs side by side (seeds 0 .. seeds-1), one process each."""
    only_seed: int | None = None
    """Run just this one of the seeds now (another core may be busy); the others are reported as far as they got."""
    time_limit: float = 7200.0
    """Wall-clock budget of each run, in seconds."""
    steps: int = 1_000_000
    """Environment-step cap (the budget normally ends first)."""
    threads: int = 1
    """Torch threads per run."""
    force: bool = False
    """Start over instead of resuming."""
    markdown: Path | None = None
    """Also write the result table here."""
    extra: tuple[str, ...] = field(default_factory=tuple)
    """Further `wmlab train` options appended to the task's, e.g. `--extra=--agent.model.size 1M` (the first
    option needs the `=`: tyro reads a bare `--extra --agent...` as two options of its own)."""


def train_command(task: LaptopTask, run_dir: Path, seed: int, arguments: LaptopArguments, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "wmlab.cli", "train"]
    if resume:
        return command + [
            "--resume",
            str(run_dir),
            "--train.time-limit",
            str(arguments.time_limit),
            "--train.steps",
            str(arguments.steps),
            "--train.no-progress",
        ]
    return command + [
        "--algo",
        task.algorithm,
        "--env",
        task.env,
        "--env-kwargs",
        json.dumps(task.env_kwargs),
        "--run-dir",
        str(run_dir),
        "--force",
        "--train.seed",
        str(seed),
        "--train.steps",
        str(arguments.steps),
        "--train.time-limit",
        str(arguments.time_limit),
        "--train.threads",
        str(arguments.threads),
        "--train.no-progress",
        "--train.log-every",
        "500",
        "--train.checkpoint-every",
        "5000",
        *task.options,
        *arguments.extra,
    ]


def seed_result(run_dir: Path, metric: str) -> dict[str, Any]:
    """Best and final value of `metric` in a run's metrics.jsonl, with when the best was reached."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return {"evaluations": 0}
    evaluations = [row for row in map(json.loads, metrics.read_text().splitlines()) if metric in row]
    if not evaluations:
        return {"evaluations": 0}
    best = max(evaluations, key=lambda row: row[metric])
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    return {
        "evaluations": len(evaluations),
        "best": best[metric],
        "best_step": best["step"],
        "best_seconds": best.get("time"),
        "final": evaluations[-1][metric],
        "final_step": evaluations[-1]["step"],
        "env_steps": summary.get("env_steps"),
        "updates": summary.get("updates"),
        "wall_seconds": summary.get("wall_seconds"),
        "finished": bool(summary),
        "curve": [(row["step"], row.get("time"), row[metric]) for row in evaluations],
    }


def markdown_table(name: str, task: LaptopTask, arguments: LaptopArguments, results: list[dict[str, Any]]) -> str:
    label = "success" if task.metric == "eval/success" else "return"
    lines = [
        f"`wmlab bench laptop --task {name} --seeds {arguments.seeds} --time-limit {arguments.time_limit:g}`"
        f" — {machine_description()['date']}, {arguments.threads} torch thread(s) per run, {arguments.seeds} runs side by side.",
        "",
        f"| seed | best eval {label} | at step | at seconds | final eval {label} | env steps | updates | wall seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed, result in enumerate(results):
        if not result.get("evaluations"):
            lines.append(f"| {seed} | (no evaluation yet) | | | | | | |")
            continue
        lines.append(
            f"| {seed} | {result['best']:.3g} | {result['best_step']} | {result['best_seconds']:.0f} | {result['final']:.3g} | "
            f"{result['env_steps']} | {result['updates']} | {result['wall_seconds']} |"
        )
    if task.published:
        lines += ["", f"Published: {task.published}."]
    return "\n".join(lines) + "\n"


def run(argv: list[str]) -> int:
    arguments = tyro.cli(LaptopArguments, args=argv, prog="wmlab bench laptop", description=__doc__.splitlines()[0])
    if arguments.task not in TASKS:
        raise UnknownNameError(f"unknown laptop task {arguments.task!r}; tasks: {', '.join(TASKS)}")
    task = TASKS[arguments.task]
    if arguments.only_seed is not None and not 0 <= arguments.only_seed < arguments.seeds:
        raise WmlabError(f"--only-seed {arguments.only_seed} is not one of the seeds 0 .. {arguments.seeds - 1}")
    base = arguments.run_dir / arguments.task
    if arguments.force and base.exists():
        shutil.rmtree(base)
    (base / "bench").mkdir(parents=True, exist_ok=True)
    processes = []
    for seed in range(arguments.seeds):
        run_dir = base / f"seed{seed}"
        if arguments.only_seed not in (None, seed) or (run_dir / "summary.json").is_file():
            continue  # not asked for now, or finished (its budget or its steps are spent)
        resume = (run_dir / "checkpoints").is_dir()
        log = open(base / f"seed{seed}.log", "a")
        environment = {
            **os.environ,
            "OMP_NUM_THREADS": str(arguments.threads),
            "MKL_NUM_THREADS": str(arguments.threads),
        }
        processes.append(
            subprocess.Popen(
                train_command(task, run_dir, seed, arguments, resume),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        )
        print(f"seed {seed}: {'resumed' if resume else 'started'} in {run_dir} (log {base / f'seed{seed}.log'})")
    started = time.perf_counter()
    failed = [process.args for process in processes if process.wait() != 0]
    if failed:
        print(f"{len(failed)} run(s) failed; see the logs in {base}", file=sys.stderr)
        return 1
    results = [seed_result(base / f"seed{seed}", task.metric) for seed in range(arguments.seeds)]
    document = {
        "benchmark": "laptop",
        "task": arguments.task,
        "settings": {**task.__dict__, "options": list(task.options)},
        "arguments": {key: str(value) for key, value in arguments.__dict__.items()},
        "results": results,
        "session_seconds": round(time.perf_counter() - started, 1),
        "machine": machine_description(),
    }
    (base / "bench" / f"laptop-{arguments.task}.json").write_text(json.dumps(document, indent=2))
    markdown = markdown_table(arguments.task, task, arguments, results)
    print(markdown)
    if arguments.markdown is not None:
        arguments.markdown.write_text(markdown)
    return 0
