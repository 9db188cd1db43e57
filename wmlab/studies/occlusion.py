"""Partial observability: the same task with and without occlusion, and how the belief state's
error grows while the agent sees nothing.

Two Dreamer models are trained on the same seeds: one on the task as it is, one on the task with
occlusions (`wmlab.envs.occlusion`: in every step not already occluded an occlusion begins with
probability `start_probability` and blanks the observation for `length` steps). Afterwards both
are measured on the same evaluation seeds:

- returns: the greedy return without and with occlusion;
- belief error: episodes in which every occlusion lasts K steps (`--belief-horizon`). At step k
  of an occlusion (k = 1 .. K) the agent has just filtered its k-th blank observation; its
  belief — the posterior state (h, z) it acts from — is decoded and compared with the TRUE
  observation, which the wrapper keeps in info["true_observation"]: the mean squared error per
  element, averaged over every occluded step at that k (k = 0: the unoccluded steps, the
  filtering error). A reference line shows what the model would believe had it been told the
  frames are missing: the prior rolled open-loop from the last unoccluded posterior with the
  actions taken, decoded the same way.

The model trained without occlusion has never seen a blank frame, so its posterior takes the
blank for evidence; the one trained with occlusion may learn to rely on its dynamics instead.

    wmlab study occlusion --out studies/occlusion
    wmlab study occlusion --out studies/occlusion --length 20 --belief-horizon 30
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from wmlab.core.errors import WmlabError
from wmlab.envs.adapter import make_env
from wmlab.eval.returns import evaluate_agent, unbatch_action
from wmlab.runs.directory import load_trained_agent
from wmlab.studies.runner import (
    MEASUREMENT_SEED,
    RunResult,
    Study,
    StudyArguments,
    Variant,
    band,
    cached_measurement,
    counted,
    fmt,
    fmt_number,
    markdown_table,
    measured_phrase,
    pyplot,
    save_figure,
    spread,
    study_entry,
)

NAME = "occlusion"
DESCRIPTION = (
    "Partial observability: Dreamer trained with and without occluded (blanked) stretches of "
    "observations on the same seeds; measures the returns with and without occlusion and the "
    "belief state's reconstruction error against the true observation at k = 1..K steps into an "
    "occlusion."
)
OCCLUDED = "occluded"


@dataclass(frozen=True)
class OcclusionArguments(StudyArguments):
    """Arguments of `wmlab study occlusion`."""

    start_probability: float = 0.02
    """Training (occluded model) and the occluded return evaluation: chance, at every step not
    already occluded, that an occlusion begins."""
    length: int = 10
    """Training and the occluded return evaluation: blank steps per occlusion."""
    belief_horizon: int = 20
    """K: blank steps per occlusion in the belief measurement, which reports the error at k = 1..K."""
    belief_start_probability: float = 0.02
    """Belief measurement: chance, at every step not already occluded, that an occlusion begins."""
    belief_episodes: int | None = None
    """Episodes of the belief measurement per trained run (default 5; --quick: 1)."""
    robustness_episodes: int | None = None
    """Episodes per trained run and condition for the returns (default 10; --quick: 1)."""


def occluded_kwargs(study: Study, start_probability: float, length: int) -> dict:
    """--env-kwargs of the `occluded` environment around the study's task."""
    return {"env": study.env, "env_kwargs": study.env_kwargs, "start_probability": start_probability, "length": length}


def variants(study: Study, arguments: OcclusionArguments) -> list[Variant]:
    if not 0.0 < arguments.start_probability <= 1.0 or not 0.0 < arguments.belief_start_probability <= 1.0:
        raise WmlabError("--start-probability and --belief-start-probability must lie in (0, 1]")
    if arguments.length < 1 or arguments.belief_horizon < 1:
        raise WmlabError("--length and --belief-horizon must be at least 1")
    return [
        Variant("plain", "trained without occlusion"),
        Variant(
            "with-occlusion",
            "trained with occlusion",
            env=OCCLUDED,
            env_kwargs=occluded_kwargs(study, arguments.start_probability, arguments.length),
        ),
    ]


def _mse(predicted: torch.Tensor, real: np.ndarray, key: str) -> float:
    real = torch.as_tensor(np.asarray(real), dtype=torch.float32, device=predicted.device)
    if key == "image":
        real = real / 255.0
    return float((predicted.float() - real).pow(2).mean())


@torch.no_grad()
def belief_errors(
    agent: Any, env: str, env_kwargs: dict, start_probability: float, horizon: int, episodes: int, seed: int
) -> dict:
    """Reconstruction MSE of the agent's belief against the true observation at k = 0..K steps
    into an occlusion, with the greedy policy on `episodes` episodes of the task occluded for K
    steps at a time (see the module docstring). Returns {"k": [0..K], "count": [...],
    "posterior": {key: [...]}, "prior": {key: [None, ...]}} (None where no step had that k)."""
    model = agent.world_model
    keys = [key for key in ("vector", "image") if key in model.layout.vector_keys + model.layout.image_keys]
    if not keys:
        raise WmlabError("the belief error needs a model that decodes vector or image observations")
    occluded = make_env(OCCLUDED, env=env, env_kwargs=env_kwargs, start_probability=start_probability, length=horizon)
    posterior_sums = {key: np.zeros(horizon + 1) for key in keys}
    prior_sums = {key: np.zeros(horizon + 1) for key in keys}
    counts = np.zeros(horizon + 1, dtype=np.int64)
    try:
        for episode in range(episodes):
            observation, info = occluded.reset(seed=seed + episode)
            state, prior, is_first = None, None, True
            while True:
                batched = {key: value[None] for key, value in observation.items()}
                batched["is_first"] = np.array([is_first])
                action, new_state = agent.act(batched, state, explore=False)
                k = int(info["occlusion_step"])
                truth = info["true_observation"]
                belief = model.decode({"deter": new_state["deter"], "stoch": new_state["stoch"]})
                for key in keys:
                    posterior_sums[key][k] += _mse(belief[key][0], truth[key], key)
                if k > 0:
                    # The reference: the prior from the last unoccluded posterior, driven by the
                    # action that led to this observation (state["action"]).
                    if k == 1 or prior is None:
                        prior = {"deter": state["deter"], "stoch": state["stoch"]}
                    step = model.imagine_step(prior, state["action"], model.draw_noise((1,)))
                    prior = {"deter": step["deter"], "stoch": step["stoch"]}
                    imagined = model.decode(prior)
                    for key in keys:
                        prior_sums[key][k] += _mse(imagined[key][0], truth[key], key)
                counts[k] += 1
                observation, _, terminated, truncated, info = occluded.step(unbatch_action(action))
                state, is_first = new_state, False
                if terminated or truncated:
                    break
    finally:
        occluded.close()

    def mean(sums: np.ndarray, first: int) -> list[float | None]:
        return [
            None if index < first or counts[index] == 0 else float(sums[index] / counts[index])
            for index in range(horizon + 1)
        ]

    return {
        "k": list(range(horizon + 1)),
        "count": counts.tolist(),
        "posterior": {key: mean(posterior_sums[key], 0) for key in keys},
        "prior": {key: mean(prior_sums[key], 1) for key in keys},
    }


def measure(
    run: RunResult, study: Study, arguments: OcclusionArguments, return_episodes: int, belief_episodes: int
) -> dict:
    """Returns without and with occlusion, and the belief errors, of one trained run (cached)."""

    def compute() -> dict:
        _, agent = load_trained_agent(run.run_dir)
        nominal = evaluate_agent(
            agent, study.env, episodes=return_episodes, seed=MEASUREMENT_SEED, env_kwargs=study.env_kwargs
        )["eval/return"]
        occluded_kwargs_ = occluded_kwargs(study, arguments.start_probability, arguments.length)
        occluded = evaluate_agent(
            agent, OCCLUDED, episodes=return_episodes, seed=MEASUREMENT_SEED, env_kwargs=occluded_kwargs_
        )["eval/return"]
        beliefs = belief_errors(
            agent,
            study.env,
            study.env_kwargs,
            arguments.belief_start_probability,
            arguments.belief_horizon,
            belief_episodes,
            MEASUREMENT_SEED,
        )
        return {"return_without_occlusion": nominal, "return_with_occlusion": occluded, "belief": beliefs}

    key = {
        "env": study.env,
        "env_kwargs": study.env_kwargs,
        "start_probability": arguments.start_probability,
        "length": arguments.length,
        "belief_horizon": arguments.belief_horizon,
        "belief_start_probability": arguments.belief_start_probability,
        "return_episodes": return_episodes,
        "belief_episodes": belief_episodes,
        "seed": MEASUREMENT_SEED,
    }
    return cached_measurement(run.run_dir, "occlusion", key, compute)


def summarise(variant: Variant, runs: Sequence[RunResult], measured: Sequence[dict]) -> dict:
    keys = list(measured[0]["belief"]["posterior"])
    belief = {}
    for key in keys:
        belief[key] = {
            "posterior": band([m["belief"]["posterior"][key] for m in measured]),
            "prior": band([m["belief"]["prior"][key] for m in measured]),
        }
    return {
        "label": variant.label,
        "train_env": variant.env or "(the task itself)",
        "seeds": [run.seed for run in runs],
        "env_steps": [run.summary.get("env_steps") for run in runs],
        "per_seed": measured,
        "return_without_occlusion": spread([m["return_without_occlusion"] for m in measured]),
        "return_with_occlusion": spread([m["return_with_occlusion"] for m in measured]),
        "k": measured[0]["belief"]["k"],
        "belief": belief,
        "belief_steps_measured": [int(np.sum(m["belief"]["count"][1:])) for m in measured],
    }


def plotted_key(results: dict) -> str:
    keys = list(next(iter(results.values()))["belief"])
    return "vector" if "vector" in keys else keys[0]


def reported_steps(horizon: int) -> list[int]:
    """The steps into an occlusion that the sentence and the table report: 1, K / 2 and K."""
    return sorted({1, max(1, horizon // 2), horizon})


def comparison_sentence(results: dict, runs: dict[str, list[RunResult]], seeds: int, horizon: int) -> str:
    key = plotted_key(results)
    with_, without = results["with-occlusion"], results["plain"]

    def at(result: dict, line: str, k: int) -> str:
        values = result["belief"][key][line]["mean"]
        return fmt_number(values[k] if k < len(values) else None)

    ks = reported_steps(horizon)
    post = ", ".join(f"k={k}: {at(with_, 'posterior', k)} vs {at(without, 'posterior', k)}" for k in ks)
    prior = ", ".join(f"k={k}: {at(with_, 'prior', k)} vs {at(without, 'prior', k)}" for k in ks)
    return (
        f"{measured_phrase(runs, seeds)} (mean over seeds; model trained with occlusion vs without): "
        f"the belief's {key} reconstruction MSE against the true observation was {post} steps into an occlusion "
        f"(unoccluded filtering error k=0: {at(with_, 'posterior', 0)} vs {at(without, 'posterior', 0)}; "
        f"open-loop prior from the last unoccluded state: {prior}). "
        f"Returns with occlusion: {fmt(with_['return_with_occlusion'])} vs {fmt(without['return_with_occlusion'])}; "
        f"without occlusion: {fmt(with_['return_without_occlusion'])} vs {fmt(without['return_without_occlusion'])} (mean +- std over seeds)."
    )


def draw(results: dict, path) -> None:
    plt = pyplot()
    key = plotted_key(results)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    for index, result in enumerate(results.values()):
        color = f"C{index}"
        ks = np.asarray(result["k"])
        posterior = result["belief"][key]["posterior"]
        mean = np.array([np.nan if v is None else v for v in posterior["mean"]], dtype=float)
        low = np.array([np.nan if v is None else v for v in posterior["min"]], dtype=float)
        high = np.array([np.nan if v is None else v for v in posterior["max"]], dtype=float)
        left.plot(ks, mean, color=color, marker="o", markersize=3, label=f"{result['label']}: belief (posterior)")
        left.fill_between(ks, low, high, color=color, alpha=0.2, linewidth=0)
        prior = np.array([np.nan if v is None else v for v in result["belief"][key]["prior"]["mean"]], dtype=float)
        left.plot(ks, prior, color=color, linestyle="--", label=f"{result['label']}: open-loop prior (reference)")
    left.set_xlabel("k: steps since the occlusion began (0: unoccluded)")
    left.set_ylabel(f"{key} reconstruction MSE vs true observation")
    left.set_yscale("log")
    left.set_title("Belief error during occlusion (mean over seeds, min-max shaded)", fontsize=9)
    left.legend(fontsize=7)

    names = ["return_without_occlusion", "return_with_occlusion"]
    positions = np.arange(len(names))
    width = 0.8 / len(results)
    for index, result in enumerate(results.values()):
        x = positions + (index - (len(results) - 1) / 2) * width
        right.bar(
            x,
            [result[name]["mean"] or 0.0 for name in names],
            width,
            yerr=[result[name]["std"] or 0.0 for name in names],
            capsize=3,
            color=f"C{index}",
            alpha=0.8,
            label=result["label"],
        )
    right.set_xticks(positions, ["without occlusion", "with occlusion"])
    right.set_ylabel("evaluation return")
    right.set_title("Returns (mean +- std over seeds)", fontsize=9)
    right.legend(fontsize=7)
    save_figure(figure, path)


def markdown(
    study: Study,
    arguments: OcclusionArguments,
    results: dict,
    sentence: str,
    return_episodes: int,
    belief_episodes: int,
) -> str:
    key = plotted_key(results)
    horizon = arguments.belief_horizon
    steps = [0, *reported_steps(horizon)]
    intro = [
        f"Occlusion in training and in the occluded return evaluation: start probability {arguments.start_probability:g} per step, "
        f"{arguments.length} blank steps. Belief measurement: occlusions of K = {horizon} steps (start probability "
        f"{arguments.belief_start_probability:g}), {counted(belief_episodes, 'episode')} per run; "
        f"returns: {counted(return_episodes, 'episode')} per run and condition; the same seeds for both models.",
        "",
    ]
    rows = []
    for result in results.values():
        means = result["belief"][key]["posterior"]["mean"]
        returns = [fmt(result["return_without_occlusion"]), fmt(result["return_with_occlusion"])]
        rows.append([result["label"], *returns, *(fmt_number(means[k] if k < len(means) else None) for k in steps)])
    columns = ["model", "return without occlusion", "return with occlusion", *(f"{key} MSE k={k}" for k in steps)]
    table = markdown_table(columns, rows)
    caption = "belief error against steps into an occlusion"
    return study.document("Partial observability", intro, table, sentence, caption)


def run_occlusion_study(arguments: OcclusionArguments, argv: Sequence[str] = ()) -> dict:
    """Train, measure, plot and write; returns the results (also in OUT/occlusion.json)."""
    study = Study(NAME, arguments, argv)
    compared = variants(study, arguments)
    return_episodes = study.count(arguments.robustness_episodes, 10)
    belief_episodes = study.count(arguments.belief_episodes, 5)
    runs = study.train_all(compared)
    results = {}
    for variant in compared:
        measured = [measure(run, study, arguments, return_episodes, belief_episodes) for run in runs[variant.name]]
        results[variant.name] = summarise(variant, runs[variant.name], measured)
    sentence = comparison_sentence(results, runs, len(study.seeds), arguments.belief_horizon)
    draw(results, study.figure_path)
    output = {
        "occlusion": {"start_probability": arguments.start_probability, "length": arguments.length},
        "belief_measurement": {
            "horizon": arguments.belief_horizon,
            "start_probability": arguments.belief_start_probability,
            "episodes": belief_episodes,
        },
        "return_episodes": return_episodes,
        "measurement_seed": MEASUREMENT_SEED,
        "variants": results,
        "comparison": sentence,
    }
    study.write(output, markdown(study, arguments, results, sentence, return_episodes, belief_episodes))
    return output


run = study_entry(OcclusionArguments, NAME, DESCRIPTION, run_occlusion_study)
