"""The world-model evaluation suites of `wmlab eval RUN_DIR --suite ...`: data, JSON and figures
around the measurements of `wmlab.eval.world_model_metrics`.

    RUN_DIR/eval/<suite>.json           the numbers
    RUN_DIR/figures/eval_<suite>.png    the figure (the HTML report embeds figures/*.png)

Data. The suites read real windows from the run's replay episodes (RUN_DIR/replay/rank0/episodes,
one npz file per completed episode), cut within episodes so that no window crosses a reset;
where the replay holds none long enough (or `source="env"`), they collect fresh episodes with the
run's agent in the real environment. The "dream" suite always collects fresh episodes: it asks
how the agent's own policy is predicted.

Shape legend: B sequences, T steps, L open-loop steps.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from wmlab.core.errors import RunDirectoryError, WmlabError
from wmlab.core.types import Batch, replay_step
from wmlab.data.dataset import load_dataset
from wmlab.data.replay import read_episode
from wmlab.envs.adapter import make_env
from wmlab.eval import world_model_metrics as metrics
from wmlab.eval.returns import unbatch_action
from wmlab.runs.directory import is_offline_run, load_trained_agent, load_trained_model

SUITES = ("horizon", "calibration", "bound", "dream", "controllability")
ALL_SUITES = ("returns", *SUITES, "all")


@dataclass(frozen=True)
class SuiteSettings:
    """How much data the suites use; the defaults take seconds to a minute on a CPU for small models."""

    sequences: int = 16
    """Windows of real data (B)."""
    context: int = 5
    """Real steps filtered before the open-loop rollout (k)."""
    horizon: int = 50
    """Longest open-loop horizon; windows are context + horizon steps, clipped to the episodes."""
    samples: int = 16
    """Stochastic rollouts per start for calibration (K)."""
    episodes: int = 4
    """Fresh episodes to collect when the replay cannot serve (and for the dream suite)."""
    seed: int = 0
    """Seed of window sampling, model sampling and collection."""
    threshold: float = 0.2
    """Relative gap at which the dream suite says imagination and reality part."""
    source: str = "replay"
    """"replay" (fall back to fresh episodes when it is too short) or "env" (always fresh episodes)."""


# ----------------------------------------------------------------------------------------------
# Data


def world_model_of(agent: Any) -> Any:
    """The world model an agent plans or learns with (`world_model`, else `model`)."""
    for name in ("world_model", "model"):
        model = getattr(agent, name, None)
        if model is not None and callable(getattr(model, "imagine", None)):
            return model
    raise WmlabError(
        f"{type(agent).__name__} exposes no world model (an attribute `world_model` or `model` with `imagine`)"
    )


def replay_episodes(run_dir: str | Path, rank: int = 0) -> list[dict[str, np.ndarray]]:
    """The completed episodes stored in RUN_DIR/replay/rank<rank>/episodes, oldest first, read with
    the replay's checks (an unreadable, pickled or malformed file raises RunDirectoryError naming it)."""

    directory = Path(run_dir) / "replay" / f"rank{rank}" / "episodes"
    return [read_episode(path) for path in sorted(directory.glob("*.npz"))]


def collect_episodes(
    agent: Any,
    env_id: str,
    env_kwargs: dict | None,
    episodes: int,
    seed: int,
    max_steps: int = 1000,
    explore: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Episodes of the agent in the real environment, stored as replay stores them (step t:
    obs_t, the action that led to it (zeros at the first step), the reward on arrival, flags)."""
    env = make_env(env_id, **(env_kwargs or {}))
    space = env.action_space
    collected = []
    try:
        for episode in range(episodes):
            observation, _ = env.reset(seed=seed + episode)
            steps = [
                replay_step(
                    observation,
                    np.zeros(space.shape, dtype=space.dtype if space.shape else np.int64),
                    0.0,
                    True,
                    False,
                    False,
                )
            ]
            agent_state = None
            for _ in range(max_steps):
                batched = {key: np.asarray(value)[None] for key, value in observation.items()}
                batched["is_first"] = np.array([len(steps) == 1])
                action, agent_state = agent.act(batched, agent_state, explore=explore)
                action = unbatch_action(action)
                observation, reward, terminated, truncated, _ = env.step(action)
                steps.append(replay_step(observation, action, reward, False, terminated or truncated, terminated))
                if terminated or truncated:
                    break
            collected.append({key: np.stack([step[key] for step in steps]) for key in steps[0]})
    finally:
        env.close()
    return collected


def episode_windows(episodes: Sequence[dict[str, np.ndarray]], count: int, length: int, seed: int = 0) -> Batch:
    """`count` windows of `length` steps, each inside one episode (episodes long enough are drawn
    in proportion to their number of windows, so every window is equally likely)."""
    lengths = np.array([len(episode["reward"]) for episode in episodes])
    starts_per_episode = np.clip(lengths - length + 1, 0, None)
    if starts_per_episode.sum() == 0:
        raise WmlabError(f"no episode holds {length} steps (the longest holds {lengths.max(initial=0)})")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(int(starts_per_episode.sum()), size=count, replace=count > starts_per_episode.sum())
    offsets = np.cumsum(starts_per_episode) - starts_per_episode
    windows = []
    for position in chosen:
        index = int(np.searchsorted(offsets, position, side="right") - 1)
        start = int(position - offsets[index])
        windows.append({key: value[start : start + length] for key, value in episodes[index].items()})
    stacked = {key: np.stack([window[key] for window in windows]) for key in windows[0]}
    flags = ("action", "reward", "is_first", "is_last", "is_terminal")
    return Batch(
        obs={key: value for key, value in stacked.items() if key not in flags},
        action=stacked["action"],
        reward=stacked["reward"],
        is_first=stacked["is_first"],
        is_last=stacked["is_last"],
        is_terminal=stacked["is_terminal"],
    )


def windows_for(episodes: Sequence[dict[str, np.ndarray]], settings: SuiteSettings) -> Batch:
    """Windows of context + horizon steps, shortened to the longest episode when needed."""
    longest = max((len(episode["reward"]) for episode in episodes), default=0)
    length = min(settings.context + settings.horizon, longest)
    if length <= settings.context:
        raise WmlabError(
            f"the episodes hold at most {longest} steps, too few for {settings.context} context steps and an open-loop step"
        )
    return episode_windows(episodes, settings.sequences, length, settings.seed)


# ----------------------------------------------------------------------------------------------
# Running suites on a run


def run_suites(
    run_dir: str | Path, suites: Sequence[str], settings: SuiteSettings = SuiteSettings()
) -> dict[str, dict]:
    """Run the named world-model suites on a trained run; writes RUN_DIR/eval/<suite>.json and
    RUN_DIR/figures/eval_<suite>.png and returns {suite: result}."""
    run_dir = Path(run_dir)
    unknown = [suite for suite in suites if suite not in SUITES]
    if unknown:
        raise WmlabError(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(ALL_SUITES)}")
    offline = is_offline_run(run_dir)
    if offline:  # a world model fitted to a dataset: its data are the dataset's episodes
        spec, model = load_trained_model(run_dir)
        agent = None
    else:
        spec, agent = load_trained_agent(run_dir)
        model = world_model_of(agent)
    if isinstance(model, torch.nn.Module):
        model.eval()
    name = f"{run_dir.name}: {spec.model if offline else spec.algorithm} ({type(model).__name__})"

    def fresh():
        if agent is None:
            raise WmlabError(
                f"{run_dir} holds a world model trained offline, with no agent to collect fresh episodes "
                "(the dream suite and --source env need one): evaluate it on its dataset (--source replay)"
            )
        return collect_episodes(agent, spec.env, spec.env_kwargs, settings.episodes, settings.seed + 10_000)

    if settings.source != "replay":
        stored = []
    elif offline:
        stored = list(load_dataset(spec.dataset, with_actions=spec.with_actions).episodes())
    else:
        stored = replay_episodes(run_dir)
    usable = [episode for episode in stored if len(episode["reward"]) > settings.context]
    data = windows_for(usable or fresh(), settings) if any(suite != "dream" for suite in suites) else None
    results = {}
    for suite in suites:
        batch = windows_for(fresh(), settings) if suite == "dream" else data
        result = evaluate_suite(model, batch, suite, settings)
        result["run"] = str(run_dir)
        result["label"] = name
        write_suite(run_dir, suite, result)
        results[suite] = result
    return results


def evaluate_suite(model: Any, batch: Batch, suite: str, settings: SuiteSettings = SuiteSettings()) -> dict:
    """One suite's result for a model and real windows (no files)."""
    context = settings.context
    if suite == "horizon":
        return metrics.horizon_errors(model, batch, context, seed=settings.seed)
    if suite == "calibration":
        return metrics.calibration(model, batch, context, samples=settings.samples, seed=settings.seed)
    if suite == "bound":
        measured = metrics.horizon_errors(model, batch, context, seed=settings.seed)["open_loop"].get("latent/distance")
        steps = len(measured) if measured else np.shape(batch.reward)[1] - context
        return metrics.error_bound(model, batch, horizons=steps, seed=settings.seed, measured=measured)
    if suite == "dream":
        return metrics.dream_against_reality(model, batch, context, threshold=settings.threshold, seed=settings.seed)
    if suite == "controllability":
        return metrics.controllability(model, batch, context, seed=settings.seed)
    raise WmlabError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")


def write_suite(run_dir: str | Path, suite: str, result: dict) -> list[Path]:
    """RUN_DIR/eval/<suite>.json and, where there is something to draw, RUN_DIR/figures/eval_<suite>.png."""
    run_dir = Path(run_dir)
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    path = run_dir / "eval" / f"{suite}.json"
    path.write_text(json.dumps(result, indent=2))
    written = [path]
    figure = plot_suite(suite, [result], run_dir / "figures" / f"eval_{suite}.png")
    if figure is not None:
        written.append(figure)
    return written


def compare_runs(
    run_dirs: Sequence[str | Path],
    suite: str = "horizon",
    settings: SuiteSettings = SuiteSettings(),
    out: str | Path | None = None,
) -> Path:
    """Overlay one suite's results of several runs in one figure. A run's stored
    RUN_DIR/eval/<suite>.json is reused; a run without one is evaluated first. The figure goes to
    `out` (default: the first run's figures/eval_<suite>_compare.png) with a JSON of the inputs."""
    if suite not in ("horizon", "bound", "dream", "controllability", "calibration"):
        raise WmlabError(f"unknown suite {suite!r} for --compare")
    results = []
    for run_dir in run_dirs:
        stored = Path(run_dir) / "eval" / f"{suite}.json"
        results.append(
            json.loads(stored.read_text()) if stored.is_file() else run_suites(run_dir, [suite], settings)[suite]
        )
    out = Path(out) if out else Path(run_dirs[0]) / "figures" / f"eval_{suite}_compare.png"
    plot_suite(suite, results, out)
    out.with_suffix(".json").write_text(
        json.dumps({"suite": suite, "runs": [str(run) for run in run_dirs], "results": results}, indent=2)
    )
    return out


# ----------------------------------------------------------------------------------------------
# Figures


def _label(result: dict) -> str:
    return result.get("label") or result.get("model", "model")


def plot_suite(suite: str, results: Sequence[dict], path: str | Path) -> Path | None:
    """Draw one suite's figure for one or several results (overlaid); None when nothing is drawable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawers = {
        "horizon": _draw_horizon,
        "calibration": _single_axis(
            _draw_calibration,
            "calibratable",
            ("nominal interval p", "fraction of real futures inside", "Reliability of predictive intervals"),
            figsize=(4.5, 4.2),
        ),
        "bound": _single_axis(
            _draw_bound, "defined", ("horizon H", "latent error", "Compounding-error bound against measured error")
        ),
        "dream": _single_axis(
            _draw_dream, None, ("horizon H", "return to H", "Dream against reality (dotted: where they part)")
        ),
        "controllability": _single_axis(
            _draw_controllability,
            "defined",
            ("step t", "delta PSNR (dB)", "Controllability: real minus random actions"),
        ),
    }
    figure = drawers[suite](plt, results)
    if figure is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _draw_horizon(plt, results):
    # One panel per metric family (pixel MSE, PSNR, SSIM, latent distance), every model overlaid;
    # filtering dashed, so the gap between the lines is what the open loop costs.
    names = sorted({name for result in results for name in result["open_loop"]})
    if not names:
        return None
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for axis, name in zip(axes[0], names):
        for index, result in enumerate(results):
            color = f"C{index}"
            values = result["open_loop"].get(name)
            if values is None:
                continue
            steps = np.arange(1, len(values) + 1)
            axis.plot(steps, np.array(values, dtype=float), color=color, label=f"{_label(result)} open loop")
            for key, linestyle in (("filtering", "--"), ("repeat_last_frame", ":")):
                compared = result.get(key, {}).get(name)
                if compared is not None:
                    label = f"{_label(result)} {key.replace('_', ' ')}"
                    axis.plot(steps, np.array(compared, dtype=float), color=color, linestyle=linestyle, label=label)
        axis.set_xlabel("horizon (steps after the context)")
        axis.set_title(name)
        if name.endswith("mse"):
            _log_scale_if_wide(axis)
    axes[0, 0].legend(fontsize=7)
    figure.suptitle("Error against horizon")
    return figure


def _log_scale_if_wide(axis, decades: float = 1.0) -> None:
    """A log y axis where the drawn values are positive and span more than `decades` decades
    (a log axis within one decade shows no labelled tick); else the linear axis stays."""
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in axis.get_lines()] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and np.log10(values.max() / values.min()) > decades:
        axis.set_yscale("log")


def _single_axis(draw, drawable_key: str | None, labels: tuple[str, str, str], figsize=(5.5, 3.6)):
    """A suite's drawer of one axis: `draw(axis, drawable)` plots the results whose `drawable_key`
    is true (all when None) and the axis gets `labels` (x label, y label, title) and a legend; the
    drawer returns None when no result can be drawn."""

    def drawer(plt, results):
        drawable = [result for result in results if drawable_key is None or result.get(drawable_key)]
        if not drawable:
            return None
        figure, axis = plt.subplots(figsize=figsize)
        draw(axis, drawable)
        xlabel, ylabel, title = labels
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=7)
        axis.set_title(title)
        return figure

    return drawer


def _draw_calibration(axis, drawable: list[dict]) -> None:
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for index, result in enumerate(drawable):
        levels = result["levels"]
        for shade, horizon in enumerate(result["horizons"]):
            observed = [result["coverage"][str(level)][horizon - 1] for level in levels]
            axis.plot(
                levels,
                observed,
                marker="o",
                color=f"C{index}",
                alpha=0.35 + 0.65 * (shade + 1) / len(result["horizons"]),
                label=f"{_label(result)} h={horizon}",
            )
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)


def _draw_bound(axis, drawable: list[dict]) -> None:
    for index, result in enumerate(drawable):
        bound = np.array(result["bound"], dtype=float)
        steps = np.arange(1, len(bound) + 1)
        axis.plot(
            steps,
            bound,
            color=f"C{index}",
            linestyle="--",
            label=f"{_label(result)} eps (L^H-1)/(L-1), L={result['lipschitz']:.3g}",
        )
        if result.get("measured"):
            axis.plot(
                steps[: len(result["measured"])],
                np.array(result["measured"], dtype=float),
                color=f"C{index}",
                label=f"{_label(result)} measured",
            )
    _log_scale_if_wide(axis)


def _draw_dream(axis, drawable: list[dict]) -> None:
    for index, result in enumerate(drawable):
        steps = np.arange(1, len(result["real_return"]) + 1)
        axis.plot(steps, result["real_return"], color=f"C{index}", label=f"{_label(result)} real")
        axis.plot(
            steps, result["predicted_return"], color=f"C{index}", linestyle="--", label=f"{_label(result)} imagined"
        )
        if result.get("parting_horizon"):
            axis.axvline(result["parting_horizon"], color=f"C{index}", linestyle=":", alpha=0.7)


def _draw_controllability(axis, drawable: list[dict]) -> None:
    for index, result in enumerate(drawable):
        curves = sorted(result["delta_psnr"].items())
        if "latent_delta_db" in result:
            curves.append(("latent", result["latent_delta_db"]))
        for style, (key, values) in zip(("-", "--", ":", "-."), curves):
            axis.plot(
                np.arange(1, len(values) + 1),
                np.array(values, dtype=float),
                color=f"C{index}",
                linestyle=style,
                label=f"{_label(result)} {key}",
            )
    axis.axhline(0, color="grey", linewidth=0.8)


def suite_summary(suite: str, result: dict) -> str:
    """A suite's headline numbers in one line (the terminal and the report); the JSON holds the rest."""
    if suite == "horizon":
        baseline = result["at_horizon"].get("repeat_last_frame", {})
        parts = []
        for name, values in result["at_horizon"]["open_loop"].items():
            text = ", ".join(f"h{h}={value:.4g}" for h, value in values.items() if value is not None)
            if name in baseline and name.endswith("moving_mse"):
                text += (
                    " (repeat last frame: "
                    + ", ".join(f"h{h}={value:.4g}" for h, value in baseline[name].items() if value is not None)
                    + ")"
                )
            parts.append(f"{name}: {text}")
        return "; ".join(parts) or "; ".join(result["notes"])
    if suite == "calibration":
        if not result.get("calibratable"):
            return f"cannot be calibrated: {result['reason']}"
        return f"mean |observed - p| = {result['mean_calibration_error']:.3f}" + (
            " (over-confident)" if result["overconfident"] else ""
        )
    if suite == "bound":
        return (
            f"eps = {result['one_step_error']:.4g}, L = {result['lipschitz']:.4g}"
            if result.get("defined")
            else result["reason"]
        )
    if suite == "dream":
        if result["parting_horizon"]:
            return f"imagination and reality part at horizon {result['parting_horizon']} (relative gap > {result['threshold']})"
        return f"imagination and reality stay within a relative gap of {result['threshold']}"
    if suite == "controllability":
        if not result.get("defined"):
            return result["reason"]
        parts = [f"mean delta-PSNR[{key}] = {value:.3f} dB" for key, value in result["mean_delta_psnr"].items()]
        if "mean_latent_delta_db" in result:
            parts.append(f"mean latent delta = {result['mean_latent_delta_db']:.3f} dB")
        return ", ".join(parts)
    return ""


def stored_results(run_dir: str | Path) -> dict[str, dict]:
    """The suites' JSON files already in RUN_DIR/eval (for the report)."""
    directory = Path(run_dir) / "eval"
    if not directory.is_dir():
        return {}
    found = {}
    for suite in SUITES:
        path = directory / f"{suite}.json"
        if path.is_file():
            try:
                found[suite] = json.loads(path.read_text())
            except ValueError as error:
                raise RunDirectoryError(f"{path} is not valid JSON ({error})") from error
    return found


def report_section(run_dir: str | Path) -> str | None:
    """An HTML table of the suites' headline numbers for the run report (the figures themselves
    are embedded from figures/ by the report); None when no suite has run.
    Add it with `wmlab.report.html.register_section("World-model evaluation", report_section)`."""
    results = stored_results(run_dir)
    if not results:
        return None
    rows = [
        f"<tr><td>{html.escape(suite)}</td><td>{html.escape(suite_summary(suite, result))}</td></tr>"
        for suite, result in results.items()
    ]
    moving = moving_pixel_table(results["horizon"]) if "horizon" in results else ""
    return "<table><tr><th>suite</th><th>result</th></tr>" + "".join(rows) + "</table>" + moving


def moving_pixel_table(result: dict) -> str:
    """HTML: the open-loop error over the moving pixels at each horizon beside the baseline that
    repeats the last real frame, and the whole-frame error (empty when no image key was measured)."""

    at = result.get("at_horizon", {})
    model, baseline = at.get("open_loop", {}), at.get("repeat_last_frame", {})
    keys = [name.removesuffix("/moving_mse") for name in model if name.endswith("/moving_mse") and name in baseline]
    if not keys:
        return ""

    def cell(value: float | None) -> str:
        return "—" if value is None else f"{value:.4g}"

    parts = []
    for key in keys:
        rows = []
        for horizon in map(str, result["horizons"]):
            imagined, repeated = model[f"{key}/moving_mse"].get(horizon), baseline[f"{key}/moving_mse"].get(horizon)
            ratio = imagined / repeated if imagined is not None and repeated else None
            whole, whole_repeated = (
                model.get(f"{key}/mse", {}).get(horizon),
                baseline.get(f"{key}/mse", {}).get(horizon),
            )
            rows.append(
                f"<tr><td>{horizon}</td><td>{cell(imagined)}</td><td>{cell(repeated)}</td><td>{cell(ratio)}</td><td>{cell(whole)}</td><td>{cell(whole_repeated)}</td></tr>"
            )
        parts.append(
            f"<h4>{html.escape(key)}: error over the pixels that move (those that differ from the last real context frame)</h4>"
            "<table><tr><th>horizon</th><th>moving-pixel MSE, imagined</th><th>moving-pixel MSE, repeat last real frame</th>"
            "<th>ratio (drawing the background alone scores about 0.5 once the moving object is clear of where it was)</th><th>whole-frame MSE, imagined</th><th>whole-frame MSE, repeat last frame</th></tr>"
            + "".join(rows)
            + "</table>"
        )
    return "".join(parts)
