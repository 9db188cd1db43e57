"""One player's session: the dream, the real environment beside it, and what the page may ask.

The session knows world models only through the WorldModel protocol and the world model as an
environment (`wmlab.envs.imagined.ImaginedEnv`): a dream starts by filtering real frames with
`observe` (a sequence of the real episode, or one uploaded image), steps with `imagine` one action
at a time, and is drawn with `decode`. So a family plugs in by implementing the protocol; three
optional extras are read when present:

- `can_decode` (the protocol's flag): False refuses the model at start-up, with the reason its
  `decode` gives (JEPA, TD-MPC2);
- keyword arguments of `imagine` named in `SAMPLING_KNOBS` (a sampling `temperature`, the
  `denoising_steps` of a diffusion sampler) become sliders; their starting value is the
  parameter's default, else the model config's field of that name;
- `context_frames` (int, default 1): the real frames a dream needs to start. After a reset the
  real environment takes idle steps until it has shown that many; a model that needs more than
  one cannot start from a single uploaded image, and the page says so.

Every message from the page is checked here (`parse_message`) before anything runs: a message
that is not JSON, names an unknown command, or carries an action outside the action space is a
`ProtocolError` with a message the page shows.

Shape legend: H, W, C image; A action dimensions; T0 start frames.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import io
import itertools
import json
import math
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from wmlab.core.errors import WmlabError
from wmlab.data.video import load_run_video
from wmlab.envs.adapter import make_env
from wmlab.envs.imagined import ImaginedEnv
from wmlab.eval.suites import world_model_of
from wmlab.runs.directory import is_offline_run, load_trained_agent, load_trained_model

#: Largest uploaded image, in bytes of the PNG or JPEG file.
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
#: Largest uploaded image, in pixels (width x height), checked before the pixels are decoded.
MAX_UPLOAD_PIXELS = 4096 * 4096
#: Largest message carrying an upload (the file in base64, plus the JSON around it).
MAX_UPLOAD_CHARACTERS = (MAX_UPLOAD_BYTES * 4) // 3 + 1024
#: Largest text message other than an upload.
MAX_MESSAGE_CHARACTERS = 4096
#: Longest recording, in frames (about a minute and a half at 20 frames a second).
MAX_RECORDED_FRAMES = 1800
#: Real steps kept to start a dream from ("dream from here" filters at most this many).
REAL_HISTORY = 16
#: Folder of the run directory that recordings are written to.
RECORDINGS_FOLDER = "play"
_RECORDING_NUMBERS = itertools.count(1)
RECORDING_NAME = re.compile(r"^recording-[0-9]{8}-[0-9]{6}-[0-9]{1,6}\.(gif|mp4)$")


class ProtocolError(WmlabError):
    """A message from the page that cannot be carried out; the text is shown to the player."""


@dataclass(frozen=True)
class Knob:
    """A sampling setting of a family's `imagine`, shown as a slider."""

    name: str
    label: str
    minimum: float
    maximum: float
    step: float
    integer: bool = False
    fallback: float = 1.0


#: `imagine` keyword arguments that the page offers as sliders, when a family's `imagine` has them.
SAMPLING_KNOBS = {
    "temperature": Knob("temperature", "sampling temperature", 0.0, 3.0, 0.05, fallback=1.0),
    "denoising_steps": Knob("denoising_steps", "denoising steps", 1, 100, 1, integer=True, fallback=3),
    "sampling_steps": Knob("sampling_steps", "sampling steps", 1, 100, 1, integer=True, fallback=3),
}


# ----------------------------------------------------------------------------------------------
# Loading a run


@dataclass
class Playable:
    """A trained world model and what the page needs to know about it (shared by every session)."""

    run_dir: Path
    algorithm: str
    env_id: str
    env_kwargs: dict
    model: Any
    observation_space: spaces.Dict
    action_space: spaces.Space
    image_size: tuple[int, int, int]  # (H, W, C) of the 'image' observation
    action_meanings: list[str] | None
    knobs: dict[str, float]  # name -> starting value
    context_frames: int
    render_fps: float | None
    lock: Any = field(default=None, repr=False)  # serialises model calls across sessions
    # Frames (H, W, C) that a reset starts the dream from, one per reset in turn, for a model whose
    # actions the environment does not take (Genie's latent actions): no real episode runs beside.
    start_frames: list[np.ndarray] | None = None

    @property
    def family(self) -> str:
        return type(self.model).__name__

    @property
    def discrete(self) -> bool:
        return isinstance(self.action_space, spaces.Discrete)

    @property
    def can_start_from_image(self) -> tuple[bool, str]:
        """(whether one uploaded image can start a dream, the reason when not)."""
        others = [key for key in self.observation_space.spaces if key != "image"]
        if others:
            return (
                False,
                f"the environment's observations also hold {', '.join(others)}: an image alone cannot start the model",
            )
        if self.context_frames > 1:
            return False, f"{self.family} needs {self.context_frames} real frames to start a dream, not one image"
        return True, ""

    def describe(self) -> dict:
        """What the page is told at start: sizes, controls, knobs, and what it may offer."""
        upload, reason = self.can_start_from_image
        return {
            "run": str(self.run_dir),
            "algorithm": self.algorithm,
            "family": self.family,
            "env": self.env_id,
            "height": self.image_size[0],
            "width": self.image_size[1],
            "controls": controls(self.action_space, self.action_meanings),
            "knobs": [
                {
                    **{
                        key: getattr(SAMPLING_KNOBS[name], key)
                        for key in ("name", "label", "minimum", "maximum", "step", "integer")
                    },
                    "value": value,
                }
                for name, value in self.knobs.items()
            ],
            "upload": upload,
            "upload_refusal": reason,
            "max_upload_bytes": MAX_UPLOAD_BYTES,
            "render_fps": self.render_fps,
            "real_environment": self.start_frames is None,
        }


def load_playable(run_dir: str | Path) -> Playable:
    """Load a run's world model for play with the run-loading helpers of `wmlab eval`, or refuse
    with the reason (it cannot decode, or the environment has no image to show)."""

    if is_offline_run(run_dir):  # a world model fitted to recorded data (Genie's plays its latent actions)
        return load_offline_playable(run_dir)
    spec, agent = load_trained_agent(run_dir)
    return make_playable(world_model_of(agent), spec.env, spec.env_kwargs, run_dir, spec.algorithm)


def latent_action_names(count: int) -> list[str]:
    """'latent 1' ... 'latent K': names without a direction word, so the page gives them the keys
    1 to K in order (session.controls) and no idle action (one step per key press)."""
    return [f"latent {index + 1}" for index in range(count)]


def load_offline_playable(run_dir: str | Path) -> Playable:
    """A Playable of a world model fitted to recorded data (`wmlab train --model FAMILY --dataset
    DIR`, `wmlab train --algo genie --dataset PATH`); WmlabError with the reason when it cannot be
    played. A model trained with the environment's actions plays like an agent's, the environment
    beside the dream. A model of video alone (Genie) acts in its own latent actions, which no
    environment takes: its keys are the latent actions (1 to 8 for Genie's 8), the page steps once
    per key press, a reset starts the dream from the first frame of the next held-out episode, and
    an uploaded image of any size starts a dream of its own (`decode_image` fits it)."""

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


def make_playable(model: Any, env_id: str, env_kwargs: dict, run_dir: str | Path, algorithm: str = "") -> Playable:
    """A Playable for any WorldModel and the environment it was trained on; WmlabError with the
    reason when it cannot be played."""

    run_dir = Path(run_dir)
    if isinstance(model, torch.nn.Module):
        model.eval()
    family = type(model).__name__
    if not getattr(model, "can_decode", False):
        raise WmlabError(
            f"cannot play {run_dir}: its {family} world model cannot decode its states into frames ({decode_refusal(model)}), so there is no dream to show"
        )
    env = make_env(env_id, **env_kwargs)
    try:
        observation_space, action_space = env.observation_space, env.action_space
        meanings = action_meanings(env)
        render_fps = (env.metadata or {}).get("render_fps")
    finally:
        env.close()
    image = observation_space.spaces.get("image")
    if image is None:
        raise WmlabError(
            f"cannot play {run_dir}: {env_id!r} has no image observation (its observations: {', '.join(observation_space.spaces)}); play shows frames"
        )
    if not isinstance(action_space, (spaces.Box, spaces.Discrete)):
        raise WmlabError(f"cannot play {run_dir}: keys map to a Discrete or a 1-D Box action space, not {action_space}")
    if isinstance(action_space, spaces.Box) and (
        len(action_space.shape) != 1
        or not np.all(np.isfinite(action_space.low))
        or not np.all(np.isfinite(action_space.high))
    ):
        raise WmlabError(f"cannot play {run_dir}: keys can push a bounded 1-D Box of actions, not {action_space}")
    shape = tuple(image.shape)
    return Playable(
        run_dir=run_dir,
        algorithm=algorithm,
        env_id=env_id,
        env_kwargs=dict(env_kwargs),
        model=model,
        observation_space=observation_space,
        action_space=action_space,
        image_size=(shape[0], shape[1], shape[2]),
        action_meanings=meanings,
        knobs=sampling_knobs(model),
        context_frames=int(getattr(model, "context_frames", 1)),
        render_fps=float(render_fps) if render_fps else None,
        lock=threading.Lock(),
    )


def decode_refusal(model: Any) -> str:
    """The reason a model gives for not decoding (its `decode` raises NotImplementedError)."""
    try:
        model.decode(model.initial(1))
    except NotImplementedError as error:
        return str(error) or "its decode is not implemented"
    except Exception as error:  # noqa: BLE001 - any failure is the reason shown
        return f"{type(error).__name__}: {error}"
    return "it sets can_decode = False"


def sampling_knobs(model: Any) -> dict[str, float]:
    """{name: starting value} of the `SAMPLING_KNOBS` that the model's `imagine` takes."""
    parameters = inspect.signature(model.imagine).parameters
    config = getattr(model, "config", None)
    knobs = {}
    for name, knob in SAMPLING_KNOBS.items():
        if name not in parameters:
            continue
        value = parameters[name].default
        if value is inspect.Parameter.empty or value is None:
            value = getattr(config, name, None)
        knobs[name] = float(knob.fallback if value is None else value)
    return knobs


def action_meanings(env: Any) -> list[str] | None:
    """The environment's own names of its discrete actions, where it has them (Atari's
    'UPRIGHTFIRE', MiniGrid's 'forward'), else None. Looks through the wrappers."""
    layers, current = [], env
    while current is not None and len(layers) < 32:
        layers.append(current)
        current = getattr(current, "env", None)
    for layer in layers:
        own = vars(layer) if hasattr(layer, "__dict__") else {}
        if isinstance(own.get("action_meanings"), (list, tuple)):
            return [str(name) for name in own["action_meanings"]]
        method = getattr(type(layer), "get_action_meanings", None)
        if callable(method):
            try:
                return [str(name) for name in method(layer)]
            except Exception:  # noqa: BLE001 - an environment that cannot say has no names
                return None
        actions = own.get("actions")
        if isinstance(actions, type) and hasattr(actions, "__members__"):  # an enum of actions (MiniGrid)
            return list(actions.__members__)
    return None


# ----------------------------------------------------------------------------------------------
# Keys


#: Words in an action's name -> the key that asks for it; combined actions (Atari's UPRIGHTFIRE)
#: are chords of these keys.
DIRECTION_KEYS = (
    ("UP", "ArrowUp"),
    ("DOWN", "ArrowDown"),
    ("LEFT", "ArrowLeft"),
    ("RIGHT", "ArrowRight"),
    ("FIRE", " "),
)
NAMED_KEYS = {
    "forward": "ArrowUp",
    "backward": "ArrowDown",
    "left": "ArrowLeft",
    "right": "ArrowRight",
    "jump": " ",
    "fire": " ",
    "noop": None,
}
#: Keys the page keeps for itself: r reset, p pause, f dream from here, . one step while paused.
COMMAND_KEYS = ("r", "p", "f", ".")
SPARE_KEYS = list("1234567890qwetyuiasdghjklzxcvbnmo")
#: Key pairs (minus, plus) for the dimensions of a Box action, in order.
BOX_KEYS = (
    ("ArrowLeft", "ArrowRight"),
    ("ArrowDown", "ArrowUp"),
    ("a", "d"),
    ("s", "w"),
    ("j", "l"),
    ("k", "i"),
    ("z", "x"),
    ("c", "v"),
    ("b", "n"),
    ("g", "h"),
    ("y", "t"),
    ("1", "2"),
    ("3", "4"),
    ("5", "6"),
    ("7", "8"),
    ("9", "0"),
)


def controls(action_space: spaces.Space, meanings: list[str] | None = None) -> dict:
    """The key map the page uses and shows in its legend.

    Discrete: each action has one or more chords of keys; the page sends the action whose chord
    is the largest one held (so Atari's up + right + space gives UPRIGHTFIRE), and the idle
    action (the one named NOOP) when none is. A space without such an action (MiniGrid's turns,
    unnamed actions) is played turn by turn: one step per key press. Actions are named after the
    environment's meanings where it has them; without names, the arrows and space ask for
    actions 0 to 4 in order. Every action without a chord gets a key of its own (digits, then
    letters). Box: each dimension has a (minus, plus) pair of keys that push it to its bound
    while held; it rests at the middle of its range (0 where the range holds 0) otherwise.
    """
    if isinstance(action_space, spaces.Discrete):
        count = int(action_space.n)
        named = meanings is not None and len(meanings) == count
        names = [str(name) for name in meanings] if named else [f"action {index}" for index in range(count)]
        chords: list[list[list[str]]] = [[] for _ in range(count)]
        idle = None
        used: set[tuple[str, ...]] = set()
        for index in range(count):
            chord = (
                _chord_of(names[index])
                if named
                else ([DIRECTION_KEYS[index][1]] if index < len(DIRECTION_KEYS) else None)
            )
            if chord == [] and idle is None:
                idle = index
            elif chord and tuple(sorted(chord)) not in used:
                chords[index].append(chord)
                used.add(tuple(sorted(chord)))
        taken = {key for alternatives in chords for chord in alternatives for key in chord}
        spare = [key for key in SPARE_KEYS if key not in taken]
        for index in range(count):
            if not chords[index] and index != idle and spare:
                chords[index].append([spare.pop(0)])
        actions = [{"index": index, "name": names[index], "keys": chords[index]} for index in range(count)]
        # Without a no-op, holding no key has no action to send: the page steps once per key press.
        return {"kind": "discrete", "count": count, "idle": idle, "turn_based": idle is None, "actions": actions}
    low, high = np.asarray(action_space.low, dtype=float), np.asarray(action_space.high, dtype=float)
    if low.size > len(BOX_KEYS):
        raise WmlabError(f"keys can push at most {len(BOX_KEYS)} action dimensions, not {low.size}")
    rest = np.where((low <= 0) & (high >= 0), 0.0, (low + high) / 2)
    dimensions = [
        {
            "index": index,
            "minus": BOX_KEYS[index][0],
            "plus": BOX_KEYS[index][1],
            "low": float(low[index]),
            "high": float(high[index]),
            "rest": float(rest[index]),
        }
        for index in range(low.size)
    ]
    return {"kind": "box", "size": int(low.size), "dimensions": dimensions}


def _chord_of(name: str) -> list[str] | None:
    """Atari-style names ('UPRIGHTFIRE', 'NOOP') and MiniGrid-style words -> a chord of keys."""
    lowered = name.lower()
    if lowered in NAMED_KEYS:
        key = NAMED_KEYS[lowered]
        return [] if key is None else [key]
    rest, chord = name.upper(), []
    for word, key in DIRECTION_KEYS:
        if word in rest:
            chord.append(key)
            rest = rest.replace(word, "", 1)
    return chord if chord and not rest else None


# ----------------------------------------------------------------------------------------------
# Messages


def parse_message(text: str, playable: Playable) -> dict:
    """Check one message from the page -> a command dict with typed fields, or ProtocolError."""
    if len(text) > MAX_UPLOAD_CHARACTERS:
        raise ProtocolError(
            f"message too long ({len(text)} characters); an image upload may be at most {MAX_UPLOAD_BYTES // 1024} KiB"
        )
    try:
        message = json.loads(text)
    except json.JSONDecodeError as error:
        raise ProtocolError(f"message is not JSON ({error.msg})") from None
    except RecursionError:
        raise ProtocolError("message is nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"message must be a JSON object with a 'type', got {type(message).__name__}")
    kind = message.get("type")
    if kind != "image" and len(text) > MAX_MESSAGE_CHARACTERS:
        raise ProtocolError(
            f"message too long ({len(text)} characters; at most {MAX_MESSAGE_CHARACTERS} except for an image upload)"
        )
    if kind == "step":
        return {
            "type": "step",
            "action": check_action(message.get("action"), playable.action_space),
            "seq": _integer(message, "seq", 0, 2**53, 0),
        }
    if kind == "reset":
        return {"type": "reset", "seed": _integer(message, "seed", 0, 2**31 - 1, None)}
    if kind == "dream_from_real":
        return {"type": kind}
    if kind == "settings":
        settings: dict[str, Any] = {}
        for name, value in message.items():
            if name == "type":
                continue
            if name in ("real", "stop_at_end"):
                if not isinstance(value, bool):
                    raise ProtocolError(f"settings.{name} must be true or false, got {value!r}")
                settings[name] = value
            elif name in playable.knobs:
                knob = SAMPLING_KNOBS[name]
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or not math.isfinite(value)
                    or not knob.minimum <= value <= knob.maximum
                ):
                    raise ProtocolError(
                        f"{name} must be a number in [{knob.minimum:g}, {knob.maximum:g}], got {value!r}"
                    )
                if knob.integer and value != int(value):
                    raise ProtocolError(f"{name} must be a whole number, got {value!r}")
                settings[name] = int(value) if knob.integer else float(value)
            else:
                known = ", ".join(["real", "stop_at_end", *playable.knobs])
                raise ProtocolError(f"unknown setting {name!r} for this model; it has: {known}")
        return {"type": "settings", **settings}
    if kind == "image":
        data = message.get("data")
        if not isinstance(data, str):
            raise ProtocolError("an image upload carries its file as base64 text in 'data'")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("image upload: 'data' is not valid base64") from None
        return {"type": "image", "bytes": raw}
    if kind == "record":
        on = message.get("on")
        if not isinstance(on, bool):
            raise ProtocolError(f"record.on must be true or false, got {on!r}")
        output = message.get("format", "gif")
        if output not in ("gif", "mp4"):
            raise ProtocolError(f"record.format must be 'gif' or 'mp4', got {output!r}")
        return {"type": "record", "on": on, "format": output}
    known = "step, reset, dream_from_real, settings, image, record"
    raise ProtocolError(f"unknown message type {kind!r}; known: {known}")


def _integer(message: dict, name: str, low: int, high: int, default: Any) -> Any:
    value = message.get(name, default)
    if value is default:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(f"{name} must be a whole number in [{low}, {high}], got {value!r}")
    return value


def check_action(action: Any, space: spaces.Space) -> Any:
    """An action from the page -> an int (Discrete) or float32 (A,) (Box); ProtocolError when it
    is not in the action space."""
    if isinstance(space, spaces.Discrete):
        if isinstance(action, bool) or not isinstance(action, int):
            raise ProtocolError(
                f"action must be a whole number in [0, {int(space.n) - 1}] for this Discrete({int(space.n)}) space, got {action!r}"
            )
        if not int(space.start) <= action < int(space.start) + int(space.n):
            raise ProtocolError(f"action {action} is out of range: this space has actions 0 to {int(space.n) - 1}")
        return action
    size = int(space.shape[0])
    if (
        not isinstance(action, list)
        or len(action) != size
        or any(isinstance(value, bool) or not isinstance(value, (int, float)) for value in action)
    ):
        raise ProtocolError(f"action must be a list of {size} numbers for this Box space, got {str(action)[:80]}")
    values = np.asarray(action, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ProtocolError("action values must be finite")
    if np.any(values < space.low) or np.any(values > space.high):
        raise ProtocolError(
            f"action {action} is out of range: each value must lie in [{space.low.tolist()}, {space.high.tolist()}]"
        )
    return values.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Uploaded images


def decode_image(data: bytes, size: tuple[int, int, int]) -> np.ndarray:
    """A PNG or JPEG file -> uint8 (H, W, C) at the model's size: the largest centred crop of
    the model's aspect ratio, resized by area. ProtocolError when it is not such an image."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_UPLOAD_BYTES:
        raise ProtocolError(f"image too big: {len(data) // 1024} KiB, at most {MAX_UPLOAD_BYTES // 1024} KiB")
    if not data:
        raise ProtocolError("the uploaded file is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError):
        raise ProtocolError("the uploaded file is not an image that can be read; upload a PNG or JPEG") from None
    if image.format not in ("PNG", "JPEG"):
        raise ProtocolError(f"the uploaded file is a {image.format} image; upload a PNG or JPEG")
    width, height = image.size
    if width * height > MAX_UPLOAD_PIXELS or width < 1 or height < 1:
        raise ProtocolError(f"image of {width} x {height} pixels refused: at most {MAX_UPLOAD_PIXELS} pixels")
    H, W, C = size
    try:
        image = image.convert("L" if C == 1 else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ProtocolError(f"the uploaded image could not be decoded ({error})") from None
    target = W / H
    if width / height > target:
        crop = round(height * target)
        box = ((width - crop) // 2, 0, (width - crop) // 2 + crop, height)
    else:
        crop = round(width / target)
        box = (0, (height - crop) // 2, width, (height - crop) // 2 + crop)
    resized = np.asarray(image.resize((W, H), Image.Resampling.BOX, box=box), dtype=np.uint8)
    return resized.reshape(H, W, C)


# ----------------------------------------------------------------------------------------------
# The session


@dataclass
class Frame:
    """What one step shows: the dream, the real frame (None without one), and the numbers."""

    dream: np.ndarray  # uint8 (H, W, C)
    real: np.ndarray | None
    step: int
    dream_reward: float
    real_reward: float | None
    dream_done: bool
    end_predicted: bool  # the model's continue probability fell below one half at this step
    real_done: bool | None
    model_ms: float
    env_ms: float
    source: str  # where the dream started: "reset", "real", "image"
    action: Any = None  # the action this step applied (None at a start), as JSON

    def message(self, seq: int) -> dict:
        return {
            "type": "frame",
            "seq": seq,
            "step": self.step,
            "dream": _base64_rgb(self.dream),
            "real": None if self.real is None else _base64_rgb(self.real),
            "dream_reward": self.dream_reward,
            "real_reward": self.real_reward,
            "dream_done": self.dream_done,
            "end_predicted": self.end_predicted,
            "real_done": self.real_done,
            "model_ms": round(self.model_ms, 3),
            "env_ms": round(self.env_ms, 3),
            "source": self.source,
            "action": self.action,
        }


def _base64_rgb(image: np.ndarray) -> str:
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return base64.b64encode(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).decode("ascii")


class PlaySession:
    """One player: a dream of one row (ImaginedEnv, batch 1) and, when `real`, the environment
    receiving the same actions. Methods return the Frame to show."""

    def __init__(
        self,
        playable: Playable,
        seed: int = 0,
        real: bool = True,
        max_dream_steps: int = 100_000,
        stop_at_end: bool = False,
    ):
        self.playable = playable
        self.stop_at_end = bool(stop_at_end)
        self.end_predicted = False
        self.seed = int(seed)
        self.real_enabled = bool(real)
        self.max_dream_steps = int(max_dream_steps)
        self.knobs = dict(playable.knobs)
        self.env = None
        self.dream: ImaginedEnv | None = None
        self.real_observation: dict | None = None
        self.real_done = False
        self.real_reward = 0.0
        self.history: list[tuple[dict, Any, bool]] = []  # (observation, action that led to it, is_first)
        self.dream_done = False
        self.steps = 0
        self.source = "reset"
        self.episode = 0
        self.recording: list[tuple[float, np.ndarray]] | None = None

    # --- starting ------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> Frame:
        """A new real episode (seeded) and a dream started from its first frame."""

        if seed is not None:
            self.seed = int(seed)
        if self.playable.start_frames is not None:  # no real episode: the next start frame
            frames = self.playable.start_frames
            image = frames[(self.seed + self.episode) % len(frames)]
            self.episode += 1
            self.real_observation, self.real_done = None, True
            return self._start_dream([({"image": image}, self._zero_action(), True)], "reset", 0.0)
        if self.env is None:
            self.env = make_env(self.playable.env_id, **self.playable.env_kwargs)
        started = time.perf_counter()
        observation, _ = self.env.reset(seed=self.seed + self.episode)
        env_ms = 1000 * (time.perf_counter() - started)
        self.episode += 1
        self.real_observation = observation
        self.real_done = False
        self.real_reward = 0.0
        self.history = [(observation, self._zero_action(), True)]
        # A family that starts from several frames gets them: idle real steps after the reset.
        idle = self._idle_action()
        while len(self.history) < self.playable.context_frames and not self.real_done:
            observation, reward, terminated, truncated, _ = self.env.step(idle)
            self.real_observation, self.real_reward, self.real_done = (
                observation,
                float(reward),
                bool(terminated or truncated),
            )
            self.history.append((observation, np.asarray(idle), False))
        return self._start_dream(self.history, "reset", env_ms)

    def dream_from_real(self) -> Frame:
        """Restart the dream from the real episode's latest frames (up to REAL_HISTORY of them)."""
        if self.env is None or not self.history or not self.real_enabled:
            raise ProtocolError("there is no real environment running to dream from: turn on 'real' and reset")
        return self._start_dream(self.history[-max(REAL_HISTORY, self.playable.context_frames) :], "real", 0.0)

    def start_from_image(self, data: bytes) -> Frame:
        """Start the dream from one uploaded PNG or JPEG; the real environment cannot follow."""
        allowed, reason = self.playable.can_start_from_image
        if not allowed:
            raise ProtocolError(f"cannot start from an image: {reason}")
        image = decode_image(data, self.playable.image_size)
        self.real_observation = None
        self.real_done = True
        return self._start_dream([({"image": image}, self._zero_action(), True)], "image", 0.0)

    def _start_dream(self, window: list[tuple[dict, Any, bool]], source: str, env_ms: float) -> Frame:
        keys = list(window[0][0])
        observations = {key: np.stack([step[0][key] for step in window])[None] for key in keys}  # (1, T0, ...)
        actions = np.stack([np.asarray(step[1]) for step in window])[None]
        is_first = np.array([[step[2] for step in window]])
        started = time.perf_counter()
        with self.playable.lock:
            self.dream = ImaginedEnv(
                self.playable.model,
                observations,
                batch_size=1,
                max_episode_steps=self.max_dream_steps,
                initial_actions=actions,
                initial_is_first=is_first,
                imagine_kwargs=self._imagine_kwargs(),
                sample_terminations=False,
                seed=self.seed,
            )
            self.dream.reset(options={"indices": [0]})
            frame = self.dream.render()[0]
        model_ms = 1000 * (time.perf_counter() - started)
        self.dream_done = False
        self.end_predicted = False
        self.steps = 0
        self.source = source
        return self._frame(frame, 0.0, model_ms, env_ms)

    def _zero_action(self) -> Any:
        space = self.playable.action_space
        if isinstance(space, spaces.Discrete):
            return np.int64(0)
        return np.zeros(space.shape, dtype=np.float32)

    def _idle_action(self) -> Any:
        """The action sent when no key is held (the page's idle action)."""
        keys = controls(self.playable.action_space, self.playable.action_meanings)
        if keys["kind"] == "discrete":
            return int(keys["idle"] or 0)
        return np.array([dimension["rest"] for dimension in keys["dimensions"]], dtype=np.float32)

    def _imagine_kwargs(self) -> dict:
        return {
            name: (int(value) if SAMPLING_KNOBS[name].integer else float(value)) for name, value in self.knobs.items()
        }

    # --- playing -------------------------------------------------------------------------------

    def step(self, action: Any) -> Frame:
        """One action (already checked by `check_action`) to the dream and the real environment."""
        if self.dream is None:
            return self.reset()
        env_ms = 0.0
        if self.real_enabled and self.env is not None and self.real_observation is not None and not self.real_done:
            started = time.perf_counter()
            observation, reward, terminated, truncated, _ = self.env.step(
                action if isinstance(action, np.ndarray) else int(action)
            )
            env_ms = 1000 * (time.perf_counter() - started)
            self.real_observation, self.real_reward = observation, float(reward)
            self.real_done = bool(terminated or truncated)
            self.history = (self.history + [(observation, np.asarray(action), False)])[
                -max(REAL_HISTORY, self.playable.context_frames) :
            ]
        started = time.perf_counter()
        dream_reward = 0.0
        with self.playable.lock:
            if not self.dream_done:
                batched = (
                    np.asarray(action, dtype=np.float32)[None]
                    if isinstance(action, np.ndarray)
                    else np.array([int(action)], dtype=np.int64)
                )
                _, reward, terminated, truncated, _ = self.dream.step(batched)
                dream_reward = float(reward[0])
                self.end_predicted = bool(terminated[0])
                self.dream_done = bool(truncated[0] or (terminated[0] and self.stop_at_end))
                if not self.dream_done:
                    # Play goes on past a predicted end unless asked to stop there.
                    self.dream.terminated.zero_()
                self.steps += 1
            frame = self.dream.render()[0]
        model_ms = 1000 * (time.perf_counter() - started)
        shown = self._frame(frame, dream_reward, model_ms, env_ms)
        shown.action = action.tolist() if isinstance(action, np.ndarray) else int(action)
        return shown

    def settings(self, real: bool | None = None, stop_at_end: bool | None = None, **knobs: float) -> Frame | None:
        """Change sampling knobs (from the next step on) or turn the real environment on / off
        (turning it on starts a new episode, so that both start from the same frame)."""
        if stop_at_end is not None:
            self.stop_at_end = stop_at_end
        for name, value in knobs.items():
            self.knobs[name] = value
        if self.dream is not None:
            self.dream.imagine_kwargs.update(self._imagine_kwargs())
        if real is not None and real != self.real_enabled:
            self.real_enabled = real
            if real:
                return self.reset()
        return None

    def _frame(self, dream: np.ndarray, dream_reward: float, model_ms: float, env_ms: float) -> Frame:
        real = self.real_observation["image"] if (self.real_enabled and self.real_observation is not None) else None
        frame = Frame(
            dream=np.asarray(dream, dtype=np.uint8),
            real=None if real is None else np.asarray(real, dtype=np.uint8),
            step=self.steps,
            dream_reward=dream_reward,
            real_reward=(self.real_reward if real is not None else None),
            dream_done=self.dream_done,
            end_predicted=self.end_predicted,
            real_done=(self.real_done if real is not None else None),
            model_ms=model_ms,
            env_ms=env_ms,
            source=self.source,
        )
        if self.recording is not None and len(self.recording) < MAX_RECORDED_FRAMES:
            self.recording.append((time.perf_counter(), composite(frame)))
        return frame

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    # --- recording -----------------------------------------------------------------------------

    def start_recording(self) -> None:
        self.recording = []

    def stop_recording(self, output: str = "gif") -> Path:
        """Write what was played since `start_recording` to RUN_DIR/play/recording-*.{gif,mp4}."""
        frames, self.recording = self.recording, None
        if not frames:
            raise ProtocolError("nothing was recorded: press record, play, then press it again")
        folder = self.playable.run_dir / RECORDINGS_FOLDER
        folder.mkdir(exist_ok=True)
        name = f"recording-{time.strftime('%Y%m%d-%H%M%S')}-{next(_RECORDING_NUMBERS) % 1_000_000}.{output}"
        path = folder / name
        times = np.array([moment for moment, _ in frames])
        intervals = np.diff(times) if len(times) > 1 else np.array([0.05])
        images = [image for _, image in frames]
        if output == "gif":
            write_gif(path, images, [float(value) for value in np.append(intervals, intervals.mean())])
        else:
            write_mp4(path, images, fps=float(np.clip(1.0 / max(float(np.median(intervals)), 1e-3), 1, 60)))
        return path


def composite(frame: Frame, scale: int = 4) -> np.ndarray:
    """The panes as the page shows them, side by side: dream | real | difference, scaled up."""
    panes = [frame.dream if frame.dream.shape[-1] == 3 else np.repeat(frame.dream, 3, -1)]
    if frame.real is not None:
        real = frame.real if frame.real.shape[-1] == 3 else np.repeat(frame.real, 3, -1)
        panes += [real, np.abs(panes[0].astype(np.int16) - real.astype(np.int16)).astype(np.uint8)]
    image = np.concatenate(panes, axis=1)
    return image.repeat(scale, 0).repeat(scale, 1)


def write_gif(path: Path, images: list[np.ndarray], durations_s: list[float]) -> None:
    from PIL import Image

    pictures = [Image.fromarray(image) for image in images]
    durations = [max(20, round(1000 * value)) for value in durations_s]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0, optimize=False)


def write_mp4(path: Path, images: list[np.ndarray], fps: float) -> None:
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise ProtocolError("MP4 needs imageio with ffmpeg: pip install 'wmlab[video]'; GIF works without it") from None
    try:
        with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=8, quality=7) as writer:
            for image in images:
                writer.append_data(image)
    except Exception as error:  # noqa: BLE001 - ffmpeg missing or failing: the page says so
        path.unlink(missing_ok=True)
        raise ProtocolError(f"MP4 could not be written ({error}); GIF works without ffmpeg") from None
