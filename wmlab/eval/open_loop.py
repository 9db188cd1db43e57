"""Open-loop predictions of a world model that decodes: videos and an imagined-vs-real reward figure.

From a few real context steps the model filters a state, then imagines the rest of the window with
the real actions and no observations (the prior alone), as in the Dreamer papers' open-loop
videos. For every image key a GIF shows, per sequence, real | imagined | error side by side
(error = (predicted - real + 1) / 2, so grey means exact) under a header naming the columns and
saying, per frame, whether the model still sees real frames or imagines; the reward figure overlays the rewards
the model predicts (filtered over the context, imagined after it) on the real ones.

    RUN_DIR/videos/open_loop_<key>.gif
    RUN_DIR/figures/open_loop_reward.png
    RUN_DIR/figures/open_loop_error.json   per-step mean squared error of each image / vector key

It needs `observe`, `imagine` and `decode` (the WorldModel protocol) and, for the figure, a
`reward(features)` head on `features(state)`, which the RSSM has.

Shape legend: B sequences, T steps, C context steps, H, W image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmlab.core.images import to_pixels
from wmlab.core.video import write_gif


@torch.no_grad()
def open_loop_predictions(model: Any, batch: Any, context: int = 5) -> dict[str, Any]:
    """Predictions over a batch (numpy (B, T, ...)): {"observations": {key: (B, T, ...)} with the
    context reconstructed from the posterior and the rest imagined, "rewards": (B, T) predicted
    or None, "real_rewards": (B, T)} as numpy arrays."""
    T = batch.reward.shape[1]
    if not 0 < context < T:
        raise ValueError(f"open-loop predictions need 0 < context < T, got context {context} and T {T}")
    head = {key: value[:, :context] for key, value in batch.obs.items()}
    posterior, last = model.observe(head, batch.action[:, :context], batch.is_first[:, :context])
    trajectory = model.imagine(last, torch.as_tensor(batch.action[:, context:]))
    filtered = model.decode(posterior)
    imagined = model.decode(trajectory.states)
    observations = {key: torch.cat([filtered[key], imagined[key]], 1).cpu().numpy() for key in filtered}
    rewards = None
    if hasattr(model, "reward") and hasattr(model, "features"):
        rewards = torch.cat([model.reward(model.features(posterior)), trajectory.rewards], 1).cpu().numpy()
    return {
        "observations": observations,
        "rewards": rewards,
        "real_rewards": np.asarray(batch.reward, dtype=np.float32),
    }


def video_frames(real: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """real uint8 (B, T, H, W, C) and predicted float in [0, 1] (B, T, H, W, C) -> frames uint8
    (T, B * H, 3 * W, C): each row a sequence, real | predicted | error."""
    truth = real.astype(np.float32) / 255.0
    error = (predicted - truth + 1.0) / 2.0
    rows = np.concatenate([truth, predicted, error], axis=3)  # (B, T, H, 3W, C)
    frames = np.concatenate(list(rows), axis=1)  # (T, B * H, 3W, C)
    return to_pixels(frames)


# Colours of the status line: the context (the model filters real frames) and the open loop.
CONTEXT_RGB = (80, 150, 255)
IMAGINED_RGB = (255, 150, 40)


def labelled_video_frames(real: np.ndarray, predicted: np.ndarray, context: int, scale: int = 2) -> np.ndarray:
    """`video_frames` enlarged `scale` times under a header that names the columns (real |
    imagined | error) and says, per frame, the step and whether the model still sees real frames
    (context: it reconstructs them) or imagines (open loop, from step `context` on): uint8
    (T, header + B * H * scale, 3 * W * scale, 3). Single-channel frames are shown in grey."""
    from PIL import Image, ImageDraw

    frames = video_frames(real, predicted)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    frames = frames[..., :3].repeat(scale, axis=1).repeat(scale, axis=2)
    T, height, width = frames.shape[:3]
    column = width // 3
    header = 30
    labelled = []
    for step in range(T):
        canvas = Image.new("RGB", (width, header + height), (255, 255, 255))
        canvas.paste(Image.fromarray(frames[step]), (0, header))
        draw = ImageDraw.Draw(canvas)
        for index, name in enumerate(("real", "imagined", "error")):
            draw.text((index * column + 4, 2), name, fill=(0, 0, 0))
        if step < context:
            status, colour = f"step {step}: context, the model sees real frames", CONTEXT_RGB
        else:
            status, colour = f"step {step}: imagined ({step - context + 1} without real frames)", IMAGINED_RGB
        draw.rectangle((0, 15, width, header - 2), fill=colour)
        draw.text((4, 16), status, fill=(0, 0, 0))
        if step >= context:  # a frame around the imagined column
            draw.rectangle((column, header, 2 * column - 1, header + height - 1), outline=IMAGINED_RGB, width=2)
        labelled.append(np.asarray(canvas))
    return np.stack(labelled)


def write_open_loop_report(
    model: Any, replay: Any, run_dir: str | Path, sequences: int = 4, length: int = 50, context: int = 5
) -> list[Path]:
    """Sample `sequences` windows from `replay` and write the GIFs and figure; returns the paths.
    Nothing is written when the replay holds fewer than context + 1 steps."""
    run_dir = Path(run_dir)
    length = min(length, len(replay))
    if length <= context:
        return []
    batch = replay.sample(sequences, length)
    predictions = open_loop_predictions(model, batch, context)
    written: list[Path] = []
    errors: dict[str, list[float]] = {}
    for key, predicted in predictions["observations"].items():
        real = np.asarray(batch.obs[key])
        if real.dtype == np.uint8 and real.ndim == 5:
            path = run_dir / "videos" / f"open_loop_{key}.gif"
            write_gif(path, list(labelled_video_frames(real, predicted, context)), milliseconds_per_frame=150)
            written.append(path)
            errors[key] = ((predicted - real.astype(np.float32) / 255.0) ** 2).mean(axis=(0, 2, 3, 4)).tolist()
        else:
            errors[key] = ((predicted - real.astype(np.float32)) ** 2).mean(axis=(0, 2)).tolist()
    figures = run_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    error_path = figures / "open_loop_error.json"
    error_path.write_text(json.dumps({"context": context, "mse_per_step": errors}, indent=2))
    written.append(error_path)
    if predictions["rewards"] is not None:
        written.append(
            _reward_figure(
                predictions["rewards"], predictions["real_rewards"], context, figures / "open_loop_reward.png"
            )
        )
    return written


def _reward_figure(predicted: np.ndarray, real: np.ndarray, context: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = predicted.shape[0]
    figure, axes = plt.subplots(count, 1, figsize=(7, 1.8 * count), sharex=True, squeeze=False)
    steps = np.arange(predicted.shape[1])
    for index, axis in enumerate(axes[:, 0]):
        axis.plot(steps, real[index], label="real", color="black", linewidth=1.2)
        axis.plot(steps, predicted[index], label="predicted", color="tab:orange", linewidth=1.2)
        axis.axvspan(-0.5, context - 0.5, color="tab:blue", alpha=0.1, label="context (filtered)")
        axis.set_ylabel("reward")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("step (open loop after the shaded context)")
    figure.suptitle("Imagined vs real reward")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
