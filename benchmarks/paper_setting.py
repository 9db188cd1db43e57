"""The paper-setting runs of the RSSM and TD-MPC2 issues, side by side on one accelerator, in a
fixed wall-clock budget: as many environment steps of each paper's schedule as the budget holds.

    python benchmarks/paper_setting.py --device cuda --time-limit 420 --out $OUT
    python benchmarks/paper_setting.py --device cuda --smoke --out $OUT     # every job for a few steps

Several processes on one GPU without NVIDIA's Multi-Process Service are time-sliced: on an H200
(2026-12-04) six of these jobs ran at 4-5 agent steps per second each, where one TD-MPC2 5M
process alone ran at 10.4 and three under MPS at 10.8-11.1 each. `--mps` starts the MPS daemon
(`nvidia-cuda-mps-control -d`, needs the rights to) before the jobs and stops it after them.

Jobs (each an ordinary `wmlab train` process with `--train.device`):
- `tdmpc2`: TD-MPC2 5M on dmc:cartpole-swingup from states, action repeat 2, batch 256 x 4, one
  update per agent step after 2500 random seed steps (published 839 +- 35 at 100k steps).
- `dreamer`: DreamerV3 (the authors' V3 settings: LaProp 4e-5 with warm-up) at size12m on the same
  task, batch 16 x 64, train ratio 512 (published 677 +- 33 at 100k steps).
- `planet`: PlaNet on dmc:cartpole-swingup from 64 x 64 pixels, action repeat 8, batch 50 x 50,
  CEM 1000 candidates / top 100 / 10 iterations / horizon 12, 5 random seed episodes, and PlaNet's
  100 updates per 125-step episode (train ratio 100 * 50 * 50 / 125 = 2000; published 297 +- 39 at
  100k steps).

Steps are agent steps (wmlab's count): times the action repeat for control steps. Every
`--snapshot-every` seconds the runs' metrics, summaries and configs (not their replay or
checkpoints) are packed into OUT/paper_setting_runs.tar.gz, so a run cut off by its host still
returns its curve; at the end OUT/paper_setting.json holds each run's best and final evaluation
(wmlab.bench.laptop.seed_result).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from wmlab.bench.laptop import seed_result

DMC_STATES = ("--env", "dmc:cartpole-swingup", "--env-kwargs", json.dumps({"action_repeat": 2}))

JOBS: dict[str, tuple[str, ...]] = {
    "tdmpc2": (
        "--algo",
        "tdmpc2",
        *DMC_STATES,
        "--agent.model.size",
        "5M",
        "--agent.random-steps",
        "2500",
        "--train.batch-size",
        "256",
        "--train.sequence-length",
        "4",
        "--train.train-ratio",
        "1024",
        "--train.learning-starts",
        "2500",
        "--train.eval-every",
        "2500",
        "--train.eval-episodes",
        "2",
    ),
    "dreamer": (
        "--algo",
        "dreamer",
        *DMC_STATES,
        "--agent.model.size",
        "size12m",
        "--train.batch-size",
        "16",
        "--train.sequence-length",
        "64",
        "--train.train-ratio",
        "512",
        "--train.learning-starts",
        "2500",
        "--train.eval-every",
        "2500",
        "--train.eval-episodes",
        "5",
    ),
    "planet": (
        "--algo",
        "planet",
        "--env",
        "dmc:cartpole-swingup",
        "--env-kwargs",
        json.dumps({"observation": "pixels", "action_repeat": 8}),
        "--agent.random-steps",
        "625",
        "--train.batch-size",
        "50",
        "--train.sequence-length",
        "50",
        "--train.train-ratio",
        "2000",
        "--train.learning-starts",
        "625",
        "--train.eval-every",
        "1250",
        "--train.eval-episodes",
        "1",
    ),
}

#: A few steps of every code path (collection, update, evaluation) on the device, with episodes cut
#: to 200 control steps; the numbers mean nothing.
SMOKE = {
    "tdmpc2": (
        "--agent.random-steps",
        "50",
        "--train.learning-starts",
        "50",
        "--train.eval-every",
        "100",
        "--train.eval-episodes",
        "1",
        "--train.steps",
        "100",
    ),
    "dreamer": (
        "--train.learning-starts",
        "64",
        "--train.eval-every",
        "100",
        "--train.eval-episodes",
        "1",
        "--train.steps",
        "100",
    ),
    "planet": (
        "--agent.random-steps",
        "25",
        "--train.learning-starts",
        "25",
        "--train.eval-every",
        "50",
        "--train.eval-episodes",
        "1",
        "--train.steps",
        "50",
        "--agent.planner.candidates",
        "100",
    ),
}


def command(job: str, seed: int, run_dir: Path, arguments: argparse.Namespace) -> list[str]:
    options = list(JOBS[job])
    if arguments.smoke:
        index = options.index("--env-kwargs") + 1
        options[index] = json.dumps({**json.loads(options[index]), "time_limit": 200})
        options += SMOKE[job]
    else:
        options += ["--train.steps", "100000", "--train.time-limit", str(arguments.time_limit)]
    return [
        sys.executable,
        "-m",
        "wmlab.cli",
        "train",
        *options,
        "--run-dir",
        str(run_dir),
        "--force",
        "--train.seed",
        str(seed),
        "--train.device",
        arguments.device,
        "--train.threads",
        str(arguments.threads),
        "--train.no-progress",
        "--train.log-every",
        "250",
        "--train.checkpoint-every",
        "1000000",
    ]


def snapshot(runs: Path, archive: Path) -> None:
    """Pack every run's small files (metrics, summary, config, logs) into `archive`, atomically."""
    partial = archive.with_suffix(".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for path in sorted(runs.rglob("*")):
            if path.is_file() and (path.suffix in (".jsonl", ".json", ".log") or path.name.startswith("events.out")):
                tar.add(path, arcname=str(path.relative_to(runs.parent)))
    partial.replace(archive)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--time-limit", type=float, default=420.0, help="Wall-clock training budget of each run (s).")
    parser.add_argument("--jobs", default="tdmpc2:3,dreamer:2,planet:1", help="job:seeds, comma-separated.")
    parser.add_argument("--threads", type=int, default=2, help="Torch CPU threads per run.")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/paper-setting")))
    parser.add_argument("--runs", type=Path, default=Path("runs/paper-setting"))
    parser.add_argument("--snapshot-every", type=float, default=30.0)
    parser.add_argument(
        "--smoke", action="store_true", help="Each job for a few steps: do the code paths run on the device?"
    )
    parser.add_argument(
        "--mps", action="store_true", help="Run the jobs under CUDA MPS (one GPU shared without time-slicing)."
    )
    arguments = parser.parse_args()
    if arguments.mps:
        subprocess.run(["nvidia-cuda-mps-control", "-d"], check=True)
    try:
        return run_jobs(arguments)
    finally:
        if arguments.mps:
            subprocess.run(["nvidia-cuda-mps-control"], input=b"quit\n", check=False)


def run_jobs(arguments: argparse.Namespace) -> int:
    arguments.out.mkdir(parents=True, exist_ok=True)
    arguments.runs.mkdir(parents=True, exist_ok=True)
    processes: dict[str, subprocess.Popen] = {}
    for entry in arguments.jobs.split(","):
        job, seeds = entry.split(":")
        for seed in range(int(seeds)):
            name = f"{job}-seed{seed}"
            with open(arguments.runs / f"{name}.log", "w") as log:  # the child keeps its own copy
                processes[name] = subprocess.Popen(
                    command(job, seed, arguments.runs / name, arguments), stdout=log, stderr=subprocess.STDOUT
                )
    started = time.perf_counter()
    archive = arguments.out / "paper_setting_runs.tar.gz"
    while any(process.poll() is None for process in processes.values()):
        time.sleep(min(arguments.snapshot_every, 5.0) if arguments.smoke else arguments.snapshot_every)
        snapshot(arguments.runs, archive)
        running = [name for name, process in processes.items() if process.poll() is None]
        print(f"{time.perf_counter() - started:6.0f} s: running {', '.join(running) or 'none'}", flush=True)
    snapshot(arguments.runs, archive)
    results = {}
    for name, process in processes.items():
        results[name] = {"exit_code": process.returncode, **seed_result(arguments.runs / name, "eval/return")}
        if process.returncode != 0:
            print(f"--- {name} failed (exit {process.returncode}); the end of its log:")
            print("\n".join((arguments.runs / f"{name}.log").read_text().splitlines()[-25:]))
    document = {
        "arguments": {key: str(value) for key, value in vars(arguments).items()},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    (arguments.out / "paper_setting.json").write_text(json.dumps(document, indent=2))
    for name, result in results.items():
        print(
            name,
            {
                key: result.get(key)
                for key in ("exit_code", "best", "best_step", "final", "env_steps", "updates", "wall_seconds")
            },
        )
    return 0 if all(process.returncode == 0 for process in processes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
