"""`wmlab train --algo genie --dataset PATH`: a world model that learns from video alone, fitted
by the offline trainer (wmlab.train.offline) to frames without actions.

    wmlab train --algo genie --dataset data/rooms --run-dir runs/genie-rooms --train.updates 3000
    wmlab train --algo genie --env two-rooms-discrete --record.episodes 100 --run-dir runs/genie-rooms
    wmlab train --resume runs/genie-rooms --train.updates 6000
    wmlab eval runs/genie-rooms --suite grounding
    wmlab play runs/genie-rooms

The dataset is anything wmlab.data.video reads: a `wmlab record` dataset (its actions, if stored,
are never shown to the model), a folder of PNG sequences or video files, or one video file.
`--env ID` records one first with a random policy (actions stored apart, for grounding). A share
of the episodes (`--held-out`) is kept apart from training for the evaluation suites; the split
depends on the seed only. The run directory is the offline trainer's ("kind": "offline", the
model family, the dataset, held_out and frame_size in config.json; metrics, TensorBoard,
safetensors checkpoints, exact --resume). All of the model's parts learn at once from one loss
(Genie trains the tokenizer first; `wmlab pipeline genie` keeps that two-stage schedule).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import tyro
from gymnasium import spaces

from wmlab.core.config import option_value, parse_json_object
from wmlab.core.errors import DatasetError, WmlabError
from wmlab.core.registry import MODELS
from wmlab.core.spaces import describe_space
from wmlab.data.dataset import record_dataset
from wmlab.data.video import VideoDataset, load_run_video, load_video
from wmlab.runs.config import OfflineTrainConfig
from wmlab.runs.directory import (
    CONFIG_FILE,
    OfflineRunSpec,
    build_world_model,
    is_offline_run,
)
from wmlab.train.offline import OfflineTrainer, parse_resumed, train_and_report

#: Model families that learn from frames alone (their actions are latent): trained here.
VIDEO_MODELS = ("genie",)


# ----------------------------------------------------------------------------------------------
# Video as the offline trainer's dataset


class VideoWindows:
    """Episodes of a VideoDataset, sampled as the offline trainer samples a recorded dataset:
    B windows of T frames inside episodes (action None), from a generator whose state is saved."""

    def __init__(self, video: VideoDataset, seed: int):
        self.video = video
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int, length: int):
        """Batch with obs {"image": (B, T, H, W, C)}, action None."""
        return self.video.sample(batch_size, length, self.rng)

    def sampler_state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def load_sampler_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


class VideoTrainer(OfflineTrainer):
    """The offline trainer on the training episodes of a video (the held-out ones never seen)."""

    def open_dataset(self, spec: OfflineRunSpec, seed: int) -> VideoWindows:
        training, _ = load_run_video(spec)
        longest = max(len(frames) for frames in training.frames)
        if spec.train.sequence_length > longest:
            raise DatasetError(
                f"windows of --train.sequence-length {spec.train.sequence_length} frames do not fit the longest "
                f"training episode of {spec.dataset} ({longest} frames)"
            )
        return VideoWindows(training, seed)


# ----------------------------------------------------------------------------------------------
# The command line


@dataclasses.dataclass(frozen=True)
class RecordSettings:
    """With --env: the video recorded first (a random policy; its actions stored apart)."""

    episodes: int = 100
    """Episodes to record."""
    max_episode_steps: int | None = 50
    """Truncate episodes after this many steps (None: the environment's limit)."""
    seed: int = 0
    """Episode i starts from reset(seed=seed + i); the random policy is seeded with it."""


def wants_video_training(argv: list[str]) -> bool:
    """Whether `wmlab train ARGV` trains a model of video alone: --algo or --model names one, or
    --resume names a run of one."""
    if (option_value(argv, "--algo") or option_value(argv, "--model")) in VIDEO_MODELS:
        return True
    resume = option_value(argv, "--resume")
    if resume is None or not (Path(resume) / CONFIG_FILE).is_file() or not is_offline_run(resume):
        return False
    return json.loads((Path(resume) / CONFIG_FILE).read_text()).get("model") in VIDEO_MODELS


def _command_class(family: str) -> type:
    """A dataclass for tyro: the family, the video (or the environment to record it from), the
    split, the trainer's and the model's configs."""
    model_config = MODELS.get(family).load_config()

    def documented(kind, help_text):
        return Annotated[kind, tyro.conf.arg(help=help_text)]

    def option(name, kind, help_text, default=None):
        return (name, documented(kind, help_text), dataclasses.field(default=default))

    return dataclasses.make_dataclass(
        "VideoTrainCommand",
        [
            option("algo", str, f"A model of video alone: {', '.join(VIDEO_MODELS)}.", family),
            option(
                "dataset", Path | None, "Video to learn from: a `wmlab record` dataset, PNG sequences, video files."
            ),
            option("env", str | None, "Record the video from this environment first (into --dataset)."),
            option("env_kwargs", str, "Keyword arguments of --env as a JSON object.", "{}"),
            ("record", RecordSettings, dataclasses.field(default_factory=RecordSettings)),
            option("held_out", float, "Share of the episodes kept apart from training, for evaluation.", 0.2),
            option("size", tuple[int, int] | None, "Resize every frame to H W (default: the video's size)."),
            option("run_dir", Path | None, "Run directory (default runs/FAMILY-DATASET-seedSEED)."),
            option("force", bool, "Replace a run directory that already holds a run.", False),
            option("resume", Path | None, "Continue the run in this directory from its last checkpoint."),
            ("train", OfflineTrainConfig, dataclasses.field(default_factory=OfflineTrainConfig)),
            ("world_model", model_config, dataclasses.field(default_factory=model_config)),
        ],
        frozen=True,
    )


def _record(parsed) -> Path:
    target = (
        parsed.dataset or Path("data") / f"{parsed.env.replace(':', '-').replace('/', '-')}-seed{parsed.record.seed}"
    )
    if (target / "manifest.json").exists():
        raise WmlabError(f"{target} already holds a dataset: train on it without --env, or give another --dataset")
    record_dataset(
        parsed.env,
        "random",
        parsed.record.episodes,
        target,
        seed=parsed.record.seed,
        env_kwargs=parse_json_object("--env-kwargs", parsed.env_kwargs),
        max_episode_steps=parsed.record.max_episode_steps,
    )
    print(f"recorded {parsed.record.episodes} episodes of {parsed.env} to {target}")
    return target


def parse_video_arguments(argv: list[str]) -> tuple[OfflineRunSpec, Path, bool, bool]:
    """(OfflineRunSpec, run_dir, resume, force) from the command line."""
    argv = ["--algo" if argument == "--model" else argument for argument in argv]
    resume_dir = option_value(argv, "--resume")
    if resume_dir is not None:
        return parse_resumed(
            argv,
            resume_dir,
            lambda saved: (
                _command_class(saved.model),
                {"algo": saved.model, "held_out": saved.held_out, "size": saved.frame_size},
            ),
        )

    family = option_value(argv, "--algo") or VIDEO_MODELS[0]
    parsed = tyro.cli(
        _command_class(family),
        args=argv,
        prog="wmlab train",
        description=f"Train {family} on video without actions. " + (MODELS.get(family).description or ""),
    )
    if not 0 <= parsed.held_out < 1:
        raise WmlabError(f"--held-out must lie in [0, 1), got {parsed.held_out}")
    if parsed.env is not None:
        dataset = _record(parsed)
    elif parsed.dataset is None:
        raise WmlabError(
            f"give the video to learn from: wmlab train --algo {family} --dataset PATH (or --env ID to record it)"
        )
    else:
        dataset = parsed.dataset
    video = load_video(dataset, size=parsed.size)
    manifest = Path(dataset) / "manifest.json"
    recorded = json.loads(manifest.read_text()) if manifest.is_file() else {}
    spec = OfflineRunSpec(
        model=family,
        dataset=str(Path(dataset).resolve()),
        train=parsed.train,
        world_model=parsed.world_model,
        observation_space=describe_space(spaces.Dict({"image": spaces.Box(0, 255, video.frame_shape, np.uint8)})),
        action_space=describe_space(spaces.Discrete(getattr(parsed.world_model, "action_codes", 8))),
        with_actions=False,
        dataset_steps=video.num_frames,
        env=recorded.get("env_id", ""),
        env_kwargs=recorded.get("env_kwargs", {}),
        held_out=parsed.held_out,
        frame_size=parsed.size,
    )
    if not any(argument.startswith(("--train.sequence-length", "--train.sequence_length")) for argument in argv):
        # The default window is the model's whole context (the frames it sees at once).
        context = build_world_model(spec).context
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, sequence_length=context))
    run_dir = parsed.run_dir or Path("runs") / f"{family}-{Path(dataset).name}-seed{spec.train.seed}"
    return spec, run_dir, False, parsed.force


def video_train_command(argv: list[str]) -> int:
    """`wmlab train --algo genie --dataset PATH [...]` and `wmlab train --resume GENIE_RUN`."""
    return train_and_report(
        VideoTrainer, *parse_video_arguments(argv), "eval {run} --suite grounding; wmlab play {run}"
    )
