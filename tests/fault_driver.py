"""Driver of tests/test_fault_injection.py (run as a subprocess: python tests/fault_driver.py OUT).

It imports torch and wmlab once, then forks every training session, so that each of the many
sessions it kills starts in milliseconds:
- OUT/reference: one uninterrupted run;
- OUT/killed: the same run, killed with SIGKILL by each entry of PLAN in turn (a kill point of
  wmlab.core.faults, armed through WMLAB_TEST_KILL_AT in the forked child only, or a timer at a
  random moment), resumed after each kill (started afresh when no checkpoint was written yet),
  then resumed to the end.
It writes OUT/report.json: for each session, what was to kill it and how it ended.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402
import torch._dynamo  # noqa: E402, F401  (imported by the first optimiser otherwise: seconds in every child)
import torch.utils.tensorboard  # noqa: E402, F401

import wmlab.agents.mpc.agent  # noqa: E402, F401
from wmlab.agents.mpc.config import MPCConfig  # noqa: E402
from wmlab.core.errors import RunDirectoryError  # noqa: E402
from wmlab.core.faults import VARIABLE  # noqa: E402
from wmlab.models.mlp import MLPWorldModelConfig  # noqa: E402
from wmlab.planners.shooting import RandomShootingConfig  # noqa: E402
from wmlab.runs.config import TrainConfig  # noqa: E402
from wmlab.runs.directory import RunSpec, find_checkpoint  # noqa: E402
from wmlab.train.loop import Trainer  # noqa: E402

SPEC = RunSpec(
    "mpc",
    "two-rooms-state",
    train=TrainConfig(
        steps=800,
        learning_starts=30,
        train_ratio=8.0,
        batch_size=4,
        sequence_length=4,
        eval_every=40,
        eval_episodes=1,
        checkpoint_every=20,
        log_every=10,
        progress=False,
        tensorboard=True,
    ),
    agent=MPCConfig(
        model=MLPWorldModelConfig(hidden_size=16, layers=1),
        planner=RandomShootingConfig(horizon=2, candidates=8),
        random_steps=30,
    ),
    env_kwargs={"max_episode_steps": 15},
)

#: "POINT:N" kills at the N-th time the session reaches POINT; "timer" at a random moment.
PLAN = [
    "checkpoint-agent:2",
    "episode-write:1",
    "checkpoint-snapshot:1",
    "log-torn:2",
    "checkpoint-loop:1",
    "timer",
    "update:4",
    "checkpoint-complete:1",
    "episode-saved:1",
    "checkpoint-between-renames:1",
    "log-line:2",
    "timer",
    "checkpoint-renamed:1",
    "evaluation:1",
    "step:8",
    "timer",
    "checkpoint-between-renames:2",
    "checkpoint-agent:1",
    "episode-write:2",
    "timer",
    "log-torn:1",
    "checkpoint-renamed:2",
    "update:3",
    "timer",
    "checkpoint-loop:2",
    "episode-saved:2",
    "checkpoint-complete:2",
    "timer",
]
#: A session that outlives this is killed by the timer anyway (its point was not reached in time).
LONGEST_SESSION = 20.0


def session(run_dir: Path, kill: str | None) -> None:
    """The body of one forked child: resume (or start) the run; exits 0 when it completes."""
    try:
        torch.set_num_threads(1)
        if kill is not None and kill != "timer":
            os.environ[VARIABLE] = kill
        try:
            find_checkpoint(run_dir)
            resume = True
        except RunDirectoryError:
            resume = False  # killed before its first checkpoint: nothing to resume, start again
        Trainer(SPEC, run_dir, resume=resume, force=not resume).run()
    except BaseException:
        traceback.print_exc()
        os._exit(3)
    os._exit(0)


def fork_session(run_dir: Path, kill: str | None, rng: random.Random) -> dict:
    delay = rng.uniform(0.05, 0.6) if kill == "timer" else LONGEST_SESSION if kill is not None else float("inf")
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        session(run_dir, kill)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() - started > delay:
            os.kill(pid, signal.SIGKILL)
            done, status = os.waitpid(pid, 0)
            break
        time.sleep(0.01)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    outcome = "killed" if killed else f"exit {os.WEXITSTATUS(status)}" if os.WIFEXITED(status) else f"status {status}"
    return {
        "kill": kill,
        "outcome": outcome,
        "seconds": round(time.perf_counter() - started, 2),
        "timer_delay": round(delay, 2) if kill == "timer" else None,
    }


def main(out: Path) -> None:
    rng = random.Random(int(os.environ.get("WMLAB_FAULT_SEED", "0")))
    started = time.perf_counter()
    reference = fork_session(out / "reference", None, rng)
    sessions = [fork_session(out / "killed", kill, rng) for kill in PLAN]
    sessions.append(fork_session(out / "killed", None, rng))
    report = {"reference": reference, "sessions": sessions, "seconds": round(time.perf_counter() - started, 1)}
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
