"""Horizon-aware policy optimisation: does trusting deep imagination less help Dreamer?

Imagined states drift from reality as the horizon grows, yet Dreamer's lambda-return weighs a
reward imagined 15 steps ahead like one imagined a step ahead. The horizon-aware variant gives
each imagined step t a confidence c_t = c ** t and trains the actor and critic on

    c_t * R_t^lambda + (1 - c_t) * v(s_t)

(`DreamerConfig.horizon_confidence`, `wmlab.agents.dreamer.hooks.HorizonConfidence`): deep
states lean on the critic's value of the state itself instead of the returns imagined from it.
The study trains plain Dreamer (c = 1) and one horizon-aware variant per confidence on the same
seeds and compares their evaluation returns against environment steps.

    wmlab study horizon --out studies/horizon
    wmlab study horizon --out studies/horizon --confidences 0.9 0.8 --seeds 5 --algo dreamer-cpu
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from wmlab.core.errors import WmlabError
from wmlab.studies.runner import (
    RunResult,
    Study,
    StudyArguments,
    Variant,
    aggregate_curves,
    eval_curve,
    fmt,
    markdown_table,
    measured_phrase,
    overlap_phrase,
    pyplot,
    return_text,
    save_figure,
    spread,
    study_entry,
)

NAME = "horizon"
DESCRIPTION = (
    "Horizon-aware policy optimisation: Dreamer whose lambda-return targets are weighted "
    "c_t * R_t + (1 - c_t) * v(s_t), c_t = c ** t falling with imagination depth, against plain "
    "Dreamer (c = 1) on the same seeds; plots the evaluation return against environment steps."
)


@dataclass(frozen=True)
class HorizonArguments(StudyArguments):
    """Arguments of `wmlab study horizon`."""

    confidences: tuple[float, ...] = (0.9,)
    """Confidences c of the horizon-aware variants (c_t = c ** t at imagination depth t); plain
    Dreamer (c = 1) is always trained as the baseline."""


def variants(arguments: HorizonArguments) -> list[Variant]:
    """Plain Dreamer first, then one horizon-aware variant per confidence below 1."""
    for confidence in arguments.confidences:
        if not 0.0 <= confidence <= 1.0:
            raise WmlabError(f"--confidences must lie in [0, 1], got {confidence}")
    found = [Variant("plain", "plain (c=1)", {"horizon_confidence": 1.0})]
    for confidence in dict.fromkeys(arguments.confidences):
        if confidence < 1.0:
            found.append(
                Variant(
                    f"horizon-c{confidence:g}",
                    f"horizon-aware (c={confidence:g})",
                    {"horizon_confidence": float(confidence)},
                )
            )
    if len(found) < 2:
        raise WmlabError("give at least one confidence below 1 (--confidences 0.9)")
    return found


def summarise(runs: Sequence[RunResult]) -> dict:
    """Final and mean-over-training evaluation returns of one variant's runs, and its curve."""
    curves = [eval_curve(run.run_dir) for run in runs]
    finals = [run.summary.get("eval/return") for run in runs]
    means = [sum(values) / len(values) if values else None for _, values in curves]
    return {
        "label": runs[0].variant.label,
        "agent_changes": runs[0].variant.agent_changes,
        "seeds": [run.seed for run in runs],
        "env_steps": [run.summary.get("env_steps") for run in runs],
        "wall_seconds": [run.summary.get("wall_seconds") for run in runs],
        "final_return": finals,
        "final": spread(finals),
        "mean_eval_return": means,
        "mean_over_training": spread(means),
        "curves": [{"seed": run.seed, "steps": steps, "returns": values} for run, (steps, values) in zip(runs, curves)],
        "curve": aggregate_curves(curves),
    }


def comparison_sentence(results: dict, runs: dict[str, list[RunResult]], seeds: int) -> str:
    """The measured comparison, one clause per horizon-aware variant, computed from the numbers."""
    plain = results["plain"]
    clauses = []
    for name, result in results.items():
        if name == "plain":
            continue
        difference = ""
        if result["final"]["mean"] is not None and plain["final"]["mean"] is not None:
            gap = result["final"]["mean"] - plain["final"]["mean"]
            difference = f" (difference {'+' if gap >= 0 else '-'}{return_text(abs(gap))}; {overlap_phrase(result['final'], plain['final'])})"
        clauses.append(
            f"{result['label']} reached a final evaluation return of {fmt(result['final'])} vs plain {fmt(plain['final'])}{difference}, "
            f"and {fmt(result['mean_over_training'])} vs {fmt(plain['mean_over_training'])} averaged over all evaluations of a run"
        )
    return f"{measured_phrase(runs, seeds)} (mean +- std over seeds): " + "; ".join(clauses) + "."


def draw(results: dict, path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for index, result in enumerate(results.values()):
        color = f"C{index}"
        for run in result["curves"]:  # each seed thin, so runs that stopped early stay visible
            axis.plot(run["steps"], run["returns"], color=color, alpha=0.3, linewidth=0.8)
        curve = result["curve"]
        if not curve["steps"]:
            continue
        axis.plot(
            curve["steps"],
            curve["mean"],
            color=color,
            marker="o",
            markersize=3,
            label=f"{result['label']} (n={result['final']['n']})",
        )
        axis.fill_between(curve["steps"], curve["min"], curve["max"], color=color, alpha=0.2, linewidth=0)
    axis.set_xlabel("environment steps")
    axis.set_ylabel("evaluation return")
    axis.set_title("Horizon-aware vs plain Dreamer (mean over seeds, min-max shaded, thin: seeds)", fontsize=9)
    axis.legend(fontsize=8)
    save_figure(figure, path)


def markdown(study: Study, results: dict, sentence: str) -> str:
    rows = []
    for result in results.values():
        final = result["final"]
        minmax = "n/a" if final["min"] is None else f"{return_text(final['min'])} / {return_text(final['max'])}"
        steps = "/".join(str(step) for step in result["env_steps"])
        wall = "/".join(f"{seconds:.0f}" for seconds in result["wall_seconds"] if seconds is not None)
        rows.append([result["label"], fmt(final), minmax, fmt(result["mean_over_training"]), steps, wall])
    columns = [
        "variant",
        "final eval return",
        "min / max over seeds",
        "mean eval return over training",
        "steps",
        "wall time per run (s)",
    ]
    table = markdown_table(columns, rows)
    caption = "evaluation return against environment steps"
    return study.document("Horizon-aware policy optimisation", [], table, sentence, caption)


def run_horizon_study(arguments: HorizonArguments, argv: Sequence[str] = ()) -> dict:
    """Train, measure, plot and write; returns the results (also in OUT/horizon.json)."""
    study = Study(NAME, arguments, argv)
    compared = variants(arguments)
    runs = study.train_all(compared)
    results = {variant.name: summarise(runs[variant.name]) for variant in compared}
    sentence = comparison_sentence(results, runs, len(study.seeds))
    draw(results, study.figure_path)
    output = {"variants": results, "comparison": sentence}
    study.write(output, markdown(study, results, sentence))
    return output


run = study_entry(HorizonArguments, NAME, DESCRIPTION, run_horizon_study)
