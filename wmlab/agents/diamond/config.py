"""Configuration of DIAMOND (Alonso et al. 2024, arXiv:2405.12399); defaults from the authors'
config/trainer.yaml and config/agent/default.yaml (Atari 100k)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType

from wmlab.agents.imagination.config import ACTOR_CRITIC_OPTIMIZER, ImaginationConfig
from wmlab.core.optim import OptimizerConfig
from wmlab.models.diffusion import DIFFUSION_CPU, DiffusionConfig, DiffusionLossScales

#: DIAMOND's world-model optimiser (config/trainer.yaml: denoiser.optimizer and
#: rew_end_model.optimizer; src/utils.py configure_opt: the weight decay on the weights of linear,
#: convolution and LSTM layers only); the two differ in their gradient clip.
WORLD_MODEL_OPTIMIZER = OptimizerConfig(
    learning_rate=1e-4, epsilon=1e-8, weight_decay=1e-2, decay="weights", warmup=100
)


@dataclass(frozen=True)
class DiamondConfig:
    """The paper's preset. Train it with `--train.sequence-length 19` (the reward model's windows
    are horizon + context = 19 steps in DIAMOND) and `--train.batch-size 32`."""

    #: Settings that moved into the optimisers' configs (read from an older run's config.json).
    moved_fields = MappingProxyType(
        {
            "denoiser_learning_rate": "denoiser_optimizer.learning_rate",
            "reward_end_learning_rate": "reward_end_optimizer.learning_rate",
            "weight_decay": ("denoiser_optimizer.weight_decay", "reward_end_optimizer.weight_decay"),
            "adam_epsilon": ("denoiser_optimizer.epsilon", "reward_end_optimizer.epsilon"),
            "warmup_updates": ("denoiser_optimizer.warmup", "reward_end_optimizer.warmup"),
            "denoiser_grad_clip": "denoiser_optimizer.grad_clip",
            "reward_end_grad_clip": "reward_end_optimizer.grad_clip",
        }
    )

    model: DiffusionConfig = field(default_factory=DiffusionConfig)
    """The diffusion world model: UNet widths, EDM noise levels, sampler, reward / end model."""
    learner: ImaginationConfig = field(default_factory=ImaginationConfig)
    """The actor-critic learned on generated frames."""
    denoiser_optimizer: OptimizerConfig = field(default_factory=lambda: replace(WORLD_MODEL_OPTIMIZER, grad_clip=1.0))
    """AdamW of the denoiser (DIAMOND: learning rate 1e-4, weight decay 1e-2, epsilon 1e-8, 100
    updates of warm-up, global gradient norm clipped at 1)."""
    reward_end_optimizer: OptimizerConfig = field(
        default_factory=lambda: replace(WORLD_MODEL_OPTIMIZER, grad_clip=100.0)
    )
    """AdamW of the reward / end model (DIAMOND: as the denoiser's, the gradient norm clipped at 100)."""
    actor_critic_starts: int = 0
    """World-model updates before the actor-critic starts learning in imagination."""
    imagination_denoising_steps: int = 0
    """Denoising steps of imagination for the actor-critic (0: the model sampler's steps)."""
    open_loop_report: bool = True
    """At the end of a run, write open-loop videos of the world model (RUN_DIR/videos)."""


@dataclass(frozen=True)
class DiamondCPUConfig(DiamondConfig):
    """DIAMOND small enough to learn on a 2-core CPU: a UNet of (16, 16, 32, 32) channels with one
    block per level, a small reward model and actor-critic (16-32 channels, LSTMs of 128), 8
    imagined rollouts per update, the actor-critic starting after 250 world-model updates; for
    the few hundred updates a CPU affords: the denoiser's error weighted 21 times on pixels off
    the batch's median frame (else the paddle, ball and trail are never drawn), reward and end
    steps weighted 10 in the reward / end model's loss (calibrated back in imagination),
    learning rates 1e-3 (reward / end model, actor-critic, no warm-up) and 3e-4 (denoiser). Train it with `--train.batch-size 8 --train.sequence-length 19
    --train.train-ratio 38 --train.learning-starts 500` (one update per 4 environment steps)."""

    model: DiffusionConfig = field(
        default_factory=lambda: replace(
            DIFFUSION_CPU, loss_scales=DiffusionLossScales(foreground=20.0, sparse_weight=10.0)
        )
    )
    learner: ImaginationConfig = field(
        default_factory=lambda: ImaginationConfig(
            channels=(16, 16, 32, 32),
            encoder="plain",
            diamond_lstm_init=False,
            lstm_size=128,
            starts=8,
            optimizer=replace(ACTOR_CRITIC_OPTIMIZER, learning_rate=1e-3, warmup=0),
        )
    )
    denoiser_optimizer: OptimizerConfig = field(
        default_factory=lambda: replace(WORLD_MODEL_OPTIMIZER, learning_rate=3e-4, grad_clip=1.0, decay="all")
    )
    reward_end_optimizer: OptimizerConfig = field(
        default_factory=lambda: replace(WORLD_MODEL_OPTIMIZER, learning_rate=1e-3, grad_clip=100.0, decay="all")
    )
    actor_critic_starts: int = 250
