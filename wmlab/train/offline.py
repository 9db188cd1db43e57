"""The offline trainer: any registered world model, fitted to a recorded dataset, in an ordinary
run directory.

    wmlab record --env two-rooms-state --episodes 50 --out data/rooms
    wmlab train --model rssm --dataset data/rooms --run-dir runs/rssm-rooms --train.updates 5000
    wmlab train --resume runs/rssm-rooms --train.updates 10000
    wmlab eval runs/rssm-rooms --suite horizon
    wmlab report runs/rssm-rooms

Each update samples B windows of T steps from the dataset (`wmlab.data.dataset`), takes the model's
own `loss(batch)` and one Adam step on it (AdamW with a `weight_decay`, on the whole model or on
the parts named in `weight_decay_parts`; gradient norm clipped, globally or per part with
`grad_clip_parts`); a model with an EMA target (`update_target`, the JEPA family's) moves it after
each step. A multi-stage pipeline passes its own `TrainingObjective` instead (one part of the
model, another loss, clipping by value, state of its own such as a second network): the trainer's
loop, run directory and resume stay the same. The run directory holds what an online run holds,
so eval, the report and the studies read it the same way:

    RUN_DIR/config.json          "kind": "offline", the model family and config, the dataset, settings
    RUN_DIR/metrics.jsonl        averaged loss terms every `log_every` updates (step = updates)
    RUN_DIR/tensorboard/         the same metrics for TensorBoard
    RUN_DIR/checkpoints/rank0/   model.* (weights) and trainer.* (optimiser, counters, random
                                 states, the window sampler): safetensors + JSON
    RUN_DIR/summary.json         headline numbers at the end

Resuming restores every random state, so a run interrupted and resumed gives the weights of an
uninterrupted one, bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import tyro

from wmlab.core.config import differences, option_value
from wmlab.core.errors import DatasetError, RunDirectoryError, WmlabError
from wmlab.core.progress import StageProgress
from wmlab.core.registry import MODELS
from wmlab.core.serialization import (
    global_random_state,
    load_state,
    restore_global_random_state,
    save_checkpoint_directory,
)
from wmlab.data.dataset import MANIFEST_FILE, OfflineDataset, load_dataset, read_manifest
from wmlab.runs.config import OfflineTrainConfig, command_option, run_directory_options
from wmlab.runs.directory import (
    CONFIG_FILE,
    MODEL_STATE,
    OFFLINE_RESUMABLE_CHANGES,
    OfflineRunSpec,
    build_world_model,
    is_offline_run,
    load_offline_run_spec,
    refuse_to_overwrite,
)
from wmlab.train.logger import MetricsAverager, MetricsLogger

TRAINER_STATE = "trainer"
#: Families that have no loss of their own to fit offline, and why.
NOT_OFFLINE = {
    "tabular": "the tabular model is a table of counted transitions that the Dyna agents fill as they act; "
    "it has no gradient loss (train it with `wmlab train --algo dyna-q`)",
    "tdmpc": "TD-MPC2's value heads learn by temporal differences from its own policy prior and target "
    "networks, which the TD-MPC2 agent updates beside the model (train it with `wmlab train --algo tdmpc2`)",
}


@dataclass
class OfflineCounters:
    """Everything the schedule depends on; saved with each checkpoint."""

    updates: int = 0
    next_log: int = 0
    next_checkpoint: int = 0
    elapsed_seconds: float = 0.0


# ----------------------------------------------------------------------------------------------
# What an update fits


class TrainingObjective:
    """What each update of the offline trainer fits: by default every parameter of the model on its
    own `loss(batch)`, the global gradient norm clipped, and the model's EMA target (if any) moved
    after the step. A pipeline stage subclasses it to fit one part of a model (World Models' V, then
    M on V's codes) or to add a loss with its own network and optimiser (the JEPA planner's value
    shaping); whatever it keeps is saved with the trainer's checkpoint (`state_dict`)."""

    def prepare(self, model: torch.nn.Module) -> None:
        """Called once the model is built, before the optimiser is made and any checkpoint is loaded."""

    def parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """The parameters the trainer's Adam steps."""
        return list(model.parameters())

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss, metrics) of one batch of B x T windows."""
        return model.loss(batch)

    def clip_gradients(self, parameters: list[torch.nn.Parameter], limit: float) -> float:
        """Clip the gradients in place (limit 0: not at all); returns their global norm before."""
        return float(torch.nn.utils.clip_grad_norm_(parameters, limit if limit > 0 else float("inf")))

    def after_step(self, model: torch.nn.Module) -> None:
        """After the optimiser's step: an EMA target encoder follows the trained one."""
        update_target = getattr(model, "update_target", None)
        if update_target is not None:
            update_target()

    def state_dict(self) -> dict[str, Any]:
        """What the objective needs to continue exactly (tensors and JSON values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`."""


# ----------------------------------------------------------------------------------------------
# The trainer


def make_offline_optimizer(
    parameters: list[torch.nn.Parameter], config: OfflineTrainConfig, model: torch.nn.Module | None = None
) -> torch.optim.Optimizer:
    """Adam, or AdamW when the config has a weight decay: on every parameter, or only on the model's
    parts named in `weight_decay_parts` (top-level modules), the rest in a group without decay.
    The decay matters more than its size suggests (docs/benchmarks.md: with 1e-2 on its reward
    model UniSim's reward model learns, where it stays at the prior without)."""
    options = dict(lr=config.learning_rate, eps=config.adam_epsilon)
    if config.weight_decay <= 0:
        return torch.optim.Adam(parameters, **options)
    if not config.weight_decay_parts:
        return torch.optim.AdamW(parameters, weight_decay=config.weight_decay, **options)
    decayed = {id(parameter) for parameter in part_parameters(model, config.weight_decay_parts, "weight-decay-parts")}
    groups = [
        {"params": [p for p in parameters if id(p) in decayed], "weight_decay": config.weight_decay},
        {"params": [p for p in parameters if id(p) not in decayed], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([group for group in groups if group["params"]], **options)


def part_parameters(model: torch.nn.Module | None, parts: tuple[str, ...], option: str) -> list[torch.nn.Parameter]:
    """The parameters of the model's top-level modules named in `parts` (by `--train.OPTION`); a
    clear error for a name the model does not have."""
    children = dict(model.named_children()) if model is not None else {}
    available = sorted(name for name, child in children.items() if any(True for _ in child.parameters()))
    unknown = [part for part in parts if part not in available]
    if unknown:
        raise WmlabError(
            f"--train.{option} names {', '.join(map(repr, unknown))}, which this model does not have; "
            f"its parts with parameters are: {', '.join(available) or 'none'}"
        )
    return [parameter for part in parts for parameter in children[part].parameters()]


def clip_groups(
    parameters: list[torch.nn.Parameter], model: torch.nn.Module, parts: tuple[str, ...]
) -> dict[str, list[torch.nn.Parameter]]:
    """The parameters clipped together: each named part on its own, "" for the rest (one group of
    all of them when `parts` is empty)."""
    groups: dict[str, list[torch.nn.Parameter]] = {}
    taken: set[int] = set()
    trained = {id(parameter) for parameter in parameters}
    for part in parts:
        groups[part] = [p for p in part_parameters(model, (part,), "grad-clip-parts") if id(p) in trained]
        taken.update(id(p) for p in groups[part])
    groups[""] = [p for p in parameters if id(p) not in taken]
    return {name: group for name, group in groups.items() if group}


def open_dataset(spec: OfflineRunSpec, seed: int) -> OfflineDataset:
    """The spec's dataset, checked against what the run was started on."""
    dataset = load_dataset(spec.dataset, with_actions=spec.with_actions, seed=seed)
    manifest = Path(spec.dataset) / MANIFEST_FILE
    recorded = (dataset.manifest["observation_space"], dataset.manifest["action_space"], dataset.num_steps)
    if recorded != (spec.observation_space, spec.action_space, spec.dataset_steps):
        raise DatasetError(
            f"the dataset {manifest} no longer matches the run (spaces or number of steps changed since the run "
            f"started with {spec.dataset_steps} steps): resume on the same dataset, or start a new run"
        )
    return dataset


class OfflineTrainer:
    """Fits (or resumes fitting) one world model to one dataset in `run_dir`."""

    def __init__(
        self,
        spec: OfflineRunSpec,
        run_dir: str | Path,
        resume: bool = False,
        force: bool = False,
        objective: TrainingObjective | None = None,
    ):
        self.spec, self.config = spec, spec.train
        self.objective = objective or TrainingObjective()
        self.run_dir = Path(run_dir)
        if self.config.threads > 0:
            torch.set_num_threads(self.config.threads)
        random.seed(self.config.seed)
        np.random.seed(self.config.seed % 2**32)
        torch.manual_seed(self.config.seed)

        # The dataset and the model are checked before the run directory is touched.
        self.dataset = self.open_dataset(spec, seed=self.config.seed)
        self.model = build_world_model(spec)
        self.objective.prepare(self.model)
        self.parameters = self.objective.parameters(self.model)
        self.optimizer = make_offline_optimizer(self.parameters, self.config, self.model)
        self.clip_groups = clip_groups(self.parameters, self.model, self.config.grad_clip_parts)
        self._prepare_run_directory(resume=resume, force=force)
        self.counters = OfflineCounters(next_log=self.config.log_every, next_checkpoint=self.config.checkpoint_every)
        if resume:
            self._load_checkpoint()
        self.logger = MetricsLogger(self.run_dir, tensorboard=self.config.tensorboard)
        self.averager = MetricsAverager()
        self.last_metrics: dict[str, float] = {}
        """The metrics of the latest update (not averaged)."""

    def open_dataset(self, spec: OfflineRunSpec, seed: int):
        """The windows to train on: anything with `sample(B, T) -> Batch`, `sampler_state()` and
        `load_sampler_state(state)` (a recorded dataset here; video in wmlab.train.video)."""
        return open_dataset(spec, seed)

    # ------------------------------------------------------------------------------------------
    # Run directory and checkpoints

    def _prepare_run_directory(self, resume: bool, force: bool) -> None:
        if resume:
            if not self._checkpoint_directory().is_dir():
                raise RunDirectoryError(f"cannot resume {self.run_dir}: it has no checkpoint")
            return
        if refuse_to_overwrite(self.run_dir, force):
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CONFIG_FILE).write_text(json.dumps(self.spec.to_json(), indent=2))

    def _checkpoint_directory(self) -> Path:
        return self.run_dir / "checkpoints" / "rank0"

    def save_checkpoint(self) -> None:
        """Write the model and everything needed to continue exactly."""
        trainer_state = {
            "optimizer": self.optimizer.state_dict(),
            "counters": asdict(self.counters),
            "sampler": json.dumps(self.dataset.sampler_state()),
            "rng": global_random_state(),
            "objective": self.objective.state_dict(),
        }
        save_checkpoint_directory(
            self._checkpoint_directory(), {MODEL_STATE: dict(self.model.state_dict()), TRAINER_STATE: trainer_state}
        )

    def _load_checkpoint(self) -> None:
        directory = self._checkpoint_directory()
        self.model.load_state_dict(load_state(directory, MODEL_STATE))
        state = load_state(directory, TRAINER_STATE)
        self.optimizer.load_state_dict(state["optimizer"])
        self.counters = OfflineCounters(**state["counters"])
        self.dataset.load_sampler_state(json.loads(state["sampler"]))
        restore_global_random_state(state["rng"])
        self.objective.load_state_dict(state.get("objective", {}))

    # ------------------------------------------------------------------------------------------
    # Training

    def update(self) -> dict[str, float]:
        """One Adam step on the model's loss for B sampled windows of T steps."""
        self.model.train()
        batch = self.dataset.sample(self.config.batch_size, self.config.sequence_length)
        loss, metrics = self.objective.loss(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics = dict(metrics)
        norms = {
            name: self.objective.clip_gradients(group, self.config.grad_clip)
            for name, group in self.clip_groups.items()
        }
        if len(norms) == 1:
            metrics["wm/grad_norm"] = next(iter(norms.values()))
        else:
            metrics["wm/grad_norm"] = sum(norm**2 for norm in norms.values()) ** 0.5
            metrics.update({f"wm/grad_norm/{name or 'rest'}": norm for name, norm in norms.items()})
        self.optimizer.step()
        self.objective.after_step(self.model)
        self.counters.updates += 1
        self.last_metrics = metrics
        return metrics

    def _elapsed(self) -> float:
        return self.counters.elapsed_seconds + (time.perf_counter() - self._session_start)

    def _checkpoint_now(self) -> None:
        self.counters.elapsed_seconds = self._elapsed()
        self._session_start = time.perf_counter()
        self.save_checkpoint()

    def run(self) -> dict[str, Any]:
        """Train until `updates` updates or `time_limit` seconds; returns the summary."""
        config = self.config
        self._session_start = time.perf_counter()
        stopped_by = "updates"
        last_metrics: dict[str, float] = {}
        with StageProgress(config.progress) as progress:
            advance = progress.task(f"train {self.spec.model}", total=config.updates, completed=self.counters.updates)
            while self.counters.updates < config.updates:
                self.averager.add(self.update())
                advance(1)
                if self.counters.updates >= self.counters.next_log:
                    last_metrics = self.averager.pop()
                    self.logger.write(self.counters.updates, self._elapsed(), last_metrics)
                    self.counters.next_log += config.log_every
                if config.time_limit > 0 and self._elapsed() >= config.time_limit:
                    stopped_by = "time_limit"
                    break
                if self.counters.updates >= self.counters.next_checkpoint and self.counters.updates < config.updates:
                    self._checkpoint_now()
                    self.counters.next_checkpoint += config.checkpoint_every
        remaining = self.averager.pop()
        if remaining:
            last_metrics = remaining
            self.logger.write(self.counters.updates, self._elapsed(), remaining)
        self._checkpoint_now()
        self.logger.close()
        summary = {
            "model": self.spec.model,
            "dataset": self.spec.dataset,
            "updates": self.counters.updates,
            "wall_seconds": round(self.counters.elapsed_seconds, 1),
            "stopped_by": stopped_by,
            **last_metrics,
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


# ----------------------------------------------------------------------------------------------
# The command line


def wants_offline(argv: list[str]) -> bool:
    """Whether `wmlab train ARGV` asks for the offline trainer: --model or --dataset, or --resume
    of a run that was trained offline."""
    if any(
        argument in ("--model", "--dataset") or argument.startswith(("--model=", "--dataset=")) for argument in argv
    ):
        return True
    resume = option_value(argv, "--resume")
    return resume is not None and (Path(resume) / CONFIG_FILE).is_file() and is_offline_run(resume)


def _command_class(model_config: type) -> type:
    """A dataclass for tyro: the model family, the dataset, the trainer's and the model's configs."""
    return dataclasses.make_dataclass(
        "OfflineTrainCommand",
        [
            command_option("model", str, "World-model family (wmlab list shows them).", "rssm"),
            command_option("dataset", Path | None, "Dataset directory written by `wmlab record`.", None),
            *run_directory_options("runs/MODEL-DATASET-seedSEED"),
            ("train", OfflineTrainConfig, dataclasses.field(default_factory=OfflineTrainConfig)),
            ("world_model", model_config, dataclasses.field(default_factory=model_config)),
        ],
        frozen=True,
    )


def model_config_class(name: str) -> type:
    """The config class of a family that can be trained offline; a clear refusal otherwise."""
    if name in NOT_OFFLINE:
        raise WmlabError(f"{name} cannot be trained offline: {NOT_OFFLINE[name]}")
    entry = MODELS.get(name)
    if entry.config is None:
        raise WmlabError(f"{name} cannot be trained offline: it has no config class (register it with one)")
    return entry.load_config()


def check_resume_changes(parsed: Any, saved: Any, fields: tuple[str, ...]) -> None:
    """Refuse a resume whose command line (parsed) changes anything of the saved run's command
    (saved) but the trainer settings that may change (OFFLINE_RESUMABLE_CHANGES): the nested
    `train` and `world_model` configs and the top-level `fields`."""
    changed = {f"train.{name}" for name in differences(saved.train, parsed.train)}
    changed |= {f"world_model.{name}" for name in differences(saved.world_model, parsed.world_model)}
    changed |= {name for name in fields if getattr(parsed, name) != getattr(saved, name)}
    refused = sorted(changed - OFFLINE_RESUMABLE_CHANGES)
    if refused:
        raise WmlabError(
            f"--resume continues the saved run; these settings cannot change: {', '.join(refused)} (start a new run instead)"
        )


def parse_resumed(
    argv: list[str], resume_dir: str, command_of: Callable[[OfflineRunSpec], tuple[type, dict[str, Any]]]
) -> tuple[OfflineRunSpec, Path, bool, bool]:
    """(the saved OfflineRunSpec with the command line's trainer settings, run_dir, True, False)
    for `wmlab train ... --resume RUN_DIR`. `command_of(saved)` gives the command's class and the
    fields, beside the dataset, that name what the run trains (they default to the saved values
    and may not change, like everything but OFFLINE_RESUMABLE_CHANGES)."""
    saved = load_offline_run_spec(Path(resume_dir))
    command_class, fixed = command_of(saved)
    default = command_class(
        **fixed,
        dataset=Path(saved.dataset),
        run_dir=Path(resume_dir),
        resume=Path(resume_dir),
        train=saved.train,
        world_model=saved.world_model,
    )
    parsed = tyro.cli(command_class, args=argv, default=default, prog="wmlab train")
    check_resume_changes(parsed, default, (*fixed, "dataset"))
    return dataclasses.replace(saved, train=parsed.train), Path(resume_dir), True, False


def parse_offline_arguments(argv: list[str]) -> tuple[OfflineRunSpec, Path, bool, bool]:
    """(OfflineRunSpec, run_dir, resume, force) from the command line."""
    resume_dir = option_value(argv, "--resume")
    if resume_dir is not None:
        return parse_resumed(
            argv, resume_dir, lambda saved: (_command_class(model_config_class(saved.model)), {"model": saved.model})
        )

    name = option_value(argv, "--model") or "rssm"
    command_class = _command_class(model_config_class(name))
    parsed = tyro.cli(
        command_class,
        args=argv,
        prog="wmlab train",
        description=f"Train the world model {name} on a recorded dataset. " + (MODELS.get(name).description or ""),
    )
    if parsed.dataset is None:
        raise WmlabError(
            "give the dataset to train on: wmlab train --model FAMILY --dataset DIR (written by `wmlab record`)"
        )
    run_dir = parsed.run_dir or Path("runs") / f"{name}-{Path(parsed.dataset).name}-seed{parsed.train.seed}"
    return dataset_run_spec(name, parsed.dataset, parsed.train, parsed.world_model), run_dir, False, parsed.force


def dataset_run_spec(name: str, dataset: str | Path, train: OfflineTrainConfig, world_model: Any) -> OfflineRunSpec:
    """The spec of a run that fits the model family `name` (config `world_model`) to the dataset that
    `wmlab record` (or `record_dataset`) wrote in `dataset`, which must hold actions."""
    dataset = Path(dataset)
    manifest = read_manifest(dataset)  # every episode file is checked when the trainer loads them
    if not manifest["actions"]:
        raise DatasetError(
            f"{name} learns action-conditioned dynamics, but {dataset / MANIFEST_FILE} says the dataset was "
            "recorded without actions (--no-actions): record it with actions"
        )
    return OfflineRunSpec(
        model=name,
        dataset=str(dataset.resolve()),
        train=train,
        world_model=world_model,
        observation_space=manifest["observation_space"],
        action_space=manifest["action_space"],
        with_actions=True,
        dataset_steps=sum(entry["length"] for entry in manifest["episodes"]),
        env=manifest["env_id"],
        env_kwargs=manifest.get("env_kwargs", {}),
    )


def offline_train_command(argv: list[str]) -> int:
    """`wmlab train --model FAMILY --dataset DIR [...]` and `wmlab train --resume OFFLINE_RUN`."""
    return train_and_report(
        OfflineTrainer, *parse_offline_arguments(argv), "eval {run} --suite horizon; wmlab report {run}"
    )


def train_and_report(
    trainer_class: type, spec: OfflineRunSpec, run_dir: Path, resume: bool, force: bool, next_steps: str
) -> int:
    """Run a trainer of this family to the end; print its summary and what to do next with the
    run ("wmlab " + next_steps, with {run} the run directory)."""
    summary = trainer_class(spec, run_dir, resume=resume, force=force).run()
    print(json.dumps(summary, indent=2))
    print(f"run directory: {run_dir}  (wmlab {next_steps.format(run=run_dir)})")
    return 0
