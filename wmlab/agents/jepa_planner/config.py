"""Configuration of JEPA planning: the planner, the goal-conditioned value and model training."""

from __future__ import annotations

from dataclasses import dataclass, field

from wmlab.core.config import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, Config, between, ranges
from wmlab.core.errors import ConfigError
from wmlab.models.jepa import DISTANCE_NORMS, JEPAConfig
from wmlab.planners.mppi import MPPIConfig

OBJECTIVES = ("distance", "value")
VALUE_SPACES = ("projection", "embedding")
VALUE_OBJECTIVES = ("expectile", "quasimetric")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse a setting that is not one of its choices, naming both."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")


def default_mppi() -> MPPIConfig:
    # EB-JEPA plans two-rooms with MPPI at 200 samples and 20 elites over 20 iterations; we keep
    # the samples and elites and cut the iterations to 6 over a horizon of 8 (warm starts carry
    # the plan between steps) to fit a shared CPU. No policy prior: plans start from the Gaussian.
    return MPPIConfig(
        horizon=8,
        iterations=6,
        samples=200,
        elites=20,
        policy_trajectories=0,
        temperature=1.0,
        min_std=0.1,
        max_std=1.0,
    )


@dataclass(frozen=True)
class ValueConfig(Config):
    """Goal-conditioned value V(z, g) = -||phi(z) - phi(g)||, trained on offline data by expectile
    TD or as a quasimetric (see `objective`)."""

    limits = ranges(
        hidden_size=COUNT,
        projection_size=COUNT,
        discount=between(0, 1, low_open=True),
        expectile=between(0, 1, low_open=True, high_open=True),
        target_rate=FRACTION,
        geometric_goal_fraction=FRACTION,
        learning_rate=POSITIVE,
        batch_size=COUNT,
        shaping_scale=NON_NEGATIVE,
        quasimetric_epsilon=POSITIVE,
        quasimetric_same_episode_share=FRACTION,
        quasimetric_offset=POSITIVE,
        quasimetric_beta=POSITIVE,
        lagrange_learning_rate=POSITIVE,
        shaping_batch_size=COUNT,
    )

    objective: str = "expectile"
    """How the value is trained on the frozen embeddings:
    - "expectile": IQL's expectile loss on the TD target of the -1-per-step reaching problem, on
      hindsight goals (the value-guided JEPA paper's objective, arXiv:2601.00844);
    - "quasimetric": QRL (Wang et al. 2023, arXiv:2304.01203, Sec. 4): push the distance between
      two states apart, softly (-softplus(offset - d)), subject to every
      recorded transition staying within one step, E[relu(d(s, s') - 1)^2] <= epsilon^2, by a
      Lagrange multiplier. The widest distance that every transition allows is the shortest path
      in steps, so the wall's detour comes out of the constraint rather than from TD chaining.
      V = -d is then undiscounted: minus the steps to the goal."""

    space: str = "projection"
    """Where the value is a distance: "projection", phi a learned MLP on top of the embedding;
    "embedding", phi(z) = z times one learned scale, so V(z, g) = -exp(s) ||z - g||: the paper's
    form (arXiv:2601.00844), in which the representation itself is shaped into a metric of the
    reaching cost and planning toward the goal embedding and planning by value agree."""
    hidden_size: int = 256
    """Width of phi's two hidden layers."""
    projection_size: int = 64
    """Size of phi's output, the space in which the value is a distance."""
    discount: float = 0.99
    """gamma of the -1-per-step reaching reward."""
    expectile: float = 0.9
    """tau of IQL's expectile loss: above 0.5 the value leans toward the best trajectories in the data."""
    target_rate: float = 0.05
    """Polyak rate of the target value used in the TD target. The -1-per-step value must grow to
    ~-30 over a few thousand steps; at 0.005 each TD backup takes ~200 steps and after 1500 steps
    the mean value had only reached -2.2, far from the episodes' step counts."""
    geometric_goal_fraction: float = 0.5
    """Share of hindsight goals drawn geometrically (Geom(1 - gamma)) ahead; the rest uniformly
    among the episode's later steps."""
    learning_rate: float = 3e-4
    batch_size: int = 512
    shaping_scale: float = 0.0
    """Weight of the value loss in the world model's loss, whose gradient then also shapes the
    encoder (the paper's method, arXiv:2601.00844); 0 keeps the value a separate head on frozen
    embeddings. On two-rooms the frozen embeddings encode the door poorly (linear probe R^2 0.60
    against 0.93-0.998 for agent and goal), and no value on them can route through it."""
    quasimetric_epsilon: float = 0.25
    """"quasimetric": the tolerance epsilon of the one-step constraint (QRL's default)."""
    quasimetric_same_episode_share: float = 0.5
    """"quasimetric": share of the pushed pairs taken inside one episode (one layout); the rest
    pair independent states, as QRL does (states of two layouts are unreachable from each other,
    so pushing them apart is correct too)."""
    quasimetric_offset: float = 30.0
    """"quasimetric": the push's softplus offset, in steps; above most shortest paths between two
    states of an episode (two-rooms' longest is about 30 steps). QRL uses 15 on its mazes."""
    quasimetric_beta: float = 0.1
    """"quasimetric": the push's softplus sharpness (QRL's default; smaller is smoother)."""
    lagrange_learning_rate: float = 0.01
    """"quasimetric": Adam step size of the (softplus-parametrised) Lagrange multiplier."""
    shaping_batch_size: int = 64
    """Hindsight triples per world-model step when shaping (3 frames each go through the encoder)."""

    def __post_init__(self):
        super().__post_init__()
        check_choice("value space", self.space, VALUE_SPACES)
        check_choice("value objective", self.objective, VALUE_OBJECTIVES)


@dataclass(frozen=True)
class JEPAPlannerConfig(Config):
    """A JEPA world model, a goal-conditioned value on its embeddings, and MPC over both."""

    limits = ranges(replan_every=COUNT)

    model: JEPAConfig = field(default_factory=JEPAConfig)
    """The world model."""
    value: ValueConfig = field(default_factory=ValueConfig)
    """The goal-conditioned value (used when objective is "value")."""
    planner: MPPIConfig = field(default_factory=default_mppi)
    """MPPI over action sequences in representation space."""
    objective: str = "value"
    """"distance": minimise the squared distance of predicted to goal embeddings, summed over the
    horizon; "value": maximise the predicted goal-conditioned value (see `value_at_end`)."""
    value_at_end: bool = True
    """"value" objective: score a plan by V at the end of the horizon (the value summarises what
    lies beyond it, as in MPC with a terminal value) rather than by V averaged over the horizon,
    which rewards lingering near states that look good now."""
    distance_at_end: bool = False
    """"distance" objective: score a plan by the distance at the end of the horizon only, rather
    than summed over the horizon."""
    distance_norm: str = "squared"
    """"distance" objective: "squared" (||z - g||^2) or "euclidean" (||z - g||), see
    `goal_distance_returns`."""
    replan_every: int = 4
    """MPC: execute this many actions of each plan before planning again."""

    def __post_init__(self):
        super().__post_init__()
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("distance_norm", self.distance_norm, DISTANCE_NORMS)
        if not 1 <= self.replan_every <= self.planner.horizon:
            raise ValueError(f"replan_every must be in 1..horizon ({self.planner.horizon}), got {self.replan_every}")
