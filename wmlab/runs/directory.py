"""A run directory's identity and how a trained run is read back.

    RUN_DIR/config.json               algorithm, environment and every setting (RunSpec)
    RUN_DIR/checkpoints/rank<r>/      agent.safetensors + agent.json, loop.* (wmlab.core.serialization)

`wmlab train`, `wmlab eval`, `wmlab record --policy RUN_DIR`, the studies and the report all
read runs through these functions, so none of them imports the training loop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wmlab.core.config import from_dict
from wmlab.core.errors import RunDirectoryError
from wmlab.core.registry import ALGORITHMS
from wmlab.core.serialization import load_state
from wmlab.envs.adapter import make_env
from wmlab.runs.config import TrainConfig

CONFIG_FILE = "config.json"
# Fields that may change when a run is resumed; anything else would make it another run.
RESUMABLE_CHANGES = {"train.steps", "train.progress", "train.device", "train.threads", "train.tensorboard", "train.eval_every", "train.eval_episodes", "train.log_every", "train.checkpoint_every", "train.time_limit"}


@dataclass(frozen=True)
class RunSpec:
    """What a run directory's config.json records."""

    algorithm: str
    env: str
    train: TrainConfig
    agent: Any
    env_kwargs: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "algorithm": self.algorithm,
            "env": self.env,
            "env_kwargs": self.env_kwargs,
            "train": asdict(self.train),
            "agent": asdict(self.agent),
        }


def load_run_spec(run_dir: Path) -> RunSpec:
    """Read RUN_DIR/config.json back into typed configs; clear errors when missing or corrupt."""
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise RunDirectoryError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise RunDirectoryError(f"{run_dir} holds no run ({CONFIG_FILE} is missing)")
    try:
        raw = json.loads(path.read_text())
        entry = ALGORITHMS.get(raw["algorithm"])
        return RunSpec(
            algorithm=raw["algorithm"],
            env=raw["env"],
            env_kwargs=raw.get("env_kwargs", {}),
            train=from_dict(TrainConfig, raw["train"]),
            agent=from_dict(entry.load_config(), raw["agent"]),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise RunDirectoryError(f"{path} is corrupt ({error})") from None


def build_agent(spec: RunSpec, observation_space, action_space, seed: int):
    agent_class = ALGORITHMS.get(spec.algorithm).load()
    return agent_class(spec.agent, observation_space, action_space, seed=seed, device=spec.train.device)


def load_trained_agent(run_dir: str | Path, rank: int = 0):
    """(RunSpec, agent) with the weights of the run's latest checkpoint, for evaluation."""
    run_dir = Path(run_dir)
    spec = load_run_spec(run_dir)
    checkpoint = run_dir / "checkpoints" / f"rank{rank}"
    if not checkpoint.is_dir():
        raise RunDirectoryError(f"{run_dir} has no checkpoint yet ({checkpoint} is missing)")
    env = make_env(spec.env, **spec.env_kwargs)
    agent = build_agent(spec, env.observation_space, env.action_space, seed=spec.train.seed)
    env.close()
    agent.load_state_dict(load_state(checkpoint, "agent"))
    return spec, agent
