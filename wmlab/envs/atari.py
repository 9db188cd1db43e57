"""Atari games through ale-py, set up by the Atari100k protocol that world-model papers share.

Ids: `atari:Pong`, `atari:Breakout`, `atari:MsPacman` (any ALE game; case and underscores are
ignored, so `atari:ms_pacman` works too). Through wmlab: `make_env("atari:Pong", seed=0)`.

The protocol (DreamerV3's atari100k configuration, IRIS, DIAMOND):
- the game is ALE's v5 environment made through gymnasium with `frameskip=1`, sticky actions
  off (`repeat_action_probability=0.0`) and the minimal action set (`full_action_space=False`);
- each agent step repeats its action for `frame_skip` = 4 emulator frames, sums the rewards and
  returns the pixel-wise maximum of the last two frames (Atari sprites flicker between frames);
- the frame is resized to `size` x `size` = 64 x 64 by area averaging (cv2's INTER_AREA when cv2
  is installed, else Pillow's BOX filter; `env.resize_backend` says which), RGB (64, 64, 3) by
  default as DreamerV3 and IRIS feed it, or ALE's grayscale as (64, 64, 1) with `grayscale=True`;
- every reset plays a random number of no-op frames, 1 to `noop_max` = 30, so that episodes do
  not all start alike;
- an episode is truncated after `max_frames` = 108000 emulator frames (30 minutes of play at
  60 Hz), counted by ALE from the reset, no-ops included.

Life loss: with `terminal_on_life_loss=True` a lost life sets `terminated`, so that a world model
learns what losing a life means, but the next `reset()` only resumes the same game (no emulator
reset, no no-ops; it returns the current frame) until the game is really over. Training
configurations turn it on (IRIS's and DIAMOND's training environments do; DreamerV3's
atari100k configuration leaves lives unused); evaluation must play full games and keeps the
default, False — scores are only comparable over full games. A run does both with
`wmlab train --env-kwargs '{"terminal_on_life_loss": true}' --eval-env-kwargs
'{"terminal_on_life_loss": false}'` (evaluation episodes take the second over the first). `info["game_over"]` (the game
ended or reached `max_frames`: the next reset is a real one) tells the two apart, and
`info["lives"]` gives the count.

`render()` returns the current frame in RGB at `size` x `size` (the observation itself in RGB
mode). `get_state()` / `set_state()` snapshot the emulator (ALE's serialised state, its random
generator included), the no-op generator and the life bookkeeping as JSON types.
"""

from __future__ import annotations

import base64
import difflib
from typing import Any, Mapping

import gymnasium
import numpy as np
from gymnasium import spaces

from wmlab.core.errors import WmlabError
from wmlab.envs.images import area_resizer  # noqa: F401 (re-exported for the benchmark and tests)

FRAME_SKIP = 4
NOOP_MAX = 30
MAX_FRAMES = 108_000  # 30 minutes at 60 frames per second


def ale_game_name(game: str) -> str:
    """ALE's spelling of `game` ("pong" -> "Pong", "ms_pacman" -> "MsPacman")."""
    import ale_py

    gymnasium.register_envs(ale_py)
    names = {
        key[len("ALE/") : -len("-v5")]: None
        for key in gymnasium.registry
        if key.startswith("ALE/") and key.endswith("-v5")
    }
    by_key = {_normalize(name): name for name in names}
    found = by_key.get(_normalize(game.removeprefix("ALE/").split("-v")[0]))
    if found is None:
        close = difflib.get_close_matches(_normalize(game), list(by_key), n=5)
        hint = f" Did you mean: {', '.join(by_key[key] for key in close)}?" if close else ""
        raise WmlabError(f"unknown Atari game {game!r}.{hint}")
    return found


def _normalize(name: str) -> str:
    return "".join(character for character in name.lower() if character.isalnum())


def make_atari(game: str, **options: Any) -> "AtariEnv":
    """The ALE game `game` (e.g. "Pong", any spelling `ale_game_name` resolves) under the Atari100k
    protocol; `options` are AtariEnv's (size, grayscale, frame_skip, noop_max,
    terminal_on_life_loss, max_frames, full_action_space, seed); see the module docstring.

    `terminal_on_life_loss`: True for training environments only; evaluation plays full games
    (`wmlab train --eval-env-kwargs '{"terminal_on_life_loss": false}'`).
    `seed`: used by the first `reset()` that is given none.
    """
    return AtariEnv(ale_game_name(game), **options)


class AtariEnv(gymnasium.Env):
    """One ALE game: frame skip with max-pooling, 64 x 64 frames, no-op starts, optional life-loss ends."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        game: str,
        size: int = 64,
        grayscale: bool = False,
        frame_skip: int = FRAME_SKIP,
        noop_max: int = NOOP_MAX,
        terminal_on_life_loss: bool = False,
        max_frames: int = MAX_FRAMES,
        full_action_space: bool = False,
        seed: int | None = None,
    ):
        import ale_py

        if frame_skip < 1:
            raise ValueError(f"frame_skip must be at least 1, not {frame_skip}")
        if noop_max < 0:
            raise ValueError(f"noop_max must be 0 (no no-ops) or more, not {noop_max}")
        if size < 1 or max_frames < 1:
            raise ValueError(f"size and max_frames must be positive, not {size} and {max_frames}")
        gymnasium.register_envs(ale_py)
        self.game = game
        self.size = int(size)
        self.grayscale = bool(grayscale)
        self.frame_skip = int(frame_skip)
        self.noop_max = int(noop_max)
        self.terminal_on_life_loss = bool(terminal_on_life_loss)
        self.max_frames = int(max_frames)
        self.render_mode = "rgb_array"
        # The console draws 60 frames a second; an agent step lasts frame_skip of them.
        self.metadata = {**self.metadata, "render_fps": 60.0 / self.frame_skip}

        self._gym_env = gymnasium.make(
            f"ALE/{game}-v5",
            frameskip=1,
            repeat_action_probability=0.0,
            full_action_space=full_action_space,
            max_num_frames_per_episode=self.max_frames,
        )
        self._ale = self._gym_env.unwrapped.ale
        self._noop = ale_py.Action.NOOP
        self._actions = list(self._ale.getLegalActionSet() if full_action_space else self._ale.getMinimalActionSet())
        self.action_space = spaces.Discrete(len(self._actions))
        self.action_meanings = [action.name for action in self._actions]

        channels = 1 if self.grayscale else 3
        self.observation_space = spaces.Box(0, 255, shape=(self.size, self.size, channels), dtype=np.uint8)
        height, width = self._ale.getScreenDims()
        screen_shape = (height, width) if self.grayscale else (height, width, 3)
        # Two screens for max-pooling, filled in place by ALE (no allocation per frame).
        self._screens = (np.empty(screen_shape, np.uint8), np.empty(screen_shape, np.uint8))
        self._pooled = np.empty(screen_shape, np.uint8)
        self._grab = self._ale.getScreenGrayscale if self.grayscale else self._ale.getScreenRGB
        self._resize, self.resize_backend = area_resizer(self.size, channels)

        self._pending_seed = seed
        self._lives = 0
        self._resume_after_life_loss = False
        self._needs_reset = True
        self._observation = np.zeros(self.observation_space.shape, np.uint8)

    # ----------------------------------------------------------------------------------- episode

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None):
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        super().reset(seed=seed)
        if self._resume_after_life_loss and seed is None:
            # The game goes on after a lost life: only the episode the learner sees restarts.
            self._resume_after_life_loss = False
            self._needs_reset = False
            return self._observation, self._info(life_lost=False)
        self._resume_after_life_loss = False
        # gymnasium's ALE env reloads the game and seeds the emulator when given a seed.
        self._gym_env.reset(seed=None if seed is None else int(self.np_random.integers(2**31)))
        self._play_noops()
        self._lives = self._ale.lives()
        self._needs_reset = False
        self._observation = self._frame(pooled=False)
        return self._observation, self._info(life_lost=False)

    def step(self, action):
        if self._needs_reset:
            raise gymnasium.error.ResetNeeded("call reset() before step(), and again after an episode ends")
        ale, ale_action = self._ale, self._actions[action]
        reward = 0.0
        pooled = False
        last = self.frame_skip - 1
        for frame in range(self.frame_skip):
            reward += ale.act(ale_action)
            if ale.game_over():
                break
            if frame == last - 1:
                self._grab(self._screens[0])
                pooled = True
        self._observation = self._frame(pooled)

        terminated = ale.game_over(with_truncation=False)
        truncated = not terminated and ale.game_truncated()
        lives = ale.lives()
        life_lost = lives < self._lives
        self._lives = lives
        if life_lost and self.terminal_on_life_loss and not (terminated or truncated):
            terminated = True
            self._resume_after_life_loss = True
        self._needs_reset = terminated or truncated
        return self._observation, reward, terminated, truncated, self._info(life_lost)

    def render(self) -> np.ndarray:
        """The current frame in RGB, (size, size, 3) uint8."""
        if not self.grayscale:
            return self._observation
        return area_resizer(self.size, 3)[0](self._ale.getScreenRGB())

    def close(self) -> None:
        self._gym_env.close()

    @property
    def episode_frames(self) -> int:
        """Emulator frames since the game's last real reset, no-ops included (the unit of `max_frames`)."""
        return self._ale.getEpisodeFrameNumber()

    @property
    def lives(self) -> int:
        return self._lives

    # ------------------------------------------------------------------------ exact resumption

    def get_state(self) -> dict[str, Any]:
        """The emulator, the no-op generator and the life bookkeeping, as plain JSON types."""
        emulator = self._ale.cloneState(include_rng=True).serialize()
        return {
            "game": self.game,
            "emulator": base64.b64encode(emulator).decode("ascii"),
            "rng": self.np_random.bit_generator.state,
            "lives": self._lives,
            "resume_after_life_loss": self._resume_after_life_loss,
            "needs_reset": self._needs_reset,
            "observation": base64.b64encode(self._observation.tobytes()).decode("ascii"),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore a `get_state()` snapshot into an environment built with the same settings."""
        import ale_py

        if state["game"] != self.game:
            raise ValueError(f"the state was saved from {state['game']}, but this environment plays {self.game}")
        self._ale.restoreState(ale_py.ALEState(base64.b64decode(state["emulator"])))
        rng_state = state["rng"]
        generator = np.random.Generator(getattr(np.random, rng_state["bit_generator"])())
        generator.bit_generator.state = rng_state
        self.np_random = generator
        self._pending_seed = None
        self._lives = int(state["lives"])
        self._resume_after_life_loss = bool(state["resume_after_life_loss"])
        self._needs_reset = bool(state["needs_reset"])
        observation = np.frombuffer(base64.b64decode(state["observation"]), np.uint8)
        self._observation = observation.reshape(self.observation_space.shape).copy()

    # ---------------------------------------------------------------------------------- helpers

    def _play_noops(self) -> None:
        if self.noop_max == 0:
            return
        for _ in range(int(self.np_random.integers(1, self.noop_max + 1))):
            self._ale.act(self._noop)
            if self._ale.game_over():
                self._ale.reset_game()

    def _frame(self, pooled: bool) -> np.ndarray:
        """The observation: the last screen, max-pooled with the one before when `pooled`."""
        last = self._screens[1]
        self._grab(last)
        if pooled:
            last = np.maximum(self._screens[0], last, out=self._pooled)
        frame = self._resize(last)
        return frame[..., None] if self.grayscale else frame

    def _info(self, life_lost: bool) -> dict[str, Any]:
        return {"lives": self._lives, "life_lost": life_lost, "game_over": self._ale.game_over()}
