"""The planning objective's landscape on real two-rooms frames: is it a usable distance to the goal?

A planner can only follow its objective. This module scores the objective on rendered frames
(no model predictions involved), over a grid of agent positions in one layout (door, goal), and
measures it against the true path length through the door:

- `rank_correlation`: Spearman correlation between the objective and minus the path length over
  the free grid cells (1 = it orders the positions exactly as the true distance does);
- `descent_accuracy`: at each free cell outside the goal, does the neighbour (8-connected) that
  the objective likes best bring the agent closer along the true path? A distance-to-goal
  objective on a wall-blind representation fails in the room away from the goal, where the
  straight line points into the wall;
- `greedy_success`: from every free cell, follow the objective's best neighbour until the goal
  region or a local optimum: the share of cells that reach the goal. 1 means that a planner with
  perfect dynamics and a one-step horizon would always succeed.

`wmlab pipeline jepa-landscape --out RUN` scores a trained `wmlab pipeline jepa` run (both
objectives, several layouts) and draws the landscapes next to the true distance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import tyro

from wmlab.agents.jepa_planner.agent import JEPAPlannerAgent
from wmlab.core.serialization import load_state
from wmlab.data.dataset import load_dataset
from wmlab.envs.two_rooms import MIDDLE_X, TwoRooms, path_length
from wmlab.pipelines.jepa.pipeline import positions_from_frame, saved_arguments

Objective = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(frames (G, H, W, 3) uint8, goal frame (H, W, 3)) -> (G,) scores, higher is better."""

NEIGHBOURS = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0)]


@dataclass(frozen=True)
class Layout:
    door_y: float
    goal: tuple[float, float]


@dataclass
class Landscape:
    """Scores over a grid of agent positions; NaN where the agent cannot stand."""

    xs: np.ndarray  # (X,)
    ys: np.ndarray  # (Y,)
    scores: np.ndarray  # (Y, X)
    path_lengths: np.ndarray  # (Y, X)
    free: np.ndarray  # (Y, X) bool
    at_goal: np.ndarray  # (Y, X) bool: inside the goal's success region


def landscape(env: TwoRooms, layout: Layout, objective: Objective, cells: int = 24) -> Landscape:
    """Render the agent at each free cell of a cells x cells grid in `layout` and score the frames."""
    geometry = env.geometry
    low, high = geometry.lowest + 1e-3, geometry.highest - 1e-3
    xs = np.linspace(low, high, cells)
    ys = np.linspace(low, high, cells)
    env.reset(seed=0)
    snapshot = env.get_state()
    env.set_state({**snapshot, "agent": list(layout.goal), "goal": list(layout.goal), "door_y": layout.door_y})
    goal_frame = env.goal_observation()
    free = np.zeros((cells, cells), bool)
    path = np.full((cells, cells), np.nan)
    frames, positions = [], []
    for row, y in enumerate(ys):
        for column, x in enumerate(xs):
            if not geometry.is_free(x, y, layout.door_y):
                continue
            free[row, column] = True
            path[row, column] = path_length((x, y), layout.goal, layout.door_y, geometry)
            frames.append(env.frame_at((x, y)))
            positions.append((row, column))
    scores = np.full((cells, cells), np.nan)
    values = objective(np.stack(frames), goal_frame)
    for (row, column), value in zip(positions, values):
        scores[row, column] = value
    at_goal = free & (path < geometry.goal_radius)
    return Landscape(xs, ys, scores, path, free, at_goal)


def _best_neighbour(land: Landscape, row: int, column: int) -> tuple[int, int] | None:
    best, best_score = None, -np.inf
    for dx, dy in NEIGHBOURS:
        r, c = row + dy, column + dx
        if (
            0 <= r < land.free.shape[0]
            and 0 <= c < land.free.shape[1]
            and land.free[r, c]
            and land.scores[r, c] > best_score
        ):
            best, best_score = (r, c), land.scores[r, c]
    return best


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties given the mean of the ranks they span (as Spearman's coefficient needs)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    unique, inverse = np.unique(values, return_inverse=True)
    return np.bincount(inverse, weights=ranks)[inverse] / np.bincount(inverse)[inverse]


def rank_correlation(land: Landscape) -> float:
    """Spearman correlation of the scores with minus the path length over free cells."""
    scores, path = land.scores[land.free], land.path_lengths[land.free]
    a, b = _average_ranks(scores), _average_ranks(-path)
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def descent_accuracy(land: Landscape) -> float:
    """Share of free cells outside the goal whose best-scored neighbour is nearer the goal along the path."""
    hits, total = 0, 0
    for row, column in zip(*np.nonzero(land.free & ~land.at_goal)):
        neighbour = _best_neighbour(land, row, column)
        if neighbour is None:
            continue
        total += 1
        hits += land.path_lengths[neighbour] < land.path_lengths[row, column]
    return hits / max(total, 1)


def greedy_success(land: Landscape, max_moves: int | None = None) -> float:
    """Share of free cells from which following the best-scored neighbour reaches the goal region
    (stopping at a local optimum: a cell that scores at least as well as all its neighbours)."""
    max_moves = max_moves or 4 * land.free.shape[0]
    reached, total = 0, 0
    for start in zip(*np.nonzero(land.free & ~land.at_goal)):
        total += 1
        cell = start
        for _ in range(max_moves):
            if land.at_goal[cell]:
                break
            neighbour = _best_neighbour(land, *cell)
            if neighbour is None or land.scores[neighbour] <= land.scores[cell]:
                break
            cell = neighbour
        reached += bool(land.at_goal[cell])
    return reached / max(total, 1)


def summarise(land: Landscape) -> dict[str, float]:
    return {
        "rank_correlation": round(rank_correlation(land), 4),
        "descent_accuracy": round(descent_accuracy(land), 4),
        "greedy_success": round(greedy_success(land), 4),
    }


def random_layouts(env: TwoRooms, count: int, seed: int) -> list[Layout]:
    """Layouts as the evaluation draws them (random door, goal in a room), from env resets."""
    layouts = []
    for index in range(count):
        env.reset(seed=seed + index)
        layouts.append(Layout(door_y=float(env.door_y), goal=tuple(float(v) for v in env.goal_position)))
    return layouts


LAYOUT_FACTORS = ("agent_x", "agent_y", "goal_x", "goal_y", "door_y")


def layout_probe(embeddings: np.ndarray, factors: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Held-out R^2 of a least-squares linear probe from embeddings (N, D) to layout factors (N, 5).

    What a representation does not encode, no objective on it can use: a door position with a low
    R^2 means that no value on these embeddings can tell which way round the wall is shorter."""
    order = np.random.default_rng(seed).permutation(len(embeddings))
    train, test = order[: len(order) * 3 // 4], order[len(order) * 3 // 4 :]
    features = np.concatenate([np.ones((len(embeddings), 1)), embeddings], 1)
    weights, *_ = np.linalg.lstsq(features[train], factors[train], rcond=None)
    residual = ((features[test] @ weights - factors[test]) ** 2).mean(0)
    variance = factors[test].var(0)
    return {
        name: round(float(1.0 - r / v), 4) if v > 0 else float("nan")
        for name, r, v in zip(LAYOUT_FACTORS, residual, variance)
    }


Encoder = Callable[[np.ndarray], torch.Tensor]
"""frames (N, H, W, 3) uint8 -> embeddings (N, D)."""
Rollout = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(start embeddings (N, D), actions (N, L, A)) -> predicted embeddings (N, L, D)."""


WALL_PROBE_BINS = (0.0, 0.2, 0.35, 0.5, 1.0)
"""Distances of a blocked push's height from the door's centre that `wall_probe` reports apart
(the door's opening reaches 0.1 from its centre; the probe skips the pushes that graze its edges,
within 0.12)."""


@torch.no_grad()
def wall_probe(
    encode: Encoder,
    rollout: Rollout,
    env: TwoRooms,
    layouts: list[Layout],
    steps: int = 8,
    heights: int = 12,
    start_x: float = 0.32,
) -> dict[str, Any]:
    """Does the model's predictor know where the wall stops the agent?

    From `start_x` in the left room, at `heights` heights per layout, the agent is pushed right
    (action (1, 0)) for `steps` steps, far enough to cross the wall if nothing stopped it. The
    environment gives the true end (stuck at the wall, or through the door); the wall-blind end is
    the start moved by the full push. For the pushes the wall blocks, `blocked_predicted_stopped`
    is the share whose predicted end embedding lies nearer the true (stopped) one than the
    wall-blind one: 1 for a predictor that models the wall, 0 for one that walks through it.
    Errors are ||predicted - true|| over ||wall-blind - start||, the embedding length of the push.
    A planner on a predictor near 0 believes the straight line to a goal behind the wall works.
    `stopped_by_door_distance` breaks the share down by how far the push's height lies from the
    door's centre (bins of WALL_PROBE_BINS): a predictor with a blurred door lets the pushes near it through."""
    geometry = env.geometry
    blocked, open_errors, stopped, door_distances = [], [], [], []
    for layout in layouts:
        env.reset(seed=0)
        snapshot = env.get_state()
        low, high = geometry.corridor(layout.door_y)
        for y in np.linspace(geometry.lowest + 0.02, geometry.highest - 0.02, heights):
            clear = low + 0.01 < y < high - 0.01
            if not clear and low - 0.05 <= y <= high + 0.05:
                continue  # grazing the door's edge: neither clearly blocked nor clearly open
            env.set_state(
                {**snapshot, "agent": [start_x, float(y)], "goal": list(layout.goal), "door_y": layout.door_y}
            )
            start_frame = env.frame_at((start_x, y))
            for _ in range(steps):
                true_frame, *_ = env.step(np.array([1.0, 0.0], np.float32))
            blind_frame = env.frame_at((start_x + steps * geometry.max_step, y))
            z = encode(np.stack([start_frame, true_frame, blind_frame]))
            predicted = rollout(z[:1], torch.tensor([[[1.0, 0.0]] * steps], dtype=z.dtype, device=z.device))[0, -1]
            push = float((z[2] - z[0]).norm()) + 1e-8
            error_true, error_blind = float((predicted - z[1]).norm()), float((predicted - z[2]).norm())
            if clear:
                open_errors.append(error_true / push)
            else:
                blocked.append(error_true / push)
                stopped.append(error_true < error_blind)
                door_distances.append(abs(float(y) - layout.door_y))
    if not blocked or not open_errors:
        raise ValueError("the probe found no blocked or no open pushes; use more heights or layouts")
    stopped, door_distances = np.array(stopped), np.array(door_distances)
    by_door_distance = {}
    for low, high in zip(WALL_PROBE_BINS, WALL_PROBE_BINS[1:]):
        inside = (door_distances >= low) & (door_distances < high)
        if inside.any():
            by_door_distance[f"{low:g}-{high:g}"] = {
                "pushes": int(inside.sum()),
                "stopped": round(float(stopped[inside].mean()), 4),
            }
    return {
        "blocked_pushes": len(blocked),
        "blocked_predicted_stopped": round(float(np.mean(stopped)), 4),
        "blocked_error": round(float(np.median(blocked)), 4),
        "open_pushes": len(open_errors),
        "open_error": round(float(np.median(open_errors)), 4),
        "stopped_by_door_distance": by_door_distance,
    }


def wall_blocked_share(episodes, geometry, min_push: float = 0.4, near_wall: float = 0.1) -> dict[str, float]:
    """How often recorded data shows the wall stopping the agent: the share of transitions whose
    horizontal push (|action x| >= `min_push`) moved the agent less than 30 % of it, within
    `near_wall` of the wall. Episodes are dicts with "image" (T, H, W, 3) and "action" (T, 2), row t
    holding the action that led to frame t (the dataset convention). What the data never show,
    a predictor cannot learn."""

    blocked = total = 0
    for episode in episodes:
        x = np.array([positions_from_frame(frame)[0] for frame in episode["image"]])
        push = episode["action"][1:, 0] * geometry.max_step
        moved = np.diff(x)
        total += len(moved)
        blocked += int(
            np.sum(
                (np.abs(episode["action"][1:, 0]) >= min_push)
                & (np.abs(moved) < 0.3 * np.abs(push))
                & (np.abs(x[:-1] - MIDDLE_X) < near_wall)
            )
        )
    return {"transitions": total, "blocked": blocked, "blocked_share": round(blocked / max(total, 1), 4)}


# ------------------------------------------------------------------------------- JEPA objectives


def jepa_objectives(agent) -> dict[str, Objective]:
    """The two planning objectives of a JEPAPlannerAgent, scored on real frames (no prediction)."""

    @torch.no_grad()
    def embeddings(frames: np.ndarray, goal_frame: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        agent.model.eval()
        return agent.model.encode(frames), agent.model.encode(goal_frame[None])[0]

    def distance(frames, goal_frame):
        z, g = embeddings(frames, goal_frame)
        return (-(z - g).pow(2).sum(-1)).cpu().numpy()

    @torch.no_grad()
    def value(frames, goal_frame):
        z, g = embeddings(frames, goal_frame)
        return agent.value(z, g.expand_as(z)).cpu().numpy()

    return {"distance": distance, "value": value}


def with_scores(land: Landscape, scores: np.ndarray) -> Landscape:
    """The same grid with other scores (Y, X), e.g. minus the path length: the perfect objective."""
    return Landscape(land.xs, land.ys, np.where(land.free, scores, np.nan), land.path_lengths, land.free, land.at_goal)


def straight_line_scores(land: Landscape, layout: Layout) -> np.ndarray:
    """Minus the straight-line distance to the goal, blind to the wall (what a naive embedding distance approximates)."""
    x, y = np.meshgrid(land.xs, land.ys)
    return -np.hypot(x - layout.goal[0], y - layout.goal[1])


def dataset_probe(agent, dataset, max_frames: int = 4000) -> dict[str, float]:
    """layout_probe on the recorded frames (evenly thinned to at most max_frames), labels read off by colour."""

    frames = np.concatenate([episode[agent.model.observation_key] for episode in dataset.episodes()])
    frames = frames[:: max(1, len(frames) // max_frames)]
    with torch.no_grad():
        agent.model.eval()
        embeddings = (
            torch.cat([agent.model.encode(frames[i : i + 512]) for i in range(0, len(frames), 512)]).cpu().numpy()
        )
    return layout_probe(embeddings, np.stack([positions_from_frame(frame) for frame in frames]))


def plot_landscapes(rows: list[tuple[str, Landscape]], path: Path) -> Path:
    """One panel per (title, landscape): the scores as a heat map, wall cells blank, goal marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2), squeeze=False)
    for axis, (title, land) in zip(axes[0], rows):
        extent = (land.xs[0], land.xs[-1], land.ys[0], land.ys[-1])
        axis.imshow(np.ma.masked_invalid(land.scores), origin="lower", extent=extent, cmap="viridis")
        goal_rows, goal_columns = np.nonzero(land.at_goal)
        axis.scatter(land.xs[goal_columns], land.ys[goal_rows], s=6, c="red")
        axis.set_title(title, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


@dataclass(frozen=True)
class LandscapeArguments:
    """Score the planning objectives of a trained `wmlab pipeline jepa` run on real frames."""

    out: Path = Path("runs/jepa")
    """The pipeline's run directory (with seed<k>/checkpoint.*)."""
    seed: int = 0
    """Which trained seed to score."""
    checkpoint: str = "checkpoint"
    """Which of the seed's saved agents: "checkpoint", or "checkpoint-refined" (after --refine-steps)."""
    layouts: int = 20
    """Random layouts (door, goal) to average over."""
    cells: int = 24
    """Grid cells per side."""
    figure: Path | None = None
    """Where to draw the first layout's landscapes (default OUT/landscape-seedK-CHECKPOINT.png, beside the .json)."""


def landscape_command(argv: list[str]) -> int:
    """`wmlab pipeline jepa-landscape --out RUN [--layouts N] ...`"""

    arguments = tyro.cli(LandscapeArguments, args=argv, prog="wmlab pipeline jepa-landscape")
    if not (arguments.out / "results.json").exists():
        raise SystemExit(
            f"{arguments.out / 'results.json'} not found: point --out at a finished `wmlab pipeline jepa` run"
        )
    pipeline_arguments = saved_arguments(arguments.out)
    dataset = load_dataset(arguments.out / "dataset", seed=0)
    agent = JEPAPlannerAgent(pipeline_arguments.agent, dataset.observation_space, dataset.action_space)
    agent.load_state_dict(load_state(arguments.out / f"seed{arguments.seed}", arguments.checkpoint))
    env = TwoRooms(observation="pixels")
    objectives = jepa_objectives(agent)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in objectives}
    first: list[tuple[str, Landscape]] = []
    for index, layout in enumerate(random_layouts(env, arguments.layouts, seed=100_000)):
        for name, objective in objectives.items():
            land = landscape(env, layout, objective, arguments.cells)
            results[name].append(summarise(land))
            if index == 0:
                first.append((name, land))
        if index == 0:
            first.insert(0, ("minus the path length", with_scores(first[0][1], -first[0][1].path_lengths)))
    probe = dataset_probe(agent, dataset)
    agent.model.eval()
    wall = wall_probe(
        agent.model.encode, agent.model.rollout, env, random_layouts(env, arguments.layouts, seed=100_000)
    )
    wall["data"] = wall_blocked_share(dataset.episodes(), env.geometry)
    summary = {
        name: {metric: round(float(np.mean([row[metric] for row in rows])), 4) for metric in rows[0]}
        for name, rows in results.items()
    }
    (arguments.out / f"landscape-seed{arguments.seed}-{arguments.checkpoint}.json").write_text(
        json.dumps({"summary": summary, "layout_probe_r2": probe, "wall_probe": wall, "per_layout": results}, indent=1)
    )
    figure = plot_landscapes(
        first, arguments.figure or arguments.out / f"landscape-seed{arguments.seed}-{arguments.checkpoint}.png"
    )
    for name, metrics in summary.items():
        print(f"{name}: " + ", ".join(f"{metric} {value:.3f}" for metric, value in metrics.items()))
    print(
        "linear probe R^2 of the layout from the embeddings: "
        + ", ".join(f"{name} {value:.3f}" for name, value in probe.items())
    )
    print(
        f"predictor at the wall: {wall['blocked_predicted_stopped']:.0%} of {wall['blocked_pushes']} blocked pushes predicted as stopped"
        f" (median error {wall['blocked_error']:.2f} of a push; open pushes {wall['open_error']:.2f});"
        f" the data show the wall stopping the agent in {wall['data']['blocked']} of {wall['data']['transitions']} transitions"
    )
    print(
        "  blocked pushes predicted as stopped, by distance of the height from the door's centre: "
        + ", ".join(
            f"{band} {row['stopped']:.0%} of {row['pushes']}" for band, row in wall["stopped_by_door_distance"].items()
        )
    )
    print(f"figure: {figure}")
    return 0
