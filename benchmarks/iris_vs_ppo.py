"""Portfolio project 2 (issue 26): sample-efficiency curves of mini-IRIS against model-free PPO.

PPO is stable-baselines3's (`pip install 'wmlab[baselines]'`), not a wmlab copy. It trains on
wmlab's own environment (`wmlab.envs.adapter.make_env`), so both methods see the same frames:

    # PPO, one JSON curve per seed (DIR/ppo_s0.json ...)
    python benchmarks/iris_vs_ppo.py ppo --env minatar:breakout --env-kwargs '{"size": 16}' \
        --steps 20000 --seeds 0 1 2 --eval-every 2000 --eval-episodes 20 --out runs/iris_vs_ppo
    # a uniform-random policy on the same evaluation episodes (DIR/random_s0.json ...)
    python benchmarks/iris_vs_ppo.py random --env minatar:breakout --env-kwargs '{"size": 16}' \
        --seeds 0 1 2 --eval-episodes 20 --out runs/iris_vs_ppo
    # IRIS: the eval/return rows of wmlab run directories' metrics.jsonl (DIR/iris_s0.json ...)
    python benchmarks/iris_vs_ppo.py iris runs/iris_s0 runs/iris_s1 runs/iris_s2 --out runs/iris_vs_ppo
    # the figure (mean +- standard error over seeds against environment steps) and the finding
    python benchmarks/iris_vs_ppo.py plot runs/iris_vs_ppo --figure docs/figures/iris_vs_ppo.png

The policy network. SB3's CnnPolicy (NatureCNN: 8x8 stride 4, 4x4 stride 2, 3x3 stride 1) does
not accept 16 x 16 frames: after the first two layers 3 x 3 cells are left for a 4 x 4 kernel, and
torch refuses. `--policy cnn` (the default) is therefore SB3's ActorCriticPolicy with a small
features extractor of our own, the network of the MinAtar paper's baselines (Young & Tian 2019,
arXiv:1903.03176, section 4: one 3x3 convolution with 16 channels and stride 1, then a 128-unit
fully connected layer, ReLUs), followed by SB3's default 64-64 policy and value heads;
`--policy mlp` is SB3's MlpPolicy on the flattened frame. Frames enter as (C, H, W) uint8 and SB3
scales them to [0, 1].

PPO's settings are SB3's defaults except two, changed for the small budget (both are options):
n_steps 2048 -> 256 (20,000 steps then give 78 policy updates instead of 9) and ent_coef 0 -> 0.01
(the value of the RL Baselines3 Zoo's Atari setting, against early collapse to one action). One
environment, batch 64, 10 epochs, learning rate 3e-4, gamma 0.99, GAE lambda 0.95, clip 0.2.

Evaluation. Every --eval-every environment steps (and at step 0) the greedy policy plays
--eval-episodes episodes through wmlab's own evaluator (wmlab.eval.returns.evaluate_agent, the one
wmlab's training loop uses) on environments seeded --eval-seed, --eval-seed + 1, ...: the same
episodes at every evaluation point, for every seed and for the random policy. A wmlab run
(IRIS) evaluates on its loop's seeds instead (10,000,000 + 1000 k + seed at its k-th evaluation),
so its curve is read as it was logged.

A curve is a JSON file: method, env, env_kwargs, seed, steps, returns (mean over the episodes),
return_std (over the episodes), episodes, baseline (true for a policy that does not learn: drawn
as a horizontal line), plus how it was made.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wmlab.core.errors import RunDirectoryError, WmlabError
from wmlab.envs.adapter import make_env
from wmlab.eval.returns import evaluate_agent

#: How each method is named in the figure and the finding.
LABELS = {"ppo": "PPO", "iris": "IRIS", "iris-cpu": "IRIS", "random": "uniform random"}


# ---------------------------------------------------------------------------------------------
# Curves: reading, writing, summarising
# ---------------------------------------------------------------------------------------------


def write_curve(out: Path, curve: dict[str, Any]) -> Path:
    """Write `curve` as OUT/<method>_s<seed>.json and return the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{curve['method']}_s{curve['seed']}.json"
    path.write_text(json.dumps(curve, indent=1) + "\n")
    return path


def read_run_curve(run_dir: str | Path, method: str | None = None) -> dict[str, Any]:
    """The eval/return rows of a wmlab run directory's metrics.jsonl as a curve (a resumed run's
    repeated step keeps its last row). Reads JSON only; the run's config.json names the env and
    the seed."""
    run = Path(run_dir)
    metrics_path, config_path = run / "metrics.jsonl", run / "config.json"
    for path in (metrics_path, config_path):
        if not path.is_file():
            raise RunDirectoryError(f"{run} is not a wmlab run directory: {path.name} is missing")
    config = json.loads(config_path.read_text())
    by_step: dict[int, tuple[float, float]] = {}
    for number, line in enumerate(metrics_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise RunDirectoryError(f"{metrics_path}, line {number}, is not JSON") from None
        if "eval/return" in row:
            by_step[int(row["step"])] = (float(row["eval/return"]), float(row.get("eval/return_std", math.nan)))
    if not by_step:
        raise RunDirectoryError(f"{metrics_path} holds no eval/return rows: the run never evaluated")
    steps = sorted(by_step)
    train = config.get("train", {})
    return {
        "method": method or str(config.get("algorithm", "iris")),
        "env": config.get("env"),
        "env_kwargs": config.get("env_kwargs") or {},
        "seed": int(train.get("seed", 0)),
        "steps": steps,
        "returns": [by_step[step][0] for step in steps],
        "return_std": [by_step[step][1] for step in steps],
        "episodes": int(train.get("eval_episodes", 0)),
        "baseline": False,
        "source": str(run),
        "eval_seeds": "wmlab's training loop: 10,000,000 + 1000 k + seed at the k-th evaluation",
    }


def load_curves(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Curves from JSON files and from folders of them (every *.json directly inside)."""
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            files.extend(sorted(entry.glob("*.json")))
        elif entry.is_file():
            files.append(entry)
        else:
            raise WmlabError(f"no curve file or folder at {entry}")
    if not files:
        raise WmlabError(f"no curve (*.json) found in {', '.join(map(str, paths))}")
    curves = []
    for path in files:
        curve = json.loads(path.read_text())
        missing = {"method", "seed", "steps", "returns"} - set(curve)
        if missing:
            raise WmlabError(f"{path} is not a curve: it lacks {sorted(missing)}")
        if len(curve["steps"]) != len(curve["returns"]) or not curve["steps"]:
            raise WmlabError(f"{path}: steps and returns differ in length or are empty")
        curves.append(curve)
    environments = {(curve.get("env"), json.dumps(curve.get("env_kwargs") or {}, sort_keys=True)) for curve in curves}
    if len(environments) > 1:
        raise WmlabError(f"the curves come from different environments {sorted(environments)}: compare one at a time")
    return curves


def summarise(curves: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: the steps that every seed evaluated, mean and standard error over seeds of the
    per-seed mean return there (s.e. = sample standard deviation / sqrt(seeds); 0 for one seed)."""
    methods: dict[str, list[dict[str, Any]]] = {}
    for curve in curves:
        methods.setdefault(curve["method"], []).append(curve)
    summary = {}
    for method, runs in methods.items():
        seeds = [run["seed"] for run in runs]
        if len(set(seeds)) != len(seeds):
            raise WmlabError(f"method {method!r} has seed(s) twice: {sorted(seeds)}")
        common = sorted(set.intersection(*(set(run["steps"]) for run in runs)))
        if not common:
            raise WmlabError(f"the seeds of {method!r} share no evaluation step")
        table = np.array([[dict(zip(run["steps"], run["returns"]))[step] for step in common] for run in runs])
        error = table.std(axis=0, ddof=1) / math.sqrt(len(runs)) if len(runs) > 1 else np.zeros(len(common))
        summary[method] = {
            "label": LABELS.get(method, method),
            "baseline": bool(runs[0].get("baseline", False)),
            "seeds": sorted(seeds),
            "episodes": runs[0].get("episodes"),
            "steps": common,
            "mean": table.mean(axis=0).tolist(),
            "standard_error": error.tolist(),
        }
    return summary


def _value(entry: dict[str, Any], step: int | None = None) -> tuple[float, float, int]:
    """(mean, standard error, step) of a summary entry at `step` (its last step when None)."""
    index = len(entry["steps"]) - 1 if step is None else entry["steps"].index(step)
    return entry["mean"][index], entry["standard_error"][index], entry["steps"][index]


def _quote(entry: dict[str, Any], step: int | None = None) -> str:
    mean, error, _ = _value(entry, step)
    return f"{mean:.2f} ± {error:.2f}"


def finding(summary: dict[str, dict[str, Any]], env: str | None = None) -> str:
    """One sentence from the numbers: the learning methods' returns at the last environment step
    they all evaluated (or each at its own last step if they share none), mean ± s.e. over
    seeds, which is higher or that they are within one standard error of each other (the
    intervals mean ± s.e. overlap), and where the non-learning baselines stand."""
    learners = {name: entry for name, entry in summary.items() if not entry["baseline"]}
    baselines = {name: entry for name, entry in summary.items() if entry["baseline"]}
    if not learners:
        raise WmlabError("no learning method among the curves (only baselines): nothing to compare")
    where = f" on {env}" if env else ""
    seeds = sorted({len(entry["seeds"]) for entry in learners.values()})
    seeds_text = "/".join(map(str, seeds)) + (" seed" if seeds == [1] else " seeds")
    shared = sorted(set.intersection(*(set(entry["steps"]) for entry in learners.values())))
    step = shared[-1] if shared else None
    ranked = sorted(learners.values(), key=lambda entry: _value(entry, step)[0], reverse=True)
    if step is not None:
        head = f"At {step:,} environment steps{where}, "
        parts = [f"{entry['label']} returns {_quote(entry, step)}" for entry in ranked]
    else:
        head = f"At their last evaluations{where}, "
        parts = [f"{entry['label']} returns {_quote(entry)} at {_value(entry)[2]:,} steps" for entry in ranked]
    sentence = head + " and ".join(parts) + f" (mean ± s.e. over {seeds_text})"
    best_mean, best_error, _ = _value(ranked[0], step)
    if len(ranked) > 1:
        second_mean, second_error, _ = _value(ranked[1], step)
        if min(len(ranked[0]["seeds"]), len(ranked[1]["seeds"])) < 2:
            sentence += f": {ranked[0]['label']} is higher on one seed, which gives no standard error to weigh it"
        elif best_mean - best_error > second_mean + second_error:
            sentence += f": {ranked[0]['label']} is higher"
        else:
            sentence += f": {ranked[0]['label']} and {ranked[1]['label']} are within one standard error of each other"
    for entry in baselines.values():
        mean, error, _ = _value(entry)
        if len(ranked) == 1:
            if best_mean - best_error > mean + error:
                relation = "above"
            elif best_mean + best_error < mean - error:
                relation = "below"
            else:
                relation = "within one standard error of"
            sentence += f", {relation} {entry['label']}'s {mean:.2f} ± {error:.2f}"
        else:
            sentence += f"; {entry['label']} returns {mean:.2f} ± {error:.2f}"
    return sentence + "."


def _legend(entry: dict[str, Any]) -> str:
    seeds = len(entry["seeds"])
    return f"{entry['label']} ({seeds} seed{'s' if seeds > 1 else ''}, {entry['episodes']} episodes each)"


def plot(summary: dict[str, dict[str, Any]], figure: str | Path, title: str, note: str | None = None) -> None:
    """Mean ± s.e. over seeds against environment steps; baselines as horizontal bands; `note`
    written in the corner (e.g. which method's curves are missing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6.4, 4.2))
    learners = [entry for entry in summary.values() if not entry["baseline"]]
    right = max((entry["steps"][-1] for entry in learners), default=1)
    for entry in learners:
        steps, mean, error = (np.asarray(entry[key], float) for key in ("steps", "mean", "standard_error"))
        label = _legend(entry)
        (line,) = axis.plot(steps, mean, marker="o", markersize=3, label=label)
        axis.fill_between(steps, mean - error, mean + error, color=line.get_color(), alpha=0.2)
    for entry in summary.values():
        if entry["baseline"]:
            mean, error, _ = _value(entry)
            label = _legend(entry)
            line = axis.axhline(mean, color="gray", linestyle="--", label=label)
            axis.axhspan(mean - error, mean + error, color=line.get_color(), alpha=0.15)
    axis.set_xlim(0, right)
    axis.set_xlabel("environment steps")
    axis.set_ylabel("evaluation return (each method's test policy)")
    axis.set_title(title, fontsize=9)
    axis.legend(loc="best", fontsize=8)
    if note:
        axis.text(0.99, 0.02, note, transform=axis.transAxes, ha="right", va="bottom", fontsize=8, color="dimgray")
    axis.grid(alpha=0.3)
    fig.tight_layout()
    Path(figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Policies: SB3's PPO and uniform random, evaluated by wmlab's evaluator
# ---------------------------------------------------------------------------------------------


def frame_env(env_id: str, env_kwargs: dict[str, Any], seed: int | None = None):
    """wmlab's environment with its `image` observation alone, as (C, H, W) uint8 for SB3 (channels
    first, so that SB3 neither transposes it nor guesses which axis holds the channels)."""
    import gymnasium
    from gymnasium import spaces

    class ImageOnly(gymnasium.ObservationWrapper):
        def __init__(self, env: gymnasium.Env):
            super().__init__(env)
            if "image" not in env.observation_space.spaces:
                raise WmlabError(f"{env_id} has no image observation (keys: {list(env.observation_space.spaces)})")
            height, width, channels = env.observation_space["image"].shape
            self.observation_space = spaces.Box(0, 255, (channels, height, width), np.uint8)

        def observation(self, observation: dict[str, np.ndarray]) -> np.ndarray:
            return np.ascontiguousarray(observation["image"].transpose(2, 0, 1))

    return ImageOnly(make_env(env_id, seed=seed, **env_kwargs))


class PolicyAgent:
    """wmlab's agent interface (`act(observation, state, explore)`) around an SB3 model."""

    def __init__(self, model: Any):
        self.model = model

    def act(self, observation: dict[str, np.ndarray], state: Any, explore: bool = False):
        image = observation["image"].transpose(0, 3, 1, 2)  # (1, H, W, C) -> (1, C, H, W)
        action, _ = self.model.predict(image, deterministic=not explore)
        return np.asarray(action).reshape(1), state


class RandomAgent:
    """Uniform over the Discrete action space, from its own seeded generator."""

    def __init__(self, actions: int, seed: int):
        self.actions = actions
        self.random = np.random.default_rng(seed)

    def act(self, observation: dict[str, np.ndarray], state: Any, explore: bool = False):
        return np.array([self.random.integers(self.actions)]), state


def minatar_extractor():
    """The MinAtar paper's network (Young & Tian 2019, section 4) as an SB3 features extractor:
    Conv(C -> 16, 3x3, stride 1) + ReLU, flatten, Linear(-> 128) + ReLU."""
    import torch
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class MinAtarNetwork(BaseFeaturesExtractor):
        def __init__(self, observation_space, features_dim: int = 128):
            super().__init__(observation_space, features_dim)
            channels, height, width = observation_space.shape
            self.network = torch.nn.Sequential(
                torch.nn.Conv2d(channels, 16, kernel_size=3, stride=1),
                torch.nn.ReLU(),
                torch.nn.Flatten(),
                torch.nn.Linear(16 * (height - 2) * (width - 2), features_dim),
                torch.nn.ReLU(),
            )

        def forward(self, observations):  # (B, C, H, W) in [0, 1] -> (B, 128)
            return self.network(observations)

    return MinAtarNetwork


def evaluate(agent: Any, args: argparse.Namespace) -> dict[str, float]:
    return evaluate_agent(agent, args.env, episodes=args.eval_episodes, seed=args.eval_seed, env_kwargs=args.env_kwargs)


def _curve_header(method: str, seed: int, args: argparse.Namespace, baseline: bool) -> dict[str, Any]:
    return {
        "method": method,
        "env": args.env,
        "env_kwargs": args.env_kwargs,
        "seed": seed,
        "steps": [],
        "returns": [],
        "return_std": [],
        "lengths": [],
        "episodes": args.eval_episodes,
        "baseline": baseline,
        "eval_seeds": f"{args.eval_seed} .. {args.eval_seed + args.eval_episodes - 1}, the same at every evaluation",
        "load_average_at_start": os.getloadavg()[0],
        "torch_threads": 1,
    }


def _record(curve: dict[str, Any], step: int, metrics: dict[str, float]) -> None:
    curve["steps"].append(int(step))
    curve["returns"].append(metrics["eval/return"])
    curve["return_std"].append(metrics["eval/return_std"])
    curve["lengths"].append(metrics["eval/length"])


def train_ppo(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train SB3's PPO for args.steps environment steps, evaluating every args.eval_every."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(1)
    curve = _curve_header("ppo", seed, args, baseline=False)
    settings = {
        "n_steps": args.n_steps,
        "batch_size": args.batch_size,
        "n_epochs": args.n_epochs,
        "learning_rate": args.learning_rate,
        "ent_coef": args.ent_coef,
    }
    if args.policy == "cnn":
        policy, policy_kwargs = "CnnPolicy", {"features_extractor_class": minatar_extractor()}
    else:
        policy, policy_kwargs = "MlpPolicy", {}
    curve["ppo"] = {"policy": args.policy, **settings, "library": "stable-baselines3 " + _sb3_version()}
    started = time.perf_counter()

    class Evaluations(BaseCallback):
        def _on_training_start(self) -> None:
            _record(curve, 0, evaluate(PolicyAgent(self.model), args))

        def _on_step(self) -> bool:
            if self.num_timesteps % args.eval_every == 0:
                metrics = evaluate(PolicyAgent(self.model), args)
                _record(curve, self.num_timesteps, metrics)
                print(
                    f"ppo seed {seed}: step {self.num_timesteps}, return {metrics['eval/return']:.2f} "
                    f"± {metrics['eval/return_std']:.2f} (std), {time.perf_counter() - started:.0f} s",
                    flush=True,
                )
            return True

    env = frame_env(args.env, args.env_kwargs)
    model = PPO(policy, env, seed=seed, device="cpu", verbose=0, policy_kwargs=policy_kwargs, **settings)
    model.learn(total_timesteps=args.steps, callback=Evaluations())
    env.close()
    curve["wall_seconds"] = time.perf_counter() - started
    return curve


def _sb3_version() -> str:
    import stable_baselines3

    return stable_baselines3.__version__


def ppo_command(args: argparse.Namespace) -> int:
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        raise SystemExit("PPO comes from stable-baselines3: pip install 'wmlab[baselines]'") from None
    if args.eval_every <= 0 or args.steps <= 0:
        raise WmlabError(f"--steps and --eval-every must be positive, got {args.steps} and {args.eval_every}")
    for seed in args.seeds:
        print(f"wrote {write_curve(args.out, train_ppo(seed, args))}", flush=True)
    return 0


def random_command(args: argparse.Namespace) -> int:
    actions = frame_env(args.env, args.env_kwargs).action_space
    if not hasattr(actions, "n"):
        raise WmlabError(f"the random baseline needs a Discrete action space, {args.env} has {actions}")
    for seed in args.seeds:
        curve = _curve_header("random", seed, args, baseline=True)
        metrics = evaluate(RandomAgent(int(actions.n), seed), args)
        _record(curve, 0, metrics)
        print(f"random seed {seed}: return {metrics['eval/return']:.2f} ± {metrics['eval/return_std']:.2f} (std)")
        print(f"wrote {write_curve(args.out, curve)}", flush=True)
    return 0


def iris_command(args: argparse.Namespace) -> int:
    for run in args.runs:
        print(f"wrote {write_curve(args.out, read_run_curve(run, args.method))}")
    return 0


def plot_command(args: argparse.Namespace) -> int:
    curves = load_curves(args.curves)
    summary = summarise(curves)
    env = curves[0].get("env")
    kwargs = curves[0].get("env_kwargs") or {}
    env_text = env + (f" {json.dumps(kwargs)}" if kwargs else "") if env else None
    for entry in summary.values():
        rows = ", ".join(
            f"{step}: {mean:.2f} ± {error:.2f}"
            for step, mean, error in zip(entry["steps"], entry["mean"], entry["standard_error"])
        )
        print(f"{entry['label']} (seeds {entry['seeds']}): {rows}")
    title = f"{env_text}\nmean ± s.e. over seeds" if env_text else "evaluation return: mean ± s.e. over seeds"
    plot(summary, args.figure, title=title, note=args.note)
    sentence = finding(summary, env)
    if args.summary:
        Path(args.summary).write_text(json.dumps({"finding": sentence, "methods": summary}, indent=1) + "\n")
    print(f"figure: {args.figure}")
    print(sentence)
    return 0


def _environment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="minatar:breakout", help="wmlab environment id")
    parser.add_argument("--env-kwargs", type=json.loads, default={}, help="JSON, e.g. '{\"size\": 16}'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--eval-seed", type=int, default=10_000_000, help="first evaluation episode's seed")
    parser.add_argument("--out", type=Path, required=True, help="folder of the JSON curves")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ppo = commands.add_parser("ppo", help="train and evaluate stable-baselines3's PPO")
    _environment_arguments(ppo)
    ppo.add_argument("--steps", type=int, default=20_000, help="environment steps per seed")
    ppo.add_argument("--eval-every", type=int, default=2_000, help="environment steps between evaluations")
    ppo.add_argument("--policy", choices=("cnn", "mlp"), default="cnn", help="see the module docstring")
    ppo.add_argument("--n-steps", type=int, default=256, help="rollout length (SB3's default: 2048)")
    ppo.add_argument("--batch-size", type=int, default=64, help="(SB3's default)")
    ppo.add_argument("--n-epochs", type=int, default=10, help="(SB3's default)")
    ppo.add_argument("--learning-rate", type=float, default=3e-4, help="(SB3's default)")
    ppo.add_argument("--ent-coef", type=float, default=0.01, help="entropy bonus (SB3's default: 0)")
    random = commands.add_parser("random", help="evaluate a uniform-random policy")
    _environment_arguments(random)
    iris = commands.add_parser("iris", help="read wmlab run directories' eval/return into curves")
    iris.add_argument("runs", nargs="+", help="wmlab run directories")
    iris.add_argument("--method", default="iris", help="method name of the curves (default: iris)")
    iris.add_argument("--out", type=Path, required=True)
    figure = commands.add_parser("plot", help="the figure and the one-sentence finding")
    figure.add_argument("curves", nargs="+", help="curve files or folders of them")
    figure.add_argument("--figure", default="docs/figures/iris_vs_ppo.png")
    figure.add_argument("--note", help="a line written on the figure, e.g. 'IRIS: missing'")
    figure.add_argument("--summary", help="also write the summarised numbers and the finding as JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    command = {"ppo": ppo_command, "random": random_command, "iris": iris_command, "plot": plot_command}
    try:
        return command[args.command](args)
    except WmlabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
