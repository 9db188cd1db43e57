"""`wmlab generate RUN_DIR --steps N [--denoising-steps K] --out file.mp4`: a trained world model
generates N frames autoregressively, started from real frames of the run's replay.

    file.mp4          the generated frames (beside the real ones where the actions are recorded)
    file.png          a contact sheet: every few steps, real above generated
    file.json         frames per second of generation, PSNR against the real frames per step

Actions: "recorded" replays the episode's own actions (so the real frames are the ground truth
and PSNR is measured), "policy" lets the run's agent act on the generated frames, "random" draws
uniform actions. Frames per second count the world model's generation only (`imagine`, one
sequence, after a warm-up frame; frames only, without the reward / end model where the family
can skip it), on whatever machine runs it.

Any world model that decodes images works (`observe`, `imagine`, `decode`); `--denoising-steps`
and `--churn` reach samplers that take them (the diffusion model's). A world model trained
offline (`wmlab train --model ... --dataset DIR`) starts from its dataset's episodes.

Instructions (UniSim): `--text "move left"` encodes the text with the frozen sentence encoder
(wmlab.nn.text) and conditions every generated frame on it, with classifier-free guidance
`--guidance` (1: the conditional model); the model must have been trained on instructions
(wmlab.data.instructions), else the command says so before loading anything else.

Shape legend: L generated steps, H, W, C image.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import tyro

from wmlab.core.errors import WmlabError
from wmlab.core.images import to_pixels
from wmlab.data.dataset import load_dataset
from wmlab.eval.suites import replay_episodes, world_model_of
from wmlab.eval.world_model_metrics import psnr
from wmlab.nn.text import check_texts, load_text_encoder
from wmlab.runs.directory import is_offline_run, load_trained_agent, load_trained_model


@dataclass(frozen=True)
class GenerateCommand:
    """Generate frames with a run's world model and write them as an MP4 and a contact sheet."""

    run_dir: Annotated[Path, tyro.conf.Positional]
    """The run directory."""
    steps: int = 100
    """Frames to generate (L)."""
    denoising_steps: int = 0
    """Denoising steps per frame of a diffusion model (1 to 50; 0: the model's own setting)."""
    churn: float = -1.0
    """Stochastic sampler's churn for a diffusion model (negative: the model's own setting)."""
    actions: str = "recorded"
    """recorded (the episode's own actions, with PSNR against its frames) | policy | random."""
    out: Path = Path("generated.mp4")
    """The MP4 to write; the contact sheet and the JSON go beside it (.png, .json)."""
    episode: int = -1
    """Replay episode to start from (-1: the longest)."""
    seed: int = 0
    """Seed of the sampling and of random actions."""
    fps: int = 15
    """Frames per second of the video."""
    scale: int = 4
    """Each frame is enlarged this many times (nearest neighbour) in the video and sheet."""
    columns: int = 10
    """Frames per row of the contact sheet."""
    text: str = ""
    """A text prompt: an instruction conditioning every generated frame (UniSim: a diffusion model
    trained on instructions) or the prompt of a text-conditioned token run (`wmlab pipeline gaia`)."""
    guidance: float | None = None
    """Classifier-free guidance scale of --text (1: the conditional model; 0: unconditional; default:
    1 for instruction-trained diffusion models, 3 for GAIA runs)."""
    text_encoder: str = ""
    """The text encoder, as module:factory (empty: wmlab.nn.text's all-MiniLM-L6-v2)."""


def imagine_options(model: Any, denoising_steps: int, churn: float) -> dict[str, Any]:
    parameters = inspect.signature(model.imagine).parameters
    # A video needs frames only: skip reward models where the family can.
    options: dict[str, Any] = {"predict_rewards": False} if "predict_rewards" in parameters else {}
    if denoising_steps != 0:
        if "denoising_steps" not in parameters:
            raise WmlabError(
                f"{type(model).__name__} does not denoise: --denoising-steps applies to diffusion models only"
            )
        options["denoising_steps"] = denoising_steps
    if churn >= 0:
        if "churn" not in parameters:
            raise WmlabError(
                f"{type(model).__name__} has no stochastic sampler: --churn applies to diffusion models only"
            )
        options["churn"] = churn
    return options


def instruction_options(model: Any, text: str, guidance: float, encoder_spec: str = "") -> dict[str, Any]:
    """imagine's options for an instruction: {"condition": (1, D), "guidance": w}, or {} without
    text. A clear error where the model was trained without text (checked before the encoder loads)."""
    if not text:
        return {}
    size = int(getattr(getattr(model, "config", None), "condition_size_input", 0) or 0)
    if size <= 0:
        raise WmlabError(
            f"--text {text!r}: this {type(model).__name__} was trained without text (no conditioning vector); "
            "train one on instructions (wmlab.data.instructions, --model.condition-size-input 384) to use --text"
        )

    check_texts([text])
    encoder = load_text_encoder(encoder_spec or None)
    if int(encoder.dim) != size:
        raise WmlabError(
            f"--text: the text encoder gives {encoder.dim} features, the model was trained on {size}; pass the model's --text-encoder"
        )
    with torch.no_grad():
        condition = torch.as_tensor(encoder.encode([text])).float()
    return {"condition": condition, "guidance": float(guidance)}


def start_episode(episodes: list[dict[str, np.ndarray]], index: int, needed: int) -> dict[str, np.ndarray]:
    if not episodes:
        raise WmlabError("the run's replay holds no completed episode to start from")
    if index >= len(episodes):
        raise WmlabError(f"--episode {index}: the replay holds {len(episodes)} episodes")
    episode = episodes[index] if index >= 0 else max(episodes, key=lambda item: len(item["reward"]))
    if len(episode["reward"]) < needed:
        raise WmlabError(f"the chosen episode holds {len(episode['reward'])} steps, fewer than the {needed} needed")
    return episode


@torch.no_grad()
def generate_frames(
    model: Any,
    episode: dict[str, np.ndarray],
    context: int,
    steps: int,
    actions: str = "recorded",
    agent: Any = None,
    options: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Filter the episode's first `context` steps, then generate `steps` frames. Returns
    {"generated": uint8 (L, H, W, C), "real": uint8 (L, H, W, C) or None, "seconds": generation
    time, "fps", "psnr": per step or None}."""

    options = dict(options or {})
    if actions not in ("recorded", "policy", "random"):
        raise WmlabError(f"--actions must be recorded, policy or random, got {actions!r}")
    head = {"image": episode["image"][None, :context]}
    key = getattr(getattr(model, "config", None), "condition_key", None)
    if key in episode and getattr(model.config, "condition_size_input", 0) > 0:
        head[key] = episode[key][None, :context]  # the recorded instructions (UniSim)
    _, state = model.observe(
        head, episode["action"][None, :context], episode["is_first"][None, :context], model.initial(1)
    )
    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    real = None
    if actions == "recorded":
        available = len(episode["reward"]) - context
        if steps > available:
            raise WmlabError(
                f"the episode has {available} recorded actions after the context, fewer than --steps {steps}; use --actions policy or random"
            )
        chosen: Any = torch.as_tensor(episode["action"][None, context : context + steps])
        real = episode["image"][context : context + steps]
    elif actions == "random":
        count = getattr(model, "action_size", None)
        if count is None or not getattr(model, "discrete", False):
            raise WmlabError("--actions random needs a discrete-action world model")
        chosen = torch.as_tensor(generator.integers(0, count, size=(1, steps)))
    else:
        if agent is None:
            raise WmlabError("--actions policy needs the run's agent")
        memory: list[Any] = [None]

        def chosen(current: Any) -> Any:
            frame = model.decode(current)["image"]
            image = to_pixels(frame).cpu().numpy()
            action, memory[0] = agent.act(
                {"image": image, "is_first": np.array([memory[0] is None])}, memory[0], explore=False
            )
            return torch.as_tensor(action)

    # One frame first, so that the measured rate leaves out one-off costs (allocation, caches).
    if not callable(chosen):
        model.imagine(state, chosen[:, :1], 1, **options)
    begin = time.perf_counter()
    trajectory = model.imagine(state, chosen, steps, **options)
    seconds = time.perf_counter() - begin
    frames = (
        trajectory.observations["image"]
        if trajectory.observations is not None
        else model.decode(trajectory.states)["image"]
    )
    generated = to_pixels(torch.as_tensor(frames)[0]).cpu().numpy()
    per_step = None
    if real is not None:
        per_step = psnr(
            torch.as_tensor(real).float() / 255, torch.as_tensor(generated).float() / 255, leading=1
        ).tolist()
    return {
        "generated": generated,
        "real": real,
        "seconds": seconds,
        "fps": steps / max(seconds, 1e-9),
        "psnr": per_step,
    }


def enlarge(frames: np.ndarray, scale: int) -> np.ndarray:
    """uint8 (..., H, W, C) -> (..., H * scale, W * scale, C), nearest neighbour."""
    return frames.repeat(scale, axis=-3).repeat(scale, axis=-2) if scale > 1 else frames


def write_video(path: Path, generated: np.ndarray, real: np.ndarray | None, fps: int, scale: int) -> Path:
    """An MP4 (H.264 through imageio-ffmpeg) of the generated frames, real | generated when real."""
    import imageio.v2 as imageio

    frames = generated if real is None else np.concatenate([real, generated], axis=2)
    frames = enlarge(frames, scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=8, quality=8) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def write_contact_sheet(path: Path, generated: np.ndarray, real: np.ndarray | None, columns: int, scale: int) -> Path:
    """A PNG grid of `columns` evenly spaced steps: the real frame above the generated one."""
    import imageio.v2 as imageio

    L = generated.shape[0]
    picks = np.unique(np.linspace(0, L - 1, min(columns, L)).round().astype(int))
    rows = [generated[picks]] if real is None else [real[picks], generated[picks]]
    gap = 2
    tiles = []
    for row in rows:
        padded = [np.pad(frame, ((gap, gap), (gap, gap), (0, 0)), constant_values=255) for frame in enlarge(row, scale)]
        tiles.append(np.concatenate(padded, axis=1))
    sheet = np.concatenate(tiles, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(path, sheet)
    return path


def parse_command(argv: list[str]) -> GenerateCommand:
    """`wmlab generate`'s arguments, checked."""
    command = tyro.cli(GenerateCommand, args=argv, prog="wmlab generate", description=__doc__.split("\n\n")[0])
    if command.steps < 1:
        raise WmlabError(f"--steps must be at least 1, got {command.steps}")
    return command


def run(argv: list[str]) -> int:
    return generate(parse_command(argv))


def generate(command: GenerateCommand) -> int:
    """Write the video, contact sheet and summary of `command` (a run of any world model; GAIA
    runs are dispatched by the CLI to wmlab.pipelines.gaia)."""
    offline = is_offline_run(command.run_dir)
    if offline:  # a world model fitted to a dataset starts from the dataset's episodes
        spec, model = load_trained_model(command.run_dir)
        agent = None
    else:
        spec, agent = load_trained_agent(command.run_dir)
        model = world_model_of(agent)
    if not getattr(model, "can_decode", False):
        raise WmlabError(f"{type(model).__name__} cannot decode its states into frames, so it cannot generate a video")
    if isinstance(model, torch.nn.Module):
        model.eval()
    options = imagine_options(model, command.denoising_steps, command.churn)
    guidance = 1.0 if command.guidance is None else command.guidance
    options.update(instruction_options(model, command.text, guidance, command.text_encoder))
    context = int(getattr(model, "context", 1))
    needed = context + (command.steps if command.actions == "recorded" else 0)
    if offline:
        episodes = list(load_dataset(spec.dataset, with_actions=spec.with_actions).episodes())
    else:
        episodes = replay_episodes(command.run_dir)
    episode = start_episode(episodes, command.episode, max(needed, context))
    if "image" not in episode:
        raise WmlabError("the run's observations hold no 'image' to generate")
    result = generate_frames(model, episode, context, command.steps, command.actions, agent, options, command.seed)
    out = Path(command.out)
    write_video(out, result["generated"], result["real"], command.fps, command.scale)
    write_contact_sheet(out.with_suffix(".png"), result["generated"], result["real"], command.columns, command.scale)
    summary = {
        "run": str(command.run_dir),
        "algorithm": spec.model if offline else spec.algorithm,
        "text": command.text or None,
        "guidance": guidance if command.text else None,
        "model": type(model).__name__,
        "steps": command.steps,
        "denoising_steps": options.get(
            "denoising_steps", getattr(getattr(getattr(model, "config", None), "sampler", None), "steps", None)
        ),
        "actions": command.actions,
        "seed": command.seed,
        "frames_per_second": result["fps"],
        "seconds": result["seconds"],
        "psnr": result["psnr"],
        "torch_threads": torch.get_num_threads(),
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    psnr_text = (
        ""
        if result["psnr"] is None
        else f", PSNR step 1 {result['psnr'][0]:.2f} dB, step {min(10, command.steps)} {result['psnr'][min(10, command.steps) - 1]:.2f} dB"
    )
    print(f"{command.steps} frames at {result['fps']:.1f} frames per second{psnr_text}")
    print(f"written: {out}, {out.with_suffix('.png')}, {out.with_suffix('.json')}")
    return 0
