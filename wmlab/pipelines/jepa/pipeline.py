"""Offline, reward-free JEPA on two-rooms from pixels: record -> train model -> train value -> plan.

`wmlab pipeline jepa --out runs/jepa` (the lead wires `jepa_command` into the CLI):

1. record episodes of a noisy scripted expert mixed with random actions (`exploration_policy`):
   the expert reads the agent, goal and door from the frame itself, so the recorder needs nothing
   but pixels; each episode draws a random-action probability from `random_fractions`;
2. train the JEPA world model on B x T windows of the frames and actions (no rewards are read);
3. embed every recorded frame with the frozen encoder and train the goal-conditioned value on
   hindsight goals (with --extra-wall-episodes, on wall-following episodes recorded beside them too);
   with --refine-steps, train the predictor alone on the same frozen embeddings;
4. evaluate MPC toward goal images in the other room (random door per episode): success rate of
   distance-to-goal planning and of value-guided planning.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Callable

import numpy as np
import torch
import tyro

from wmlab.agents.jepa_planner.agent import (
    EncoderShaping,
    GoalValue,
    JEPAPlannerAgent,
    PredictorRefiner,
    make_value_learner,
)
from wmlab.agents.jepa_planner.config import JEPAPlannerConfig, ValueConfig
from wmlab.core.config import COUNT, NON_NEGATIVE, Config, from_dict, ranges
from wmlab.core.errors import ConfigError, RunDirectoryError, ShapeError
from wmlab.core.progress import StageProgress
from wmlab.core.serialization import load_state, save_state
from wmlab.data.dataset import load_dataset, record_dataset
from wmlab.envs.two_rooms import (
    AGENT_RGB,
    GOAL_RGB,
    MIDDLE_X,
    WALL_RGB,
    TwoRoomsGeometry,
    make_two_rooms_pixels,
    scripted_action,
)
from wmlab.models.jepa import JEPAConfig
from wmlab.runs.config import OfflineTrainConfig
from wmlab.train.offline import OfflineTrainer, TrainingObjective, dataset_run_spec


def positions_from_frame(frame: np.ndarray) -> np.ndarray:
    """[agent x, agent y, goal x, goal y, door y] read off a two-rooms frame (H, W, 3) by colour."""
    size = frame.shape[0]
    centres = (np.arange(size) + 0.5) / size

    def centre_of(colour) -> tuple[float, float]:
        rows, columns = np.nonzero(np.all(frame == np.array(colour, np.uint8), axis=-1))
        if len(rows) == 0:
            return 0.5, 0.5
        return float(centres[columns].mean()), float(1.0 - centres[rows].mean())

    agent, goal = centre_of(AGENT_RGB), centre_of(GOAL_RGB)
    wall_columns = np.flatnonzero(np.abs(centres - 0.5) <= TwoRoomsGeometry().wall_thickness / 2)
    open_rows = np.flatnonzero(~np.all(frame[:, wall_columns] == np.array(WALL_RGB, np.uint8), axis=(-1, -2)))
    door_y = float(1.0 - centres[open_rows].mean()) if len(open_rows) else 0.5
    return np.array([*agent, *goal, door_y], np.float32)


def random_waypoint(rng: np.random.Generator, geometry: TwoRoomsGeometry) -> np.ndarray:
    """A point [x, y] uniform over either room (never inside the wall's band)."""
    low, high = geometry.room_x_range(-1 if rng.random() < 0.5 else 1)
    return np.array([rng.uniform(low, high), rng.uniform(geometry.lowest, geometry.highest)])


def wall_following_action(
    position: np.ndarray, state: dict, rng: np.random.Generator, flip_probability: float = 0.1
) -> np.ndarray:
    """Feel along the wall for the door: head for the wall from whichever side the agent is on, then
    push into it (with `state["push"]`) while sliding up or down (`state["direction"]`), turning at
    the arena's ends and at random. Pushes land at every height, beside the door's edges too, and
    the slide carries the agent through the door when it reaches it; it then walks on into the
    other room (the push's side is chosen only away from the wall) and comes back to the wall from there."""
    x, y = float(position[0]), float(position[1])
    if rng.random() < flip_probability or (y > 0.9 and state["direction"] > 0) or (y < 0.1 and state["direction"] < 0):
        state["direction"] = -state["direction"]
    if abs(x - MIDDLE_X) > 0.1 or "toward" not in state:
        state["toward"] = 1.0 if x < MIDDLE_X else -1.0
    if abs(x - MIDDLE_X) > 0.1:
        return np.array([state["toward"], state["direction"] * rng.uniform(0.0, 0.5)])
    return np.array([state["toward"] * state["push"], state["direction"] * rng.uniform(0.3, 1.0)])


def exploration_policy(
    seed: int,
    random_fractions: tuple[float, ...] = (0.0, 0.3, 0.6, 1.0),
    noise: float = 0.3,
    sticky_fraction: float = 0.0,
    hold_steps: tuple[int, int] = (4, 12),
    waypoint_fraction: float = 0.0,
    wall_fraction: float = 0.0,
):
    """policy(obs, state) -> (action, state) for record_dataset. Per episode, with probability
    `sticky_fraction` a sticky random walk: a uniform random action held for a number of steps
    drawn from `hold_steps` (inclusive), then another; such walks run into the wall and slide along
    it, the transitions that teach a model where the wall stops the agent (independent uniform
    actions almost never push against it). Otherwise a probability p drawn from
    `random_fractions`; each step a uniform random action with probability p, else the scripted
    expert's action plus Gaussian noise of std `noise`, clipped to [-1, 1]. With probability
    `waypoint_fraction` an episode is a waypoint tour instead: the noisy expert (no random steps)
    heads for a random point of either room, through the door when it lies in the other room, and
    for a new one whenever it comes within one step of it. Tours pass along the wall and cross the
    door both ways, from everywhere: the paths a goal value must learn to route through the door
    (an expert that only heads for the episode's goal lines up with the door from the start).
    With probability `wall_fraction` an episode follows the wall instead (`wall_following_action`,
    plus the same noise): pushes into the wall at every height, the door's edges included."""
    if (
        min(sticky_fraction, waypoint_fraction, wall_fraction) < 0.0
        or sticky_fraction + waypoint_fraction + wall_fraction > 1.0
    ):
        raise ValueError(
            f"sticky_fraction, waypoint_fraction and wall_fraction must be in [0, 1] with a sum of at most 1, got {sticky_fraction}, "
            f"{waypoint_fraction} and {wall_fraction}"
        )
    if not 1 <= hold_steps[0] <= hold_steps[1]:
        raise ValueError(f"hold_steps must be 1 <= low <= high, got {hold_steps}")
    rng, geometry = np.random.default_rng(seed), TwoRoomsGeometry()

    def noisy_expert(obs, state):
        if state is None or bool(obs["is_first"][0]):
            kind = rng.random()
            state = {
                "random_fraction": float(rng.choice(random_fractions)),
                "sticky": bool(kind < sticky_fraction),
                "held": 0,
                "waypoint": random_waypoint(rng, geometry)
                if sticky_fraction <= kind < sticky_fraction + waypoint_fraction
                else None,
                "wall": bool(
                    sticky_fraction + waypoint_fraction <= kind < sticky_fraction + waypoint_fraction + wall_fraction
                ),
                "direction": 1.0 if rng.random() < 0.5 else -1.0,
                "push": float(rng.uniform(0.3, 1.0)),
            }
        if state["wall"]:
            action = wall_following_action(
                positions_from_frame(obs["image"][0]), state, rng
            ) + noise * rng.standard_normal(2)
        elif state["waypoint"] is not None:
            positions = positions_from_frame(obs["image"][0])
            if np.linalg.norm(positions[:2] - state["waypoint"]) < geometry.max_step:
                state["waypoint"] = random_waypoint(rng, geometry)
            positions[2:4] = state["waypoint"]
            action = scripted_action(positions, geometry) + noise * rng.standard_normal(2)
        elif state["sticky"]:
            if state["held"] == 0:
                state["action"] = rng.uniform(-1.0, 1.0, 2)
                state["held"] = int(rng.integers(hold_steps[0], hold_steps[1] + 1))
            state["held"] -= 1
            action = state["action"]
        elif rng.random() < state["random_fraction"]:
            action = rng.uniform(-1.0, 1.0, 2)
        else:
            action = scripted_action(positions_from_frame(obs["image"][0])) + noise * rng.standard_normal(2)
        return np.clip(action, -1.0, 1.0).astype(np.float32), state

    return noisy_expert


def exploration_name(sticky_fraction: float, waypoint_fraction: float = 0.0, wall_fraction: float = 0.0) -> str:
    """How the dataset manifest names the exploration policy (a reused dataset must match it)."""
    name = "noisy-scripted-expert+random"
    for kind, fraction in (
        ("sticky-random-walk", sticky_fraction),
        ("waypoint-tour", waypoint_fraction),
        ("wall-following", wall_fraction),
    ):
        if fraction != 0.0:
            name += f"+{kind}:{fraction:g}"
    return name


@dataclass(frozen=True)
class DataConfig(Config):
    """What is recorded: episodes of the exploration policy (see `exploration_policy`) in two-rooms
    from pixels, and optionally wall-following episodes beside them."""

    limits = ranges(episodes=COUNT, episode_steps=COUNT, extra_wall_episodes=NON_NEGATIVE)

    episodes: int = 400
    """Episodes to record (capped at `episode_steps` steps each)."""
    episode_steps: int = 100
    """Truncate recorded episodes after this many steps."""
    sticky_episodes: float = 0.0
    """Share of recorded episodes that are sticky random walks (a random action held for 4-12
    steps), which push against the wall; the rest are the noisy expert mixed with random actions."""
    waypoint_episodes: float = 0.0
    """Share of recorded episodes that are waypoint tours: the noisy expert heading for random
    points of both rooms in turn (see `exploration_policy`); at most 1 - sticky_episodes."""
    wall_episodes: float = 0.0
    """Share of recorded episodes that follow the wall (see `wall_following_action`): pushes into
    it at every height, beside the door's edges too; at most 1 - sticky - waypoint episodes."""
    extra_wall_episodes: int = 0
    """Wall-following episodes (see `wall_following_action`) recorded into OUT/extra-dataset for
    what trains on frozen embeddings, the goal value and the predictor refinement, beside the main
    dataset; the world model (the encoder) never sees them. They push into the wall at every height
    and cross the door both ways, what the predictor's wall and the value's detour are learnt from."""

    def __post_init__(self):
        super().__post_init__()
        shares = (self.sticky_episodes, self.waypoint_episodes, self.wall_episodes)
        if min(shares) < 0 or sum(shares) > 1:
            raise ConfigError(
                "DataConfig: sticky_episodes, waypoint_episodes and wall_episodes are shares of the episodes, each "
                f"at least 0 and together at most 1; got {', '.join(f'{share:g}' for share in shares)}"
            )


@dataclass(frozen=True)
class EvaluationConfig(Config):
    """MPC toward goal images in the other room (random door per episode)."""

    limits = ranges(episodes=COUNT, steps=COUNT, seed=NON_NEGATIVE)

    episodes: int = 200
    """Evaluation episodes per objective and seed."""
    steps: int = 60
    """Steps allowed to reach the goal (the scripted expert needs about 18 on average)."""
    seed: int = 100_000
    """Reset seed of the first evaluation episode (episode i: seed + i). The reported protocol
    uses 100000; another value gives held-out layouts, e.g. to check settings chosen on those."""
    objectives: tuple[str, ...] = ("distance", "value")
    """Planning objectives to evaluate (each replaces the agent's `objective` in turn)."""


def default_agent() -> JEPAPlannerConfig:
    """The agent the pipeline trains unless told otherwise: the planner's defaults, with the EMA
    momentum (used only with --model.collapse-prevention ema) ramping over the default 3000 updates."""
    return JEPAPlannerConfig(model=JEPAConfig(momentum_steps=3000))


def default_training() -> OfflineTrainConfig:
    """The world-model stage's offline trainer settings: 3000 updates of 32 windows of 8 steps, the
    gradient norm clipped at 10, one torch thread, no TensorBoard."""
    return OfflineTrainConfig(
        updates=3000, batch_size=32, sequence_length=8, grad_clip=10.0, threads=1, tensorboard=False
    )


@dataclass(frozen=True)
class PipelineArguments:
    """Record two-rooms pixels offline, train a JEPA world model (with the offline trainer) and a goal
    value, evaluate planning."""

    out: Path = Path("runs/jepa")
    """Directory for the dataset, checkpoints and results (the world model of seed K is the offline run
    OUT/seedK/world-model, which `wmlab eval` and `wmlab report` read)."""
    agent: Annotated[JEPAPlannerConfig, tyro.conf.arg(name="")] = field(default_factory=default_agent)
    """The agent: its world model (--model.*), goal value (--value.*), MPPI (--planner.*) and MPC
    settings. With --model.collapse-prevention ema, set --model.momentum-steps to --train.updates."""
    data: DataConfig = field(default_factory=DataConfig)
    """What is recorded."""
    train: OfflineTrainConfig = field(default_factory=default_training)
    """The world model's offline training (`wmlab train --model jepa`'s settings); --train.seed is the
    first training seed, --train.threads, --train.device and --train.progress serve every stage."""
    value_steps: int = 3000
    """Goal-value gradient steps on the frozen embeddings."""
    refine_steps: int = 0
    """After the world model (trained or loaded): train its predictor alone for this many steps on
    the frozen encoder's embeddings of every recorded frame (`PredictorRefiner`; windows of
    --train.sequence-length, --refine-batch-size of them). A step costs about a twentieth of a
    world-model step; the refined agent is saved as seedK/checkpoint-refined, the model's own
    checkpoint left as it is. 0: no refinement."""
    refine_batch_size: int = 256
    """Windows per predictor-refinement batch."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """How planning is scored."""
    seeds: int = 1
    """Training seeds (--train.seed .. --train.seed + seeds - 1); each trains its own model and value on
    the same dataset. Starting at another --train.seed lets seeds run as separate processes side by
    side (each in its own --out with a copy of the dataset); evaluation episodes are the same for every seed."""
    reuse_checkpoints: bool = False
    """Load each seed's saved checkpoint from --out instead of training it (evaluate only); seeds
    with no checkpoint there yet are trained, so more seeds can be added to a run directory. With
    --refine-steps, a saved seedK/checkpoint-refined (its predictor and value) is loaded instead,
    and neither the value (--retrain-value) nor the predictor is trained again."""
    retrain_value: bool = False
    """With --reuse-checkpoints: train a fresh goal value (--value.objective, --value-steps) on the
    loaded model's frozen embeddings instead of the saved one, and save it beside the checkpoint as
    value-OBJECTIVE; the saved checkpoint is left as it is."""
    quick: bool = False
    """Tiny sizes for a smoke test; numbers not comparable."""


EXTRA_DATASET_SEED = 50_000
"""Episode i of --extra-wall-episodes starts from reset(seed=EXTRA_DATASET_SEED + i): layouts apart
from the main dataset's (0 + i) and the evaluation's (100_000 + i)."""


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as file:
        file.write(json.dumps(record) + "\n")


def no_progress(steps: int, note: str = "") -> None:
    """The progress callback when no bar is shown."""


class JEPATraining(TrainingObjective):
    """The world model's update for the offline trainer: the JEPA loss (its EMA target, if any, moved
    after each step); with `value.shaping_scale` > 0 and the raw episodes given, the goal value's TD
    loss on hindsight goals joins it and shapes the encoder (EncoderShaping, arXiv:2601.00844), the
    value stepped by an Adam of its own."""

    def __init__(self, value: GoalValue, config: ValueConfig, shaping_episodes: list[np.ndarray] | None = None):
        self.value, self.config, self.episodes = value, config, shaping_episodes
        self.value_optimizer = torch.optim.Adam(value.parameters(), lr=config.learning_rate)
        self.shaping: EncoderShaping | None = None

    def prepare(self, model) -> None:
        if self.config.shaping_scale > 0 and self.episodes is not None:
            self.shaping = EncoderShaping(model, self.value, self.config)

    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics = model.loss(batch)
        if self.shaping is not None:
            value_loss, value_metrics = self.shaping.loss(self.episodes)
            loss = loss + self.config.shaping_scale * value_loss
            metrics.update(value_metrics)
            self.value_optimizer.zero_grad(set_to_none=True)
        return loss, metrics

    def after_step(self, model) -> None:
        if self.shaping is not None:
            self.value_optimizer.step()
            self.shaping.update_targets()
        super().after_step(model)

    def state_dict(self) -> dict[str, Any]:
        if self.shaping is None:
            return {}
        return {
            "value": self.value.state_dict(),
            "value_optimizer": self.value_optimizer.state_dict(),
            "target_encoder": self.shaping.target_encoder.state_dict(),
            "target_value": self.shaping.target_value.state_dict(),
            "generator": json.dumps(self.shaping.generator.bit_generator.state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.shaping is None or not state:
            return
        self.value.load_state_dict(state["value"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])
        self.shaping.target_encoder.load_state_dict(state["target_encoder"])
        self.shaping.target_value.load_state_dict(state["target_value"])
        self.shaping.generator.bit_generator.state = json.loads(state["generator"])


def train_world_model(
    agent: JEPAPlannerAgent, dataset, train: OfflineTrainConfig, run_dir: Path, progress: bool = False
) -> dict[str, float]:
    """Fit the agent's JEPA world model to the recorded dataset with the offline trainer, into the
    ordinary offline run directory `run_dir` (`wmlab eval` / `wmlab report` read it; replaced if it
    exists), and load the result into the agent. Returns the last update's metrics."""
    shaping_episodes = None
    if agent.config.value.shaping_scale > 0:
        shaping_episodes = [episode[agent.model.observation_key] for episode in dataset.episodes()]
    spec = dataset_run_spec("jepa", dataset.directory, replace(train, progress=progress), agent.config.model)
    trainer = OfflineTrainer(
        spec, run_dir, force=True, objective=JEPATraining(agent.value, agent.config.value, shaping_episodes)
    )
    trainer.run()
    agent.model.load_state_dict(trainer.model.state_dict())
    agent.model.eval()
    return trainer.last_metrics


@torch.no_grad()
def embed_episodes(model, dataset, chunk: int = 512) -> list[torch.Tensor]:
    model.eval()
    episodes = []
    for episode in dataset.episodes():
        frames = episode[model.observation_key]
        episodes.append(torch.cat([model.encode(frames[i : i + chunk]) for i in range(0, len(frames), chunk)]))
    return episodes


def train_value(
    agent: JEPAPlannerAgent,
    episodes: list[torch.Tensor],
    steps: int,
    seed: int,
    log: Path,
    advance: Callable[..., None] = no_progress,
) -> dict:
    learner, metrics = make_value_learner(agent.value, agent.config.value, seed=seed), {}
    for step in range(1, steps + 1):
        metrics = learner.update(episodes)
        advance(1, f"mean value {metrics['value/mean']:.2f}")
        if step % 200 == 0 or step == steps:
            _log(log, {"value_step": step, **{k: round(v, 5) for k, v in metrics.items()}})
    return metrics


def refine_predictor(
    agent: JEPAPlannerAgent,
    datasets: list,
    embeddings: list[torch.Tensor],
    steps: int,
    batch_size: int,
    length: int,
    seed: int,
    log: Path,
    advance: Callable[..., None] = no_progress,
) -> dict:
    """Train the predictor alone on frozen embeddings (see PredictorRefiner), those of the datasets'
    episodes in order; the last step's losses."""
    actions = [
        torch.as_tensor(episode["action"], dtype=torch.float32, device=agent.device)
        for dataset in datasets
        for episode in dataset.episodes()
    ]
    if [len(episode) for episode in actions] != [len(episode) for episode in embeddings]:
        raise ShapeError(
            f"refine_predictor: {len(embeddings)} embedded episodes do not match the {len(actions)} episodes of actions step for step"
        )
    refiner, metrics = PredictorRefiner(agent.model, steps, batch_size, length, seed=seed), {}
    for step in range(1, steps + 1):
        metrics = refiner.update(embeddings, actions)
        advance(1, f"rollout loss {metrics['refine/rollout']:.4f}")
        if step % 1000 == 0 or step == steps:
            _log(log, {"refine_step": step, **{k: round(v, 6) for k, v in metrics.items()}})
    agent.model.eval()
    return metrics


def evaluate(
    agent: JEPAPlannerAgent,
    objective: str,
    episodes: int,
    max_steps: int,
    seed: int,
    log: Path | None = None,
    advance: Callable[..., None] = no_progress,
) -> dict:
    """Success rate of MPC toward the goal image, random door, goal in the other room."""

    agent.config = replace(agent.config, objective=objective)
    env = make_two_rooms_pixels(max_episode_steps=max_steps)
    successes, lengths, crossed, final_distances, started = [], [], [], [], time.time()
    for episode in range(episodes):
        frame, info = env.reset(seed=seed + episode)
        goal_side = info["goal"][0] > MIDDLE_X
        agent.set_goal(env.goal_observation())
        state, success = None, bool(info["success"])
        for step in range(max_steps):
            action, state = agent.act({"image": frame[None], "is_first": np.array([step == 0])}, state, explore=False)
            frame, _, terminated, truncated, info = env.step(action[0])
            success = success or bool(info["success"])
            if terminated or truncated:
                break
        successes.append(success)
        lengths.append(step + 1)
        crossed.append(success or (info["agent"][0] > MIDDLE_X) == goal_side)
        final_distances.append(0.0 if success else float(info["distance"]))
        advance(1, f"success {np.mean(successes):.0%}")
        if log is not None and (episode + 1) % 25 == 0:
            _log(
                log,
                {
                    "objective": objective,
                    "episodes_done": episode + 1,
                    "success_rate_so_far": float(np.mean(successes)),
                    "seconds": round(time.time() - started, 1),
                },
            )
    return {
        "objective": objective,
        "episodes": episodes,
        "success_rate": float(np.mean(successes)),
        "mean_length": float(np.mean(lengths)),
        # Where the failures end: in the goal's room (the door was found) or still before the wall,
        # and the path length left to the goal (0 for a success).
        "reached_goal_room": float(np.mean(crossed)),
        "mean_final_path_length": float(np.mean(final_distances)),
        "seconds": round(time.time() - started, 1),
    }


def check_evaluation_layouts(arguments: PipelineArguments) -> None:
    """Evaluation episodes must not start from a recorded episode's reset seed: the planner would
    be scored on layouts its model and value were trained on."""
    evaluation = range(arguments.evaluation.seed, arguments.evaluation.seed + arguments.evaluation.episodes)
    for name, recorded in (
        ("the main dataset's", range(0, arguments.data.episodes)),
        (
            "the extra wall-following episodes'",
            range(EXTRA_DATASET_SEED, EXTRA_DATASET_SEED + arguments.data.extra_wall_episodes),
        ),
    ):
        if evaluation.start < recorded.stop and recorded.start < evaluation.stop:
            raise ValueError(
                f"--evaluation.seed {arguments.evaluation.seed} with {arguments.evaluation.episodes} episodes overlaps "
                f"{name} reset seeds {recorded.start}..{recorded.stop - 1}: evaluation layouts would repeat recorded ones"
            )


def quick_settings(arguments: PipelineArguments) -> PipelineArguments:
    """--quick: tiny data, budgets and networks (a smoke test whose numbers mean nothing)."""
    agent, data = arguments.agent, arguments.data
    model = replace(
        agent.model,
        embedding_size=64 if agent.model.encoder_head == "spatial" else 8,
        encoder_depth=4,
        hidden_size=32,
        predictor_channels=8,
        layout_size=4,
        momentum_steps=3,
    )
    value = replace(agent.value, hidden_size=16, projection_size=8, batch_size=32, shaping_batch_size=8)
    return replace(
        arguments,
        agent=replace(agent, model=model, value=value),
        data=replace(data, episodes=6, episode_steps=20, extra_wall_episodes=min(data.extra_wall_episodes, 3)),
        train=replace(arguments.train, updates=3, batch_size=4, sequence_length=4),
        value_steps=3,
        evaluation=replace(arguments.evaluation, episodes=1, steps=5),
        refine_steps=min(arguments.refine_steps, 3),
        refine_batch_size=4,
    )


def record_datasets(arguments: PipelineArguments):
    """OUT/dataset (and OUT/extra-dataset with --data.extra-wall-episodes), recorded unless already
    there with the same policy; (dataset, extra dataset or None)."""
    out, data, progress = arguments.out, arguments.data, arguments.train.progress
    dataset_dir = out / "dataset"
    policy_name = exploration_name(data.sticky_episodes, data.waypoint_episodes, data.wall_episodes)
    if not (dataset_dir / "manifest.json").exists():
        policy = exploration_policy(
            seed=0,
            sticky_fraction=data.sticky_episodes,
            waypoint_fraction=data.waypoint_episodes,
            wall_fraction=data.wall_episodes,
        )
        record_dataset(
            "two-rooms",
            policy,
            data.episodes,
            dataset_dir,
            seed=0,
            max_episode_steps=data.episode_steps,
            progress=progress,
            policy_name=policy_name,
        )
    else:
        recorded = json.loads((dataset_dir / "manifest.json").read_text()).get("policy")
        if recorded != policy_name:
            raise RunDirectoryError(
                f"{dataset_dir} was recorded by {recorded!r}, not {policy_name!r} as asked (--data.sticky-episodes, "
                "--data.waypoint-episodes, --data.wall-episodes); use another --out or remove that dataset"
            )
    dataset = load_dataset(dataset_dir, seed=0)
    if data.extra_wall_episodes == 0:
        return dataset, None
    extra_dir = out / "extra-dataset"
    if not (extra_dir / "manifest.json").exists():
        record_dataset(
            "two-rooms",
            exploration_policy(seed=1, wall_fraction=1.0),
            data.extra_wall_episodes,
            extra_dir,
            seed=EXTRA_DATASET_SEED,
            max_episode_steps=data.episode_steps,
            progress=progress,
            policy_name="wall-following",
        )
    extra = load_dataset(extra_dir, seed=0)
    if extra.num_episodes != data.extra_wall_episodes:
        raise RunDirectoryError(
            f"{extra_dir} holds {extra.num_episodes} episodes, not the {data.extra_wall_episodes} asked "
            "(--data.extra-wall-episodes); use another --out or remove that dataset"
        )
    return dataset, extra


def run_pipeline(arguments: PipelineArguments) -> dict:
    if arguments.retrain_value and not arguments.reuse_checkpoints:
        raise ValueError("--retrain-value retrains the value of saved checkpoints: pass --reuse-checkpoints too")
    check_evaluation_layouts(arguments)
    if arguments.quick:
        arguments = quick_settings(arguments)
    torch.set_num_threads(max(arguments.train.threads, 1))
    out = arguments.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "metrics.jsonl"
    dataset, extra = record_datasets(arguments)
    results = {"settings": settings_json(arguments), "runs": []}
    for seed in range(arguments.train.seed, arguments.train.seed + arguments.seeds):
        # One display per seed: the offline trainer shows its own bar before the seed's first one.
        with StageProgress(arguments.train.progress) as bars:
            results["runs"].append(run_seed(arguments, dataset, seed, log, bars, extra))
    results["summary"] = summarise_seeds(results["runs"])
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def settings_json(arguments: PipelineArguments) -> dict[str, Any]:
    """The settings as results.json records them (`saved_arguments` reads them back)."""
    return json.loads(json.dumps(asdict(arguments), default=str))


def saved_arguments(out: Path) -> PipelineArguments:
    """The settings of the finished run in `out` (its results.json), as typed configs."""
    path = out / "results.json"
    if not path.exists():
        raise RunDirectoryError(f"{path} not found: point --out at a finished `wmlab pipeline jepa` run")
    settings = json.loads(path.read_text())["settings"]
    if "agent" not in settings:
        raise RunDirectoryError(
            f"{path} was written before the pipeline's settings were nested (agent, data, train, evaluation); "
            "rerun it with this version"
        )
    return PipelineArguments(
        out=out,
        agent=from_dict(JEPAPlannerConfig, settings["agent"]),
        data=from_dict(DataConfig, settings["data"]),
        train=from_dict(OfflineTrainConfig, settings["train"]),
        evaluation=from_dict(EvaluationConfig, settings["evaluation"]),
        **{name: settings[name] for name in ("value_steps", "refine_steps", "refine_batch_size", "seeds")},
    )


def summarise_seeds(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Per objective: mean and standard deviation (over seeds) of the success rate, and the seed count."""
    rates: dict[str, list[float]] = {}
    for run in runs:
        for evaluation in run["evaluations"]:
            rates.setdefault(evaluation["objective"], []).append(evaluation["success_rate"])
    return {
        objective: {"success_mean": float(np.mean(values)), "success_std": float(np.std(values)), "seeds": len(values)}
        for objective, values in rates.items()
    }


def run_seed(arguments: PipelineArguments, dataset, seed: int, log: Path, bars: StageProgress, extra=None) -> dict:
    """Train (or load) one seed's model and value, then evaluate each objective. `extra`: more
    recorded episodes for the value and the predictor refinement only."""

    out = arguments.out
    torch.manual_seed(seed)
    agent = JEPAPlannerAgent(
        arguments.agent, dataset.observation_space, dataset.action_space, seed=seed, device=arguments.train.device
    )
    checkpoint = out / f"seed{seed}"
    model_metrics, value_metrics, model_seconds, value_seconds = {}, {}, 0.0, 0.0

    datasets = [dataset] if extra is None else [dataset, extra]

    def embedded() -> list[torch.Tensor]:
        return [embedding for recorded in datasets for embedding in embed_episodes(agent.model, recorded)]

    def timed_value_training() -> tuple[dict, float]:
        started = time.time()
        metrics = train_value(
            agent,
            embedded(),
            arguments.value_steps,
            seed,
            log,
            bars.task(f"seed {seed}: goal value", arguments.value_steps),
        )
        return metrics, time.time() - started

    reuse_refined = (
        arguments.reuse_checkpoints
        and arguments.refine_steps > 0
        and (checkpoint / "checkpoint-refined.safetensors").is_file()
    )
    if reuse_refined:  # the refined predictor and the value saved with it: nothing to train
        agent.load_state_dict(load_state(checkpoint, "checkpoint-refined"))
    elif arguments.reuse_checkpoints and (checkpoint / "checkpoint.safetensors").is_file():
        agent.load_state_dict(load_state(checkpoint, "checkpoint"))
        if arguments.retrain_value:
            agent.value = GoalValue(agent.config.model.embedding_size, agent.config.value).to(agent.device)
            value_metrics, value_seconds = timed_value_training()
            save_state({"value": agent.value.state_dict()}, checkpoint, f"value-{agent.config.value.objective}")
    else:
        started = time.time()
        model_metrics = train_world_model(
            agent, dataset, replace(arguments.train, seed=seed), checkpoint / "world-model", arguments.train.progress
        )
        model_seconds = time.time() - started
        value_metrics, value_seconds = timed_value_training()
        save_state(agent.state_dict(), checkpoint, "checkpoint")
    run = {
        "seed": seed,
        "model_seconds": round(model_seconds, 1),
        "value_seconds": round(value_seconds, 1),
        "final_model_metrics": model_metrics,
        "final_value_metrics": value_metrics,
        "evaluations": [],
    }
    if arguments.refine_steps > 0 and not reuse_refined:
        started = time.time()
        embeddings = embedded()
        run["refine_episodes"] = len(embeddings)
        run["final_refine_metrics"] = refine_predictor(
            agent,
            datasets,
            embeddings,
            arguments.refine_steps,
            arguments.refine_batch_size,
            arguments.train.sequence_length,
            seed,
            log,
            bars.task(f"seed {seed}: predictor", arguments.refine_steps),
        )
        run["refine_seconds"] = round(time.time() - started, 1)
        save_state(agent.state_dict(), checkpoint, "checkpoint-refined")
    evaluation = arguments.evaluation
    for objective in evaluation.objectives:
        scores = evaluate(
            agent,
            objective,
            evaluation.episodes,
            evaluation.steps,
            seed=evaluation.seed,
            log=log,
            advance=bars.task(f"seed {seed}: plan by {objective}", evaluation.episodes),
        )
        run["evaluations"].append(scores)
        _log(log, {"seed": seed, **scores})
    return run


def jepa_command(argv: list[str]) -> int:
    """`wmlab pipeline jepa [--out DIR] [--train.updates N] [--model.X ...] ...`"""

    arguments = tyro.cli(PipelineArguments, args=argv, prog="wmlab pipeline jepa")
    results = run_pipeline(arguments)
    for run in results["runs"]:
        for evaluation in run["evaluations"]:
            print(
                f"seed {run['seed']} {evaluation['objective']}: success {evaluation['success_rate']:.1%} over {evaluation['episodes']} episodes"
                f" (ended in the goal's room {evaluation['reached_goal_room']:.0%}, path left {evaluation['mean_final_path_length']:.2f})"
            )
    for objective, summary in results["summary"].items():
        print(
            f"{objective}: success {summary['success_mean']:.1%} +- {summary['success_std']:.1%} over {summary['seeds']} seed(s)"
        )
    return 0
