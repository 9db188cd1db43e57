"""A run directory's identity and how a trained run is read back.

    RUN_DIR/config.json               algorithm, environment and every setting (RunSpec), or, for
                                      a world model fitted to a dataset, "kind": "offline" with the
                                      model family, the dataset and every setting (OfflineRunSpec)
    RUN_DIR/checkpoints/rank<r>/      agent.* (online) or model.* (offline) weights, and the
                                      trainer's state (wmlab.core.serialization: safetensors + JSON)

`wmlab train`, `wmlab eval`, `wmlab record --policy RUN_DIR`, the studies and the report all
read runs through these functions, so none of them imports the training loop.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wmlab.core.config import from_dict
from wmlab.core.errors import IncompatibleSpaceError, RunDirectoryError
from wmlab.core.files import read_json, sync
from wmlab.core.registry import ALGORITHMS, MODELS
from wmlab.core.serialization import load_state
from wmlab.core.spaces import space_from_description
from wmlab.envs.adapter import check_run_environment, make_env
from wmlab.runs.config import OfflineTrainConfig, TrainConfig

CONFIG_FILE = "config.json"
#: Written last into a checkpoint folder: its presence means every other file there is complete.
COMPLETE_FILE = "complete.json"
# Fields that may change when a run is resumed; anything else would make it another run.
RESUMABLE_CHANGES = {
    "train.steps",
    "train.progress",
    "train.device",
    "train.threads",
    "train.tensorboard",
    "train.eval_every",
    "train.eval_episodes",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_every",
    "train.time_limit",
}
#: Folder of a run's kept weights (`--train.keep-every`): RUN_DIR/kept/step-N, each a run directory.
KEPT_FOLDER = "kept"


@dataclass(frozen=True)
class RunSpec:
    """What a run directory's config.json records."""

    algorithm: str
    env: str
    train: TrainConfig
    agent: Any
    env_kwargs: dict = field(default_factory=dict)
    eval_env_kwargs: dict = field(default_factory=dict)
    """Environment options that evaluation episodes change (Atari: trained on lives, scored on games)."""

    @property
    def evaluation_env_kwargs(self) -> dict:
        """The environment options of evaluation episodes: the run's, with `eval_env_kwargs` over them."""
        return {**self.env_kwargs, **self.eval_env_kwargs}

    def to_json(self) -> dict:
        return {
            "algorithm": self.algorithm,
            "env": self.env,
            "env_kwargs": self.env_kwargs,
            "eval_env_kwargs": self.eval_env_kwargs,
            "train": asdict(self.train),
            "agent": asdict(self.agent),
        }


def load_run_spec(run_dir: Path) -> RunSpec:
    """Read RUN_DIR/config.json back into typed configs; clear errors when missing or corrupt."""
    path = Path(run_dir) / CONFIG_FILE
    raw = _read_config(Path(run_dir))
    try:
        if raw.get("kind") == OFFLINE_KIND:
            raise RunDirectoryError(
                f"{run_dir} holds a world model trained offline, not an agent: evaluate it with `wmlab eval {run_dir} --suite horizon` (or calibration, bound, controllability)"
            )
        entry = ALGORITHMS.get(raw["algorithm"])
        check_run_environment(raw["env"], run_dir)
        for key in ("env_kwargs", "eval_env_kwargs"):
            if not isinstance(raw.get(key, {}), dict):
                raise ValueError(f"{key} must be a JSON object, found {type(raw[key]).__name__}")
        return RunSpec(
            algorithm=raw["algorithm"],
            env=raw["env"],
            env_kwargs=raw.get("env_kwargs", {}),
            eval_env_kwargs=raw.get("eval_env_kwargs", {}),
            train=from_dict(TrainConfig, raw["train"]),
            agent=from_dict(entry.load_config(), raw["agent"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise RunDirectoryError(f"{path} is corrupt ({error})") from None


def find_checkpoint(run_dir: Path, rank: int = 0) -> Path:
    """The newest complete checkpoint of `rank`. Reads only.

    A complete rank<r>.new (a crash came after it was marked complete, before or between the
    renames) is newer than rank<r>; rank<r>.old is used only when rank<r> is missing."""
    target = Path(run_dir) / "checkpoints" / f"rank{rank}"
    staging, previous = target.with_name(target.name + ".new"), target.with_name(target.name + ".old")
    if (staging / COMPLETE_FILE).is_file():
        return staging
    if target.is_dir():
        return target
    if (previous / COMPLETE_FILE).is_file():
        return previous
    raise RunDirectoryError(f"{run_dir} has no checkpoint for rank {rank} ({target} is missing)")


def resume_checkpoint(run_dir: Path, rank: int = 0) -> Path:
    """find_checkpoint(), moved to rank<r> if a crash left it under another name (said on stderr:
    which one, at which step); leftovers of an interrupted write are removed."""
    try:
        found = find_checkpoint(run_dir, rank)
    except RunDirectoryError:
        raise RunDirectoryError(f"cannot resume {run_dir}: it has no checkpoint for rank {rank}") from None
    if json.loads((found / COMPLETE_FILE).read_text()).get("kept"):
        raise RunDirectoryError(
            f"cannot resume {run_dir}: it holds weights kept along a run (--train.keep-every), which "
            "evaluation reads but training cannot continue from; resume the run it was kept from"
        )
    target = Path(run_dir) / "checkpoints" / f"rank{rank}"
    previous = target.with_name(target.name + ".old")
    if found != target:
        if target.exists():  # found is rank<r>.new: finish the write's renames
            shutil.rmtree(previous, ignore_errors=True)
            target.rename(previous)
        found.rename(target)
        sync(target.parent)
        step = json.loads((target / COMPLETE_FILE).read_text())["env_steps"]
        print(
            f"wmlab: recovered checkpoint {found} (env step {step} of rank {rank}), the newest complete one: "
            "a crash interrupted the write of a checkpoint",
            file=sys.stderr,
        )
    for leftover in (target.with_name(target.name + ".new"), previous):
        shutil.rmtree(leftover, ignore_errors=True)
    return target


def build_agent(spec: RunSpec, observation_space, action_space, seed: int):
    agent_class = ALGORITHMS.get(spec.algorithm).load()
    return agent_class(spec.agent, observation_space, action_space, seed=seed, device=spec.train.device)


def load_trained_agent(run_dir: str | Path, rank: int = 0):
    """(RunSpec, agent) with the weights of the run's latest checkpoint, for evaluation."""
    run_dir = Path(run_dir)
    spec = load_run_spec(run_dir)
    checkpoint = find_checkpoint(run_dir, rank)
    env = make_env(spec.env, **spec.env_kwargs)
    agent = build_agent(spec, env.observation_space, env.action_space, seed=spec.train.seed)
    env.close()
    agent.load_state_dict(load_state(checkpoint, "agent"))
    return spec, agent


# --------------------------------------------------------------------------------------------
# Offline runs: a world model fitted to a recorded dataset (wmlab.train.offline)

OFFLINE_KIND = "offline"
#: Files of an offline run's model weights, under checkpoints/rank0/.
MODEL_STATE = "model"
#: Fields of an offline run that may change when it is resumed; anything else would make it another run.
OFFLINE_RESUMABLE_CHANGES = {
    "train.updates",
    "train.progress",
    "train.device",
    "train.threads",
    "train.tensorboard",
    "train.log_every",
    "train.checkpoint_every",
    "train.time_limit",
}


@dataclass(frozen=True)
class OfflineRunSpec:
    """What the config.json of an offline run records: the model family and its config, the
    dataset (with the spaces and size it had when the run started) and the trainer's settings."""

    model: str
    dataset: str
    train: OfflineTrainConfig
    world_model: Any
    observation_space: dict
    action_space: dict
    with_actions: bool = True
    dataset_steps: int = 0
    env: str = ""
    env_kwargs: dict = field(default_factory=dict)
    held_out: float = 0.0
    """Share of the dataset's episodes kept apart from training, for evaluation (video runs)."""
    frame_size: tuple[int, int] | None = None
    """(H, W) every frame is resized to when read (video runs); None keeps the dataset's size."""

    def to_json(self) -> dict:
        return {
            "kind": OFFLINE_KIND,
            "held_out": self.held_out,
            "frame_size": None if self.frame_size is None else list(self.frame_size),
            "model": self.model,
            "dataset": self.dataset,
            "env": self.env,
            "env_kwargs": self.env_kwargs,
            "with_actions": self.with_actions,
            "dataset_steps": self.dataset_steps,
            "observation_space": self.observation_space,
            "action_space": self.action_space,
            "train": asdict(self.train),
            "world_model": asdict(self.world_model),
        }


def _read_config(run_dir: Path) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise RunDirectoryError(f"run directory {run_dir} does not exist")
    raw = read_json(path, RunDirectoryError, f"{run_dir} holds no run ({CONFIG_FILE} is missing)", "is corrupt")
    if not isinstance(raw, dict):
        raise RunDirectoryError(f"{path} is corrupt (it holds no JSON object)")
    return raw


def is_offline_run(run_dir: str | Path) -> bool:
    """Whether RUN_DIR holds a world model fitted to a dataset (rather than an agent's run)."""
    return _read_config(Path(run_dir)).get("kind") == OFFLINE_KIND


def load_offline_run_spec(run_dir: str | Path) -> OfflineRunSpec:
    """Read an offline run's config.json back into typed configs; clear errors when corrupt."""
    path = Path(run_dir) / CONFIG_FILE
    raw = _read_config(Path(run_dir))
    if raw.get("kind") != OFFLINE_KIND:
        raise RunDirectoryError(f"{run_dir} holds an agent's run, not a world model trained offline")
    try:
        entry = MODELS.get(raw["model"])
        return OfflineRunSpec(
            model=raw["model"],
            dataset=raw["dataset"],
            env=raw.get("env", ""),
            env_kwargs=raw.get("env_kwargs", {}),
            held_out=float(raw.get("held_out", 0.0)),
            frame_size=None if raw.get("frame_size") is None else tuple(int(side) for side in raw["frame_size"]),
            with_actions=bool(raw["with_actions"]),
            dataset_steps=int(raw.get("dataset_steps", 0)),
            observation_space=raw["observation_space"],
            action_space=raw["action_space"],
            train=from_dict(OfflineTrainConfig, raw["train"]),
            world_model=from_dict(entry.load_config(), raw["world_model"]),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise RunDirectoryError(f"{path} is corrupt ({error})") from None


def build_world_model(spec: OfflineRunSpec):
    """The spec's model family, built for the dataset's spaces, on the spec's device. A family
    that cannot take those spaces raises IncompatibleSpaceError naming the dataset's manifest."""
    model_class = MODELS.get(spec.model).load()
    observation_space = space_from_description(spec.observation_space)
    action_space = space_from_description(spec.action_space)
    try:
        model = model_class(spec.world_model, observation_space, action_space)
    except IncompatibleSpaceError as error:
        manifest = Path(spec.dataset) / "manifest.json"
        raise IncompatibleSpaceError(f"{spec.model} cannot learn from the dataset {manifest}: {error}") from None
    return model.to(spec.train.device)


def load_trained_model(run_dir: str | Path):
    """(OfflineRunSpec, world model) with the weights of an offline run's latest checkpoint."""
    run_dir = Path(run_dir)
    spec = load_offline_run_spec(run_dir)
    checkpoint = run_dir / "checkpoints" / "rank0"
    if not checkpoint.is_dir():
        raise RunDirectoryError(f"{run_dir} has no checkpoint yet ({checkpoint} is missing)")
    model = build_world_model(spec)
    model.load_state_dict(load_state(checkpoint, MODEL_STATE))
    return spec, model


def refuse_to_overwrite(run_dir: Path, force: bool) -> bool:
    """Whether `run_dir` holds a run that `force` lets the caller replace; without `force` such a
    directory raises RunDirectoryError saying how to continue or replace it."""
    if not (run_dir.exists() and any(run_dir.iterdir())):
        return False
    if not force:
        raise RunDirectoryError(
            f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, "
            "--force to replace it, or choose another --run-dir"
        )
    return True
