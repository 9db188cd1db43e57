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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import tyro

from wmlab.agents.jepa_planner.agent import GoalValue, JEPAPlannerAgent, PredictorRefiner, make_value_learner
from wmlab.agents.jepa_planner.config import JEPAPlannerConfig, ValueConfig, default_mppi
from wmlab.core.errors import RunDirectoryError, ShapeError
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
from wmlab.models.jepa import JEPAConfig, JEPALossScales


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
class PipelineArguments:
    """Record two-rooms pixels offline, train a JEPA world model and a goal value, evaluate planning."""

    out: Path = Path("runs/jepa")
    """Directory for the dataset, checkpoints and results."""
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
    eval_steps: int = 60
    """Steps allowed to reach the goal in evaluation (the scripted expert needs about 18 on average)."""
    train_steps: int = 3000
    """World-model gradient steps."""
    batch_size: int = 32
    """Windows per world-model batch."""
    sequence_length: int = 8
    """T, steps per window (the rollout loss predicts T - 1 steps open loop)."""
    value_steps: int = 3000
    """Goal-value gradient steps."""
    eval_episodes: int = 200
    """Evaluation episodes per objective and seed."""
    eval_seed: int = 100_000
    """Reset seed of the first evaluation episode (episode i: eval_seed + i). The reported protocol
    uses 100000; another value gives held-out layouts, e.g. to check settings chosen on those."""
    seeds: int = 1
    """Training seeds (first_seed .. first_seed + seeds - 1); each trains its own model and value on
    the same dataset."""
    first_seed: int = 0
    """The first training seed, so that seeds can run as separate processes side by side (each in
    its own --out with a copy of the dataset); evaluation episodes are the same for every seed."""
    objectives: tuple[str, ...] = ("distance", "value")
    """Planning objectives to evaluate."""
    replan_every: int = 4
    """MPC: actions executed from each plan before planning again (1 .. the planner's horizon)."""
    planning_horizon: int = 8
    """MPPI's horizon L, in environment steps."""
    planning_iterations: int = 6
    """MPPI's refits per plan."""
    distance_at_end: bool = False
    """Distance objective: score a plan by the distance to the goal at the end of the horizon
    instead of summed over it (a long horizon can then detour through the door)."""
    distance_norm: str = "squared"
    """Distance objective: "squared" or "euclidean" distance between predicted and goal embeddings."""
    planning_noise_exponent: float = 0.0
    """MPPI's sampling noise: 0 white, 2 brown (smooth sequences that travel farther; iCEM)."""
    collapse_prevention: str = "vicreg"
    """"vicreg" or "ema"."""
    covariance_weight: float = 0.04
    """Weight of VICReg's covariance term against a variance weight of 1 (VICReg's own ratio 1 : 25
    is the default; EB-JEPA's two-rooms recipe uses 8 : 16)."""
    encoder_head: str = "keypoints"
    """How frames become embeddings: "keypoints" (spatial soft-argmax), "linear", "spatial" (a
    feature map with a convolutional predictor, as PLDM / EB-JEPA) or "hybrid" (keypoints for what
    moves beside a flattened map for the layout); see JEPAConfig.encoder_head."""
    layout_size: int = 16
    """"hybrid" head: dimensions of the embedding that hold the flattened map (the rest: keypoints)."""
    hidden_size: int = 256
    """Width of the predictor MLP (and of the inverse-dynamics head)."""
    predictor_layers: int = 2
    """Hidden layers of the predictor MLP: the wall is a sharp function of the agent's height and
    the door's, which a small MLP blurs."""
    embedding_size: int = 32
    """D; with the "spatial" head a multiple of its 8 x 8 grid's 64 cells (512: 8 channels)."""
    value_shaping: float = 0.0
    """Weight of the goal value's loss in the world model's training, shaping the encoder with it
    (arXiv:2601.00844); 0 trains the value afterwards on frozen embeddings only."""
    value_objective: str = "expectile"
    """How the goal value is trained on the frozen embeddings: "expectile" (IQL-style TD, the
    paper's) or "quasimetric" (QRL: the widest distance every recorded transition allows)."""
    value_space: str = "projection"
    """Where the goal value is a distance: "projection" (a learned MLP phi on the embedding) or
    "embedding" (the embedding itself, scaled: V = -exp(s) ||z - g||)."""
    refine_steps: int = 0
    """After the world model (trained or loaded): train its predictor alone for this many steps on
    the frozen encoder's embeddings of every recorded frame (`PredictorRefiner`; windows of
    --sequence-length, --refine-batch-size of them). A step costs about a twentieth of a
    world-model step; the refined agent is saved as seedK/checkpoint-refined, the model's own
    checkpoint left as it is. 0: no refinement."""
    extra_wall_episodes: int = 0
    """Wall-following episodes (see `wall_following_action`) recorded into OUT/extra-dataset for
    what trains on frozen embeddings, the goal value and the predictor refinement, beside the main
    dataset; the world model (the encoder) never sees them. They push into the wall at every height
    and cross the door both ways, what the predictor's wall and the value's detour are learnt from."""
    refine_batch_size: int = 256
    """Windows per predictor-refinement batch."""
    reuse_checkpoints: bool = False
    """Load each seed's saved checkpoint from --out instead of training it (evaluate only); seeds
    with no checkpoint there yet are trained, so more seeds can be added to a run directory. With
    --refine-steps, a saved seedK/checkpoint-refined (its predictor and value) is loaded instead,
    and neither the value (--retrain-value) nor the predictor is trained again."""
    retrain_value: bool = False
    """With --reuse-checkpoints: train a fresh goal value (--value-objective, --value-steps) on the
    loaded model's frozen embeddings instead of the saved one, and save it beside the checkpoint as
    value-OBJECTIVE; the saved checkpoint is left as it is."""
    quick: bool = False
    """Tiny sizes for a smoke test; numbers not comparable."""
    threads: int = 1
    """torch CPU threads."""
    device: str = "cpu"
    progress: bool = True
    """Show progress bars."""


EXTRA_DATASET_SEED = 50_000
"""Episode i of --extra-wall-episodes starts from reset(seed=EXTRA_DATASET_SEED + i): layouts apart
from the main dataset's (0 + i) and the evaluation's (100_000 + i)."""


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as file:
        file.write(json.dumps(record) + "\n")


def no_progress(steps: int, note: str = "") -> None:
    """The progress callback when no bar is shown."""


def train_model(
    agent: JEPAPlannerAgent,
    dataset,
    steps: int,
    batch_size: int,
    length: int,
    log: Path,
    advance: Callable[..., None] = no_progress,
) -> dict:
    started, metrics = time.time(), {}
    shaping_episodes = None
    if agent.config.value.shaping_scale > 0:
        shaping_episodes = [episode[agent.model.observation_key] for episode in dataset.episodes()]
    for step in range(1, steps + 1):
        metrics = agent.update(dataset.sample(batch_size, length), shaping_episodes)
        advance(1, f"loss {metrics['loss/total']:.3f}")
        if step % 100 == 0 or step == steps:
            _log(
                log,
                {
                    "step": step,
                    "seconds": round(time.time() - started, 1),
                    **{k: round(v, 5) for k, v in metrics.items()},
                },
            )
    return metrics


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
    evaluation = range(arguments.eval_seed, arguments.eval_seed + arguments.eval_episodes)
    for name, recorded in (
        ("the main dataset's", range(0, arguments.episodes)),
        (
            "the extra wall-following episodes'",
            range(EXTRA_DATASET_SEED, EXTRA_DATASET_SEED + arguments.extra_wall_episodes),
        ),
    ):
        if evaluation.start < recorded.stop and recorded.start < evaluation.stop:
            raise ValueError(
                f"--eval-seed {arguments.eval_seed} with {arguments.eval_episodes} episodes overlaps {name} reset seeds "
                f"{recorded.start}..{recorded.stop - 1}: evaluation layouts would repeat recorded ones"
            )


def run_pipeline(arguments: PipelineArguments) -> dict:
    if arguments.retrain_value and not arguments.reuse_checkpoints:
        raise ValueError("--retrain-value retrains the value of saved checkpoints: pass --reuse-checkpoints too")
    check_evaluation_layouts(arguments)
    torch.set_num_threads(arguments.threads)
    out = arguments.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "metrics.jsonl"
    if arguments.quick:
        arguments = replace(
            arguments,
            episodes=6,
            episode_steps=20,
            train_steps=3,
            value_steps=3,
            eval_episodes=1,
            eval_steps=5,
            sequence_length=4,
            batch_size=4,
            refine_steps=min(arguments.refine_steps, 3),
            refine_batch_size=4,
            extra_wall_episodes=min(arguments.extra_wall_episodes, 3),
        )
    dataset_dir = out / "dataset"
    policy_name = exploration_name(arguments.sticky_episodes, arguments.waypoint_episodes, arguments.wall_episodes)
    if not (dataset_dir / "manifest.json").exists():
        policy = exploration_policy(
            seed=0,
            sticky_fraction=arguments.sticky_episodes,
            waypoint_fraction=arguments.waypoint_episodes,
            wall_fraction=arguments.wall_episodes,
        )
        record_dataset(
            "two-rooms",
            policy,
            arguments.episodes,
            dataset_dir,
            seed=0,
            max_episode_steps=arguments.episode_steps,
            progress=arguments.progress,
            policy_name=policy_name,
        )
    else:
        recorded = json.loads((dataset_dir / "manifest.json").read_text()).get("policy")
        if recorded != policy_name:
            raise RunDirectoryError(
                f"{dataset_dir} was recorded by {recorded!r}, not {policy_name!r} as asked (--sticky-episodes, --waypoint-episodes, --wall-episodes); "
                "use another --out or remove that dataset"
            )
    dataset = load_dataset(dataset_dir, seed=0)
    extra = None
    if arguments.extra_wall_episodes > 0:
        extra_dir = out / "extra-dataset"
        if not (extra_dir / "manifest.json").exists():
            record_dataset(
                "two-rooms",
                exploration_policy(seed=1, wall_fraction=1.0),
                arguments.extra_wall_episodes,
                extra_dir,
                seed=EXTRA_DATASET_SEED,
                max_episode_steps=arguments.episode_steps,
                progress=arguments.progress,
                policy_name="wall-following",
            )
        extra = load_dataset(extra_dir, seed=0)
        if extra.num_episodes != arguments.extra_wall_episodes:
            raise RunDirectoryError(
                f"{extra_dir} holds {extra.num_episodes} episodes, not the {arguments.extra_wall_episodes} asked "
                "(--extra-wall-episodes); use another --out or remove that dataset"
            )
    results = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(arguments).items()}, "runs": []}
    with StageProgress(arguments.progress) as bars:
        for seed in range(arguments.first_seed, arguments.first_seed + arguments.seeds):
            results["runs"].append(run_seed(arguments, dataset, seed, log, bars, extra))
    results["summary"] = summarise_seeds(results["runs"])
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


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


def planner_config(arguments: PipelineArguments) -> JEPAPlannerConfig:
    """The agent configuration a pipeline run trains (and a later reader must rebuild to load it)."""

    model_config = JEPAConfig(
        collapse_prevention=arguments.collapse_prevention,
        momentum_steps=max(arguments.train_steps, 1),
        loss_scales=JEPALossScales(covariance=arguments.covariance_weight),
        encoder_head=arguments.encoder_head,
        embedding_size=arguments.embedding_size,
        layout_size=arguments.layout_size,
        hidden_size=arguments.hidden_size,
        predictor_layers=arguments.predictor_layers,
    )
    if arguments.quick:
        small_embedding = 64 if arguments.encoder_head == "spatial" else 8
        model_config = replace(
            model_config,
            embedding_size=small_embedding,
            encoder_depth=4,
            hidden_size=32,
            predictor_channels=8,
            layout_size=4,
        )
    value_config = ValueConfig(
        space=arguments.value_space, shaping_scale=arguments.value_shaping, objective=arguments.value_objective
    )
    if arguments.quick:
        value_config = replace(value_config, hidden_size=16, projection_size=8, batch_size=32, shaping_batch_size=8)
    planner = replace(
        default_mppi(),
        horizon=arguments.planning_horizon,
        iterations=arguments.planning_iterations,
        noise_exponent=arguments.planning_noise_exponent,
    )
    return JEPAPlannerConfig(
        model=model_config,
        value=value_config,
        planner=planner,
        replan_every=arguments.replan_every,
        distance_at_end=arguments.distance_at_end,
        distance_norm=arguments.distance_norm,
    )


def run_seed(arguments: PipelineArguments, dataset, seed: int, log: Path, bars: StageProgress, extra=None) -> dict:
    """Train (or load) one seed's model and value, then evaluate each objective. `extra`: more
    recorded episodes for the value and the predictor refinement only."""

    out = arguments.out
    torch.manual_seed(seed)
    agent = JEPAPlannerAgent(
        planner_config(arguments), dataset.observation_space, dataset.action_space, seed=seed, device=arguments.device
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
            save_state({"value": agent.value.state_dict()}, checkpoint, f"value-{arguments.value_objective}")
    else:
        started = time.time()
        model_metrics = train_model(
            agent,
            dataset,
            arguments.train_steps,
            arguments.batch_size,
            arguments.sequence_length,
            log,
            bars.task(f"seed {seed}: world model", arguments.train_steps),
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
            arguments.sequence_length,
            seed,
            log,
            bars.task(f"seed {seed}: predictor", arguments.refine_steps),
        )
        run["refine_seconds"] = round(time.time() - started, 1)
        save_state(agent.state_dict(), checkpoint, "checkpoint-refined")
    for objective in arguments.objectives:
        evaluation = evaluate(
            agent,
            objective,
            arguments.eval_episodes,
            arguments.eval_steps,
            seed=arguments.eval_seed,
            log=log,
            advance=bars.task(f"seed {seed}: plan by {objective}", arguments.eval_episodes),
        )
        run["evaluations"].append(evaluation)
        _log(log, {"seed": seed, **evaluation})
    return run


def jepa_command(argv: list[str]) -> int:
    """`wmlab pipeline jepa [--out DIR] [--train-steps N] ...`"""

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
