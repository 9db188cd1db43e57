"""The generic training loop: collect -> store -> update -> evaluate -> checkpoint.

One loop serves every algorithm. An agent says what it learns from (`learns_from`):
- "transitions": each real step is handed to `agent.observe` as it happens (tabular Dyna);
- "replay": steps go to the sequence replay and `agent.update` gets B x T windows at the
  configured train ratio (every neural world model).

A run directory holds everything needed to continue it:

    RUN_DIR/config.json        algorithm, environment and every setting
    RUN_DIR/metrics.jsonl      one JSON object per log event (rank 0)
    RUN_DIR/tensorboard/       the same metrics for TensorBoard (rank 0)
    RUN_DIR/replay/rank<r>/    each process's episodes, written as they complete
    RUN_DIR/checkpoints/rank<r>/  agent weights, optimiser, RNG states, counters, environment state
    RUN_DIR/summary.json       headline numbers at the end (rank 0)
    RUN_DIR/kept/step-<N>/     the agent's weights at step N, with `keep_every` (rank 0)

Data-parallel training under torchrun: each rank collects with its own seed and replay, gradients
are averaged inside the agent's update (wmlab.core.distributed.average_gradients), and only rank 0
writes logs and the summary.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmlab.core import distributed
from wmlab.core.faults import kill_point
from wmlab.core.files import replace_durably, sync, write_durably
from wmlab.core.progress import TrainingProgress
from wmlab.core.serialization import load_state, save_state
from wmlab.core.types import Transition, replay_step
from wmlab.data.replay import ReplayBuffer
from wmlab.envs.adapter import make_env
from wmlab.eval.returns import episode_task, evaluate_agent, unbatch_action
from wmlab.runs.config import TrainConfig
from wmlab.runs.directory import (
    COMPLETE_FILE,
    CONFIG_FILE,
    KEPT_FOLDER,
    RunSpec,
    build_agent,
    refuse_to_overwrite,
    resume_checkpoint,
)
from wmlab.train.logger import MetricsAverager, MetricsLogger


@dataclass
class Counters:
    """Everything the schedule depends on; saved with each checkpoint."""

    env_steps: int = 0  # this process's environment steps
    updates: int = 0
    episodes: int = 0
    updates_owed: float = 0.0
    evaluations: int = 0
    last_eval_step: int = -1
    next_log_step: int = 0
    next_checkpoint_step: int = 0
    elapsed_seconds: float = 0.0
    recent_returns: list = field(default_factory=list)
    recent_lengths: list = field(default_factory=list)
    recent_task_returns: dict = field(default_factory=dict)  # task name -> returns, for multi-task environments
    last_eval: dict = field(
        default_factory=dict
    )  # the last evaluation's metrics: a run resumed after its final checkpoint still reports them


class Trainer:
    """Runs (or resumes) one training run in `run_dir`."""

    def __init__(self, spec: RunSpec, run_dir: str | Path, resume: bool = False, force: bool = False):
        distributed.init_from_environment()
        self.spec = spec
        self.config: TrainConfig = spec.train
        self.run_dir = Path(run_dir)
        self.rank = distributed.rank()
        self.world_size = distributed.world_size()
        self._prepare_run_directory(resume=resume, force=force)
        if self.config.threads > 0:
            torch.set_num_threads(self.config.threads)

        self.seed = self.config.seed + 1000 * self.rank
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)

        self.envs = [make_env(spec.env, **spec.env_kwargs) for _ in range(self.config.num_envs)]
        observation_space, action_space = self.envs[0].observation_space, self.envs[0].action_space
        self.agent = build_agent(spec, observation_space, action_space, seed=self.seed)
        for module in getattr(self.agent, "modules", lambda: {})().values():
            distributed.broadcast_module(module)

        self.replay = None
        if self.agent.learns_from == "replay":
            self.replay = ReplayBuffer(
                self.run_dir / "replay" / f"rank{self.rank}",
                capacity=self.config.replay_capacity,
                num_envs=self.config.num_envs,
                seed=self.seed,
            )
        # Schedules are given in environment steps over all processes; each process counts its own.
        self.log_every = max(1, self.config.log_every // self.world_size)
        self.eval_every = self.config.eval_every // self.world_size
        self.keep_every = self.config.keep_every // self.world_size
        self.checkpoint_every = max(1, self.config.checkpoint_every // self.world_size)
        self.counters = Counters(next_log_step=self.log_every, next_checkpoint_step=self.checkpoint_every)
        self.observations: list[dict[str, np.ndarray]] = []
        self.is_first = np.ones(self.config.num_envs, dtype=bool)
        self.agent_state = None
        self.episode_returns = np.zeros(self.config.num_envs)
        self.episode_lengths = np.zeros(self.config.num_envs, dtype=np.int64)
        if resume:
            self._load_checkpoint()
            self._drop_kept_weights_after_checkpoint()
        else:
            self._reset_all_envs()
        self.logger = MetricsLogger(
            self.run_dir,
            tensorboard=self.config.tensorboard,
            resume_from=getattr(self, "_log_positions", None),
            resume_step=self._global_steps() if resume else None,
        )
        self.averager = MetricsAverager()
        self.durations: dict[str, float] = {}  # seconds the last evaluation and checkpoint took

    # ----------------------------------------------------------------------------------------
    # Run directory and checkpoints

    def _prepare_run_directory(self, resume: bool, force: bool) -> None:
        config_path = self.run_dir / CONFIG_FILE
        if resume:
            resume_checkpoint(self.run_dir, self.rank)
            return
        if refuse_to_overwrite(self.run_dir, force) and distributed.is_main_process():
            shutil.rmtree(self.run_dir)
        distributed.barrier()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if distributed.is_main_process():
            replace_durably(config_path, json.dumps(self.spec.to_json(), indent=2))

    def _checkpoint_directory(self) -> Path:
        return self.run_dir / "checkpoints" / f"rank{self.rank}"

    def save_checkpoint(self) -> None:
        """Write the agent and everything the loop needs to continue exactly, crash-safe.

        The checkpoint is written into rank<r>.new and marked complete (every file and the folder
        fsynced, then complete.json); then rank<r> -> rank<r>.old, rank<r>.new -> rank<r>, and
        rank<r>.old is removed. At every instant one complete checkpoint is on disk under one of
        these names, and resume_checkpoint() finds the newest.
        """
        target = self._checkpoint_directory()
        staging, previous = target.with_name(target.name + ".new"), target.with_name(target.name + ".old")
        shutil.rmtree(staging, ignore_errors=True)
        save_state(self.agent.state_dict(), staging, "agent")
        kill_point("checkpoint-agent")
        environment_states = [env.get_state() for env in self.envs]
        loop_state = {
            "counters": asdict(self.counters),
            "observations": self.observations,
            "is_first": self.is_first,
            "agent_state": self.agent_state,
            "episode_returns": self.episode_returns,
            "episode_lengths": self.episode_lengths,
            "environments": json.dumps(environment_states),
            "replay": json.dumps(self.replay.checkpoint()) if self.replay is not None else None,
            "logs": json.dumps(self.logger.positions()),
            "rng": {
                "python": json.dumps(random.getstate()),
                "numpy": json.dumps(np.random.get_state()[1].tolist()),
                "numpy_position": np.random.get_state()[2],
                "torch": torch.get_rng_state(),
            },
        }
        save_state(loop_state, staging, "loop")
        kill_point("checkpoint-loop")
        write_durably(
            staging / COMPLETE_FILE,
            json.dumps({"env_steps": self.counters.env_steps, "global_steps": self._global_steps()}),
        )
        sync(staging)
        sync(target.parent)
        kill_point("checkpoint-complete")
        shutil.rmtree(previous, ignore_errors=True)
        if target.exists():
            target.rename(previous)
            sync(target.parent)
        kill_point("checkpoint-between-renames")
        staging.rename(target)
        sync(target.parent)
        kill_point("checkpoint-renamed")
        shutil.rmtree(previous, ignore_errors=True)

    def _load_checkpoint(self) -> None:
        directory = self._checkpoint_directory()  # resume_checkpoint() has put the newest complete one there
        self.agent.load_state_dict(load_state(directory, "agent"))
        loop_state = load_state(directory, "loop")
        self.counters = Counters(**loop_state["counters"])
        self.observations = loop_state["observations"]
        self.is_first = np.asarray(loop_state["is_first"], dtype=bool)
        self.agent_state = loop_state["agent_state"]
        self.episode_returns = loop_state["episode_returns"]
        self.episode_lengths = loop_state["episode_lengths"]
        environment_states = json.loads(loop_state["environments"])
        for index, (env, state) in enumerate(zip(self.envs, environment_states)):
            if state is None:
                # The environment cannot export its state: start a fresh episode. The interrupted
                # one stays in replay as it was (its last stored step is not marked last).
                self._reset_env(index, seed=self.seed + 7919 * (self.counters.episodes + index + 1))
            else:
                env.set_state(state)
        if self.replay is not None:
            self.replay.load_state_dict(json.loads(loop_state["replay"]))
        # Where each log stood at this checkpoint (absent from checkpoints of older versions).
        self._log_positions = json.loads(loop_state["logs"]) if "logs" in loop_state else None
        rng = loop_state["rng"]
        python_state = json.loads(rng["python"])
        random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
        np.random.set_state(("MT19937", np.array(json.loads(rng["numpy"]), dtype=np.uint32), rng["numpy_position"]))
        torch.set_rng_state(rng["torch"])

    # ----------------------------------------------------------------------------------------
    # Collection

    def _empty_action(self) -> np.ndarray:
        space = self.envs[0].action_space
        return np.zeros(space.shape, dtype=space.dtype if space.shape else np.int64)

    def _reset_env(self, index: int, seed: int | None = None) -> None:
        observation, _ = self.envs[index].reset(seed=seed)
        if index < len(self.observations):
            self.observations[index] = observation
        else:
            self.observations.append(observation)
        self.is_first[index] = True
        self.episode_returns[index] = 0.0
        self.episode_lengths[index] = 0
        self._store(index, observation, self._empty_action(), 0.0, first=True, last=False, terminal=False)

    def _reset_all_envs(self) -> None:
        for index, env in enumerate(self.envs):
            env.action_space.seed(self.seed + index)
            self._reset_env(index, seed=self.seed + index)

    def _store(self, index: int, observation, action, reward, first: bool, last: bool, terminal: bool) -> None:
        if self.replay is None:
            return
        self.replay.add(replay_step(observation, action, reward, first, last, terminal), env_index=index)

    def _batched_observations(self) -> dict[str, np.ndarray]:
        batched = {key: np.stack([obs[key] for obs in self.observations]) for key in self.observations[0]}
        batched["is_first"] = self.is_first.copy()
        return batched

    def collect_step(self) -> dict[str, float]:
        """One step of every environment; returns metrics from online learning, if any."""
        batched = self._batched_observations()
        actions, self.agent_state = self.agent.act(batched, self.agent_state, explore=True)
        actions = np.asarray(actions)
        next_observations, rewards, terminateds, truncateds, infos = [], [], [], [], []
        for index, env in enumerate(self.envs):
            action = unbatch_action(actions[index : index + 1])
            observation, reward, terminated, truncated, info = env.step(action)
            next_observations.append(observation)
            infos.append(info)
            rewards.append(float(reward))
            terminateds.append(bool(terminated))
            truncateds.append(bool(truncated))
            self._store(
                index, observation, action, reward, first=False, last=terminated or truncated, terminal=terminated
            )
        metrics = {}
        if self.agent.learns_from == "transitions":
            transition = Transition(
                obs={key: value for key, value in batched.items() if key != "is_first"},
                action=actions,
                reward=np.asarray(rewards, dtype=np.float32),
                next_obs={key: np.stack([obs[key] for obs in next_observations]) for key in next_observations[0]},
                terminated=np.asarray(terminateds),
                truncated=np.asarray(truncateds),
            )
            metrics = self.agent.observe(transition)
        self.counters.env_steps += len(self.envs)
        self.is_first[:] = False
        for index in range(len(self.envs)):
            self.observations[index] = next_observations[index]
            self.episode_returns[index] += rewards[index]
            self.episode_lengths[index] += 1
            if terminateds[index] or truncateds[index]:
                self.counters.episodes += 1
                self.counters.recent_returns.append(float(self.episode_returns[index]))
                self.counters.recent_lengths.append(int(self.episode_lengths[index]))
                task = episode_task(infos[index])
                if task is not None:
                    self.counters.recent_task_returns.setdefault(task, []).append(float(self.episode_returns[index]))
                self._reset_env(index)
        kill_point("step")
        return metrics

    # ----------------------------------------------------------------------------------------
    # Updates, evaluation, logging

    def _updates_due(self) -> int:
        if self.replay is None or self.counters.env_steps < self.config.learning_starts:
            return 0
        if len(self.replay) < self.config.sequence_length:
            return 0
        replayed_per_update = self.config.batch_size * self.config.sequence_length
        self.counters.updates_owed += len(self.envs) * self.config.train_ratio / replayed_per_update
        due = int(self.counters.updates_owed)
        self.counters.updates_owed -= due
        return due

    def update(self) -> None:
        for _ in range(self._updates_due()):
            batch = self.replay.sample(self.config.batch_size, self.config.sequence_length)
            self.averager.add(self.agent.update(batch))
            kill_point("update")
            self.counters.updates += 1

    def evaluate(self) -> dict[str, float]:
        started = time.perf_counter()
        metrics = evaluate_agent(
            self.agent,
            self.spec.env,
            episodes=self.config.eval_episodes,
            seed=10_000_000 + 1000 * self.counters.evaluations + self.seed,
            env_kwargs=self.spec.evaluation_env_kwargs,
            world_state=getattr(self.envs[0].unwrapped, "world_state", lambda: None)(),
        )
        self.counters.evaluations += 1
        self.counters.last_eval_step = self.counters.env_steps
        self.counters.last_eval = {name: float(value) for name, value in metrics.items()}
        self.logger.write(self._global_steps(), self._elapsed(), metrics)
        kill_point("evaluation")
        self.durations["evaluate"] = time.perf_counter() - started
        return metrics

    def _global_steps(self) -> int:
        return self.counters.env_steps * self.world_size

    def _elapsed(self) -> float:
        return self.counters.elapsed_seconds + (time.perf_counter() - self._session_start)

    def _log(self) -> None:
        metrics = self.averager.pop()
        if self.counters.recent_returns:
            metrics["train/return"] = float(np.mean(self.counters.recent_returns))
            metrics["train/length"] = float(np.mean(self.counters.recent_lengths))
            self.counters.recent_returns.clear()
            self.counters.recent_lengths.clear()
        for task, returns in sorted(self.counters.recent_task_returns.items()):
            metrics[f"train/return/{task}"] = float(np.mean(returns))
        self.counters.recent_task_returns.clear()
        metrics["train/episodes"] = float(self.counters.episodes)
        metrics["train/updates"] = float(self.counters.updates)
        metrics["train/steps_per_second"] = self._steps_since_log / max(time.perf_counter() - self._log_clock, 1e-9)
        self._steps_since_log, self._log_clock = 0, time.perf_counter()
        self.logger.write(self._global_steps(), self._elapsed(), metrics)

    # ----------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train until `config.steps` environment steps (over all ranks) or `config.time_limit`
        seconds; returns the summary."""
        config = self.config
        target = config.steps // self.world_size
        self.stopped_by_time_limit = False
        self._session_start = time.perf_counter()
        self._log_clock, self._steps_since_log = time.perf_counter(), 0
        last_eval: dict[str, float] = dict(self.counters.last_eval)
        bar = TrainingProgress(
            config.progress and distributed.is_main_process(),
            config.steps,
            config.time_limit,
            self._global_steps(),
            self._elapsed(),
        )
        with bar:
            while self.counters.env_steps < target:
                self.averager.add(self.collect_step())
                self._steps_since_log += len(self.envs)
                self.update()
                bar.update(
                    self._global_steps(),
                    self._elapsed(),
                    f"return {self.counters.recent_returns[-1]:.2f}" if self.counters.recent_returns else "",
                )
                if self._evaluation_due():
                    last_eval = self.evaluate()
                if self._keep_due():
                    self.keep_weights()
                at_log_step = self.counters.env_steps >= self.counters.next_log_step
                if at_log_step:
                    self._log()
                    self.counters.next_log_step += self.log_every
                if self._time_is_up(at_log_step):
                    self.stopped_by_time_limit = True
                    break
                if self.counters.env_steps >= self.counters.next_checkpoint_step and self.counters.env_steps < target:
                    self._checkpoint_now()
        if self.counters.last_eval_step != self.counters.env_steps:
            last_eval = self.evaluate()
        self._checkpoint_now()
        if hasattr(self.agent, "on_run_end"):  # e.g. an RSSM's open-loop videos, after the last checkpoint
            self.agent.on_run_end(self.run_dir, self.replay)
        self.counters.elapsed_seconds, self._session_start = (
            self._elapsed(),
            time.perf_counter(),
        )  # the summary's wall time includes it
        summary = self._summary(last_eval)
        self.logger.close()
        for env in self.envs:
            env.close()
        return summary

    def _evaluation_due(self) -> bool:
        steps = self.counters.env_steps
        if not self.eval_every or steps * self.world_size < self.config.eval_starts:
            return False
        return steps % self.eval_every < len(self.envs)

    def _keep_due(self) -> bool:
        # By the step count alone, so that a resumed run keeps the same steps as an uninterrupted one.
        return bool(self.keep_every) and self.counters.env_steps % self.keep_every < len(self.envs)

    def _drop_kept_weights_after_checkpoint(self) -> None:
        """Kept weights of steps after the checkpoint a run resumes from belong to steps that are
        lost and will be run again: they go (the resumed run keeps its own)."""
        if not distributed.is_main_process():
            return
        for kept in (self.run_dir / KEPT_FOLDER).glob("step-*"):
            step = kept.name[len("step-") :]
            if step.isdigit() and int(step) > self._global_steps():
                shutil.rmtree(kept, ignore_errors=True)

    def keep_weights(self) -> Path | None:
        """Write the agent's weights now as RUN_DIR/kept/step-N (N: global environment steps), a
        run directory that evaluation reads like the run itself; rank 0 only. A copy left by an
        interrupted write is replaced."""
        if not distributed.is_main_process():
            return None
        target = self.run_dir / KEPT_FOLDER / f"step-{self._global_steps()}"
        shutil.rmtree(target, ignore_errors=True)
        weights = target / "checkpoints" / "rank0"
        save_state(self.agent.state_dict(), weights, "agent")
        shutil.copyfile(self.run_dir / CONFIG_FILE, target / CONFIG_FILE)
        write_durably(weights / COMPLETE_FILE, json.dumps({"env_steps": self._global_steps(), "kept": True}))
        return target

    def _time_is_up(self, at_log_step: bool) -> bool:
        """Whether `time_limit` is spent: checked every step in one process; with several ranks
        only at log steps, where they agree (any rank out of time stops all)."""
        if self.config.time_limit <= 0:
            return False
        # Stop early by what the final evaluation and checkpoint took last time, so that the run
        # ends within the limit rather than one evaluation after it.
        out_of_time = self._elapsed() + self._seconds_to_finish() >= self.config.time_limit
        if self.world_size == 1:
            return out_of_time
        return at_log_step and distributed.any_rank(out_of_time)

    def _seconds_to_finish(self) -> float:
        """Seconds the end of the run will take (final evaluation and checkpoint), estimated by
        their last durations (0 until measured; the agent's `on_run_end` is not counted)."""
        return self.durations.get("evaluate", 0.0) + self.durations.get("checkpoint", 0.0)

    def _checkpoint_now(self) -> None:
        # The schedule advances before the counters are saved: a run resumed from this checkpoint
        # must not find its next checkpoint already due (it wrote an extra one a step later).
        while self.counters.next_checkpoint_step <= self.counters.env_steps:
            self.counters.next_checkpoint_step += self.checkpoint_every
        self.counters.elapsed_seconds = self._elapsed()
        self._session_start = time.perf_counter()
        self.save_checkpoint()
        self.durations["checkpoint"] = time.perf_counter() - self._session_start

    def _summary(self, last_eval: dict[str, float]) -> dict[str, Any]:
        summary = {
            "algorithm": self.spec.algorithm,
            "env": self.spec.env,
            "env_steps": self._global_steps(),
            "updates": self.counters.updates,
            "episodes": self.counters.episodes,
            "wall_seconds": round(self.counters.elapsed_seconds, 1),
            "stopped_by": "time_limit" if getattr(self, "stopped_by_time_limit", False) else "steps",
            "world_size": self.world_size,
            **last_eval,
        }
        if distributed.is_main_process():
            replace_durably(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        return summary
