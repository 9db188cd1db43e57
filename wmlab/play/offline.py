"""Playing a world model fitted to recorded data (`wmlab train --model FAMILY --dataset DIR`,
`wmlab train --algo genie --dataset PATH`).

A model trained with the environment's actions plays like an agent's: the environment the dataset
was recorded from runs beside the dream. A model of video alone (Genie) acts in its own latent
actions, which no environment takes: its keys are the latent actions (1 to 8 for Genie's 8),
the page steps once per key press, a reset starts the dream from the first frame of a held-out
episode of its video (one after another), and an uploaded image of any size starts a dream of
its own (wmlab.play.session.decode_image crops it to the model's aspect ratio and resizes it).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
from gymnasium import spaces

from wmlab.core.errors import WmlabError
from wmlab.data.video import load_run_video
from wmlab.play.session import Playable, make_playable, sampling_knobs
from wmlab.runs.directory import load_trained_model


def latent_action_names(count: int) -> list[str]:
    """'latent 1' ... 'latent K': names without a direction word, so the page gives them the keys
    1 to K in order (session.controls) and no idle action (one step per key press)."""
    return [f"latent {index + 1}" for index in range(count)]


def load_offline_playable(run_dir: str | Path) -> Playable:
    """A Playable of an offline run; WmlabError with the reason when it cannot be played."""
    run_dir = Path(run_dir)
    spec, model = load_trained_model(run_dir)
    model.eval()
    if spec.with_actions:
        if not spec.env:
            raise WmlabError(f"cannot play {run_dir}: its dataset names no environment to take the model's actions")
        return make_playable(model, spec.env, spec.env_kwargs, run_dir, spec.model)
    if not getattr(model, "can_decode", False):
        raise WmlabError(f"cannot play {run_dir}: its {type(model).__name__} cannot decode its states into frames")
    height, width, channels = (int(side) for side in model.image_shape)
    try:
        training, held_out = load_run_video(spec)
        episodes = (held_out or training).frames
        start_frames = [np.asarray(episode[0], dtype=np.uint8) for episode in episodes]
    except WmlabError as error:  # the video moved: uploads still start dreams
        print(f"wmlab play: {error}; resets start from a grey frame, upload an image to start from it", file=sys.stderr)
        start_frames = [np.full((height, width, channels), 128, dtype=np.uint8)]
    action_space = model.action_space
    return Playable(
        run_dir=run_dir,
        algorithm=spec.model,
        env_id=spec.env or Path(spec.dataset).name,
        env_kwargs=dict(spec.env_kwargs),
        model=model,
        observation_space=spaces.Dict({"image": spaces.Box(0, 255, (height, width, channels), np.uint8)}),
        action_space=action_space,
        image_size=(height, width, channels),
        action_meanings=latent_action_names(int(action_space.n)),
        knobs=sampling_knobs(model),
        context_frames=1,
        render_fps=None,
        lock=threading.Lock(),
        start_frames=start_frames,
    )
