"""C, the controller, and the trained V-M-C as an Agent (Ha & Schmidhuber 2018, arXiv:1803.10122).

C is deliberately tiny (Sec. 2.3): a_t = W_c [z_t, h_t] + b_c, squashed into the action space, so
that almost all of the agent's complexity sits in the world model and C can be searched by an
evolution strategy. Many candidate controllers act at once: parameters (N, P) for N candidates,
each reading its own rows of features.

Shape legend: B environments, N candidates, R rollouts per candidate, P controller parameters,
F features C reads (Z, or Z + D), A action dim, H, W, C image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from wmlab.agents.world_models.config import WorldModelsConfig
from wmlab.core.errors import WmlabError
from wmlab.core.seeding import seeded
from wmlab.core.shapes import check_shape
from wmlab.core.spaces import action_layout
from wmlab.core.types import Batch, Observation, Transition
from wmlab.models.vae_mdnrnn import VAEMDNRNN, prepare_frames


def controller_features(state: dict[str, torch.Tensor], inputs: str) -> torch.Tensor:
    """What C reads from a V-M state: [z, h] ("latent_and_hidden") or z ("latent"), (..., F)."""
    if inputs == "latent_and_hidden":
        return torch.cat([state["latent"], state["hidden"]], -1)
    if inputs == "latent":
        return state["latent"]
    raise ValueError(f"inputs must be 'latent_and_hidden' or 'latent', got {inputs!r}")


class LinearController:
    """C: out = W f + b for features f (F,); a Box action is tanh(out) mapped affinely onto the
    space's bounds (tanh(out) itself where they are infinite), a Discrete one is argmax(out).

    The P = O * F + O parameters of one controller are W (O, F) row-major, then b (O,), with O = A
    for a Box and the number of actions for a Discrete space: 3 * (32 + 256) + 3 = 867 on
    CarRacing, as in the paper.
    """

    def __init__(self, feature_size: int, action_space: spaces.Space):
        self.outputs, self.discrete = action_layout(action_space, "the controller")
        if not self.discrete:
            low, high = np.asarray(action_space.low, np.float64), np.asarray(action_space.high, np.float64)
            self._bounded = torch.as_tensor(np.isfinite(low) & np.isfinite(high))
            self._low = torch.as_tensor(np.where(self._bounded.numpy(), low, -1.0), dtype=torch.float32)
            self._high = torch.as_tensor(np.where(self._bounded.numpy(), high, 1.0), dtype=torch.float32)
        self.action_space = action_space
        self.feature_size = int(feature_size)
        self.parameter_count = self.outputs * (self.feature_size + 1)

    def __call__(self, parameters: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """parameters (N, P), features (N, R, F) -> actions (N, R, A) floats for a Box, indices
        (N, R) for a Discrete space."""
        sizes = check_shape("parameters", parameters, ("N", self.parameter_count))
        check_shape("features", features, ("N", "R", self.feature_size), sizes)
        O, F = self.outputs, self.feature_size
        parameters = parameters.to(features)
        weights = parameters[:, : O * F].reshape(-1, O, F)
        bias = parameters[:, O * F :]
        output = torch.einsum("nof,nrf->nro", weights, features) + bias[:, None]
        if self.discrete:
            return output.argmax(-1)
        squashed = torch.tanh(output)
        low, high, bounded = self._low.to(output.device), self._high.to(output.device), self._bounded.to(output.device)
        return torch.where(bounded, low + (squashed + 1.0) * 0.5 * (high - low), squashed)

    def to_env(self, actions: torch.Tensor) -> np.ndarray:
        """Actions as the environment takes them: float32 (or the space's dtype) or int64 indices."""
        if self.discrete:
            return actions.cpu().numpy().astype(np.int64)
        return actions.cpu().numpy().astype(self.action_space.dtype, copy=False)


class WorldModelsAgent:
    """The trained V-M-C acting in a real environment (the Agent protocol).

    Each step: z_t from V (a sample of q(z | x_t), or its mean with `sample_latents=False`),
    a_t = C([z_t, h_t]), and M folds (z_t, a_t) into h_{t+1} for the next step. The agent does
    not learn online: `wmlab pipeline world-models` trains V, M and C in stages and writes the
    checkpoint that `load_state_dict` reads.
    """

    learns_from = "replay"

    def __init__(
        self,
        config: WorldModelsConfig,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        seed: int = 0,
        device: str = "cpu",
    ):
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.device = torch.device(device)
        with seeded(seed):
            self.world_model = VAEMDNRNN(config.model, observation_space, action_space).to(self.device)
        self.world_model.eval()
        self.inputs = config.controller.inputs
        features = self.world_model.latent_size + (
            self.world_model.hidden_size if self.inputs == "latent_and_hidden" else 0
        )
        self.controller = LinearController(features, action_space)
        #: C's parameters (P,); zeros until a trained controller is loaded.
        self.controller_parameters = torch.zeros(self.controller.parameter_count)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"world_model": self.world_model}

    @torch.no_grad()
    def act(self, obs: Observation, state: Any, explore: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
        """obs {"image": uint8 (B, H, W, C), "is_first": (B,)} -> (actions (B, A) or (B,), state).
        Frames of any size are cropped by `frame_crop` and resized to 64x64 first."""
        frames = prepare_frames(np.asarray(obs["image"]), self.config.frame_crop)
        check_shape("obs['image']", frames, ("B", 64, 64, self.world_model.channels))
        B = frames.shape[0]
        if state is None:
            state = {
                "model": self.world_model.initial(B),
                "action": torch.zeros(B, self.world_model.action_size, device=self.device),
            }
            is_first = np.ones(B, dtype=bool)
        else:
            is_first = np.asarray(obs.get("is_first", np.zeros(B, dtype=bool)), dtype=bool).reshape(B)
        _, model_state = self.world_model.observe(
            {"image": frames[:, None]},
            state["action"][:, None],
            is_first[:, None],
            state["model"],
            sample=self.config.sample_latents,
            generator=self.generator,
        )
        features = controller_features(model_state, self.inputs)
        actions = self.controller(self.controller_parameters[None].to(self.device), features[None])[0]
        encoded = self.world_model.encode_action(actions, ("B",), {"B": B})
        return self.controller.to_env(actions), {"model": model_state, "action": encoded}

    def observe(self, transition: Transition) -> dict[str, float]:
        return {}

    def update(self, batch: Batch) -> dict[str, float]:
        raise WmlabError(
            "World Models trains V, M and C in stages, not from a replay stream: "
            "run `wmlab pipeline world-models --env ENV --run-dir DIR` instead of `wmlab train`"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "world_model": dict(self.world_model.state_dict()),
            "controller": self.controller_parameters.clone(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world_model.load_state_dict(state["world_model"])
        parameters = torch.as_tensor(state["controller"], dtype=torch.float32).reshape(-1)
        if parameters.shape != (self.controller.parameter_count,):
            raise ValueError(
                f"controller parameters: expected {self.controller.parameter_count}, got {tuple(parameters.shape)}"
            )
        self.controller_parameters = parameters
        if "generator" in state:
            self.generator.set_state(torch.as_tensor(state["generator"]).cpu())
