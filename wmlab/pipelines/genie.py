"""`wmlab pipeline genie`: train Genie (wmlab.models.latent_action) on video, in two stages.

    wmlab record --env two-rooms --episodes 200 --out data/rooms          (actions kept apart)
    wmlab pipeline genie --dataset data/rooms --run-dir runs/genie-rooms --model.size cpu
    wmlab pipeline genie --resume runs/genie-rooms --stages.dynamics-updates 6000
    wmlab eval runs/genie-rooms --suite grounding

Stage 1 trains the video tokenizer and the latent action model; stage 2 trains the dynamics on
their (frozen) tokens and latent actions. (Genie trains the tokenizer first, then the latent
action model and the dynamics together, Sec. 2.1; here the latent action model moves to stage 1
so that the dynamics learns on fixed actions.) Each update is one Adam step on
`model.loss(batch, parts)` for B windows of the context's length drawn from the training
episodes; a held-out share of the episodes (`held_out`) is never trained on, for grounding and
controllability. The model never sees the actions: the video is read by wmlab.data.video.

    RUN_DIR/config.json                 "kind": "genie", the model config, dataset, settings
    RUN_DIR/metrics.jsonl               averaged metrics every `log_every` updates
    RUN_DIR/checkpoints/model.*         weights (safetensors + JSON)
    RUN_DIR/checkpoints/trainer.*       optimiser, counters, random states (exact resume)

Shape legend: B batch, T frames.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

from wmlab.core.config import from_dict
from wmlab.core.errors import RunDirectoryError, WmlabError
from wmlab.core.serialization import load_state, save_state
from wmlab.data.video import VideoDataset, load_video
from wmlab.eval.grounding import code_use, controllability, grounding
from wmlab.models.latent_action import GenieConfig, GenieWorldModel
from wmlab.runs.directory import load_trained_model

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class GenieStages:
    """The two stages' lengths and the optimiser."""

    tokenizer_updates: int = 3000
    """Stage 1: updates of the tokenizer and the latent action model."""
    dynamics_updates: int = 3000
    """Stage 2: updates of the dynamics model on their frozen tokens and actions."""
    batch_size: int = 16
    """B, windows per update."""
    learning_rate: float = 3e-4
    """Adam's learning rate (both stages)."""
    grad_clip: float = 1.0
    """Global gradient norm clip (0: none)."""
    log_every: int = 100
    """Updates between metric lines."""
    checkpoint_every: int = 500
    """Updates between checkpoints (and one at the end of each stage)."""


@dataclass(frozen=True)
class GeniePipelineConfig:
    """Train Genie on video without actions."""

    dataset: str = ""
    """A `wmlab record` dataset, a folder of PNG sequences or video files, or one video file."""
    run_dir: str = ""
    """Where the run is written (default: runs/genie-<dataset name>-seed<seed>)."""
    resume: str = ""
    """Continue the run in this directory (its config is reused; stage lengths may grow)."""
    model: GenieConfig = field(default_factory=GenieConfig)
    """The model (its widths: `--model.size NAME [FIELD=VALUE ...]`, NAME tiny, cpu or genie)."""
    stages: GenieStages = field(default_factory=GenieStages)
    """Updates per stage and the optimiser."""
    size: tuple[int, int] | None = None
    """Resize every frame to (H, W) (default: keep the video's size; all videos must share it)."""
    held_out: float = 0.2
    """Share of the episodes kept apart for evaluation (grounding, controllability)."""
    seed: int = 0
    """Seeds the split, the initial weights, the window sampler and the masks."""
    device: str = "cpu"
    """torch device."""
    force: bool = False
    """Replace a run already in --run-dir."""


# ----------------------------------------------------------------------------------------------
# Training


class GenieTrainer:
    """The two-stage loop over a VideoDataset, resumable exactly."""

    def __init__(self, config: GeniePipelineConfig, run_dir: Path, video: VideoDataset):
        self.config, self.run_dir = config, Path(run_dir)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.train_video, self.held_out_video = (
            video.split(config.held_out, config.seed) if len(video) > 1 and config.held_out > 0 else (video, None)
        )
        from gymnasium import spaces

        space = spaces.Dict({config.model.image_key: spaces.Box(0, 255, video.frame_shape, np.uint8)})
        self.model = GenieWorldModel(config.model, space).to(config.device)
        self.rng = np.random.default_rng(config.seed)
        self.updates = {"tokenizer": 0, "dynamics": 0}
        self.elapsed = 0.0
        self.optimizer = self._optimizer("tokenizer")

    def _optimizer(self, stage: str) -> torch.optim.Optimizer:
        modules = [self.model.tokenizer, self.model.latent_action] if stage == "tokenizer" else [self.model.dynamics]
        parameters = [p for module in modules for p in module.parameters()]
        return torch.optim.Adam(parameters, lr=self.config.stages.learning_rate)

    @property
    def stage(self) -> str:
        return "tokenizer" if self.updates["tokenizer"] < self.config.stages.tokenizer_updates else "dynamics"

    def update(self, stage: str) -> dict[str, float]:
        """One Adam step of the stage's parts on B windows."""
        parts = ("tokenizer", "latent_action") if stage == "tokenizer" else ("dynamics",)
        length = min(self.model.context, max(len(frames) for frames in self.train_video.frames))
        batch = self.train_video.sample(self.config.stages.batch_size, length, self.rng)
        self.model.train()
        loss, metrics = self.model.loss(batch, parts)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.config.stages.grad_clip if self.config.stages.grad_clip > 0 else float("inf")
        metrics["wm/grad_norm"] = float(
            torch.nn.utils.clip_grad_norm_([p for group in self.optimizer.param_groups for p in group["params"]], clip)
        )
        self.optimizer.step()
        self.updates[stage] += 1
        return metrics

    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to the end of both stages (or for `stop_after` updates: for tests of resume)."""
        stages = self.config.stages
        totals = {"tokenizer": stages.tokenizer_updates, "dynamics": stages.dynamics_updates}
        started, done = time.perf_counter(), 0
        sums: dict[str, float] = {}
        count = 0
        log = self.run_dir / "metrics.jsonl"
        for stage in ("tokenizer", "dynamics"):
            if self.updates[stage] >= totals[stage]:
                continue
            if stage == "dynamics" and self._optimizer_stage != "dynamics":
                self.optimizer, self._optimizer_stage = self._optimizer("dynamics"), "dynamics"
            while self.updates[stage] < totals[stage]:
                if stop_after is not None and done >= stop_after:
                    self.save()
                    return {"stopped": True, **self.updates}
                metrics = self.update(stage)
                done += 1
                for name, value in metrics.items():
                    sums[name] = sums.get(name, 0.0) + value
                count += 1
                step = self.updates[stage]
                if step % stages.log_every == 0 or step == totals[stage]:
                    line = {
                        "stage": stage,
                        "update": step,
                        "seconds": round(self.elapsed + time.perf_counter() - started, 1),
                        **{k: v / count for k, v in sums.items()},
                    }
                    with log.open("a") as file:
                        file.write(json.dumps(line) + "\n")
                    sums, count = {}, 0
                if step % stages.checkpoint_every == 0 or step == totals[stage]:
                    self.elapsed += time.perf_counter() - started
                    started = time.perf_counter()
                    self.save()
        self.elapsed += time.perf_counter() - started
        self.save()
        return {"stopped": False, **self.updates, "seconds": self.elapsed}

    _optimizer_stage = "tokenizer"

    # --- checkpoints -------------------------------------------------------------------------

    def save(self) -> None:
        directory = self.run_dir / "checkpoints"
        save_state(self.model.state_dict(), directory, "model")
        trainer = {
            "optimizer": self.optimizer.state_dict(),
            "optimizer_stage": self._optimizer_stage,
            "updates": dict(self.updates),
            "elapsed": self.elapsed,
            "numpy": json.dumps(self.rng.bit_generator.state),
            "torch": torch.get_rng_state(),
        }
        save_state(trainer, directory, "trainer")

    def load(self) -> None:
        directory = self.run_dir / "checkpoints"
        self.model.load_state_dict(load_state(directory, "model"))
        trainer = load_state(directory, "trainer")
        self._optimizer_stage = trainer["optimizer_stage"]
        self.optimizer = self._optimizer(self._optimizer_stage)
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.updates = {key: int(value) for key, value in trainer["updates"].items()}
        self.elapsed = float(trainer["elapsed"])
        self.rng.bit_generator.state = json.loads(trainer["numpy"])
        torch.set_rng_state(trainer["torch"])


def _config_json(config: GeniePipelineConfig, video: VideoDataset) -> dict[str, Any]:
    return {"kind": "genie", "config": asdict(config), "frame_shape": list(video.frame_shape), "episodes": len(video)}


def _config_from_json(stored: dict[str, Any]) -> GeniePipelineConfig:
    data = dict(stored["config"])
    data["model"] = from_dict(GenieConfig, data.pop("model"))  # a model of an older run too
    data["stages"] = GenieStages(**data["stages"])
    data["size"] = None if data.get("size") is None else tuple(data["size"])
    return GeniePipelineConfig(**data)


def train_genie(config: GeniePipelineConfig, stop_after: int | None = None) -> tuple[GenieTrainer, dict[str, Any]]:
    """Run (or resume, with config.resume) the pipeline; returns (trainer, summary)."""
    if config.resume:
        run_dir = Path(config.resume)
        path = run_dir / CONFIG_FILE
        if not path.is_file():
            raise RunDirectoryError(f"{run_dir} holds no Genie run ({path} is missing)")
        stored = _config_from_json(json.loads(path.read_text()))
        # A resumed run keeps its model and data; only the stage settings given (those that
        # differ from the defaults) change.
        defaults = GenieStages()
        changed = {
            name: getattr(config.stages, name)
            for name in asdict(defaults)
            if getattr(config.stages, name) != getattr(defaults, name)
        }
        config = replace(stored, stages=replace(stored.stages, **changed), resume=str(run_dir))
        video = load_video(config.dataset, size=config.size)
        trainer = GenieTrainer(config, run_dir, video)
        trainer.load()
    else:
        if not config.dataset:
            raise WmlabError("give the video to learn from: --dataset PATH")
        run_dir = Path(config.run_dir or f"runs/genie-{Path(config.dataset).name}-seed{config.seed}")
        if (run_dir / CONFIG_FILE).exists() and not config.force:
            raise RunDirectoryError(
                f"{run_dir} already holds a run; pass --force to replace it or --resume {run_dir} to continue it"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        video = load_video(config.dataset, size=config.size)
        config = replace(config, run_dir=str(run_dir))
        (run_dir / CONFIG_FILE).write_text(json.dumps(_config_json(config, video), indent=2))
        trainer = GenieTrainer(config, run_dir, video)
    summary = trainer.run(stop_after)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return trainer, summary


def load_genie_run(run_dir: str | Path) -> tuple[GenieWorldModel, dict[str, Any]]:
    """(model with the run's latest weights, {"dataset", "held_out", "seed", "size"}) of a run."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirectoryError(f"{run_dir} holds no run ({path} is missing)")
    stored = json.loads(path.read_text())
    if stored.get("kind") == "offline" and stored.get("model") == "genie":  # `wmlab train --algo genie`
        spec, model = load_trained_model(run_dir)
        model.eval()
        return model, {
            "dataset": spec.dataset,
            "held_out": spec.held_out,
            "seed": spec.train.seed,
            "size": spec.frame_size,
        }
    if stored.get("kind") != "genie":
        raise RunDirectoryError(
            f"{run_dir} is not a Genie run (config kind {stored.get('kind')!r}, model {stored.get('model')!r}); --suite grounding reads runs of `wmlab train --algo genie` and `wmlab pipeline genie`"
        )
    config = _config_from_json(stored)
    from gymnasium import spaces

    shape = tuple(stored["frame_shape"])
    model = GenieWorldModel(config.model, spaces.Dict({config.model.image_key: spaces.Box(0, 255, shape, np.uint8)}))
    model.load_state_dict(load_state(run_dir / "checkpoints", "model"))
    model.eval()
    return model, {"dataset": config.dataset, "held_out": config.held_out, "seed": config.seed, "size": config.size}


# ----------------------------------------------------------------------------------------------
# `wmlab eval RUN_DIR --suite grounding`


def grounding_suite(
    run_dir: str | Path | None, dataset: str | Path | None = None, sequences: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Grounding and controllability (wmlab.eval.grounding) of a Genie run on its held-out
    episodes (or on `dataset`); writes RUN_DIR/eval/grounding.json and returns it."""

    if run_dir is None:
        raise WmlabError("give a run directory: wmlab eval RUN_DIR --suite grounding")
    run_dir = Path(run_dir)
    model, info = load_genie_run(run_dir)
    video = load_video(dataset or info["dataset"], size=tuple(model.image_shape[:2]))
    if dataset is None and len(video) > 1 and info["held_out"] > 0:
        _, video = video.split(info["held_out"], info["seed"])
    result: dict[str, Any] = {
        "run": str(run_dir),
        "dataset": str(dataset or info["dataset"]),
        "held_out": dataset is None,
    }
    result["grounding"] = (
        grounding(model, video, sequences=sequences, seed=seed) if video.hidden_actions is not None else None
    )
    result["code_use"] = code_use(model, video, sequences=sequences, seed=seed)
    # Genie reports delta-PSNR at t = 4: four generated frames after two real ones.
    result["controllability"] = controllability(
        model, video, sequences=max(1, sequences // 2), context=2, horizon=4, seed=seed
    )
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    (run_dir / "eval" / "grounding.json").write_text(json.dumps(result, indent=2))
    return result


def pipeline_command(argv: list[str]) -> int:
    """`wmlab pipeline genie ARGS`."""

    config = tyro.cli(GeniePipelineConfig, args=argv, prog="wmlab pipeline genie")
    trainer, summary = train_genie(config)
    print(
        f"Genie: {summary['tokenizer']} tokenizer / latent-action updates, {summary['dynamics']} dynamics updates in {trainer.run_dir}"
    )
    return 0
