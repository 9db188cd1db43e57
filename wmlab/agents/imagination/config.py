"""Configuration of the actor-critic learned on generated frames (DIAMOND's settings, authors'
config/trainer.yaml and config/agent/default.yaml; IRIS uses the same learner)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from wmlab.core.optim import OptimizerConfig

#: DIAMOND's actor-critic optimiser (config/trainer.yaml: actor_critic.optimizer).
ACTOR_CRITIC_OPTIMIZER = OptimizerConfig(learning_rate=1e-4, epsilon=1e-8, warmup=100, grad_clip=100.0)


@dataclass(frozen=True)
class ImaginationConfig:
    """A CNN + LSTM actor-critic over frames, trained on lambda-returns of imagined rollouts."""

    #: Settings that moved into `optimizer` (read from an older run's config.json).
    moved_fields = MappingProxyType(
        {
            "learning_rate": "optimizer.learning_rate",
            "adam_epsilon": "optimizer.epsilon",
            "warmup_updates": "optimizer.warmup",
            "grad_clip": "optimizer.grad_clip",
        }
    )

    #: A run written before `encoder` existed used the plain stages and torch's LSTM initialisation.
    older_runs = MappingProxyType({"encoder": "plain", "diamond_lstm_init": False})

    channels: tuple[int, ...] = (32, 32, 64, 64)
    """Channels of the frame encoder's stages, each halving the frame by 2x2 max-pooling (DIAMOND and IRIS: [32, 32, 64, 64])."""
    encoder: Literal["residual", "relu", "plain"] = "residual"
    """The encoder's stages. "residual" (DIAMOND): a 3x3 input convolution, then per stage a
    residual block (group norm, SiLU, 3x3 convolution; a 1x1 convolution on the skip where the
    channels change) and max-pooling. "relu" (IRIS): 3x3 convolution, max-pooling, ReLU. "plain"
    (the CPU presets): 3x3 convolution, SiLU, max-pooling."""
    lstm_size: int = 512
    """Size of the LSTM over encoded frames (DIAMOND: 512)."""
    diamond_lstm_init: bool = True
    """Initialise the LSTM as DIAMOND does (wmlab.nn.lstm: Xavier and orthogonal weights, forget
    gate bias 1); False: torch's default (IRIS)."""
    horizon: int = 15
    """Imagined steps per rollout (DIAMOND: 15)."""
    burn_in: int = 4
    """Real frames that set the world model's and the actor's recurrent states before imagining
    (DIAMOND: the world model's 4 context frames)."""
    starts: int = 0
    """Imagined rollouts per update, taken from the first rows of the replay batch (0: every row)."""
    discount: float = 0.985
    """gamma of the lambda-returns (DIAMOND: 0.985)."""
    lambda_: float = 0.95
    """lambda of the lambda-returns (DIAMOND: 0.95)."""
    entropy_weight: float = 0.001
    """Weight of the policy's entropy bonus (DIAMOND: 0.001)."""
    value_weight: float = 1.0
    """Weight of the critic's squared error (DIAMOND: 1)."""
    optimizer: OptimizerConfig = field(default_factory=lambda: ACTOR_CRITIC_OPTIMIZER)
    """Adam of the actor-critic (DIAMOND: learning rate 1e-4, epsilon 1e-8, 100 updates of warm-up,
    global gradient norm clipped at 100)."""
    epsilon: float = 0.01
    """Probability of a uniform random action while collecting (DIAMOND: 0.01)."""
    evaluation_temperature: float = 1.0
    """Evaluation samples its actions from softmax(logits / this), no uniform actions (DIAMOND's
    test episodes: 1; IRIS's: 0.5); 0: the most probable action (greedy)."""
