"""Representation space against pixel space on two-rooms: a JEPA world model and an RSSM with a
pixel decoder, trained on the same reward-free episodes for the same compute budget.

`wmlab pipeline jepa-vs-rssm --out runs/jepa-vs-rssm`:

1. record (or reuse) the JEPA pipeline's offline dataset in OUT/dataset, and a held-out set of
   episodes from another seed in OUT/heldout;
2. train the JEPA world model for `--train-steps` steps and time it; train the RSSM (DreamerV3's
   world model at size1m, reward loss off since the data are reward-free) on windows of the same
   batch size and length for the same CPU time (`--rssm-steps` fixes its steps instead);
3. latent error against horizon on held-out windows for both (`latent/normalised_mse` of
   wmlab.eval.world_model_metrics.horizon_errors: squared error over the latents' variance, so the
   two latent spaces compare; predicting the mean latent scores 1), and the RSSM's pixel error;
   both curves on one figure, OUT/latent_error.png;
4. goal-reaching by MPC, the same MPPI settings for both, each plan scored at the end of its
   horizon: JEPA minimises the distance of the predicted embedding to the goal image's embedding;
   the RSSM minimises the squared pixel error of its decoded prediction to the goal image
   (planning in pixel space). JEPA is also evaluated with the distance summed over the horizon.

Results in OUT/comparison.json and a markdown table printed (and written with --markdown).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import tyro
from gymnasium import spaces

from wmlab.agents.jepa_planner.agent import JEPAPlannerAgent
from wmlab.agents.jepa_planner.config import JEPAPlannerConfig, default_mppi
from wmlab.core.progress import StageProgress
from wmlab.core.seeding import seeded
from wmlab.core.serialization import load_state, save_state
from wmlab.core.types import Batch, Observation, Transition
from wmlab.data.dataset import load_dataset, record_dataset
from wmlab.eval.suites import episode_windows
from wmlab.eval.world_model_metrics import horizon_errors
from wmlab.models.jepa import JEPAConfig
from wmlab.models.rssm import RSSM, SIZES, RSSMConfig, RSSMLossScales, State
from wmlab.pipelines.jepa.pipeline import evaluate, exploration_policy, no_progress
from wmlab.planners.mppi import MPPI, MPPIConfig


def reward_free_rssm() -> RSSMConfig:
    """DreamerV3's RSSM at size1m with the reward term off: the offline episodes carry no reward
    the comparison may use (JEPA never sees one either)."""
    return RSSMConfig(size=SIZES["size1m"], loss_scales=RSSMLossScales(reward=0.0))


@dataclass(frozen=True)
class RSSMGoalConfig:
    """An RSSM with a pixel decoder, planned toward a goal image in pixel space."""

    model: RSSMConfig = field(default_factory=reward_free_rssm)
    planner: MPPIConfig = field(default_factory=default_mppi)
    """The same MPPI as the JEPA planner's by default."""
    objective: str = "pixels"
    """"pixels": minimise the mean squared error between the decoded predicted frames and the goal
    image, summed over the horizon (the pixel-space counterpart of JEPA's distance objective)."""
    terminal_only: bool = True
    """Score only the last predicted frame: decoding every candidate's every frame costs 8 times
    as much (about 15 s per plan at size1m on one shared core, against 2 s)."""
    replan_every: int = 4
    learning_rate: float = 3e-4
    """Adam step size (the JEPA planner's)."""
    gradient_clip: float = 1000.0
    """Global gradient norm clip (DreamerV3's world model)."""

    def __post_init__(self):
        if self.objective != "pixels":
            raise ValueError(f"the RSSM goal planner's objective is 'pixels', got {self.objective!r}")
        if not 1 <= self.replan_every <= self.planner.horizon:
            raise ValueError(f"replan_every must be in 1..horizon ({self.planner.horizon}), got {self.replan_every}")


class RSSMGoalAgent:
    """Filters each frame into the RSSM's posterior and, every `replan_every` steps, plans with
    MPPI toward the goal image set by `set_goal`. One environment (B = 1). The recurrent state
    between `act` calls: {"deter", "stoch", "action" (the last action as the model encodes it),
    "plan", "step"}."""

    learns_from: Literal["transitions", "replay"] = "replay"

    def __init__(
        self,
        config: RSSMGoalConfig,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        seed: int = 0,
        device: str = "cpu",
    ):
        self.config = config
        self.action_space = action_space
        self.device = torch.device(device)
        with seeded(seed):
            self.model = RSSM(config.model, observation_space, action_space).to(self.device)
        if tuple(self.model.layout.image_keys) != ("image",) or self.model.layout.vector_keys:
            raise ValueError(
                f"the RSSM goal planner plans toward an 'image' goal only, got keys {(*self.model.layout.image_keys, *self.model.layout.vector_keys)}"
            )
        self.model.generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        self.planner = MPPI(config.planner, seed=seed, device=self.device)
        self.goal_image: torch.Tensor | None = None

    def set_goal(self, goal_observation: np.ndarray) -> None:
        """The goal image (H, W, C) uint8, e.g. TwoRooms.goal_observation(); call at every episode start."""
        self.goal_image = torch.as_tensor(np.asarray(goal_observation), device=self.device).float() / 255.0
        self.planner.reset()

    @torch.no_grad()
    def rollout(self, state: State, actions: torch.Tensor) -> torch.Tensor:
        """The planner's rollout function: a filtered state (1, ...), candidates (N, L, A) -> minus
        the pixel MSE of the decoded predictions to the goal image, summed over the horizon (N,)."""
        if self.goal_image is None:
            raise RuntimeError("call set_goal(goal_observation) before act(): the planner needs a goal")
        N = actions.shape[0]
        starts = {name: value.expand(N, -1) for name, value in state.items()}
        trajectory = self.model.imagine(starts, actions.to(self.device))
        states = trajectory.states
        if self.config.terminal_only:
            states = {name: value[:, -1:] for name, value in states.items()}
        frames = self.model.decode(states)["image"]  # (N, L or 1, H, W, C) in [0, 1]
        return -(frames - self.goal_image).pow(2).mean((-3, -2, -1)).sum(1)

    @torch.no_grad()
    def act(self, obs: Observation, state: Any, explore: bool) -> tuple[np.ndarray, Any]:
        model = self.model
        first = state is None or bool(np.asarray(obs.get("is_first", [False])).reshape(-1)[0])
        if first:
            self.planner.reset()
            state = {
                **model.initial(1),
                "action": torch.zeros(1, model.action_size, device=self.device),
                "plan": None,
                "step": 0,
            }
        latent = model.filter_step(
            obs, state["action"], torch.tensor([first]), {"deter": state["deter"], "stoch": state["stoch"]}
        )
        if state["plan"] is None or state["step"] % self.config.replan_every == 0:
            shift = 1 if state["plan"] is None else self.config.replan_every  # steps executed since the last plan
            state["plan"] = self.planner.plan(self.rollout, latent, self.action_space, explore=explore, shift=shift)
        action = state["plan"][state["step"] % self.config.replan_every].reshape(1, -1)
        state = {
            **latent,
            "action": model.encode_action(action.to(self.device), ("B",), {"B": 1}),
            "plan": state["plan"],
            "step": state["step"] + 1,
        }
        return action.cpu().numpy().astype(np.float32), state

    def observe(self, transition: Transition) -> dict[str, float]:
        return {}

    def update(self, batch: Batch) -> dict[str, float]:
        """One Adam step on the RSSM loss for B windows of T steps."""
        self.model.train()
        loss, metrics, _ = self.model.loss_and_posterior(batch.to_torch(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics["wm/grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.gradient_clip)
        self.optimizer.step()
        names = list(metrics)
        return dict(zip(names, torch.stack([metrics[name].detach().float() for name in names]).tolist()))

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])


@dataclass(frozen=True)
class ComparisonArguments:
    """JEPA (representation space) against an RSSM with a pixel decoder, same data and budget."""

    out: Path = Path("runs/jepa-vs-rssm")
    """Directory for the datasets, checkpoints, figure and results (a JEPA pipeline's --out works:
    its dataset is reused)."""
    episodes: int = 300
    """Training episodes to record (when OUT/dataset does not exist yet)."""
    heldout_episodes: int = 30
    """Held-out episodes (another recording seed) for the error-against-horizon curves."""
    episode_steps: int = 100
    """Truncate recorded episodes after this many steps."""
    train_steps: int = 1500
    """JEPA gradient steps; the RSSM gets the same CPU seconds."""
    rssm_steps: int | None = None
    """Fix the RSSM's gradient steps instead of matching JEPA's training time."""
    batch_size: int = 32
    """Windows per gradient step, for both models."""
    sequence_length: int = 8
    """Steps per window, for both models."""
    context: int = 5
    """Held-out windows: frames filtered before the open-loop rollout."""
    horizon: int = 15
    """Open-loop steps of the error-against-horizon curves."""
    heldout_windows: int = 64
    """Held-out windows the error-against-horizon curves average over."""
    eval_episodes: int = 50
    """Goal-reaching episodes per model (the RSSM decodes every candidate frame, so it plans slowly)."""
    eval_steps: int = 60
    """Steps allowed to reach the goal."""
    replan_every: int = 4
    """MPC: actions executed from each plan before planning again, for both planners."""
    seed: int = 0
    """Seed of both models' initialisation, their window sampling and the planners (the recordings
    use seeds 0 and 1)."""
    reuse_checkpoints: bool = False
    """Load OUT/comparison-seed<k>/{jepa,rssm} instead of training (evaluate only)."""
    quick: bool = False
    """Tiny sizes for a smoke test; numbers not comparable."""
    markdown: Path | None = None
    """Also write the comparison's table as Markdown here."""
    threads: int = 1
    """Torch CPU threads."""
    device: str = "cpu"
    """Torch device of both models."""
    progress: bool = True
    """Show progress bars."""


def train_for(
    agent: Any,
    dataset: Any,
    batch_size: int,
    length: int,
    steps: int | None,
    cpu_seconds: float | None,
    log: Path,
    name: str,
    advance: Callable[..., None] = no_progress,
) -> dict[str, Any]:
    """Gradient steps until `steps` are done or, when steps is None, this process has used
    `cpu_seconds` of CPU time. The budget is CPU time, not wall-clock, so that a machine shared
    with other jobs gives both models the same compute (at one torch thread the two coincide on
    an idle machine)."""
    started, cpu_started, step, metrics = time.perf_counter(), time.process_time(), 0, {}
    while (step < steps) if steps is not None else (time.process_time() - cpu_started < cpu_seconds):
        metrics = agent.update(dataset.sample(batch_size, length))
        step += 1
        advance(1, f"CPU {time.process_time() - cpu_started:.0f} s")
        if step % 100 == 0:
            with open(log, "a") as file:
                file.write(
                    json.dumps(
                        {
                            "model": name,
                            "step": step,
                            "cpu_seconds": round(time.process_time() - cpu_started, 1),
                            **{k: round(float(v), 5) for k, v in metrics.items()},
                        }
                    )
                    + "\n"
                )
    return {
        "steps": step,
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "final_metrics": {k: round(float(v), 5) for k, v in metrics.items()},
    }


def heldout_batch(directory: Path, windows: int, length: int, seed: int) -> Batch:
    """`windows` windows of `length` steps, each inside one held-out episode, drawn with a fixed seed."""

    return episode_windows(list(load_dataset(directory).episodes()), windows, length, seed=seed)


def plot_latent_errors(curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        axis.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
    axis.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="predicting the mean latent")
    axis.set_xlabel("open-loop horizon (steps)")
    axis.set_ylabel("latent squared error / latent variance")
    axis.set_title("Two-rooms, held-out episodes: error against horizon")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def markdown_table(results: dict[str, Any]) -> str:
    horizons = sorted({1, min(5, results["settings"]["horizon"]), results["settings"]["horizon"]})
    lines = [
        f"| model | plans in | training (steps / CPU s) | latent error h={' / '.join(map(str, horizons))} | success ({results['jepa']['planning']['episodes']} episodes) | mean length |",
        "|---|---|---|---|---|---|",
    ]
    for name, space in (
        ("jepa", "representation (distance to the goal embedding)"),
        ("rssm", "pixels (MSE of decoded frames to the goal image)"),
    ):
        entry = results[name]
        curve = entry["latent_normalised_mse"]
        points = " / ".join(f"{curve[h - 1]:.3f}" for h in horizons)
        lines.append(
            f"| {name.upper()} | {space} | {entry['training']['steps']} / {entry['training']['cpu_seconds']:.0f} | {points} | "
            f"{entry['planning']['success_rate']:.1%} | {entry['planning']['mean_length']:.1f} |"
        )
    summed = results["jepa"]["planning_summed_over_horizon"]
    lines.append(
        f"| JEPA, distance summed over the horizon | representation | (the same model) | | {summed['success_rate']:.1%} | {summed['mean_length']:.1f} |"
    )
    return "\n".join(lines) + "\n"


def run_comparison(arguments: ComparisonArguments) -> dict[str, Any]:
    torch.set_num_threads(arguments.threads)
    if arguments.quick:
        arguments = replace(
            arguments,
            episodes=6,
            heldout_episodes=3,
            episode_steps=20,
            train_steps=3,
            rssm_steps=3,
            batch_size=4,
            sequence_length=4,
            context=2,
            horizon=4,
            heldout_windows=4,
            eval_episodes=1,
            eval_steps=4,
        )
    out = arguments.out
    out.mkdir(parents=True, exist_ok=True)
    for directory, episodes, seed in (
        (out / "dataset", arguments.episodes, 0),
        (out / "heldout", arguments.heldout_episodes, 1),
    ):
        if not (directory / "manifest.json").exists():
            record_dataset(
                "two-rooms",
                exploration_policy(seed=seed),
                episodes,
                directory,
                seed=seed,
                max_episode_steps=arguments.episode_steps,
                progress=arguments.progress,
                policy_name="noisy-scripted-expert+random",
            )
    dataset = load_dataset(out / "dataset", seed=arguments.seed)
    spaces_ = (dataset.observation_space, dataset.action_space)

    torch.manual_seed(arguments.seed)
    jepa_model = JEPAConfig(momentum_steps=max(arguments.train_steps, 1))
    rssm_model = reward_free_rssm()
    planner = default_mppi()
    if arguments.quick:
        jepa_model = replace(jepa_model, embedding_size=8, encoder_depth=4, hidden_size=32)
        rssm_model = replace(rssm_model, size=SIZES["tiny"])
        planner = replace(planner, samples=8, elites=2, iterations=2, horizon=4)
    jepa = JEPAPlannerAgent(
        JEPAPlannerConfig(model=jepa_model, planner=planner, replan_every=arguments.replan_every),
        *spaces_,
        seed=arguments.seed,
        device=arguments.device,
    )
    rssm = RSSMGoalAgent(
        RSSMGoalConfig(model=rssm_model, planner=planner, replan_every=arguments.replan_every),
        *spaces_,
        seed=arguments.seed,
        device=arguments.device,
    )

    with StageProgress(arguments.progress) as bars:
        return compare(arguments, dataset, jepa, rssm, bars)


def compare(
    arguments: ComparisonArguments, dataset: Any, jepa: Any, rssm: RSSMGoalAgent, bars: StageProgress
) -> dict[str, Any]:
    """Train (or load) both models, measure them on the held-out windows, plan with both."""

    out, log = arguments.out, arguments.out / "comparison.jsonl"
    checkpoints = out / f"comparison-seed{arguments.seed}"
    trainings = {}
    if arguments.reuse_checkpoints:
        saved = json.loads((checkpoints / "training.json").read_text())
        for name, agent in (("jepa", jepa), ("rssm", rssm)):
            agent.load_state_dict(load_state(checkpoints / name, "checkpoint"))
            trainings[name] = saved[name]
    else:
        trainings["jepa"] = train_for(
            jepa,
            dataset,
            arguments.batch_size,
            arguments.sequence_length,
            arguments.train_steps,
            None,
            log,
            "jepa",
            bars.task("JEPA training", arguments.train_steps),
        )
        trainings["rssm"] = train_for(
            rssm,
            dataset,
            arguments.batch_size,
            arguments.sequence_length,
            arguments.rssm_steps,
            trainings["jepa"]["cpu_seconds"],
            log,
            "rssm",
            bars.task("RSSM training (same CPU time)", arguments.rssm_steps),
        )
        for name, agent in (("jepa", jepa), ("rssm", rssm)):
            save_state(agent.state_dict(), checkpoints / name, "checkpoint")
        (checkpoints / "training.json").write_text(json.dumps(trainings, indent=2))

    batch = heldout_batch(
        out / "heldout", arguments.heldout_windows, arguments.context + arguments.horizon, seed=arguments.seed
    )
    results: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(arguments).items()}
    }
    for name, agent in (("jepa", jepa), ("rssm", rssm)):
        agent.model.eval()
        errors = horizon_errors(
            agent.model, batch, context=arguments.context, horizons=(1, 5, arguments.horizon), seed=arguments.seed
        )
        results[name] = {
            "training": trainings[name],
            "parameters": sum(parameter.numel() for parameter in agent.model.parameters()),
            "latent_normalised_mse": errors["open_loop"]["latent/normalised_mse"],
            "open_loop": errors["open_loop"],
        }
    # Both score a plan by its last predicted step (the RSSM decodes one frame per candidate);
    # JEPA is also planned with its distance summed over the horizon, the JEPA pipeline's objective.
    episodes = arguments.eval_episodes

    def planning(agent, objective: str, title: str) -> dict:
        return evaluate(
            agent, objective, episodes, arguments.eval_steps, seed=100_000, log=log, advance=bars.task(title, episodes)
        )

    jepa.config = replace(jepa.config, distance_at_end=True)
    results["jepa"]["planning"] = planning(jepa, "distance", "JEPA planning")
    jepa.config = replace(jepa.config, distance_at_end=False)
    results["jepa"]["planning_summed_over_horizon"] = planning(jepa, "distance", "JEPA planning, distance summed")
    results["rssm"]["planning"] = planning(rssm, "pixels", "RSSM planning in pixels")
    plot_latent_errors(
        {
            f"JEPA ({results['jepa']['parameters'] / 1e6:.2f} M parameters)": results["jepa"]["latent_normalised_mse"],
            f"RSSM with pixel decoder ({results['rssm']['parameters'] / 1e6:.2f} M)": results["rssm"][
                "latent_normalised_mse"
            ],
        },
        out / "latent_error.png",
    )
    (out / "comparison.json").write_text(json.dumps(results, indent=2))
    return results


def comparison_command(argv: list[str]) -> int:
    """`wmlab pipeline jepa-vs-rssm [--out DIR] [--train-steps N] ...`"""

    arguments = tyro.cli(
        ComparisonArguments, args=argv, prog="wmlab pipeline jepa-vs-rssm", description=__doc__.splitlines()[0]
    )
    results = run_comparison(arguments)
    table = markdown_table(results)
    print(table)
    print(f"figure: {arguments.out / 'latent_error.png'}")
    if arguments.markdown is not None:
        arguments.markdown.write_text(table)
    return 0
