"""Configuration of IRIS (Micheli et al. 2023, arXiv:2209.00588); defaults from the paper's
Appendix A and the authors' config/trainer.yaml (Atari 100k)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType

from wmlab.agents.imagination.config import ImaginationConfig
from wmlab.core.optim import OptimizerConfig
from wmlab.models.tokens import SIZES, TokenLossScales, TokenWorldModelConfig

#: IRIS's actor-critic: DIAMOND's learner with IRIS's CNN (convolutions, max-pooling, ReLU),
#: horizon, burn-in, discount, warm-up and clipping.
IRIS_LEARNER = ImaginationConfig(
    encoder="relu",
    diamond_lstm_init=False,
    horizon=20,
    burn_in=20,
    discount=0.995,
    lambda_=0.95,
    entropy_weight=0.001,
    optimizer=OptimizerConfig(learning_rate=1e-4, grad_clip=10.0),
    epsilon=0.01,
    evaluation_temperature=0.5,
)


@dataclass(frozen=True)
class IrisConfig:
    """The paper's preset. Train it with `--train.batch-size 64 --train.sequence-length 20
    --train.train-ratio 1280 --train.learning-starts 1000` (one update of each part per
    environment step, IRIS's 200 steps of each per 200 collected)."""

    #: Settings that moved into the optimisers' configs (read from an older run's config.json).
    moved_fields = MappingProxyType(
        {
            "tokenizer_learning_rate": "tokenizer_optimizer.learning_rate",
            "world_model_learning_rate": "world_model_optimizer.learning_rate",
            "world_model_weight_decay": "world_model_optimizer.weight_decay",
            "grad_clip": ("tokenizer_optimizer.grad_clip", "world_model_optimizer.grad_clip"),
        }
    )

    model: TokenWorldModelConfig = field(
        default_factory=lambda: TokenWorldModelConfig(
            size=SIZES["iris"], encoder="vqgan", loss_scales=TokenLossScales(commitment=1.0)
        )
    )
    """The token world model: IRIS's VQGAN tokenizer (16 tokens of a 512-code vocabulary) and a 10-layer GPT."""
    learner: ImaginationConfig = field(default_factory=lambda: IRIS_LEARNER)
    """The actor-critic learned on generated frames (IRIS: CNN (32, 32, 64, 64) + LSTM 512,
    horizon 20, burn-in 20, gamma 0.995, lambda 0.95, entropy weight 0.001, Adam 1e-4, clip 10;
    test episodes sample at temperature 0.5)."""
    tokenizer_optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(learning_rate=1e-4, grad_clip=10.0)
    )
    """Adam of the tokenizer (IRIS: learning rate 1e-4, gradient norm clipped at 10)."""
    world_model_optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(learning_rate=1e-4, weight_decay=0.01, grad_clip=10.0)
    )
    """AdamW of the transformer and its heads, the weight decay on its weight matrices only (IRIS:
    learning rate 1e-4, weight decay 0.01, gradient norm clipped at 10)."""
    tokenizer_frames: int = 256
    """Frames drawn at random from each replay batch for the tokenizer's step (IRIS: 256)."""
    world_model_starts: int = 4000
    """Tokenizer updates before the world model starts learning (IRIS: epoch 25 against the
    tokenizer's epoch 5, 200 updates an epoch)."""
    actor_critic_starts: int = 9000
    """Tokenizer updates before the actor-critic starts learning in imagination (IRIS: epoch 50)."""
    restart_codes_until: int = 0
    """Tokenizer updates during which the quantiser may restart dead codes; none after (0: never,
    as in IRIS, whose tokenizer has no restarts). A restart changes what a token means under a
    world model already trained on it: a wave of them at update ~237 of the 2026-12-06 iris-cpu
    run dropped next-token accuracy from 0.52 to 0.10. Keep it at most `world_model_starts`."""
    model_rows: int = 0
    """Replay rows (the first ones) the tokenizer and the world model train on; the actor-critic
    imagines from `learner.starts` rows (both 0, as in both presets: every row). A replay batch of
    32 with `model_rows` 8 gives the actor-critic four times the imagined rollouts while the world
    model trains on 8 windows; on a CPU its update then costs about 2.2x the 8-row one (measured
    in docs/benchmarks.md, not 4x: imagination is a sequence of small one-token transformer calls).
    On MinAtar Breakout at the 2-hour budget it did not help (two seeds below random;
    docs/benchmarks.md, ninth session)."""
    reconstructed_inputs: bool = True
    """The actor reads the tokenizer's reconstructions of real frames, acting and in the burn-in,
    as it reads generated frames in imagination (IRIS: use_original_obs false)."""
    open_loop_report: bool = True
    """At the end of a run, write open-loop videos of the world model (RUN_DIR/videos)."""


@dataclass(frozen=True)
class IrisCPUConfig(IrisConfig):
    """IRIS small enough to learn on a 2-core CPU: the token model's `cpu` size (4 layers, width
    128, 10 steps of context), an actor-critic of (16, 16, 32, 32) channels and an LSTM of 128, 8
    imagined rollouts of 20 steps per update (burn-in 4), learning rates 3e-4 (the world model),
    1e-3 (the tokenizer and the actor-critic). The tokenizer learns alone for 600 updates with
    dead codes restarted onto the worst-represented encodings (`restart_codes_until` 600: with the
    world model after 100 updates and no restarts, next-token accuracy stayed near 0.5 on MinAtar
    Breakout and the reward head never fired) and reads each token from its own patch (`encoder`
    "patch": a patch that does not change keeps its token, 83 % of a frame's tokens repeat
    against 20 % with IRIS's conv encoder: a steadier target for the transformer), then the
    world model learns, and the actor-critic after 1000 updates; reward and end steps weigh 10
    in the world model's loss (calibrated back in imagination: sparse events are otherwise
    learned last), and so do the tokens that change between frames (`changed_tokens` 10, also
    undone in imagination), with each step's action added to its frame tokens
    (`action_in_tokens`): with IRIS's plain loss and action token alone, the transformer had not
    begun to read the actions after 700 updates on MinAtar Breakout (token loss with redrawn
    actions within 0.0002 nats of the real ones); with both, 0.039 nats after 400; the
    tokenizer weighs pixels off the background 21 times (`foreground` 20:
    else MinAtar's ball and paddle and two-rooms' agent vanish from the reconstructions). The
    tokenizer makes 4 x 4 = 16 tokens of any square frame of side 16, 32, 64 (IRIS's count); on
    MinAtar: `--env minatar:breakout --env-kwargs '{"size": 16}' --train.batch-size 8
    --train.sequence-length 10 --train.train-ratio 20 --train.learning-starts 500` (one update
    per 4 environment steps). Measurements: docs/benchmarks.md, "IRIS's tokens"."""

    model: TokenWorldModelConfig = field(
        default_factory=lambda: TokenWorldModelConfig(
            size=SIZES["cpu"],
            encoder="patch",
            loss_scales=TokenLossScales(foreground=20.0, sparse_weight=10.0, changed_tokens=10.0),
            restart_on="error",
            action_in_tokens=True,
        )
    )
    learner: ImaginationConfig = field(
        default_factory=lambda: replace(
            IRIS_LEARNER,
            channels=(16, 16, 32, 32),
            encoder="plain",
            lstm_size=128,
            burn_in=4,
            starts=0,
            optimizer=replace(IRIS_LEARNER.optimizer, learning_rate=1e-3),
        )
    )
    tokenizer_optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(learning_rate=1e-3, grad_clip=10.0)
    )
    world_model_optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(learning_rate=3e-4, weight_decay=0.01, grad_clip=10.0)
    )
    tokenizer_frames: int = 64
    world_model_starts: int = 600
    actor_critic_starts: int = 1000
    restart_codes_until: int = 600
