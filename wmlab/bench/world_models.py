"""World Models (Ha & Schmidhuber 2018, arXiv:1803.10122), measured on a CPU budget.

(a) `wmlab bench world-models-temperature`: the question of the paper's "Cheating the World
    Model" on a task that fits two cores: one V and M, then C trained entirely inside the dream
    at each temperature tau and scored both in the dream and in the real environment. The task is the built-in pixel
    two-rooms navigation with its dense reward (the decrease of the path length to the goal,
    plus 1 on reaching it): 64x64 frames, as V expects, no pixel resizing, 200-step episodes
    rendered by numpy, so a whole table takes well under an hour; and its wall is what a
    confident, wrong M lets a controller walk through. DoomTakeCover is not available.
(b) `wmlab bench world-models-carracing`: V-M-C on CarRacing-v3 next to the z-only controller
    (the paper: 906 +- 21 and 632 +- 251 on CarRacing-v0, C trained in reality) at the budget
    that fits two shared cores: C trained in the dream, scored in reality (`carracing_config`).

Both reuse `run_pipeline`, so their run directories are ordinary, resumable World Models runs:
rerunning the command with the same --run-dir continues where it stopped (--force starts over).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from wmlab.agents.world_models.config import (
    CollectConfig,
    ControllerTrainingConfig,
    MDNRNNTrainingConfig,
    VAETrainingConfig,
    WorldModelsConfig,
    default_config,
)
from wmlab.bench.common import BenchArguments, machine_description, parse_bench_arguments
from wmlab.models.vae_mdnrnn import ConvVAEConfig, MDNRNNConfig, VAEMDNRNNConfig

TEMPERATURES = (0.1, 0.5, 1.0, 1.15, 1.3)
TWO_ROOMS = "two-rooms"
TWO_ROOMS_KWARGS = {"reward": "dense"}
TWO_ROOMS_STEPS = 200  # the environment's own episode limit
CARRACING = "CarRacing-v3"
#: tau of CarRacing's dream: the paper's best DoomTakeCover temperature.
CARRACING_TEMPERATURE = 1.15

# The paper's numbers (REFERENCE.md), shown beside ours.
PAPER = {
    "doom_tau": "DoomTakeCover in the paper: tau 0.1 scores 2086 in the dream but 193 in reality (random policy about 210); tau 1.15 scores 1092 in reality.",
    "carracing": {"V-M-C ([z, h])": "906 +- 21", "z only": "632 +- 251"},
}


# ----------------------------------------------------------------------------------------------
# Budgets


def temperature_config(quick: bool) -> WorldModelsConfig:
    """(a): the paper's V, M and C architectures and CMA-ES settings; budgets cut to fit a CPU."""
    if quick:
        tiny = VAEMDNRNNConfig(vae=ConvVAEConfig(latent_size=8, channels=(8, 8, 16, 16)), mdnrnn=MDNRNNConfig(hidden_size=32))
        return dataclasses.replace(
            default_config(TWO_ROOMS, quick=True), model=tiny, dream=True, collect=CollectConfig(episodes=4, max_steps=40),
            controller=ControllerTrainingConfig(generations=2, population=4, rollouts=2, max_steps=40, eval_every=0, eval_episodes=2),
        )
    return WorldModelsConfig(
        collect=CollectConfig(episodes=200, policy="brownian"),
        vae=VAETrainingConfig(epochs=4, batch_size=100, max_frames=20_000),
        mdnrnn=MDNRNNTrainingConfig(updates=1_000, batch_size=32, sequence_length=TWO_ROOMS_STEPS + 1, checkpoint_every=100),
        controller=ControllerTrainingConfig(generations=50, population=64, rollouts=16, eval_every=10, eval_episodes=16),
        dream=True,
        evaluation_episodes=100,
        dream_evaluation_episodes=1024,
    )


def carracing_config(quick: bool, inputs: str, temperature: float = CARRACING_TEMPERATURE) -> WorldModelsConfig:
    """(b): V and M as in the paper (z 32, LSTM 256, 5 components); C trained in the dream.

    The paper trains CarRacing's C in the real environment, 64 x 16 full episodes per
    generation. On two shared cores a CarRacing step costs 5-40 ms (rendering), so even a
    population of 16 with one 300-step episode each would take about an hour for 25 generations;
    C is therefore trained inside M (which predicts rewards here, unlike the paper's CarRacing M)
    and only evaluated in reality, on whole 1000-step episodes."""
    base = default_config(CARRACING, quick=quick)
    if quick:
        tiny = VAEMDNRNNConfig(vae=ConvVAEConfig(latent_size=8, channels=(8, 8, 16, 16)), mdnrnn=MDNRNNConfig(hidden_size=32))
        return dataclasses.replace(
            base, model=tiny, dream=True, temperature=temperature,
            controller=dataclasses.replace(base.controller, inputs=inputs, generations=2, population=4, rollouts=1, max_steps=30),
        )
    return dataclasses.replace(
        base,
        collect=CollectConfig(episodes=40, policy="brownian", max_steps=500),
        vae=VAETrainingConfig(epochs=3, batch_size=100),
        mdnrnn=MDNRNNTrainingConfig(updates=1_000, batch_size=32, sequence_length=200, checkpoint_every=100),
        controller=ControllerTrainingConfig(inputs=inputs, generations=40, population=64, rollouts=4, max_steps=500, eval_every=0),
        dream=True,
        temperature=temperature,
        evaluation_episodes=10,
        dream_evaluation_episodes=256,
        video_steps=300,
    )


# ----------------------------------------------------------------------------------------------
# (a) the temperature table


def temperature(argv: list[str]) -> int:
    arguments = parse_bench_arguments(
        "world-models-temperature", argv,
        "World Models' temperature experiment (the VizDoom dream) on pixel two-rooms: C trained only inside the dream at tau in "
        f"{', '.join(map(str, TEMPERATURES))}, scored in the dream and in reality.",
    )
    run_dir = _run_dir(arguments, "world-models-temperature")
    config = temperature_config(arguments.quick)
    seeds = range(arguments.seeds or 1)
    rows = []
    for seed in seeds:
        from wmlab.agents.world_models.pipeline import run_pipeline

        base = run_dir / f"seed{seed}" / "world_model"
        run_pipeline(config, TWO_ROOMS, base, seed=seed, env_kwargs=TWO_ROOMS_KWARGS, progress=arguments.progress, stages=("collect", "vae", "encode", "mdnrnn"))
        for tau in TEMPERATURES:
            tau_config = dataclasses.replace(config, temperature=tau)
            summary = run_pipeline(tau_config, TWO_ROOMS, run_dir / f"seed{seed}" / f"tau-{tau}", seed=seed, env_kwargs=TWO_ROOMS_KWARGS, progress=arguments.progress, models_from=base)
            returns = _evaluation(run_dir / f"seed{seed}" / f"tau-{tau}")
            rows.append({
                "seed": seed, "temperature": tau, "dream_return": summary.get("dream/return"), "real_return": summary["eval/return"],
                "real_return_std": summary["eval/return_std"], "real_success": float(np.mean(returns["lengths"] < TWO_ROOMS_STEPS)),
                "stage_seconds": summary.get("stage_seconds", {}),
            })
    baselines = two_rooms_baselines(config.evaluation_episodes)
    results = {
        "benchmark": "world-models-temperature",
        "env": TWO_ROOMS, "env_kwargs": TWO_ROOMS_KWARGS,
        "settings": dataclasses.asdict(config),
        "rows": rows, "baselines": baselines, "paper": PAPER["doom_tau"],
    }
    markdown = temperature_markdown(results, arguments)
    print(markdown)
    _write(run_dir, "world-models-temperature", results, arguments, markdown)
    return 0


def two_rooms_baselines(episodes: int) -> dict[str, dict[str, float]]:
    """Real returns of uniformly random actions and of the scripted near-optimal expert."""
    from wmlab.envs.adapter import make_env
    from wmlab.envs.two_rooms import scripted_action

    env = make_env(TWO_ROOMS, **TWO_ROOMS_KWARGS)
    env.action_space.seed(0)
    baselines = {}
    for name, choose in (("random actions", lambda: env.action_space.sample()), ("scripted expert", lambda: scripted_action(env))):
        returns, successes = [], []
        for episode in range(episodes):
            env.reset(seed=2**31 - 1 - episode)  # the evaluation's seeds
            total, done, info = 0.0, False, {}
            while not done:
                _, reward, terminated, truncated, info = env.step(choose())
                total += reward
                done = terminated or truncated
            returns.append(total)
            successes.append(bool(info.get("success")))
        baselines[name] = {"return": float(np.mean(returns)), "return_std": float(np.std(returns)), "success": float(np.mean(successes))}
    env.close()
    return baselines


def temperature_markdown(results: dict[str, Any], arguments: BenchArguments) -> str:
    machine = machine_description()
    settings = results["settings"]
    lines = [
        "### World Models: training C inside the dream at several temperatures (pixel two-rooms)",
        "",
        f"`wmlab bench world-models-temperature{' --quick' if arguments.quick else ''}` — {machine['date']}, {machine['platform']}, "
        f"torch {machine['torch']}, 1 thread; seeds {sorted({row['seed'] for row in results['rows']})}.",
        f"Task: `two-rooms` (64x64 frames) with the dense reward; 200-step episodes. V, M: z {settings['model']['vae']['latent_size']}, "
        f"LSTM {settings['model']['mdnrnn']['hidden_size']}, {settings['model']['mdnrnn']['mixtures']} components; "
        f"{settings['collect']['episodes']} {settings['collect']['policy']} random rollouts, V {settings['vae']['epochs']} epochs on "
        f"{settings['vae']['max_frames'] or 'all'} frames, M {settings['mdnrnn']['updates']} updates. C: linear on [z, h], CMA-ES "
        f"population {settings['controller']['population']} x {settings['controller']['rollouts']} dream rollouts, "
        f"{settings['controller']['generations']} generations, entirely in the dream. Dream score: {settings['dream_evaluation_episodes']} "
        f"dream episodes at the training tau; real score: {settings['evaluation_episodes']} real episodes (mean +- std).",
        "",
        "| tau | dream return | real return | real success |",
        "|---|---|---|---|",
    ]
    for row in results["rows"]:
        dream = "—" if row["dream_return"] is None else f"{row['dream_return']:.3f}"
        lines.append(f"| {row['temperature']} | {dream} | {row['real_return']:.3f} +- {row['real_return_std']:.3f} | {row['real_success']:.0%} |")
    for name, baseline in results["baselines"].items():
        lines.append(f"| ({name}) | — | {baseline['return']:.3f} +- {baseline['return_std']:.3f} | {baseline['success']:.0%} |")
    lines += ["", f"Paper: {results['paper']}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# (b) CarRacing


def carracing(argv: list[str]) -> int:
    arguments = parse_bench_arguments(
        "world-models-carracing", argv,
        "World Models on CarRacing-v3: the V-M-C controller and the z-only controller, C trained in the dream, scored in reality.",
    )
    from wmlab.agents.world_models.pipeline import run_pipeline

    run_dir = _run_dir(arguments, "world-models-carracing")
    rows = []
    for seed in range(arguments.seeds or 1):
        base = None
        for inputs, name in (("latent_and_hidden", "V-M-C ([z, h])"), ("latent", "z only")):
            config = carracing_config(arguments.quick, inputs)
            directory = run_dir / f"seed{seed}" / inputs
            summary = run_pipeline(config, CARRACING, directory, seed=seed, progress=arguments.progress, models_from=base)
            base = base or directory
            rows.append({
                "seed": seed, "controller": name, "parameters": summary["controller/parameters"], "real_return": summary["eval/return"],
                "dream_return": summary.get("dream/return"),
                "real_return_std": summary["eval/return_std"], "episodes": summary["eval/episodes"], "stage_seconds": summary.get("stage_seconds", {}),
            })
    results = {
        "benchmark": "world-models-carracing", "env": CARRACING,
        "settings": {inputs: dataclasses.asdict(carracing_config(arguments.quick, inputs)) for inputs in ("latent_and_hidden", "latent")},
        "rows": rows, "paper": PAPER["carracing"],
    }
    markdown = carracing_markdown(results, arguments)
    print(markdown)
    _write(run_dir, "world-models-carracing", results, arguments, markdown)
    return 0


def carracing_markdown(results: dict[str, Any], arguments: BenchArguments) -> str:
    machine = machine_description()
    settings = results["settings"]["latent_and_hidden"]
    controller = settings["controller"]
    collect = settings["collect"]
    lines = [
        "### World Models on CarRacing-v3: V-M-C and the z-only controller",
        "",
        f"`wmlab bench world-models-carracing{' --quick' if arguments.quick else ''}` — {machine['date']}, {machine['platform']}, "
        f"torch {machine['torch']}, 1 thread; seeds {sorted({row['seed'] for row in results['rows']})}.",
        f"Budget: {collect['episodes']} {collect['policy']} random rollouts of {collect['max_steps'] or 'up to 1000'} steps (paper: 10,000 "
        f"rollouts); V {settings['vae']['epochs']} epochs (paper: 10); M {settings['mdnrnn']['updates']} updates of "
        f"{settings['mdnrnn']['batch_size']} x {settings['mdnrnn']['sequence_length']} steps, with a reward head; C by CMA-ES "
        f"**in the dream** at tau {settings['temperature']}, population {controller['population']} x {controller['rollouts']} dream "
        f"rollouts of {controller['max_steps']} steps, {controller['generations']} generations (paper: in reality, 64 x 16 full "
        f"episodes). Real score: mean +- std over {settings['evaluation_episodes']} whole 1000-step real episodes of the final "
        "distribution mean (paper: 100 trials). CarRacing-v3's physics differ from the paper's v0.",
        "",
        "| controller | parameters | dream return | real return (ours) | paper (CarRacing-v0, C in reality) |",
        "|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        dream = "—" if row.get("dream_return") is None else f"{row['dream_return']:.1f}"
        lines.append(f"| {row['controller']} | {row['parameters']} | {dream} | {row['real_return']:.1f} +- {row['real_return_std']:.1f} | {results['paper'][row['controller']]} |")
    return "\n".join(lines + [""])


# ----------------------------------------------------------------------------------------------
# Shared


def _run_dir(arguments: BenchArguments, name: str) -> Path:
    """The benchmark's directory: --run-dir (resumed when it exists, replaced with --force) or a
    fresh temporary one."""
    if arguments.run_dir is None:
        return Path(tempfile.mkdtemp(prefix=f"wmlab-{name}-"))
    if arguments.force and arguments.run_dir.exists():
        shutil.rmtree(arguments.run_dir)
    (arguments.run_dir / "bench").mkdir(parents=True, exist_ok=True)
    return arguments.run_dir


def _evaluation(run_dir: Path) -> dict[str, np.ndarray]:
    from wmlab.train.serialization import load_state

    result = load_state(run_dir / "stages" / "evaluate", "result")
    return {key: np.asarray(value) for key, value in result.items() if key != "inputs"}


def _write(run_dir: Path, name: str, results: dict[str, Any], arguments: BenchArguments, markdown: str) -> None:
    results = {**results, "machine": machine_description(), "command": f"wmlab bench {name}" + (" --quick" if arguments.quick else "")}
    text = json.dumps(results, indent=2)
    (run_dir / "bench").mkdir(parents=True, exist_ok=True)
    (run_dir / "bench" / f"{name}.json").write_text(text)
    if arguments.out is not None:
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(text)
    if arguments.markdown is not None:
        arguments.markdown.write_text(markdown)
    print(f"results in {run_dir / 'bench' / (name + '.json')}")
