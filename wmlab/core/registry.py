"""The registry: every algorithm, model and environment that `wmlab list` shows.

Entries are explicit, in one place, and lazy: each names the module that implements it, so that
`import wmlab` stays fast and optional dependencies load only when an entry is used. Users add
their own with `register_env` / `register_algorithm` / `register_model`.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable


class UnknownNameError(KeyError):
    """A name that is not in a registry; the message names the close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "package.module:attribute"
    description: str
    config: str | None = None  # "package.module:ConfigClass" for algorithms and models
    extra: str | None = None  # pip extra that provides an optional dependency

    def load(self) -> Any:
        return _load(self.target)

    def load_config(self) -> Any:
        if self.config is None:
            raise ValueError(f"{self.name} has no config class")
        return _load(self.config)


def _load(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, entry: Entry, overwrite: bool = False) -> None:
        if entry.name in self._entries and not overwrite:
            raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        self._entries[entry.name] = entry

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str, extra_candidates: list[str] = ()) -> str:
        candidates = list(self._entries) + list(extra_candidates)
        close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} `wmlab list` shows them all."

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]


ALGORITHMS = Registry("algorithm")
MODELS = Registry("model")
ENVIRONMENTS = Registry("environment")

for _entry in [
    Entry(
        "dyna-q",
        "wmlab.agents.dyna.agent:DynaQAgent",
        "Dyna-Q: Q-learning plus n planning updates from a learned tabular model (Sutton 1990)",
        "wmlab.agents.dyna.config:DynaConfig",
    ),
    Entry(
        "dyna-q-plus",
        "wmlab.agents.dyna.agent:DynaQPlusAgent",
        "Dyna-Q+: planning bonus kappa*sqrt(tau) for long-untried actions",
        "wmlab.agents.dyna.config:DynaConfig",
    ),
    Entry(
        "prioritized-sweeping",
        "wmlab.agents.dyna.agent:PrioritizedSweepingAgent",
        "Prioritized sweeping: planning updates ordered by the size of their change (Moore & Atkeson 1993)",
        "wmlab.agents.dyna.config:DynaConfig",
    ),
    Entry(
        "trajectory-sampling",
        "wmlab.agents.dyna.agent:TrajectorySamplingAgent",
        "Dyna with on-policy trajectory sampling for planning updates (Sutton & Barto 8.6)",
        "wmlab.agents.dyna.config:DynaConfig",
    ),
    Entry(
        "dyna-2",
        "wmlab.agents.dyna.agent:Dyna2Agent",
        "Dyna-2: permanent and transient memories over linear features (Silver et al. 2008)",
        "wmlab.agents.dyna.config:Dyna2Config",
    ),
    Entry(
        "mpc",
        "wmlab.agents.mpc.agent:MPCAgent",
        "Random-shooting MPC over a learned feed-forward dynamics model (Nagabandi et al. 2018)",
        "wmlab.agents.mpc.config:MPCConfig",
    ),
    Entry(
        "dreamer",
        "wmlab.agents.dreamer.agent:DreamerAgent",
        "Dreamer (V3 settings): actor-critic learned in the imagination of an RSSM world model (Hafner et al. 2023)",
        "wmlab.agents.dreamer.config:DreamerConfig",
    ),
    Entry(
        "dreamer-v1",
        "wmlab.agents.dreamer.agent:DreamerAgent",
        "DreamerV1: Gaussian RSSM, returns backpropagated through the dynamics (Hafner et al. 2020)",
        "wmlab.agents.dreamer.config:DreamerV1Config",
    ),
    Entry(
        "dreamer-v2",
        "wmlab.agents.dreamer.agent:DreamerAgent",
        "DreamerV2: categorical RSSM with KL balancing, mixed REINFORCE / dynamics actor gradients (Hafner et al. 2021)",
        "wmlab.agents.dreamer.config:DreamerV2Config",
    ),
    Entry(
        "dreamer-cpu",
        "wmlab.agents.dreamer.agent:DreamerAgent",
        "DreamerV3 at size1m with learning rates for a CPU budget (LaProp 3e-4 / 1e-4, no warm-up)",
        "wmlab.agents.dreamer.config:DreamerCPUConfig",
    ),
    Entry(
        "dreamer-v3",
        "wmlab.agents.dreamer.agent:DreamerAgent",
        "DreamerV3: the same as dreamer (symlog two-hot heads, return normalisation, LaProp; Hafner et al. 2023)",
        "wmlab.agents.dreamer.config:DreamerConfig",
    ),
    Entry(
        "planet",
        "wmlab.agents.mpc.agent:MPCAgent",
        "PlaNet: CEM planning in the latent space of a Gaussian RSSM (Hafner et al. 2019)",
        "wmlab.agents.planet.config:PlaNetConfig",
    ),
    Entry(
        "tdmpc2",
        "wmlab.agents.tdmpc2.agent:TDMPC2Agent",
        "TD-MPC2: MPPI with a policy prior in the latent space of an implicit world model learned by TD (Hansen et al. 2023)",
        "wmlab.agents.tdmpc2.config:TDMPC2Config",
    ),
    Entry(
        "diamond",
        "wmlab.agents.diamond.agent:DiamondAgent",
        "DIAMOND: actor-critic learned only on frames generated by a diffusion world model (EDM, UNet; Alonso et al. 2024)",
        "wmlab.agents.diamond.config:DiamondConfig",
    ),
    Entry(
        "diamond-cpu",
        "wmlab.agents.diamond.agent:DiamondAgent",
        "DIAMOND small enough to learn on a CPU: a (16, 16, 32, 32) UNet, small reward model and actor-critic",
        "wmlab.agents.diamond.config:DiamondCPUConfig",
    ),
    Entry(
        "iris",
        "wmlab.agents.iris.agent:IrisAgent",
        "IRIS: actor-critic learned only on frames generated by a token world model (VQ tokenizer + 10-layer GPT; Micheli et al. 2023)",
        "wmlab.agents.iris.config:IrisConfig",
    ),
    Entry(
        "iris-cpu",
        "wmlab.agents.iris.agent:IrisAgent",
        "IRIS small enough to learn on a CPU: the token model's cpu size (4 layers, width 128), a small actor-critic",
        "wmlab.agents.iris.config:IrisCPUConfig",
    ),
    Entry(
        "jepa-planner",
        "wmlab.agents.jepa_planner.agent:JEPAPlannerAgent",
        "JEPA planner: MPPI toward a goal in a JEPA world model's representation space (distance or learned value); needs set_goal, so it is trained by `wmlab pipeline jepa`, not online",
        "wmlab.agents.jepa_planner.config:JEPAPlannerConfig",
    ),
    Entry(
        "world-models",
        "wmlab.agents.world_models.agent:WorldModelsAgent",
        "World Models: V (VAE), M (MDN-RNN), linear C by CMA-ES, in the dream or in reality (Ha & Schmidhuber 2018); trained by `wmlab pipeline world-models`",
        "wmlab.agents.world_models.config:WorldModelsConfig",
    ),
]:
    ALGORITHMS.add(_entry)

for _entry in [
    Entry(
        "tabular",
        "wmlab.models.tabular:TabularModel",
        "Deterministic or sample-model table of (s, a) -> (r, s') for Dyna",
    ),
    Entry(
        "mlp",
        "wmlab.models.mlp:MLPWorldModel",
        "Feed-forward dynamics model: next-state delta, reward and continue from (s, a)",
        "wmlab.models.mlp:MLPWorldModelConfig",
    ),
    Entry(
        "rssm",
        "wmlab.models.rssm:RSSM",
        "Recurrent state-space model (PlaNet, Dreamer V1-V3): GRU or block GRU, Gaussian or categorical latents",
        "wmlab.models.rssm:RSSMConfig",
    ),
    Entry(
        "tdmpc",
        "wmlab.models.tdmpc:TDMPCModel",
        "TD-MPC2's decoder-free latent model: SimNorm latents, two-hot reward, Q ensemble, policy prior",
        "wmlab.models.tdmpc:TDMPCModelConfig",
    ),
    Entry(
        "vae-mdnrnn",
        "wmlab.models.vae_mdnrnn:VAEMDNRNN",
        "World Models' V and M (Ha & Schmidhuber 2018): conv VAE codes, LSTM with a mixture-density head, sampled with temperature",
        "wmlab.models.vae_mdnrnn:VAEMDNRNNConfig",
    ),
    Entry(
        "diffusion",
        "wmlab.models.diffusion:DiffusionWorldModel",
        "DIAMOND's next-frame diffusion model (EDM preconditioning, UNet with adaptive group norm, Euler sampler) with a reward / end model; GameNGen's context noise and guided conditioning as options",
        "wmlab.models.diffusion:DiffusionConfig",
    ),
    Entry(
        "genie",
        "wmlab.models.latent_action:GenieWorldModel",
        "Genie: latent actions (8 codes) learned from video alone, ST-transformer VQ tokenizer, MaskGIT dynamics (Bruce et al. 2024); trained by `wmlab train --algo genie --dataset PATH` (or `wmlab pipeline genie`), played by `wmlab play` on keys 1-8",
        "wmlab.models.latent_action:GenieConfig",
    ),
    Entry(
        "jepa",
        "wmlab.models.jepa:JEPAWorldModel",
        "Action-conditioned JEPA: encoder + predictor in representation space, VICReg terms or an EMA target, no decoder",
        "wmlab.models.jepa:JEPAConfig",
    ),
    Entry(
        "tokens",
        "wmlab.models.tokens:TokenWorldModel",
        "Token world model (IRIS; GAIA-1 with text / action conditioning and classifier-free guidance): VQ tokenizer + GPT over frame and action tokens, key-value-cached imagination",
        "wmlab.models.tokens:TokenWorldModelConfig",
    ),
]:
    MODELS.add(_entry)

for _entry in [
    Entry(
        "dyna-maze",
        "wmlab.envs.mazes:DynaMaze",
        "Sutton & Barto's 6 x 9 Dyna maze (Fig. 8.2); discrete states and 4 moves",
    ),
    Entry(
        "blocking-maze",
        "wmlab.envs.mazes:BlockingMaze",
        "Sutton & Barto's blocking maze (Fig. 8.4): the wall moves after 1000 steps",
    ),
    Entry(
        "shortcut-maze",
        "wmlab.envs.mazes:ShortcutMaze",
        "Sutton & Barto's shortcut maze (Fig. 8.5): a shortcut opens after 3000 steps",
    ),
    Entry(
        "two-rooms",
        "wmlab.envs.two_rooms:make_two_rooms_pixels",
        "Two rooms from 64x64 RGB pixels: a point agent, a wall with a door at a random height, a goal",
    ),
    Entry(
        "two-rooms-discrete",
        "wmlab.envs.two_rooms:make_two_rooms_discrete",
        "Two rooms from 64x64 RGB pixels with 5 discrete moves (stay, up, down, left, right), for DIAMOND and other discrete-action agents",
    ),
    Entry(
        "two-rooms-state",
        "wmlab.envs.two_rooms:make_two_rooms_state",
        "Two rooms from a state vector (agent, goal, door)",
    ),
    Entry(
        "multitask",
        "wmlab.envs.multitask:MultiTaskEnv",
        "Several tasks as one environment (TD-MPC2's multi-task setting): padded state vectors and actions, a task index and an action mask; --env-kwargs '{\"tasks\": [...]}'",
    ),
    Entry(
        "occluded",
        "wmlab.envs.occlusion:make_occluded",
        'Another environment with runs of blank observations (partial observability); --env-kwargs \'{"env": "dmc:cartpole-swingup", "start_probability": 0.02, "length": 10}\'',
    ),
    Entry(
        "perturbed",
        "wmlab.envs.perturb:make_perturbed",
        'Another environment with Gaussian observation noise and random velocity kicks (robustness); --env-kwargs \'{"env": "dmc:cartpole-swingup", "observation_noise": 0.1, "kick_std": 0.5}\'',
    ),
]:
    ENVIRONMENTS.add(_entry)


def register_env(name: str, factory: Callable[..., Any] | str, description: str = "", overwrite: bool = False) -> None:
    """Add an environment: `factory(**kwargs)` returns a gymnasium.Env (or pass "module:attr")."""
    target = factory if isinstance(factory, str) else _remember(factory)
    ENVIRONMENTS.add(Entry(name, target, description), overwrite=overwrite)


def register_algorithm(
    name: str, agent: Any | str, config: Any | str, description: str = "", overwrite: bool = False
) -> None:
    ALGORITHMS.add(Entry(name, _as_target(agent), description, _as_target(config)), overwrite=overwrite)


def register_model(
    name: str, model: Any | str, config: Any | str | None = None, description: str = "", overwrite: bool = False
) -> None:
    MODELS.add(
        Entry(name, _as_target(model), description, None if config is None else _as_target(config)), overwrite=overwrite
    )


_objects: dict[str, Any] = {}


def _remember(obj: Any) -> str:
    """Objects registered directly live in this module's table under a generated name."""
    key = f"_object_{len(_objects)}"
    _objects[key] = obj
    globals()[key] = obj
    return f"{__name__}:{key}"


def _as_target(obj: Any) -> str:
    return obj if isinstance(obj, str) else _remember(obj)
