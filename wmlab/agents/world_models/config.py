"""Configuration of World Models (Ha & Schmidhuber 2018, arXiv:1803.10122): V, M and C trained in
turn by `wmlab pipeline world-models`.

Defaults follow the paper's CarRacing experiment and the authors' released code where the paper
is silent (README.md lists each setting with its source); `default_config(env_id, quick)` gives
the preset that the command starts from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from wmlab.core.config import COUNT, NON_NEGATIVE, POSITIVE, Config, at_least, ranges
from wmlab.models.vae_mdnrnn import VAEMDNRNNConfig


@dataclass(frozen=True)
class CollectConfig(Config):
    """Stage 1: random rollouts in the real environment."""

    limits = ranges(episodes=COUNT, brownian_dt=POSITIVE, max_steps=NON_NEGATIVE)

    episodes: int = 10_000
    """Episodes to record (the paper: 10,000 random rollouts of CarRacing)."""
    policy: Literal["brownian", "uniform"] = "brownian"
    """How random actions are drawn: "brownian" walks a_{t+1} = clip(a_t + sqrt(dt) * N(0, I)) from a
    uniform start, so a car keeps a heading long enough to see more of the track; "uniform" draws
    each action independently from the action space. Discrete spaces always draw uniformly."""
    brownian_dt: float = 1.0 / 50.0
    """Time step dt of the brownian walk (1/50 in ctallec/world-models, the PyTorch
    re-implementation)."""
    max_steps: int = 0
    """End each recorded episode after this many steps; 0 keeps the environment's own limit."""


@dataclass(frozen=True)
class VAETrainingConfig(Config):
    """Stage 2: V on the collected frames, fitted by the offline trainer."""

    limits = ranges(epochs=COUNT, batch_size=COUNT, learning_rate=POSITIVE, max_frames=NON_NEGATIVE, log_every=COUNT)

    epochs: int = 10
    """Passes over the collected frames (the authors: 10): V gets epochs x frames / batch_size updates,
    each on frames drawn uniformly (with replacement) from the recording."""
    batch_size: int = 100
    """Frames per update (the authors: 100)."""
    learning_rate: float = 1e-4
    """Adam learning rate (the authors: 0.0001)."""
    max_frames: int = 0
    """Count at most this many frames in an epoch (and show V's reconstructions of them, taken evenly
    across the episodes); 0 counts them all."""
    log_every: int = 50
    """Write averaged metrics every this many updates."""


@dataclass(frozen=True)
class MDNRNNTrainingConfig(Config):
    """Stage 3: M on V's codes of the collected episodes, fitted by the offline trainer."""

    limits = ranges(
        updates=COUNT,
        batch_size=COUNT,
        sequence_length=COUNT,
        learning_rate=POSITIVE,
        grad_clip=NON_NEGATIVE,
        log_every=COUNT,
        checkpoint_every=COUNT,
    )

    updates: int = 4_000
    """Adam updates (the authors' CarRacing M: 4000)."""
    batch_size: int = 100
    """Sequences per update (the authors: 100)."""
    sequence_length: int = 999
    """Steps per window (at most the recording's length); a window that crosses into the next
    episode restarts M's state there (the authors: 999, whole CarRacing episodes)."""
    learning_rate: float = 1e-3
    """Adam learning rate (the authors: 0.001)."""
    grad_clip: float = 1.0
    """Clip each gradient element to [-grad_clip, grad_clip] (the authors clip by value at 1.0);
    0 turns clipping off."""
    log_every: int = 50
    """Write averaged metrics every this many updates."""
    checkpoint_every: int = 250
    """Save a resumable checkpoint every this many updates."""


@dataclass(frozen=True)
class ControllerTrainingConfig(Config):
    """Stage 4: C by CMA-ES, in the dream or in the real environment."""

    limits = ranges(
        generations=COUNT,
        population=at_least(2),
        rollouts=COUNT,
        initial_sigma=POSITIVE,
        max_steps=NON_NEGATIVE,
        eval_every=NON_NEGATIVE,
        eval_episodes=COUNT,
        workers=COUNT,
        envs_per_batch=COUNT,
    )

    inputs: Literal["latent_and_hidden", "latent"] = "latent_and_hidden"
    """What C reads: [z, h] (the paper's V-M-C, 867 parameters on CarRacing) or z alone (its
    "V model only" ablation, 99 parameters)."""
    generations: int = 100
    """CMA-ES generations."""
    population: int = 64
    """Candidate controllers per generation (the paper: 64)."""
    rollouts: int = 16
    """Episodes per candidate; its fitness is their mean return (the paper: 16)."""
    initial_sigma: float = 0.1
    """CMA-ES's initial step size; the search starts from all-zero parameters (the authors'
    sigma_init: 0.1)."""
    max_steps: int = 0
    """Longest rollout; 0 uses the environment's own limit (or 1000 in a dream of an environment
    that has none)."""
    eval_every: int = 25
    """Every this many generations, score the distribution's mean in the real environment
    (the authors: every 25 generations); 0 only at the end."""
    eval_episodes: int = 16
    """Real episodes per such check."""
    workers: int = 1
    """Processes that run real-environment rollouts in parallel (1: in this process)."""
    envs_per_batch: int = 64
    """Real environments stepped in lockstep by one process, with one batched forward pass of V, M
    and C per step."""
    sample_terminations: bool = True
    """In the dream, end an episode with M's predicted probability (True) or when it exceeds one
    half (False)."""


@dataclass(frozen=True)
class WorldModelsConfig(Config):
    """V (a VAE), M (an MDN-RNN) and C (a linear controller), trained in turn."""

    limits = ranges(
        temperature=POSITIVE, evaluation_episodes=COUNT, dream_evaluation_episodes=COUNT, video_steps=NON_NEGATIVE
    )

    model: VAEMDNRNNConfig = field(default_factory=VAEMDNRNNConfig)
    """V and M: sizes, heads, loss weights."""
    collect: CollectConfig = field(default_factory=CollectConfig)
    """Stage 1: the random rollouts."""
    vae: VAETrainingConfig = field(default_factory=VAETrainingConfig)
    """Stage 2: training V."""
    mdnrnn: MDNRNNTrainingConfig = field(default_factory=MDNRNNTrainingConfig)
    """Stage 3: training M."""
    controller: ControllerTrainingConfig = field(default_factory=ControllerTrainingConfig)
    """Stage 4: training C with CMA-ES."""
    dream: bool = False
    """Train C entirely inside M's dream (the paper's Doom experiment) rather than in the real
    environment (its CarRacing experiment); C is always evaluated in the real environment."""
    temperature: float = 1.0
    """tau of the dream: M's mixture logits are divided by tau and its standard deviations
    multiplied by sqrt(tau) (the paper: 1.15 was best on DoomTakeCover; 0.1 exploitable). The
    pipeline's dreams use this; `model.temperature` is only the model's default elsewhere."""
    frame_crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    """Pixels removed from the (top, bottom, left, right) of each frame before it is resized to
    64x64 (the CarRacing preset drops the 12-row dashboard at the bottom, as the authors do)."""
    sample_latents: bool = True
    """In the real environment, feed C and M a sample of q(z | x) (the authors' agent) rather than
    its mean."""
    evaluation_episodes: int = 100
    """Real episodes of the final evaluation (the paper: 100 trials)."""
    dream_evaluation_episodes: int = 256
    """Dream episodes scoring the final controller at the training temperature."""
    video_steps: int = 200
    """Frames in the real and dream rollout videos of the report."""


def default_config(env_id: str, quick: bool = False) -> WorldModelsConfig:
    """The preset the command starts from: the paper's settings, with CarRacing's dashboard crop
    and no done head in M for CarRacing ids; `quick` shrinks every budget to a smoke test of a few minutes on a CPU,
    whose numbers mean nothing."""
    config = WorldModelsConfig()
    if env_id.startswith("CarRacing"):
        # No done head, as the paper's CarRacing M: random rollouts practically never terminate
        # (the car must leave the whole playfield), so the head would learn from no positive
        # example, and a C trained in the dream learns to steer M into predicting the end of an
        # episode whose every step costs reward (we measured median dream episodes of 2 steps).
        model = dataclasses.replace(config.model, mdnrnn=dataclasses.replace(config.model.mdnrnn, predict_done=False))
        config = dataclasses.replace(config, model=model, frame_crop=(0, 12, 0, 0))
    if quick:
        config = dataclasses.replace(
            config,
            collect=dataclasses.replace(config.collect, episodes=4, max_steps=60),
            vae=dataclasses.replace(config.vae, epochs=2, batch_size=32, log_every=5),
            mdnrnn=dataclasses.replace(
                config.mdnrnn, updates=20, batch_size=8, sequence_length=16, log_every=5, checkpoint_every=10
            ),
            controller=dataclasses.replace(
                config.controller,
                generations=3,
                population=6,
                rollouts=2,
                max_steps=60,
                eval_every=0,
                eval_episodes=2,
                envs_per_batch=16,
            ),
            evaluation_episodes=2,
            dream_evaluation_episodes=8,
            video_steps=30,
        )
    return config
