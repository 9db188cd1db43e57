"""The World Models pipeline as one command (Ha & Schmidhuber 2018, arXiv:1803.10122, Sec. 3-4):

    collect random rollouts -> train V -> train M on V's codes -> train C (CMA-ES, in the dream or
    in reality) -> evaluate in reality

    wmlab pipeline world-models --env CarRacing-v3 --run-dir runs/carracing
    wmlab pipeline world-models --env two-rooms --env-kwargs '{"reward": "dense"}' --dream --temperature 1.15
    wmlab pipeline world-models --env CarRacing-v3 --run-dir runs/smoke --quick

Each stage writes its output with `save_state` under RUN_DIR/stages/<stage>/ (result.json +
result.safetensors, which mark it finished) and records the settings it was computed from. V and
M are fitted by the offline trainer (wmlab.train.offline) to the recorded rollouts, each into an
ordinary offline run directory, stages/vae/run and stages/mdnrnn/run (`wmlab eval` and `wmlab
report` read them; M's holds the whole V-M world model), with a TrainingObjective per stage: V
alone on single frames, then M alone on the frozen V's codes of B windows of T steps.
Running the command again skips finished stages; a stage interrupted midway resumes from its
last checkpoint (V at epoch boundaries, M every `checkpoint_every` updates, CMA-ES after every
generation); the recording of rollouts restarts from its first episode. A finished stage whose
settings no longer match the command is an error, unless --force recomputes it and every stage
after it. `--models-from OTHER_RUN` copies the finished collect, V, encode and M stages of
another run, in order, while their settings match, so C can be trained again (say, at another
temperature) without retraining the world model, or M again without recording and V.

RUN_DIR also holds config.json (readable by `wmlab eval`), metrics.jsonl, summary.json,
checkpoints/rank0/agent.* (the trained V-M-C for `wmlab eval`), figures/ (V's reconstructions,
C's learning curve) and videos/ (a real and a dream rollout), which `wmlab report` embeds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

import numpy as np
import torch
import tyro
from gymnasium import spaces

from wmlab.agents.world_models.agent import LinearController, WorldModelsAgent
from wmlab.agents.world_models.config import WorldModelsConfig, default_config
from wmlab.agents.world_models.evolution import CMAES
from wmlab.core.config import option_value, parse_json_object
from wmlab.core.errors import RunDirectoryError
from wmlab.core.progress import StageProgress
from wmlab.core.seeding import seeded
from wmlab.core.serialization import load_state, save_state
from wmlab.core.video import write_gif
from wmlab.data.dataset import read_manifest, record_dataset
from wmlab.envs.adapter import make_env
from wmlab.envs.imagined import ImaginedEnv
from wmlab.models.vae_mdnrnn import VAEMDNRNN, action_size, image_channels, prepare_frames
from wmlab.pipelines.world_models.rollouts import RealRollouts, RealRolloutSettings, controller_features, dream_returns
from wmlab.runs.config import OfflineTrainConfig, TrainConfig
from wmlab.train.offline import OfflineTrainer, TrainingObjective, dataset_run_spec

STAGES = ("collect", "vae", "mdnrnn", "controller", "evaluate")
ALGORITHM = "world-models"
#: The world-model family of V and M, as the offline trainer names it.
MODEL_FAMILY = "vae-mdnrnn"
RESULT = "result"
CHECKPOINT = "checkpoint"
#: Dream episodes of an environment without its own step limit end here.
DREAM_STEP_LIMIT = 1000


# ----------------------------------------------------------------------------------------------
# The command


@dataclass(frozen=True)
class PipelineCommand:
    """Train World Models' V, M and C in turn and evaluate C in the real environment."""

    env: str = "CarRacing-v3"
    """Environment with image observations: a gymnasium id or a wmlab name (two-rooms)."""
    run_dir: Path | None = None
    """Run directory (default runs/world-models-ENV-seedSEED); rerunning resumes it."""
    env_kwargs: str = "{}"
    """Keyword arguments of the environment, as JSON (e.g. '{"reward": "dense"}')."""
    seed: int = 0
    """Seed of the rollouts, the training and CMA-ES."""
    quick: bool = False
    """Start from a tiny budget (a smoke test of a few minutes; the numbers mean nothing)."""
    force: bool = False
    """Recompute stages whose saved settings differ from these (and every later stage)."""
    models_from: Path | None = None
    """Copy the finished collect, V and M stages of this run, in order, while their settings match."""
    device: str = "cpu"
    """Torch device ('cpu', 'cuda', ...)."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""
    progress: bool = True
    """Show progress bars."""
    config: Annotated[WorldModelsConfig, tyro.conf.arg(name="")] = field(default_factory=WorldModelsConfig)
    """Every setting of V, M, C and the stages (the preset of --env and --quick by default)."""


def pipeline_command(argv: list[str]) -> int:
    """`wmlab pipeline world-models ARGS`: argv holds the arguments after `world-models`."""
    command_class = PipelineCommand
    env_id = option_value(argv, "--env") or "CarRacing-v3"
    quick = "--quick" in argv
    defaults = command_class(env=env_id, quick=quick, config=default_config(env_id, quick))
    arguments = tyro.cli(command_class, args=argv, default=defaults, prog="wmlab pipeline world-models")
    env_kwargs = parse_json_object("--env-kwargs", arguments.env_kwargs)
    run_dir = (
        arguments.run_dir
        or Path("runs") / f"world-models-{arguments.env.replace(':', '-').replace('/', '-')}-seed{arguments.seed}"
    )
    summary = run_pipeline(
        arguments.config,
        arguments.env,
        run_dir,
        seed=arguments.seed,
        env_kwargs=env_kwargs,
        device=arguments.device,
        threads=arguments.threads,
        progress=arguments.progress,
        force=arguments.force,
        models_from=arguments.models_from,
    )
    print(json.dumps(summary, indent=2))
    print(f"run directory: {run_dir}  (wmlab report {run_dir}; wmlab eval {run_dir})")
    return 0


def run_pipeline(
    config: WorldModelsConfig,
    env_id: str,
    run_dir: str | Path,
    seed: int = 0,
    env_kwargs: dict | None = None,
    device: str = "cpu",
    threads: int = 0,
    progress: bool = True,
    force: bool = False,
    models_from: str | Path | None = None,
    stages: tuple[str, ...] = STAGES,
) -> dict[str, Any]:
    """Run (or resume) every stage in `stages`; returns the summary (also in summary.json)."""
    pipeline = Pipeline(config, env_id, Path(run_dir), seed, dict(env_kwargs or {}), device, threads, progress, force)
    if models_from is not None:
        pipeline.copy_models_from(Path(models_from))
    return pipeline.run(stages)


# ----------------------------------------------------------------------------------------------
# The pipeline


class Pipeline:
    """The stages of one run directory and what they share (settings, logger, progress)."""

    def __init__(
        self,
        config: WorldModelsConfig,
        env_id: str,
        run_dir: Path,
        seed: int,
        env_kwargs: dict,
        device: str,
        threads: int,
        progress: bool,
        force: bool,
    ):
        self.config = config
        self.env_id = env_id
        self.run_dir = run_dir
        self.seed = int(seed)
        self.env_kwargs = env_kwargs
        self.device = torch.device(device)
        self.progress = progress
        self.force = force
        if threads > 0:
            torch.set_num_threads(threads)
        env = make_env(env_id, **env_kwargs)
        self.observation_space, self.action_space = env.observation_space, env.action_space
        self.step_limit = _own_step_limit(env)
        env.close()
        image_channels(self.observation_space)  # fail now, with the reason, on a space V cannot read
        action_size(self.action_space)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.started = time.time()
        self.stage_seconds: dict[str, float] = {}

    # --- bookkeeping ---------------------------------------------------------------------------

    def _write_config(self) -> None:
        # The layout of `wmlab train`'s config.json, so that `wmlab eval RUN_DIR` rebuilds the agent.
        document = {
            "algorithm": ALGORITHM,
            "env": self.env_id,
            "env_kwargs": self.env_kwargs,
            "train": asdict(
                TrainConfig(seed=self.seed, device=str(self.device), progress=self.progress, tensorboard=False)
            ),
            "agent": asdict(self.config),
            "pipeline": {"stages": list(STAGES), "seed": self.seed},
        }
        (self.run_dir / "config.json").write_text(json.dumps(document, indent=2))

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / "stages" / stage

    def inputs(self, stage: str) -> dict[str, Any]:
        """The settings a stage's output depends on, its own and every earlier stage's."""
        config = self.config
        parts: dict[str, Any] = {
            "env": self.env_id,
            "env_kwargs": self.env_kwargs,
            "seed": self.seed,
            "collect": asdict(config.collect),
        }
        later = {
            "vae": {"frame_crop": config.frame_crop, "model.vae": asdict(config.model.vae), "vae": asdict(config.vae)},
            "mdnrnn": {
                "model.mdnrnn": asdict(config.model.mdnrnn),
                "loss_scales": asdict(config.model.loss_scales),
                "mdnrnn": asdict(config.mdnrnn),
            },
            "controller": {
                "controller": asdict(config.controller),
                "dream": config.dream,
                "temperature": config.temperature,
                "sample_latents": config.sample_latents,
            },
            "evaluate": {
                "evaluation_episodes": config.evaluation_episodes,
                "dream_evaluation_episodes": config.dream_evaluation_episodes,
                "video_steps": config.video_steps,
            },
        }
        for name in STAGES[1 : STAGES.index(stage) + 1]:
            parts.update(later[name])
        return json.loads(json.dumps(parts))  # tuples as lists, exactly as they come back from disk

    def is_finished(self, stage: str) -> bool:
        """Whether the stage's result exists with matching settings; with --force a mismatching
        result (and every later stage) is removed, without it the mismatch is an error."""
        directory = self.stage_dir(stage)
        result = directory / f"{RESULT}.json"
        if not result.is_file():
            return False

        saved = load_state(directory, RESULT).get("inputs")
        wanted = self.inputs(stage)
        if saved == wanted:
            return True
        changed = _changed_keys(saved or {}, wanted)
        if not self.force:
            raise RunDirectoryError(
                f"stage {stage!r} in {self.run_dir} was computed with other settings ({', '.join(changed)}); "
                "pass --force to recompute it and every later stage, or choose another --run-dir"
            )
        self.discard_from(stage)
        return False

    def discard_from(self, stage: str) -> None:
        for name in STAGES[STAGES.index(stage) :]:
            shutil.rmtree(self.stage_dir(name), ignore_errors=True)

    def load_checkpoint(self, stage: str) -> dict[str, Any] | None:
        """The stage's in-progress checkpoint, when it was written with the same settings."""
        directory = self.stage_dir(stage)
        if not (directory / f"{CHECKPOINT}.json").is_file():
            return None

        state = load_state(directory, CHECKPOINT)
        if state.get("inputs") == self.inputs(stage):
            return state
        if not self.force:
            raise RunDirectoryError(
                f"stage {stage!r} in {self.run_dir} was interrupted under other settings "
                f"({', '.join(_changed_keys(state.get('inputs') or {}, self.inputs(stage)))}); pass --force to restart it"
            )
        return None

    def save(self, stage: str, name: str, state: dict[str, Any]) -> None:
        directory = self.stage_dir(stage)
        # Write beside, then rename: an interrupted write never leaves a half checkpoint behind.
        temporary = directory / f".{name}.partial"
        save_state({"inputs": self.inputs(stage), **state}, temporary, name)
        for suffix in (".safetensors", ".json"):
            (temporary / f"{name}{suffix}").replace(directory / f"{name}{suffix}")
        shutil.rmtree(temporary, ignore_errors=True)

    def load_result(self, stage: str) -> dict[str, Any]:
        return load_state(self.stage_dir(stage), RESULT)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": int(step), "time": round(time.time() - self.started, 3)}
        record.update({key: float(value) for key, value in metrics.items()})
        with (self.run_dir / "metrics.jsonl").open("a") as stream:
            stream.write(json.dumps(record) + "\n")

    def forget_metrics(self, prefix: str | tuple[str, ...], after_step: int) -> None:
        """Drop the `prefix` metrics logged after `after_step`: a stage that restarts or resumes
        logs them again, and a curve must not hold two values for one step."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interruption
            names = [key for key in record if key not in ("step", "time")]
            if names and all(name.startswith(prefix) for name in names) and record.get("step", 0) > after_step:
                continue
            kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    def copy_models_from(self, other: Path) -> None:
        """Take the finished collect, V and M stages of `other`, in order, for as long as
        their settings match this run's (a changed M still reuses the recording and V)."""
        if not (other / "stages").is_dir():
            raise RunDirectoryError(f"{other} holds no World Models stages to copy")
        for stage in STAGES[: STAGES.index("mdnrnn") + 1]:
            source = other / "stages" / stage
            if (self.stage_dir(stage) / f"{RESULT}.json").is_file():
                continue
            if not (source / f"{RESULT}.json").is_file() or load_state(source, RESULT).get("inputs") != self.inputs(
                stage
            ):
                if stage == STAGES[0]:
                    raise RunDirectoryError(
                        f"the rollouts of {other} were recorded with other settings than this run's; nothing can be reused"
                    )
                return
            self.stage_dir(stage).mkdir(parents=True, exist_ok=True)
            if stage == "collect" and not (self.stage_dir(stage) / "dataset").exists():
                # V or M may still have to be trained here; hard links cost no space.
                shutil.copytree(source / "dataset", self.stage_dir(stage) / "dataset", copy_function=_link_or_copy)
            for suffix in (".safetensors", ".json"):
                shutil.copy2(source / f"{RESULT}{suffix}", self.stage_dir(stage) / f"{RESULT}{suffix}")
            if stage == "vae" and (other / "figures" / "vae_reconstructions.png").is_file():
                # The report of this run shows the V it uses.
                (self.run_dir / "figures").mkdir(parents=True, exist_ok=True)
                shutil.copy2(
                    other / "figures" / "vae_reconstructions.png", self.run_dir / "figures" / "vae_reconstructions.png"
                )

    # --- running -------------------------------------------------------------------------------

    def run(self, stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; the stages are {', '.join(STAGES)}")
        functions: dict[str, Callable[[], None]] = {
            "collect": self.collect,
            "vae": self.train_vae,
            "mdnrnn": self.train_mdnrnn,
            "controller": self.train_controller,
            "evaluate": self.evaluate,
        }
        for stage in STAGES:
            if stage not in stages or self.is_finished(stage):
                continue
            began = time.time()
            self.stage_dir(stage).mkdir(parents=True, exist_ok=True)
            with StageProgress(self.progress) as self.bars:
                functions[stage]()
            self.stage_seconds[stage] = round(time.time() - began, 1)
        summary_path = self.run_dir / "summary.json"
        if not summary_path.is_file():
            return {"stage_seconds": self.stage_seconds}
        summary = json.loads(summary_path.read_text())
        if self.stage_seconds:
            summary["stage_seconds"] = {**summary.get("stage_seconds", {}), **self.stage_seconds}
            summary_path.write_text(json.dumps(summary, indent=2))
        return summary

    # --- stage 1: random rollouts ----------------------------------------------------------------

    def collect(self) -> None:
        settings = self.config.collect
        directory = self.stage_dir("collect") / "dataset"
        if settings.policy == "uniform":
            policy, name = "random", "uniform"
        else:
            policy, name = brownian_policy(self.action_space, settings.brownian_dt, self.seed), "brownian"
        self.forget_metrics("collect/", -1)
        manifest = record_dataset(
            self.env_id,
            policy,
            settings.episodes,
            directory,
            seed=self.seed,
            env_kwargs=self.env_kwargs,
            progress=self.progress,
            max_episode_steps=settings.max_steps or None,
            force=True,
            policy_name=name,
        )
        episodes = list(read_episodes(directory, self.config.frame_crop))
        self.save(
            "collect",
            RESULT,
            {
                "episodes": len(episodes),
                "steps": int(sum(len(episode["reward"]) for episode in episodes)),
                "lengths": np.array([len(episode["reward"]) for episode in episodes], dtype=np.int64),
                "returns": np.array([entry.get("return", np.nan) for entry in manifest["episodes"]], dtype=np.float64),
                # The dream starts from these, V's view of each episode's first frame.
                "start_frames": np.stack([episode["image"][0] for episode in episodes]),
            },
        )
        returns = [entry.get("return", 0.0) for entry in manifest["episodes"]]
        self.log(0, {"collect/episodes": len(episodes), "collect/return": float(np.mean(returns))})

    # --- stage 2: V ------------------------------------------------------------------------------

    def build_model(self):
        with seeded(self.seed):
            model = VAEMDNRNN(self.config.model, self.observation_space, self.action_space)
        return model.to(self.device)

    def fit(self, stage: str, objective: TrainingObjective, train: OfflineTrainConfig) -> OfflineTrainer:
        """Fit the stage's part of V-M with the offline trainer on the recorded rollouts, into the
        offline run directory stages/STAGE/run (resumed when an interrupted run of the same settings
        is there); its metrics are copied into RUN_DIR/metrics.jsonl. Returns the finished trainer."""
        run_dir = self.stage_dir(stage) / "run"
        resume = self.load_checkpoint(stage) is not None and (run_dir / "checkpoints" / "rank0").is_dir()
        if not resume:  # marks the run directory as this stage's, computed from these settings
            self.save(stage, CHECKPOINT, {"run_dir": str(run_dir)})
        spec = dataset_run_spec(MODEL_FAMILY, self.stage_dir("collect") / "dataset", train, self.config.model)
        trainer = OfflineTrainer(spec, run_dir, resume=resume, force=not resume, objective=objective)
        trainer.run()
        prefix = f"{stage}/"
        self.forget_metrics(prefix, -1)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            metrics = {key: value for key, value in record.items() if key.startswith(prefix)}
            self.log(record["step"], metrics | {f"{prefix}grad_norm": record["wm/grad_norm"]})
        return trainer

    def stage_training(self, **settings) -> OfflineTrainConfig:
        """The offline trainer's settings of a V or M stage (no TensorBoard: RUN_DIR has one log)."""
        return OfflineTrainConfig(device=str(self.device), progress=self.progress, tensorboard=False, **settings)

    def train_vae(self) -> None:
        settings = self.config.vae
        frames = self.vae_frames()
        batches = max(1, -(-len(frames) // settings.batch_size))
        train = self.stage_training(
            updates=settings.epochs * batches,
            batch_size=settings.batch_size,
            sequence_length=1,
            learning_rate=settings.learning_rate,
            grad_clip=0.0,
            seed=self.seed,
            log_every=settings.log_every,
            checkpoint_every=batches,
        )
        model = self.fit("vae", VTraining(self.config.frame_crop), train).model
        model.eval()
        save_reconstructions(model, frames, self.run_dir / "figures" / "vae_reconstructions.png")
        self.save(
            "vae", RESULT, {"weights": dict(model.vae.state_dict()), "updates": train.updates, "frames": len(frames)}
        )
        (self.stage_dir("vae") / f"{CHECKPOINT}.json").unlink(missing_ok=True)
        (self.stage_dir("vae") / f"{CHECKPOINT}.safetensors").unlink(missing_ok=True)

    def vae_frames(self) -> np.ndarray:
        """Every collected frame (or `max_frames` of them, evenly spread), uint8 (N, 64, 64, C)."""
        episodes = read_episodes(self.stage_dir("collect") / "dataset", self.config.frame_crop)
        frames = np.concatenate([episode["image"] for episode in episodes])
        limit = self.config.vae.max_frames
        if limit and len(frames) > limit:
            frames = frames[np.linspace(0, len(frames) - 1, limit).round().astype(np.int64)]
        return frames

    # --- stage 3: M ------------------------------------------------------------------------------

    def train_mdnrnn(self) -> None:
        settings = self.config.mdnrnn
        manifest = read_manifest(self.stage_dir("collect") / "dataset")
        if self.config.model.mdnrnn.predict_done and not any(entry.get("terminated") for entry in manifest["episodes"]):
            warnings.warn(
                "no recorded episode terminated, so M's done head learns from no terminal example; a C trained in the "
                "dream may learn to end its episodes there (pass --model.mdnrnn.no-predict-done when the task cannot end)"
            )
        train = self.stage_training(
            updates=settings.updates,
            batch_size=settings.batch_size,
            sequence_length=min(settings.sequence_length, int(manifest["num_steps"])),
            learning_rate=settings.learning_rate,
            grad_clip=settings.grad_clip,
            seed=self.seed,
            log_every=settings.log_every,
            checkpoint_every=settings.checkpoint_every,
        )
        vae = self.load_result("vae")["weights"]
        recording = self.stage_dir("collect") / "dataset"
        model = self.fit("mdnrnn", MTraining(vae, self.config.frame_crop, recording), train).model
        self.save("mdnrnn", RESULT, {"weights": dict(model.mdnrnn.state_dict()), "updates": train.updates})
        (self.stage_dir("mdnrnn") / f"{CHECKPOINT}.json").unlink(missing_ok=True)
        (self.stage_dir("mdnrnn") / f"{CHECKPOINT}.safetensors").unlink(missing_ok=True)

    # --- stage 4: C ------------------------------------------------------------------------------

    def trained_model(self):
        model = self.build_model()
        model.vae.load_state_dict(self.load_result("vae")["weights"])
        model.mdnrnn.load_state_dict(self.load_result("mdnrnn")["weights"])
        model.eval()
        return model

    def controller_for(self, model):
        inputs = self.config.controller.inputs
        features = model.latent_size + (model.hidden_size if inputs == "latent_and_hidden" else 0)
        return LinearController(features, self.action_space)

    def real_rollouts(self, model, controller, workers: int | None = None):
        settings = self.config.controller
        rollout_settings = RealRolloutSettings(
            env_id=self.env_id,
            env_kwargs=self.env_kwargs,
            frame_crop=tuple(self.config.frame_crop),
            inputs=settings.inputs,
            sample_latents=self.config.sample_latents,
            max_steps=settings.max_steps,
            envs_per_batch=settings.envs_per_batch,
        )
        return RealRollouts(
            model, controller, rollout_settings, workers=settings.workers if workers is None else workers
        )

    def dream(self, model, batch_size: int, seed: int, whole_episodes: bool = False):
        """The dream as an environment, starting from V's view of real first frames; episodes are
        capped as in training, or at the real environment's own limit with `whole_episodes`."""
        start_frames = self.load_result("collect")["start_frames"]
        cap = 0 if whole_episodes else self.config.controller.max_steps
        return ImaginedEnv(
            model,
            {"image": start_frames[:, None]},
            batch_size=batch_size,
            max_episode_steps=cap or self.step_limit or DREAM_STEP_LIMIT,
            imagine_kwargs={"temperature": self.config.temperature},
            sample_terminations=self.config.controller.sample_terminations,
            seed=seed,
        )

    def train_controller(self) -> None:
        settings = self.config.controller
        model = self.trained_model()
        controller = self.controller_for(model)
        checkpoint = self.load_checkpoint("controller")
        if checkpoint is not None:
            strategy = CMAES.from_state_dict(checkpoint["cmaes"])
            curve = {key: list(np.asarray(value).tolist()) for key, value in checkpoint["curve"].items()}
        else:
            strategy = CMAES(controller.parameter_count, settings.population, settings.initial_sigma, seed=self.seed)
            curve = {
                "generation": [],
                "mean": [],
                "best": [],
                "worst": [],
                "sigma": [],
                "real_generation": [],
                "real_return": [],
            }
        self.forget_metrics("controller/", strategy.generation)
        N, R = settings.population, settings.rollouts
        dream = self.dream(model, N * R, self.seed) if self.config.dream else None
        advance = self.bars.task("C (dream)" if dream else "C (real)", settings.generations, strategy.generation)
        with self.real_rollouts(model, controller) as real:
            while strategy.generation < settings.generations:
                generation = strategy.generation
                candidates = strategy.ask()
                # Every candidate of a generation meets the same R episodes (common random numbers),
                # so that their ranking reflects the controllers rather than the draw of episodes.
                stream = np.random.default_rng([self.seed, generation])
                if dream is not None:
                    dream.reset(seed=int(stream.integers(2**31)))
                    starts = np.tile(stream.integers(dream.pool_size, size=R), N)
                    returns, _ = dream_returns(
                        dream, controller, torch.as_tensor(candidates, dtype=torch.float32), settings.inputs, starts
                    )
                else:
                    seeds = np.tile(stream.integers(2**31 - 1, size=R), (N, 1))
                    returns, _ = real.returns(candidates, seeds)
                fitness = returns.mean(1)
                strategy.tell(fitness)
                for key, value in (
                    ("generation", generation + 1),
                    ("mean", fitness.mean()),
                    ("best", fitness.max()),
                    ("worst", fitness.min()),
                    ("sigma", strategy.sigma),
                ):
                    curve[key].append(float(value))
                metrics = {
                    "controller/fitness_mean": fitness.mean(),
                    "controller/fitness_best": fitness.max(),
                    "controller/fitness_worst": fitness.min(),
                    "controller/sigma": strategy.sigma,
                }
                if (
                    settings.eval_every
                    and (generation + 1) % settings.eval_every == 0
                    and generation + 1 < settings.generations
                ):
                    real_return = self.real_score(real, strategy.mean, settings.eval_episodes, offset=generation + 1)
                    curve["real_generation"].append(generation + 1)
                    curve["real_return"].append(real_return)
                    metrics["controller/real_return"] = real_return
                self.log(generation + 1, metrics)
                self.save(
                    "controller",
                    CHECKPOINT,
                    {
                        "cmaes": strategy.state_dict(),
                        "curve": {key: np.asarray(value, dtype=np.float64) for key, value in curve.items()},
                    },
                )
                advance(1, f"fitness {fitness.mean():.1f} (best {fitness.max():.1f})")
        self.save(
            "controller",
            RESULT,
            {
                "parameters": strategy.mean.astype(np.float32),
                "generations": strategy.generation,
                "curve": {key: np.asarray(value, dtype=np.float64) for key, value in curve.items()},
            },
        )
        (self.stage_dir("controller") / f"{CHECKPOINT}.json").unlink(missing_ok=True)
        (self.stage_dir("controller") / f"{CHECKPOINT}.safetensors").unlink(missing_ok=True)
        save_controller_curve(curve, self.config.dream, self.run_dir / "figures" / "controller_curve.png")

    def real_score(self, real, parameters: np.ndarray, episodes: int, offset: int) -> float:
        """Mean real return of one controller over `episodes` whole episodes (the environment's own
        limit, whatever cap training uses), with seeds that training never draws (they count down
        from 2^31 - 1)."""
        seeds = (2**31 - 1 - offset * 100_000 - np.arange(episodes)).reshape(1, -1)
        returns, _ = real.returns(np.asarray(parameters)[None], seeds, max_steps=0)
        return float(returns.mean())

    # --- stage 5: evaluation in reality ----------------------------------------------------------

    def evaluate(self) -> None:
        model = self.trained_model()
        controller = self.controller_for(model)
        result = self.load_result("controller")
        parameters = np.asarray(result["parameters"], dtype=np.float32)
        episodes = self.config.evaluation_episodes
        self.forget_metrics(("eval/", "dream/"), -1)
        with self.real_rollouts(model, controller) as real:
            seeds = (2**31 - 1 - np.arange(episodes)).reshape(1, -1)
            advance = self.bars.task("evaluate", 1, 0)
            returns, lengths = real.returns(
                parameters[None], seeds, max_steps=0
            )  # whole episodes, whatever C trained on
            advance(1, f"return {returns.mean():.1f}")
        returns, lengths = returns[0], lengths[0]
        summary: dict[str, Any] = {
            "eval/return": float(returns.mean()),
            "eval/return_std": float(returns.std()),
            "eval/length": float(lengths.mean()),
            "eval/episodes": int(episodes),
            "env": self.env_id,
            "dream": self.config.dream,
            "temperature": self.config.temperature,
            "controller/inputs": self.config.controller.inputs,
            "controller/parameters": int(controller.parameter_count),
            "controller/generations": int(result["generations"]),
        }
        dream_scores = np.zeros(0)
        if self.config.model.mdnrnn.predict_reward and self.config.dream_evaluation_episodes > 0:
            dream = self.dream(model, self.config.dream_evaluation_episodes, seed=self.seed + 7, whole_episodes=True)
            dream_scores, _ = dream_returns(
                dream, controller, torch.as_tensor(parameters)[None], self.config.controller.inputs
            )
            dream_scores = dream_scores[0]
            summary["dream/return"] = float(dream_scores.mean())
            summary["dream/return_std"] = float(dream_scores.std())
        generations = int(result["generations"])
        self.log(
            generations,
            {
                key: value
                for key, value in summary.items()
                if key.startswith(("eval/", "dream/")) and isinstance(value, float)
            },
        )
        # The trained agent where `wmlab eval` looks for it.
        agent = WorldModelsAgent(
            self.config, self.observation_space, self.action_space, seed=self.seed, device=str(self.device)
        )
        agent.world_model.load_state_dict(model.state_dict())
        agent.controller_parameters = torch.as_tensor(parameters)
        save_state(agent.state_dict(), self.run_dir / "checkpoints" / "rank0", "agent")
        self.record_videos(agent, model, controller, parameters)
        self.save("evaluate", RESULT, {"returns": returns, "lengths": lengths, "dream_returns": dream_scores})
        summary["stage_seconds"] = self.stage_seconds
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))

    def record_videos(self, agent, model, controller, parameters: np.ndarray) -> None:
        """videos/real_rollout.gif (what C does in the environment) and videos/dream_rollout.gif
        (what it does inside M, decoded by V)."""
        steps = self.config.video_steps
        if steps <= 0:
            return
        env = make_env(self.env_id, **self.env_kwargs)
        frames = []
        observation, _ = env.reset(seed=2**31 - 1)
        state, is_first = None, True
        for _ in range(steps):
            frames.append(observation["image"])
            batched = {key: value[None] for key, value in observation.items()}
            batched["is_first"] = np.array([is_first])
            action, state = agent.act(batched, state, explore=False)
            observation, _, terminated, truncated, _ = env.step(action[0].item() if action[0].ndim == 0 else action[0])
            is_first = False
            if terminated or truncated:
                break
        env.close()
        write_gif(self.run_dir / "videos" / "real_rollout.gif", frames)
        dream = self.dream(model, 1, seed=self.seed + 11)
        observation, _ = dream.reset(options={"indices": [0]})
        frames = [dream.render()[0]]
        weights = torch.as_tensor(parameters)[None]
        with torch.no_grad():
            for _ in range(steps - 1):
                actions = controller(
                    weights, controller_features(observation["state"], self.config.controller.inputs)[None]
                )[0]
                observation, _, terminated, truncated, _ = dream.step(actions)
                frames.append(dream.render()[0])
                if bool(terminated[0] or truncated[0]):
                    break
        write_gif(self.run_dir / "videos" / "dream_rollout.gif", frames)


# ----------------------------------------------------------------------------------------------
# Helpers


def brownian_policy(action_space, dt: float, seed: int):
    """A random policy for `record_dataset`: a_{t+1} = clip(a_t + sqrt(dt) * N(0, I), low, high)
    from a uniform first action (ctallec/world-models' "brown" noise); uniform choices for a
    Discrete space."""
    generator = np.random.default_rng(seed)

    def policy(observation, state):
        if isinstance(action_space, spaces.Discrete):
            return np.array([int(generator.integers(action_space.n))]), None
        low, high = action_space.low.astype(np.float64), action_space.high.astype(np.float64)
        if state is None:
            action = generator.uniform(low, high)
        else:
            action = np.clip(state + np.sqrt(dt) * generator.standard_normal(low.shape), low, high)
        return action.astype(action_space.dtype)[None], action

    policy.__name__ = "brownian"
    return policy


def read_episodes(directory: Path, crop: tuple[int, int, int, int]):
    """Each recorded episode as a dict of arrays, its frames made 64x64 for V (one at a time, so
    that only the resized frames of the whole dataset are ever held at once)."""
    manifest = read_manifest(directory)
    for entry in manifest["episodes"]:
        with np.load(directory / entry["file"], allow_pickle=False) as archive:
            episode = {key: archive[key] for key in archive.files}
        episode["image"] = prepare_frames(episode["image"], tuple(crop))
        yield episode


class VTraining(TrainingObjective):
    """Stage 2 for the offline trainer: V alone, on single frames (windows of T = 1) cropped and made
    64 x 64 as V reads them; the squared error plus the KL term (free bits), no gradient clipping."""

    def __init__(self, crop: tuple[int, int, int, int]):
        self.crop = tuple(crop)

    def parameters(self, model: VAEMDNRNN) -> list[torch.nn.Parameter]:
        return list(model.vae.parameters())

    def loss(self, model: VAEMDNRNN, batch) -> tuple[torch.Tensor, dict[str, float]]:
        frames = prepare_frames(np.asarray(batch.obs["image"]), self.crop)  # (B, T, 64, 64, C)
        loss, metrics = model.vae_loss(frames.reshape(-1, *frames.shape[-3:]))
        return loss, {
            "vae/loss": float(loss.detach()),
            "vae/reconstruction": metrics["loss/reconstruction"],
            "vae/kl": metrics["wm/kl_raw"],
        }


class MTraining(TrainingObjective):
    """Stage 3 for the offline trainer: M alone on V's codes. V (the trained weights given) is frozen
    and encodes every recorded frame once (q(z | x)'s mean and log-variance, in chunks of 256 frames
    in recording order); each batch then draws a fresh z ~ q(z | x) for every frame of its B windows
    of T steps, as the authors train M. Gradients are clipped element-wise (by value), as they do."""

    def __init__(self, vae_weights: dict[str, torch.Tensor], crop: tuple[int, int, int, int], dataset: Path):
        self.vae_weights, self.crop, self.dataset = vae_weights, tuple(crop), Path(dataset)

    @torch.no_grad()
    def prepare(self, model: VAEMDNRNN) -> None:
        model.vae.load_state_dict(self.vae_weights)
        model.vae.requires_grad_(False)
        model.eval()
        self.rows: dict[bytes, int] = {}  # a frame's digest -> its row of codes (its first appearance)
        codes = []
        for entry in read_manifest(self.dataset)["episodes"]:
            with np.load(self.dataset / entry["file"], allow_pickle=False) as archive:
                frames = archive["image"]
            first = sum(len(chunk) for chunk in codes)
            for offset, frame in enumerate(frames):
                self.rows.setdefault(_digest(frame), first + offset)
            prepared = prepare_frames(frames, self.crop)
            codes += [
                torch.cat(model.encode(prepared[start : start + 256]), -1) for start in range(0, len(prepared), 256)
            ]
        self.mean, self.log_variance = torch.cat(codes).chunk(2, dim=-1)  # (frames, Z) each

    def parameters(self, model: VAEMDNRNN) -> list[torch.nn.Parameter]:
        return list(model.mdnrnn.parameters())

    def loss(self, model: VAEMDNRNN, batch) -> tuple[torch.Tensor, dict[str, float]]:
        images = np.asarray(batch.obs["image"])  # (B, T, H, W, C)
        rows = torch.as_tensor([self.rows[_digest(frame)] for frame in images.reshape(-1, *images.shape[2:])])
        shape = (*images.shape[:2], -1)
        mean, log_variance = self.mean[rows].reshape(shape), self.log_variance[rows].reshape(shape)
        latents = mean + (0.5 * log_variance).exp() * torch.randn_like(mean)  # (B, T, Z)
        loss, metrics = model.mdnrnn_loss(latents, batch.action, batch.reward, batch.is_first, batch.is_terminal)
        named = {"mdnrnn/" + key.split("/", 1)[1]: value for key, value in metrics.items()}
        return loss, named | {"mdnrnn/loss": float(loss.detach())}

    def clip_gradients(self, parameters: list[torch.nn.Parameter], limit: float) -> float:
        norm = super().clip_gradients(parameters, 0.0)
        if limit > 0:
            torch.nn.utils.clip_grad_value_(parameters, limit)
        return norm


def _digest(frame: np.ndarray) -> bytes:
    """A 16-byte fingerprint of a frame's pixels (which codes belong to it)."""
    return hashlib.blake2b(np.ascontiguousarray(frame).data, digest_size=16).digest()


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another filesystem
        shutil.copy2(source, destination)


def _own_step_limit(env) -> int:
    spec = getattr(env, "spec", None) or getattr(env.unwrapped, "spec", None)
    limit = getattr(spec, "max_episode_steps", None) or getattr(env.unwrapped, "max_episode_steps", None)
    return int(limit or 0)


def _changed_keys(saved: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(saved) | set(wanted)):
        first, second = saved.get(key), wanted.get(key)
        if isinstance(first, dict) and isinstance(second, dict):
            changed += _changed_keys(first, second, f"{prefix}{key}.")
        elif first != second:
            changed.append(f"{prefix}{key}")
    return changed


@torch.no_grad()
def save_reconstructions(model, frames: np.ndarray, path: Path, count: int = 8) -> None:
    """Real frames above V's reconstructions of them (decoded from the mean code)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = frames[np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(np.int64)]
    mean, _ = model.encode(torch.as_tensor(chosen, device=model.device))
    decoded = model.decode({"latent": mean})["image"].cpu().numpy()
    figure, axes = plt.subplots(2, len(chosen), figsize=(1.6 * len(chosen), 3.4), squeeze=False)
    for column in range(len(chosen)):
        for row, (image, title) in enumerate(((chosen[column], "real"), (decoded[column], "V(x)"))):
            axes[row, column].imshow(image)
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
            if column == 0:
                axes[row, column].set_ylabel(title)
    figure.suptitle("V: frames and their reconstructions")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def save_controller_curve(curve: dict[str, list[float]], dream: bool, path: Path) -> None:
    """C's learning curve: the population's mean and best fitness per generation, and the real
    return of the distribution's mean where it was checked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    where = "dream" if dream else "real environment"
    axis.plot(curve["generation"], curve["mean"], label=f"population mean ({where})")
    axis.plot(curve["generation"], curve["best"], label=f"best candidate ({where})", alpha=0.7)
    if curve.get("real_generation"):
        axis.plot(curve["real_generation"], curve["real_return"], "o-", label="mean controller, real return")
    axis.set_xlabel("CMA-ES generation")
    axis.set_ylabel("return")
    axis.set_title("C's learning curve")
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
