"""Configuration of Dreamer: one learner, three papers.

`DreamerConfig` holds DreamerV3's settings (arXiv:2301.04104 and the authors' current
configs.yaml); `DreamerV1Config` (arXiv:1912.01603, the authors' dreamer.py defaults) and
`DreamerV2Config` (arXiv:2010.02193, the authors' configs.yaml defaults) are the same class with
other defaults. Every field can still be overridden on the command line
(`--agent.model.free-nats 3`); the model size is `--agent.model.size size12m`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from wmlab.core.config import Config, at_least, between, ranges
from wmlab.core.optim import OptimizerConfig
from wmlab.models.rssm import SIZES, RSSMConfig, RSSMLossScales, RSSMSizes

#: DreamerV3's optimiser (its current configs.yaml): LaProp 4e-5 with epsilon 1e-20, adaptive gradient
#: clipping at 0.3, 1000 updates of warm-up.
V3_OPTIMIZER = OptimizerConfig(kind="laprop", learning_rate=4e-5, epsilon=1e-20, adaptive_clip=0.3, warmup=1000)


@dataclass(frozen=True)
class DreamerConfig(Config):
    """DreamerV3 (the defaults): categorical RSSM, symlog two-hot reward and critic, percentile return
    normalisation, REINFORCE actor with entropy 3e-4, LaProp with adaptive gradient clipping."""

    limits = ranges(
        counts="units actor_layers critic_layers imagination_horizon slow_critic_every",
        positive="actor_min_std actor_init_std actor_output_scale return_scale_limit",
        non_negative="entropy_scale slow_critic_regularizer random_steps exploration_noise",
        fractions="actor_unimix reinforce_continuous reinforce_discrete return_lambda slow_critic_fraction"
        " counterfactual_fraction",
        actor_max_std=at_least("actor_min_std"),
        critic_bins=at_least(2),
        discount=between(0, 1, low_open=True),
        return_normalization_decay=between(0, 1, high_open=True),
    )

    model: RSSMConfig = field(default_factory=RSSMConfig)
    """The world model (size, latents, heads, KL and loss scales)."""
    units: int | None = None
    """Units of the actor's and critic's hidden layers (unset: the world model's `size.units`)."""
    actor_layers: int = 3
    """Hidden layers of the actor."""
    critic_layers: int = 3
    """Hidden layers of the critic."""
    continuous_actor: str = "bounded_normal"
    """Distribution for Box actions: "bounded_normal" (Normal(tanh(mean), std in [min_std, max_std]),
    DreamerV3) or "tanh_normal" (tanh of a Normal, DreamerV1)."""
    actor_min_std: float = 0.1
    """Smallest standard deviation of a continuous actor."""
    actor_max_std: float = 1.0
    """Largest standard deviation of a bounded-normal actor."""
    actor_init_std: float = 5.0
    """Tanh-normal actor: the standard deviation at a zero network output (DreamerV1's init_std)."""
    actor_mean_scale: float = 5.0
    """Tanh-normal actor: mean = scale * tanh(output / scale) (DreamerV1)."""
    actor_unimix: float = 0.01
    """Discrete actor: weight of the uniform distribution mixed into its action probabilities."""
    actor_output_scale: float = 0.01
    """Scale of the actor's initial output-layer weights (DreamerV3's outscale), so that the first
    policy is close to uniform / zero-mean."""
    reinforce_continuous: float = 1.0
    """Weight rho of the REINFORCE gradient for Box actions; 1 - rho goes to backpropagating the
    return through the dynamics (DreamerV2 Eq. 6). DreamerV3's current configs: 1."""
    reinforce_discrete: float = 1.0
    """Weight rho of the REINFORCE gradient for Discrete actions (straight-through samples carry the
    dynamics gradient)."""
    entropy_scale: float = 3e-4
    """Weight eta of the actor's entropy bonus."""
    critic_head: str = "twohot"
    """"twohot" (symexp two-hot, DreamerV3) or "mse" (a scalar, Gaussian log-likelihood)."""
    critic_bins: int = 255
    """Bins of the two-hot critic."""
    imagination_horizon: int = 15
    """Imagined steps H from every posterior state of the batch."""
    discount: float = 1 - 1 / 333
    """Discount gamma (DreamerV3: 1 - 1 / 333, "horizon 333")."""
    return_lambda: float = 0.95
    """lambda of the lambda-returns."""
    horizon_confidence: float = 1.0
    """Horizon-aware policy optimisation (a study, not in any paper's preset): the actor's and
    critic's targets become c_t * R_t + (1 - c_t) * v_t with c_t = horizon_confidence ** t at
    imagination depth t (1: plain lambda-returns)."""
    return_normalization: bool = True
    """Divide advantages by max(limit, S), S the spread between running return percentiles (DreamerV3)."""
    return_percentiles: tuple[float, float] = (5.0, 95.0)
    """Low and high percentiles whose difference is S."""
    return_normalization_decay: float = 0.99
    """Decay of the moving averages of the percentiles."""
    return_scale_limit: float = 1.0
    """Returns are only ever scaled down: the divisor is at least this."""
    critic_targets_from_slow: bool = False
    """Compute the lambda-return targets and baselines with the slow critic (DreamerV2's target network)
    rather than the critic itself (DreamerV3)."""
    slow_critic_fraction: float = 0.02
    """Each slow-critic update moves it this fraction towards the critic (1: copy)."""
    slow_critic_every: int = 1
    """Updates between slow-critic updates."""
    slow_critic_regularizer: float = 1.0
    """Weight of the critic's loss towards the slow critic's prediction (DreamerV3)."""
    model_optimizer: OptimizerConfig = field(default_factory=lambda: V3_OPTIMIZER)
    """Optimiser of the world model."""
    actor_optimizer: OptimizerConfig = field(default_factory=lambda: V3_OPTIMIZER)
    """Optimiser of the actor."""
    critic_optimizer: OptimizerConfig = field(default_factory=lambda: V3_OPTIMIZER)
    """Optimiser of the critic."""
    random_steps: int = 0
    """Environment steps (summed over environments) of uniformly random actions before the actor acts."""
    exploration_noise: float = 0.0
    """While exploring: std of Gaussian noise added to Box actions in [-1, 1] (DreamerV1: 0.3), or the
    probability of a random Discrete action."""
    compile: bool = False
    """Compile one imagination step of the world model (the prior's step under the sampled action)
    with torch.compile: faster imagination after a one-time compilation (seconds to a minute on a
    CPU). The actor runs eagerly, its outputs kept for its loss."""
    open_loop_report: bool = True
    """At the end of a run, write open-loop prediction videos (pixel runs) and an imagined-vs-real
    reward figure into the run directory."""
    counterfactual_fraction: float = 0.0
    """Counterfactual augmentation (a study, not in any paper's preset): this fraction of the
    imagination start states has its stochastic latent z intervened on before the actor and critic
    learn from imagination (the number of starts stays the same; 0: off)."""
    counterfactual_kind: str = "resample"
    """The intervention: "resample" (draw z from the prior p(z | h) of the start's own recurrent
    state h) or "swap" (take the z of another randomly chosen intervened start; h unchanged)."""


# --- What DreamerV1 and DreamerV2 share (DreamerV3 changed all of it) ----------------------------


def early_adam(learning_rate: float, epsilon: float, weight_decay: float = 0.0) -> OptimizerConfig:
    """Adam as DreamerV1 and V2 use it: global gradient norm clipped at 100, no adaptive clipping,
    no warm-up."""
    return OptimizerConfig(learning_rate=learning_rate, epsilon=epsilon, weight_decay=weight_decay, grad_clip=100.0)


@dataclass(frozen=True)
class EarlyDreamerConfig(DreamerConfig):
    """The settings DreamerV1 and DreamerV2 share: a 4-layer actor, a scalar (squared-error) critic,
    discount 0.99, no return normalisation, no uniform mix or small output scale in the actor, no
    slow-critic regulariser, Adam."""

    actor_layers: int = 4
    actor_unimix: float = 0.0
    actor_output_scale: float = 1.0
    critic_head: str = "mse"
    discount: float = 0.99
    return_normalization: bool = False
    slow_critic_regularizer: float = 0.0


# --- DreamerV1 (arXiv:1912.01603; defaults of the authors' dreamer.py) -------------------------

V1_MODEL = RSSMConfig(
    size=RSSMSizes(deterministic_size=200, hidden_size=200, classes=0, cnn_depth=32, units=400),
    stochastic_size=30,
    latent="gaussian",
    min_std=0.1,
    unimix=0.0,
    core="gru",
    gru_norm="none",
    prior_layers=1,
    posterior_layers=1,
    norm="none",
    activation="elu",
    cnn_multipliers=(1, 2, 4, 8),
    cnn_kernel=4,
    encoder_layers=2,
    decoder_layers=2,
    reward_layers=2,
    symlog_inputs=False,
    vector_loss="mse",
    reward_head="mse",
    predict_continue=False,
    kl_balancing=False,
    free_nats=3.0,
    free_nats_average_first=True,
    # 0.5: a unit-variance Gaussian log-likelihood of images and rewards.
    loss_scales=RSSMLossScales(image=0.5, vector=0.5, reward=0.5, kl=1.0),
)


@dataclass(frozen=True)
class DreamerV1Config(EarlyDreamerConfig):
    """DreamerV1: Gaussian RSSM, tanh-normal actor trained by backpropagating lambda-returns
    through the learned dynamics, Adam, free nats 3."""

    model: RSSMConfig = field(default_factory=lambda: V1_MODEL)
    critic_layers: int = 3
    continuous_actor: str = "tanh_normal"
    actor_min_std: float = 1e-4
    reinforce_continuous: float = 0.0
    reinforce_discrete: float = 0.0
    entropy_scale: float = 0.0
    model_optimizer: OptimizerConfig = field(default_factory=lambda: early_adam(6e-4, 1e-8))
    actor_optimizer: OptimizerConfig = field(default_factory=lambda: early_adam(8e-5, 1e-8))
    critic_optimizer: OptimizerConfig = field(default_factory=lambda: early_adam(8e-5, 1e-8))
    random_steps: int = 5000
    exploration_noise: float = 0.3


# --- DreamerV2 (arXiv:2010.02193; the defaults of the authors' configs.yaml) -------------------

#: DreamerV2's world model is DreamerV1's with these changes (by the two authors' configs):
#: categorical latents with KL balancing and no free nats, a layer-normalised GRU of twice the
#: width, deeper MLP heads, wider convolutions and a discount (continue) head.
V2_MODEL = replace(
    V1_MODEL,
    size=replace(V1_MODEL.size, deterministic_size=400, hidden_size=400, classes=32, cnn_depth=48),
    stochastic_size=32,
    latent="categorical",
    gru_norm="layer",
    encoder_layers=4,
    decoder_layers=4,
    reward_layers=4,
    continue_layers=4,
    predict_continue=True,
    kl_balancing=True,
    free_nats=0.0,
    # KL balancing 0.8 with KL scale 1; images as a unit-variance Gaussian log-likelihood.
    loss_scales=RSSMLossScales(image=0.5, vector=1.0, reward=1.0, continuation=1.0, dynamics=0.8, representation=0.2),
)


@dataclass(frozen=True)
class DreamerV2Config(EarlyDreamerConfig):
    """DreamerV2: 32 x 32 categorical RSSM with KL balancing 0.8, actor gradients mixing REINFORCE
    (0.9) and dynamics backpropagation (0.1), a target critic copied every 100 updates, Adam."""

    model: RSSMConfig = field(default_factory=lambda: V2_MODEL)
    critic_layers: int = 4
    reinforce_continuous: float = 0.9
    reinforce_discrete: float = 0.9
    entropy_scale: float = 1e-4
    critic_targets_from_slow: bool = True
    slow_critic_fraction: float = 1.0
    slow_critic_every: int = 100
    model_optimizer: OptimizerConfig = field(default_factory=lambda: early_adam(3e-4, 1e-5, weight_decay=1e-6))
    actor_optimizer: OptimizerConfig = field(default_factory=lambda: early_adam(1e-4, 1e-5, weight_decay=1e-6))
    critic_optimizer: OptimizerConfig = field(default_factory=lambda: early_adam(1e-4, 1e-5, weight_decay=1e-6))
    random_steps: int = 10000


#: The version presets by name.


# --- The CPU preset: DreamerV3 for a laptop budget ---------------------------------------------

CPU_MODEL_OPTIMIZER = replace(V3_OPTIMIZER, learning_rate=3e-4, warmup=0)
CPU_BEHAVIOUR_OPTIMIZER = replace(V3_OPTIMIZER, learning_rate=1e-4, warmup=0)


@dataclass(frozen=True)
class DreamerCPUConfig(DreamerConfig):
    """DreamerV3 at its smallest named size (size1m) with learning rates for a short budget: LaProp
    3e-4 for the world model and 1e-4 for actor and critic, without warm-up (the authors' 4e-5 with
    1000 warm-up updates is tuned for runs of 10^5-10^6 updates; a 2-hour CPU run makes about 10^4).
    Everything else is DreamerV3's. Train it with `--train.batch-size 16 --train.sequence-length 16
    --train.train-ratio 128` (one update per 2 environment steps; see `wmlab bench laptop`)."""

    model_optimizer: OptimizerConfig = field(default_factory=lambda: CPU_MODEL_OPTIMIZER)
    actor_optimizer: OptimizerConfig = field(default_factory=lambda: CPU_BEHAVIOUR_OPTIMIZER)
    critic_optimizer: OptimizerConfig = field(default_factory=lambda: CPU_BEHAVIOUR_OPTIMIZER)


PRESETS: dict[str, type[DreamerConfig]] = {
    "v1": DreamerV1Config,
    "v2": DreamerV2Config,
    "v3": DreamerConfig,
    "v3-cpu": DreamerCPUConfig,
}


def at_size(config: DreamerConfig, size: str, **model_changes: Any) -> DreamerConfig:
    """`config` with its RSSM at the named `size` (see RSSMConfig.size): the widths a preset sets
    itself (V1's and V2's) give way to the size's, the preset's latent type, heads and losses stay;
    `model_changes` are further RSSMConfig fields."""
    gaussian = config.model.latent == "gaussian"
    sizes = SIZES.preset(size, classes=0) if gaussian else SIZES[size]
    return replace(config, model=replace(config.model, size=sizes, **model_changes))
