"""Counterfactual augmentation: does imagining from intervened latent states make Dreamer robust?

Dreamer's actor and critic learn only from imagination started at the posterior states of replayed
data, so they never see situations the agent has not visited. The augmented variants intervene
on the stochastic latent z of a fraction of those start states before imagining from them
(`DreamerConfig.counterfactual_fraction` / `counterfactual_kind`, `wmlab.agents.dreamer.hooks.CounterfactualStarts`):

- "resample": z is drawn again from the prior p(z | h) of the start's recurrent state h, a
  situation the model finds plausible given the history but that did not happen;
- "swap": the start takes the z of another start of the batch with its own history h, a state
  that mixes two real situations.

The intervened starts replace the originals (the number of starts, and so the cost per update,
stays that of plain Dreamer). Robustness is measured after training, on the same evaluation
seeds for every agent: the greedy return in the nominal environment, under Gaussian
observation noise, and under random velocity kicks of the physics (dm_control), via the
`perturbed` environment (`wmlab.envs.perturb`).

    wmlab study counterfactual --out studies/counterfactual
    wmlab study counterfactual --out studies/counterfactual --kinds resample swap --fraction 0.5
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from wmlab.agents.dreamer.hooks import COUNTERFACTUAL_KINDS
from wmlab.core.errors import WmlabError
from wmlab.envs.adapter import make_env
from wmlab.envs.perturb import physics_of
from wmlab.eval.returns import evaluate_agent
from wmlab.runs.directory import load_trained_agent
from wmlab.studies.runner import (
    MEASUREMENT_SEED,
    RunResult,
    Study,
    StudyArguments,
    Variant,
    cached_measurement,
    counted,
    fmt,
    markdown_table,
    measured_phrase,
    pyplot,
    return_text,
    save_figure,
    spread,
    study_entry,
)

NAME = "counterfactual"
DESCRIPTION = (
    "Counterfactual augmentation: Dreamer whose actor and critic also learn from imagination "
    "started at latent states with an intervened stochastic part (resampled from the prior, or "
    "swapped between starts), against plain Dreamer on the same seeds; measures the evaluation "
    "return in the nominal environment, under observation noise and under velocity kicks."
)


@dataclass(frozen=True)
class CounterfactualArguments(StudyArguments):
    """Arguments of `wmlab study counterfactual`."""

    fraction: float = 0.25
    """Fraction of the imagination start states intervened on in the augmented variants."""
    kinds: tuple[str, ...] = ("resample",)
    """Interventions, one augmented variant each: resample (z ~ p(z | h)), swap (z of another start)."""
    observation_noise: float = 0.1
    """Perturbed evaluation: std of the Gaussian noise added to "vector" observations (environment units)."""
    image_noise: float = 0.05
    """Perturbed evaluation: std of the Gaussian noise added to "image" observations (fraction of the
    intensity range)."""
    kick_std: float = 0.5
    """Kicked evaluation: std of the Gaussian kicks added to every generalised velocity (dm_control only)."""
    kick_every: int = 10
    """Kicked evaluation: steps between kicks."""
    robustness_episodes: int | None = None
    """Episodes per agent and condition after training (default 10; --quick: 1)."""


@dataclass(frozen=True)
class Condition:
    """One evaluation condition: a name, a label and the environment to evaluate in."""

    name: str
    label: str
    env: str
    env_kwargs: dict


def variants(arguments: CounterfactualArguments) -> list[Variant]:
    if not 0.0 < arguments.fraction <= 1.0:
        raise WmlabError(f"--fraction must lie in (0, 1], got {arguments.fraction}")
    unknown = sorted(set(arguments.kinds) - set(COUNTERFACTUAL_KINDS))
    if unknown or not arguments.kinds:
        raise WmlabError(
            f"--kinds must name one or more of {', '.join(COUNTERFACTUAL_KINDS)}, got {list(arguments.kinds)}"
        )
    found = [Variant("plain", "plain", {"counterfactual_fraction": 0.0})]
    for kind in dict.fromkeys(arguments.kinds):
        changes = {"counterfactual_fraction": float(arguments.fraction), "counterfactual_kind": kind}
        found.append(Variant(f"{kind}-f{arguments.fraction:g}", f"{kind} (fraction {arguments.fraction:g})", changes))
    return found


def conditions(study: Study, arguments: CounterfactualArguments) -> tuple[list[Condition], list[str]]:
    """The nominal environment and the perturbations that apply to it, with notes on those that do not."""
    probe = make_env(study.env, **study.env_kwargs)
    try:
        keys = set(probe.observation_space.spaces)
        has_physics = physics_of(probe) is not None
    finally:
        probe.close()
    found = [Condition("nominal", "nominal", study.env, study.env_kwargs)]
    notes = []
    wrapped = {"env": study.env, "env_kwargs": study.env_kwargs}
    noise = {}
    if "vector" in keys and arguments.observation_noise > 0:
        noise["observation_noise"] = arguments.observation_noise
    if "image" in keys and arguments.image_noise > 0:
        noise["image_noise"] = arguments.image_noise
    if noise:
        label = ", ".join(
            f"{'vector' if key == 'observation_noise' else 'image'} std {value:g}" for key, value in noise.items()
        )
        found.append(Condition("observation_noise", f"observation noise ({label})", "perturbed", {**wrapped, **noise}))
    else:
        notes.append(
            "no observation-noise condition: the environment has no vector or image observation, or the noise is 0"
        )
    if has_physics and arguments.kick_std > 0:
        found.append(
            Condition(
                "kicks",
                f"velocity kicks (std {arguments.kick_std:g} every {arguments.kick_every} steps)",
                "perturbed",
                {**wrapped, "kick_std": arguments.kick_std, "kick_every": arguments.kick_every},
            )
        )
    else:
        notes.append("no velocity-kick condition: the environment exposes no MuJoCo physics, or --kick-std is 0")
    return found, notes


def robustness(run: RunResult, conditions_: Sequence[Condition], episodes: int) -> dict[str, float]:
    """The run's greedy evaluation return in every condition, on the shared measurement seeds."""

    def compute() -> dict[str, float]:
        _, agent = load_trained_agent(run.run_dir)
        return {
            condition.name: evaluate_agent(
                agent, condition.env, episodes=episodes, seed=MEASUREMENT_SEED, env_kwargs=condition.env_kwargs
            )["eval/return"]
            for condition in conditions_
        }

    key = {
        "conditions": [asdict(condition) for condition in conditions_],
        "episodes": episodes,
        "seed": MEASUREMENT_SEED,
    }
    return cached_measurement(run.run_dir, "counterfactual_robustness", key, compute)


def comparison_sentence(
    results: dict, conditions_: Sequence[Condition], runs: dict[str, list[RunResult]], seeds: int
) -> str:
    plain = results["plain"]
    clauses = []
    for name, result in results.items():
        if name == "plain":
            continue
        parts = []
        for condition in conditions_:
            mine, theirs = result["returns"][condition.name], plain["returns"][condition.name]
            text = f"{condition.label}: {fmt(mine)} vs {fmt(theirs)}"
            if condition.name != "nominal":
                changes = [_change(result, condition.name), _change(plain, condition.name)]
                if None not in changes:
                    text += f" (change from nominal {_signed(changes[0])} vs {_signed(changes[1])})"
            parts.append(text)
        clauses.append(f"the {result['label']} agent against plain Dreamer returned " + "; ".join(parts))
    return (
        f"{measured_phrase(runs, seeds)} (evaluation return, mean +- std over seeds): " + ". And ".join(clauses) + "."
    )


def _change(result: dict, condition: str) -> float | None:
    """Mean return under `condition` minus the mean nominal return."""
    nominal, perturbed = result["returns"]["nominal"]["mean"], result["returns"][condition]["mean"]
    if nominal is None or perturbed is None:
        return None
    return perturbed - nominal


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "-") + return_text(abs(value))


def draw(results: dict, conditions_: Sequence[Condition], path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(1.8 + 2.2 * len(conditions_), 3.6))
    width = 0.8 / len(results)
    positions = np.arange(len(conditions_))
    for index, result in enumerate(results.values()):
        x = positions + (index - (len(results) - 1) / 2) * width
        means = [result["returns"][condition.name]["mean"] or 0.0 for condition in conditions_]
        stds = [result["returns"][condition.name]["std"] or 0.0 for condition in conditions_]
        axis.bar(x, means, width, yerr=stds, capsize=3, color=f"C{index}", alpha=0.8, label=result["label"])
        for offset, condition in zip(x, conditions_):
            values = result["per_seed"][condition.name]
            axis.scatter([offset] * len(values), values, color="black", s=8, zorder=3)
    axis.set_xticks(positions, [condition.label for condition in conditions_], fontsize=7)
    axis.set_ylabel("evaluation return")
    axis.set_title("Counterfactual augmentation: returns under perturbation (mean +- std, dots: seeds)", fontsize=9)
    axis.legend(fontsize=8)
    save_figure(figure, path)


def markdown(
    study: Study, results: dict, conditions_: Sequence[Condition], notes: Sequence[str], sentence: str, episodes: int
) -> str:
    intro = [
        f"Greedy evaluation return after training, {counted(episodes, 'episode')} per agent and condition on the same seeds (mean +- std over training seeds):",
        "",
    ]
    columns = ["variant", *(condition.label for condition in conditions_)]
    rows = [
        [result["label"], *(fmt(result["returns"][condition.name]) for condition in conditions_)]
        for result in results.values()
    ]
    table = markdown_table(columns, rows)
    return study.document("Counterfactual augmentation", intro, table, sentence, "returns under perturbation", notes)


def run_counterfactual_study(arguments: CounterfactualArguments, argv: Sequence[str] = ()) -> dict:
    """Train, measure, plot and write; returns the results (also in OUT/counterfactual.json)."""
    study = Study(NAME, arguments, argv)
    compared = variants(arguments)
    conditions_, notes = conditions(study, arguments)
    episodes = study.count(arguments.robustness_episodes, 10)
    runs = study.train_all(compared)
    results = {}
    for variant in compared:
        measured = [robustness(run, conditions_, episodes) for run in runs[variant.name]]
        per_seed = {condition.name: [values[condition.name] for values in measured] for condition in conditions_}
        results[variant.name] = {
            "label": variant.label,
            "agent_changes": variant.agent_changes,
            "seeds": [run.seed for run in runs[variant.name]],
            "env_steps": [run.summary.get("env_steps") for run in runs[variant.name]],
            "final_training_eval_return": [run.summary.get("eval/return") for run in runs[variant.name]],
            "per_seed": per_seed,
            "returns": {name: spread(values) for name, values in per_seed.items()},
        }
    sentence = comparison_sentence(results, conditions_, runs, len(study.seeds))
    draw(results, conditions_, study.figure_path)
    output = {
        "conditions": [asdict(condition) for condition in conditions_],
        "robustness_episodes": episodes,
        "measurement_seed": MEASUREMENT_SEED,
        "notes": notes,
        "variants": results,
        "comparison": sentence,
    }
    study.write(output, markdown(study, results, conditions_, notes, sentence, episodes))
    return output


run = study_entry(CounterfactualArguments, NAME, DESCRIPTION, run_counterfactual_study)
