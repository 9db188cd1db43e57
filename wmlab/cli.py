"""The `wmlab` command: train | eval | play | report | list | bench | study.

    wmlab train --algo dyna-q --env dyna-maze --run-dir runs/maze
    wmlab train --algo mpc --env two-rooms-state --train.steps 20000 --agent.planner.horizon 10
    wmlab train --algo dreamer --env dmc:cartpole-swingup --env-kwargs '{"observation": "pixels"}'
    wmlab train --resume runs/maze --train.steps 40000
    wmlab train --model rssm --dataset data/rooms --run-dir runs/rssm-rooms --train.updates 5000
    wmlab eval runs/maze --episodes 20
    wmlab eval runs/cartpole --suite all
    wmlab eval --compare runs/a runs/b --suite horizon
    wmlab report runs/maze
    wmlab play runs/main --port 8765
    wmlab list
    wmlab bench dyna --seeds 30 --out dyna.json
    wmlab study horizon --out studies/horizon --seeds 3

`wmlab train --algo NAME --help` documents every field of that algorithm's config.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import tyro

from wmlab.core.config import option_value, parse_json_object
from wmlab.core.errors import WmlabError
from wmlab.core.registry import UnknownNameError

DEFAULT_ALGORITHM = "dyna-q"
DEFAULT_ENV = "dyna-maze"

USAGE = """usage: wmlab COMMAND [options]

commands:
  train    train an agent and its world model (wmlab train --algo NAME --help), or a world model
           on a recorded dataset (wmlab train --model FAMILY --dataset DIR --help)
  eval     evaluate a run's agent or world model (wmlab eval RUN_DIR [--suite horizon|...|all])
  play     play inside a run's world model in the browser (wmlab play RUN_DIR [--port P])
  report   write RUN_DIR/report.html (learning curves, tables, figures)
  list     show every registered algorithm, model and environment
  envs     show the environment suites, their ids, spaces and install commands
  generate write an MP4 of a world model's generated frames (wmlab generate RUN_DIR --steps N)
  record   record episodes of any environment and policy to a dataset folder
  pipeline run a multi-stage pipeline: main (make run's job), world-models, jepa, jepa-vs-rssm, jepa-landscape, genie, genie-cloning, genie-compare, gaia, unisim (wmlab pipeline NAME --help)
  bench    run a benchmark: dyna, envs, world-models-temperature, world-models-carracing, laptop, play
  study    run a study: horizon, counterfactual, occlusion (wmlab study NAME --help)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    commands = {
        "train": train_command,
        "eval": eval_command,
        "report": report_command,
        "play": play_command,
        "list": list_command,
        "envs": envs_command,
        "record": record_command,
        "generate": generate_command,
        "pipeline": pipeline_command,
        "bench": bench_command,
        "study": study_command,
    }
    if command not in commands:
        print(f"wmlab: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return commands[command](rest) or 0
    except (WmlabError, UnknownNameError) as error:
        print(f"wmlab {command}: error: {error}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------------------
# train


def _confirm_named_environment(argv: list[str]) -> None:
    """An --env typed on this command line lets a run directory's `module:EnvId` be imported."""
    from wmlab.envs.adapter import confirm_environment

    named = option_value(argv, "--env")
    if named is not None:
        confirm_environment(named)


def _train_command_class(agent_config: type, algorithm: str = DEFAULT_ALGORITHM) -> type:
    """A dataclass for tyro: the run's identity plus the loop's and the algorithm's configs
    (`algorithm` is the --algo default shown by --help, the one whose config it lists)."""
    from wmlab.runs.config import TrainConfig, command_option, run_directory_options

    return dataclasses.make_dataclass(
        "TrainCommand",
        [
            command_option(
                "algo", str, "Algorithm (wmlab list shows them); the options below are this algorithm's.", algorithm
            ),
            command_option(
                "env", str, "Environment: a wmlab name, a gymnasium id, or my_package.module:EnvId-v0.", DEFAULT_ENV
            ),
            command_option("env_kwargs", str, 'Environment options as JSON, e.g. \'{"observation": "pixels"}\'.', "{}"),
            command_option(
                "eval_env_kwargs",
                str,
                "Environment options that evaluation episodes change, as JSON over --env-kwargs: e.g. Atari agents "
                "trained with '{\"terminal_on_life_loss\": true}' are scored on whole games with "
                "'{\"terminal_on_life_loss\": false}'.",
                "{}",
            ),
            *run_directory_options("runs/ALGO-ENV-seedSEED"),
            ("train", TrainConfig, dataclasses.field(default_factory=TrainConfig)),
            ("agent", agent_config, dataclasses.field(default_factory=agent_config)),
        ],
        frozen=True,
    )


def parse_train_arguments(argv: list[str]):
    """(RunSpec, run_dir, resume, force) from the command line."""
    from wmlab.core.config import differences
    from wmlab.core.registry import ALGORITHMS
    from wmlab.runs.directory import RESUMABLE_CHANGES, RunSpec, load_run_spec

    resume_dir = option_value(argv, "--resume")
    if resume_dir is not None:
        _confirm_named_environment(argv)
        saved = load_run_spec(Path(resume_dir))
        command_class = _train_command_class(ALGORITHMS.get(saved.algorithm).load_config(), saved.algorithm)
        default = command_class(
            algo=saved.algorithm,
            env=saved.env,
            env_kwargs=json.dumps(saved.env_kwargs),
            eval_env_kwargs=json.dumps(saved.eval_env_kwargs),
            run_dir=Path(resume_dir),
            resume=Path(resume_dir),
            train=saved.train,
            agent=saved.agent,
        )
        parsed = tyro.cli(command_class, args=argv, default=default, prog="wmlab train")
        changed = {f"train.{name}" for name in differences(saved.train, parsed.train)}
        changed |= {f"agent.{name}" for name in differences(saved.agent, parsed.agent)}
        changed |= {
            name
            for name in ("algo", "env", "env_kwargs", "eval_env_kwargs")
            if getattr(parsed, name) != getattr(default, name)
        }
        refused = sorted(changed - RESUMABLE_CHANGES)
        if refused:
            raise WmlabError(
                f"--resume continues the saved run; these settings cannot change: {', '.join(refused)} (start a new run instead)"
            )
        spec = dataclasses.replace(saved, train=parsed.train)
        return spec, Path(resume_dir), True, False

    algorithm = option_value(argv, "--algo") or DEFAULT_ALGORITHM
    command_class = _train_command_class(ALGORITHMS.get(algorithm).load_config(), algorithm)
    parsed = tyro.cli(
        command_class,
        args=argv,
        prog="wmlab train",
        description=f"Train {algorithm}. " + (ALGORITHMS.get(algorithm).description or ""),
    )
    run_dir = (
        parsed.run_dir
        or Path("runs") / f"{parsed.algo}-{parsed.env.replace(':', '-').replace('/', '-')}-seed{parsed.train.seed}"
    )
    spec = RunSpec(
        algorithm=parsed.algo,
        env=parsed.env,
        env_kwargs=parse_json_object("--env-kwargs", parsed.env_kwargs),
        eval_env_kwargs=parse_json_object("--eval-env-kwargs", parsed.eval_env_kwargs),
        train=parsed.train,
        agent=parsed.agent,
    )
    return spec, run_dir, False, parsed.force


def train_command(argv: list[str]) -> int:
    from wmlab.train.loop import Trainer
    from wmlab.train.offline import offline_train_command, wants_offline
    from wmlab.train.video import video_train_command, wants_video_training

    if wants_video_training(argv):  # --algo genie --dataset PATH: a model of video alone (latent actions)
        return video_train_command(argv)
    if wants_offline(argv):  # --model FAMILY --dataset DIR: a world model fitted to a recorded dataset
        return offline_train_command(argv)
    spec, run_dir, resume, force = parse_train_arguments(argv)
    trainer = Trainer(spec, run_dir, resume=resume, force=force)
    summary = trainer.run()
    if trainer.rank == 0:
        print(json.dumps(summary, indent=2))
        print(f"run directory: {run_dir}  (wmlab report {run_dir})")
    return 0


# --------------------------------------------------------------------------------------------
# eval, report, list


@dataclasses.dataclass(frozen=True)
class EvalCommand:
    """Evaluate a run: the greedy agent's returns in the real environment (suite "returns", the
    default), or its world model (horizon, calibration, bound, dream, controllability, all), with
    JSON in RUN_DIR/eval/ and figures in RUN_DIR/figures/. `--compare RUN_A RUN_B` overlays runs."""

    run_dir: tyro.conf.Positional[Path | None] = None
    """The run directory (leave out with --compare)."""
    suite: str = "returns"
    """returns | horizon | calibration | bound | dream | controllability | all (every world-model suite) | grounding (Genie runs)."""
    compare: tuple[Path, ...] = ()
    """Run directories whose suite results are overlaid in one figure (default suite: horizon)."""
    episodes: int = 10
    """Evaluation episodes (returns), or fresh episodes collected when the replay cannot serve."""
    seed: int = 123
    """Seed of the first evaluation episode (episode i uses seed + i), and of the world-model suites."""
    sequences: int = 16
    """World-model suites: windows of real data."""
    context: int = 5
    """World-model suites: real steps filtered before the open-loop rollout."""
    horizon: int = 50
    """World-model suites: longest open-loop horizon (clipped to the episodes' length)."""
    samples: int = 16
    """Calibration: stochastic rollouts per start."""
    source: str = "replay"
    """World-model suites: "replay" (the run's stored episodes) or "env" (fresh episodes from the agent)."""
    out: Path | None = None
    """Write the metrics as JSON here (returns; default RUN_DIR/eval.json), or the --compare figure."""
    env: str | None = None
    """The run's environment id, typed again to allow importing its module: needed only when the
    run's config.json names `module:EnvId` with a module that is not an installed package."""


def eval_command(argv: list[str]) -> int:
    arguments = tyro.cli(EvalCommand, args=argv, prog="wmlab eval")
    _confirm_named_environment(argv)
    if arguments.suite == "grounding":  # Genie runs: latent actions against the hidden true ones
        from wmlab.eval.grounding import summary
        from wmlab.pipelines.genie import grounding_suite

        print(summary(grounding_suite(arguments.run_dir, sequences=arguments.sequences, seed=arguments.seed)))
        return 0
    if arguments.compare or arguments.suite != "returns":
        return _world_model_eval(arguments)
    if arguments.run_dir is None:
        raise WmlabError("give a run directory: wmlab eval RUN_DIR")
    from wmlab.eval.returns import evaluate_agent
    from wmlab.runs.directory import load_trained_agent

    spec, agent = load_trained_agent(arguments.run_dir)
    metrics = evaluate_agent(
        agent, spec.env, episodes=arguments.episodes, seed=arguments.seed, env_kwargs=spec.evaluation_env_kwargs
    )
    output = arguments.out or arguments.run_dir / "eval.json"
    output.write_text(json.dumps({"episodes": arguments.episodes, "seed": arguments.seed, **metrics}, indent=2))
    for key, value in metrics.items():
        print(f"{key:24s} {value:.4f}")
    print(f"written to {output}")
    return 0


def _world_model_eval(arguments: EvalCommand) -> int:
    from wmlab.eval.suites import ALL_SUITES, SUITES, SuiteSettings, compare_runs, run_suites, suite_summary

    if arguments.suite not in ALL_SUITES:
        raise WmlabError(f"unknown suite {arguments.suite!r}; choose from {', '.join(ALL_SUITES)}")
    if arguments.source not in ("replay", "env"):
        raise WmlabError(f"--source must be replay or env, got {arguments.source!r}")
    settings = SuiteSettings(
        sequences=arguments.sequences,
        context=arguments.context,
        horizon=arguments.horizon,
        samples=arguments.samples,
        episodes=arguments.episodes,
        seed=arguments.seed,
        source=arguments.source,
    )
    if arguments.compare:
        suite = "horizon" if arguments.suite == "returns" else arguments.suite
        if suite == "all":
            raise WmlabError("--compare overlays one suite at a time: pick one with --suite")
        runs = ([arguments.run_dir] if arguments.run_dir is not None else []) + list(arguments.compare)
        path = compare_runs(runs, suite, settings, arguments.out)
        print(f"comparison of {len(runs)} runs written to {path}")
        return 0
    if arguments.run_dir is None:
        raise WmlabError("give a run directory: wmlab eval RUN_DIR --suite SUITE")
    suites = list(SUITES) if arguments.suite == "all" else [arguments.suite]
    results = run_suites(arguments.run_dir, suites, settings)
    for suite, result in results.items():
        print(f"{suite:16s} {suite_summary(suite, result)}")
    print(f"written to {arguments.run_dir / 'eval'} and {arguments.run_dir / 'figures'}")
    return 0


def report_command(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: wmlab report RUN_DIR [--out FILE.html]\n\nWrite one self-contained HTML page for a run.")
        return 0
    from wmlab.core.registry import _load
    from wmlab.eval.suites import report_section
    from wmlab.report.html import build_report, register_section

    register_section("World-model evaluation", report_section)
    register_section("Play", _load("wmlab.play.report:play_section"))
    output = option_value(argv, "--out")
    path = build_report(Path(argv[0]), Path(output) if output else None)
    print(f"report written to {path}")
    return 0


def list_command(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from wmlab.core.registry import ALGORITHMS, ENVIRONMENTS, MODELS

    console = Console()
    for title, registry in (("Algorithms", ALGORITHMS), ("World models", MODELS), ("Environments", ENVIRONMENTS)):
        table = Table(title=title, title_justify="left", show_lines=False)
        table.add_column("name", style="bold")
        table.add_column("description")
        for entry in registry.entries():
            table.add_row(entry.name, entry.description)
        console.print(table)
    console.print("Any gymnasium id works too (e.g. CartPole-v1), and your own: --env my_package.module:EnvId-v0")
    return 0


def envs_command(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from wmlab.envs.suites import describe_suites

    table = Table(title="Environment suites", title_justify="left", show_lines=True)
    for column in ("suite", "example ids", "observation / action", "status"):
        table.add_column(column)
    for row in describe_suites(probe="--no-probe" not in argv):
        probed = "\n".join(f"{key}: {row[key]}" for key in ("observation", "action") if row.get(key))
        spaces = row["description"] + ("\n" + (row.get("error") or probed) if (row.get("error") or probed) else "")
        status = "installed" if row["available"] else f"missing: {row['install']}"
        table.add_row(row["suite"], "\n".join(row["examples"]), spaces, status)
    Console().print(table)
    return 0


def generate_command(argv: list[str]) -> int:
    from wmlab.eval.generation import generate, parse_command
    from wmlab.pipelines import gaia

    command = parse_command(argv)
    if gaia.is_gaia_run(command.run_dir):  # text-conditioned token model (GAIA-1 in small)
        return gaia.generate_command(command)
    return generate(command)


def play_command(argv: list[str]) -> int:
    from wmlab.play.server import play_command as play

    return play(argv) or 0


def record_command(argv: list[str]) -> int:
    from wmlab.data.dataset import record_command as record

    return record(argv) or 0


# --------------------------------------------------------------------------------------------
# bench


BENCHMARKS = {
    "dyna": "wmlab.bench.dyna_command:run",
    "envs": "wmlab.bench.envs_command:run",
    "world-models-temperature": "wmlab.bench.world_models:temperature",
    "world-models-carracing": "wmlab.bench.world_models:carracing",
    "laptop": "wmlab.bench.laptop:run",
    "play": "wmlab.play.measure:run",
}


PIPELINES = {
    "world-models": "wmlab.pipelines.world_models.pipeline:pipeline_command",
    "jepa": "wmlab.pipelines.jepa.pipeline:jepa_command",
    "jepa-vs-rssm": "wmlab.pipelines.jepa.pixels_comparison:comparison_command",
    "jepa-landscape": "wmlab.pipelines.jepa.landscape:landscape_command",
    "main": "wmlab.pipelines.main_job:main_job_command",
    "genie": "wmlab.pipelines.genie:pipeline_command",
    "genie-cloning": "wmlab.pipelines.genie_cloning:pipeline_command",
    "genie-compare": "wmlab.pipelines.genie_compare:pipeline_command",
    "gaia": "wmlab.pipelines.gaia:pipeline_command",
    "unisim": "wmlab.pipelines.unisim:pipeline_command",
}


def bench_command(argv: list[str]) -> int:
    usage = "usage: wmlab bench NAME [--seeds N] [--quick] [--out FILE.json] [--run-dir DIR]"
    return _dispatch("benchmark", BENCHMARKS, argv, usage)


def pipeline_command(argv: list[str]) -> int:
    return _dispatch("pipeline", PIPELINES, argv, "usage: wmlab pipeline NAME [options] (wmlab pipeline NAME --help)")


def study_command(argv: list[str]) -> int:
    from wmlab.studies import STUDIES

    usage = (
        "usage: wmlab study NAME --out DIR [--steps N] [--time-limit S] [--seeds N] [--algo dreamer] [--env ID] "
        "[--env-kwargs JSON] [--agent-overrides JSON] [--quick] (wmlab study NAME --help)"
    )
    return _dispatch("study", STUDIES, argv, usage, plural="studies")


def _dispatch(kind: str, table: dict[str, str], argv: list[str], usage: str, plural: str | None = None) -> int:
    """Run `table[argv[0]](argv[1:])`; an unknown name gives the close matches."""
    plural = plural or f"{kind}s"
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{usage}\n\n{plural}: {', '.join(table)}")
        return 0
    name = argv[0]
    if name not in table:
        import difflib

        close = difflib.get_close_matches(name, list(table))
        raise UnknownNameError(
            f"unknown {kind} {name!r}."
            + (f" Did you mean: {', '.join(close)}?" if close else "")
            + f" {plural.capitalize()}: {', '.join(table)}"
        )
    from wmlab.core.registry import _load

    return _load(table[name])(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
